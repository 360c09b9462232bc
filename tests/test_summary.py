"""The summary table: paths, types, output shapes, counts, bytes, dtypes; shared parameters counted once."""

import json
import re

import pytest
import yaml
from torch import nn

from composer import ConfigError, build_from_config, init_report, register_module, summary
from tests.recipes import model_recipe

COLUMNS = ("module", "type", "output shape", "params", "bytes", "dtype", "shared")


def rows(text: str) -> dict[str, list[str]]:
    """The printed table by module path: {path: [type, output shape, params, bytes, dtype, shared]}."""
    lines = text.splitlines()
    starts = [lines[0].index(col) for col in COLUMNS]
    ends = [*starts[1:], None]
    table = {}
    for line in lines[2:]:
        if line.startswith("total parameters") or re.match(r"\(\d+ module", line):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
        table[cells[0]] = cells[1:]
    return table


def by_path(data: dict) -> dict[str, dict]:
    return {row["path"] or "(model)": row for row in data["rows"]}


def test_tied_network_marks_sharing_and_counts_it_once():
    model = build_from_config(model_recipe("tied"))
    text = summary(model)
    table = rows(text)
    assert table["2"] == ["Linear", "[2, 8]", "72", "288 B", "float32", "weight = 4.weight; bias = 4.bias"]
    assert table["4"] == ["Linear", "[2, 8]", "", "", "", "same module as 2"]  # counted once, on row 2
    assert table["6"] == ["Linear", "[2, 1]", "9", "36 B", "float32", ""]
    assert table["(model)"][2:4] == ["121", "484 B"]
    assert "total parameters: 121 (484 B); 2 shared tensor(s) counted once" in text
    data = summary(model, as_dict=True)
    leaves = [row for row in data["rows"] if not row["container"]]
    assert sum(row["params"] for row in leaves) == data["totals"]["params"] == 121
    assert sum(row["bytes"] for row in leaves) == data["totals"]["bytes"] == 484


def test_a_shared_module_used_twice_counts_once_in_every_column():
    recipe = {
        "model": {"type": "Sequential", "layers": [{"ref": "lin"}, {"type": "ReLU"}, {"ref": "lin"}]},
        "shared": {"lin": {"type": "Linear", "in_features": 32, "out_features": 32}},
        "input_shape": [2, 32],
    }
    data = summary(build_from_config(recipe), as_dict=True)
    table = by_path(data)
    assert (table["0"]["params"], table["0"]["bytes"]) == (1056, 4224)
    assert (table["2"]["params"], table["2"]["bytes"], table["2"]["same_module_as"]) == (0, 0, "0")
    assert table["(model)"]["params"] == data["totals"]["params"] == 1056
    json.dumps(data)  # machine-readable as it is


def test_tied_parameters_count_once_and_name_their_other_path():
    recipe = {
        "model": {"type": "Sequential", "layers": {
            "emb": {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4},
            "head": {"type": "Linear", "in_features": 4, "out_features": 10, "bias": False},
        }},
        "tie": {"head.weight": "emb.weight"},
    }  # fmt: skip
    data = summary(build_from_config(recipe), as_dict=True)
    table = by_path(data)
    assert table["emb"]["params"] == 40 and table["head"]["params"] == 0
    assert table["head"]["ties"] == "weight = emb.weight"
    assert data["totals"]["params"] == 40 and data["totals"]["shared_tensors"] == 1


def test_containers_hold_subtotals_and_depth_limits_the_rows():
    model = build_from_config(model_recipe("rgnet"))
    table = rows(summary(model))
    assert table["0.block 2.2"] == ["Linear", "[2, 4]", "36", "144 B", "float32", ""]
    assert table["0.block 2"][:3] == ["Sequential", "[2, 4]", "76"]  # 40 + 36
    assert table["0"][2] == "304" and table["(model)"][:3] == ["Sequential", "[2, 1]", "309"]
    shallow = summary(model, depth=1)
    assert list(rows(shallow)) == ["(model)", "0", "1"]
    assert "(20 module(s) below depth 1 not shown; their parameters are in the subtotals)" in shallow
    assert "total parameters: 309 (1.2 KB)" in shallow
    # the init report groups what lies below the depth: one line per ancestor and scheme
    grouped = "initialization:\n  0.*:      default (16 tensors)\n  1.weight: default\n  1.bias:   default"
    assert shallow.endswith(grouped)
    assert summary(model, depth=0).endswith("initialization:\n  *: default (18 tensors)")
    assert [row["path"] for row in summary(model, depth=0, as_dict=True)["rows"]] == [""]
    with pytest.raises(ValueError, match="depth"):
        summary(model, depth=-1)


def test_bytes_and_dtypes_follow_the_parameters():
    recipe = {
        "model": {"type": "Linear", "in_features": 4, "out_features": 2},
        "dtype": "bfloat16",
        "input_shape": [1, 4],
    }
    data = summary(build_from_config(recipe), as_dict=True)
    assert data["rows"][0]["dtypes"] == ["bfloat16"] and data["rows"][0]["bytes"] == 20
    assert data["totals"]["bytes"] == 20


