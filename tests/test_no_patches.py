"""``import composer`` and its builds leave torch, Hydra and the garbage collector as they were.

A library that replaces torch attributes for the life of the process surprises every other
library in it (accelerate, deepspeed, a user's own hooks): composer builds with torch's own
mechanisms (``meta``, a scoped ``TorchFunctionMode``) and extends Hydra through its plugin
registry only. The snapshot runs in a fresh interpreter, before composer is first imported.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from composer import build_from_config, register_module, registry_scope
from tests.cli import command, run
from tests.recipes import ROOT, model_recipe

SCRIPT = r"""
import gc, importlib, json, pkgutil, sys, types

import torch
import torch.nn
import hydra
from hydra.core.plugins import Plugins


def hydra_modules():
    for package in ("hydra._internal", "hydra.plugins", "hydra.core"):
        root = importlib.import_module(package)
        yield root
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            try:
                yield importlib.import_module(info.name)
            except Exception:  # an optional dependency missing: nothing of it to compare
                pass


def snapshot(modules):
    # each object compared -> (the object, {attribute: id of its value})
    objects = {"torch": torch, "torch.nn.init": torch.nn.init, "torch.Tensor": torch.Tensor}
    objects |= {f"torch.nn.{n}": v for n, v in vars(torch.nn).items() if isinstance(v, type)}
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("torch.nn.modules.")]:
        classes = {n: v for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__}
        objects |= {f"{module.__name__}.{n}": v for n, v in classes.items()}
    for module in modules:  # its classes (its globals are Hydra's own state: a logger set on start)
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module.__name__:
                objects[f"{module.__name__}.{name}"] = value
    return {key: (obj, {n: id(v) for n, v in vars(obj).items()}) for key, obj in objects.items()}


modules = list(hydra_modules())
Plugins.instance()  # Hydra's first discovery of its plugins executes their modules again: done first
before = snapshot(modules)
collector = (gc.isenabled(), gc.get_threshold())

import composer
from composer.app import main as app
from tests.recipes import model_recipe

out = sys.argv[1]
composer.build_from_config(model_recipe("mlp"))
composer.build_from_config(model_recipe("lazy_mlp"))
rules = {"model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 4, "out_features": 4},
         {"type": "LayerNorm", "normalized_shape": 4}]},
         "init": {"seed": 1, "rules": [{"match": "*", "layer": "Linear", "weight": "xavier_uniform"}]}}
model = composer.build_from_config(rules)
composer.build_from_config(model_recipe("mlp"), device="meta")
composer.save_checkpoint(model, out + "/m.safetensors")
composer.load_checkpoint(out + "/m.safetensors")
sys.argv = ["composer", "model=mlp", f"hydra.run.dir={out}/run"]
app.main()

after = snapshot(modules)
changed = [] if (gc.isenabled(), gc.get_threshold()) == collector else ["the garbage collector's state"]
for key, (obj, attrs) in before.items():
    now = after[key][1]
    changed += [f"{key}.{name}" for name, ident in attrs.items() if now.get(name) != ident]
    # new attributes: a submodule imported meanwhile (torch._dynamo), copyreg's cache of a class
    # pickled (__slotnames__); anything else is a patch
    held = vars(after[key][0])
    added = [n for n in now.keys() - attrs.keys() if n != "__slotnames__" and not isinstance(held[n], types.ModuleType)]
    changed += [f"{key}.{name} (added)" for name in added]
print(json.dumps(changed))
"""


def test_import_and_builds_leave_torch_hydra_and_the_collector_as_they_were(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    changed = json.loads(result.stdout.strip().splitlines()[-1])
    assert changed == []
    assert (tmp_path / "run" / "model.safetensors").is_file()  # the app's build ran


class _SeesTheCollector(nn.Module):
    """A user's block: records whether the collector runs while it is constructed."""

    seen: list[bool] = []

    def __init__(self, width: int) -> None:
        super().__init__()
        _SeesTheCollector.seen.append(gc.isenabled())
        self.weight = nn.Parameter(torch.arange(width, dtype=torch.float32))  # computed: built for real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@pytest.mark.parametrize("enabled", [True, False])
