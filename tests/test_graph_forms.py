"""Graph forms of CONTRACT 7.3, 7.4 and 7.10: inputs by keyword and ``forward:`` constants, computed
and shaped ``buffers:``, and Repeat over several inputs, in parallel and with expression names,
each against a handwritten module, with its state_dict keys and its errors' key paths.

Ops the chain examples need beyond the built-in set are registered here under test names, with
torch's own signatures (``pow(self, exponent)``), in each test's registry scope (conftest).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from composer import ConfigError, build_from_config, load_checkpoint, register_module, register_op, save_checkpoint
from composer.describe.listing import list_text
from composer.describe.schema import recipe_schema
from composer.modules.graph import RepeatChain, RepeatParallel


def t_arange(*, start: int = 0, end: int, step: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.arange(start, end, step, dtype=dtype)


def t_to(input: torch.Tensor, /, *, dtype: torch.dtype) -> torch.Tensor:
    return input.to(dtype)


def t_pow(self: torch.Tensor | float, exponent: torch.Tensor | float) -> torch.Tensor:
    return torch.pow(self, exponent)


def t_reciprocal(input: torch.Tensor, /) -> torch.Tensor:
    return torch.reciprocal(input)


def t_where(condition: torch.Tensor, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, input, other)


def _register_test_ops() -> None:
    """``arange``, ``to``, ``pow``, ``reciprocal`` and ``where`` with torch's argument names."""
    for fn in (t_arange, t_to, t_pow, t_reciprocal, t_where):
        register_op(fn.__name__)(fn)


def _problems(recipe) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        build_from_config(recipe)
    return dict(info.value.problems)


# --- 7.3: inputs by keyword, forward: constants -----------------------------------------------------

DECODER = {"type": "TransformerDecoderLayer", "d_model": 8, "nhead": 2, "dim_feedforward": 16, "dropout": 0.0,
           "batch_first": True}  # fmt: skip


def _decoder_graph(**entry):
    return {
        "model": {
            "type": "Graph",
            "inputs": ["y", "enc", "causal"],
            "nodes": {"dec": {**DECODER, "in": {"tgt": "y", "memory": "enc", "tgt_mask": "causal"}, **entry}},
        }
    }


def test_keyword_inputs_and_forward_constants_match_the_handwritten_call():
    model = build_from_config(_decoder_graph(forward={"tgt_is_causal": True}))
    assert list(model.state_dict()) == [f"dec.{k}" for k in nn.TransformerDecoderLayer(**{
        k: v for k, v in DECODER.items() if k != "type"}).state_dict()]  # fmt: skip
    assert "tgt=y, memory=enc, tgt_mask=causal, **_k0" in model.code
    y, enc = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    expected = model.dec(tgt=y, memory=enc, tgt_mask=causal, tgt_is_causal=True)
    assert torch.equal(model(y, enc, causal), expected)


def test_keyword_and_forward_names_the_forward_does_not_take_name_the_closest():
    problems = _problems(_decoder_graph(forward={"tgt_is_casual": True}, **{"in": {"tgtt": "y", "memory": "enc"}}))
    assert "did you mean 'tgt'?" in problems["model.nodes.dec.in.tgtt"]
    assert "did you mean 'tgt_is_causal'?" in problems["model.nodes.dec.forward.tgt_is_casual"]


def test_keyword_input_naming_no_earlier_entry_is_reported_at_its_key():
    problems = _problems(_decoder_graph(**{"in": {"tgt": "y", "memory": "encc"}}))
    assert "unknown input 'encc'" in problems["model.nodes.dec.in.memory"]
    assert "did you mean 'enc'?" in problems["model.nodes.dec.in.memory"]


def test_an_argument_given_twice_and_a_missing_one_are_errors():
    twice = _problems(_decoder_graph(forward={"tgt_mask": None}))
    assert "twice" in twice["model.nodes.dec.forward.tgt_mask"]
    missing = _problems(_decoder_graph(**{"in": {"tgt": "y"}}))
    assert "missing 'memory'" in missing["model.nodes.dec.in"]