def test_frozen_and_trainable_totals_and_buffers():
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "Linear", "in_features": 2, "out_features": 2, "frozen": True},
            {"type": "BatchNorm1d", "num_features": 2},
        ]},
        "input_shape": [3, 2],
    }  # fmt: skip
    model = build_from_config(recipe)
    text = summary(model)
    assert "  trainable: 4 (16 B)" in text and "  frozen:    6 (24 B)" in text
    assert "buffers: 5 values (24 B)" in text  # running mean and var, num_batches_tracked (int64)
    totals = summary(model, as_dict=True)["totals"]
    assert (totals["trainable"], totals["frozen"], totals["params"]) == (4, 6, 10)


def test_attention_output_shows_the_tensor_not_its_empty_weights():
    layer = {"type": "TransformerEncoderLayer", "d_model": 64, "nhead": 4, "dim_feedforward": 128, "batch_first": True}
    table = rows(summary(build_from_config({"model": layer, "input_shape": [2, 10, 64]})))
    assert table["self_attn"][:2] == ["MultiheadAttention", "[2, 10, 64]"]  # (out, None), not [.., 'NoneType']


def test_init_report_is_a_dict_that_prints_as_a_table():
    recipe = yaml.safe_load(model_recipe("mlp").read_text())
    model = build_from_config({**recipe, "init": {"rules": [{"layer": "Linear", "weight": "zeros"}]}})
    report = init_report(model)
    assert isinstance(report, dict) and report["0.weight"].startswith("zeros")
    lines = str(report).splitlines()
    assert lines[0] == "initialization:" and lines[1].startswith("  0.weight: zeros")
    assert lines[2] == "  0.bias:   default"
    assert str(report) in summary(model) and summary(model, as_dict=True)["init"] == report


def test_scalar_output_and_explicit_input_shape():
    text = summary(build_from_config(model_recipe("chimera")), input_shape=[3, 20])
    assert rows(text)["1"] == ["Linear", "[3, 20]", "340", "1.4 KB", "float32", ""]
    assert rows(text)["(model)"][1] == "[]"
    assert "input shape: [3, 20]" in text


def test_handwritten_model_without_shape():
    text = summary(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    assert rows(text)["0"] == ["Linear", "", "16", "64 B", "float32", ""]
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
    assert "  trainable: 0 (0 B)" in summary(model)


def test_model_that_cannot_take_zeros_still_gets_a_table():
    text = summary(
        build_from_config({"type": "Embedding", "num_embeddings": 5, "embedding_dim": 2}), input_shape=[2, 3]
    )
    assert rows(text)["(model)"] == ["Embedding", "", "10", "40 B", "float32", ""]
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


def test_an_input_one_dimension_short_says_input_shape_includes_the_batch():
    conv = {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3}
    recipe = {"model": {"type": "Sequential", "layers": [conv, {"type": "Flatten"}]}, "input_shape": [2, 28, 28]}
    with pytest.raises(ConfigError) as e:
        build_from_config(
            {
                **recipe,
                "model": {
                    "type": "Sequential",
                    "layers": [conv, {"type": "Flatten"}, {"type": "Linear", "out_features": 3}],
                },
            }
        )
    assert e.value.path == "input_shape"
    assert (
        "(input_shape includes the batch dimension: Conv2d takes 4 dims, [batch, channels, size, size], "
        "and [2, 28, 28] has 3, e.g. [2, 1, 28, 28])" in str(e.value)
    )
    # without lazy layers the build passes; the summary says why it has no output shapes
    text = summary(build_from_config(recipe))
    assert "input_shape includes the batch dimension" in text
    ok = {**recipe, "input_shape": [2, 1, 28, 28]}
    assert "batch dimension" not in summary(build_from_config(ok))


def test_the_batch_hint_comes_whatever_layer_fails_first():
    """Conv2d runs an unbatched [C, H, W] input; the BatchNorm2d after it is what fails (as in
    resnet18 with input_shape [3, 224, 224]): the hint names the model's input all the same."""
    layers = [
        {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
        {"type": "BatchNorm2d", "num_features": 4},
        {"type": "Flatten"},
        {"type": "Linear", "out_features": 2},
    ]
    with pytest.raises(ConfigError) as e:
        build_from_config({"model": {"type": "Sequential", "layers": layers}, "input_shape": [3, 8, 8]})
    assert "failed in module '1': ValueError: expected 4D input (got 3D input)" in str(e.value)
    assert (
        "(input_shape includes the batch dimension: BatchNorm2d takes 4 dims, [batch, channels, size, size], "
        "and [3, 8, 8] has 3, e.g. [2, 3, 8, 8])" in str(e.value)
    )
