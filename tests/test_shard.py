"""Past one machine: sharded builds (FSDP2 over gloo, on CPU), their checkpoints and the policy.

The multi-process tests start real interpreters that join a real gloo group (``tests.distributed``);
each spawn costs a few seconds of ``import torch``, so each worker checks several things.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint.filesystem as filesystem
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from composer import (
    CheckpointError,
    ConfigError,
    build_from_config,
    init_report,
    load_checkpoint,
    register_module,
    save_checkpoint,
)
from composer.build.shard import select_units
from composer.checkpoint.dcp import FORMAT, FORMAT_VERSION, _crc_info
from tests.distributed import PeakMemory, cpu_mesh, run_ranks
from tests.recipes import ROOT, recipe_with

SMALL_GPT = {"vars.n_layer": 2, "vars.n_embd": 64, "vars.n_head": 4, "vars.vocab_size": 128, "vars.block_size": 64}
NAMED = ["mlp", "rgnet", "tied", "gpt2_small"]  # the four
EQUAL_BUILDS = [*NAMED, "my_linear", "fixed_hidden_mlp", "lazy_mlp", "unet", "lstm_classifier"]


def recipe(name: str, seed: int | None = 0) -> dict:
    """A packaged recipe as a dict (GPT-2 scaled down), with ``init.seed``."""
    rc = OmegaConf.to_container(recipe_with(name, SMALL_GPT if name == "gpt2_small" else None), resolve=True)
    if seed is not None:
        rc.setdefault("init", {})["seed"] = seed
    return rc


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every ``DTensor`` gathered into its full tensor (a collective)."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def ties(model: nn.Module) -> list[list[str]]:
    """Parameter paths grouped by the tensor they hold."""
    groups: dict[int, list[str]] = {}
    for path, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(path)
    return sorted(groups.values())


def assert_equal_states(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    assert list(got) == list(expected), label
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{label}: {key} differs"


# --- the policy and the recipe key (one process, meta builds) ---------------------------------------


def test_shard_key_problems_are_reported_together_with_paths_and_closest_names():
    bad = {
        "model": {"type": "Linear", "in_features": 2, "out_features": 2},
        "shard": {
            "unit": [],
            "units": [{"layer": "Linaer"}, {"layers": "Linear"}, {"layer": "Linear", "match": "*"}, 3],
        },
    }
    with pytest.raises(ConfigError) as e:
        build_from_config(bad)
    lines = e.value.lines()
    assert "shard.unit: unknown key 'unit' (did you mean 'units'?); valid: units" in lines
    assert "shard.units[0].layer: unknown layer class 'Linaer' (did you mean 'Linear'?)" in lines
    assert any(line.startswith("shard.units[1].layers: unknown key 'layers' (did you mean 'layer'?)") for line in lines)
    assert any(line.startswith("shard.units[2]: expected one of {layer: Name} or {match: glob}") for line in lines)
    assert any(line.startswith("shard.units[3]: expected one of") for line in lines)
    with pytest.raises(ConfigError, match=r"sahrd: unknown top-level key \(did you mean 'shard'\?\)"):
        build_from_config({"model": {"type": "ReLU"}, "sahrd": {"units": []}})
    with pytest.raises(ConfigError, match=r"shard.units: expected a list"):
        build_from_config({"model": {"type": "ReLU"}, "shard": {"units": "h.*"}})


def _units(model: nn.Module, policy) -> list[str]:
    chosen = select_units(model, policy)
    return [path for path, m in model.named_modules() if id(m) in chosen]


def test_units_by_default_by_glob_and_by_class():
    gpt = build_from_config(recipe("gpt2_small"), device="meta")
    # the packaged recipe's policy: each block, then the root (which holds the tied embedding and head)
    assert _units(gpt, recipe("gpt2_small")["shard"]) == ["", "transformer.h.0", "transformer.h.1"]
    # by default the root's children, but a child that would split the tie is left to the root
    assert _units(gpt, None) == [""]
    norms = [f"transformer.h.{i}.ln_{j}" for i in (0, 1) for j in (1, 2)]
    assert _units(gpt, {"units": [{"layer": "LayerNorm"}]}) == ["", *norms, "transformer.ln_f"]
    tied = build_from_config(recipe("tied"), device="meta")
    assert _units(tied, None) == ["", "0", "2", "6"]  # the shared layer (2 and 4) is one unit
    linear = {"type": "Linear", "in_features": 4, "out_features": 4}
    ties_ = {"1.weight": "0.weight", "1.bias": "0.bias"}  # both of child 1's parameters are child 0's
    two_ties = {"model": {"type": "Sequential", "layers": [linear, linear]}, "tie": ties_}
    assert _units(build_from_config(two_ties, device="meta"), None) == [""]


def test_a_policy_that_selects_nothing_or_splits_a_tie_is_an_error():
    gpt = build_from_config(recipe("gpt2_small"), device="meta")
    with pytest.raises(ConfigError) as e:
        select_units(gpt, {"units": [{"layer": "Linear"}, {"match": "transfomer.h.*"}, {"layer": "ReLU"}]})
    lines = e.value.lines()
    assert any(
        line.startswith("shard.units[0].layer: unit 'lm_head' would split the shared parameter transformer.wte.weight")
        and "lm_head.weight" in line
        for line in lines
    ), lines
    assert any(line.startswith("shard.units[1].match: 'transfomer.h.*' matches no module") for line in lines), lines
    assert any(line.startswith("shard.units[2].layer: no module holding parameters is a ReLU") for line in lines), lines


# --- sharded builds (2 and 3 processes) -------------------------------------------------------------


def _equal_builds(rank: int, world: int, names: list[str]) -> None:
    mesh = cpu_mesh()
    for name in names:
        rc = recipe(name)
        sharded, whole = build_from_config(rc, mesh=mesh), build_from_config(rc)
        assert isinstance(sharded, FSDPModule)
        assert all(isinstance(p, DTensor) for p in sharded.parameters()), name
        assert_equal_states(full_state(sharded), whole.state_dict(), name)
        assert ties(sharded) == ties(whole), name
        assert init_report(sharded) == init_report(whole), name
    gpt = build_from_config(recipe("gpt2_small"), mesh=mesh)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    units = [p for p, m in gpt.named_modules() if isinstance(m, FSDPModule)]
    assert units == ["", "transformer.h.0", "transformer.h.1"]
    # Without init.seed every rank still fills from one seed (rank 0's): the replicated buffer agrees
    unseeded = build_from_config(recipe("fixed_hidden_mlp", seed=None), mesh=mesh)
    buffers = [torch.empty_like(unseeded.rand_weight) for _ in range(world)]
    dist.all_gather(buffers, unseeded.rand_weight)
    assert all(torch.equal(b, buffers[0]) for b in buffers)
    # A user block that resets as a whole (its own reset draws for a child too) is reset on a full copy

    @register_module
    class Scaled(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.empty(width))
            self.inner = nn.Linear(width, width)
            self.reset_parameters()

        def reset_parameters(self) -> None:
            self.inner.reset_parameters()
            nn.init.normal_(self.scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * self.scale

    user = {"model": {"type": "Sequential", "layers": [{"type": "Scaled", "width": 6}] * 2}, "init": {"seed": 3}}
    assert_equal_states(full_state(build_from_config(user, mesh=mesh)), build_from_config(user).state_dict(), "user")
    # What a meta build cannot make is an error with its reason, on every rank alike
    lazy = {"model": {"type": "Sequential", "layers": [{"type": "Linear", "out_features": 4}]}}
    with pytest.raises(ConfigError, match="input_shape: lazy layers have no shapes yet, and a sharded build needs"):
        build_from_config(lazy, mesh=mesh)

    @register_module
    class Table(nn.Module):  # a constant its constructor computes, which no reset remakes
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(4.0))
            self.linear = nn.Linear(4, 4)

    with pytest.raises(ConfigError, match="table of Table is a buffer its constructor makes"):
        build_from_config({"model": {"type": "Table"}}, mesh=mesh)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_build_equals_the_single_process_build_bitwise(world):
    run_ranks(world, _equal_builds, EQUAL_BUILDS if world == 2 else NAMED)


def _train(rank: int, world: int) -> None:
    mesh = cpu_mesh()
    rc = recipe("gpt2_small")
    sharded, whole = build_from_config(rc, mesh=mesh), build_from_config(rc)
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    out, expected = sharded(idx), whole(idx)
    assert torch.equal(out, expected)
    out.pow(2).mean().backward()
    expected.pow(2).mean().backward()
    grads = {n: p.grad for n, p in whole.named_parameters()}
    for name, p in sharded.named_parameters():
        torch.testing.assert_close(p.grad.full_tensor(), grads[name], msg=name)
    optimizer = torch.optim.AdamW(sharded.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(sharded(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert sharded.lm_head.weight is sharded.transformer.wte.weight


@pytest.mark.slow
def test_forward_backward_and_training_steps_of_a_sharded_gpt2():
    run_ranks(2, _train)


LARGE = {
    "model": {"type": "Repeat", "times": 24, "body": {"type": "Linear", "in_features": 2048, "out_features": 2048}},
    "init": {"seed": 0},
}
LARGE_BYTES = 24 * (2048 * 2048 + 2048) * 4  # 403 MB
LARGEST_PARAM = 2048 * 2048 * 4  # 16.8 MB


def _peak_memory(rank: int, world: int, folder: str) -> None:
    small = {"model": {"type": "Repeat", "times": 2, "body": {"type": "Linear", "in_features": 8, "out_features": 8}}}
    build_from_config(small, mesh=cpu_mesh())  # what a first sharded build sets up once (9 MB) is not counted
    with PeakMemory() as peak:
        model = build_from_config(LARGE, mesh=cpu_mesh())
    local = sum(p.to_local().numel() * 4 for p in model.parameters())
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"peak": peak.peak, "local": local}))


@pytest.mark.slow
@pytest.mark.skipif(not PeakMemory.available(), reason="allocated bytes are read from glibc's mallinfo2")
def test_each_rank_allocates_its_shards_and_one_full_tensor_at_most(tmp_path):
    world = 2
    run_ranks(world, _peak_memory, str(tmp_path))
    for rank in range(world):
        measured = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # its shards (a 1/world share), one full tensor while it fills it, and 2 MB for the rest
        assert LARGE_BYTES / world * 0.99 < measured["local"] < LARGE_BYTES / world * 1.01
        assert measured["local"] + LARGEST_PARAM < measured["peak"] < measured["local"] + LARGEST_PARAM + 2e6, measured


# --- checkpoints: save with 2 ranks, load with 1 and 3, and in one process -----------------------


def _save(rank: int, world: int, folder: str) -> None:
    model = build_from_config(recipe("gpt2_small", seed=1), mesh=cpu_mesh())
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(idx)
    if rank == 0:
        torch.save(out.detach(), Path(folder, "out.pt"))
    save_checkpoint(model, Path(folder, "ckpt"))
    save_checkpoint(model, Path(folder, "ckpt"))  # again, over the first: replaced as a whole
    other = Path(folder, "other")
    if rank == 0:
        other.mkdir()
        (other / "notes.txt").write_text("mine")
    dist.barrier()
    with pytest.raises(CheckpointError, match="exists and is not a composer checkpoint directory"):
        save_checkpoint(model, other)  # a folder of something else is never replaced


def _load(rank: int, world: int, folder: str) -> None:
    model = load_checkpoint(Path(folder, "ckpt"), mesh=cpu_mesh())
    whole = build_from_config(recipe("gpt2_small", seed=1))
    assert_equal_states(full_state(model), whole.state_dict(), f"loaded on {world}")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert init_report(model) == init_report(whole)
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(idx), torch.load(Path(folder, "out.pt")))
    model(idx).sum().backward()  # trains on


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A scaled-down GPT-2 saved by 2 ranks (twice), with its outputs for a fixed batch."""
    folder = tmp_path_factory.mktemp("sharded")
    run_ranks(2, _save, str(folder))
    return folder