def test_a_call_entry_takes_keywords_and_forward_constants():
    recipe = {"model": {"type": "Graph", "inputs": ["a", "b", "m"], "nodes": {
        "enc": {"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2, "dim_feedforward": 16, "dropout": 0.0,
                "batch_first": True, "in": ["a"]},
        "again": {"call": "enc", "in": {"src": "b", "src_key_padding_mask": "m"}, "forward": {"is_causal": False}},
        "sum": {"op": "add", "in": ["enc", "again"]},
    }}}  # fmt: skip
    model = build_from_config(recipe).eval()
    a, b, m = torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.zeros(2, 4, dtype=torch.bool)
    assert torch.equal(model(a, b, m), model.enc(a) + model.enc(src=b, src_key_padding_mask=m, is_causal=False))
    recipe["model"]["nodes"]["again"]["forward"] = {"is_casual": False}
    assert "did you mean 'is_causal'?" in _problems(recipe)["model.nodes.again.forward.is_casual"]


def test_an_op_entry_takes_its_tensors_by_name():
    _register_test_ops()
    recipe = {"model": {"type": "Graph", "inputs": ["c", "a", "b"], "nodes": {
        "w": {"op": "t_where", "in": {"condition": "c", "input": "a", "other": "b"}}}}}  # fmt: skip
    model = build_from_config(recipe)
    c, a, b = torch.tensor([True, False]), torch.ones(2), torch.zeros(2)
    assert torch.equal(model(c, a, b), torch.tensor([1.0, 0.0]))
    recipe["model"]["nodes"]["w"]["in"] = {"conditon": "c", "input": "a", "other": "b"}
    problems = _problems(recipe)
    assert "did you mean 'condition'?" in problems["model.nodes.w.in.conditon"]


def test_a_nested_graph_takes_its_inputs_by_name_in_its_input_order():
    inner = {"type": "Graph", "inputs": ["x", "y"], "nodes": {"d": {"op": "sub", "in": ["x", "y"]}}}
    recipe = {"model": {"type": "Graph", "inputs": ["a", "b"], "nodes": {"g": {**inner, "in": {"y": "a", "x": "b"}}}}}
    model = build_from_config(recipe)
    a, b = torch.randn(3), torch.randn(3)
    assert torch.equal(model(a, b), b - a)
    recipe["model"]["nodes"]["g"]["in"] = {"y": "a", "xx": "b"}
    assert "did you mean 'x'?" in _problems(recipe)["model.nodes.g.in.xx"]


# --- 7.4: buffers ------------------------------------------------------------------------------------------

ROPE = {
    "vars": {"hd": 16, "base": 10000.0},
    "model": {
        "type": "Graph",
        "buffers": {
            "inv_freq": {
                "persistent": False,
                "value": [
                    {"op": "t_arange", "start": 0, "end": "${vars.hd}", "step": 2, "dtype": "int64"},
                    {"op": "t_to", "dtype": "float32"},
                    {"op": "div", "other": "${vars.hd}"},
                    {"op": "t_pow", "self": "${vars.base}"},
                    {"op": "t_reciprocal"},
                ],
            },
            "scale": {"shape": [8], "init": "ones"},
        },
        "nodes": {
            "proj": {"type": "Linear", "in_features": 8, "out_features": 8},
            "rot": {"op": "mul", "in": ["proj", "inv_freq"]},
            "out": {"op": "mul", "in": ["rot", "scale"]},
        },
    },
}


def _inv_freq(hd: int = 16, base: float = 10000.0) -> torch.Tensor:
    """As transformers' default RoPE computes it."""
    return 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).to(torch.float) / hd))


def test_a_computed_buffer_holds_the_value_and_stays_out_of_the_state_dict():
    _register_test_ops()
    model = build_from_config(ROPE)
    assert torch.equal(model.inv_freq, _inv_freq())
    assert torch.equal(model.scale, torch.ones(8))
    assert list(model.state_dict()) == ["scale", "proj.weight", "proj.bias"]
    x = torch.randn(2, 8)
    assert torch.equal(model(x), model.proj(x) * _inv_freq() * torch.ones(8))
    assert "_b['inv_freq']" in model.code


