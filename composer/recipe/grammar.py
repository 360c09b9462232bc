"""The recipe grammar: each node form, its marker key and its keys, defined once.

A node is a mapping whose marker key says its form (``ref``, ``use``, ``op``, ``_target_``, ``type``;
``call`` in a Graph's entries only). Each form is a ``Form``: its keys, the kind of value each
holds (a node, nodes, names of the wiring, a count, ...), which are required, and whether its
other keys are arguments (of a class, a template or an op). The builder dispatches on ``form_of``
and checks keys against ``Form.keys``; the JSON Schema, ``list types``, ``to_recipe`` (which keys
an argument must not be named) and the module count read the same tables. A new form is one
``Form`` here and one handler in the builder.

Nothing here imports torch: the command line reads recipes before it pays for it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What a key holds: the schema types it, ``list`` describes it, the builder checks it. NODE, NODES
# and ENTRIES hold nodes (built as modules); NAME_LIST and NAMES are wiring (names of a Graph's
# inputs, entries and params); every value may also be an interpolation or a $(expression).
NODE = "node"  # one node
NODES = "nodes"  # a list of nodes, or a mapping name: node (in order)
ENTRIES = "entries"  # a Graph's entries: name: module node, op or call
PARAMS = "params"  # name: {shape, init, frozen}
BUFFERS = "buffers"  # name: {shape, init} or {value}, persistent
CHAIN = "chain"  # a buffer's value: a list of op nodes, or a Graph without inputs
INPUTS = "inputs"  # a name, a list of names, or argument: name
KWARGS = "kwargs"  # argument: value
MODE = "mode"  # how a Repeat applies its copies
DIM = "dim"  # an integer dimension (negative counts from the end)
NAME_LIST = "name list"  # a list of names
NAMES = "names"  # a name or a list of names
COUNT = "count"  # a positive integer
FORMAT = "format"  # a format string of {i}
INLINE_INIT = "inline init"  # parameter: initializer
INITIALIZER = "initializer"  # a bare name or {type: name, <kwargs>}
FLAG = "flag"  # true or false
SHAPE = "shape"  # a list of positive integers
POSITIONAL = "positional"  # a list of positional arguments

# How ``list`` shows each kind.
KIND_TEXT = {
    NODE: "node",
    NODES: "list of nodes, or name: node",
    ENTRIES: "name: module, op or call entry",
    PARAMS: "name: {shape, init, frozen}",
    BUFFERS: "name: {shape, init} or {value}, persistent",
    CHAIN: "list of op nodes, or a Graph without inputs",
    INPUTS: "str, list of str, or argument: str",
    KWARGS: "argument: value",
    MODE: "chain or parallel",
    DIM: "int",
    NAME_LIST: "list of str",
    NAMES: "str or list of str",
    COUNT: "int",
    FORMAT: "str, a format string of {i}",
    INLINE_INIT: "parameter: initializer",
    INITIALIZER: "initializer",
    FLAG: "bool",
    SHAPE: "list of int",
    POSITIONAL: "list",
}


@dataclass(frozen=True)
class Key:
    """One key of a form: the kind of value it holds, whether it is required, its default as a
    user reads it (``'{i}'``, ``the last entry``), and what it does."""

    name: str
    kind: str
    doc: str
    required: bool = False
    default: str = ""


INIT = Key("init", INLINE_INIT, "initializers for this module's own parameters; they win over rules")
FROZEN = Key("frozen", FLAG, "its parameters get requires_grad=False", default="false")
IN = Key(
    "in",
    INPUTS,
    "in a Graph: its inputs (graph inputs, earlier entries, params or buffers), in order or by argument name; "
    "default: the previous entry",
)
FORWARD = Key("forward", KWARGS, "in a Graph: constant arguments of the module's forward (tgt_is_causal: true)")
ARGS = Key("_args_", POSITIONAL, "positional arguments, as in Hydra")
COMMON = (INIT, FROZEN)  # any node but a ref may carry these
ENTRY = (IN, FORWARD)  # any entry of a Graph may carry these, besides its form's keys (an op: in only)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a handler table's key
class Form:
    """A node form.

    Attributes:
        name: how messages and ``list`` name it (``Sequential``, ``ref``, ``op``).
        marker: the key whose presence makes a mapping this form (``type`` for the forms of
            ``type:``, with ``type_name`` its value).
        summary: one line: what it builds.
        keys: its keys besides the marker, the common ones included.
        arguments: its other keys are arguments (of a class, a template or an op).
        type_name: for a form of ``type:``, the type's name; None otherwise.
        entry_only: a form only a Graph's entries take (``call``).
    """

    name: str
    marker: str
    summary: str
    keys: tuple[Key, ...] = ()
    arguments: bool = False
    type_name: str | None = None
    entry_only: bool = False

    @functools.cached_property  # read per node the builder walks
    def reserved(self) -> tuple[str, ...]:
        """The marker and the form's own keys: what is not an argument."""
        return (self.marker, *(key.name for key in self.keys))


