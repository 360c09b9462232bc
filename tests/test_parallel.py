"""The recipe's ``parallel:`` section on 2 gloo ranks: mixed precision, resharding, CPU offload,
tensor parallel and activation checkpointing, each against the single-process build, and a
checkpoint of each that loads whole in one process and on another mesh."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from composer import ConfigError, build_from_config, load_checkpoint, save_checkpoint, summary
from tests.distributed import cpu_mesh, run_ranks

MLP = {
    "model": {
        "type": "Sequential",
        "layers": {
            "block": {
                "type": "Sequential",
                "layers": {
                    "up": {"type": "Linear", "in_features": 8, "out_features": 32},
                    "act": {"type": "GELU"},
                    "down": {"type": "Linear", "in_features": 32, "out_features": 8},
                },
            },
            "norm": {"type": "LayerNorm", "normalized_shape": 8},
            "head": {"type": "Linear", "in_features": 8, "out_features": 4},
        },
    },
    "init": {"seed": 0},
    "input_shape": [4, 8],
}
GPT = {"vars.n_layer": 2, "vars.n_embd": 32, "vars.n_head": 4, "vars.vocab_size": 64, "vars.block_size": 16}


def with_parallel(recipe: dict, **parallel) -> dict:
    return {**copy.deepcopy(recipe), "parallel": parallel}


def gathered(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for n, p in model.named_parameters()}


def x_of(rank_seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(rank_seed))


# --- one process: the section is read and checked with key paths ------------------------------------


def test_parallel_problems_are_reported_together_with_key_paths():
    bad = with_parallel(
        MLP, param_dtype="int64", reduce_dtype="bfloat61", cpu_offload="yes", tp={"block.up": "colwize"}, checkpint=1
    )
    with pytest.raises(ConfigError) as e:
        build_from_config(bad)
    lines = str(e.value)
    assert "parallel.param_dtype: unknown floating dtype 'int64'" in lines
    assert "parallel.reduce_dtype: unknown floating dtype 'bfloat61' (did you mean 'bfloat16'?)" in lines
    assert "parallel.cpu_offload: expected true or false" in lines
    assert "parallel.tp.block.up: unknown tp style 'colwize' (did you mean 'colwise'?)" in lines
    assert "parallel.checkpint: unknown key 'checkpint' (did you mean 'checkpoint'?)" in lines


def test_a_single_process_build_ignores_the_section():
    plain, sectioned = build_from_config(MLP), build_from_config(with_parallel(MLP, param_dtype="bfloat16"))
    assert all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), sectioned.state_dict().values(), strict=True)
    )


# --- 2 ranks ---------------------------------------------------------------------------------------


def _mixed_precision(rank: int, world: int) -> None:
    recipe = with_parallel(MLP, param_dtype="bfloat16", reduce_dtype="float32")
    model, whole = build_from_config(recipe, mesh=cpu_mesh()), build_from_config(MLP)
    seen = []
    model.block.up.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
    out = model(x_of())
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16  # the forward computes in bf16
    assert all(p.dtype == torch.float32 and isinstance(p, DTensor) for p in model.parameters())  # shards stay fp32
    layout = summary(model, as_dict=True)["layout"]
    assert layout["policy"]["param_dtype"] == "bfloat16" and layout["units"] == ["", "block", "norm", "head"]
    out.float().pow(2).mean().backward()
    # the same bf16 forward in one process, its gradients reduced in float32: what FSDP's reduction gives
    reference = copy.deepcopy(whole).to(torch.bfloat16)
    reference(x_of().to(torch.bfloat16)).float().pow(2).mean().backward()
    for name, grad in grads(model).items():
        assert grad.dtype == torch.float32
        expected = dict(reference.named_parameters())[name].grad.float()
        torch.testing.assert_close(grad, expected, rtol=0, atol=0, msg=name)


def _reshard_after_forward(rank: int, world: int) -> None:
    kept = build_from_config(with_parallel(MLP, reshard_after_forward=False), mesh=cpu_mesh())
    default = build_from_config(MLP, mesh=cpu_mesh())
    for model, gathered_after in ((kept, True), (default, False)):
        model(x_of())
        unsharded = all(not isinstance(p, DTensor) for p in model.block.up.parameters())
        assert unsharded == gathered_after  # no reshard: the root's full parameters stay after forward


def _cpu_offload(rank: int, world: int) -> None:
    model = build_from_config(with_parallel(MLP, cpu_offload=True), mesh=cpu_mesh())
    whole = build_from_config(MLP)
    assert isinstance(model, FSDPModule)
    assert torch.equal(model(x_of()), whole(x_of()))
    _train_both(model, whole)


def _train_both(model: nn.Module, whole: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps on both: the sharded model follows the single-process one."""
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, whole)]
    for step in range(steps):
        for m, opt in zip((model, whole), optimizers, strict=True):
            opt.zero_grad()
            m(x_of(step)).pow(2).mean().backward()
            opt.step()
    for name, value in gathered(model).items():
        torch.testing.assert_close(value, whole.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def _checkpointing(rank: int, world: int) -> None:
    recipe = with_parallel(MLP, checkpoint={"match": "block"})
    model, plain = build_from_config(recipe, mesh=cpu_mesh()), build_from_config(MLP, mesh=cpu_mesh())
    calls = []
    model.block.act.register_forward_hook(lambda *_: calls.append("act"))
    loss = model(x_of()).pow(2).mean()
    loss.backward()
    plain_loss = plain(x_of()).pow(2).mean()
    plain_loss.backward()
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    for (name, got), (_, expected) in zip(grads(model).items(), grads(plain).items(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
    assert calls == ["act", "act"]  # the block's layers run again in backward
    assert list(model.state_dict()) == list(plain.state_dict())  # keys unchanged
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]

    model = build_from_config(with_parallel(MLP, checkpoint={"layer": "Sequential"}), mesh=cpu_mesh())
    calls.clear()
    model.block.act.register_forward_hook(lambda *_: calls.append("act"))
    model(x_of()).sum().backward()
    assert calls == ["act", "act"]  # the root is never checkpointed: only the inner Sequential


def tp_mesh():
    return init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))


