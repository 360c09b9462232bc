"""``recipe_schema``: the recipe language as a JSON Schema that accepts the packaged recipes and
flags what an editor should (a misspelled argument, an unknown type or key)."""

import json

import pytest
import yaml
from torch import nn

from composer import ConfigError, build_from_config
from composer.describe.listing import list_text
from composer.describe.schema import recipe_schema
from composer.modules import torch_ops
from composer.modules.ops import OPS, lookup_op, op_problems
from composer.modules.signatures import op_arguments
from composer.recipe.grammar import ENTRY, OP, TYPE_FORMS
from tests.recipes import MODELS, ROOT, model_recipe

jsonschema = pytest.importorskip("jsonschema")

INITS = sorted(p.stem for p in (ROOT / "composer" / "conf" / "init").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = recipe_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, recipe) -> list:
    return list(validator.iter_errors(recipe))


def problem(validator, recipe) -> tuple[list, str]:
    """Where the most relevant error sits and what it says."""
    best = jsonschema.exceptions.best_match(validator.iter_errors(recipe))
    assert best is not None, f"{recipe} was accepted"
    return list(best.absolute_path), best.message


def linear(**kwargs) -> dict:
    return {"type": "Linear", "in_features": 4, "out_features": 8, **kwargs}


@pytest.mark.parametrize("name", MODELS)
def test_every_packaged_recipe_validates(validator, name):
    """Against the schema ``python -m composer schema`` prints: op nodes checked against the ops'
    own arguments (transpose's dim0, getitem's index are keys, not tensor inputs)."""
    assert errors(validator, yaml.safe_load(model_recipe(name).read_text())) == []


@pytest.mark.parametrize("name", list(OPS))
def test_list_ops_and_the_schema_agree_with_the_builder(validator, name):
    """For every op: the keys the builder accepts are the schema's properties and what ``list ops
    NAME`` shows; the keys the builder requires are the schema's required ones."""
    fn = OPS.lookup(name, "op")
    op_def = validator.schema["$defs"][f"op.{name}"]
    keys = set(op_def["properties"]) - set(OP.reserved)
    signature = op_arguments(fn)
    candidates = keys | {a.name for a in signature.slots} | {"training", "typo"}
    accepted = {k for k in candidates if not any(p == f"p.{k}" for p, _ in op_problems(name, fn, {k: 0}, None, "p"))}
    assert accepted == keys
    text = list_text("ops", name)
    either = text.split("\n")[-1].split(":")[0].split(", ") if "an input or an argument" in text else []
    assert {k for k in rows_of(text)} | set(either) == keys
    inputs = len(signature.slots) + bool(signature.rest)
    missing = {m.split("'")[3] for _, m in op_problems(name, fn, {}, inputs, "p") if "(an argument)" in m}
    assert missing == set(op_def.get("required", []))
    node = {"op": name, **dict.fromkeys(missing, "$v")}  # an interpolation stands for any value
    assert errors(validator, {"model": {"type": "Sequential", "layers": [node]}}) == []