@pytest.mark.slow
def test_a_checkpoint_directory_holds_dcp_files_and_composer_json(saved):
    ckpt = saved / "ckpt"
    assert sorted(os.listdir(ckpt)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "composer.json"]
    assert [p.name for p in saved.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert (saved / "other" / "notes.txt").read_text() == "mine"
    info = json.loads((ckpt / "composer.json").read_text())
    assert info["format"] == "composer-dcp-checkpoint" and info["format_version"] == "1" and info["world_size"] == 2
    assert info["recipe"] == build_from_config(recipe("gpt2_small", seed=1), device="meta").composer_record.recipe
    assert info["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert sorted(info["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    every_path = build_from_config(recipe("gpt2_small")).named_parameters(remove_duplicate=False)  # lm_head too
    assert set(info["init_schemes"]) <= {p for p, _ in every_path}


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 3])
def test_saved_with_two_ranks_loads_on_any_world_size(saved, world):
    run_ranks(world, _load, str(saved))


@pytest.mark.slow
def test_without_a_process_group_the_whole_model_loads_in_one_process(saved):
    model = load_checkpoint(saved / "ckpt")
    whole = build_from_config(recipe("gpt2_small", seed=1))
    assert_equal_states(model.state_dict(), whole.state_dict(), "one process")
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(idx), torch.load(saved / "out.pt"))


