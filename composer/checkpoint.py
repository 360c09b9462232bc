"""Checkpoint and tensor files: safetensors with a self-describing header, written atomically.

A checkpoint holds the weights (each tied tensor once), the resolved recipe, versions and a
checksum (xxh3-64) of the metadata and the tensor data. Loading reads only JSON and raw tensor bytes, so a crafted file cannot run
code; it rebuilds the model on the ``meta`` device from the recipe and places the stored tensors
as its parameters, so no initializer runs and nothing is copied twice.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from composer.build import DEFAULT_TARGETS, construct
from composer.errors import CheckpointError, ConfigError
from composer.gc_pause import gc_paused
from composer.materialize import assign, require_shapes
from composer.placement import device_of, holds_meta
from composer.recipe import Recipe, top_level_problems
from composer.record import BuildRecord, finish, record_of

FORMAT = "composer-checkpoint"
TENSORS_FORMAT = "composer-tensors"
FORMAT_VERSION = "3"  # 2: a CRC-32 covers the metadata too; 3: an xxh3-64 digest instead (BENCHMARKS.md)
_MAX_HEADER = 100 * 1024 * 1024
_ALIGN = 64

TensorTree = torch.Tensor | list | dict

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write weights and, for a built model, its recipe, to one file.

    Args:
        model: a model built by ``build_from_config`` (saved with its recipe, so
            ``load_checkpoint`` rebuilds it) or any other module (saved with its weights only).
            A sharded model (``build_from_config(..., mesh=mesh)``) is saved by every rank into
            the directory ``path``, a ``torch.distributed.checkpoint`` (``composer.dcp``).
        path: the file to write. It is written atomically: a crash at any point leaves the
            previous file or the new one, never a truncated one.

    Raises:
        ConfigError: lazy layers have no shapes yet.
        CheckpointError: the model is on the ``meta`` device.
    """
    if _is_sharded(model):
        from composer.dcp import save_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only when sharded)

        save_sharded(model, path)
        return
    require_shapes(model, "a checkpoint")
    if holds_meta([*model.parameters(), *model.buffers()]):
        raise CheckpointError("the model is on the meta device (built to check its recipe): it holds no weights to save")
    tensors, aliases = _dedupe(model.state_dict())
    metadata = {"aliases": json.dumps(aliases)}
    record = record_of(model)
    if record is not None:
        metadata["recipe"] = json.dumps(record.recipe)
        metadata["allow_targets"] = json.dumps(list(record.allow_targets))
        metadata["init_schemes"] = json.dumps(record.schemes)
    _write(path, FORMAT, tensors, metadata)


@gc_paused()
def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    *,
    allow_targets: Sequence[str] | None = None,
    mesh: DeviceMesh | None = None,
) -> nn.Module:
    """Rebuild the model from the recipe inside the file and load its weights strictly.

    Ties come back, outputs equal the saved model's bit for bit, and no initializer runs.

    Args:
        path: a checkpoint written by ``save_checkpoint``.
        map_location: the device the weights are placed on.
        verify: check the stored checksum of the data and metadata first.
        allow_targets: ``_target_`` prefixes beyond the default allowlist; the file's own list is
            never trusted, since importing a module runs its code.
        mesh: for a checkpoint directory (a sharded model's): a ``DeviceMesh`` to shard the
            model over, called on every rank, whatever the world size that saved it. Without
            one the whole model is loaded in this process, on ``map_location``.

    Returns:
        The model, as ``build_from_config`` returned it when it was saved.

    Raises:
        CheckpointError: not a checkpoint, corrupted, weights only, or a recipe that cannot be
            rebuilt (an unregistered type: import the module that registers it first).
    """
    if Path(path).is_dir():
        from composer.dcp import load_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only for directories)

        return load_sharded(path, map_location, verify, allow_targets, mesh)
    if mesh is not None:
        raise CheckpointError(f"{path}: a single-file checkpoint loads whole; a checkpoint directory loads with a mesh")
    metadata, state = _read(path, FORMAT, map_location, verify)
    if "recipe" not in metadata:
        raise CheckpointError(f"{path}: holds weights only, no recipe: build the model yourself and use load_weights")
    recipe = _json_field(metadata, "recipe", dict, path)
    allow = (*DEFAULT_TARGETS, *(allow_targets or ()))
    model, frozen = _rebuild(recipe, allow, torch.device(map_location), path)
    _check_keys(model, state, path)
    if any(p.is_meta for p in model.parameters()):
        assign(model, state)
    else:
        model.load_state_dict(state, strict=True)
    finish(model, frozen, BuildRecord(recipe, allow, _json_field(metadata, "init_schemes", dict, path, default="{}")))
    return model