def test_a_computed_buffer_is_computed_again_after_a_meta_build_and_a_checkpoint(tmp_path):
    _register_test_ops()
    meta = build_from_config(ROPE, device="meta")
    assert meta.inv_freq.is_meta and meta.inv_freq.shape == (8,)
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    assert torch.equal(meta.inv_freq, _inv_freq())
    model = build_from_config(ROPE)
    save_checkpoint(model, tmp_path / "rope.safetensors")
    loaded = load_checkpoint(tmp_path / "rope.safetensors")
    assert torch.equal(loaded.inv_freq, _inv_freq())
    assert "inv_freq" not in loaded.state_dict()
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), model(x))


def test_a_copy_and_a_pickle_keep_the_buffers_and_their_fills():
    _register_test_ops()
    model = build_from_config(ROPE)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        other.inv_freq.zero_()
        other.reset_parameters()
        assert torch.equal(other.inv_freq, _inv_freq())


def test_buffers_take_the_top_level_dtype_and_a_persistent_one_is_saved():
    _register_test_ops()
    recipe = copy.deepcopy(ROPE)
    recipe["dtype"] = "bfloat16"
    recipe["model"]["buffers"]["inv_freq"]["persistent"] = True
    model = build_from_config(recipe)
    assert model.inv_freq.dtype == torch.bfloat16 and model.scale.dtype == torch.bfloat16
    assert torch.equal(model.inv_freq, _inv_freq().to(torch.bfloat16))
    assert "inv_freq" in model.state_dict()


def test_a_value_may_be_a_graph_without_inputs():
    _register_test_ops()
    recipe = {"model": {"type": "Graph", "buffers": {"table": {"value": {"type": "Graph", "nodes": {
        "r": {"op": "t_arange", "end": 4, "dtype": "float32"},
        "sq": {"op": "mul", "in": ["r", "r"]},
    }}}}, "nodes": {"s": {"op": "add", "in": ["x", "table"]}}}}  # fmt: skip
    model = build_from_config(recipe)
    assert torch.equal(model.table, torch.tensor([0.0, 1.0, 4.0, 9.0]))
    assert torch.equal(model(torch.ones(4)), torch.tensor([1.0, 2.0, 5.0, 10.0]))
    assert list(model.state_dict()) == ["table"]


def test_bad_buffers_are_reported_at_their_key_paths():
    _register_test_ops()
    recipe = copy.deepcopy(ROPE)
    buffers = recipe["model"]["buffers"]
    buffers["inv_freq"]["value"][1] = {"op": "t_too", "dtype": "float32"}
    buffers["inv_freq"]["value"][3] = {"op": "t_pow", "slef": 2.0}
    buffers["scale"]["persistant"] = False
    buffers["both"] = {"shape": [2], "value": [{"op": "t_arange", "end": 2}]}
    buffers["bad"] = {"value": [{"op": "t_arange", "end": 2}, {"op": "mul", "other": "a string"}]}
    problems = _problems(recipe)
    assert "did you mean 't_to'" in problems["model.buffers.inv_freq.value[1].op"]
    assert "did you mean 'self'?" in problems["model.buffers.inv_freq.value[3].slef"]
    assert "did you mean 'persistent'?" in problems["model.buffers.scale.persistant"]
    assert "shape or value" in problems["model.buffers.both"]
    assert "computing it failed" in problems["model.buffers.bad.value[1]"]


def test_a_buffer_name_clashing_with_a_param_or_an_entry_is_an_error():
    recipe = {"model": {"type": "Graph", "params": {"w": {"shape": [2]}}, "buffers": {"w": {"shape": [2]}},
                        "nodes": {"s": {"op": "add", "in": ["x", "w"]}}}}  # fmt: skip
    assert "already used by a graph param" in _problems(recipe)["model.buffers.w"]


# --- 7.10: Repeat over several inputs, in parallel, with names ------------------------------------------

LAYER = {
    "args": {"d": 8},
    "body": {
        "type": "Graph",
        "inputs": ["h", "scale", "bias"],
        "nodes": {
            "lin": {"type": "Linear", "in_features": "$d", "out_features": "$d", "in": ["h"]},
            "mul": {"op": "mul", "in": ["lin", "scale"]},
            "out": {"op": "add", "in": ["mul", "bias"]},
        },
    },
}