REF = Form("ref", "ref", "the instance built from shared.<name>, the same object wherever referenced; no other keys")
USE = Form(
    "use",
    "use",
    "an independent copy of a template of blocks, its arguments as the other keys",
    (IN, FORWARD, *COMMON),
    arguments=True,
)
OP = Form(
    "op", "op", "a parameter-free tensor function, its arguments as the other keys", (IN, *COMMON), arguments=True
)
CALL = Form(
    "call", "call", "an earlier module entry of the same Graph run again: same weights", (IN, FORWARD), entry_only=True
)
TARGET = Form(
    "_target_",
    "_target_",
    "a class by import path under the allowlist, called with the other keys",
    (ARGS, *COMMON),
    arguments=True,
)
CALLED = Form(
    "type", "type", "the class registered under that name, called with the other keys", (ARGS, *COMMON), arguments=True
)
SEQUENTIAL = Form(
    "Sequential",
    "type",
    "nn.Sequential of the children in order",
    (Key("layers", NODES, "the children: a list (named 0, 1, ...) or name: node", default="[]"), *COMMON),
    type_name="Sequential",
)
REPEAT = Form(
    "Repeat",
    "type",
    "nn.Sequential of N independent copies of body",
    (
        Key("times", COUNT, "how many copies", required=True),
        Key("names", FORMAT, "the children's names, a format of i: 'block {i}', 'layer{i + 1}'", default="'{i}'"),
        Key("body", NODE, "the node to copy", required=True),
        Key(
            "mode",
            MODE,
            "chain: the first input runs through the copies in turn, the other inputs (in a Graph's in:) "
            "go unchanged to every copy; parallel: every copy takes the same inputs, the outputs a tuple",
            default="chain",
        ),
        Key("stack", DIM, "with mode parallel: the outputs stacked along this dimension instead of a tuple"),
        *COMMON,
    ),
    type_name="Repeat",
)
GRAPH = Form(
    "Graph",
    "type",
    "children wired by name: residuals, skips, several inputs",
    (
        Key("inputs", NAME_LIST, "forward's arguments, in order", default="[x]"),
        Key("nodes", ENTRIES, "the entries, in order: module nodes (children), ops and calls", required=True),
        Key("output", NAMES, "what forward returns; a list returns a tuple", default="the last entry"),
        Key("params", PARAMS, "parameters of the graph itself, usable in in:", default="{}"),
        Key("buffers", BUFFERS, "tensors of the graph that are not trained, usable in in:", default="{}"),
        *COMMON,
    ),
    type_name="Graph",
)

# A Graph's ``params`` entry (not a node).
PARAM_KEYS = (
    Key("shape", SHAPE, "the parameter's shape", required=True),
    Key("init", INITIALIZER, "its initializer", default="zeros"),
    FROZEN,
)

# A Graph's ``buffers`` entry: ``shape`` (and ``init``) or a computed ``value``.
BUFFER_KEYS = (
    Key("shape", SHAPE, "the buffer's shape (or give value)"),
    Key("init", INITIALIZER, "its initializer, with shape", default="zeros"),
    Key(
        "value",
        CHAIN,
        "computed once at build: a chain of ops (each result fills the next op's first tensor argument not "
        "given as a key), or a Graph without inputs",
    ),
    Key("persistent", FLAG, "false keeps it out of the state_dict (and checkpoints)", default="true"),
)

# The forms a marker other than ``type`` selects, in the order a mapping is tested (a node with
# ``ref`` is a ref whatever else it holds); then ``type``: a form of its own or a class.
MARKED = (REF, USE, OP, TARGET)
TYPE_FORMS = {form.type_name: form for form in (SEQUENTIAL, REPEAT, GRAPH) if form.type_name}
FORMS = (CALLED, *TYPE_FORMS.values(), *MARKED, CALL)
NODE_MARKERS = tuple(dict.fromkeys(form.marker for form in FORMS if not form.entry_only))
# Every key some node form gives a meaning: an argument of that name cannot be written as a key
# (``to_recipe`` passes it in ``_args_``; the schema leaves it out of a type's properties).
# The keys of a type's own form (Sequential's ``layers``) are the arguments of every other type.
RESERVED = frozenset(
    {form.marker for form in FORMS}
    | {key.name for form in FORMS if form.type_name is None for key in form.keys}
    | {key.name for key in ENTRY}
)


def is_node(value: Any) -> bool:
    """A node is a mapping with a marker key: ``type``, ``ref``, ``_target_``, ``use`` or ``op``."""
    if type(value) is not dict and not isinstance(value, Mapping):
        return False
    return "type" in value or any(key in value for key in NODE_MARKERS)  # most nodes: the first test


def form_of(node: Mapping, entry: bool = False) -> Form | None:
    """The form of a mapping (``entry``: a Graph's entry, where ``call`` is a form too); None when
    no marker key is present. A node with both ``_target_`` and ``type`` is a ``_target_`` form
    here; the builder reports the conflict."""
    if entry and CALL.marker in node:
        return CALL
    for form in MARKED:
        if form.marker in node:
            return form
    if "type" not in node:
        return None
    kind = node["type"]
    return TYPE_FORMS.get(kind, CALLED) if isinstance(kind, str) else CALLED


def arguments_of(node: Mapping, form: Form) -> dict[str, Any]:
    """A node's arguments: its keys that are not the form's own."""
    reserved = form.reserved
    return {k: v for k, v in node.items() if k not in reserved}
