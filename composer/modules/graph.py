"""``Graph``: children wired by name (residuals, skips, several inputs), with a generated forward.

A recipe's ``{type: Graph, inputs, nodes, output, params, buffers}`` becomes a ``GraphSpec``: ordered
entries, each a module (a child under the entry's name), an op (a parameter-free function) or a
call (an earlier module run again), each given its inputs by position or by argument name (and a
module or a call constant arguments of its forward). ``Graph(spec, key_path)`` checks the
wiring, reporting every problem at once with its key path, and then writes its ``forward`` as
Python source, as ``torch.fx``'s ``GraphModule`` does: straight-line code compiled once, so a
forward pays no per-entry interpreter loop and ``torch.compile(fullgraph=True)`` sees plain calls.

The generated source holds no user text except as ``repr``'d string literals and the inputs' names
as the forward's parameters (so ``model(input_ids=ids)`` works), each checked to be a plain
identifier that no generated name can be: other variables are generated names (``a0`` for an input
whose name is not such an identifier, ``p0`` for params, ``b0`` for buffers, ``v0`` for entries;
an argument name that is no identifier goes as a ``repr``'d key), children are reached as
``self._modules['name']``, params as ``self._parameters['name']`` and buffers as
``self._buffers['name']`` at each call, so ``.to()``, ``copy.deepcopy``, ``load_state_dict`` and
FSDP2's ``fully_shard`` (which swaps the parameter objects) keep working. The source is
registered in ``linecache`` (the last 1,024 sources, 4 MiB at most), so a traceback through a
recent graph shows the generated line; ``graph.code`` returns it.

``RepeatChain`` and ``RepeatParallel`` are a Repeat's copies in a Graph: over several inputs (the
first threaded through, the others to every copy), or side by side.
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
import linecache
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from composer.errors import ConfigError, did_you_mean, has_control, listing, shown
from composer.modules.signatures import Argument, arguments, arity

# --- the spec ------------------------------------------------------------------------------------


# An entry's inputs: names in order (positional), a mapping argument name -> name (passed by
# keyword), or None: the previous entry (the first entry: the first graph input, if any).
Inputs = Sequence[str] | Mapping[str, str] | None


@dataclass(frozen=True)
class ModuleEntry:
    """A child module registered under ``name``, called with ``inputs`` and the constant keyword
    arguments ``forward``. ``module`` may be None to check the wiring alone."""

    name: str
    module: nn.Module | None
    inputs: Inputs = None
    forward: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpEntry:
    """``fn(*inputs, **kwargs)``: a parameter-free function. ``label`` names it in the repr (the
    op's registered name; default ``fn.__name__``). An ``fn`` with ``takes_training = True`` also
    gets ``training=self.training`` (attention's dropout, which applies in training only)."""

    name: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    inputs: Inputs = None
    label: str | None = None


@dataclass(frozen=True)
class CallEntry:
    """Runs the earlier module entry ``target`` again: the same weights, no new keys."""

    name: str
    target: str
    inputs: Inputs = None
    forward: Mapping[str, Any] = field(default_factory=dict)


Entry = ModuleEntry | OpEntry | CallEntry


@dataclass(frozen=True)
class Buffer:
    """A tensor of the graph that is not trained (``register_buffer``), usable in ``in:``.

    ``fill(tensor, generator)`` writes its value (what ``reset_parameters`` and initialization run
    after a build on ``meta``, or a load that rebuilds a non-persistent one); None: zeros. A
    computed buffer's fill computes it again, on the tensor's device, in its dtype."""

    tensor: torch.Tensor
    persistent: bool = True
    fill: Callable[[torch.Tensor, torch.Generator | None], None] | None = None


@dataclass(frozen=True)
class GraphSpec:
    """What a Graph is made of.

    Args:
        entries: in order; their names become the wiring's names (module entries: child names).
        inputs: the forward's positional arguments, in order.
        params: name -> tensor, registered as ``nn.Parameter`` on the graph (an ``nn.Parameter``
            is registered as it is, so a tie or a shared tensor stays one object).
        buffers: name -> ``Buffer``, registered as buffers of the graph.
        output: an entry, input or param name, or a list of them (the forward returns a tuple);
            None: the last entry.
    """

    entries: Sequence[Entry]
    inputs: Sequence[str] = ("x",)
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)
    output: str | Sequence[str] | None = None
    buffers: Mapping[str, Buffer] = field(default_factory=dict)


# --- validation ----------------------------------------------------------------------------------


def _join(base: str, suffix: str) -> str:
    return f"{base}.{suffix}" if base else suffix


def _entry_path(key_path: str, name: str) -> str:
    return _join(key_path, f"nodes.{name}")


def _keywords(entry: Entry) -> dict[str, str]:
    """An entry's inputs given by argument name (``in:`` a mapping)."""
    inputs = entry.inputs
    if inputs is None or type(inputs) is list:  # most entries: no ABC check
        return {}
    return dict(inputs) if isinstance(inputs, Mapping) else {}


def _resolved_inputs(spec: GraphSpec) -> list[tuple[str, ...]]:
    """Each entry's positional input names, the default (previous entry, or the first input)
    filled in; an entry whose inputs are all by name has none."""
    resolved = []
    previous: tuple[str, ...] = tuple(spec.inputs[:1])
    for entry in spec.entries:
        if entry.inputs is None:
            names: tuple[str, ...] = previous
        else:
            names = () if isinstance(entry.inputs, Mapping) else tuple(entry.inputs)
        resolved.append(names)
        previous = (entry.name,)
    return resolved


def _arity(module: nn.Module) -> tuple[int, int | None] | None:
    """How many positional inputs ``module.forward`` takes (min, max or None), where readable;
    read once per class (a 1,000-entry graph has a few classes). A Repeat's copies take what its
    first copy takes; a graph's own forward takes its inputs; another forward set on an instance
    is read each time (cached, it would keep its module alive)."""
    if isinstance(module, (RepeatChain, RepeatParallel)) and len(module):
        return _arity(module[0])
    own = module.__dict__.get("forward")
    if own is None:
        return arity(type(module).forward, 1)
    if isinstance(module, Graph):
        return len(module.input_names), len(module.input_names)
    return arity.__wrapped__(own, 0)


def _forward_arguments(module: nn.Module) -> tuple[tuple[Argument, ...], bool, bool] | None:
    """The named arguments of ``module.forward`` past ``self``, and whether it takes ``*args`` and
    ``**kwargs``; a Graph's are its input names. None where unreadable."""
    if isinstance(module, Graph):
        return tuple(Argument(n) for n in module.input_names), False, False
    own = module.__dict__.get("forward")
    read = arguments(own) if own is not None else arguments(type(module).forward)
    if read is None:
        return None
    named = read.named if own is not None else read.named[1:]
    return named, read.var_positional, read.var_keyword


def _keyword_problems(
    label: str, module: nn.Module | None, n_positional: int, entry: Entry, path: str
) -> list[tuple[str, str]]:
    """Inputs by name (``in.KEY``) and constants (``forward.KEY``) that ``module.forward`` does not
    take, one given twice, and a required argument given no way."""
    constants = getattr(entry, "forward", {}) or {}
    keywords = _keywords(entry)
    if not (keywords or constants):
        return []
    read = None if module is None else _forward_arguments(module)
    if read is None:
        return []
    named, _var_positional, var_keyword = read
    by_name = {a.name: a for a in named if not a.positional_only}
    bound = {a.name for a in [a for a in named if not a.keyword_only][:n_positional]}
    problems = []
    for where, given in (("in", keywords), ("forward", constants)):
        for key in given:
            if key in bound:
                problems.append(
                    (f"{path}.{where}.{key}", f"{label} gets {key!r} twice (in: and forward:, or by position)")
                )
            elif key not in by_name and not var_keyword:
                hint = did_you_mean(str(key), by_name)
                takes = ", ".join(by_name) or "none"
                problems.append(
                    (f"{path}.{where}.{key}", f"{label}'s forward takes no argument {key!r}{hint}; it takes: {takes}")
                )
            bound.add(key)
    missing = [a.name for a in named if a.required and a.name not in bound]
    if missing:
        names = ", ".join(repr(n) for n in missing)
        problems.append((f"{path}.in", f"{label}'s forward is missing {names}"))
    return problems


def _arity_problem(label: str, module: nn.Module | None, count: int) -> str | None:
    arity = None if module is None else _arity(module)
    if arity is None:
        return None
    low, high = arity
    if count >= low and (high is None or count <= high):
        return None
    if high == low:
        takes = f"{low} input{'s' if low != 1 else ''}"
    elif high is None:
        takes = f"at least {low} input{'s' if low != 1 else ''}"
    else:
        takes = f"{low} to {high} inputs"
    return f"{label} takes {takes}, got {count}"


def graph_problems(spec: GraphSpec, key_path: str = "") -> list[tuple[str, str]]:
    """Every problem of a spec's wiring, as ``(key path, message)`` pairs; empty when it is sound.

    ``key_path`` is the graph node's path (``model.layer1[0]``): entries are reported under
    ``<key_path>.nodes.<name>``, inputs under ``.inputs[i]``, params under ``.params.<name>``
    (buffers ``.buffers.<name>``), the output under ``.output``. Checked: names (strings, non-empty,
    no '.', distinct, not an attribute ``nn.Module`` or ``Graph`` uses), every input defined
    earlier, calls naming an earlier module entry, inputs per module where its forward's signature
    says (by position, by name under ``.in.<arg>``, constants under ``.forward.<arg>``), every
    entry's result used or returned, and the output defined.
    """
    check = _WiringCheck(key_path)
    inputs = check.inputs_and_params(spec)
    if not spec.entries:
        check.fail("nodes", "a Graph needs at least one node")
    entry_names = {e.name for e in spec.entries if isinstance(e.name, str)}
    for entry, names in zip(spec.entries, _resolved_inputs(GraphSpec(spec.entries, inputs)), strict=True):
        check.entry(entry, names, entry_names)
    check.outputs(spec)
    check.unused(spec)
    return check.problems


class _WiringCheck:
    """One check of a spec: the names defined so far, the modules among them, the names used."""

    def __init__(self, key_path: str) -> None:
        self.key_path = key_path
        self.problems: list[tuple[str, str]] = []
        self.seen: dict[str, str] = {}  # name -> what defines it ("input", "param", "buffer", "entry")
        self.available: dict[str, None] = {}  # names usable as inputs so far, ordered for the hints
        self.modules: dict[str, nn.Module | None] = {}
        self.used: set[str] = set()

    def fail(self, suffix: str, message: str) -> None:
        self.problems.append((_join(self.key_path, suffix), message))

    def claim(self, name: Any, what: str, path: str) -> bool:
        """Take ``name`` for an input, a param or an entry; False (reported) if it cannot be one."""
        if not isinstance(name, str) or not name:
            why = f"a {what} name must be a non-empty string, got {name!r}"
        elif "." in name:
            why = f"{what} name {name!r} contains '.', which module paths reserve"
        elif has_control(name):
            why = f"{what} name {name!r} holds a control character: names reach terminals and files"
        elif name in RESERVED_NAMES:
            why = f"{what} name {name!r} is an attribute nn.Module uses; choose another name"
        elif name in self.seen:
            why = f"{what} name {name!r} is already used by a graph {self.seen[name]}"
        else:
            self.seen[name] = what
            return True
        self.problems.append((path, why))
        return False

    def inputs_and_params(self, spec: GraphSpec) -> Sequence[str]:
        """Claim the inputs, params and buffers; the inputs, or none where they are not a list.
        A Graph may take no input (a buffer's value: its first entry is given none)."""
        inputs: Sequence[str] = spec.inputs
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            self.fail("inputs", f"expected a list of input names, got {spec.inputs!r}")
            inputs = ()
        for i, name in enumerate(inputs):
            self.claim(name, "input", _join(self.key_path, f"inputs[{i}]"))
        for name in spec.params:
            self.claim(name, "param", _join(self.key_path, f"params.{name}"))
        for name in spec.buffers:
            self.claim(name, "buffer", _join(self.key_path, f"buffers.{name}"))
        self.available = {n: None for n in self.seen}
        return inputs

    def entry(self, entry: Entry, names: tuple[str, ...], entry_names: set[str]) -> None:
        """One entry: its inputs defined before it, its form's own checks, its name claimed."""
        path = _entry_path(self.key_path, str(entry.name))
        if entry.inputs is not None and (isinstance(entry.inputs, str) or not entry.inputs):
            why = f"expected a non-empty list of names or argument: name, got {entry.inputs!r}"
            self.problems.append((f"{path}.in", why))
            names = ()
        wired: list[tuple[str | int, str]] = [*_keywords(entry).items(), *enumerate(names)]  # (argument, name)
        for argument, name in wired:
            if name in self.available:
                self.used.add(name)
                continue
            if isinstance(argument, str):
                where = f"{path}.in.{argument}"
            else:
                where = f"{path}.in" if entry.inputs is None or len(names) == 1 else f"{path}.in[{argument}]"
            later = " is defined later or is this entry" if name in entry_names else ""
            if not shown(self.problems):  # counted only: no hint to compute
                self.problems.append((where, f"unknown input {name!r}{later}"))
                continue
            hint = did_you_mean(str(name), self.available)
            known = listing(self.available)
            self.problems.append((where, f"unknown input {name!r}{later}{hint}; known here: {known}"))
        why = self._form_problem(entry, names, path)
        if why is not None:
            self.problems.append(why)
        if isinstance(entry, CallEntry) and isinstance(entry.target, str) and entry.target in self.modules:
            label = f"call of {entry.target!r}"
            self.problems += _keyword_problems(label, self.modules[entry.target], len(names), entry, path)
        elif isinstance(entry, ModuleEntry) and isinstance(entry.module, nn.Module):
            self.problems += _keyword_problems(type(entry.module).__name__, entry.module, len(names), entry, path)
        if self.claim(entry.name, "entry", path):
            self.available[entry.name] = None
            if isinstance(entry, ModuleEntry):
                self.modules[entry.name] = entry.module

    def _form_problem(self, entry: Entry, names: tuple[str, ...], path: str) -> tuple[str, str] | None:
        """What is wrong with a call's target, a module, its inputs' count or an op's function."""
        if isinstance(entry, CallEntry):
            if not isinstance(entry.target, str) or entry.target not in self.modules:
                if not shown(self.problems):
                    return f"{path}.call", f"no earlier module entry {entry.target!r}"
                hint = did_you_mean(str(entry.target), self.modules)
                before = listing(self.modules)
                message = f"no earlier module entry {entry.target!r}{hint}; module entries before it: {before}"
                return f"{path}.call", message
            if _keywords(entry) or entry.forward:  # checked argument by argument: _keyword_problems
                return None
            why = _arity_problem(f"call of {entry.target!r}", self.modules[entry.target], len(names))
            return (f"{path}.in", why) if names and why else None
        if isinstance(entry, ModuleEntry):
            if entry.module is not None and not isinstance(entry.module, nn.Module):
                return path, f"expected an nn.Module, got {type(entry.module).__name__}"
            if _keywords(entry) or entry.forward:  # checked argument by argument: _keyword_problems
                return None
            why = _arity_problem(type(entry.module).__name__, entry.module, len(names))
            return (f"{path}.in", why) if names and why else None
        if isinstance(entry, OpEntry):
            return None if callable(entry.fn) else (f"{path}.op", f"expected a callable, got {type(entry.fn).__name__}")
        return path, f"expected a ModuleEntry, OpEntry or CallEntry, got {type(entry).__name__}"

    def outputs(self, spec: GraphSpec) -> None:
        """The output names defined; the default output (the last entry) is reported there."""
        outputs = _output_names(spec)
        out_path = _join(self.key_path, "output")
        if isinstance(outputs, list) and not outputs:
            self.problems.append((out_path, "an empty output list; name at least one entry"))
        for j, name in enumerate(outputs or ()):
            listed = isinstance(spec.output, Sequence) and not isinstance(spec.output, str)
            where = f"{out_path}[{j}]" if listed else out_path
            if not isinstance(name, str):  # a mapping or a nested list: what a name cannot be
                self.problems.append((where, f"expected an entry name (or a list of them), got {name!r}"))
            elif name in self.available:
                self.used.add(name)
            elif spec.output is not None and not shown(self.problems):
                self.problems.append((where, f"unknown output {name!r}"))
            elif spec.output is not None:
                hint = did_you_mean(str(name), self.available)
                self.problems.append((where, f"unknown output {name!r}{hint}; known: {listing(self.available)}"))

    def unused(self, spec: GraphSpec) -> None:
        for entry in spec.entries:
            if isinstance(entry.name, str) and entry.name not in self.used and self.seen.get(entry.name) == "entry":
                path = _entry_path(self.key_path, entry.name)
                self.problems.append((path, f"the result of {entry.name!r} is used by no entry and is not the output"))


def _output_names(spec: GraphSpec) -> list[str] | None:
    if spec.output is None:
        return [spec.entries[-1].name] if spec.entries else None
    if isinstance(spec.output, str):
        return [spec.output]
    if isinstance(spec.output, Sequence):
        return list(spec.output)
    return [spec.output]  # reported: not a name


# --- code generation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wire:
    """One entry as the generated code needs it (no module: children live in ``_modules``)."""

    kind: str  # "module", "op" or "call"
    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., Any] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # an op's arguments, a module's forward:
    label: str = ""
    target: str = ""
    keywords: tuple[tuple[str, str], ...] = ()  # (argument, name): inputs passed by name