def _tensor_parallel_mlp(rank: int, world: int) -> None:
    recipe = with_parallel(MLP, tp={"block.up": "colwise", "block.down": "rowwise"})
    model, whole = build_from_config(recipe, mesh=tp_mesh()), build_from_config(MLP)
    assert model.block.up.weight.to_local().shape == (16, 8)  # this rank's half of the rows
    text = summary(model)
    assert "layout: cpu mesh dp 1 x tp 2" in text and "  tp: block.up: colwise\n  tp: block.down: rowwise" in text
    torch.testing.assert_close(model(x_of()), whole(x_of()), rtol=0, atol=1e-5)
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in gathered(model).items())
    _train_both(model, whole)


@pytest.mark.slow
@pytest.mark.parametrize(
    "check", [_mixed_precision, _reshard_after_forward, _cpu_offload, _checkpointing, _tensor_parallel_mlp]
)
def test_parallel_modes_on_two_ranks(check):
    run_ranks(2, check)


def _bad_plans(rank: int, world: int) -> None:
    cases = {
        "parallel.tp.block.upp: matches no module (did you mean 'block.up'?)": (
            with_parallel(MLP, tp={"block.upp": "colwise"}), tp_mesh()
        ),
        "parallel.tp: tensor parallel needs a 2-D mesh": (with_parallel(MLP, tp={"block.up": "colwise"}), cpu_mesh()),
        "parallel.tp: a 2-D mesh": (MLP, tp_mesh()),
        "parallel.checkpoint.layer: no module is a Conv2d": (
            with_parallel(MLP, checkpoint={"layer": "Conv2d"}), cpu_mesh()
        ),
        "parallel.checkpoint.match: 'nothing' matches no module": (
            with_parallel(MLP, checkpoint={"match": "nothing"}), cpu_mesh()
        ),
    }  # fmt: skip
    for message, (recipe, mesh) in cases.items():
        with pytest.raises(ConfigError) as e:
            build_from_config(recipe, mesh=mesh)
        assert message in str(e.value), str(e.value)
    dist.barrier()  # every rank got here: none was left in a collective


@pytest.mark.slow
def test_bad_plans_fail_on_every_rank_before_any_collective():
    run_ranks(2, _bad_plans, timeout=120)


GPT_TP = {
    "*.attn.c_attn": {"style": "colwise", "chunks": 3},
    "*.attn.c_proj": "rowwise",
    "*.mlp.c_fc": "colwise",
    "*.mlp.c_proj": "rowwise",
}


def gpt(parallel: dict | None = None) -> dict:
    from omegaconf import OmegaConf  # noqa: PLC0415

    from tests.recipes import recipe_with  # noqa: PLC0415

    recipe = OmegaConf.to_container(recipe_with("gpt2_small", GPT), resolve=True)
    recipe["init"] = {"seed": 0}
    return {**recipe, "parallel": parallel} if parallel else recipe


