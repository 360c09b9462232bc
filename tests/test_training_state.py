"""Training state in checkpoints (issue 21): the optimizer, the caller's ``state`` and the RNG
states saved beside the weights without pickle; resuming is bitwise equal to never stopping, in
one process and sharded on 2 ranks; nested tensor trees; weights from elsewhere (``load_weights``),
a ``transformers`` GPT-2 among them."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.tensor import DTensor

from composer import (
    CheckpointError,
    build_from_config,
    load_checkpoint,
    load_tensors,
    load_weights,
    save_checkpoint,
    save_tensors,
)
from tests.distributed import cpu_mesh, run_ranks
from tests.recipes import recipe_with

MLP = {
    "model": {
        "type": "Sequential",
        "layers": [
            {"type": "Linear", "in_features": 8, "out_features": 16},
            {"type": "ReLU"},
            {"type": "Dropout", "p": 0.2},
            {"type": "Linear", "in_features": 16, "out_features": 4},
        ],
    },
    "init": {"seed": 0},
}


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    """Two groups: weight decay on weights only."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=1e-2)
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Data from the global RNG and Python's ``random``, dropout from torch's: each must resume."""
    for _ in range(steps):
        x = torch.randn(4, 8) * (1 + random.random())
        loss = (model(x) - torch.randn(4, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_resuming_is_bitwise_equal_to_never_stopping(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    random.seed(0)
    model = build_from_config(MLP)
    optimizer = make_optimizer(kind, model)
    train(model, optimizer, 3)
    save_checkpoint(model, tmp_path / "run.safetensors", optimizer=optimizer, state={"step": 3, "best": [0.5, None]})
    train(model, optimizer, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_state = optimizer.state_dict()

    torch.manual_seed(123)  # another process: its own RNG states, a fresh model and optimizer
    random.seed(123)
    fresh = make_optimizer(kind, build_from_config(MLP, device="meta"))
    resumed_state: dict = {}
    resumed = load_checkpoint(tmp_path / "run.safetensors", optimizer=fresh, state=resumed_state)
    assert resumed_state == {"step": 3, "best": [0.5, None]}
    assert fresh.param_groups[0]["params"] == [resumed[0].weight, resumed[3].weight]  # pointed at the new model's
    train(resumed, fresh, 3)
    same(resumed.state_dict(), expected)
    for index, values in expected_state["state"].items():
        same(fresh.state_dict()["state"][index], values)


def test_the_checkpoint_holds_json_and_tensors_only(tmp_path: Path) -> None:
    model = build_from_config(MLP)
    optimizer = make_optimizer("adamw", model)
    train(model, optimizer, 1)
    save_checkpoint(model, tmp_path / "run.safetensors", optimizer=optimizer, state={"step": 1})
    raw = (tmp_path / "run.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    training = json.loads(header["__metadata__"]["training"])
    assert training["optimizer"]["type"] == "torch.optim.adamw.AdamW"
    assert training["optimizer"]["groups"] == [["0.weight", "3.weight"], ["0.bias", "3.bias"]]
    assert set(training["rng"]) >= {"torch", "python"}
    assert ".optimizer.state[0].exp_avg" in header and ".optimizer.state[3].step" in header
    for key, entry in header.items():  # the 4-byte step counters go last: every other tensor starts aligned
        start, end = entry["data_offsets"] if key != "__metadata__" else (0, 0)
        assert (end - start) % 64 or start % 64 == 0, key
    assert load_checkpoint(tmp_path / "run.safetensors").state_dict().keys() == model.state_dict().keys()
    other = build_from_config(MLP)
    load_weights(other, tmp_path / "run.safetensors")  # the weights alone: the training state is not a key
    same(other.state_dict(), model.state_dict())


def test_training_state_that_does_not_fit_says_why(tmp_path: Path) -> None:
    model = build_from_config(MLP)
    optimizer = make_optimizer("adamw", model)
    train(model, optimizer, 1)
    save_checkpoint(model, tmp_path / "run.safetensors", optimizer=optimizer)
    save_checkpoint(model, tmp_path / "weights.safetensors")
    fresh = build_from_config(MLP, device="meta")
    with pytest.raises(CheckpointError, match="a torch.optim.adamw.AdamW's, not a torch.optim.sgd.SGD's"):
        load_checkpoint(tmp_path / "run.safetensors", optimizer=make_optimizer("sgd", fresh))
    one_group = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    groups = "its optimizer has 2 groups of 2, 2 parameters, this one has 1 group of 4 parameters"
    with pytest.raises(CheckpointError, match=groups):
        load_checkpoint(tmp_path / "run.safetensors", optimizer=one_group)
    swapped = torch.optim.AdamW(
        [{"params": [fresh[3].weight, fresh[0].weight]}, {"params": [fresh[0].bias, fresh[3].bias]}]
    )
    slot = r"group 0 slot 0 \(0.weight\): stored for \[16, 8\], the optimizer holds \[4, 16\]"
    with pytest.raises(CheckpointError, match=slot):
        load_checkpoint(tmp_path / "run.safetensors", optimizer=swapped)
    with pytest.raises(CheckpointError, match="holds no training state"):
        load_checkpoint(tmp_path / "weights.safetensors", optimizer=make_optimizer("adamw", fresh))
    save_checkpoint(model, tmp_path / "state_only.safetensors", state={"step": 1})
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "state_only.safetensors", optimizer=make_optimizer("adamw", fresh))
    stranger = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(CheckpointError, match="not the model's parameters"):
        save_checkpoint(model, tmp_path / "x.safetensors", optimizer=stranger)


def test_state_keeps_tensors_int_keys_and_tuples(tmp_path: Path) -> None:
    model = build_from_config(MLP)
    state = {"step": 7, "ema": {0: torch.arange(3.0), 1: (torch.ones(2), 2.5)}, "name": "run-1", "inf": float("inf")}
    save_checkpoint(model, tmp_path / "s.safetensors", state=state)
    got: dict = {}
    load_checkpoint(tmp_path / "s.safetensors", state=got)
    assert got.keys() == state.keys() and got["step"] == 7 and got["name"] == "run-1" and got["inf"] == float("inf")
    assert list(got["ema"]) == [0, 1] and isinstance(got["ema"][1], tuple)
    assert torch.equal(got["ema"][0], state["ema"][0]) and torch.equal(got["ema"][1][0], torch.ones(2))
    with pytest.raises(TypeError, match=r"^state\.ema\[0\]: a set"):
        save_checkpoint(model, tmp_path / "bad.safetensors", state={"ema": {0: {1, 2}}})


def test_save_tensors_round_trips_an_optimizer_state_dict(tmp_path: Path) -> None:
    model = build_from_config(MLP)
    optimizer = make_optimizer("adamw", model)
    train(model, optimizer, 2)
    saved = optimizer.state_dict()
    save_tensors(saved, tmp_path / "opt.safetensors")
    loaded = load_tensors(tmp_path / "opt.safetensors")
    assert list(loaded["state"]) == [0, 1, 2, 3] and loaded["param_groups"] == saved["param_groups"]
    for index, values in saved["state"].items():
        same(loaded["state"][index], values)
    fresh = make_optimizer("adamw", model)
    fresh.load_state_dict(loaded)  # torch takes it back as it gave it
    with pytest.raises(TypeError, match=r"^state\[0\]\.step: an object"):
        save_tensors({"state": {0: {"step": object()}}}, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match=r"^state: a key of type float"):
        save_tensors({"state": {0.5: 1}}, tmp_path / "bad.safetensors")


# --- sharded: 2 ranks, gloo ------------------------------------------------------------------------

SMALL_GPT = {"vars.n_layer": 2, "vars.n_embd": 32, "vars.n_head": 4, "vars.vocab_size": 64, "vars.block_size": 32}


def gpt_recipe(dropout: float = 0.1) -> dict:
    rc = recipe_with("gpt2_small", {**SMALL_GPT, "vars.dropout": dropout})
    rc = OmegaConf.to_container(rc, resolve=True)
    rc.setdefault("init", {})["seed"] = 0
    return rc


def _train_gpt(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        idx = torch.randint(0, 64, (2, 16))
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def _sharded_resume(rank: int, world: int, folder: str) -> None:
    for kind in ("adamw", "sgd"):
        torch.manual_seed(rank)  # each rank its own dropout stream: each rank's RNG state must resume
        random.seed(rank)
        model = build_from_config(gpt_recipe(), mesh=cpu_mesh())
        optimizer = make_optimizer(kind, model)
        _train_gpt(model, optimizer, 2)
        path = Path(folder, f"{kind}-ckpt")
        save_checkpoint(model, path, optimizer=optimizer, state={"step": 2})
        _train_gpt(model, optimizer, 2)
        expected = _full(model)

        torch.manual_seed(100 + rank)
        fresh = make_optimizer(kind, build_from_config(gpt_recipe(), mesh=cpu_mesh()))
        state: dict = {}
        resumed = load_checkpoint(path, mesh=cpu_mesh(), optimizer=fresh, state=state)
        assert state == {"step": 2}
        _train_gpt(resumed, fresh, 2)
        same(_full(resumed), expected)
        assert resumed.lm_head.weight is resumed.transformer.wte.weight
        dist.barrier()
    optimizer = make_optimizer("adamw", build_from_config(gpt_recipe(), device="meta"))
    whole = load_checkpoint(Path(folder, "adamw-ckpt"), optimizer=optimizer)  # whole, in one process
    assert not any(isinstance(p, DTensor) for p in whole.parameters())
    assert len(optimizer.state) == len(list(whole.parameters()))
    assert all(s["step"].item() == 2 and not isinstance(s["exp_avg"], DTensor) for s in optimizer.state.values())


@pytest.mark.slow
def test_sharded_resuming_on_two_ranks_is_bitwise_equal_to_never_stopping(tmp_path: Path) -> None:
    run_ranks(2, _sharded_resume, str(tmp_path))


# --- weights from elsewhere --------------------------------------------------------------------------

# The map conf/model/gpt2_small.yaml documents at its top, from transformers' GPT-2 names
GPT2_TRANSPOSE = ["*.c_attn.weight", "*.c_proj.weight", "*.c_fc.weight"]


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """A tiny ``GPT2LMHeadModel`` saved with ``save_pretrained``: one file, and shards with an index."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder / "one")
    model.save_pretrained(folder / "sharded", max_shard_size="20KB")
    transformers.GPT2Model(config).save_pretrained(folder / "bare")
    return model, folder