def rows_of(text: str) -> list[str]:
    """The argument names of a ``list`` table."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split()[:1] == ["argument"]), None)
    return [] if start is None else [line.split()[0] for line in lines[start + 1 :] if line.startswith("  ")]


@pytest.mark.parametrize("name", INITS)
def test_every_packaged_init_scheme_validates(validator, name):
    scheme = yaml.safe_load((ROOT / "composer" / "conf" / "init" / f"{name}.yaml").read_text())
    assert errors(validator, {"model": {"type": "ReLU"}, "init": scheme}) == []


def test_misspelled_argument_is_flagged_where_it_is(validator):
    recipe = {"model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 4, "out_feature": 8}]}}
    path, message = problem(validator, recipe)
    assert path == ["model", "layers", 0]
    assert "'out_feature' was unexpected" in message


def test_unknown_type_wrong_kind_and_missing_argument(validator):
    assert problem(validator, {"model": {"type": "Linaer"}})[0] == ["model", "type"]
    path, message = problem(validator, {"model": linear(in_features="four")})
    assert path == ["model", "in_features"] and "four" in message
    path, message = problem(validator, {"model": {"type": "Linear", "in_features": 4}})
    assert "'out_features' is a required property" in message
    assert problem(validator, {"model": linear(bias="yes")})[0] == ["model", "bias"]


def test_what_the_builder_accepts_passes(validator):
    assert errors(validator, {"model": {"type": "Linear", "out_features": 8}}) == []  # lazy: in_features inferred
    assert errors(validator, {"model": {"type": "Linear", "_args_": [4, 8]}}) == []  # positional
    assert errors(validator, {"model": linear(init={"weight": "zeros"}, frozen=True)}) == []
    assert (
        errors(validator, {"model": {"type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": [3, 3]}})
        == []
    )
    assert errors(validator, {"model": {"type": "MLP"}}) == []
    assert errors(validator, {"type": "ReLU"}) == []  # a bare node is a recipe
    interpolated = {"model": linear(out_features="${vars.width}"), "vars": {"width": 8}}
    assert errors(validator, interpolated) == []


def test_top_level_keys(validator):
    full = {
        "model": {"ref": "enc"},
        "shared": {"enc": linear()},
        "blocks": {"lin": linear(), "unit": {"args": {"c": "???", "stride": 1}, "body": linear(in_features="$c")}},
        "init": {"seed": 0, "rules": [{"match": "*", "layer": ["Linear", "Conv2d"], "weight": "xavier_uniform"}]},
        "input_shape": [2, 4],
        "inputs": [{"shape": [2, 64], "dtype": "long"}],
        "tie": {"lm_head.weight": "transformer.wte.weight"},
        "dtype": "bfloat16",
        "vars": {"width": 256},
        "shard": {"units": [{"layer": "Linear"}, {"match": "blocks.*"}]},
    }
    assert errors(validator, full) == []
    assert problem(validator, {"model": linear(), "sahred": {}}) == (
        [],
        "Additional properties are not allowed ('sahred' was unexpected)",
    )
    assert problem(validator, {"model": linear(), "dtype": "float33"})[0] == ["dtype"]
    assert problem(validator, {"model": linear(), "input_shape": [2, 0]})[0][:1] == ["input_shape"]


def test_node_forms(validator):
    forms = [
        {"type": "Sequential", "layers": {"enc": linear(), "act": {"type": "ReLU"}}},
        {"type": "Repeat", "times": 4, "names": "block {i}", "body": linear()},
        {"type": "Repeat", "times": 2, "body": "${blocks.block}"},
        {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 8},
        {"use": "unit", "c": 64, "in": "x"},
        {"type": "ModuleList", "modules": [linear(), {"type": "ReLU"}]},
        {"type": "TransformerEncoder", "encoder_layer": {"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2},
         "num_layers": 2},
        {"type": "Sequential", "layers": [linear(), {"op": "flatten", "start_dim": 1}]},
    ]  # fmt: skip
    for node in forms:
        assert errors(validator, {"model": node}) == [], node
    assert problem(validator, {"model": {"ref": "enc", "frozen": True}})[1].endswith("'frozen' was unexpected)")
    assert "'time' was unexpected" in problem(validator, {"model": {"type": "Repeat", "time": 2, "body": linear()}})[1]
    assert problem(validator, {"model": {"type": "Repeat", "times": 0, "body": linear()}})[0] == ["model", "times"]
    assert problem(validator, {"model": {"layers": []}})  # no type, ref, _target_, use or op


def test_graph_with_ops_calls_and_params(validator):
    graph = {
        "type": "Graph",
        "inputs": ["x"],
        "params": {"cls_token": {"shape": [1, 1, 8], "init": {"type": "trunc_normal", "std": 0.02}}},
        "nodes": {
            "conv1": {"type": "Conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1},
            "relu": {"type": "ReLU"},
            "sum": {"op": "add", "in": ["relu", "x"]},
            "out": {"call": "relu"},
        },
        "output": "out",
    }
    assert errors(validator, {"model": graph}) == []
    graph["nodes"]["out"] = {"call": "relu", "init": {}}
    assert problem(validator, {"model": graph})[0] == ["model", "nodes", "out"]


def test_initializer_specs(validator):
    def with_rule(**rule):
        return {"model": linear(), "init": {"rules": [rule]}}

    assert errors(validator, with_rule(weight={"type": "normal", "mean": 0.0, "std": 0.01}, bias="zeros")) == []
    assert errors(validator, with_rule(weight={"type": "sparse", "sparsity": 0.5})) == []
    assert "'stdd' was unexpected" in problem(validator, with_rule(weight={"type": "normal", "stdd": 1}))[1]
    assert problem(validator, with_rule(weight="xavier"))[0][-1] == "weight"
    assert "'sparsity' is a required property" in problem(validator, with_rule(weight={"type": "sparse"}))[1]
    assert problem(validator, {"model": linear(init={"weight": "gaussian"})})[0][:3] == ["model", "init", "weight"]


def test_ops_from_a_registry():
    def add(x, y=None, other: float | None = None): ...

    def flatten(x, start_dim: int = 0, end_dim: int = -1): ...

    validator = jsonschema.Draft202012Validator(recipe_schema(ops={"add": add, "flatten": flatten}))
    node = {"type": "Sequential", "layers": [{"op": "flatten", "start_dim": 1}, {"op": "add", "other": 0.5}]}
    assert errors(validator, {"model": node}) == []
    assert "'start_dims' was unexpected" in problem(validator, {"model": {"op": "flatten", "start_dims": 1}})[1]
    assert problem(validator, {"model": {"op": "flaten"}})[0] == ["model", "op"]
    assert problem(validator, {"model": {"op": "flatten", "start_dim": "one"}})[0] == ["model", "start_dim"]


def test_registries_are_arguments():
    schema = recipe_schema(modules={"Lin": nn.Linear}, initializers={})
    validator = jsonschema.Draft202012Validator(schema)
    assert errors(validator, {"model": {"type": "Lin", "in_features": 2, "out_features": 2}}) == []
    assert problem(validator, {"model": {"type": "Linear", "in_features": 2, "out_features": 2}})[0] == [
        "model",
        "type",
    ]


def test_schema_is_json_and_its_size():
    text = json.dumps(recipe_schema())
    assert json.loads(text)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert len(text.encode()) < 512_000, len(text.encode())  # an editor loads it on every keystroke's check


def test_the_forms_come_from_one_grammar(validator):
    """Each form of ``type:`` has the keys the grammar gives it in the builder, the schema and
    ``list``: a key added there reaches all three."""
    for name, form in TYPE_FORMS.items():
        properties = validator.schema["$defs"][f"type.{name}"]["properties"]
        assert set(properties) == {*form.reserved, *(key.name for key in ENTRY)}
        assert set(rows_of(list_text("types", name))) == {key.name for key in form.keys} - {"init", "frozen"}
        with pytest.raises(ConfigError) as info:
            build_from_config({"model": {"type": name, "typo": 1}})
        assert f"valid: {', '.join(form.reserved)}" in next(m for p, m in info.value.problems if p == "model.typo")


def test_the_schema_agrees_with_the_builder_on_derived_ops(validator):
    """torch's functions: the keys the builder accepts are the schema's properties, the keys it
    requires are the schema's required ones (derived ops with the same arguments share a definition)."""
    schema = validator.schema
    cases = {c["if"]["properties"]["op"].get("const"): c for c in schema["$defs"]["op"]["allOf"]}
    by_name = {n: c["then"]["$ref"].split("/")[-1] for c in schema["$defs"]["op"]["allOf"] for n in _names(c)}
    for name in ("cos", "topk", "pow", "gather", "scaled_dot_product_attention", "pad", "to", "einsum", "arange"):
        op = lookup_op(name, "p")
        op_def = schema["$defs"][by_name[name]]
        keys = set(op_def["properties"]) - set(OP.reserved)
        accepted = {k for k in [*keys, "typo", "out"] if not op_problems(name, op, {k: 0}, None, "p")}
        assert accepted == keys, name
        assert set(op_def.get("required", [])) == set(torch_ops.required_keys(op)), name
        node = {"op": name, **dict.fromkeys(op_def.get("required", []), "$v")}
        assert list(validator.iter_errors({"model": {"type": "Graph", "nodes": {"a": node}}})) == [], name
    assert cases  # the registered ops keep one case each
    typo = {"model": {"type": "Graph", "nodes": {"a": {"op": "topk", "k": 2, "dimm": 1}}}}
    assert "'dimm' was unexpected" in jsonschema.exceptions.best_match(validator.iter_errors(typo)).message
    assert list(validator.iter_errors({"model": {"type": "Graph", "nodes": {"a": {"op": "rand"}}}}))


def _names(case: dict) -> list[str]:
    op = case["if"]["properties"]["op"]
    return [op["const"]] if "const" in op else op["enum"]
