"""The recipe's ``parallel:`` section on 2 gloo ranks: mixed precision, resharding, CPU offload,
tensor parallel and activation checkpointing, each against the single-process build, and a
checkpoint of each that loads whole in one process and on another mesh."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from composer import ConfigError, build_from_config
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
