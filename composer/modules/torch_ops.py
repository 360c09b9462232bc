"""The open op set: every public function of ``torch`` and ``torch.nn.functional`` and every
``Tensor`` method that computes a result from tensors is an op under its torch name, with torch's
own argument names.

Where the arguments come from: torch's builtins (``torch.cos``, ``Tensor.transpose``, ``F.pad``)
have no ``inspect.signature``; torch ships their Python signatures, overloads included, as the
type stubs its code generator writes from ``native_functions.yaml`` (``torch/_C/_VariableFunctions.pyi``
for ``torch.*``, ``torch/_C/__init__.pyi``'s ``TensorBase`` for methods, ``torch/_C/_nn.pyi`` and
``torch/nn/functional.pyi`` for ``F``). They are read here with ``ast`` (no code of theirs runs):
the same names, defaults and keyword-only marks torch's argument parser accepts, where
``torch.overrides.get_testing_overrides()`` drops arguments (``sum`` without ``keepdim``) and the
JIT schemas use ATen's names (``self`` where Python says ``input``). Python functions (most of
``F``, ``torch.functional``) are read with ``inspect.signature``. A name in several namespaces is
taken from ``F`` first (``layer_norm``, ``dropout``: the documented API), then ``torch``, then
``Tensor`` (``expand``, ``view``, ``to``, ``contiguous``).

Everything is read on lookup of a name, never on import: the first lookup parses one or two stub
files (about 0.1 s), later ones are a dict hit.

``in:`` fills the tensor-typed parameters that no key gives, in order (a list-typed one, ``cat``'s
``tensors``, takes all remaining inputs); every other argument is a key. An op with overloads
(``pow(input, exponent)`` and ``pow(self: Number, exponent)``) takes the first overload its keys
and inputs fit. The callable a node runs is the torch function itself when its inputs are its
leading arguments (``fn(*inputs, **keys)``), else a closure that only places them.

Never ops (``excluded`` says why): file I/O, global state, randomness outside dropout, in-place
variants (a trailing ``_``), ``out=``, uninitialized memory (``empty``: its values would be
whatever memory held); private names are not ops. ``device`` is not an argument:
an op runs on its inputs' device, and an op without tensor inputs (``arange``) on torch's current
default device, which is the build's device when a buffer is computed at build.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer import limits as budget
from composer.errors import did_you_mean
from composer.modules.signatures import EMPTY, format_annotation

# --- what is not an op, and why ------------------------------------------------------------------

_FILES = frozenset({"save", "load", "from_file", "from_numpy", "frombuffer", "from_dlpack", "to_dlpack", "asarray"})
_GLOBAL = frozenset({
    "manual_seed", "seed", "initial_seed", "get_rng_state", "set_rng_state", "use_deterministic_algorithms",
    "are_deterministic_algorithms_enabled", "compile", "vmap", "cond", "export", "fork", "wait", "set_grad_enabled",
    "enable_grad", "no_grad", "inference_mode", "autocast", "get_default_dtype", "get_default_device",
    "get_num_threads", "get_num_interop_threads", "is_grad_enabled", "is_inference_mode_enabled", "typename",
    "register_hook", "backward", "record_stream", "share_memory_", "pin_memory", "set_", "storage",
    "untyped_storage", "data_ptr", "cuda", "cpu", "tolist", "item", "numpy", "requires_grad_", "retain_grad",
})  # fmt: skip
_UNINITIALIZED = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
_RANDOM = frozenset({
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "multinomial",
    "normal", "poisson", "binomial", "rrelu", "rrelu_with_noise", "gumbel_softmax", "fractional_max_pool2d",
    "fractional_max_pool3d", "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices",
    "random_", "uniform_", "normal_", "cauchy_", "exponential_", "geometric_", "log_normal_", "bernoulli_",
    "native_dropout", "dropout_", "feature_dropout", "alpha_dropout_", "feature_alpha_dropout_",
})  # fmt: skip
# Arguments that are never keys: the op returns its result, runs where its inputs are, never in place.
REFUSED_KEYS = {
    "out": "an op returns its result: out= is not an argument",
    "device": "an op runs on its inputs' device (one without tensor inputs: the build's device)",
    "inplace": "ops never work in place",
    "pin_memory": "an op runs on its inputs' device (one without tensor inputs: the build's device)",
}
# Ops that make a tensor of a size their keys give: bounded by the ``tensor_elements`` budget.
CREATION = frozenset({
    "arange", "range", "linspace", "logspace", "zeros", "ones", "full", "eye", "tril_indices", "triu_indices",
    "new_zeros", "new_ones", "new_full",
    "hann_window", "hamming_window", "bartlett_window", "blackman_window", "kaiser_window",
})  # fmt: skip


def excluded(name: str) -> str | None:
    """Why ``name`` is not an op, or None."""
    if name.startswith("set_") or name in _GLOBAL:
        return "global state (seeds, defaults, threads, autograd and device state) is not a tensor function"
    if name in _FILES:
        return "ops do not read or write files or foreign memory"
    if name in _UNINITIALIZED:
        return "uninitialized memory: its values are whatever memory held (use zeros, zeros_like or new_zeros)"
    if name in _RANDOM:
        return "randomness outside dropout: only dropout draws random numbers in a model's forward"
    if name.endswith("_") and not name.startswith("_"):
        return f"in-place variants change their input; use {name.rstrip('_')!r}"
    return None


# --- one reading of an op ------------------------------------------------------------------------


class Shown:
    """A default that is not a YAML value (``torch.strided``): shown as torch writes it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Param:
    """One argument: ``tensor`` where ``in:`` may fill it, ``many`` where it takes a list of tensors."""

    name: str
    default: Any = EMPTY
    annotation: str = ""
    keyword_only: bool = False
    tensor: bool = False
    many: bool = False

    @property
    def required(self) -> bool:
        return self.default is EMPTY