def test_a_user_block_sees_the_collector_as_the_caller_left_it(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    _SeesTheCollector.seen.clear()
    try:
        with registry_scope():
            register_module("SeesTheCollector")(_SeesTheCollector)
            model = build_from_config({"type": "Sequential", "layers": [{"type": "SeesTheCollector", "width": 3}]})
        assert _SeesTheCollector.seen == [enabled]
        assert gc.isenabled() is enabled
        assert torch.equal(model[0].weight.detach(), torch.arange(3, dtype=torch.float32))
    finally:
        (gc.enable if was else gc.disable)()


def test_lazy_layers_draw_nothing_from_the_global_generator():
    """Lazy layers materialize with their own resets, which draw from the global generator; their
    values come from the per-tensor streams, and the caller's generator moves as in an eager
    build (which draws one base seed where the recipe gives none)."""
    torch.manual_seed(3)
    build_from_config(model_recipe("mlp"))
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_from_config(model_recipe("lazy_mlp"))
    assert torch.equal(torch.rand(4), expected)


def test_known_layers_are_made_on_meta_and_come_out_tied_and_allocated():
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4},
            {"type": "BatchNorm1d", "num_features": 4},
            {"type": "Linear", "in_features": 4, "out_features": 10, "bias": False},
        ]},
        "tie": {"2.weight": "0.weight"},
    }  # fmt: skip
    model = build_from_config(recipe)
    assert model[2].weight is model[0].weight
    assert model[1].num_batches_tracked.item() == 0  # a buffer to_empty would leave as garbage
    assert torch.equal(model[1].running_var, torch.ones(4))
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_known_layers_are_made_without_their_resets_and_keep_no_trace_of_it():
    """A layer whose reset ``init.defaults`` writes per tensor is made on the build's device with
    that reset left out, for that one instance (an attribute of the instance, removed at once):
    every tensor is then written once, from its stream, and the layer is torch's own class."""
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 8, "padding_idx": 0},
            {"type": "BatchNorm1d", "num_features": 8},
            {"type": "MultiheadAttention", "embed_dim": 8, "num_heads": 2},
            {"type": "Linear", "in_features": 8, "out_features": 8},
        ]},
        "init": {"seed": 5},
    }  # fmt: skip
    model = build_from_config(recipe)
    assert [type(m) for m in model] == [nn.Embedding, nn.BatchNorm1d, nn.MultiheadAttention, nn.Linear]
    assert not any({"reset_parameters", "_reset_parameters"} & vars(m).keys() for m in model.modules())
    assert torch.equal(model[0].weight[0], torch.zeros(8)) and model[0].weight[1:].abs().sum() > 0
    assert torch.equal(model[1].running_var, torch.ones(8)) and model[1].num_batches_tracked.item() == 0
    assert torch.equal(model[2].in_proj_bias, torch.zeros(24)) and torch.equal(model[2].out_proj.bias, torch.zeros(8))
    bound = 1 / 8**0.5
    assert model[3].bias.abs().max() <= bound and model[3].bias.abs().max() > 0
    again = build_from_config(recipe)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    torch.manual_seed(0)
    model[3].reset_parameters()  # torch's own reset, as always, outside a build
    torch.manual_seed(0)
    assert torch.equal(model[3].weight, nn.Linear(8, 8).weight)


class _SnapLinear(nn.Linear):
    """A user's subclass that keeps a copy of its weight as its constructor made it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("start", self.weight.detach().clone())


class _Anchored(nn.Module):
    """A user's block that keeps a copy of the weight of the layer it is given."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("anchor", layer.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


_LINEAR = {"type": "Linear", "in_features": 16, "out_features": 16}


@pytest.mark.parametrize(
    "recipe, copy",
    [
        ({"model": {"type": "SnapLinear", "in_features": 16, "out_features": 16}}, "start"),
        ({"model": {"type": "Anchored", "layer": _LINEAR}}, "anchor"),
        ({"model": {"type": "Sequential", "layers": [{"ref": "lin"}, {"type": "Anchored", "layer": {"ref": "lin"}}]},
          "shared": {"lin": _LINEAR}}, "1.anchor"),
        ({"model": {"type": "Anchored", "layer": {**_LINEAR, "device": "cpu"}}}, "anchor"),
    ],
    ids=["subclass", "argument", "shared", "own device"],
)  # fmt: skip
def test_a_users_block_never_reads_a_layer_left_unfilled(recipe, copy):
    """Layers are left unfilled only where nothing of the user's reads them: a user's subclass is
    built as written, and the arguments and shared modules a user's block may be given are made
    as a load makes them (on meta; the block then built for real where it keeps a copy)."""
    with registry_scope():
        register_module("SnapLinear")(_SnapLinear)
        register_module("Anchored")(_Anchored)
        models = [build_from_config({**recipe, "init": {"seed": 3}}) for _ in range(2)]
    copies = [m.get_buffer(copy) for m in models]
    assert torch.equal(copies[0], copies[1])  # uninitialized memory would differ, or be zeros
    assert 0 < copies[0].abs().max() <= 1 / 16**0.5


