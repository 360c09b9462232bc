"""Per-tensor random streams: a tensor's values depend only on the seed, its path, the scheme that
sets it and its shape — not on other rules, build order, or how the model was built."""

from __future__ import annotations

import pytest
import torch
import yaml

from composer import build_from_config, init_report
from composer.init import threads as parallel
from tests.recipes import ROOT, model_recipe

SCHEMES = ["default", "normal", "constant", "xavier", "mixed", "custom"]


def with_scheme(model: str, scheme: str) -> dict:
    recipe = yaml.safe_load(model_recipe(model).read_text())
    if "model" not in recipe:
        recipe = {"model": recipe}
    return recipe | {"init": yaml.safe_load((ROOT / "composer" / "conf" / "init" / f"{scheme}.yaml").read_text())}


@pytest.mark.parametrize("model", ["mlp", "rgnet"])
def test_a_sweep_leaves_every_default_parameter_bitwise_equal(model):
    """As the app does per job: the global seed set, no init.seed; each scheme in turn."""
    built = {}
    for scheme in SCHEMES if model == "mlp" else [s for s in SCHEMES if s != "mixed"]:  # rgnet has no module 2
        torch.manual_seed(0)
        m = build_from_config(with_scheme(model, scheme))
        built[scheme] = (dict(m.named_parameters()), init_report(m))
    reference, _ = built["default"]
    compared = 0
    for scheme, (params, report) in built.items():
        for path, param in params.items():
            if report[path] == "default":
                assert torch.equal(param, reference[path]), (scheme, path)
                compared += 1
    assert compared > len(reference)  # the default job's own, and the others' uncovered biases


def test_an_unrelated_rule_changes_nothing_else():
    plain = build_from_config(with_scheme("mlp", "default") | {"init": {"seed": 0}})
    ruled = build_from_config(
        with_scheme("mlp", "default") | {"init": {"seed": 0, "rules": [{"match": "0", "weight": "xavier_uniform"}]}}
    )
    assert not torch.equal(plain[0].weight, ruled[0].weight)
    for path in ("0.bias", "2.weight", "2.bias"):
        assert torch.equal(plain.get_parameter(path), ruled.get_parameter(path)), path


def test_lazy_and_eager_builds_give_the_same_weights():
    """lazy_mlp infers its sizes through a forward pass; mlp states them: same paths, same values."""
    lazy = build_from_config(
        with_scheme("lazy_mlp", "xavier") | {"init": {"seed": 3, "rules": [{"layer": "Linear", "bias": "uniform"}]}}
    )
    eager = build_from_config(
        with_scheme("mlp", "xavier") | {"init": {"seed": 3, "rules": [{"layer": "Linear", "bias": "uniform"}]}}
    )
    for (n1, p1), (n2, p2) in zip(lazy.named_parameters(), eager.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_a_block_built_for_real_and_one_built_on_meta_agree():
    """MyLinear resets as a whole from its module's stream, wherever it was built."""
    recipe = {
        "model": {"type": "Sequential", "layers": [{"type": "MyLinear", "in_units": 4, "units": 3}]},
        "init": {"seed": 1},
    }
    a, b = build_from_config(recipe), build_from_config(recipe)
    assert torch.equal(a[0].weight, b[0].weight)
    sibling = build_from_config(
        recipe
        | {
            "model": {
                "type": "Sequential",
                "layers": [
                    {"type": "MyLinear", "in_units": 4, "units": 3},
                    {"type": "Linear", "in_features": 3, "out_features": 2},
                ],
            }
        }
    )
    assert torch.equal(a[0].weight, sibling[0].weight)  # a later sibling draws nothing from its stream


def test_values_follow_the_path_not_the_position_in_the_build():
    one = build_from_config(
        {
            "model": {"type": "Sequential", "layers": {"a": {"type": "Linear", "in_features": 4, "out_features": 4}}},
            "init": {"seed": 5},
        }
    )
    two = build_from_config(
        {
            "model": {
                "type": "Sequential",
                "layers": {
                    "z": {"type": "Linear", "in_features": 9, "out_features": 9},
                    "a": {"type": "Linear", "in_features": 4, "out_features": 4},
                },
            },
            "init": {"seed": 5},
        }
    )
    assert torch.equal(one.a.weight, two.a.weight) and torch.equal(one.a.bias, two.a.bias)


def test_defaults_keep_torchs_distributions():
    model = build_from_config(
        {
            "model": {
                "type": "Sequential",
                "layers": [
                    {"type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 3},
                    {"type": "BatchNorm2d", "num_features": 16},
                    {"type": "Embedding", "num_embeddings": 50, "embedding_dim": 32, "padding_idx": 0},
                    {"type": "LSTM", "input_size": 8, "hidden_size": 16},
                    {"type": "MultiheadAttention", "embed_dim": 16, "num_heads": 2},
                ],
            },
            "init": {"seed": 0},
        }
    )
    bound = 1 / (8 * 9) ** 0.5
    assert model[0].weight.abs().max() <= bound and model[0].bias.abs().max() <= bound
    assert torch.equal(model[1].weight, torch.ones(16)) and torch.equal(model[1].running_var, torch.ones(16))
    assert int(model[1].num_batches_tracked) == 0
    assert torch.equal(model[2].weight[0], torch.zeros(32)) and 0.8 < model[2].weight[1:].std() < 1.2
    assert all(p.abs().max() <= 0.25 for p in model[3].parameters())
    assert torch.equal(model[4].in_proj_bias, torch.zeros(48)) and torch.equal(model[4].out_proj.bias, torch.zeros(16))


def test_fills_in_threads_equal_a_serial_fill_bit_for_bit(monkeypatch):
    """Large tensors are filled in several threads (``composer.init.threads``); whatever the split,
    each tensor's values are those of its own stream."""
    recipe = {
        "model": {
            "type": "Sequential",
            "layers": [
                {"type": "Linear", "in_features": 256, "out_features": 256},
                {"type": "Embedding", "num_embeddings": 300, "embedding_dim": 64, "padding_idx": 0},
                {"type": "Conv1d", "in_channels": 64, "out_channels": 64, "kernel_size": 3},
                {"type": "Linear", "in_features": 256, "out_features": 512},
                {"type": "Linear", "in_features": 256, "out_features": 256},
                {"type": "Linear", "in_features": 256, "out_features": 256},
                {"type": "Linear", "in_features": 256, "out_features": 256},
            ],
        },
        "init": {
            "seed": 11,
            "rules": [
                {"match": "3", "weight": {"type": "normal", "std": 0.02}},
                # sparse permutes rows with the global generator, ones forks it: both stay in one thread
                {"match": "[45]", "weight": {"type": "sparse", "sparsity": 0.5}},
                {"match": "6", "weight": "ones"},
            ],
        },
    }
    serial = build_from_config(recipe)
    monkeypatch.setattr(parallel, "LARGE", 1000)  # every tensor above 1,000 elements goes to a thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert parallel.threads_for(300_000) == 3
    threaded = build_from_config(recipe)
    for (name, a), (_, b) in zip(serial.state_dict().items(), threaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(threaded[1].weight[0], torch.zeros(64))


def test_a_layers_own_reset_still_runs_outside_a_build():
    """A build skips the resets of the layers whose tensors it fills itself; anywhere else they run."""
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.zero_()
    layer.reset_parameters()
    assert layer.weight.abs().sum() > 0