def _side_input_recipe(times: int = 3, **repeat):
    return {
        "blocks": {"layer": LAYER},
        "model": {
            "type": "Graph",
            "inputs": ["x", "s", "b"],
            "nodes": {"layers": {"type": "Repeat", "times": times, "body": {"use": "layer"}, "in": ["x", "s", "b"],
                                 **repeat}},
        },
    }  # fmt: skip


def test_repeat_threads_the_first_input_and_passes_the_others_to_every_copy():
    model = build_from_config(_side_input_recipe(names="layer{i + 1}"))
    assert isinstance(model.layers, RepeatChain) and isinstance(model.layers, nn.Sequential)
    assert list(model.state_dict()) == [f"layers.layer{i}.lin.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    x, s, b = torch.randn(2, 8), torch.randn(8), torch.randn(8)
    h = x
    for layer in model.layers:
        h = layer.lin(h) * s + b
    assert torch.equal(model(x, s, b), h)


@pytest.mark.slow
def test_a_side_input_repeat_keyword_inputs_and_buffers_compile_with_fullgraph():
    import torch._dynamo  # noqa: PLC0415  (seconds: only for the compile test)

    _register_test_ops()
    recipe = _side_input_recipe()
    graph = recipe["model"]
    graph["inputs"] = ["x", "s", "m"]
    graph["buffers"] = {"b": {"persistent": False, "value": [{"op": "t_arange", "end": 8, "dtype": "float32"}]}}
    graph["nodes"]["layers"]["in"] = ["x", "s", "b"]
    graph["nodes"]["pick"] = {"op": "t_where", "in": {"condition": "m", "input": "layers", "other": "x"}}
    model = build_from_config(recipe)
    x, s, m = torch.randn(2, 8), torch.randn(8), torch.rand(2, 8) > 0.5
    h = x
    for layer in model.layers:
        h = layer.lin(h) * s + torch.arange(8.0)
    assert torch.equal(model(x, s, m), torch.where(m, h, x))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, s, m)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, s, m), model(x, s, m))
    torch._dynamo.reset()


def test_parallel_repeat_returns_a_tuple_or_a_stack():
    body = {"type": "Linear", "in_features": 4, "out_features": 3}
    model = build_from_config({"type": "Repeat", "times": 2, "mode": "parallel", "body": body, "names": "expert{i}"})
    assert isinstance(model, RepeatParallel)
    assert list(model.state_dict()) == ["expert0.weight", "expert0.bias", "expert1.weight", "expert1.bias"]
    x = torch.randn(5, 4)
    out = model(x)
    assert isinstance(out, tuple) and all(torch.equal(o, e(x)) for o, e in zip(out, model, strict=True))
    stacked = build_from_config({"type": "Repeat", "times": 2, "mode": "parallel", "stack": 1, "body": body})
    assert torch.equal(stacked(x), torch.stack([stacked[0](x), stacked[1](x)], 1))


def test_parallel_repeat_in_a_graph_takes_several_inputs():
    body = {"type": "Bilinear", "in1_features": 2, "in2_features": 3, "out_features": 4}
    recipe = {"model": {"type": "Graph", "inputs": ["a", "b"], "nodes": {
        "experts": {"type": "Repeat", "times": 3, "mode": "parallel", "stack": 0, "body": body, "in": ["a", "b"]},
        "total": {"op": "mean", "dim": 0}}}}  # fmt: skip
    model = build_from_config(recipe)
    a, b = torch.randn(5, 2), torch.randn(5, 3)
    expected = torch.stack([e(a, b) for e in model.experts]).mean(0)
    assert torch.equal(model(a, b), expected)


def test_repeat_names_are_expressions_of_i_with_widths():
    body = {"type": "ReLU"}
    for names, expected in (("denselayer{i + 1}", ["denselayer1", "denselayer2", "denselayer3"]),
                            ("block {i:03d}", ["block 000", "block 001", "block 002"]),
                            ("b{2 * i}_{i}", ["b0_0", "b2_1", "b4_2"])):  # fmt: skip
        model = build_from_config({"type": "Repeat", "times": 3, "names": names, "body": body})
        assert list(model._modules) == expected
        assert type(model) is nn.Sequential  # a Repeat outside a Graph's several inputs: as before