@dataclass(frozen=True)
class _Wiring:
    """Everything ``forward`` is generated from: kept on the graph so a copy or an unpickled graph
    writes its own forward again."""

    inputs: tuple[str, ...]
    params: tuple[str, ...]
    buffers: tuple[str, ...]
    wires: tuple[_Wire, ...]
    output: tuple[str, ...]
    returns_tuple: bool


def _keyword(argument: str, variable: str) -> str:
    """``argument=variable`` in a call; an argument name that is no identifier (a forward taking
    ``**kwargs``) goes as a ``repr``'d string, never as source text."""
    if argument.isidentifier() and not keyword.iskeyword(argument):
        return f"{argument}={variable}"
    return f"**{{{argument!r}: {variable}}}"


def _plain(name: str) -> bool:
    """An input name that can be the forward's parameter itself: an identifier, not a keyword, and
    never one of the generated names (``self``, ``_m``, ``_f0``, ``a0``, ``p0``, ``b0``, ``v0``)."""
    generated = name == "self" or name.startswith("_") or (name[:1] in "apbv" and name[1:].isdigit())
    return name.isidentifier() and not keyword.iskeyword(name) and not generated


def _source(wiring: _Wiring) -> tuple[str, dict[str, Any]]:
    """The forward's source and the globals it needs (the ops, their kwargs, forward constants)."""
    var: dict[str, str] = {name: name if _plain(name) else f"a{i}" for i, name in enumerate(wiring.inputs)}
    args = "".join(f", {var[name]}" for name in wiring.inputs)
    lines = [f"def forward(self{args}):"]
    used = {n for w in wiring.wires for n in (*w.inputs, *(s for _, s in w.keywords))} | set(wiring.output)
    needs_modules = any(w.kind != "op" for w in wiring.wires)
    if needs_modules:
        lines.append("    _m = self._modules")
    for names, table, prefix in ((wiring.params, "_parameters", "p"), (wiring.buffers, "_buffers", "b")):
        held = [name for name in names if name in used]
        if held:
            lines.append(f"    _{prefix} = self.{table}")
        for i, name in enumerate(held):
            var[name] = f"{prefix}{i}"
            lines.append(f"    {prefix}{i} = _{prefix}[{name!r}]")
    # No __name__: dynamo would import it as a module to reach the globals below.
    env: dict[str, Any] = {"__builtins__": builtins}
    for i, wire in enumerate(wiring.wires):
        parts = [var[name] for name in wire.inputs]
        parts += [_keyword(argument, var[name]) for argument, name in wire.keywords]
        if wire.kind == "op" and getattr(wire.fn, "takes_training", False):
            parts.append("training=self.training")
        if wire.kwargs:
            env[f"_k{i}"] = dict(wire.kwargs)
            parts.append(f"**_k{i}")
        call_args = ", ".join(parts)
        if wire.kind == "op":
            env[f"_f{i}"] = wire.fn
            lines.append(f"    v{i} = _f{i}({call_args})  # op {wire.label!r} -> {wire.name!r}")
        elif wire.kind == "call":
            lines.append(f"    v{i} = _m[{wire.target!r}]({call_args})  # call -> {wire.name!r}")
        else:
            lines.append(f"    v{i} = _m[{wire.name!r}]({call_args})")
        var[wire.name] = f"v{i}"
    result = ", ".join(var[name] for name in wiring.output)
    lines.append(f"    return ({result},)" if wiring.returns_tuple else f"    return {result}")
    return "\n".join(lines) + "\n", env