def test_a_build_draws_one_seed_from_the_callers_generator():
    """Without ``init.seed`` a build draws its base seed from the global generator, and nothing
    else: MultiheadAttention's out_proj (made in its constructor) is made on meta, not reset."""
    recipe = {"model": {"type": "Sequential", "layers": [
        {"type": "MultiheadAttention", "embed_dim": 8, "num_heads": 2},
        {"type": "Transformer", "d_model": 8, "nhead": 2, "num_encoder_layers": 1, "num_decoder_layers": 1,
         "dim_feedforward": 8, "batch_first": True},
        {"type": "Linear", "in_features": 8, "out_features": 8},
    ]}}  # fmt: skip
    torch.manual_seed(0)
    build_from_config(recipe)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.randint(2**63 - 1, ())
    assert torch.equal(after, torch.rand(3))


class _Placed(nn.Module):
    """A user's block that makes its tensor where it is told and resets it itself."""

    def __init__(self, n: int, device: str | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(n, n, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.w.uniform_(-0.1, 0.1)


@pytest.mark.parametrize(
    "model",
    [
        {"type": "Linear", "in_features": 4, "out_features": 4, "device": "meta"},
        {"type": "Placed", "n": 4, "device": "meta"},
        {"type": "Sequential", "layers": [{**_LINEAR, "device": "meta"}, {"type": "Anchored", "layer": _LINEAR}]},
    ],
    ids=["known", "users", "then built for real"],
)  # fmt: skip
def test_a_node_that_puts_its_tensors_on_meta_is_allocated_on_a_real_build(model):
    with registry_scope():
        register_module("Placed")(_Placed)
        register_module("Anchored")(_Anchored)
        built = build_from_config({"model": model, "init": {"seed": 1}})
    tensors = [*built.parameters(), *built.buffers()]
    assert not any(t.is_meta for t in tensors)
    assert all(0 < t.abs().max() <= 0.5 for t in tensors)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["file://{dir}", "{dir}"])
def test_hydra_searchpath_folders_are_read_the_guarded_way(tmp_path, entry):
    """Hydra adds ``hydra.searchpath`` folders after the search-path plugins ran, with its own file
    source; the app puts guarded copies before them, so a recipe there is checked as any other."""
    (tmp_path / "extra" / "model").mkdir(parents=True)
    (tmp_path / "extra" / "model" / "evil.yaml").write_text(
        "# @package _global_\nhydra: {callbacks: {x: {_target_: os.system, _args_: [touch pwned]}}}\n"
        "model: {type: Linear, in_features: 2, out_features: 2}\n"
    )
    searchpath = f"hydra.searchpath=[{entry.format(dir=tmp_path / 'extra')}]"
    result = run(command(searchpath, "model=evil", "check=true"), tmp_path)
    assert result.returncode == 1
    assert "evil.yaml: hydra: a model file holds a recipe only" in result.stderr
    assert not (tmp_path / "pwned").exists()


class _KnownWithoutReset(nn.Module):
    """A class of a known package whose constructor computes a tensor that no reset refills."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("steps", torch.arange(width, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.steps


_KnownWithoutReset.__module__ = "composer.modules.blocks"  # known to the builder: built on meta first


def test_a_known_layer_whose_tensors_nothing_refills_is_built_for_real():
    with registry_scope():
        register_module("KnownWithoutReset")(_KnownWithoutReset)
        model = build_from_config({"type": "KnownWithoutReset", "width": 3})
        assert build_from_config({"type": "KnownWithoutReset", "width": 3}, device="meta").steps.is_meta
    assert torch.equal(model.steps, torch.arange(3, dtype=torch.float32))
