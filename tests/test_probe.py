"""``probe``: signal propagation at init, per leaf module call and per parameter."""

import json
import math

import pytest
import torch
import yaml

from composer import build_from_config
from composer.build.record import record_of
from composer.describe.probe import MacsCounter, probe
from composer.describe.summarize import summarize
from tests.recipes import model_recipe


def built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_from_config(model_recipe(name))


def test_mlp_records_each_leaf_in_forward_order_and_each_gradient():
    model = built("mlp")
    result = probe(model, record_of(model).recipe, batch=64)
    json.dumps(result)  # JSON-ready as it is
    assert result["batch"] == 64 and result["inputs"][0]["shape"] == [64, 20]
    assert result["inputs"][0]["std"] == pytest.approx(1, abs=0.1)  # standard normal
    assert [(layer["path"], layer["type"]) for layer in result["layers"]] == [
        ("0", "Linear"),
        ("1", "ReLU"),
        ("2", "Linear"),
    ]
    assert [p["path"] for p in result["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # the loss is out.pow(2).mean() of the batch; its gradient reaches every parameter
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(0))
    assert result["loss"] == pytest.approx(model(x).pow(2).mean().item(), rel=1e-5)
    assert all(p["grad_norm"] > 0 for p in result["params"])
    relu = result["layers"][1]
    assert relu["mean"] > 0 and relu["std"] > 0


def test_the_model_the_rng_and_the_grads_are_left_as_they_were():
    model = built("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    state = torch.get_rng_state()
    probe(model, record_of(model).recipe)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_tuple_outputs_graphs_and_token_ids():
    model = built("lstm_classifier")  # a Graph: Embedding -> LSTM (a tuple) -> getitem -> Linear
    result = probe(model, record_of(model).recipe, batch=8)
    assert result["inputs"][0]["shape"] == [8, 16] and result["inputs"][0]["dtype"] == "int64"
    layers = {layer["path"]: layer for layer in result["layers"]}
    assert layers["lstm"]["std"] > 0  # the first tensor of (output, (h, c))
    assert layers["fc"]["std"] > 0
    assert all(p["grad_norm"] is not None for p in result["params"])


def test_a_module_called_twice_appears_twice():
    model = built("tied")
    calls = [(layer["path"], layer["call"]) for layer in probe(model, record_of(model).recipe)["layers"]]
    assert calls[2] == ("2", 1) and calls[4] == ("2", 2)  # the shared Linear, at positions 2 and 4
    model = built("siamese")  # one encoder called on two inputs
    result = probe(model, record_of(model).recipe, batch=4)
    assert len(result["inputs"]) == 2
    assert max(layer["call"] for layer in result["layers"]) == 2


def test_frozen_parameters_have_no_gradient():
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "Linear", "in_features": 3, "out_features": 3, "frozen": True},
            {"type": "Linear", "in_features": 3, "out_features": 1},
        ]},
        "input_shape": [2, 3],
    }  # fmt: skip
    model = build_from_config(recipe)
    grads = {p["path"]: p["grad_norm"] for p in probe(model, record_of(model).recipe)["params"]}
    assert grads["0.weight"] is None and grads["1.weight"] > 0


def test_max_macs_shrinks_the_batch_but_not_below_two():
    model = built("mlp")  # 20*256 + 256*10 = 7,680 multiply-adds an example
    recipe = record_of(model).recipe
    assert probe(model, recipe, 64, max_macs=7680 * 10)["batch"] == 10
    assert probe(model, recipe, 64, max_macs=1)["batch"] == 2
    assert probe(model, recipe, 64, max_macs=None)["batch"] == 64
    with MacsCounter(model) as macs:
        model(torch.zeros(3, 20))
    assert macs.total == 3 * 7680


def test_collapse_shows_as_a_vanishing_std():
    layers = [{"type": "Linear", "in_features": 64, "out_features": 64} for _ in range(6)]
    recipe = {
        "model": {"type": "Sequential", "layers": layers},
        "init": {"rules": [{"weight": {"type": "normal", "std": 0.01}, "bias": "zeros"}]},
        "input_shape": [2, 64],
    }
    model = build_from_config(recipe)
    stds = [layer["std"] for layer in probe(model, record_of(model).recipe)["layers"]]
    assert all(b < a for a, b in zip(stds, stds[1:], strict=False)) and stds[-1] < 1e-6
    assert not any(math.isnan(s) for s in stds)


def test_needs_example_inputs():
    model = build_from_config(yaml.safe_load("model: {type: Linear, in_features: 2, out_features: 1}"))
    with pytest.raises(ValueError, match="input_shape"):
        probe(model, record_of(model).recipe)


def test_batch_norm_statistics_are_put_back_and_the_first_forward_gives_the_summary_shapes():
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
            {"type": "BatchNorm2d", "num_features": 4},
            {"type": "ReLU"},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 144, "out_features": 2},
        ]},
        "input_shape": [3, 3, 8, 8],
    }  # fmt: skip
    model = build_from_config(recipe)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    shapes: dict = {}
    result = probe(model, record_of(model).recipe, batch=64, max_macs=None, shapes=shapes)
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())  # running stats as they were
    assert result["batch"] == 64  # a second forward: the first ran the recipe's batch of 3
    expected = summarize(model)  # its own forward of zeros
    assert summarize(model, shapes=shapes).text() == expected.text()
    assert shapes[id(model)] == [3, 2]
    capped = probe(model, record_of(model).recipe, batch=64, max_macs=1)  # the first forward is the probe's
    assert capped["batch"] == 3 and capped["inputs"][0]["shape"] == [3, 3, 8, 8]
