"""The recipe language as a JSON Schema (draft 2020-12), generated from the registries.

An editor reads it to complete type names and their arguments and to flag a misspelled one, e.g.
yaml-language-server with ``# yaml-language-server: $schema=recipe.schema.json`` atop a recipe.
Each ``type`` gets its own definition, its arguments typed from the constructor's signature, and a
node picks its definition with ``if``/``then`` keyed on ``type`` (not ``oneOf``): a validator then
reports the one definition that applies (``'out_feature' was unexpected``), not every type that
does not. The schema checks a recipe's shape; what only a build can check (shapes, that a ``ref``
names a ``shared`` entry, template arguments) stays with the builder.

Wherever a value is expected, an interpolation (``${vars.width}``, ``$c``, ``$(4 * c)``) passes:
it is resolved before the build.
"""

from __future__ import annotations

import collections.abc
import json
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from composer.build.builder import LAZY
from composer.init.initializers import INITIALIZERS
from composer.modules import signatures as args_of
from composer.modules import torch_ops
from composer.modules.ops import OPS
from composer.modules.registry import MODULES
from composer.modules.signatures import EMPTY
from composer.recipe import grammar as g
from composer.recipe.optim import KINDS, OPTIMIZER_OPTIONS, SETTINGS
from composer.recipe.parallel import TP_STYLES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_NOT_INITIALIZER_ARGS = frozenset({"tensor", "generator"})
DTYPES = sorted(
    name for name, value in vars(torch).items() if isinstance(value, torch.dtype) and not name.startswith("_")
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name.replace('~', '~0').replace('/', '~1')}"}


def recipe_schema(modules: Any = MODULES, initializers: Any = INITIALIZERS, ops: Any = OPS) -> dict[str, Any]:
    """The JSON Schema of a recipe (or of a bare node), from the grammar and the registries given.

    Args:
        modules: type name -> module class (``composer.modules.registry.MODULES`` or a mapping).
        initializers: initializer name -> ``fn(tensor, **kwargs)``.
        ops: op name -> function, read as the builder reads it (``signatures.op_arguments``):
            ``in:`` fills its positional parameters, every other argument is a key.
    """
    types = args_of.entries(modules)
    inits = args_of.entries(initializers)
    op_fns = args_of.entries(ops)
    derived = _torch_op_groups({n: op for n, op in torch_ops.all_derived().items() if n not in op_fns})
    cases = {**{name: [name] for name in op_fns}, **{group[0]: list(group) for group in derived}}
    defs: dict[str, Any] = {
        **_common(types, inits),
        **_node_forms(types, cases),
        **{f"type.{name}": _type_def(name, cls) for name, cls in types.items() if name not in g.TYPE_FORMS},
        **{f"init.{name}": _initializer_def(name, fn) for name, fn in inits.items()},
        **{f"op.{name}": _op_def(name, fn) for name, fn in op_fns.items()},
        **{f"op.{group[0]}": schema for group, schema in derived.items()},
        **{f"stub.{name}": _or_interpolation(schema) for name, schema in _STUB_TYPES.items()},
    }
    return {
        "$schema": DIALECT,
        "title": "composer recipe",
        "description": "A recipe (model, shared, blocks, init, ...) or a bare node.",
        # A mapping with a node key is a bare node; anything else a recipe (so an empty file
        # completes as a recipe, and a typo such as `sahred` is reported as a top-level key).
        "if": {"anyOf": [{"required": [key]} for key in g.NODE_MARKERS]},
        "then": _ref("node"),
        "else": _ref("recipe"),
        "$defs": defs,
    }