def _tensor_parallel_gpt2(rank: int, world: int) -> None:
    model, whole = build_from_config(gpt({"tp": GPT_TP}), mesh=tp_mesh()), build_from_config(gpt())
    block = model.transformer.h[0]
    assert block.mlp.c_fc.weight.to_local().shape == (64, 32)  # half of 4 * 32 rows
    assert block.attn.c_proj.weight.to_local().shape == (32, 16)  # half of the columns: this rank's heads
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(idx), whole(idx), rtol=0, atol=1e-5)
    # SGD: an update linear in the gradients (Adam's g / sqrt(g^2) turns 1e-8 gradient noise into sign flips)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, whole)]
    for m, opt in zip((model, whole), optimizers, strict=True):
        nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
        opt.step()
    for name, value in gathered(model).items():
        torch.testing.assert_close(value, whole.state_dict()[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(model(idx), whole(idx), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_gpt2_small_runs_tensor_parallel_with_its_fused_projection_split_by_heads():
    run_ranks(2, _tensor_parallel_gpt2)


# --- checkpoints: saved on 2 ranks in each mode, loaded whole in one process and on another mesh -----

MODES = {
    "mixed_precision": ({"param_dtype": "bfloat16", "reduce_dtype": "float32", "reshard_after_forward": False}, 1),
    "cpu_offload": ({"cpu_offload": True}, 1),
    "checkpoint": ({"checkpoint": {"layer": "Sequential"}}, 1),
    "tensor_parallel": ({"tp": {"block.up": "colwise", "block.down": "rowwise"}}, 2),
}


def mesh_of(dims: int, shape: tuple[int, int] = (1, 2)):
    return cpu_mesh() if dims == 1 else init_device_mesh("cpu", shape, mesh_dim_names=("dp", "tp"))


def _save_mode(rank: int, world: int, folder: str, mode: str) -> None:
    parallel, dims = MODES[mode]
    model = build_from_config(with_parallel(MLP, **parallel), mesh=mesh_of(dims))
    model(x_of()).float().sum().backward()  # trained state is not needed: the layout is what is saved
    save_checkpoint(model, Path(folder, mode))


def _load_mode(rank: int, world: int, folder: str, mode: str) -> None:
    _, dims = MODES[mode]
    model = load_checkpoint(Path(folder, mode), mesh=mesh_of(dims, (2, 1)))  # the other mesh: dp 2 (x tp 1)
    whole = build_from_config(MLP)
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in gathered(model).items())
    model(x_of()).float().sum().backward()


def _load_on_a_mesh_without_tp(rank: int, world: int, folder: str) -> None:
    from composer import CheckpointError  # noqa: PLC0415

    with pytest.raises(CheckpointError, match="plan does not fit this mesh: parallel.tp: tensor parallel needs"):
        load_checkpoint(folder, mesh=cpu_mesh())


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_saves_on_two_ranks_and_loads_whole_and_on_another_mesh(mode, tmp_path):
    run_ranks(2, _save_mode, str(tmp_path), mode)
    whole = load_checkpoint(tmp_path / mode)  # one process, no process group
    expected = build_from_config(MLP).state_dict()
    assert list(whole.state_dict()) == list(expected)
    assert all(torch.equal(v, expected[k]) for k, v in whole.state_dict().items())
    run_ranks(2, _load_mode, str(tmp_path), mode)
    if mode == "tensor_parallel":
        run_ranks(2, _load_on_a_mesh_without_tp, str(tmp_path / mode))
    if mode == "tensor_parallel":  # the directory's metadata keeps the layout it was saved with
        shown = subprocess.run(
            [sys.executable, "-m", "composer", "inspect", str(tmp_path / mode)], capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert "layout: cpu mesh dp 1 x tp 2" in shown.stdout and "tp: block.up: colwise" in shown.stdout


def test_the_schema_takes_a_parallel_section_and_flags_a_bad_style():
    import jsonschema  # noqa: PLC0415

    from composer.describe.schema import recipe_schema  # noqa: PLC0415

    validator = jsonschema.Draft202012Validator(recipe_schema())
    good = with_parallel(
        MLP, param_dtype="bfloat16", tp={"*.c_attn": {"style": "colwise", "chunks": 3}, "x": "rowwise"}
    )
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(with_parallel(MLP, tp={"x": "colwize"})))


# --- parameter groups and training state on these models ---------------------------------------------

ALL_MODES = {
    "param_dtype": "bfloat16",
    "reduce_dtype": "float32",
    "checkpoint": {"match": "block"},
    "tp": {"block.up": "colwise", "block.down": "rowwise"},
}
GROUPS = [{"weight_decay": 0.1}, {"kind": ["bias", "norm"], "weight_decay": 0.0}]


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, first: int, last: int) -> None:
    for step in range(first, last):
        optimizer.zero_grad()
        model(x_of(step)).float().pow(2).mean().backward()
        optimizer.step()


def _groups_and_resume(rank: int, world: int, folder: str) -> None:
    from composer import param_groups  # noqa: PLC0415

    recipe = with_parallel(MLP, **ALL_MODES)
    model = build_from_config(recipe, mesh=tp_mesh())
    groups = param_groups(model, lr=1e-2, groups=GROUPS)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[i] for i in decayed) == ["block.down.weight", "block.up.weight", "head.weight"]
    assert all(isinstance(p, DTensor) for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups)
    _steps(model, optimizer, 0, 2)
    save_checkpoint(model, Path(folder, "ckpt"), optimizer=optimizer, state={"step": 2})
    _steps(model, optimizer, 2, 4)  # never stopping
    fresh = build_from_config(recipe, mesh=tp_mesh())
    optimizer_again = torch.optim.AdamW(param_groups(fresh, lr=1e-2, groups=GROUPS))
    state: dict = {}
    resumed = load_checkpoint(Path(folder, "ckpt"), mesh=tp_mesh(), optimizer=optimizer_again, state=state)
    assert state == {"step": 2}
    _steps(resumed, optimizer_again, 2, 4)
    for name, value in gathered(model).items():
        assert torch.equal(value, gathered(resumed)[name]), name


