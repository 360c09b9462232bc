"""What both checkpoint formats share: the model rebuilt from a stored recipe, the stored keys
checked against it, the stored tensors placed into it, and the versions a file records.

A single file (``file``) and a sharded model's directory (``dcp``) each read their own format;
both hand the recipe and the stored tensors to these functions, so a model comes back the same way
from either.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import torch
from torch import nn

from composer import limits as budget
from composer.build.builder import construct
from composer.build.materialize import assign
from composer.errors import PASSED_THROUGH, CheckpointError, ConfigError, unexpected
from composer.files import FileProblem, open_regular
from composer.recipe.read import Recipe, read_recipe_and_stored, top_level_problems


def version() -> str:
    """This composer's version, as a file records it ("unknown" when not installed)."""
    try:
        return package_version("torch-recipe-composer")
    except PackageNotFoundError:
        return "unknown"


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a ``DTensor`` (none can be before ``torch.distributed.tensor`` is
    imported, which takes 0.6 s: single-process saves never pay for it)."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def json_field(
    metadata: Mapping[str, str], key: str, kind: type, path: str | os.PathLike, default: str | None = None
) -> Any:
    """A JSON-encoded metadata field, checked to be a ``kind``.

    Raises:
        CheckpointError: the field is missing (without a ``default``), not JSON, or not a ``kind``.
    """
    try:
        value = json.loads(metadata[key] if default is None else metadata.get(key, default), object_pairs_hook=_unique)
    except (KeyError, TypeError, ValueError, RecursionError):  # ValueError: a 5,000-digit number too
        value = None
    if not isinstance(value, kind) or json_depth(value) > max_json_depth():
        raise CheckpointError(f"{path}: its {key!r} field is missing or malformed: the file is corrupted")
    return value


def max_json_depth() -> int:
    """How deeply a stored JSON value may nest: a recipe ``limits.depth``, a training state's
    tree (``tree``) two levels a level of the user's value; so twice that, and a margin."""
    return 2 * budget.current().depth + 8


def json_depth(value: Any) -> int:
    """How deeply a parsed JSON value nests, without recursion (JSON parses 900 levels that
    ``json.dumps`` and the YAML dumper then cannot write back)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            todo += [(v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)]
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: a key given twice in a stored recipe (the last
    silently winning) is as wrong as in a recipe file. A ``ValueError``, reported as corruption."""
    found = dict(pairs)
    if len(found) < len(pairs):
        raise ValueError("a key is given twice")
    return found


def rebuild(
    text: str,
    allow: Sequence[str],
    device: torch.device,
    path: str | os.PathLike,
    resolvers: Collection[str] | None = None,
) -> tuple[Recipe, Recipe, nn.Module, list]:
    """The stored recipe (JSON ``text``), read within the current budgets, and its module tree,
    on ``meta`` where the file can fill every tensor: (recipe, as stored, model, frozen modules).

    Raises:
        CheckpointError: the recipe is too large, malformed, or does not build (an unknown type:
            the module that registers it was not imported).
    """
    limits = budget.current()
    if len(text) > limits.recipe_bytes:
        raise CheckpointError(f"{path}: {budget.exceeded('recipe_bytes', f'its recipe of {len(text):,} bytes')}")
    raw = json_field({"recipe": text}, "recipe", dict, path)
    try:
        recipe, stored = read_recipe_and_stored(raw, resolvers=resolvers)
        problems = top_level_problems(recipe)
        if problems:
            raise ConfigError(problems)
        model, notes = construct(recipe, allow, device, "load")
    except ConfigError as e:
        unknown_type = any(message.startswith("unknown type") for _, message in e.problems)
        hint = (
            " (import the module that registers it before loading, or install it as a composer.plugins entry point)"
            if unknown_type
            else ""
        )
        raise CheckpointError(f"{path}: cannot rebuild its recipe: {'; '.join(e.lines())}{hint}") from None
    return recipe, stored, model, notes.frozen


def check_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, names_only: bool = False
) -> None:
    """Missing, unexpected and mis-shaped keys, all listed in one ``CheckpointError``;
    ``names_only`` lists only mis-shaped ones, which even a non-strict ``load_state_dict`` refuses.
    A tied tensor's key is not missing where another key of the same tensor is given."""
    expected = model.state_dict(keep_vars=True)
    given = {id(t) for k, t in expected.items() if k in state}
    missing = [] if names_only else [k for k, t in expected.items() if k not in state and id(t) not in given]
    unexpected = [] if names_only else [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state and not _fits(expected[k], state[k])
    ]
    problems = [
        f"{label}: {', '.join(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(problems))


def _fits(target: torch.Tensor, stored: torch.Tensor) -> bool:
    return isinstance(target, nn.parameter.UninitializedTensorMixin) or target.shape == stored.shape


def place(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """The loaded tensors as the model's (ties kept): assigned where it was rebuilt on ``meta``,
    copied where a user block built its tensors for real."""
    if any(p.is_meta for p in model.parameters()):
        assign(model, state)
    else:
        model.load_state_dict(state, strict=True)


@contextlib.contextmanager
def last_resort(path: str | os.PathLike) -> Iterator[None]:
    """Turn an exception nobody expected into a ``CheckpointError`` naming ``path``, the original as
    its cause: a crafted file must not reach the caller as a raw ``KeyError`` or ``struct.error``."""
    try:
        yield
    except PASSED_THROUGH:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: {unexpected(e)}") from e


def open_checked(path: str | os.PathLike) -> int:
    """A descriptor of ``path``, a regular file (a FIFO would block a plain ``open`` forever, a
    device would never end); a ``CheckpointError`` naming it otherwise."""
    try:
        return open_regular(path)
    except FileProblem as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
