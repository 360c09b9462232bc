"""``${...}`` interpolations, resolved by composer itself: linear, within the budget, reading nothing
outside the recipe unless asked to.

OmegaConf's syntax, for what recipes use: ``${key.path}`` (list items as ``.0`` or ``[0]``),
relative ``${.sibling}`` / ``${..uncle}``, a whole-string interpolation keeping its value's type
(``${blocks.x}`` pastes an independent copy of a subtree), interpolations inside a string
(``"w${vars.width}"``), and ``\\${`` for a literal ``${``. A path resolves once however many
places use it, and every value a paste copies counts against ``limits.nodes``: ``${blocks.x}``
chains that double nine times are refused, not expanded (OmegaConf is slow on a large recipe with
one ``${`` in it, and expands such chains without bound).

Resolvers (``${oc.env:NAME}``, ``${now:...}``, any ``${name:args}``) read outside the recipe, so
each is off unless named in ``resolvers`` (``build_from_config(cfg, resolvers=["oc.env"])``,
``COMPOSER_RESOLVERS=oc.env`` for the command line). An enabled resolver's string is evaluated by
OmegaConf, and what it read is never stored: ``resolve`` also returns the tree to store (in a
checkpoint, in ``recipe.yaml``), in which each value a resolver produced keeps its ``${...}``
text, to be resolved again by whoever rebuilds it, and each literal ``${`` is escaped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from typing import Any

from composer.errors import ConfigError, did_you_mean, first_line
from composer.limits import Limits, exceeded
from composer.recipe.plain import plain_tree
from composer.recipe.walk import Visits, key_path

RESOLVERS_ENV = "COMPOSER_RESOLVERS"
Path = tuple  # of str (mapping keys) and int (list indices)

_KEY = r"[^.\[\]{}$:\\'\"\s]+"
_PLAIN = re.compile(rf"\s*(\.*)({_KEY}(?:\.{_KEY}|\[\s*{_KEY}\s*\])*)\s*\}}")
_SEGMENT = re.compile(rf"\.?({_KEY})|\[\s*({_KEY})\s*\]")
_RESOLVER = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*:")
_MISSING = "???"


def enabled_resolvers(resolvers: Collection[str] | str | None) -> frozenset[str]:
    """The resolvers a call enables: its argument, else ``COMPOSER_RESOLVERS`` (comma-separated)."""
    if resolvers is None:
        resolvers = os.environ.get(RESOLVERS_ENV, "")
    if isinstance(resolvers, str):
        resolvers = [name.strip() for name in resolvers.split(",")]
    return frozenset(name for name in resolvers if name)


def resolve(tree: Any, limits: Limits, resolvers: Collection[str] = ()) -> tuple[Any, Any]:
    """``(resolved, stored)``: the tree with every interpolation replaced, and the tree to store.

    ``stored`` is ``resolved`` itself unless a resolver ran or a literal ``${`` had to be escaped.

    Raises:
        ConfigError: a missing key, a cycle, a disabled resolver, a form not supported, or the
            expanded tree past ``limits.nodes`` or ``limits.depth``; each at its key path.
    """
    resolver = _Resolver(tree, limits, frozenset(resolvers))
    resolved, _, _, _ = resolver.value(tree, ())
    if not resolver.kept and not resolver.literal:
        return resolved, resolved
    return resolved, resolver.stored(resolved, ())


def escape(text: str) -> str:
    """A string whose ``${`` are literal, written so that resolving it gives it back."""
    return re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)


class _Resolver:
    """One resolution. Each path of the recipe resolves once (``visits``); a paste copies the
    resolved value, after checking that the copy fits the budget."""

    def __init__(self, root: Any, limits: Limits, resolvers: frozenset[str]) -> None:
        self.root = root
        self.limits = limits
        self.resolvers = resolvers
        # path of a container or an interpolating string -> (resolved, expanded size, height, from a resolver)
        self.visits: Visits[Path, tuple[Any, int, int, bool]] = Visits()
        self.kept: dict[Path, str] = {}  # a string a resolver fed -> its text, stored as it is
        self.literal = False  # a resolved string holds a literal ${: the stored tree escapes it
        self._omegaconf: Any = None

    def value(self, raw: Any, path: Path) -> tuple[Any, int, int, bool]:
        """The resolved value of ``raw`` found at ``path``: (value, expanded size, height, taint)."""
        kind = type(raw)
        if kind is not dict and kind is not list and not (kind is str and "${" in raw):
            return raw, 1, 0, False
        cached = self.visits.done.get(path)
        if cached is not None:
            return cached
        if path in self.visits:
            cycle = self.visits.cycle(path, key_path)
            raise ConfigError(f"interpolations refer to each other in a cycle: {cycle}", key_path(path))
        self.visits.enter(path)
        result = self.string(raw, path) if kind is str else self.container(raw, path)
        return self.visits.finish(path, result)

    def container(self, raw: Any, path: Path) -> tuple[Any, int, int, bool]:
        size, height, tainted = 1, 0, False
        items = raw.items() if type(raw) is dict else enumerate(raw)
        out: Any = {} if type(raw) is dict else []
        for k, v in items:
            value, n, h, t = self.value(v, (*path, k))
            if type(out) is dict:
                out[k] = value
            else:
                out.append(value)
            size, height, tainted = size + n, max(height, h), tainted or t
            if size > self.limits.nodes:
                raise ConfigError(exceeded("nodes", _EXPANDED, self.limits.nodes), key_path(path))
        height += 1
        if len(path) + height > self.limits.depth:
            what = f"nesting of more than {self.limits.depth} levels"
            raise ConfigError(exceeded("depth", what, self.limits.depth), key_path(path))
        return out, size, height, tainted

    def at(self, path: Path, where: Path) -> tuple[Any, int, int, bool]:
        """The resolved value at the absolute ``path``, named by an interpolation at ``where``."""
        raw: Any = self.root
        found = []
        for key in path:
            index = _index(key, len(raw)) if type(raw) is list else None
            if type(raw) is dict and isinstance(key, str) and key in raw:
                raw = raw[key]
                found.append(key)
            elif index is not None:
                raw = raw[index]
                found.append(index)
            else:
                here = key_path(tuple(found))
                hint = did_you_mean(str(key), list(raw)) if type(raw) is dict else ""
                message = f"interpolation of {key_path(path)}: no key {str(key)!r} in {here}{hint}"
                raise ConfigError(message, key_path(where))
        if raw == _MISSING:
            message = f"interpolation of {key_path(path)}: it is missing (???): give it a value"
            raise ConfigError(message, key_path(where))
        return self.value(raw, tuple(found))

    def string(self, raw: str, path: Path) -> tuple[Any, int, int, bool]:
        """A string with ``${``: one whole interpolation keeps its value's type; pieces join as text."""
        pieces = _split(raw)
        if any(isinstance(p, _Complex) for p in pieces):
            value = self.complex(raw, pieces, path)
            return value, _size(value), _height(value), True
        if len(pieces) == 1 and isinstance(pieces[0], _Ref):
            value, size, height, tainted = self.at(self.target(pieces[0], path), path)
            if type(value) is dict or type(value) is list:
                if size > self.limits.nodes:
                    raise ConfigError(exceeded("nodes", _EXPANDED, self.limits.nodes), key_path(path))
                value = _clone(value)  # a paste is an independent copy
            elif type(value) is str and "${" in value:
                self.literal = True
            if tainted:
                self.kept[path] = raw
            return value, size, height, tainted
        out, tainted = [], False
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value, _, _, t = self.at(self.target(piece, path), path)
            if type(value) is dict or type(value) is list:
                what = type(value).__name__
                message = f"{piece.text} inside a string names a {what}: only a whole-string interpolation pastes one"
                raise ConfigError(message, key_path(path))
            out.append(str(value))
            tainted = tainted or t
            if sum(map(len, out)) > self.limits.recipe_bytes:
                what = "a string made by interpolations"
                raise ConfigError(exceeded("recipe_bytes", what, self.limits.recipe_bytes), key_path(path))
        text = "".join(out)
        if "${" in text:
            self.literal = True
        if tainted:
            self.kept[path] = raw
        return text, 1, 0, tainted

    def target(self, ref: _Ref, path: Path) -> Path:
        """The absolute path a reference names from the string at ``path``."""
        if not ref.up:
            return ref.keys
        if ref.up > len(path):
            raise ConfigError(f"interpolation {ref.text}: goes above the top of the recipe", key_path(path))
        return (*path[: len(path) - ref.up], *ref.keys)

    def complex(self, raw: str, pieces: list, path: Path) -> Any:
        """A string with a resolver call (``${oc.env:X}``), or a form composer does not resolve."""
        names = sorted({name for p in pieces if isinstance(p, _Complex) for name in p.resolvers})
        if not names:
            raise ConfigError(
                f"unsupported interpolation {raw!r}: composer resolves ${{key.path}} (relative: ${{.key}}), "
                "a resolver call ${name:args} where enabled, and \\${ for a literal ${",
                key_path(path),
            )
        off = [name for name in names if name not in self.resolvers]
        if off:
            raise ConfigError(
                f"resolver {off[0]!r} is off: resolvers read outside the recipe (the environment, the clock); "
                f"enable it with resolvers=[{off[0]!r}] or {RESOLVERS_ENV}={off[0]}",
                key_path(path),
            )
        self.kept[path] = raw
        return self.omegaconf_value(path)

    def omegaconf_value(self, path: Path) -> Any:
        """What OmegaConf makes of the string at ``path`` (an enabled resolver's call)."""
        from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: PLC0415  (only for enabled resolvers)
        from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

        try:
            if self._omegaconf is None:
                self._omegaconf = OmegaConf.create(self.root)
            node = self._omegaconf
            for key in path[:-1]:
                node = node._get_node(key)
            value = node[path[-1]]
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as e:
            message = f"cannot resolve interpolation: {first_line(getattr(e, 'msg', None) or e)}"
            raise ConfigError(message, key_path(path)) from None
        tree, *_ = plain_tree(value, self.limits, key_path(path))
        return tree

    def stored(self, value: Any, path: Path) -> Any:
        """The resolved tree with what resolvers made kept as written, and literal ``${`` escaped."""
        kept = self.kept.get(path)
        if kept is not None:
            return kept
        if type(value) is dict:
            return {k: self.stored(v, (*path, k)) for k, v in value.items()}
        if type(value) is list:
            return [self.stored(v, (*path, i)) for i, v in enumerate(value)]
        if type(value) is str and "${" in value:
            return escape(value)
        return value


_EXPANDED = "the recipe, with its aliases and interpolations expanded,"


class _Ref:
    """``${..a.b[0]}``: ``up`` levels above the string's container (0: absolute), then ``keys``."""

    __slots__ = ("keys", "text", "up")

    def __init__(self, text: str, up: int, keys: tuple) -> None:
        self.text, self.up, self.keys = text, up, keys


class _Complex:
    """An interpolation composer does not resolve itself: a resolver call, or a nested form."""

    __slots__ = ("resolvers",)

    def __init__(self, resolvers: list[str]) -> None:
        self.resolvers = resolvers


def _split(raw: str) -> list:
    """A string's pieces: literal text and references, OmegaConf's escapes applied."""
    pieces: list = []
    text: list[str] = []
    i = 0
    while True:
        j = raw.find("${", i)
        if j < 0:
            text.append(raw[i:])
            break
        k = j
        while k > i and raw[k - 1] == "\\":
            k -= 1
        slashes = j - k
        text.append(raw[i:k] + "\\" * (slashes // 2))
        if slashes % 2:  # an escaped ${: literal
            text.append("${")
            i = j + 2
            continue
        m = _PLAIN.match(raw, j + 2)
        if m is not None:
            if text:
                pieces.append("".join(text))
                text = []
            up = len(m.group(1))
            keys = tuple(a or b for a, b in _SEGMENT.findall(m.group(2)))
            pieces.append(_Ref(raw[j : m.end()], max(up, 0), keys))
            i = m.end()
            continue
        # not a plain path: the resolver calls in the rest of the string, if any
        calls = (_RESOLVER.match(raw, j + start.end()) for start in re.finditer(r"\$\{", raw[j:]))
        resolvers = [call.group(1) for call in calls if call is not None]
        pieces.append(_Complex(resolvers))
        return pieces
    if text and "".join(text):
        pieces.append("".join(text))
    return [p for p in pieces if not (isinstance(p, str) and not p)] or [""]


def _index(key: Any, length: int) -> int | None:
    """A list index from a key (``0``, ``"0"``), or None."""
    if isinstance(key, int):
        return key if 0 <= key < length else None
    if isinstance(key, str) and key.isdigit():
        i = int(key)
        return i if i < length else None
    return None


def _size(value: Any) -> int:
    if type(value) is dict:
        return 1 + sum(_size(v) for v in value.values())
    if type(value) is list:
        return 1 + sum(_size(v) for v in value)
    return 1


def _height(value: Any) -> int:
    if type(value) is dict:
        return 1 + max((_height(v) for v in value.values()), default=0)
    if type(value) is list:
        return 1 + max((_height(v) for v in value), default=0)
    return 0


def _clone(value: Any) -> Any:
    if type(value) is dict:
        return {k: _clone(v) for k, v in value.items()}
    if type(value) is list:
        return [_clone(v) for v in value]
    return value


def resolver_calls(text: str) -> list[str]:
    """The resolvers a string calls (``${oc.env:X}`` -> ``["oc.env"]``), escaped ``\\${`` aside."""
    return [name for p in _split(text) if isinstance(p, _Complex) for name in p.resolvers]