@dataclass(frozen=True)
class Overload:
    """One signature: its arguments in order; ``rest`` is ``*args`` of tensors (``block_diag``)."""

    params: tuple[Param, ...]
    rest: str = ""

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def text(self) -> str:
        parts = [p.name if p.required else f"{p.name}={p.default!r}" for p in self.params if not p.keyword_only]
        if self.rest:
            parts.append(f"*{self.rest}")
        keyword = [p.name if p.required else f"{p.name}={p.default!r}" for p in self.params if p.keyword_only]
        if keyword:
            parts += [*([] if self.rest else ["*"]), *keyword]
        return f"({', '.join(parts)})"


@dataclass(frozen=True)
class TorchOp:
    """An op derived from torch: ``fn`` (the torch function itself), where it comes from
    (``torch``, ``torch.nn.functional``, ``Tensor``) and its overloads."""

    name: str
    fn: Callable[..., Any]
    where: str
    overloads: tuple[Overload, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """Every argument name of any overload, in order."""
        return tuple(dict.fromkeys(p.name for o in self.overloads for p in o.params))

    @property
    def creation(self) -> bool:
        return self.name in CREATION

    @property
    def follows_training(self) -> bool:
        """Dropout's ``training`` is the module's: ``training=self.training``, never a key. (Other
        ``training`` arguments, batch_norm's, stay keys with torch's default.)"""
        return "dropout" in self.name and any(o.get("training") for o in self.overloads)


def _torch_dir() -> Path:
    import torch  # noqa: PLC0415  (on lookup, not import)

    return Path(torch.__file__).parent


@functools.cache
def _stub_index(relative: str, cls: str = "") -> tuple[list[str], dict[str, list[tuple[int, int]]]]:
    """One of torch's stub files as lines, and where each ``def`` of it (or of one class in it)
    starts and ends, by name: found by indentation, so a lookup parses a few lines, not the file
    (``ast.parse`` of ``_VariableFunctions.pyi``'s 1.1 MB takes 0.5 s)."""
    path = _torch_dir() / relative
    if not path.is_file():
        return [], {}
    lines = path.read_text().splitlines()
    indent = "    " if cls else ""
    start, end = 0, len(lines)
    if cls:
        start = next((i for i, line in enumerate(lines) if line.startswith(f"class {cls}(")), end)
        end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), end)
    found: dict[str, list[tuple[int, int]]] = {}
    head = re.compile(rf"^{indent}def (\w+)\(")
    i = start
    while i < end:
        match = head.match(lines[i])
        i += 1
        if match is None:
            continue
        first = i - 1
        while i < end and (not lines[i].strip() or lines[i].startswith((indent + " ", indent + ")"))):
            i += 1
        found.setdefault(match.group(1), []).append((first, i))
    return lines, found


