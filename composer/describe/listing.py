"""The text of ``python -m composer list [types|inits|ops|templates|recipes] [NAME]``.

What a recipe can name, read from the registries and the conf directories, so the answer is never
out of date: a type's arguments and defaults come from its constructor's signature, an
initializer's from its function's, a packaged recipe's one-line description from its first
comment. Pure functions that return the text; the command line prints it, its control
characters escaped. A conf directory may come from elsewhere: its files are read as the app reads
them (``read_config_file``: regular files within the budgets, no link out of the directory).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from composer.build.builder import LAZY
from composer.errors import ConfigError, did_you_mean
from composer.init.initializers import INITIALIZERS
from composer.modules import signatures as args_of
from composer.modules.ops import OPS
from composer.modules.registry import MODULES
from composer.modules.signatures import EMPTY
from composer.recipe import grammar as g
from composer.recipe.read import read_config_file, read_config_text

KINDS = ("types", "inits", "ops", "templates", "recipes")
WIDTH = 100
EXTRAS = (
    f"every node also takes: {', '.join(key.name for key in g.COMMON)}; "
    f"a called type {g.ARGS.name} ({g.ARGS.doc}); an entry of a Graph {g.IN.name}"
)


def _key_rows(form: g.Form) -> list[tuple[str, str, str]]:
    """A form's own keys (not those every node takes), as ``list`` shows them."""
    return [
        (key.name, g.KIND_TEXT[key.kind], "required" if key.required else key.default)
        for key in form.keys
        if key not in g.COMMON
    ]


def list_text(
    kind: str | None = None,
    name: str | None = None,
    *,
    conf_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    modules: Any = MODULES,
    initializers: Any = INITIALIZERS,
    ops: Any = OPS,
) -> str:
    """The answer to ``list [KIND] [NAME]``; without a kind, what each kind holds.

    Args:
        conf_dir: the conf directory, or several (``--config-dir`` first): the first that holds
            a name wins, as a user's recipe shadows a packaged one.
        ops: the op registry.

    Raises:
        ConfigError: an unknown kind or name, with the closest one.
    """
    dirs = _dirs(conf_dir)
    listers: dict[str, Callable[[str | None], str]] = {
        "types": lambda n: types_text(modules, n),
        "inits": lambda n: inits_text(initializers, n),
        "ops": lambda n: ops_text(ops, n),
        "templates": lambda n: templates_text(dirs, n),
        "recipes": lambda n: recipes_text(dirs, n),
    }
    if kind is None:
        return _overview(modules, initializers, ops, dirs)
    if kind not in listers:
        raise ConfigError(f"nothing to list as {kind!r}{did_you_mean(kind, KINDS)}; one of: {', '.join(KINDS)}", "list")
    return listers[kind](name)


def _overview(modules: Any, initializers: Any, ops: Any, dirs: list[Path]) -> str:
    models, inits = _recipe_files(dirs, "model"), _recipe_files(dirs, "init")
    counts = {
        "types": f"{len(list(modules))} module types, and the forms {', '.join(g.TYPE_FORMS)}",
        "inits": f"{len(list(initializers))} initializers",
        "ops": f"{len(list(ops))} ops",
        "templates": _count(len(_templates(dirs)), "template") + " in the recipes",
        "recipes": f"{len(models)} model recipes, {len(inits)} init schemes",
    }
    lines = ["what a recipe can name (python -m composer list KIND [NAME]):"]
    lines += [f"  {kind:<10} {text}" for kind, text in counts.items()]
    return "\n".join(lines)


# --- types ----------------------------------------------------------------------------------


def types_text(modules: Any = MODULES, name: str | None = None) -> str:
    """Every type a node can name, grouped by where it comes from; with ``name``, its arguments."""
    types = args_of.entries(modules)
    if name is None:
        groups: dict[str, list[str]] = {"forms of the builder": list(g.TYPE_FORMS)}
        for type_name, cls in types.items():
            if type_name in g.TYPE_FORMS:
                continue
            where = getattr(cls, "__module__", "?")
            where = "torch.nn" if where.startswith("torch.nn") else where
            groups.setdefault(where, []).append(type_name)
        lines = []
        for where, names in groups.items():
            lines.append(f"{where} ({len(names)}):")
            lines += textwrap.wrap(", ".join(names), WIDTH, initial_indent="  ", subsequent_indent="  ")
        lines.append("python -m composer list types NAME shows a type's arguments")
        return "\n".join(lines)
    if name in g.TYPE_FORMS:
        form = g.TYPE_FORMS[name]
        return "\n".join([f"{name}: {form.summary} (a form of the builder)", "", *_table(_key_rows(form)), "", EXTRAS])
    if name not in types:
        raise ConfigError(f"unknown type {name!r}{did_you_mean(name, [*types, *g.TYPE_FORMS])}", "list types")
    cls = types[name]
    deferred = LAZY[cls][1] if cls in LAZY else None
    lines = _heading(name, cls)
    signature = args_of.arguments(cls)
    if signature is None:
        lines.append("its arguments cannot be read from its signature")
    else:
        rows = [(a.name, args_of.format_annotation(a.annotation), _default(a)) for a in signature.named]
        lines += _table(rows) if rows else ["takes no argument"]
        if signature.var_keyword:
            lines.append("also takes any other keyword (**kwargs)")
        if deferred:
            lines.append(f"without {deferred} it is built as {LAZY[cls][0].__name__}, which infers it (input_shape)")
    lines += ["", EXTRAS]
    return "\n".join(lines)