def _parallel_def() -> dict[str, Any]:
    """The ``parallel:`` section (``composer.recipe.parallel``)."""
    floating = {"enum": ["float32", "float16", "bfloat16", "float64"]}
    selector = {"anyOf": [
        {"type": "object", "properties": {"layer": _ref("layer")}, "required": ["layer"],
         "additionalProperties": False},
        {"type": "object", "properties": {"match": {"type": "string"}}, "required": ["match"],
         "additionalProperties": False},
    ]}  # fmt: skip
    fused = {
        "type": "object",
        "properties": {"style": {"const": "colwise"}, "chunks": {"type": "integer", "minimum": 1, "maximum": 64}},
        "required": ["style", "chunks"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "description": "FSDP2 mixed precision, resharding, CPU offload, tensor parallel, activation checkpointing",
        "properties": {
            "param_dtype": floating,
            "reduce_dtype": floating,
            "reshard_after_forward": {"type": "boolean"},
            "cpu_offload": {"type": "boolean"},
            "tp": {"type": "object", "additionalProperties": {"anyOf": [{"enum": list(TP_STYLES)}, fused]}},
            "checkpoint": {"anyOf": [selector, {"type": "array", "items": selector}]},
        },
        "additionalProperties": False,
    }


def _common(types: Mapping[str, Any], inits: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level sections and the small definitions nodes share."""
    type_name = {"enum": sorted({*types, *g.TYPE_FORMS})}
    names = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    input_spec = {
        "type": "object",
        "properties": {"shape": _ref("shape"), "dtype": _ref("dtype")},
        "required": ["shape"],
        "additionalProperties": False,
    }
    return {
        "recipe": {
            "type": "object",
            "properties": {
                "model": {**_ref("node"), "description": "the node to build"},
                "shared": {"type": "object", "description": "modules built once; {ref: name} is that instance",
                           "additionalProperties": _ref("node")},
                "blocks": {"type": "object", "additionalProperties": _ref("template"),
                           "description": "templates: ${blocks.name} pastes a copy, {use: name} fills args"},
                "init": _ref("init"),
                "input_shape": {**_ref("shape"), "description": "one example batch's full shape, e.g. [2, 20]"},
                "inputs": {"description": "inputs that are not one float tensor, in forward order or by name",
                           "anyOf": [{"type": "array", "items": input_spec},
                                     {"type": "object", "additionalProperties": input_spec}]},
                "tie": {"type": "object", "description": "dst: src parameter paths, one tensor",
                        "additionalProperties": {"anyOf": [{"type": "string"}, {
                            "type": "object", "description": "a tie a var turns on or off",
                            "properties": {"src": {"type": "string"}, "when": {"anyOf": [{"type": "boolean"},
                                                                                           _ref("interpolation")]}},
                            "required": ["src"], "additionalProperties": False}]}},
                "dtype": _ref("dtype"),
                "vars": {"type": "object", "description": "free values for ${vars.name} and $(vars.name * 2)"},
                "optim": {
                    "type": "object",
                    "description": "parameter groups for torch.optim: param_groups(model, lr=...)",
                    "properties": {"groups": {"type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "match": {"type": "string"}, "layer": _ref("layer"),
                            "kind": {"anyOf": [{"enum": list(KINDS)}, {"type": "array", "items": {"enum": list(KINDS)}}]},  # noqa: E501
                            "frozen": {"type": "boolean"},
                            **{key: {} for key in (*SETTINGS, *OPTIMIZER_OPTIONS) if key != "frozen"},
                        },
                        "additionalProperties": False,
                    }}},
                    "additionalProperties": False,
                },
                "shard": {
                    "type": "object",
                    "properties": {"units": {"type": "array", "items": {"anyOf": [
                        {"type": "object", "properties": {"layer": _ref("layer")}, "required": ["layer"],
                         "additionalProperties": False},
                        {"type": "object", "properties": {"match": {"type": "string"}}, "required": ["match"],
                         "additionalProperties": False},
                    ]}}},
                    "additionalProperties": False,
                },
                "parallel": _parallel_def(),
            },
            "required": ["model"],
            "additionalProperties": False,
        },
        "interpolation": {"type": "string", "pattern": r"^\$", "description": "${...}, $name or $(expression)"},
        "dtype": {"anyOf": [{"enum": DTYPES}, _ref("interpolation")]},
        "shape": {"anyOf": [
            {"type": "array", "items": {"anyOf": [{"type": "integer", "minimum": 1}, _ref("interpolation")]}},
            _ref("interpolation"),
        ]},
        "type_name": type_name,
        "layer": {"anyOf": [type_name, {"type": "array", "items": type_name}]},
        "names": names,
        "flag": {"anyOf": [{"type": "boolean"}, _ref("interpolation")]},
        "inline_init": {"type": "object", "description": "parameter: initializer, for this module's own parameters",
                        "additionalProperties": _ref("initializer")},
        "initializer": {
            "if": {"type": "string"},
            "then": {"anyOf": [{"enum": sorted(inits)}, _ref("interpolation")]},
            "else": {
                "type": "object",
                "properties": {"type": {"enum": sorted(inits)}},
                "required": ["type"],
                "allOf": [_when("type", name, f"init.{name}") for name in inits],
            },
        },
        "init": {
            "type": "object",
            "properties": {
                "seed": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, _ref("interpolation")]},
                "rules": {"type": "array", "items": _ref("rule")},
            },
            "additionalProperties": False,
        },
        "rule": {
            "type": "object",
            "description": "match (glob over module paths), layer (class names), then parameter: initializer",
            "properties": {"match": {"type": ["string", "integer"]}, "layer": _ref("layer")},
            "additionalProperties": _ref("initializer"),
        },
        "template": {
            "if": {"type": "object", "required": ["body"]},
            "then": {
                "type": "object",
                "properties": {
                    "args": {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "string"}}],
                             "description": "name: default (??? for required), or a list of required names"},
                    "body": _ref("node"),
                },
                "additionalProperties": False,
            },
            "else": _ref("node"),
        },
    }  # fmt: skip


# The schema of each kind of value a key of the grammar holds.
_KINDS: dict[str, dict[str, Any]] = {
    g.NODE: _ref("node"),
    g.NODES: {"anyOf": [{"type": "array", "items": _ref("node")},
                        {"type": "object", "additionalProperties": _ref("node")}, _ref("interpolation")]},
    g.ENTRIES: {"type": "object", "additionalProperties": _ref("graph_entry")},
    g.PARAMS: {"type": "object", "additionalProperties": _ref("graph_param")},
    g.BUFFERS: {"type": "object", "additionalProperties": _ref("graph_buffer")},
    g.CHAIN: {"anyOf": [{"type": "array", "items": _ref("op")}, _ref("type.Graph"), _ref("interpolation")]},
    g.INPUTS: {"anyOf": [_ref("names"), {"type": "object", "additionalProperties": {"type": "string"}}]},
    g.KWARGS: {"type": "object"},
    g.MODE: {"anyOf": [{"enum": ["chain", "parallel"]}, _ref("interpolation")]},
    g.DIM: {"anyOf": [{"type": "integer"}, _ref("interpolation")]},
    g.NAME_LIST: {"type": "array", "items": {"type": "string"}},
    g.NAMES: _ref("names"),
    g.COUNT: {"anyOf": [{"type": "integer", "minimum": 1}, _ref("interpolation")]},
    g.FORMAT: {"type": "string"},
    g.INLINE_INIT: _ref("inline_init"),
    g.INITIALIZER: _ref("initializer"),
    g.FLAG: _ref("flag"),
    g.SHAPE: _ref("shape"),
    g.POSITIONAL: {"type": "array"},
}  # fmt: skip


def _keys(keys: Iterable[g.Key]) -> dict[str, Any]:
    return {key.name: {**_KINDS[key.kind], "description": key.doc} for key in keys}


def _form_keys(form: g.Form) -> dict[str, Any]:
    """A form's keys, and a Graph entry's (``in``, ``forward``) on every form but ``ref``: any node
    can be an entry (an op takes its constants as keys: ``in`` alone)."""
    entry = () if form is g.REF else (g.IN,) if form is g.OP else g.ENTRY
    return _keys({key.name: key for key in (*form.keys, *entry)}.values())


def _form_def(form: g.Form, marker: dict[str, Any]) -> dict[str, Any]:
    """A form of the grammar: its marker, its keys; closed unless its other keys are arguments."""
    schema: dict[str, Any] = {
        "type": "object",
        "title": form.name,
        "description": form.summary,
        "properties": {form.marker: marker, **_form_keys(form)},
    }
    if not form.arguments:
        schema["additionalProperties"] = False
    required = [key.name for key in form.keys if key.required]
    return {**schema, "required": required} if required else schema


def _def_name(form: g.Form) -> str:
    return f"type.{form.type_name}" if form.type_name else form.name


def _node_forms(types: Mapping[str, Any], ops: Mapping[str, Any]) -> dict[str, Any]:
    """The node and each form of the grammar; a form of ``type:`` is picked by its type's name."""
    typed_names = [*g.TYPE_FORMS, *(n for n in types if n not in g.TYPE_FORMS)]
    marked = {form.marker: _def_name(form) for form in g.MARKED}
    op_def = _form_def(g.OP, {"enum": sorted(n for names in ops.values() for n in names)})
    # ``op`` is required by this definition already: each case tests its value only.
    op_def["allOf"] = [
        {
            "if": {"properties": {g.OP.marker: {"const": n} if len(names) == 1 else {"enum": names}}},
            "then": _ref(f"op.{n}"),
        }
        for n, names in ops.items()
    ]
    return {
        "node": {
            "if": {"type": "string"},
            "then": _ref("interpolation"),
            "else": {
                "type": "object",
                "anyOf": [{"required": [key]} for key in g.NODE_MARKERS],
                "allOf": [{"if": {"required": [marker]}, "then": _ref(marked.get(marker, "typed"))}
                          for marker in g.NODE_MARKERS],
            },
        },
        "typed": {
            "properties": {"type": _ref("type_name")},
            "allOf": [_when("type", name, f"type.{name}") for name in typed_names],
        },
        **{_def_name(form): _form_def(form, {"const": form.type_name}) for form in g.TYPE_FORMS.values()},
        **{_def_name(form): _form_def(form, {"type": "string"}) for form in (g.REF, g.USE, g.TARGET, g.CALL)},
        "op": op_def,
        "graph_entry": {
            "if": {"type": "object", "required": [g.CALL.marker]},
            "then": _ref(_def_name(g.CALL)),
            "else": _ref("node"),
        },
        "graph_param": {
            "type": "object",
            "properties": _keys(g.PARAM_KEYS),
            "required": [key.name for key in g.PARAM_KEYS if key.required],
            "additionalProperties": False,
        },
        "graph_buffer": {
            "type": "object",
            "properties": _keys(g.BUFFER_KEYS),
            "oneOf": [{"required": ["shape"]}, {"required": ["value"]}],
            "additionalProperties": False,
        },
    }  # fmt: skip


def _when(key: str, value: str, definition: str) -> dict[str, Any]:
    return {"if": {"properties": {key: {"const": value}}, "required": [key]}, "then": _ref(definition)}


def _titled(name: str, obj: Any) -> dict[str, Any]:
    """An object schema titled ``name``, described by the first line of ``obj``'s docstring."""
    schema: dict[str, Any] = {"type": "object", "title": name}
    doc = args_of.summary_line(obj)
    if doc:
        schema["description"] = doc
    return schema


def _type_def(name: str, cls: Any) -> dict[str, Any]:
    """A registered type: its arguments typed, every other key refused unless it takes ``**kwargs``."""
    signature, schema = args_of.arguments(cls), _titled(name, cls)
    if signature is None:
        return schema
    deferred = LAZY[cls][1] if cls in LAZY else None
    properties: dict[str, Any] = {"type": {"const": name}}
    for arg in signature.named:
        if arg.name not in g.RESERVED:  # PReLU's init: only through _args_
            properties[arg.name] = _argument(arg)
    properties.update(_form_keys(g.CALLED))
    properties["_args_"]["description"] = f"positional: {', '.join(signature.positional) or 'none'}"
    schema["properties"] = properties
    if not signature.var_keyword:
        schema["additionalProperties"] = False
    required = [a.name for a in signature.named if a.required and a.name != deferred and a.name in properties]
    if required:  # positional arguments may give them instead
        schema["if"] = {"not": {"required": ["_args_"]}}
        schema["then"] = {"required": required}
    return schema


def _initializer_def(name: str, fn: Any) -> dict[str, Any]:
    signature, schema = args_of.arguments(fn), _titled(name, fn)
    if signature is None:
        return schema
    named = [a for a in signature.named[1:] if a.name not in _NOT_INITIALIZER_ARGS]
    schema["properties"] = {"type": {"const": name}, **{a.name: _argument(a) for a in named}}
    if not signature.var_keyword:
        schema["additionalProperties"] = False
    required = [a.name for a in named if a.required]
    if required:
        schema["required"] = ["type", *required]
    return schema


def _op_def(name: str, fn: Any) -> dict[str, Any]:
    """An op as the builder checks it: ``in`` fills its positional parameters, its arguments are
    keys (``add``'s ``other`` either way), keyword-only ones without a default are required."""
    signature, schema = args_of.op_arguments(fn), _titled(name, fn)
    if signature is None:
        return schema
    kwargs = [a for a in signature.keywords if a.name not in g.OP.reserved]
    schema["properties"] = {
        g.OP.marker: {"const": name},
        **_form_keys(g.OP),
        **{a.name: _argument(a) for a in kwargs},
    }
    if not signature.any_keyword:
        schema["additionalProperties"] = False
    if signature.required_keywords:
        schema["required"] = list(signature.required_keywords)
    return schema


# The plain types of torch's stubs, each a shared definition (``stub.int``) that also takes an
# interpolation: 700 derived ops refer to a few of them.
_INTEGERS = {"type": "array", "items": {"type": "integer"}}
_STUB_TYPES = {
    "int": {"type": "integer"}, "float": {"type": "number"},
    "Number": {"type": "number"}, "bool": {"type": "boolean"}, "str": {"type": "string"}, "None": {"type": "null"},
    "dtype": _ref("dtype"), "size": _INTEGERS,
}  # fmt: skip
_STUB_ALIASES = {"SymInt": "int", "Sequence[int]": "size", "Sequence[int | SymInt]": "size"}


def _torch_op_groups(ops: Mapping[str, torch_ops.TorchOp]) -> dict[tuple[str, ...], dict[str, Any]]:
    """The derived ops' definitions, one per set of arguments: ``cos``, ``sin`` and 200 more take
    ``input`` alone and share ``op.abs`` (the schema stays small enough for an editor)."""
    groups: dict[str, list[str]] = {}
    for name, op in ops.items():
        groups.setdefault(json.dumps(_torch_op_def(name, op)), []).append(name)
    defs = {}
    for text, names in groups.items():
        schema = json.loads(text)
        schema["title"] = ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:3])} and {len(names) - 3} more"
        defs[tuple(names)] = schema
    return defs


