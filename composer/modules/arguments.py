"""What a registered class or function takes, read from its signature once.

The exporter reads a module's arguments back by these names, the schema types them and the
listing shows them, so all three must agree on one reading: annotations resolved to real types
(``from __future__ import annotations`` leaves strings), classes that only inherit
``nn.Module.__init__`` taking nothing, and the recurrent layers, whose constructors take
``*args, **kwargs``, read as the arguments they document.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

EMPTY = inspect.Parameter.empty
_P = inspect.Parameter


@dataclass(frozen=True)
class Argument:
    """One named argument: ``default`` is ``EMPTY`` where it is required, ``annotation`` where unknown."""

    name: str
    default: Any = EMPTY
    annotation: Any = EMPTY
    keyword_only: bool = False

    @property
    def required(self) -> bool:
        return self.default is EMPTY


@dataclass(frozen=True)
class Arguments:
    """The named arguments in signature order, and whether any other keyword is accepted."""

    named: tuple[Argument, ...]
    var_keyword: bool = False
    var_positional: bool = False

    def get(self, name: str) -> Argument | None:
        return next((a for a in self.named if a.name == name), None)

    @property
    def positional(self) -> tuple[str, ...]:
        """Names that ``_args_`` fills, in order."""
        return tuple(a.name for a in self.named if not a.keyword_only)


def entries(registry: Any) -> dict[str, Any]:
    """Name -> object of a registry (``Registry`` or a plain mapping), in registration order."""
    if isinstance(registry, Mapping):
        return dict(registry)
    return {name: lookup(registry, name) for name in registry}


def lookup(registry: Any, name: str) -> Any:
    """The one place that calls a registry's lookup method."""
    if isinstance(registry, Mapping):
        return registry[name]
    # TODO(integration): Registry.get(name, path) is being renamed Registry.lookup(name, key_path).
    find = getattr(registry, "lookup", None) or registry.get
    return find(name, name)


def _rnn_arguments(extra: tuple[Argument, ...] = (), proj_size: bool = False) -> Arguments:
    base = [a for a in arguments(nn.RNNBase).named if a.name != "mode" and (proj_size or a.name != "proj_size")]
    at = [a.name for a in base].index("bias")
    return Arguments((*base[:at], *extra, *base[at:]))


# Constructors that take ``*args, **kwargs`` and parse them by hand: the arguments they document.
_DOCUMENTED: dict[type, Any] = {
    nn.LSTM: lambda: _rnn_arguments(proj_size=True),
    nn.GRU: lambda: _rnn_arguments(),
    nn.RNN: lambda: _rnn_arguments((Argument("nonlinearity", "tanh", str),)),
}
# Names that annotations of library code use without importing them at run time.
_NAMESPACE = {
    **{k: v for k, v in vars(typing).items() if not k.startswith("_")},
    **{k: v for k, v in vars(collections.abc).items() if not k.startswith("_")},
    "torch": torch, "nn": nn, "Tensor": torch.Tensor, "Module": nn.Module,
}  # fmt: skip


@functools.cache
def arguments(obj: Any) -> Arguments | None:
    """The named arguments of a class's constructor or of a function; None where unreadable.

    A class that only inherits ``nn.Module.__init__`` takes no argument (``Tanh``, ``CenteredLayer``):
    that ``*args, **kwargs`` exists to be forwarded, and rejects anything it is given.
    """
    if obj in _DOCUMENTED:
        return _DOCUMENTED[obj]()
    if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__init__ is nn.Module.__init__:
        return Arguments(())
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None
    hints = _type_hints(obj.__init__ if isinstance(obj, type) else obj)
    named = tuple(
        Argument(p.name, p.default, hints.get(p.name, p.annotation), p.kind is _P.KEYWORD_ONLY)
        for p in params
        if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
    )
    return Arguments(
        named,
        var_keyword=any(p.kind is _P.VAR_KEYWORD for p in params),
        var_positional=any(p.kind is _P.VAR_POSITIONAL for p in params),
    )


def _type_hints(fn: Any) -> dict[str, Any]:
    """Annotations as types; an annotation that names something unknown stays a string."""
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    try:
        return typing.get_type_hints(fn, globalns={**_NAMESPACE, **vars(module)} if module else _NAMESPACE)
    except Exception:  # noqa: BLE001  (one bad annotation: keep the raw ones)
        return {}


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
    return isinstance(annotation, type) and issubclass(annotation, nn.Module)