# The sources compiled last, with their code objects and linecache entries: at most this many, and
# this many characters of source in all (the newest is kept whatever its size). A process that
# builds graph after graph (a sweep, a fuzzer, a server) holds these, not every source it ever made.
_SOURCES_KEPT = 1024
_SOURCE_CHARS_KEPT = 4 * 1024 * 1024
_code: dict[str, tuple[types.CodeType, str, tuple]] = {}  # source -> (code, filename, linecache entry), oldest first
_code_lock = threading.Lock()


def _compiled(source: str) -> types.CodeType:
    """The code object of ``forward`` for this source, compiled once however many graphs share it
    (a 12-block transformer compiles its block's forward once), and registered in ``linecache``
    while it is kept here, so a traceback through a recent graph shows its generated lines."""
    with _code_lock:
        kept = _code.pop(source, None)
        if kept is None:
            filename = f"<composer.Graph.forward {hashlib.sha1(source.encode()).hexdigest()[:12]}>"
            module_code = compile(source, filename, "exec")
            code = next(c for c in module_code.co_consts if isinstance(c, types.CodeType))
            kept = (code, filename, (len(source), None, source.splitlines(True), filename))
        _code[source] = kept  # the newest last
        linecache.cache[kept[1]] = kept[2]  # again if linecache.clearcache() dropped it
        total = sum(map(len, _code))
        while len(_code) > 1 and (len(_code) > _SOURCES_KEPT or total > _SOURCE_CHARS_KEPT):
            oldest = next(iter(_code))
            total -= len(oldest)
            linecache.cache.pop(_code.pop(oldest)[1], None)
        return kept[0]


