"""Identical leaf nodes after the first are built as copies of it (``composer.build.twins``): each copy
must be what the constructor makes, independent of its twins, and the model the same."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from composer import build_from_config
from composer.build import builder as build
from composer.build.placement import skipping_fills
from composer.build.twins import copier
from composer.modules.blocks import FixedHiddenMLP

LEAVES = [
    {"type": "Linear", "in_features": 6, "out_features": 5},
    {"type": "Linear", "in_features": 6, "out_features": 5, "bias": False},
    {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": [3, 1], "padding": "same"},
    {"type": "Conv1d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 2, "padding_mode": "reflect"},
    {"type": "BatchNorm1d", "num_features": 4},
    {"type": "LayerNorm", "normalized_shape": [4, 5], "eps": 1e-3},
    {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 3, "padding_idx": 0},
    {"type": "ReLU"},
    {"type": "GELU", "approximate": "tanh"},
    {"type": "Dropout", "p": 0.25},
    {"type": "MaxPool2d", "kernel_size": 2},
    {"type": "Flatten"},
    {"type": "Softmax", "dim": -1},
]


def _attributes(module: nn.Module) -> dict:
    return {
        k: v for k, v in vars(module).items() if not isinstance(v, (dict, set)) or k == "_non_persistent_buffers_set"
    }


@pytest.mark.parametrize("node", LEAVES, ids=lambda n: n["type"])
def test_a_copied_twin_is_what_the_constructor_makes_and_stands_alone(node):
    model = build_from_config({"model": {"type": "Sequential", "layers": [dict(node) for _ in range(4)]}})
    fresh = type(model[0])(**{k: v if not isinstance(v, list) else tuple(v) for k, v in node.items() if k != "type"})
    for twin in model:
        assert type(twin) is type(fresh) and repr(twin) == repr(fresh)
        assert vars(twin).keys() == vars(fresh).keys()
        assert _attributes(twin) == _attributes(fresh)
        assert {k: (v.shape, v.dtype, v.requires_grad) for k, v in twin.state_dict(keep_vars=True).items()} == {
            k: (v.shape, v.dtype, v.requires_grad) for k, v in fresh.state_dict(keep_vars=True).items()
        }
    # nothing shared between twins: containers, tensors, hooks
    a, b = model[2], model[3]
    for name, value in vars(a).items():
        if isinstance(value, (dict, set, list)):
            assert value is not vars(b)[name], name
    for (_, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.data_ptr() != y.data_ptr()
    a.register_forward_hook(lambda *_: None)
    assert not b._forward_hooks


def test_copies_change_nothing_in_the_model(monkeypatch):
    recipe = {
        "model": {
            "type": "Sequential",
            "layers": [
                layer
                for _ in range(5)
                for layer in (
                    {"type": "Linear", "in_features": 8, "out_features": 8},
                    {"type": "LayerNorm", "normalized_shape": 8},
                )
            ],
        },
        "init": {"seed": 3, "rules": [{"match": "4", "weight": "xavier_uniform"}]},
    }
    copied = build_from_config(recipe)
    monkeypatch.setattr(build, "copier", lambda module: None)
    constructed = build_from_config(recipe)
    assert repr(copied) == repr(constructed)
    for (k, x), (_, y) in zip(copied.state_dict().items(), constructed.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    batch = torch.randn(3, 8)
    assert torch.equal(copied(batch), constructed(batch))


class _UserLinear(nn.Linear):
    """A user's class: its constructor is theirs, always called."""


def _hooked() -> nn.Linear:
    layer = nn.Linear(4, 4)
    layer.register_forward_hook(lambda *_: None)
    return layer


@pytest.mark.parametrize(
    "make",
    [
        FixedHiddenMLP,  # a constant its constructor draws, and a child
        lambda: nn.LSTM(4, 4),  # a list of its parameters
        lambda: nn.MultiheadAttention(4, 2),  # a child
        lambda: nn.LazyLinear(4),  # lazy
        lambda: _UserLinear(4, 4),  # not torch.nn's
        _hooked,
    ],
    ids=["FixedHiddenMLP", "LSTM", "MultiheadAttention", "LazyLinear", "user subclass", "hooked"],
)
def test_what_cannot_be_shown_equal_is_constructed(make):
    with skipping_fills(torch.device("cpu")):
        assert copier(make()) is None
        assert copier(nn.Linear(4, 4)) is not None
    assert copier(nn.Linear(4, 4)) is None  # outside a build, a constructor fills its tensors


def test_a_copy_is_of_the_module_as_constructed_not_as_changed_later():
    """A user's block may freeze, or switch to eval, the module it is given; the copies made after
    it are still what the constructor makes."""
    with skipping_fills(torch.device("cpu")):
        first = nn.Linear(4, 4)
        copy = copier(first)
        first.requires_grad_(False)
        first.eval()
        twin = copy()
    assert twin.training and twin.weight.requires_grad and twin.bias.requires_grad


def test_nothing_is_copied_while_something_watches_modules_being_made():
    seen = []
    handle = nn.modules.module.register_module_parameter_registration_hook(lambda *args: seen.append(args[1]))
    try:
        model = build_from_config(
            {"model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 3, "out_features": 3}] * 4}}
        )
    finally:
        handle.remove()
    assert seen.count("weight") == 4 and len(model) == 4


def test_a_negative_zero_is_kept():
    """-0.0 == 0.0 in Python: a node that differs from its twin only so is constructed, not copied."""
    layers = [{"type": "LeakyReLU", "negative_slope": slope} for slope in (0.0, 0.0, -0.0, 0.0)]
    model = build_from_config({"model": {"type": "Sequential", "layers": layers}})
    signs = [math.copysign(1.0, layer.negative_slope) for layer in model]
    assert signs == [1.0, 1.0, -1.0, 1.0]


def test_a_patched_register_parameter_sees_every_layer(monkeypatch):
    """``accelerate.init_empty_weights`` replaces ``nn.Module.register_parameter``: every layer is
    then constructed, so the replacement sees each one."""
    original = nn.Module.register_parameter
    seen = []

    def register_parameter(self, name, param):
        seen.append(name)
        original(self, name, param)

    monkeypatch.setattr(nn.Module, "register_parameter", register_parameter)
    build_from_config(
        {"model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 3, "out_features": 3}] * 5}}
    )
    assert seen.count("weight") == 5


def test_a_wrapped_constructor_runs_for_every_layer(monkeypatch):
    """``deepspeed.zero.Init`` wraps every module class's ``__init__``: every layer is then constructed."""
    original = nn.Linear.__init__
    made = []

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(nn.Linear, "__init__", init)
    model = build_from_config(
        {"model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 3, "out_features": 3}] * 5}}
    )
    assert len(made) == 5 and all(any(layer is m for m in made) for layer in model)