@pytest.mark.parametrize(
    ("names", "says"),
    [("l{j}", "only i"), ("l{i.__class__}", "attribute access"), ("l{i // 0}", "division by zero"),
     ("l{i!r}", "format of i"), ("l{}", "format of i"), ("l{i:>99999}", "format of i")],
)  # fmt: skip
def test_bad_repeat_names_are_errors_at_names(names, says):
    problems = _problems({"type": "Repeat", "times": 2, "names": names, "body": {"type": "ReLU"}})
    assert says in problems["model.names"]


def test_bad_mode_and_stack_are_errors():
    body = {"type": "ReLU"}
    assert (
        "did you mean 'parallel'?"
        in _problems({"type": "Repeat", "times": 2, "mode": "paralel", "body": body})["model.mode"]
    )
    assert "mode: parallel" in _problems({"type": "Repeat", "times": 2, "stack": 0, "body": body})["model.stack"]


def test_a_side_input_repeat_whose_body_takes_fewer_inputs_is_an_error():
    recipe = _side_input_recipe()
    recipe["model"]["inputs"].append("extra")
    recipe["model"]["nodes"]["layers"]["in"].append("extra")
    assert "takes 3 inputs, got 4" in _problems(recipe)["model.nodes.layers.in"]


# --- the grammar's new keys in the schema and list -----------------------------------------------------


def test_schema_and_list_show_the_new_keys():
    schema = recipe_schema()
    defs = schema["$defs"]
    assert {"mode", "stack", "names"} <= set(defs["type.Repeat"]["properties"])
    assert {"buffers", "params"} <= set(defs["type.Graph"]["properties"])
    assert "forward" in defs["call"]["properties"]
    assert "forward" in defs["type.Linear"]["properties"]
    assert set(defs["graph_buffer"]["properties"]) == {"shape", "init", "value", "persistent"}
    text = list_text("types", "Repeat")
    assert "mode" in text and "stack" in text
    assert "buffers" in list_text("types", "Graph")


def test_the_schema_takes_the_new_forms_and_flags_a_misspelled_key():
    jsonschema = pytest.importorskip("jsonschema")
    _register_test_ops()
    validator = jsonschema.Draft202012Validator(recipe_schema())
    for recipe in (ROPE, _decoder_graph(forward={"tgt_is_causal": True}), _side_input_recipe(names="layer{i + 1}")):
        assert list(validator.iter_errors(recipe)) == []
    parallel = {"model": {"type": "Repeat", "times": 2, "mode": "parallel", "stack": 0, "body": {"type": "ReLU"}}}
    assert list(validator.iter_errors(parallel)) == []
    bad = copy.deepcopy(ROPE)
    bad["model"]["buffers"]["scale"]["persistant"] = False
    best = jsonschema.exceptions.best_match(validator.iter_errors(bad))
    assert best is not None and list(best.absolute_path)[:3] == ["model", "buffers", "scale"]


def test_the_repr_shows_buffers_and_inputs_by_name():
    _register_test_ops()
    text = str(build_from_config(ROPE))
    assert "buffers: inv_freq(8,), scale(8,)" in text
    decoder = str(build_from_config(_decoder_graph()))
    assert "(tgt=y, memory=enc, tgt_mask=causal) -> dec" in decoder


def test_an_entry_used_only_by_keyword_counts_as_used():
    _register_test_ops()
    recipe = {"model": {"type": "Graph", "inputs": ["a", "b"], "nodes": {
        "neg": {"op": "neg", "in": ["b"]},
        "w": {"op": "t_where", "in": {"condition": "a", "input": "neg", "other": "b"}}}}}  # fmt: skip
    model = build_from_config(recipe)
    a, b = torch.tensor([True, False]), torch.tensor([1.0, 2.0])
    assert torch.equal(model(a, b), torch.tensor([-1.0, 2.0]))
    recipe["model"]["nodes"]["w"]["in"] = {"condition": "a", "input": "b", "other": "b"}
    assert "used by no entry" in _problems(recipe)["model.nodes.neg"]