def small_gpt2() -> nn.Module:
    return build_from_config(gpt_recipe(dropout=0.0)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["one/model.safetensors", "sharded/model.safetensors.index.json", "sharded"])
def test_a_transformers_gpt2_loads_into_gpt2_small(hf_gpt2, where: str) -> None:
    reference, folder = hf_gpt2
    assert (where != "sharded") or len(list((folder / "sharded").glob("*.safetensors"))) > 2
    model = small_gpt2()
    load_weights(model, folder / where, transpose=GPT2_TRANSPOSE)  # lm_head: tied to wte, not stored
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_foreign_keys_that_match_nothing_name_the_closest_on_both_sides(hf_gpt2) -> None:
    _, folder = hf_gpt2
    model = small_gpt2()
    nothing = r"none of its \d+ keys is a key of the model \(closest: 'h\.\d\."
    with pytest.raises(CheckpointError, match=nothing) as info:
        load_weights(model, folder / "bare", transpose=GPT2_TRANSPOSE)
    assert "~ model 'transformer.h.0." in str(info.value) and "rename=" in str(info.value)
    load_weights(model, folder / "bare", rename={"^": "transformer."}, transpose=GPT2_TRANSPOSE)


def test_load_weights_reports_missing_unexpected_and_mis_shaped_together(tmp_path: Path) -> None:
    source = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False), "extra": nn.Linear(2, 2)})
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = nn.ModuleDict({"emb": nn.Embedding(10, 5), "head": nn.Linear(4, 10, bias=False), "new": nn.Linear(2, 2)})
    with pytest.raises(CheckpointError) as info:
        load_weights(target, tmp_path / "w.pt")
    message = str(info.value)
    assert "missing keys: new.weight, new.bias" in message and "unexpected keys: extra.weight, extra.bias" in message
    assert "emb.weight: checkpoint [10, 4] vs model [10, 5]" in message
    tied = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    tied["head"].weight = tied["emb"].weight
    load_weights(tied, tmp_path / "w.pt", strict=False, rename={r"^head\.": "unused."})  # head: present through emb
    assert torch.equal(tied["head"].weight, source["emb"].weight) and tied["head"].weight is tied["emb"].weight
    with pytest.raises(CheckpointError, match="rename maps both 'emb.weight' and 'head.weight' to 'w'"):
        load_weights(tied, tmp_path / "w.pt", rename={r"^\w+\.weight$": "w"})
    with pytest.raises(CheckpointError, match=r"transpose: '\*\.nothing' match no 2-D tensor"):
        load_weights(tied, tmp_path / "w.pt", strict=False, transpose=["*.nothing"])
    save_tensors([torch.zeros(2)], tmp_path / "list.safetensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="a torch file of list, not a dict of name -> tensor"):
        load_weights(tied, tmp_path / "list.pt")


def test_a_crafted_training_state_is_a_checkpoint_error(tmp_path: Path) -> None:
    from tests.attacks import write_checkpoint  # noqa: PLC0415

    model = build_from_config(MLP)
    save_checkpoint(model, tmp_path / "real.safetensors", optimizer=make_optimizer("sgd", model))
    raw = (tmp_path / "real.safetensors").read_bytes()
    real = json.loads(json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]["training"])
    optimizer = make_optimizer("sgd", build_from_config(MLP, device="meta"))
    crafted = {
        "groups of lists": {**real, "optimizer": {**real["optimizer"], "groups": [[["0.weight"]], []]}},
        "state_dict a number": {**real, "optimizer": {**real["optimizer"], "state_dict": {"value": 3}}},
        "rng not base64": {**real, "rng": {**real["rng"], "torch": "@@"}},
        "a missing tensor": {**real, "optimizer": {**real["optimizer"], "state_dict": {"tensor": "nowhere"}}},
    }
    load_checkpoint(tmp_path / "real.safetensors", optimizer=optimizer)  # the real one loads
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    for i, training in enumerate(crafted.values()):
        extra = {"training": json.dumps(training)}
        path = write_checkpoint(tmp_path / f"{i}.safetensors", json.loads(json.dumps(MLP)), extra, tensors)
        with pytest.raises(CheckpointError, match="the file is corrupted"):
            load_checkpoint(path, optimizer=optimizer)


def test_state_from_a_checkpoint_without_training_state_stays_empty(tmp_path: Path) -> None:
    model = build_from_config(MLP)
    save_checkpoint(model, tmp_path / "weights.safetensors")
    state: dict = {}
    load_checkpoint(tmp_path / "weights.safetensors", state=state)  # nothing to restore: not an error
    assert state == {}