def _torch_op_def(name: str, op: torch_ops.TorchOp) -> dict[str, Any]:
    """A derived op as ``torch_ops.problems`` checks it: every argument of any overload a key
    (those ``in:`` fills too), none other; the arguments every overload needs as keys required.
    The form's own keys (``in``, ...) are checked by the ``op`` definition applied beside it."""
    properties: dict[str, Any] = dict.fromkeys([g.OP.marker, *_form_keys(g.OP)], True)
    for o in op.overloads:
        for p in o.params:
            if p.name not in properties and not (p.name == "training" and op.follows_training):
                properties[p.name] = _stub_argument(p)
    schema: dict[str, Any] = {"properties": properties, "additionalProperties": False}
    required = torch_ops.required_keys(op)
    return {**schema, "required": list(required)} if required else schema


def _stub_argument(p: torch_ops.Param) -> Any:
    """A key's schema from a stub's annotation: typed where every member of it is a plain type."""
    members = p.annotation.split(" | ")
    known = not p.tensor and all(_STUB_ALIASES.get(m, m) in _STUB_TYPES for m in members)
    refs = list(dict.fromkeys(f"stub.{_STUB_ALIASES.get(m, m)}" for m in members)) if known else []
    typed = _ref(refs[0]) if len(refs) == 1 else {"anyOf": [_ref(r) for r in refs]} if refs else {}
    default = _NO_JSON if isinstance(p.default, torch_ops.Shown) else _json_value(p.default)
    return {**typed, "default": default} if default is not _NO_JSON else typed or True


