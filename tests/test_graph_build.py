"""Section 7 through the builder: graphs, ops, calls, params, templates, ties, inputs, dtypes, vars,
and every bad input as a ConfigError with its key path."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import yaml
from torch import nn

from composer import ConfigError, build_from_config, init_report, summary
from composer.recipe.read import YAML_LOADER

LINEAR = {"type": "Linear", "in_features": 4, "out_features": 4}


def residual(**extra) -> dict:
    return {
        "type": "Graph",
        "nodes": {"fc": LINEAR, "act": {"type": "ReLU"}, "sum": {"op": "add", "in": ["act", "x"]}},
    } | extra


def problems(recipe) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        build_from_config(recipe)
    return info.value.problems


def test_graph_wires_a_residual_and_keeps_entry_names_as_keys():
    model = build_from_config({"model": residual(), "input_shape": [2, 4]})
    assert list(model.state_dict()) == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 4)
    assert torch.equal(model(x), torch.relu(model.fc(x)) + x)


def test_graph_inside_sequential_repeat_and_shared():
    recipe = {
        "model": {
            "type": "Sequential",
            "layers": [{"type": "Repeat", "times": 2, "body": residual()}, {"ref": "head"}],
        },
        "shared": {"head": {"type": "Graph", "nodes": {"fc": LINEAR}}},
        "input_shape": [2, 4],
    }
    model = build_from_config(recipe)
    assert model[0][0].fc is not model[0][1].fc and list(model(torch.randn(2, 4)).shape) == [2, 4]


def test_call_reuses_the_weights_and_several_inputs_and_tuple_output():
    model = build_from_config(
        {
            "type": "Graph",
            "inputs": ["a", "b"],
            "nodes": {
                "enc": LINEAR,
                "enc_b": {"call": "enc", "in": "b"},
                "diff": {"op": "sub", "in": ["enc", "enc_b"]},
            },
            "output": ["diff", "enc_b"],
        }
    )
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    diff, enc_b = model(a, b)
    assert torch.equal(enc_b, model.enc(b)) and torch.equal(diff, model.enc(a) - model.enc(b))
    assert list(model.state_dict()) == ["enc.weight", "enc.bias"]


def test_graph_params_default_to_zeros_take_inline_init_and_rules():
    node = {
        "type": "Graph",
        "params": {"tok": {"shape": [1, 4]}, "pos": {"shape": [1, 4], "init": "ones"}},
        "nodes": {"a": {"op": "add", "in": ["x", "tok"]}, "b": {"op": "add", "in": ["a", "pos"]}},
    }
    model = build_from_config(node)
    assert torch.equal(model.tok, torch.zeros(1, 4)) and torch.equal(model.pos, torch.ones(1, 4))
    ruled = build_from_config({"model": node, "init": {"rules": [{"tok": {"type": "constant", "val": 2.0}}]}})
    assert torch.equal(ruled.tok, torch.full((1, 4), 2.0))
    assert init_report(ruled)["tok"].startswith("constant") and init_report(ruled)["pos"].startswith("ones")
    frozen = build_from_config(
        {
            "type": "Graph",
            "params": {"p": {"shape": [2], "frozen": True}},
            "nodes": {"o": {"op": "add", "in": ["x", "p"]}},
        }
    )
    assert not frozen.p.requires_grad


def test_templates_with_arguments_expressions_and_repeat_index():
    recipe = {
        "model": {"type": "Repeat", "times": 3, "body": {"use": "unit", "width": "$(4 * 2 ** i)", "frozen": True}},
        "blocks": {
            "unit": {
                "args": {"width": "???", "bias": True},
                "body": {"type": "Linear", "in_features": 2, "out_features": "$width", "bias": "$bias"},
            }
        },
    }
    model = build_from_config(recipe)
    assert [m.out_features for m in model] == [4, 8, 16] and not any(p.requires_grad for p in model.parameters())


def test_lazy_layer_inside_a_graph_gets_its_shape():
    model = build_from_config(
        {"model": {"type": "Graph", "nodes": {"fc": {"type": "Linear", "out_features": 3}}}, "input_shape": [2, 5]}
    )
    assert type(model.fc) is nn.Linear and model.fc.in_features == 5


def test_ties_share_one_parameter_initialized_by_the_src_scheme():
    recipe = {
        "model": {
            "type": "Sequential",
            "layers": {
                "emb": {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4},
                "head": {"type": "Linear", "in_features": 4, "out_features": 10, "bias": False},
            },
        },
        "tie": {"head.weight": "emb.weight"},
        "init": {"seed": 0, "rules": [{"layer": ["Linear", "Embedding"], "weight": {"type": "normal", "std": 0.02}}]},
    }
    model = build_from_config(recipe)
    assert model.head.weight is model.emb.weight and sum(p.numel() for p in model.parameters()) == 40
    assert "1 shared tensor(s) counted once" in summary(model)
    default = build_from_config({k: v for k, v in recipe.items() if k != "init"} | {"init": {"seed": 0}})
    assert default.emb.weight.std() > 0.5  # the Embedding's N(0, 1), not the Linear's default


@pytest.mark.parametrize(
    "recipe, path, fragment",
    [
        pytest.param(
            {"type": "Graph", "nodes": {"fc": LINEAR | {"in": "xx"}}},
            "model.nodes.fc.in",
            "did you mean 'x'",
            id="in-unknown",
        ),
        pytest.param(
            {
                "type": "Graph",
                "nodes": {"fc": LINEAR, "dead": {"op": "neg", "in": "x"}, "out": {"op": "abs", "in": "fc"}},
            },
            "model.nodes.dead",
            "",
            id="unused-entry",
        ),
        pytest.param(
            {"type": "Graph", "nodes": {"o": {"op": "flaten"}}},
            "model.nodes.o.op",
            "did you mean 'flatten'",
            id="unknown-op",
        ),
        pytest.param(
            {"type": "Graph", "nodes": {"o": {"op": "flatten", "start": 1}}},
            "model.nodes.o.start",
            "start_dim",
            id="op-kwarg",
        ),
        pytest.param({"type": "Graph", "nodes": {"forward": LINEAR}}, "model.nodes.forward", "", id="reserved-name"),
        pytest.param(
            {"model": {"use": "unit"}, "blocks": {"unit": {"args": ["c"], "body": LINEAR | {"out_features": "$c"}}}},
            "model",
            "'c'",
            id="missing-arg",
        ),
        pytest.param(
            {
                "model": {"use": "unit", "c": 1, "d": 2},
                "blocks": {"unit": {"args": ["c"], "body": LINEAR | {"out_features": "$c"}}},
            },
            "model.d",
            "",
            id="unknown-arg",
        ),
        pytest.param(
            {
                "model": {"use": "unit", "c": 1},
                "blocks": {"unit": {"args": ["c", "d"], "body": LINEAR | {"out_features": "$c"}}},
            },
            "blocks.unit.args.d",
            "used nowhere",
            id="unused-arg",
        ),
        pytest.param(
            {
                "model": {"use": "unit", "c": 1},
                "blocks": {"unit": {"args": ["c"], "body": LINEAR | {"out_features": "$cc"}}},
            },
            "blocks.unit.body.out_features",
            "did you mean 'c'",
            id="undeclared-name",
        ),
        pytest.param(
            {
                "model": {"use": "a"},
                "blocks": {"a": {"args": {}, "body": {"use": "b"}}, "b": {"args": {}, "body": {"use": "a"}}},
            },
            "blocks.b.body.use",
            "a -> b -> a",
            id="template-cycle",
        ),
        pytest.param(
            {"model": {"use": "unt"}, "blocks": {"unit": {"args": {}, "body": LINEAR}}},
            "model.use",
            "did you mean 'unit'",
            id="unknown-template",
        ),
        pytest.param(
            {
                "model": {
                    "type": "Sequential",
                    "layers": [LINEAR, {"type": "Linear", "in_features": 4, "out_features": 3}],
                },
                "tie": {"1.weight": "0.weight"},
            },
            "tie.1.weight",
            "shapes differ",
            id="tie-shapes",
        ),
        pytest.param(
            {"model": {"type": "Sequential", "layers": [LINEAR, LINEAR]}, "tie": {"1.weight": "0.weigth"}},
            "tie.1.weight",
            "did you mean '0.weight'",
            id="tie-unknown",
        ),
        pytest.param(
            {
                "model": {"type": "Sequential", "layers": [LINEAR, LINEAR]},
                "tie": {"1.weight": "0.weight"},
                "init": {"rules": [{"match": "1", "weight": "zeros"}]},
            },
            "init.rules[0]",
            "without it",
            id="rule-on-tie-dst",
        ),
        pytest.param(
            {
                "model": {"type": "Sequential", "layers": [LINEAR, LINEAR | {"init": {"weight": "zeros"}}]},
                "tie": {"1.weight": "0.weight"},
            },
            "model.layers[1].init.weight",
            "tied",
            id="inline-on-tie-dst",
        ),
        pytest.param(
            {"model": LINEAR, "inputs": [{"shape": [2, 4], "dtype": "flot32"}]},
            "inputs[0].dtype",
            "did you mean 'float32'",
            id="input-dtype",
        ),
        pytest.param({"model": LINEAR, "dtype": "bfloat"}, "dtype", "unknown dtype 'bfloat'", id="top-dtype"),
        pytest.param({"model": LINEAR | {"dtype": "f16"}}, "model.dtype", "unknown dtype", id="kwarg-dtype"),
    ],
)
def test_bad_section_7_input_names_its_key_path(recipe, path, fragment):
    found = problems(recipe)
    assert any(p == path and fragment in m for p, m in found), found


def test_an_expression_that_is_not_arithmetic_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    body = LINEAR | {"out_features": f"$(__import__('os').system('touch {target}'))"}
    with pytest.raises(ConfigError):
        build_from_config({"model": {"use": "u", "c": 1}, "blocks": {"u": {"args": ["c"], "body": body}}})
    assert not target.exists()


def test_inputs_with_dtypes_drive_lazy_shapes_and_the_summary():
    recipe = {
        "model": {
            "type": "Graph",
            "inputs": ["ids"],
            "nodes": {
                "emb": {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 6},
                "lstm": {"type": "LSTM", "input_size": 6, "hidden_size": 5, "batch_first": True},
                "out": {"op": "getitem", "index": 0},
                "head": {"type": "Linear", "out_features": 2},
            },
        },
        "inputs": [{"shape": [2, 7], "dtype": "long"}],
    }
    model = build_from_config(recipe)
    assert model.head.in_features == 5
    text = summary(model)
    assert "[[2, 7, 5], [[1, 2, 5], [1, 2, 5]]]" in text and "input shape: [2, 7] int64" in text


def test_top_level_dtype_builds_in_that_dtype():
    model = build_from_config(
        {
            "model": {"type": "Sequential", "layers": [LINEAR, {"type": "BatchNorm1d", "num_features": 4}]},
            "dtype": "bfloat16",
        }
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model[1].running_mean.dtype == torch.bfloat16 and model[1].num_batches_tracked.dtype == torch.int64
    assert torch.get_default_dtype() == torch.float32
    assert build_from_config({"model": LINEAR, "dtype": "bfloat16"}, dtype="float64").weight.dtype == torch.float64


def test_yaml_1_2_numbers_and_vars(tmp_path):
    assert yaml.load("eps: 1e-5", Loader=YAML_LOADER) == {"eps": 1e-5}
    path = tmp_path / "r.yaml"
    path.write_text("vars: {width: 6}\nmodel: {type: LayerNorm, normalized_shape: '${vars.width}', eps: 1e-5}\n")
    model = build_from_config(path)
    assert model.eps == 1e-5 and model.normalized_shape == (6,)


@pytest.mark.parametrize(
    ("output", "where"), [({}, "model.output"), ({"a": 1}, "model.output"), ([["a"]], "model.output[0]")]
)
def test_an_output_that_is_no_name_is_a_config_error(output, where):
    with pytest.raises(ConfigError) as e:
        build_from_config({"model": {"type": "Graph", "nodes": {"a": {"type": "Identity"}}, "output": output}})
    assert (
        f"{where}: expected an entry name (or a list of them), got {output if where == 'model.output' else ['a']!r}"
        in str(e.value)
    )


def test_a_built_graph_is_freed_with_its_model():
    """Nothing composer caches keeps a nested Graph alive once its model is gone (a cache of each
    graph's own forward once kept every one ever built, tensors and all)."""
    model = build_from_config({"model": {"type": "Graph", "nodes": {"inner": residual(), "out": LINEAR}}})
    inner = weakref.ref(model.inner)
    del model
    gc.collect()
    assert inner() is None
