"""The summary table: paths, types, output shapes, counts, shared parameters counted once."""

import pytest
from torch import nn

from composer import ConfigError, build_from_config, register_module, summary
from tests.recipes import model_recipe


def rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    header = lines[0]
    starts = [header.index(col) for col in ("module", "type", "output shape", "params", "shared")]
    table = {}
    for line in lines[2:]:
        if line.startswith("total parameters"):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        table[cells[0]] = cells[1:]
    return table


def test_tied_network_marks_sharing_and_counts_it_once():
    text = summary(build_from_config(model_recipe("tied")))
    table = rows(text)
    assert table["2"] == ["Linear", "[2, 8]", "72", "weight = 4.weight; bias = 4.bias"]
    assert table["4"][3] == "same module as 2"
    assert table["6"] == ["Linear", "[2, 1]", "9", ""]
    assert "total parameters: 121 (trainable 121; 2 shared tensor(s) counted once)" in text


def test_nested_paths_and_output_shapes():
    table = rows(summary(build_from_config(model_recipe("rgnet"))))
    assert table["0.block 2.2"] == ["Linear", "[2, 4]", "36", ""]
    assert table["(model)"][:2] == ["Sequential", "[2, 1]"]


def test_scalar_output_and_explicit_input_shape():
    text = summary(build_from_config(model_recipe("chimera")), input_shape=[3, 20])
    assert rows(text)["1"] == ["Linear", "[3, 20]", "340", ""]
    assert rows(text)["(model)"][1] == "[]"
    assert "input shape: [3, 20]" in text


def test_handwritten_model_without_shape():
    text = summary(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    assert rows(text)["0"] == ["Linear", "", "16", ""]
    assert "initialization" not in text


def test_lazy_model_without_input_shape_names_it():
    model = build_from_config({"type": "Linear", "out_features": 2})
    with pytest.raises(ConfigError, match="input_shape"):
        summary(model)
    assert rows(summary(model, input_shape=[1, 5]))["(model)"][:3] == ["Linear", "[1, 2]", "12"]


def test_frozen_parameters_are_not_trainable():
    model = build_from_config(
        {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2, "out_features": 2, "frozen": True}]}
    )
    assert "total parameters: 6 (trainable 0;" in summary(model)


def test_model_that_cannot_take_zeros_still_gets_a_table():
    text = summary(
        build_from_config({"type": "Embedding", "num_embeddings": 5, "embedding_dim": 2}), input_shape=[2, 3]
    )
    assert rows(text)["(model)"] == ["Embedding", "", "10", ""]
    assert (
        "output shapes unavailable: a forward pass of zeros shaped [2, 3] failed in module '(model)': RuntimeError"
        in text
    )


def test_meta_forward_checks_shapes_as_the_real_one_does():
    recipe = {
        "model": {
            "type": "Sequential",
            "layers": [{"type": "Linear", "out_features": 8}, {"type": "LayerNorm", "normalized_shape": 5}],
        },
        "input_shape": [2, 30],
    }
    with pytest.raises(ConfigError, match="in module '1'.*normalized_shape"):
        build_from_config(recipe, device="meta")
    linear = {"type": "Linear", "in_features": 20, "out_features": 8}
    with pytest.raises(ConfigError, match="input_shape: .*in_features=20"):  # as the real run's smoke forward
        build_from_config({"model": linear, "input_shape": [2, 30]}, device="meta")
    assert "output shapes unavailable" in summary(build_from_config(linear, device="meta"), input_shape=[2, 30])


class Unsqueezed(nn.Linear):
    """A Linear subclass with a forward of its own: the meta shape rule must not replace it."""

    def forward(self, x):
        return super().forward(x).unsqueeze(1)


def test_meta_forward_keeps_a_subclass_forward():
    register_module(Unsqueezed)
    model = build_from_config(
        {"model": {"type": "Unsqueezed", "in_features": 4, "out_features": 3}, "input_shape": [2, 4]}, device="meta"
    )
    assert rows(summary(model))["(model)"][:2] == ["Unsqueezed", "[2, 1, 3]"]