def _argument(arg: args_of.Argument) -> dict[str, Any]:
    """A keyword's schema: typed where the annotation or the default says, with its default."""
    typed = _from_annotation(arg.annotation) if arg.annotation is not EMPTY else None
    if typed is None and arg.default is not EMPTY:
        typed = _from_value(arg.default)
    schema = _or_interpolation(typed or {})
    default = _json_value(arg.default)
    if default is not _NO_JSON:
        schema = {**schema, "default": default}
    return schema


_NO_JSON = object()
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _from_annotation(annotation: Any) -> dict[str, Any] | None:
    """int -> integer, float -> number, ``X | None``, ``Literal``, lists and tuples, modules ->
    node, ``torch.dtype``; None where the annotation says nothing a schema can use."""
    if isinstance(annotation, str):
        return _ref("node") if args_of.is_module_type(annotation) else _SCALAR_NAMES.get(annotation)
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if annotation is torch.dtype:
        return _ref("dtype")
    if annotation is torch.Size:
        return {"type": "array", "items": {"type": "integer"}}
    if args_of.is_module_type(annotation) or annotation in (typing.Callable, collections.abc.Callable):
        return _ref("node")
    if args_of.is_union(annotation):
        return _from_union(typing.get_args(annotation))
    if annotation in (list, tuple):
        return {"type": "array"}
    return _from_generic(typing.get_origin(annotation), typing.get_args(annotation))