# --- the module ----------------------------------------------------------------------------------


class Graph(nn.Module):
    """A module whose children are wired by name; built from a ``GraphSpec``.

    Args:
        spec: the entries, inputs, params and output.
        key_path: the recipe path of the graph node, for errors (``model``, ``blocks.basic.body``).

    Raises:
        ConfigError: every problem ``graph_problems`` finds, at once.
    """

    def __init__(self, spec: GraphSpec, key_path: str = "") -> None:
        super().__init__()
        problems = graph_problems(spec, key_path)
        for entry in spec.entries:
            if isinstance(entry, ModuleEntry) and entry.module is None:
                problems.append((_entry_path(key_path, entry.name), "a module entry needs its module to build a Graph"))
        if problems:
            raise ConfigError(problems)
        for name, tensor in spec.params.items():
            self.register_parameter(name, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor))
        self._buffer_fills = {}
        for name, buffer in spec.buffers.items():
            self.register_buffer(name, buffer.tensor, persistent=buffer.persistent)
            if buffer.fill is not None:
                self._buffer_fills[name] = buffer.fill
        wires = []
        for entry, names in zip(spec.entries, _resolved_inputs(spec), strict=True):
            keywords = tuple(_keywords(entry).items())
            if isinstance(entry, ModuleEntry):
                self.add_module(entry.name, entry.module)
                names, keywords = _by_position(entry.module, names, keywords)
                wires.append(_Wire("module", entry.name, names, kwargs=dict(entry.forward), keywords=keywords))
            elif isinstance(entry, OpEntry):
                label = entry.label or getattr(entry.fn, "__name__", type(entry.fn).__name__)
                kwargs = dict(entry.kwargs)
                wires.append(_Wire("op", entry.name, names, entry.fn, kwargs, label, keywords=keywords))
            else:
                names, keywords = _by_position(self._modules[entry.target], names, keywords)
                kwargs = dict(entry.forward)
                wires.append(_Wire("call", entry.name, names, None, kwargs, target=entry.target, keywords=keywords))
        self._wiring = _Wiring(
            inputs=tuple(spec.inputs),
            params=tuple(spec.params),
            buffers=tuple(spec.buffers),
            wires=tuple(wires),
            output=tuple(_output_names(spec) or ()),
            returns_tuple=not (spec.output is None or isinstance(spec.output, str)),
        )
        self._install_forward()

    def _install_forward(self) -> None:
        source, env = _source(self._wiring)
        function = types.FunctionType(_compiled(source), env, "forward")
        function.__qualname__ = "Graph.forward"
        self.__dict__["forward"] = types.MethodType(function, self)

    @property
    def code(self) -> str:
        """The generated source of ``forward``."""
        return _source(self._wiring)[0]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The forward's arguments, in order."""
        return self._wiring.inputs

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("forward", None)  # a bound method of a generated function: written again on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._install_forward()

    def reset_parameters(self) -> None:
        """A graph parameter's default: zeros (a spec's ``init`` or a rule sets it otherwise); a
        buffer's: its fill (a computed one computed again, on its device), else zeros."""
        for param in self._parameters.values():
            nn.init.zeros_(param)
        with torch.no_grad():
            for name, fill in self.buffer_fills.items():
                tensor = self._buffers[name]
                if tensor is not None and not tensor.is_meta:
                    fill(tensor, None)

    @property
    def buffer_fills(self) -> dict[str, Callable[[torch.Tensor, torch.Generator | None], None]]:
        """Each buffer's fill (zeros for those without one): its default, as initialization reads it."""
        fills = getattr(self, "_buffer_fills", {})
        return {name: fills.get(name, _zeros) for name in self._buffers}

    def extra_repr(self) -> str:
        """The wiring, one chain of entries per line: ``x -> conv1 -> bn1``,
        ``(bn2, downsample) -> sum=add -> out=call:relu``."""
        w = self._wiring
        lines: list[str] = []
        if w.params:
            shapes = ", ".join(f"{n}{tuple(self._parameters[n].shape)}" for n in w.params if n in self._parameters)
            lines.append(f"params: {shapes}")
        if w.buffers:
            held = [(n, self._buffers[n]) for n in w.buffers if self._buffers.get(n) is not None]
            lines.append(f"buffers: {', '.join(f'{n}{tuple(b.shape)}' for n, b in held)}")
        previous: str | None = None
        for wire in w.wires:
            if wire.kind == "op":
                kwargs = ", ".join(f"{k}={v!r}" for k, v in wire.kwargs.items())
                token = f"{wire.name}={wire.label}" + (f"({kwargs})" if kwargs else "")
            elif wire.kind == "call":
                token = f"{wire.name}=call:{wire.target}"
            else:
                token = wire.name
            sources = [*wire.inputs, *(f"{k}={n}" for k, n in wire.keywords)]
            if previous is not None and sources == [previous] and lines:
                lines[-1] += f" -> {token}"
            else:
                source = sources[0] if len(sources) == 1 else f"({', '.join(sources)})"
                lines.append(f"{source} -> {token}")
            previous = wire.name
        if w.returns_tuple or (w.wires and w.output != (w.wires[-1].name,)):
            lines.append(f"output: {'(' + ', '.join(w.output) + ')' if w.returns_tuple else w.output[0]}")
        return "\n".join(lines)


