"""What a callable accepts, read once from its signature, and the checks of given arguments
against it: the builder checks a type's kwargs with it, the initializers an initializer's.

Every problem comes back as ``(key path, message)`` so the caller reports them all at once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from composer.errors import did_you_mean

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
        self, label: str, args: Sequence, kwargs: Mapping[str, Any], path: str, optional: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        """Unknown, missing and mistyped arguments of ``label(*args, **kwargs)`` at key ``path``;
        ``optional`` names required arguments the caller supplies itself (a lazy layer's size)."""
        problems = []
        if not self.var_keyword:
            for key in kwargs:
                if key not in self.keywords:
                    valid = ", ".join(sorted(self.keywords)) or "none"
                    hint = did_you_mean(str(key), self.keywords)
                    problems.append((f"{path}.{key}", f"{label} takes no argument {key!r}{hint}; valid: {valid}"))
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
    """What ``fn`` accepts, computed once per callable; ``skip`` leading parameters (an
    initializer's tensor) and ``hidden`` names (its ``generator``) are the caller's own. None
    where the signature cannot be read (some builtins)."""
    try:
        params = [p for p in list(inspect.signature(fn).parameters.values())[skip:] if p.name not in hidden]
    except (TypeError, ValueError):
        return None
    kind = inspect.Parameter
    named = [p for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)]
    return Signature(
        keywords=tuple(p.name for p in named),
        positional=tuple(p.name for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)),
        required=frozenset(p.name for p in named if p.default is kind.empty),
        var_positional=any(p.kind is kind.VAR_POSITIONAL for p in params),
        var_keyword=any(p.kind is kind.VAR_KEYWORD for p in params),
        simple_types={
            p.name: _SIMPLE.get(p.annotation, p.annotation)
            for p in named
            if p.annotation in (int, float, bool, str) or p.annotation in _SIMPLE
        },
    )