def test_a_template_whose_body_is_a_repeat_takes_side_inputs_and_one_input_stays_a_sequential():
    recipe = _side_input_recipe()
    recipe["blocks"]["stack"] = {"args": [], "body": {"type": "Repeat", "times": 2, "body": {"use": "layer"}}}
    recipe["model"]["nodes"]["layers"] = {"use": "stack", "in": ["x", "s", "b"]}
    model = build_from_config(recipe)
    assert type(model.layers) is RepeatChain
    x, s, b = torch.randn(2, 8), torch.randn(8), torch.randn(8)
    assert torch.equal(model(x, s, b), model.layers[1](model.layers[0](x, s, b), s, b))
    single = {"type": "Graph", "nodes": {"r": {"type": "Repeat", "times": 2, "body": {"type": "ReLU"}, "in": ["x"]}}}
    assert type(build_from_config(single).r) is nn.Sequential


def test_the_contracts_rope_buffer_with_torchs_own_ops():
    recipe = copy.deepcopy(ROPE)
    recipe["model"]["buffers"]["inv_freq"]["value"] = [
        {"op": "arange", "start": 0, "end": "${vars.hd}", "step": 2, "dtype": "int64"},
        {"op": "to", "dtype": "float32"},
        {"op": "div", "other": "${vars.hd}"},
        {"op": "pow", "self": "${vars.base}"},  # the result fills pow's exponent
        {"op": "reciprocal"},
    ]
    model = build_from_config(recipe)
    assert torch.equal(model.inv_freq, _inv_freq()) and "inv_freq" not in model.state_dict()
    again = pickle.loads(pickle.dumps(model))  # the chain's bound ops travel with the graph
    again.inv_freq.zero_()
    again.reset_parameters()
    assert torch.equal(again.inv_freq, _inv_freq())
    recipe["model"]["buffers"]["inv_freq"]["value"][3] = {"op": "pow", "slef": 2.0}
    assert "slef" in str(_problems(recipe))


def test_torchs_where_takes_its_tensors_by_name():
    recipe = {"model": {"type": "Graph", "inputs": ["c", "a", "b"], "nodes": {
        "w": {"op": "where", "in": {"condition": "c", "input": "a", "other": "b"}}}}}  # fmt: skip
    c, a, b = torch.tensor([True, False]), torch.ones(2), torch.zeros(2)
    assert torch.equal(build_from_config(recipe)(c, a, b), torch.where(c, a, b))


@pytest.mark.slow
def test_a_sharded_build_fills_computed_buffers_from_their_fills(tmp_path):
    import torch.distributed as dist  # noqa: PLC0415  (only for the sharded build)
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415

    _register_test_ops()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_from_config(ROPE, mesh=init_device_mesh("cpu", (1,)))
        assert torch.equal(model.inv_freq, _inv_freq()) and torch.equal(model.scale, torch.ones(8))
    finally:
        dist.destroy_process_group()


def test_a_use_entry_takes_forward_constants_and_no_template_argument_is_named_forward():
    recipe = {
        "blocks": {"dec": {"args": {"d": 8}, "body": {**DECODER, "d_model": "$d"}}},
        "model": {"type": "Graph", "inputs": ["y", "enc"], "nodes": {
            "dec": {"use": "dec", "in": {"tgt": "y", "memory": "enc"}, "forward": {"tgt_is_causal": False}}}},
    }  # fmt: skip
    model = build_from_config(recipe)
    y, enc = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    assert torch.equal(model(y, enc), model.dec(y, enc))
    recipe["blocks"]["dec"]["args"]["forward"] = 1
    assert "argument name 'forward'" in str(_problems(recipe))


class _Keywords(nn.Module):
    """A forward taking any keywords: names that are no identifier reach it too."""

    def forward(self, **tensors: torch.Tensor) -> torch.Tensor:
        return sum(t * (i + 1) for i, (_, t) in enumerate(sorted(tensors.items())))


def test_a_keyword_that_is_no_identifier_is_passed_as_a_string_never_as_source():
    register_module("KeywordsBlock")(_Keywords)
    names = {"a b": "x", "x); import os; (": "y"}
    recipe = {"model": {"type": "Graph", "inputs": ["x", "y"], "nodes": {"k": {"type": "KeywordsBlock", "in": names}}}}
    model = build_from_config(recipe)
    assert "**{'a b': x}" in model.code and "import os" not in model.code.replace("'x); import os; ('", "")
    x, y = torch.randn(3), torch.randn(3)
    assert torch.equal(model(x, y), x * 1 + y * 2)