def _zeros(tensor: torch.Tensor, _generator: torch.Generator | None) -> None:
    tensor.zero_()


def _by_position(
    module: nn.Module | None, names: tuple[str, ...], keywords: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A Graph's forward takes its inputs by position (its arguments are generated names): inputs
    given by name go in the order of its input names."""
    if not isinstance(module, Graph) or not keywords:
        return names, keywords
    given = dict(keywords)
    return (*names, *(given[n] for n in module.input_names[len(names) :] if n in given)), ()


# Names a graph's inputs, params and entries may not take: every attribute of nn.Module and of
# Graph (methods, properties) and what their constructors set on an instance.
RESERVED_NAMES: frozenset[str] = (
    frozenset(dir(Graph))
    | frozenset(vars(nn.Module()))
    | {
        "forward",
        "_wiring",
        "_buffer_fills",
    }
)


# --- Repeat's copies, in a chain with side inputs or in parallel -----------------------------------


class RepeatChain(nn.Sequential):
    """A Repeat's copies over several inputs: the first runs through the copies in turn, the others
    go unchanged to every copy (RoPE tables, an encoder's memory, a mask), and so do the entry's
    ``forward:`` constants (``tgt_is_causal: true``). Children and ``state_dict`` keys are a
    Sequential's (``0.weight``, ``1.weight``, ...)."""

    def forward(self, input: Any, *rest: Any, **constants: Any) -> Any:  # noqa: A002  (nn.Sequential's name)
        for module in self:
            input = module(input, *rest, **constants)
        return input


class RepeatParallel(nn.Sequential):
    """A Repeat's copies side by side: every copy takes the same inputs; the outputs are a tuple,
    or stacked along ``stack`` (a mixture of experts' experts, a multi-branch block)."""

    def __init__(self, copies: OrderedDict[str, nn.Module], stack: int | None = None) -> None:
        super().__init__(copies)
        self.stack = stack

    def forward(self, *inputs: Any) -> Any:
        outputs = tuple([module(*inputs) for module in self])
        return outputs if self.stack is None else torch.stack(outputs, self.stack)

    def extra_repr(self) -> str:
        return "" if self.stack is None else f"stack={self.stack}"