@pytest.mark.slow
def test_param_groups_and_a_bitwise_resume_with_every_mode_at_once(tmp_path):
    run_ranks(2, _groups_and_resume, str(tmp_path))


def _save_with_a_resolver(rank: int, world: int, folder: str) -> None:
    import os  # noqa: PLC0415

    os.environ["COMPOSER_TEST_SECRET"] = "AKIA-hunter2-do-not-store"
    recipe = with_parallel(MLP)
    recipe["blocks"] = {"unused": {"type": "Identity", "token": "${oc.env:COMPOSER_TEST_SECRET}"}}
    model = build_from_config(recipe, mesh=cpu_mesh(), resolvers=["oc.env"])
    save_checkpoint(model, Path(folder, "ckpt"))
    again = load_checkpoint(Path(folder, "ckpt"), mesh=cpu_mesh(), resolvers=["oc.env"])
    assert torch.equal(again(x_of()), model(x_of()))


@pytest.mark.slow
def test_a_sharded_checkpoint_never_stores_what_a_resolver_read(tmp_path):
    run_ranks(2, _save_with_a_resolver, str(tmp_path))
    stored = b"".join(p.read_bytes() for p in (tmp_path / "ckpt").iterdir())
    assert b"AKIA-hunter2" not in stored and b"${oc.env:COMPOSER_TEST_SECRET}" in stored


# --- what a sharded save may replace (issue 23's data loss) -------------------------------------------


def _save_over(rank: int, world: int, folder: str) -> None:
    from composer import CheckpointError  # noqa: PLC0415

    model = build_from_config(MLP, mesh=cpu_mesh())
    for name in ("php", "extra"):
        with pytest.raises(CheckpointError, match="exists and is not a composer checkpoint directory"):
            save_checkpoint(model, Path(folder, name))
    save_checkpoint(model, Path(folder, "empty"))  # an empty folder is taken
    save_checkpoint(model, Path(folder, "empty"))  # and a checkpoint of composer's own replaced


@pytest.mark.slow
def test_a_sharded_save_never_replaces_a_folder_that_is_not_only_a_checkpoint(tmp_path):
    php = tmp_path / "php"  # every PHP project has a composer.json
    php.mkdir()
    (php / "composer.json").write_text('{"require": {"php": ">=8.1"}}')
    (php / "index.php").write_text("<?php echo 'mine';")
    run_ranks(1, _save_over_prepare, str(tmp_path))  # a real checkpoint, then a file of the user's in it
    (tmp_path / "extra" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    run_ranks(2, _save_over, str(tmp_path))
    assert (php / "index.php").read_text() == "<?php echo 'mine';" and (php / "composer.json").exists()
    assert (tmp_path / "extra" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "empty" / "composer.json").exists()


def _save_over_prepare(rank: int, world: int, folder: str) -> None:
    save_checkpoint(build_from_config(MLP, mesh=cpu_mesh()), Path(folder, "extra"))


def test_a_composer_json_that_is_a_fifo_or_a_link_is_refused_at_once(tmp_path):
    import os  # noqa: PLC0415

    from composer import CheckpointError  # noqa: PLC0415

    fifo, link = tmp_path / "fifo", tmp_path / "link"
    fifo.mkdir(), link.mkdir()
    os.mkfifo(fifo / "composer.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    (link / "composer.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CheckpointError, match="composer.json: not a regular file"):
        load_checkpoint(fifo)
    with pytest.raises(CheckpointError, match="composer.json is a symbolic link"):
        load_checkpoint(link)