def _is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a ``DTensor`` (none can be before ``torch.distributed.tensor`` is
    imported, which takes 0.6 s: single-process saves never pay for it)."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def _rebuild(recipe: Recipe, allow: Sequence[str], device: torch.device, path: str | os.PathLike) -> tuple[nn.Module, list]:
    """The stored recipe's module tree, on ``meta`` where the file can fill every tensor."""
    try:
        problems = top_level_problems(recipe)
        if problems:
            raise ConfigError(problems)
        model, notes, _ = construct(recipe, allow, device, "load")
    except ConfigError as e:
        unknown_type = any(message.startswith("unknown type") for _, message in e.problems)
        hint = " (import the module that registers it before loading)" if unknown_type else ""
        raise CheckpointError(f"{path}: cannot rebuild its recipe: {'; '.join(e.lines())}{hint}") from None
    return model, notes.frozen


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Copy a checkpoint's weights into an existing model.

    Raises:
        CheckpointError: not a checkpoint, corrupted, or keys that do not fit: missing,
            unexpected (both only when ``strict``) and mis-shaped ones, all listed by name.
    """
    _, state = _read(path, FORMAT, device_of(model), verify=True)
    _check_keys(model, state, path, names_only=not strict)
    model.load_state_dict(state, strict=strict)


def save_tensors(obj: TensorTree, path: str | os.PathLike) -> None:
    """Save a tensor, a list of tensors or a dict from strings to tensors (nested too) to one file.

    Args:
        obj: what to save; views and shared storage are kept apart (each tensor stored once).
        path: the file, written atomically as ``save_checkpoint`` writes.

    Raises:
        TypeError: ``obj`` holds something other than tensors, lists and str-keyed dicts.
    """
    flat: dict[str, torch.Tensor] = {}
    structure = _flatten(obj, flat)
    tensors, aliases = _dedupe(flat)
    _write(path, TENSORS_FORMAT, tensors, {"structure": json.dumps(structure), "aliases": json.dumps(aliases)})


def load_tensors(path: str | os.PathLike) -> TensorTree:
    """Load what ``save_tensors`` wrote: the same structure, dtypes, shapes and values.

    Raises:
        CheckpointError: not such a file, corrupted (its checksum does not match), or truncated.
    """
    metadata, flat = _read(path, TENSORS_FORMAT, "cpu", verify=True)
    try:
        return _unflatten(_json_field(metadata, "structure", dict, path), flat)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: its structure does not match its tensors: the file is corrupted") from None


# --- file format ------------------------------------------------------------------------------


def _write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    metadata = {
        "format": kind,
        "format_version": FORMAT_VERSION,
        "composer_version": _version(),
        "torch_version": torch.__version__,
        **metadata,
    }
    field, digest = _CHECKSUMS[FORMAT_VERSION]
    placeholder = "?" * len(digest({}, metadata))  # as wide as the digest that replaces it
    metadata[field] = placeholder

    def write(tmp: Path) -> None:
        # The checksum pass (xxhash releases the GIL) runs while safetensors writes; its result
        # then replaces the fixed-width placeholder in the header, before the fsync.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(digest, tensors, metadata)
            save_file(tensors, tmp, metadata)
            _patch_header(tmp, field, placeholder, pending.result())

    write_atomic(Path(path), write)


def _patch_header(path: Path, field: str, placeholder: str, value: str) -> None:
    """Overwrite ``"<field>":"<placeholder>"`` in a safetensors header with a value of equal width."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = f.read(length)
        entry = f'"{field}":"{placeholder}"'.encode()
        at = header.find(entry)
        if at < 0 or len(value) != len(placeholder):
            raise RuntimeError(f"{path}: no {field} placeholder in the header")
        f.seek(8 + at + len(entry) - len(placeholder) - 1)
        f.write(value.encode())


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``.

    A crash at any point leaves the old file or the new one, never a truncated one.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), _mode_for(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """The mode the file had, or what a plain ``open`` would give (safetensors writes 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _read(path: str | os.PathLike, kind: str, device: str | torch.device, verify: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Check the header, load the tensors, verify their checksum, and restore aliased (tied) keys."""
    metadata = _read_metadata(Path(path), kind)
    try:
        tensors = load_file(path, device="cpu" if verify else str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupted or truncated ({e})") from None
    field, digest = _CHECKSUMS[metadata["format_version"]]
    if verify and digest(tensors, metadata) != metadata.get(field):
        raise CheckpointError(f"{path}: its data does not match its checksum: the file is corrupted")
    if verify and torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    # Kernels may take other paths on data not 64-byte aligned (a ResNet's fc at file offset 40
    # gave outputs 1e-6 off): such a tensor is copied into aligned memory.
    tensors = {k: v.clone() if v.data_ptr() % _ALIGN else v for k, v in tensors.items()}
    for alias, key in _json_field(metadata, "aliases", dict, path, default="{}").items():
        if key not in tensors:
            raise CheckpointError(f"{path}: alias {alias!r} names a missing tensor {key!r}: the file is corrupted")
        tensors[alias] = tensors[key]
    return metadata, tensors


def _json_field(metadata: Mapping[str, str], key: str, kind: type, path: str | os.PathLike, default: str | None = None) -> Any:
    """A JSON-encoded metadata field, checked to be a ``kind``."""
    try:
        value = json.loads(metadata[key] if default is None else metadata.get(key, default))
    except (KeyError, TypeError, json.JSONDecodeError):
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: its {key!r} field is missing or malformed: the file is corrupted")
    return value


def _read_metadata(path: Path, kind: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
            if length is None or not 0 < length <= min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a {kind} file (no safetensors header)")
            header = json.loads(f.read(length))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a {kind} file (its header is not valid JSON)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != kind:
        raise CheckpointError(f"{path}: not a {kind} file")
    if metadata.get("format_version") not in _CHECKSUMS:
        version, readable = metadata.get("format_version"), ", ".join(_CHECKSUMS)
        raise CheckpointError(f"{path}: format version {version} is not supported (this composer reads {readable})")
    return metadata


def _chunks(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], field: str) -> Iterator[Any]:
    """What a checksum covers, in order: the metadata (but the checksum itself), then each key
    and its tensor's bytes, in key order."""
    fields = {k: v for k, v in metadata.items() if k != field}
    yield json.dumps(fields, sort_keys=True).encode()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        yield key.encode()
        if t.numel():
            yield t.reshape(-1).view(torch.uint8).numpy()


def _crc32(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Format 2's checksum: CRC-32, in ten decimal digits."""
    crc = 0
    for chunk in _chunks(tensors, metadata, "crc32"):
        crc = zlib.crc32(chunk, crc)
    return f"{crc:010d}"


def _xxh3(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Format 3's checksum: xxh3-64, several times faster than CRC-32, in 16 hex digits."""
    state = xxhash.xxh3_64()
    for chunk in _chunks(tensors, metadata, "xxh3_64"):
        state.update(chunk)
    return state.hexdigest()


# format version -> (metadata field, checksum): every version this composer reads
_CHECKSUMS: dict[str, tuple[str, Callable[[Mapping[str, torch.Tensor], Mapping[str, str]], str]]] = {
    "2": ("crc32", _crc32),
    "3": ("xxh3_64", _xxh3),
}


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each tensor once: a later key over the same memory becomes an alias of the first.

    Views that overlap without being identical are copied, as safetensors refuses shared memory.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, t in state.items():
        t = t.detach()
        identity = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if identity in seen:
            aliases[key] = seen[identity]
            continue
        seen[identity] = key
        pointer = t.untyped_storage().data_ptr()
        tensors[key] = t.contiguous() if pointer not in storages or t.numel() == 0 else t.clone(memory_format=torch.contiguous_format)
        storages.add(pointer)
    return tensors, aliases


def _check_keys(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, names_only: bool = False) -> None:
    """Missing, unexpected and mis-shaped keys, all listed; ``names_only`` lists only mis-shaped
    ones, which even a non-strict ``load_state_dict`` refuses."""
    expected = model.state_dict(keep_vars=True)
    missing = [] if names_only else [k for k in expected if k not in state]
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


def _flatten(obj: Any, flat: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(flat))
        flat[key] = obj
        return {"tensor": key}
    if isinstance(obj, (list, tuple)):
        return {"list": [_flatten(item, flat) for item in obj]}
    if isinstance(obj, Mapping) and all(isinstance(k, str) for k in obj):
        return {"dict": {k: _flatten(v, flat) for k, v in obj.items()}}
    raise TypeError(f"save_tensors takes tensors, lists of them and dicts from str to them, not {type(obj).__name__}")


def _unflatten(structure: Any, flat: Mapping[str, torch.Tensor]) -> Any:
    if "tensor" in structure:
        return flat[structure["tensor"]]
    if "list" in structure:
        return [_unflatten(item, flat) for item in structure["list"]]
    return {k: _unflatten(v, flat) for k, v in structure["dict"].items()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-recipe-composer")
    except PackageNotFoundError:
        return "unknown"
