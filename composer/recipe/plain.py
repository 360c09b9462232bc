"""Any recipe value -> one plain tree the rest of composer can trust, within the read budgets.

A plain tree holds only mappings with string keys, lists, strings, numbers, booleans and None.
The walk that makes it copies the containers (so the recipe a model keeps cannot change under
it), and checks what a hostile input could use against us, each as a ``ConfigError`` with its key
path:

- its size counted as it expands (``limits.nodes``): a YAML alias or a container a Python dict
  holds twice counts once per place it appears, but is walked once, so a nine-level alias bomb
  (10^9 nodes from a few hundred bytes) is refused after a few dozen steps;
- its nesting (``limits.depth``), before Python's recursion limit is near;
- keys that are not names: ``1:`` becomes ``"1"`` (as JSON would store it), ``~:``, ``true:`` and
  other non-string keys are errors;
- values no recipe means and no file can store: bytes, sets, dates, objects. A ``torch.dtype``
  becomes its name (``float32``), which every dtype argument accepts;
- integers past ``2**MAX_INT_BITS`` (a 5,000-digit one cannot even be printed by Python).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from composer.errors import ConfigError
from composer.limits import Limits, exceeded
from composer.recipe.walk import Visits, child_path

MAX_INT_BITS = 256
SCALARS = frozenset({str, int, float, bool, type(None)})  # the types of a recipe's plain values
_MAX_PROBLEMS = 20


def plain_tree(value: Any, limits: Limits, where: str = "") -> tuple[Any, bool, bool]:
    """``(copy, interpolates, computes)``: the plain copy of ``value``, whether a string in it
    holds ``${`` (an interpolation), and whether one starts with ``$(`` (an expression): each
    is resolved only where there is one.

    Raises:
        ConfigError: a budget exceeded (at once), or every problem of keys and values found.
    """
    walk = _Walk(limits)
    tree = walk.copy(value, where, 0)
    if walk.problems:
        raise ConfigError(walk.problems)
    return tree, walk.interpolates, walk.computes


class _Walk:
    """One walk. Scalars are handled inline in the container loops: this walk runs on every build."""

    def __init__(self, limits: Limits) -> None:
        self.max_nodes = limits.nodes
        self.max_depth = limits.depth
        self.nodes = 0
        self.interpolates = False
        self.computes = False
        self.problems: list[tuple[str, str]] = []
        # id of a container copied -> (its copy, its expanded size, its height); open: being copied
        self.visits: Visits[int, tuple[Any, int, int]] = Visits()
        self.height = 0  # the height of the container copied last

    def copy(self, value: Any, path: str, depth: int) -> Any:
        if type(value) in SCALARS:
            self.nodes += 1
            return self.scalar(value, path, None)
        self.height = 0
        if isinstance(value, (Mapping, list, tuple)):
            return self.container(value, path, depth)
        return self.other(value, path)

    def scalar(self, value: Any, parent: str, key: str | int | None) -> Any:
        """A string or an int (at ``parent`` under ``key``); other scalars pass as they are."""
        kind = type(value)
        if kind is str:
            if "${" in value:
                self.interpolates = True
            if value.startswith("$("):
                self.computes = True
        elif kind is int and value.bit_length() > MAX_INT_BITS:
            where = parent if key is None else child_path(parent, key)
            self.fail(where, f"an integer of {value.bit_length()} bits is too large (at most 2**{MAX_INT_BITS})")
        return value

    def container(self, value: Any, path: str, depth: int) -> Any:
        key = id(value)
        known = self.visits.done.get(key)
        if known is not None:  # met before (a YAML alias): counted again, not walked again
            copy, size, height = known
            self.nodes += size
            self.check(path, depth + height)
            self.height = height
            return copy
        if key in self.visits:
            raise ConfigError("a value that contains itself (a recursive YAML alias)", path or "(recipe)")
        self.nodes += 1
        self.check(path, depth + 1)
        before = self.nodes - 1
        self.visits.enter(key)
        height = 0
        if isinstance(value, Mapping):
            copy: Any = {}
            for k, v in value.items():
                name = k if type(k) is str else self.key(k, path)
                if name is None:
                    continue
                kind = type(v)
                if kind in SCALARS:
                    self.nodes += 1
                    if kind is str and _marked(v) or kind is int and v.bit_length() > MAX_INT_BITS:
                        v = self.scalar(v, path, name)
                    copy[name] = v
                elif kind is dict and (leaf := self.leaf(v, path, name, depth)) is not None:
                    copy[name] = leaf
                    height = max(height, 1)
                else:
                    copy[name] = self.copy(v, child_path(path, name), depth + 1)
                    height = max(height, self.height)
        else:
            copy = []
            for i, v in enumerate(value):
                kind = type(v)
                if kind in SCALARS:
                    self.nodes += 1
                    if kind is str and _marked(v) or kind is int and v.bit_length() > MAX_INT_BITS:
                        v = self.scalar(v, path, i)
                    copy.append(v)
                elif kind is dict and (leaf := self.leaf(v, path, i, depth)) is not None:
                    copy.append(leaf)
                    height = max(height, 1)
                else:
                    copy.append(self.copy(v, child_path(path, i), depth + 1))
                    height = max(height, self.height)
        self.height = height + 1
        self.visits.finish(key, (copy, self.nodes - before, self.height))
        self.check(path, depth)
        return copy

    def leaf(self, value: dict, parent: str, key: str | int, depth: int) -> dict | None:
        """Most of a recipe: a node of plain values (at ``parent`` under ``key``, its container at
        ``depth``), copied whole and counted; None where the full walk must look at it."""
        leaf = _plain_leaf(value)
        if leaf is not None:
            self.nodes += 1 + len(leaf)
            if self.nodes > self.max_nodes or depth + 2 > self.max_depth:
                self.check(child_path(parent, key), depth + 2)
        return leaf

    def key(self, k: Any, path: str) -> str | None:
        if type(k) is int and k.bit_length() <= 64:
            return str(k)
        if k is None or type(k) is bool:
            shown = {None: "null", True: "true", False: "false"}[k]
        else:
            shown = f"{type(k).__name__} {repr(k)[:40]}"
        self.fail(path or "(recipe)", f"key {shown} is not a name: keys are strings (integers are read as strings)")
        return None

    def other(self, value: Any, path: str) -> Any:
        self.nodes += 1
        name = _dtype_name(value)
        if name is not None:
            return name
        what = type(value).__name__
        self.fail(
            path or "(recipe)",
            f"a value of type {what} has no place in a recipe: "
            "it holds strings, numbers, booleans, null, lists and mappings",
        )
        return None

    def check(self, path: str, depth: int) -> None:
        """Refuse at once when the expanded size or the nesting passes its limit."""
        if self.nodes > self.max_nodes:
            what = "the recipe, with its aliases and interpolations expanded,"
            raise ConfigError(exceeded("nodes", what, self.max_nodes), path or "(recipe)")
        if depth > self.max_depth:
            what = f"nesting of more than {self.max_depth} levels"
            raise ConfigError(exceeded("depth", what, self.max_depth), path or "(recipe)")

    def fail(self, path: str, message: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((path, message))


def _plain_leaf(value: dict) -> dict | None:
    """A copy of a mapping of string keys to plain values with nothing to check or note (no ``${``,
    no ``$(``, no huge integer); None for any other, which takes the full walk."""
    for k, v in value.items():
        kind = type(v)
        if type(k) is not str or kind not in SCALARS or kind is str and _marked(v):
            return None
        if kind is int and v.bit_length() > MAX_INT_BITS:
            return None
    return dict(value)


def _marked(text: str) -> bool:
    """Whether a string holds an interpolation (``${``) or is an expression (``$(``)."""
    return "${" in text or text.startswith("$(")


def _dtype_name(value: Any) -> str | None:
    """A ``torch.dtype``'s name (``float32``), without importing torch for every other value."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    return None
