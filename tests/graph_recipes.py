"""A stand-in builder for section 7 recipes, made of the graph parts alone, for tests.

The project's builder does not know ``Graph``, ``op:``, ``call:``, ``use:`` or ``tie`` yet; until it
does, this small walk checks that the ``conf/model`` recipes of section 7.8 are right: that their
keys, shapes and outputs match the handwritten references. It knows only what those recipes use
(types with plain kwargs, Sequential, Repeat, Graph with params, op, call, use, tie, vars) and
ignores ``init``, ``frozen``, ``inputs`` and ``input_shape``. It is not the builder: no ``shared``,
no lazy shapes, no initialization, errors raised one at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from composer.errors import ConfigError
from composer.graph import CallEntry, Graph, GraphSpec, ModuleEntry, OpEntry
from composer.ops import check_op, lookup_op, make_op
from composer.registry import MODULES
from composer.templates import Template, expand, is_use, parse_templates, split_use, substitute_index

_NODE_EXTRAS = ("init", "frozen")


def read(path: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A recipe file as a plain dict, ``overrides`` (dotted keys, such as ``vars.n_layer``) merged
    before interpolations resolve."""
    cfg = OmegaConf.load(path)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def build(recipe: Mapping[str, Any]) -> nn.Module:
    """The model of a recipe, with its ties applied."""
    walker = _Walker(parse_templates(recipe.get("blocks")))
    model = walker.build(recipe["model"], "model")
    for dst, src in (recipe.get("tie") or {}).items():
        parent, _, leaf = dst.rpartition(".")
        source = model.get_parameter(src)
        target = model.get_submodule(parent)
        if getattr(target, leaf).shape != source.shape:
            raise ConfigError(f"tie {dst} -> {src}: shapes differ", f"tie.{dst}")
        setattr(target, leaf, source)
    return model


class _Walker:
    def __init__(self, templates: dict[str, Template]) -> None:
        self.templates = templates
        self.stack: list[str] = []

    def build(self, node: Any, path: str) -> nn.Module:
        if is_use(node):
            return self._use(node, path)
        if "op" in node:
            kwargs = {k: v for k, v in node.items() if k not in ("op", *_NODE_EXTRAS)}
            return make_op(node["op"], kwargs, path)
        kind = node["type"]
        kwargs = {k: v for k, v in node.items() if k not in ("type", "in", *_NODE_EXTRAS)}
        if kind == "Sequential":
            layers = kwargs["layers"]
            items = layers.items() if isinstance(layers, Mapping) else enumerate(layers)
            return nn.Sequential(OrderedDict((str(k), self.build(v, f"{path}.layers.{k}")) for k, v in items))
        if kind == "Repeat":
            body, names = kwargs["body"], kwargs.get("names", "{i}")
            copies = []
            for i in range(kwargs["times"]):
                copy = substitute_index(body, i, f"{path}.body") if is_use(body) else body
                copies.append((names.format(i=i), self.build(copy, f"{path}.body")))
            return nn.Sequential(OrderedDict(copies))
        if kind == "Graph":
            return self._graph(kwargs, path)
        return MODULES._entries[kind](**kwargs)

    def _use(self, node: Mapping[str, Any], path: str) -> nn.Module:
        name, args, _extras = split_use(node)
        if name in self.stack:
            raise ConfigError(f"template {name!r} uses itself: {' -> '.join([*self.stack, name])}", f"{path}.use")
        self.stack.append(name)
        try:
            return self.build(expand(self.templates[name], args, path), path)
        finally:
            self.stack.pop()

    def _graph(self, node: Mapping[str, Any], path: str) -> Graph:
        entries = []
        for name, entry in node["nodes"].items():
            where = f"{path}.nodes.{name}"
            inputs = entry.get("in")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if "call" in entry:
                entries.append(CallEntry(name, entry["call"], inputs))
            elif "op" in entry:
                kwargs = {k: v for k, v in entry.items() if k not in ("op", "in", *_NODE_EXTRAS)}
                fn = lookup_op(entry["op"], f"{where}.op")
                check_op(entry["op"], fn, kwargs, len(inputs) if inputs else 1, where)
                entries.append(OpEntry(name, fn, kwargs, inputs, label=entry["op"]))
            else:
                entries.append(ModuleEntry(name, self.build(entry, where), inputs))
        params = {name: torch.zeros(p["shape"]) for name, p in (node.get("params") or {}).items()}
        spec = GraphSpec(entries, tuple(node.get("inputs", ("x",))), params, node.get("output"))
        return Graph(spec, path)
