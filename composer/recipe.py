"""The recipe language's outer shape: a YAML path, a dict or a DictConfig becomes one plain dict.

Parsing goes through PyYAML's C loader, and through OmegaConf only when the recipe holds an
interpolation (``${blocks.x}``): OmegaConf is an order of magnitude slower on a large tree, and a plain tree
is what the builder walks fastest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer.errors import ConfigError, did_you_mean, first_line, unknown
from composer.signatures import is_int

if TYPE_CHECKING:
    import torch

TOP_LEVEL_KEYS = ("model", "shared", "blocks", "init", "input_shape", "inputs", "tie", "dtype", "vars", "shard")
NODE_MARKERS = ("type", "ref", "_target_", "use", "op")


class YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (the C one where built), reading numbers as YAML 1.2 does: ``1e-5``
    is a float, as OmegaConf and every YAML 1.2 reader take it (PyYAML's YAML 1.1 needs a dot)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
YAML_LOADER = YamlLoader

Recipe = dict[str, Any]

# The dtype names a recipe may write (``dtype: bfloat16``): torch's attribute names.
DTYPES = (
    "float32", "float64", "float16", "bfloat16", "float", "double", "half",
    "int8", "int16", "int32", "int64", "uint8", "long", "int", "bool", "complex64", "complex128",
)  # fmt: skip


def is_node(value: Any) -> bool:
    """A node is a mapping with ``type``, ``ref``, ``_target_``, ``use`` or ``op``."""
    return (type(value) is dict or isinstance(value, Mapping)) and any(key in value for key in NODE_MARKERS)


def dtype_of(name: Any, path: str) -> torch.dtype:
    """The torch dtype a recipe names, or a ``ConfigError`` with the closest name."""
    import torch  # noqa: PLC0415  (the CLI reads recipes before it pays for torch)

    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return getattr(torch, name.removeprefix("torch."))
    raise ConfigError(unknown("dtype", name, DTYPES), path)


@dataclass(frozen=True)
class InputSpec:
    """One forward argument of an example batch: zeros of this shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def example_inputs(recipe: Recipe) -> tuple[str, list[InputSpec]] | None:
    """The recipe's example inputs and the key that gave them (``inputs``, or the short form
    ``input_shape``: one float input), checked by ``top_level_problems``; None without either.
    Float inputs take the recipe's ``dtype``."""
    floating = dtype_of(recipe.get("dtype") or "float32", "dtype")
    if recipe.get("inputs") is not None:
        raw = recipe["inputs"]
        items = list(raw.values()) if isinstance(raw, Mapping) else raw
        specs = []
        for item in items:
            dtype = dtype_of(item["dtype"], "inputs") if item.get("dtype") is not None else floating
            specs.append(InputSpec(tuple(item["shape"]), dtype))
        return "inputs", specs
    if recipe.get("input_shape") is not None:
        return "input_shape", [InputSpec(tuple(recipe["input_shape"]), floating)]
    return None


def read_recipe(cfg: str | os.PathLike | Mapping | DictConfig) -> Recipe:
    """Read and resolve interpolations; a bare node becomes ``{model: node}``."""
    if isinstance(cfg, DictConfig):
        recipe = _resolve(cfg)
    elif isinstance(cfg, (str, os.PathLike)):
        recipe = _read_yaml(Path(cfg))
    elif isinstance(cfg, Mapping):
        interpolations: list[str] = []
        recipe = _copy(cfg, interpolations)
        if interpolations:
            recipe = _resolve(recipe)
    else:
        raise ConfigError(f"a recipe is a YAML path, a dict or a DictConfig, not {type(cfg).__name__}")
    if not isinstance(recipe, dict):
        raise ConfigError(f"a recipe is a mapping, not {type(recipe).__name__}")
    return {"model": recipe} if is_node(recipe) else recipe


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read recipe: {e.strerror}", str(path)) from None
    try:
        data = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"YAML syntax error: {getattr(e, 'problem', None) or e}", where) from None
    return _resolve(data) if "${" in text else data


def _copy(value: Any, interpolations: list[str]) -> Any:
    """A copy of the containers, so the recipe a model keeps cannot change under it, noting the
    strings that interpolate: one walk (``copy.deepcopy`` takes twice as long)."""
    kind = type(value)
    if kind is str:
        if "${" in value:
            interpolations.append(value)
        return value
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _copy(v, interpolations) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v, interpolations) for v in value]
    return value