def _from_union(members: tuple[Any, ...]) -> dict[str, Any] | None:
    """``X | Y``: the options of each, once; None where one member says nothing."""
    schemas = [_from_annotation(a) for a in members]
    if any(m is None for m in schemas):
        return None
    flat: list[dict[str, Any]] = []
    for m in schemas:
        for option in m.get("anyOf", [m]) if set(m) == {"anyOf"} else [m]:
            if option not in flat:
                flat.append(option)
    return flat[0] if len(flat) == 1 else {"anyOf": flat}


def _from_generic(origin: Any, inner: tuple[Any, ...]) -> dict[str, Any] | None:
    """``Literal[...]``, ``Callable[...]``, ``Mapping[K, V]``, ``list[X]``, ``tuple[X, X]``."""
    if origin is typing.Literal:
        return {"enum": list(inner)}
    if origin is collections.abc.Callable:
        return _ref("node")  # a module is the callable a recipe can give
    if isinstance(origin, type) and issubclass(origin, Mapping):
        value = _from_annotation(inner[1]) if len(inner) == 2 else None
        return {"type": "object", **({"additionalProperties": value} if value else {})}
    if isinstance(origin, type) and issubclass(origin, Iterable) and not issubclass(origin, str):
        items = [i for i in inner if i is not Ellipsis]
        item = _from_annotation(items[0]) if items and all(i == items[0] for i in items) else None
        schema: dict[str, Any] = {"type": "array", **({"items": _or_interpolation(item)} if item else {})}
        if origin is tuple and inner and Ellipsis not in inner:
            schema["minItems"] = schema["maxItems"] = len(inner)
        return schema
    return None


_SCALAR_NAMES = {cls.__name__: {"type": kind} for cls, kind in _SCALARS.items()}


def _from_value(default: Any) -> dict[str, Any] | None:
    """The type of a default: ``eps=1e-5`` is a number, ``bias=True`` a boolean; None says nothing."""
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int):
        return {"type": "integer"}
    if isinstance(default, float):
        return {"type": "number"}
    if isinstance(default, str):
        return {"type": "string"}
    if isinstance(default, (list, tuple)):
        return {"type": "array"}
    return None


def _or_interpolation(schema: dict[str, Any]) -> dict[str, Any]:
    """A typed value may also be written as an interpolation; a string or a node already may."""
    if not schema or schema.get("type") == "string" or schema.get("$ref") == "#/$defs/node":
        return schema
    options = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    if {"type": "string"} in options or _ref("node") in options:
        return schema
    return {"anyOf": [*options, _ref("interpolation")]}


def _json_value(value: Any) -> Any:
    """``value`` as JSON, or ``_NO_JSON`` (no default to show: required, a function, a tensor)."""
    if value is EMPTY:
        return _NO_JSON
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NO_JSON
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return _NO_JSON if any(i is _NO_JSON for i in items) else items
    return _NO_JSON
