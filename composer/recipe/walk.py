"""What every walk over a recipe shares: key paths, memoization and cycle detection.

Four walks read a recipe tree: ``plain`` copies it within the read budgets, ``interpolation``
resolves ``${...}``, ``count`` counts the modules it asks for, and the builder builds it. As in
Fiddle's ``daglish``, the paths, the memo and the cycle check live here, once; each walk keeps its
own loop, because what a memo hit means differs (the plain walk counts a YAML alias's size again
and checks its depth; a resolved path is copied where it is pasted; the builder memoizes only
shared modules, since every other node must build a new module) and because the plain walk and
the builder run on every build, where a callback per container would cost the 1,000-block figure.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def child_path(parent: str, key: str | int) -> str:
    """The key path of ``parent``'s item ``key``: ``model.layers[3]``, ``model.init``, ``model``."""
    if type(key) is int:
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def key_path(path: tuple) -> str:
    """``model.layers[2].type`` for the path ``("model", "layers", 2, "type")``."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(recipe)"


class Visits(Generic[K, V]):
    """One walk's memo (``done``: key -> result) and the keys it is inside of, in order.

    ``enter(key)`` before walking below ``key``, ``leave(key)`` after; a key entered while it is
    open is a cycle, which ``cycle(key)`` words (``a -> b -> a``). Each walk decides what a hit and
    a cycle mean, so these are steps it calls, not a traversal that calls it back.
    """

    __slots__ = ("_open", "done")

    def __init__(self) -> None:
        self.done: dict[K, V] = {}
        self._open: dict[K, None] = {}  # ordered, with O(1) membership

    def __contains__(self, key: object) -> bool:
        """Whether the walk is inside ``key`` now."""
        return key in self._open

    def enter(self, key: K) -> None:
        self._open[key] = None

    def leave(self, key: K) -> None:
        del self._open[key]

    def finish(self, key: K, value: V) -> V:
        """Leave ``key`` and remember its result."""
        del self._open[key]
        self.done[key] = value
        return value

    def cycle(self, key: K, show: Callable[[K], Any] = str) -> str:
        """``a -> b -> a``: the open keys from ``key`` on, and ``key`` again."""
        order = list(self._open)
        return " -> ".join(str(show(k)) for k in [*order[order.index(key) :], key])