# --- initializers and ops -------------------------------------------------------------------


def inits_text(initializers: Any = INITIALIZERS, name: str | None = None) -> str:
    """Each initializer with its arguments (``normal(mean=0.0, std=1.0)``); with ``name``, a table."""
    fns = args_of.entries(initializers)
    if name is None:
        lines = ["initializers (a bare name, or {type: name, <kwargs>}):"]
        lines += [f"  {_call_line(n, _initializer_args(fn))}" for n, fn in fns.items()]
        return "\n".join(lines)
    if name not in fns:
        raise ConfigError(f"unknown initializer {name!r}{did_you_mean(name, fns)}", "list inits")
    named = _initializer_args(fns[name])
    lines = _heading(name, fns[name])
    rows = [(a.name, args_of.format_annotation(a.annotation), _default(a)) for a in named or []]
    lines += _table(rows) if rows else ["takes no argument"]
    return "\n".join(lines)


def ops_text(ops: Any = OPS, name: str | None = None) -> str:
    """Each op with its arguments, read as the builder and the schema read it
    (``signatures.op_arguments``): ``in:`` gives the tensors, every other argument is a key."""
    fns = args_of.entries(ops)
    if name is None:
        lines = ["ops ({op: name, in: ..., <kwargs>}, in a Graph or a Sequential):"]
        lines += [f"  {_call_line(n, _op_args(fn))}" for n, fn in fns.items()]
        return "\n".join(lines)
    if name not in fns:
        raise ConfigError(f"unknown op {name!r}{did_you_mean(name, fns)}", "list ops")
    signature = args_of.op_arguments(fns[name])
    inputs = signature.inputs if signature else ()
    lines = [*_heading(name, fns[name]), f"in: {', '.join(inputs) or 'none'}", ""]
    rows = [(a.name, args_of.format_annotation(a.annotation), _default(a)) for a in _op_args(fns[name]) or []]
    lines += _table(rows) if rows else ["no arguments besides in"]
    either = [a.name for a in signature.keywords if a.name in inputs] if signature else []
    if either:
        lines.append(f"{', '.join(either)}: an input or an argument")
    if signature is not None and signature.any_keyword:
        lines.append("also takes any other keyword (**kwargs)")
    return "\n".join(lines)


def _initializer_args(fn: Any) -> list[args_of.Argument] | None:
    signature = args_of.arguments(fn)
    if signature is None:
        return None
    return [a for a in signature.named[1:] if a.name not in ("tensor", "generator")]


def _op_args(fn: Any) -> list[args_of.Argument] | None:
    """The arguments an op takes as keys, but the tensors ``in:`` gives."""
    signature = args_of.op_arguments(fn)
    return None if signature is None else [a for a in signature.keywords if a.name not in signature.inputs]


def _call_line(name: str, named: list[args_of.Argument] | None) -> str:
    if named is None:
        return f"{name}(...)"
    return f"{name}({', '.join(a.name if a.required else f'{a.name}={_default(a)}' for a in named)})"


# --- templates and recipes ------------------------------------------------------------------


def templates_text(conf_dir: Any, name: str | None = None) -> str:
    """The ``blocks`` templates of the recipes in ``conf_dir/model``; with ``name``, its YAML."""
    found = _templates(_dirs(conf_dir))
    if name is None:
        if not found:
            return "no templates: a recipe defines them under blocks"
        lines = ["templates (blocks of the recipes: ${blocks.name} pastes a copy, {use: name, ...} fills args):"]
        width = max(len(n) for n, _, _ in found)
        for template_name, source, body in found:
            lines.append(f"  {template_name:<{width}}  {_template_args(body)}  [{source}]")
        return "\n".join(lines)
    matches = [(source, body) for n, source, body in found if n == name]
    if not matches:
        raise ConfigError(f"no template {name!r}{did_you_mean(name, [n for n, _, _ in found])}", "list templates")
    parts = [f"# {name}, from {source}\n{yaml.safe_dump(body, sort_keys=False).rstrip()}" for source, body in matches]
    return "\n\n".join(parts)


