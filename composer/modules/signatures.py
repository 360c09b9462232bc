"""What a callable accepts, read once per callable from its signature, and every view of that one
reading: the builder's check of a type's kwargs, an initializer's, an op's inputs and arguments,
a module's forward arity, and what the schema, ``list`` and ``to_recipe`` show and read back.

As Fiddle's ``signatures.py``: one cached reading (``arguments``), so the builder, the schema and
the listing cannot disagree about what a class, an op or an initializer takes. The reading resolves
annotations to real types (``from __future__ import annotations`` leaves strings), takes classes
that only inherit ``nn.Module.__init__`` as taking nothing, and reads the recurrent layers, whose
constructors take ``*args, **kwargs``, as the arguments they document.

Every problem comes back as ``(key path, message)`` so the caller reports them all at once. torch
is imported on first reading, not on import: ``recipe.read`` imports ``is_int`` from here, and the
command line reads recipes before it pays for torch.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from composer.errors import did_you_mean, listing, shown

EMPTY = inspect.Parameter.empty
_P = inspect.Parameter
_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}


def is_int(value: Any) -> bool:
    """An integer, but not a bool (YAML's ``true`` is a Python int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_a(value: Any, expected: type) -> bool:
    """``isinstance`` as a recipe means it: bools are not numbers, ints are floats."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return is_int(value)
    return isinstance(value, expected)


def describe(value: Any) -> str:
    """``type repr`` of a value, the repr cut at 40 characters, for messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# --- the one reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Argument:
    """One named argument: ``default`` is ``EMPTY`` where it is required, ``annotation`` where unknown."""

    name: str
    default: Any = EMPTY
    annotation: Any = EMPTY
    keyword_only: bool = False
    positional_only: bool = False

    @property
    def required(self) -> bool:
        return self.default is EMPTY


@dataclass(frozen=True)
class Arguments:
    """The named arguments in signature order, and whether other positional or keyword
    arguments are accepted (``rest``: the name of ``*args``, if any)."""

    named: tuple[Argument, ...]
    var_keyword: bool = False
    var_positional: bool = False
    rest: str = ""

    def get(self, name: str) -> Argument | None:
        return next((a for a in self.named if a.name == name), None)

    @property
    def positional(self) -> tuple[str, ...]:
        """Names that ``_args_`` fills, in order."""
        return tuple(a.name for a in self.named if not a.keyword_only)


@functools.cache
def arguments(obj: Any) -> Arguments | None:
    """The named arguments of a class's constructor or of a function, read once; None where
    unreadable (some builtins).

    A class that only inherits ``nn.Module.__init__`` takes no argument (``Tanh``, ``CenteredLayer``):
    that ``*args, **kwargs`` exists to be forwarded, and rejects anything it is given.
    """
    documented, namespace, module_class = _torch_tables()
    if obj in documented:
        return documented[obj]()
    if isinstance(obj, type) and issubclass(obj, module_class) and obj.__init__ is module_class.__init__:
        return Arguments(())
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None
    hints = _type_hints(obj.__init__ if isinstance(obj, type) else obj, namespace)
    named = tuple(
        Argument(
            p.name,
            p.default,
            hints.get(p.name, p.annotation),
            keyword_only=p.kind is _P.KEYWORD_ONLY,
            positional_only=p.kind is _P.POSITIONAL_ONLY,
        )
        for p in params
        if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
    )
    rest = next((p.name for p in params if p.kind is _P.VAR_POSITIONAL), "")
    return Arguments(
        named,
        var_keyword=any(p.kind is _P.VAR_KEYWORD for p in params),
        var_positional=bool(rest),
        rest=rest,
    )


@functools.cache
def _torch_tables() -> tuple[dict[Any, Callable[[], Arguments]], dict[str, Any], type]:
    """The constructors read as they document, the names annotations use, and ``nn.Module``."""
    import torch  # noqa: PLC0415  (on first reading: the command line reads recipes without torch)
    from torch import nn  # noqa: PLC0415

    def rnn(extra: tuple[Argument, ...] = (), proj_size: bool = False) -> Arguments:
        base = [a for a in arguments(nn.RNNBase).named if a.name != "mode" and (proj_size or a.name != "proj_size")]
        at = [a.name for a in base].index("bias")
        return Arguments((*base[:at], *extra, *base[at:]))

    # Constructors that take ``*args, **kwargs`` and parse them by hand: the arguments they document.
    documented: dict[Any, Callable[[], Arguments]] = {
        nn.LSTM: lambda: rnn(proj_size=True),
        nn.GRU: lambda: rnn(),
        nn.RNN: lambda: rnn((Argument("nonlinearity", "tanh", str),)),
    }
    # Names that annotations of library code use without importing them at run time.
    namespace = {
        **{k: v for k, v in vars(typing).items() if not k.startswith("_")},
        **{k: v for k, v in vars(collections.abc).items() if not k.startswith("_")},
        "torch": torch, "nn": nn, "Tensor": torch.Tensor, "Module": nn.Module,
    }  # fmt: skip
    return documented, namespace, nn.Module


def _type_hints(fn: Any, namespace: dict[str, Any]) -> dict[str, Any]:
    """Annotations as types; an annotation that names something unknown stays a string."""
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    try:
        return typing.get_type_hints(fn, globalns={**namespace, **vars(module)} if module else namespace)
    except Exception:  # noqa: BLE001  (one bad annotation: keep the raw ones)
        return {}


# --- the builder's and the initializers' check ----------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """The arguments a callable takes, as sets a check can test in O(1)."""

    keywords: tuple[str, ...]  # in signature order
    positional: tuple[str, ...]
    required: frozenset[str]
    var_positional: bool
    var_keyword: bool
    simple_types: Mapping[str, type]  # annotated int/float/bool/str arguments

    def problems(
        self,
        label: str,
        args: Sequence,
        kwargs: Mapping[str, Any],
        path: str,
        optional: Sequence[str] = (),
        hint: bool = True,
    ) -> list[tuple[str, str]]:
        """Unknown, missing and mistyped arguments of ``label(*args, **kwargs)`` at key ``path``;
        ``optional`` names required arguments the caller supplies itself (a lazy layer's size);
        ``hint`` False (problems past those a message shows): no closest names computed."""
        problems: list[tuple[str, str]] = []
        if not self.var_keyword:
            for key in kwargs:
                if key in self.keywords:
                    continue
                if not (hint and shown(problems)):
                    problems.append((f"{path}.{key}", f"{label} takes no argument {key!r}"))
                else:
                    close = did_you_mean(str(key), self.keywords)
                    valid = listing(sorted(self.keywords), most=len(self.keywords))  # a signature: all of it
                    problems.append((f"{path}.{key}", f"{label} takes no argument {key!r}{close}; valid: {valid}"))
        if len(args) > len(self.positional) and not self.var_positional:
            problems.append(
                (
                    f"{path}._args_",
                    f"{label} takes at most {len(self.positional)} positional arguments, got {len(args)}",
                )
            )
        missing = self.required - kwargs.keys() - set(self.positional[: len(args)]) - set(optional)
        if missing:
            names = ", ".join(repr(n) for n in dict.fromkeys(self.positional + self.keywords) if n in missing)
            problems.append((path, f"{label} is missing required argument{'s' if len(missing) > 1 else ''} {names}"))
        for key, expected in self.simple_types.items():
            value = kwargs.get(key)
            if value is not None and not is_a(value, expected):
                problems.append((f"{path}.{key}", f"expected {expected.__name__}, got {describe(value)}"))
        return problems


@functools.cache
def signature_of(fn: Callable, skip: int = 0, hidden: frozenset[str] = frozenset()) -> Signature | None:
    """The check of what ``fn`` accepts, from its one reading; ``skip`` leading parameters (an
    initializer's tensor) and ``hidden`` names (its ``generator``) are the caller's own. None
    where the signature cannot be read."""
    read = arguments(fn)
    if read is None:
        return None
    params = [a for a in read.named[skip:] if a.name not in hidden]
    named = [a for a in params if not a.positional_only]
    return Signature(
        keywords=tuple(a.name for a in named),
        positional=tuple(a.name for a in params if not a.keyword_only),
        required=frozenset(a.name for a in named if a.required),
        var_positional=read.var_positional,
        var_keyword=read.var_keyword,
        simple_types={a.name: t for a in named if (t := _simple_type(a.annotation)) is not None},
    )


def _simple_type(annotation: Any) -> type | None:
    if isinstance(annotation, str):
        return _SIMPLE.get(annotation)
    return annotation if annotation in (int, float, bool, str) else None


# --- ops and forwards ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpArguments:
    """An op's signature as a recipe sees it: ``in:`` fills ``slots`` in order (then ``rest``, its
    ``*args``), every other argument is a key. An argument in both (``add``'s ``other``) may come
    either way."""

    slots: tuple[Argument, ...]
    keywords: tuple[Argument, ...]
    rest: str = ""
    any_keyword: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors it takes: the slots it needs, and ``*rest``."""
        needed = tuple(a.name for a in self.slots if a.required)
        return (*needed, f"*{self.rest}") if self.rest else needed

    @property
    def required_keywords(self) -> tuple[str, ...]:
        """Arguments that must be keys (keyword-only, no default)."""
        return tuple(a.name for a in self.keywords if a.required and a.keyword_only)


@functools.cache
def op_arguments(fn: Callable[..., Any]) -> OpArguments | None:
    """An op's inputs and arguments, from its one reading; an op that reads ``training`` itself
    (``fn.takes_training``) does not take it from a recipe. None where unreadable."""
    read = arguments(fn)
    if read is None:
        return None
    named = [a for a in read.named if not (a.name == "training" and getattr(fn, "takes_training", False))]
    return OpArguments(
        slots=tuple(a for a in named if not a.keyword_only),
        keywords=tuple(a for a in named if not a.positional_only),
        rest=read.rest,
        any_keyword=read.var_keyword,
    )


@functools.cache
def arity(forward: Callable[..., Any], skip: int) -> tuple[int, int | None] | None:
    """How many positional inputs ``forward`` takes (min, max or None) past its first ``skip``
    parameters (``self``); None where unreadable."""
    read = arguments(forward)
    if read is None:
        return None
    positional = [a for a in read.named[skip:] if not a.keyword_only]
    low = sum(a.required for a in positional)
    return low, None if read.var_positional else len(positional)


# --- what the schema, list and to_recipe show ----------------------------------------------------


def entries(registry: Any) -> dict[str, Any]:
    """Name -> object of a registry (``Registry`` or a plain mapping), in registration order."""
    return dict(registry.items())


def summary_line(obj: Any) -> str:
    """The first sentence of an object's own docstring, on one line (a class does not inherit
    one; torch's ``__init__(...)`` signature lines are skipped)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    paragraph: list[str] = []
    for line in doc.splitlines():
        text = line.strip()
        if text.startswith("__init__("):
            continue
        if not text and paragraph:
            break
        if text:
            paragraph.append(text)
    text = " ".join(paragraph)
    end = re.search(r"[.:](\s|$)", text)
    return text[: end.start()] + "." if end else text


def format_annotation(annotation: Any) -> str:
    """``int``, ``int | tuple[int, int]``, ``Module | None``: short, as a user reads a signature."""
    if annotation is EMPTY:
        return ""
    if isinstance(annotation, str):
        return annotation
    if annotation is type(None):
        return "None"
    if is_union(annotation):
        return " | ".join(format_annotation(a) for a in typing.get_args(annotation))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else format_annotation(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def is_union(annotation: Any) -> bool:
    """``Union[X, Y]``, ``Optional[X]`` or ``X | Y``."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def is_module_type(annotation: Any) -> bool:
    """An annotation naming a module class: the argument is a node."""
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "Module"
    return isinstance(annotation, type) and issubclass(annotation, _torch_tables()[2])
