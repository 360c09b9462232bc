"""How many modules a recipe asks for, counted on the tree before anything is built.

Templates that use templates ten times each make 10^9 modules from a dozen lines, and a build
refused only when its counter passes ``limits.modules`` has spent seconds getting there. The count
here walks the tree once: a node counts one, a Repeat its body ``times`` over, a ``use:`` node its
template's body (counted once per template) with each argument counted where the body pastes it
(``$name``), and a container torch fills inside its constructor (``num_layers`` of a
``TransformerEncoder`` or an ``RNN``: ``composer.modules.inner``) its copies. Values the recipe
computes (a ``times: $n``) count as one. It can only under-count what arguments and expressions
decide, which the builder's own counter then bounds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from composer.modules.inner import NAMES, inner_copies
from composer.recipe.grammar import REPEAT, USE, arguments_of, is_node
from composer.recipe.plain import SCALARS
from composer.recipe.templates import Template
from composer.recipe.walk import Visits, key_path

_ARG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def count_modules(nodes: Mapping[str, Any], templates: Mapping[str, Template], stop: int) -> tuple[int, str]:
    """``(count, where)``: the modules building ``nodes`` (key path -> node) asks for, and the
    key path of the innermost node whose count passed ``stop`` (empty if none did); counting
    stops soon after it passes ``stop``."""
    counter = _Counter(templates, stop)
    total = 0
    for path, node in nodes.items():
        total += counter.count(node, (path,))
        if total > stop:
            break
    return total, key_path(counter.where) if counter.where else ""


class _Counter:
    def __init__(self, templates: Mapping[str, Template], stop: int) -> None:
        self.templates = templates
        self.stop = stop
        self.seen: Visits[int, int] = Visits()  # id of a container -> its count (a YAML alias is met twice)
        self.costs: Visits[str, tuple[int, dict[str, int]]] = Visits()  # template -> (body count, $arg uses)
        self.where: tuple = ()

    def count(self, value: Any, where: tuple) -> int:
        kind = type(value)
        if kind is dict and USE.marker not in value:
            for item in value.values():
                if type(item) not in SCALARS:
                    break
            else:  # a leaf: one module or none, nothing below it to remember
                cls = _container(value)
                if cls is not None:
                    return 1 + self._inner(cls, value, where)
                return 1 if is_node(value) else 0
        elif kind in SCALARS or not isinstance(value, (Mapping, list)):
            return 0
        known = self.seen.done.get(id(value))
        if known is None:
            known = self.seen.done[id(value)] = min(self._count(value, where), self.stop + 1)
            if known > self.stop and not self.where:
                self.where = where
        return known

    def _count(self, value: Any, where: tuple) -> int:
        if isinstance(value, list):
            total = 0
            for i, item in enumerate(value):
                total += self.count(item, (*where, i))
                if total > self.stop:
                    break
            return total
        name = value.get(USE.marker)
        if isinstance(name, str) and name in self.templates:
            return 1 + self._use(value, where)
        if value.get(REPEAT.marker) == REPEAT.type_name:  # its body, times over
            times = value.get("times")
            n = times if isinstance(times, int) and not isinstance(times, bool) and times > 0 else 1
            body = self.count(value.get("body"), (*where, "body"))
            if n * body > self.stop and not self.where:
                self.where = (*where, "times")
            return 1 + n * body
        total = 1 if is_node(value) else 0
        for key, item in value.items():
            if type(item) not in SCALARS:  # most values of a node: no call, no key path
                total += self.count(item, (*where, key))
                if total > self.stop:
                    break
        cls = _container(value)
        if cls is not None:
            total += self._inner(cls, value, where)
        return total

    def _inner(self, cls: type, node: Mapping, where: tuple) -> int:
        """The modules (and RNN parameters) torch's container makes inside its constructor."""
        total = 0
        for copies in inner_copies(cls, node):
            each = copies.each if copies.of is None else max(self.count(node.get(copies.of), (*where, copies.of)), 1)
            total += copies.count * each
            if total > self.stop and not self.where:
                self.where = (*where, copies.key)
        return total

    def _use(self, node: Mapping, where: tuple) -> int:
        name = node[USE.marker]
        base, uses = self._template(name)
        template = self.templates[name]
        args = {**template.args, **arguments_of(node, USE)}
        total = base + sum(uses.get(arg, 0) * self.count(value, (*where, arg)) for arg, value in args.items())
        if total > self.stop and not self.where:
            self.where = (*where, USE.marker)
        return total

    def _template(self, name: str) -> tuple[int, dict[str, int]]:
        if name in self.costs.done:
            return self.costs.done[name]
        if name in self.costs:  # a cycle of templates: the builder reports it
            return 0, {}
        self.costs.enter(name)
        template = self.templates[name]
        where = tuple(template.key_path.split(".")) + ("body",)
        return self.costs.finish(name, (self.count(template.body, where), _arg_uses(template.body, {})))


def _container(node: Mapping) -> type | None:
    """The torch container class a node names (``type: RNN``, ``_target_: torch.nn.LSTM``), if any."""
    for key in ("type", "_target_"):
        name = node.get(key)
        if type(name) is str and name in NAMES:
            return NAMES[name]
    return None


def _arg_uses(value: Any, uses: dict[str, int]) -> dict[str, int]:
    """How many times a body pastes each argument whole (``$name``)."""
    if isinstance(value, str):
        m = _ARG.fullmatch(value)
        if m:
            uses[m.group(1)] = uses.get(m.group(1), 0) + 1
    elif isinstance(value, Mapping):
        for item in value.values():
            _arg_uses(item, uses)
    elif isinstance(value, list):
        for item in value:
            _arg_uses(item, uses)
    return uses