def recipes_text(conf_dir: Any, name: str | None = None) -> str:
    """The packaged model recipes and init schemes with their descriptions; with ``name``
    (``mlp``, ``init/xavier``), the file itself."""
    dirs = _dirs(conf_dir)
    groups = {"model": _recipe_files(dirs, "model"), "init": _recipe_files(dirs, "init")}
    if name is None:
        lines = []
        for group, title in (("model", "model recipes (model=NAME)"), ("init", "init schemes (init=NAME)")):
            files = groups[group]
            lines.append(f"{title}:" if files else f"{title}: none")
            width = max((len(n) for n in files), default=0)
            lines += [f"  {n:<{width}}  {_description(path)}".rstrip() for n, path in files.items()]
        return "\n".join(lines)
    group, _, stem = name.rpartition("/")
    candidates = [g for g in ((group,) if group else ("model", "init")) if g in groups and stem in groups[g]]
    if not candidates:
        known = [*groups["model"], *(f"init/{n}" for n in groups["init"])]
        raise ConfigError(f"no recipe {name!r}{did_you_mean(name, known)}", "list recipes")
    path = groups[candidates[0]][stem]
    return f"# {path}\n{read_config_text(path, _folder_of(path)).rstrip()}"


def _dirs(conf_dir: Any) -> list[Path]:
    if conf_dir is None:
        return []
    if isinstance(conf_dir, (str, os.PathLike)):
        return [Path(conf_dir)]
    return [Path(d) for d in conf_dir]


def _folder_of(path: Path) -> Path:
    """The conf directory of ``DIR/group/name.yaml``: what the file must stay inside."""
    return path.parent.parent


def _recipe_files(dirs: list[Path], group: str) -> dict[str, Path]:
    """Name -> file of a config group; the first directory holding a name wins."""
    files: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted((directory / group).glob("*.yaml")):
            files.setdefault(path.stem, path)
    return dict(sorted(files.items()))


def _templates(dirs: list[Path]) -> list[tuple[str, str, Any]]:
    """``(name, source, body)`` of each ``blocks`` entry of the model recipes."""
    found = []
    for stem, path in _recipe_files(dirs, "model").items():
        try:  # as the app reads it: within the budgets, no FIFO, no link out of its folder
            data, _ = read_config_file(path, _folder_of(path))
        except ConfigError:
            continue  # listing never fails on a file the build would report
        blocks = data.get("blocks") if isinstance(data, Mapping) else None
        if isinstance(blocks, Mapping):
            found += [(str(n), f"model/{stem}", body) for n, body in blocks.items()]
    return found


def _template_args(body: Any) -> str:
    """``args: c (required), stride=1`` for a template with arguments; ``pasted`` for a plain block."""
    if not (isinstance(body, Mapping) and "body" in body):
        return "pasted with ${blocks.NAME}" + (
            f": {body['type']}" if isinstance(body, Mapping) and "type" in body else ""
        )
    args = body.get("args") or {}
    if isinstance(args, list):
        return "args: " + ", ".join(f"{a} (required)" for a in args)
    return "args: " + ", ".join(f"{a} (required)" if v == "???" else f"{a}={v!r}" for a, v in args.items())


def _description(path: Path) -> str:
    """The first comment line of a file that is not a Hydra directive."""
    try:
        lines = read_config_text(path, _folder_of(path)).splitlines()
    except ConfigError:
        return ""
    for line in lines:
        text = line.strip()
        if not text.startswith("#"):
            if text:
                break
            continue
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


# --- formatting -----------------------------------------------------------------------------


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    """``argument  default  type``: the type last, as a Literal's choices can be long."""
    rows = [("argument", "type", "default"), *rows]
    widths = [max(len(r[0]) for r in rows), max(len(r[2]) for r in rows)]
    return [f"  {a:<{widths[0]}}  {d:<{widths[1]}}  {t}".rstrip() for a, t, d in rows]


def _default(arg: args_of.Argument) -> str:
    """A default as YAML writes it: ``true``, ``null``, ``[1, 1]``, ``'zeros'``; ``required``."""
    return "required" if arg.default is EMPTY else _yaml(arg.default)


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(_yaml(v) for v in value)}]"
    return getattr(value, "__name__", repr(value))


def _heading(name: str, obj: Any) -> list[str]:
    """``Name: module.Class``, its docstring's first sentence, a blank line."""
    doc = args_of.summary_line(obj)
    return [f"{name}: {_qualified(obj)}", *([f"  {doc}"] if doc else []), ""]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