@pytest.mark.slow
def test_a_corrupted_shard_file_is_caught_by_its_checksum(saved, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", copy)
    data = bytearray((copy / "__1_0.distcp").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "__1_0.distcp").write_bytes(data)
    with pytest.raises(CheckpointError, match="__1_0.distcp does not match its checksum"):
        load_checkpoint(copy)


@pytest.mark.slow
def test_inspect_reads_a_checkpoint_directory(saved):
    result = subprocess.run(
        [sys.executable, "-m", "composer", "inspect", str(saved / "ckpt")], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "# recipe" in result.stdout and "transformer.h.1.mlp.c_proj" in result.stdout
    assert "lm_head.weight" in result.stdout


def _save_then_die(rank: int, world: int, folder: str) -> None:
    mesh = cpu_mesh()
    ckpt = Path(folder, "ckpt")
    save_checkpoint(build_from_config(recipe("gpt2_small", seed=1), mesh=mesh), ckpt)
    newer = build_from_config(recipe("gpt2_small", seed=2), mesh=mesh)
    if rank == 1:  # killed by SIGKILL halfway through writing its shard file
        write_item, written = filesystem._write_item, []

        def write_then_die(*args, **kwargs):
            written.append(write_item(*args, **kwargs))
            if len(written) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return written[-1]

        filesystem._write_item = write_then_die
    try:
        save_checkpoint(newer, ckpt)
    except CheckpointError as e:
        Path(folder, "rank0.txt").write_text(str(e))
        os._exit(0)  # its peer is gone: the process group cannot be torn down cleanly


@pytest.mark.slow
def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    run_ranks(2, _save_then_die, str(tmp_path), exits=[0, -signal.SIGKILL])
    assert "saving failed, the previous checkpoint is kept" in (tmp_path / "rank0.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "rank0.txt"]  # rank 0 removed the temporary
    model = load_checkpoint(tmp_path / "ckpt")
    assert_equal_states(model.state_dict(), build_from_config(recipe("gpt2_small", seed=1)).state_dict(), "old")


# --- loading runs nothing from the directory (one process) ----------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(folder: Path, metadata: bytes) -> Path:
    """A directory that passes every checksum, its ``.metadata`` as given."""
    folder.mkdir()
    (folder / ".metadata").write_bytes(metadata)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "aliases": {},
        "files": {".metadata": zlib.crc32(metadata)},
        "recipe": {"model": {"type": "Linear", "in_features": 2, "out_features": 2}},
    }
    (folder / "composer.json").write_text(json.dumps({**info, "crc32": _crc_info(info)}))
    return folder


@pytest.mark.parametrize("verify", [True, False])
def test_a_crafted_metadata_pickle_runs_nothing(tmp_path, verify):
    marker = tmp_path / "PWNED"
    folder = _crafted(tmp_path / "ckpt", pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError, match="system is not part of a checkpoint's metadata"):
        load_checkpoint(folder, verify=verify)
    assert not marker.exists()


def test_a_non_tensor_entry_is_refused_before_anything_reads_it(tmp_path):
    metadata = Metadata(state_dict_metadata={"weight": BytesStorageMetadata()}, storage_data={})
    folder = _crafted(tmp_path / "ckpt", pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="entry 'weight' is not a tensor"):
        load_checkpoint(folder)


def test_directories_that_are_not_composer_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a composer checkpoint directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "composer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="composer.json is not valid JSON"):
        load_checkpoint(tmp_path)
    good = _crafted(tmp_path / "ok", b"")
    info = json.loads((good / "composer.json").read_text())
    info["recipe"]["model"]["out_features"] = 3  # tampered with, checksum left as it was
    (good / "composer.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="composer.json does not match its checksum"):
        load_checkpoint(good)
    with pytest.raises(CheckpointError, match="a single-file checkpoint loads whole"):
        load_checkpoint(ROOT / "README.md", mesh=object())