def _stubs(relative: str, cls: str, name: str) -> list[ast.FunctionDef]:
    """The ``def``s of ``name`` in one of torch's stub files, parsed."""
    lines, index = _stub_index(relative, cls)
    defs = []
    for first, last in index.get(name, ()):
        try:
            tree = ast.parse(textwrap.dedent("\n".join(lines[first:last])))
        except SyntaxError:
            continue
        defs += [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    return defs


_TENSOR = re.compile(r"\bTensor\b")
_MANY = re.compile(r"(Sequence|tuple|list|Iterable)\[(Tensor|torch\.Tensor)\b")


_PRIVATE_ALIAS = re.compile(r"(?<![\w.])_(?=[a-z])|\btorch\.(?=Tensor\b)|\btyping\.")


def _param(name: str, default: Any, annotation: str, keyword_only: bool) -> Param:
    many = bool(_MANY.search(annotation))
    tensor = bool(_TENSOR.search(annotation)) or many
    shown = _PRIVATE_ALIAS.sub("", annotation)  # the stubs' _int, _bool, _dtype: int, bool, dtype
    return Param(name, default, shown, keyword_only, tensor=tensor, many=many)


def _merged(overloads: list[Overload]) -> tuple[Overload, ...]:
    """Overloads that differ in types only, once: an argument typed as each of them says
    (``pow(input, exponent: Tensor)`` and ``pow(input, exponent: Number)``)."""
    by_text: dict[str, Overload] = {}
    for o in overloads:
        seen = by_text.get(o.text())
        if seen is None:
            by_text[o.text()] = o
            continue
        params = []
        for a, b in zip(seen.params, o.params, strict=True):
            types = " | ".join(dict.fromkeys([*a.annotation.split(" | "), *b.annotation.split(" | ")]))
            params.append(Param(a.name, a.default, types, a.keyword_only, a.tensor or b.tensor, a.many or b.many))
        by_text[o.text()] = Overload(tuple(params), seen.rest)
    return tuple(by_text.values())


def _stub_default(node: ast.expr | None) -> Any:
    if node is None:
        return EMPTY
    try:
        return ast.literal_eval(node)
    except ValueError:
        return Shown(ast.unparse(node))


def _from_stub(node: ast.FunctionDef, method: bool) -> Overload | None:
    """An overload read from a stub ``def``; None where it takes ``*args`` that are not tensors
    (``permute(self, *dims)``: a recipe gives ``dims: [...]`` to its list overload)."""
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params: list[Param] = []
    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        if method and i == 0:
            params.append(Param(arg.arg, EMPTY, "Tensor", tensor=True))
            continue
        params.append(_param(arg.arg, _stub_default(default), text, False))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        params.append(_param(arg.arg, _stub_default(default), text, True))
    rest = ""
    if a.vararg is not None:
        text = ast.unparse(a.vararg.annotation) if a.vararg.annotation is not None else ""
        if not _TENSOR.search(text):
            return None
        rest = a.vararg.arg
    return _overload(params, rest)


def _overload(params: list[Param], rest: str) -> Overload:
    kept = tuple(p for p in params if p.name not in REFUSED_KEYS and not p.name.startswith("_"))
    return Overload(kept, rest)


def _from_signature(fn: Callable[..., Any]) -> Overload | None:
    """A Python function's one overload, from its real signature."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params, rest = [], ""
    for p in signature.parameters.values():
        text = inspect.formatannotation(p.annotation) if p.annotation is not p.empty else ""
        if p.kind is p.VAR_POSITIONAL:
            if text and not _TENSOR.search(text):
                return None
            rest = p.name
        elif p.kind is not p.VAR_KEYWORD:
            params.append(_param(p.name, p.default, text, p.kind is p.KEYWORD_ONLY))
    return _overload(params, rest)


# Python functions that take ``*args`` and parse them by hand: the signature they document.
DOCUMENTED = {"einsum": Overload((Param("equation", annotation="str"),), rest="operands")}


# Where each namespace's builtins are written down: stub file, and the class in it for methods.
_STUB_FILES = {
    "Tensor": [("_C/__init__.pyi", "TensorBase")],
    "torch.nn.functional": [("_C/_nn.pyi", ""), ("_C/_VariableFunctions.pyi", ""), ("nn/functional.pyi", "")],
    "torch": [("_C/_VariableFunctions.pyi", "")],
}


def _readable(fn: Callable[..., Any], name: str, where: str) -> bool:
    """Whether ``_read`` finds a signature (without parsing one)."""
    if name in DOCUMENTED:
        return True
    if inspect.isfunction(fn):
        return _from_signature(fn) is not None
    return any(name in _stub_index(relative, cls)[1] for relative, cls in _STUB_FILES[where])


def _read(fn: Callable[..., Any], name: str, where: str) -> tuple[Overload, ...]:
    stubs = _STUB_FILES[where]
    if name in DOCUMENTED:
        return (DOCUMENTED[name],)
    if inspect.isfunction(fn):
        own = _from_signature(fn)
        return () if own is None else (own,)
    for relative, cls in stubs:
        defs = _stubs(relative, cls, name)
        if defs:
            return _merged([o for d in defs if (o := _from_stub(d, method=bool(cls))) is not None])
    return ()


def _namespaces() -> list[tuple[str, Any]]:
    import torch  # noqa: PLC0415
    from torch.nn import functional  # noqa: PLC0415

    return [("torch.nn.functional", functional), ("torch", torch), ("Tensor", torch.Tensor)]


def _candidate(name: str, where: str, space: Any) -> Callable[..., Any] | None:
    fn = getattr(space, name, None)
    if fn is None or isinstance(fn, type) or inspect.ismodule(fn) or not callable(fn):
        return None
    if where != "Tensor" and not (inspect.isbuiltin(fn) or (getattr(fn, "__module__", None) or "").startswith("torch")):
        return None  # a name torch imported from elsewhere (typing's, builtins')
    return fn


@functools.cache
def derived(name: str) -> TorchOp | None:
    """The op torch gives under ``name``; None where torch has none (or it is excluded)."""
    if not isinstance(name, str) or not name or name.startswith("_") or excluded(name):
        return None
    for where, space in _namespaces():
        fn = _candidate(name, where, space)
        if fn is None:
            continue
        overloads = _read(fn, name, where)
        if overloads:
            return TorchOp(name, fn, where, overloads)
    return None


@functools.cache
def derived_names() -> tuple[str, ...]:
    """Every name torch gives an op under (from ``dir`` and the stubs' index, no signature parsed),
    sorted: about 30 ms the first time."""
    names = set()
    for where, space in _namespaces():
        for n in dir(space):
            if not n.startswith("_") and not excluded(n) and (fn := _candidate(n, where, space)) is not None:
                if _readable(fn, n, where):
                    names.add(n)
    return tuple(sorted(names))


def all_derived() -> dict[str, TorchOp]:
    """Every derived op, read (the listing and the schema): about 0.3 s the first time."""
    return {name: op for name in derived_names() if (op := derived(name)) is not None}


# --- checking a node, and the call it makes ------------------------------------------------------


Inputs = int | Sequence[str] | None  # how many positional inputs, the names of keyword ones, or unknown


def _assign(overload: Overload, keys: Mapping[str, Any], inputs: Inputs) -> tuple[list[str], list[str]]:
    """Which parameter each input fills (by position: the tensor parameters no key gives), and
    what is wrong with this overload for these keys and inputs (messages without a path)."""
    names = {p.name for p in overload.params}
    why: list[str] = [f"no argument {k!r}" for k in keys if k not in names]
    if inputs is None:
        return [], why
    if not isinstance(inputs, int):
        why += [f"no argument {n!r}" for n in inputs if n not in names]
        why += [f"{n!r} both as an input and as an argument" for n in inputs if n in keys]
        filled = list(inputs)
    else:
        free = [p for p in overload.params if p.tensor and not p.keyword_only and p.name not in keys]
        filled = []
        for p in free:
            if len(filled) == inputs:
                break
            filled += [p.name] * (inputs - len(filled) if p.many else 1)
        if len(filled) < inputs:
            if overload.rest:
                filled += [f"*{overload.rest}"] * (inputs - len(filled))
            else:
                why.append(f"at most {len(free)} input{'s' if len(free) != 1 else ''} beside its keys, got {inputs}")
    given = set(filled) | set(keys)
    why += [f"missing {p.name!r}" for p in overload.params if p.required and p.name not in given]
    return filled, why


def _best(op: TorchOp, keys: Mapping[str, Any], inputs: Inputs) -> tuple[Overload, list[str], list[str]]:
    """The first overload that fits, else the one with the fewest problems."""
    tried = [(o, *_assign(o, keys, inputs)) for o in op.overloads]
    return min(tried, key=lambda t: len(t[2]))


def problems(op: TorchOp, label: str, keys: Mapping[str, Any], inputs: Inputs, key_path: str) -> list[tuple[str, str]]:
    """What is wrong with ``{op: label, in: inputs, **keys}``, as ``(key path, message)``."""
    found: list[tuple[str, str]] = []
    valid = op.keys
    for key in keys:
        if key in REFUSED_KEYS or (key == "training" and op.follows_training):
            why = REFUSED_KEYS.get(key, "dropout follows the module's train() and eval()")
            found.append((f"{key_path}.{key}", f"op {label!r} takes no {key!r}: {why}"))
        elif key not in valid:
            hint = did_you_mean(str(key), valid)
            found.append(
                (f"{key_path}.{key}", f"op {label!r} takes no argument {key!r}{hint}; valid: {', '.join(valid)}")
            )
    if found:
        return found
    _, _, why = _best(op, keys, inputs)
    if why:
        shown = " or ".join(f"{label}{o.text()}" for o in op.overloads[:4])
        where = f"{key_path}.in" if why[0].startswith("at most") else key_path  # too many inputs
        found.append((where, f"op {label!r}: {'; '.join(why)} (takes {shown})"))
    if op.creation and not found:
        found += _budget_problems(label, keys, key_path)
    return found


def _numbers(keys: Mapping[str, Any], *names: str) -> list[float] | None:
    values = [keys.get(n) for n in names]
    return values if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else None


def created_elements(name: str, keys: Mapping[str, Any]) -> int | None:
    """How many elements a creation op with these keys makes; None where its keys do not say."""
    size = keys.get("size")
    if size is not None:
        dims = [size] if isinstance(size, int) else size
        return math.prod(dims) if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims) else None
    if name in ("arange", "range") and (v := _numbers({"start": 0, "step": 1, **keys}, "start", "end", "step")):
        start, end, step = v
        return 0 if step == 0 else max(0, math.ceil((end - start) / step)) + (name == "range")
    if name in ("linspace", "logspace") and (v := _numbers(keys, "steps")):
        return int(v[0])
    if name == "eye" and (v := _numbers(keys, "n")):
        return int(v[0]) * int(keys.get("m", v[0]) or v[0])
    if name in ("tril_indices", "triu_indices") and (v := _numbers(keys, "row", "col")):
        return 2 * int(v[0]) * int(v[1])
    if name.endswith("_window") and (v := _numbers(keys, "window_length")):
        return int(v[0])
    return None


def _budget_problems(label: str, keys: Mapping[str, Any], key_path: str) -> list[tuple[str, str]]:
    count = created_elements(label, keys)
    limit = budget.current().tensor_elements
    if count is None or count <= limit:
        return []
    return [(key_path, budget.exceeded("tensor_elements", f"op {label!r}: a tensor of {count:,} elements"))]


def bind(op: TorchOp, keys: Mapping[str, Any], inputs: Inputs) -> Callable[..., Any]:
    """The callable a node runs as ``fn(*inputs, **keys)`` (or ``fn(**named_inputs, **keys)``).

    The torch function itself where the inputs are its leading arguments (``cos``, ``topk``,
    ``masked_fill``) or all go by name; else a closure that only places them: a key before them
    (``pow``'s ``self``), several inputs as one list argument, inputs after a gap by name, a
    method's ``self`` first. An op that takes ``training`` gets ``training=self.training`` from
    its module (dropout applies in training only)."""
    overload, filled, _ = _best(op, keys, inputs)
    fn = op.fn
    order = [p.name for p in overload.params]
    takes_training = op.follows_training
    if not isinstance(inputs, int):  # by name, or unknown
        if not takes_training and (inputs is None or "self" not in inputs):
            return fn
        plan: list[tuple[int, Any]] = [(2, "self")] if inputs is not None and "self" in inputs else []
        return _closure(op, plan, [], None, takes_training)
    slots = [n for n in filled if n in order]
    if slots == order[: len(slots)] and len(set(slots)) == len(slots) and not takes_training:
        if len(slots) == len(filled) or len(slots) == _n_positional(overload):
            return fn  # fn(*inputs, **keys): the inputs are the leading arguments (then *rest)
    plan, placed = [], set()
    for name in order[: _n_positional(overload)]:
        if name in filled:
            plan.append((1 if filled.count(name) > 1 else 0, filled.index(name)))
            placed.add(name)
        elif name in keys:
            plan.append((2, name))
        else:
            break  # a gap: later inputs go by name
    by_name = [(i, n) for i, n in enumerate(filled) if n in order and n not in placed]
    return _closure(op, plan, by_name, len(slots) if overload.rest else None, takes_training)


def _closure(
    op: TorchOp, plan: list[tuple[int, Any]], by_name: list[tuple[int, str]], rest: int | None, training: bool
) -> Callable[..., Any]:
    return Bound(op.name, tuple(plan), tuple(by_name), rest, training)


class Bound:
    """torch's function with its inputs placed: ``plan`` gives its leading arguments, each
    (0, input index), (1, first of the inputs that form a list) or (2, a key's name); ``by_name``
    the inputs passed by keyword; ``rest`` the first input of ``*args``. Pickled by op name."""

    __slots__ = ("by_name", "fn", "name", "plan", "rest", "takes_training")

    def __init__(
        self, name: str, plan: tuple[tuple[int, Any], ...], by_name: tuple[tuple[int, str], ...], rest: int | None,
        training: bool,
    ) -> None:  # fmt: skip
        op = derived(name)
        assert op is not None, name
        self.name, self.fn, self.plan, self.by_name, self.rest, self.takes_training = (
            name, op.fn, plan, by_name, rest, training,
        )  # fmt: skip

    @property
    def __name__(self) -> str:
        return self.name

    def __call__(self, /, *xs: Any, **kw: Any) -> Any:  # `self` may be a key (pow)
        args = [xs[v] if kind == 0 else list(xs[v:]) if kind == 1 else kw.pop(v) for kind, v in self.plan]
        for i, name in self.by_name:
            kw[name] = xs[i]
        return self.fn(*args, *xs[self.rest :], **kw) if self.rest is not None else self.fn(*args, **kw)

    def __reduce__(self) -> tuple[Any, ...]:
        return Bound, (self.name, self.plan, self.by_name, self.rest, self.takes_training)

    def __repr__(self) -> str:
        return f"<{self.name}, inputs placed>"


def _n_positional(overload: Overload) -> int:
    return sum(not p.keyword_only for p in overload.params)


def overload_rows(op: TorchOp) -> list[tuple[str, str, str, str]]:
    """Every argument of every overload, once, in order: (name, annotation, default, "in" where
    ``in:`` may fill it); an argument only some overloads take says so."""
    seen: dict[str, tuple[str, str, str, str]] = {}
    for o in op.overloads:
        for p in o.params:
            if p.name not in seen:
                default = "required" if p.required else repr(p.default)
                if any(other.get(p.name) is None for other in op.overloads):
                    default += " (some forms)"
                seen[p.name] = (p.name, p.annotation or format_annotation(EMPTY), default, "in" if p.tensor else "")
        if o.rest and f"*{o.rest}" not in seen:
            seen[f"*{o.rest}"] = (f"*{o.rest}", "Tensor", "", "in")
    return list(seen.values())


def required_keys(op: TorchOp) -> tuple[str, ...]:
    """Arguments every overload requires that ``in:`` cannot give: keys a node must have."""
    first = op.overloads[0].params
    return tuple(
        p.name
        for p in first
        if all((q := o.get(p.name)) is not None and q.required and not q.tensor for o in op.overloads)
    )