def _resolve(data: Any) -> Any:
    """Resolve OmegaConf interpolations; ``${blocks.x}`` pastes an independent copy of a template."""
    try:
        return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"cannot resolve interpolation: {first_line(getattr(e, 'msg', None) or e)}", key) from None


def top_level_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Unknown keys (a typo such as ``sahred`` must not pass), a missing model, malformed sections."""
    problems = [
        (key, f"unknown top-level key{did_you_mean(str(key), TOP_LEVEL_KEYS)}; valid: {', '.join(TOP_LEVEL_KEYS)}")
        for key in recipe
        if key not in TOP_LEVEL_KEYS
    ]
    if "model" not in recipe:
        problems.append(("model", "missing: a recipe needs a model node"))
    for key in ("shared", "blocks"):
        if recipe.get(key) is not None and not isinstance(recipe[key], Mapping):
            problems.append((key, f"expected a mapping of name: node, got {type(recipe[key]).__name__}"))
    shape = recipe.get("input_shape")
    if shape is not None and not _is_shape(shape):
        problems.append(("input_shape", f"expected a list of positive integers such as [2, 20], got {shape!r}"))
    problems += _inputs_problems(recipe.get("inputs"))
    if recipe.get("input_shape") is not None and recipe.get("inputs") is not None:
        problems.append(("inputs", "give inputs or input_shape (its short form for one float input), not both"))
    tie = recipe.get("tie")
    if tie is not None and not (isinstance(tie, Mapping) and all(isinstance(v, str) for v in tie.values())):
        problems.append(("tie", f"expected a mapping of dst: src parameter paths, got {tie!r}"))
    if recipe.get("dtype") is not None:
        try:
            dtype_of(recipe["dtype"], "dtype")
        except ConfigError as e:
            problems += e.problems
    problems += _shard_problems(recipe.get("shard"))
    return problems


def _shard_problems(raw: Any) -> list[tuple[str, str]]:
    """``shard: {units: [{layer: Name or [Names]} | {match: glob}, ...]}``: the FSDP units of a
    sharded build (``composer.shard``); which modules they select is checked when it shards."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [("shard", f"expected {{units: [{{layer: Name}} or {{match: glob}}, ...]}}, got {raw!r}")]
    problems = [(f"shard.{k}", unknown("key", k, ("units",))) for k in raw if k != "units"]
    units = raw.get("units")
    if not isinstance(units, list):
        return [*problems, ("shard.units", f"expected a list of {{layer: Name}} or {{match: glob}}, got {units!r}")]
    for i, unit in enumerate(units):
        path = f"shard.units[{i}]"
        if not isinstance(unit, Mapping) or len(unit) != 1:
            problems.append((path, f"expected one of {{layer: Name}} or {{match: glob}}, got {unit!r}"))
            continue
        key, value = next(iter(unit.items()))
        if key == "match":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                problems.append((f"{path}.match", f"expected a glob over module paths, got {value!r}"))
        elif key == "layer":
            problems += _layer_problems(value, f"{path}.layer")
        else:
            problems.append((f"{path}.{key}", unknown("key", key, ("layer", "match"))))
    return problems


def _layer_problems(value: Any, path: str) -> list[tuple[str, str]]:
    """A class name or a list of them, each registered."""
    from composer.registry import MODULES  # noqa: PLC0415  (it imports torch; few recipes shard)

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return [(path, f"expected a class name or a list of them, got {value!r}")]
    return [(path, unknown("layer class", n, MODULES, listed=False)) for n in names if n not in MODULES]


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, (list, tuple)) and bool(shape) and all(is_int(d) and d > 0 for d in shape)


def _inputs_problems(raw: Any) -> list[tuple[str, str]]:
    """``inputs``: a list (forward order) or a mapping (by graph input name) of {shape, dtype}."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        items = [(f"inputs.{k}", v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = [(f"inputs[{i}]", v) for i, v in enumerate(raw)]
    else:
        return [("inputs", f"expected a list or a mapping of {{shape: [...], dtype: ...}}, got {raw!r}")]
    problems = []
    for path, item in items:
        if not isinstance(item, Mapping) or not _is_shape(item.get("shape")):
            problems.append((path, f"expected {{shape: [positive integers], dtype: name}}, got {item!r}"))
            continue
        for key in item:
            if key not in ("shape", "dtype"):
                problems.append((f"{path}.{key}", unknown("key", key, ("shape", "dtype"))))
        if item.get("dtype") is not None:
            try:
                dtype_of(item["dtype"], f"{path}.dtype")
            except ConfigError as e:
                problems += e.problems
    return problems
