"""Weights from elsewhere into an existing model: a composer checkpoint, a safetensors file, a
sharded safetensors index (``model.safetensors.index.json``, as ``transformers`` writes it), or a
``weights_only`` torch file; keys renamed by regular expressions and 2-D tensors transposed by
glob on the way (a Hugging Face GPT-2 stores its ``Conv1D`` projections as [in, out]).

Nothing in a file runs: safetensors is raw bytes and JSON, and torch files are read with
``torch.load(weights_only=True)``. An index names its shards as plain file names beside it.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from composer import limits as budget
from composer.build.placement import device_of
from composer.checkpoint import training
from composer.checkpoint.common import check_keys, last_resort, open_checked
from composer.checkpoint.file import FORMAT, read_tensors
from composer.errors import CheckpointError
from composer.files import fd_path

INDEX = "model.safetensors.index.json"
_MAX_INDEX = 64 * 1024 * 1024


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    *,
    rename: Mapping[str, str] | None = None,
    transpose: Sequence[str] | None = None,
    limits: budget.LimitsArg = None,
) -> None:
    """Copy weights from a file into an existing model (in place; ties stay tied).

    Args:
        model: the model to fill; its ``state_dict`` keys are the names to match.
        path: a composer checkpoint (its checksum verified), a safetensors file, a shard index
            (``*.index.json``), a folder holding ``model.safetensors.index.json`` or
            ``model.safetensors`` (what ``save_pretrained`` writes), or a torch file read with
            ``weights_only=True`` (a dict of tensors).
        strict: every key of the model given (a tied parameter counts as given when any of its
            names is) and no key of the file left over. Mis-shaped keys are refused either way.
        rename: ``{regex: replacement}`` applied to each key of the file in order (``re.sub``),
            e.g. ``{"^h\\\\.": "transformer.h."}``.
        transpose: globs over the renamed keys whose 2-D tensors are transposed (``*.c_attn.weight``).
        limits: budgets beyond the defaults (``composer.limits``), for a composer checkpoint's header.

    Raises:
        CheckpointError: unreadable or corrupted, two keys renamed to one, a transpose glob that
            matches no 2-D tensor, or keys that do not fit: missing, unexpected (both only when
            ``strict``) and mis-shaped ones, all listed in one message; a file none of whose keys
            is the model's names the closest keys on both sides. Any other exception raised on
            the way (by a crafted file, torch, a bug of ours) is a CheckpointError naming the path,
            the exception as its ``__cause__`` (``MemoryError``, ``KeyboardInterrupt`` and
            ``SystemExit`` pass through).
    """
    with last_resort(path):
        with budget.using(limits):
            found = read_weights(path)
        state = _renamed(found, rename or {}, path)
        _transposed(state, transpose or (), path)
        _check_overlap(model, found, state, path)
        check_keys(model, state, path, names_only=not strict)
        device = device_of(model)
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor a weights file (or folder, or shard index) holds, on the CPU, by its own name.

    Raises:
        CheckpointError: not one of the formats above, unreadable or corrupted.
    """
    path = Path(path)
    if path.is_dir():
        for name in (INDEX, "model.safetensors"):
            if (path / name).is_file():
                return read_weights(path / name)
        raise CheckpointError(f"{path}: a folder without {INDEX} or model.safetensors")
    if path.name.endswith(".index.json"):
        return _read_index(path)
    if _is_safetensors(path):
        return _read_safetensors(path)
    return _read_torch(path)


def _is_safetensors(path: Path) -> bool:
    """A safetensors header: an 8-byte length, then a JSON object."""
    fd = open_checked(path)
    try:
        head = os.pread(fd, 9, 0)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    fd = open_checked(path)
    try:
        name = fd_path(fd, path)
        with safe_open(name, framework="pt") as f:
            ours = (f.metadata() or {}).get("format") == FORMAT
        if ours:
            _, tensors = read_tensors(path, FORMAT, "cpu", verify=True)
            return {k: v for k, v in tensors.items() if not training.is_training_key(k)}
        return load_file(name)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    finally:
        os.close(fd)


def _read_index(path: Path) -> dict[str, torch.Tensor]:
    """The shards an index names (``weight_map``: key -> file beside it), each read once."""
    try:
        if path.stat().st_size > _MAX_INDEX:
            raise CheckpointError(f"{path}: too large to be a shard index")
        index = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: not a shard index (not valid JSON)") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: not a shard index (no weight_map of key -> file)")
    bad = sorted({v for v in weight_map.values() if Path(v).name != v or v in ("", ".", "..")})
    if bad:
        raise CheckpointError(f"{path}: its shards must be files beside it, not {bad[:3]}")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_read_safetensors(path.parent / shard))
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
        raise CheckpointError(f"{path}: keys it lists are in none of its shards: {', '.join(absent[:10])}")
    return tensors


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file of a dict of tensors, read with ``weights_only=True``."""
    fd = open_checked(path)
    try:
        loaded = torch.load(fd_path(fd, path), map_location="cpu", weights_only=True)
    except Exception as e:  # a crafted or foreign file: whatever it raises, weights_only ran nothing
        what = f"neither safetensors nor a weights_only torch file ({type(e).__name__})"
        raise CheckpointError(f"{path}: {what}") from None
    finally:
        os.close(fd)
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(f"{path}: a torch file of {type(loaded).__name__}, not a dict of name -> tensor")
    return dict(loaded)


def _renamed(found: Mapping[str, torch.Tensor], rename: Mapping[str, str], path: Path | str) -> dict[str, torch.Tensor]:
    try:
        rules = [(re.compile(pattern), replacement) for pattern, replacement in rename.items()]
    except re.error as e:
        raise CheckpointError(f"rename: {e.pattern!r} is not a regular expression: {e}") from None
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in found.items():
        new = key
        for rule, replacement in rules:
            new = rule.sub(replacement, new)
        if new in origin:
            raise CheckpointError(f"{path}: rename maps both {origin[new]!r} and {key!r} to {new!r}")
        origin[new] = key
        state[new] = tensor
    return state


def _transposed(state: dict[str, torch.Tensor], globs: Sequence[str], path: Path | str) -> None:
    unused = []
    for glob in globs:
        keys = [k for k, t in state.items() if t.dim() == 2 and fnmatch.fnmatchcase(k, glob)]
        if not keys:
            unused.append(glob)
        for key in keys:
            state[key] = state[key].t().contiguous()
    if unused:
        raise CheckpointError(f"{path}: transpose: {', '.join(map(repr, unused))} match no 2-D tensor (after rename)")


def _check_overlap(
    model: nn.Module, found: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path | str
) -> None:
    """A file none of whose keys is the model's: name the closest keys on both sides, the usual
    cause being a prefix to rename."""
    expected = list(model.state_dict(keep_vars=True))
    if not state or not expected or any(k in state for k in expected):
        return
    pairs = []
    for key in list(state)[:200]:
        close = difflib.get_close_matches(key, expected, n=1, cutoff=0.5)
        if close:
            pairs.append((difflib.SequenceMatcher(None, key, close[0]).ratio(), key, close[0]))
    shown = [f"{key!r} ~ model {close!r}" for _, key, close in sorted(pairs, reverse=True)[:3]]
    if not shown:
        shown = [f"file {list(found)[:3]} vs model {expected[:3]}"]
    raise CheckpointError(
        f"{path}: none of its {len(state)} keys is a key of the model (closest: {'; '.join(shown)}): "
        "map them with rename={regex: replacement}"
    )
