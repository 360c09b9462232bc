"""Checkpoint and tensor files: safetensors with a self-describing header, written atomically.

A checkpoint holds the weights (each tied tensor once), the resolved recipe, the summary and the
init report as they were at save time, versions and a checksum (xxh3-64) of the metadata and the
tensor data. Loading reads
only JSON and raw tensor bytes, so a crafted file cannot run code; it rebuilds the model on the
``meta`` device from the recipe and places the stored tensors as its parameters, so no
initializer runs and nothing is copied twice.

A file is data from anywhere: only a regular file is opened (a FIFO would block forever), its
header is read only within ``limits.header_bytes``, and its recipe passes the same budgets as
any recipe (``composer.limits``) before anything is built from it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from composer import limits as budget
from composer.build.builder import DEFAULT_TARGETS, construct
from composer.build.materialize import assign, require_shapes
from composer.build.placement import device_of, holds_meta
from composer.build.record import BuildRecord, finish, record_of
from composer.describe.summarize import summary as summarize
from composer.errors import CheckpointError, ConfigError
from composer.files import FileProblem, fd_path, open_regular, replacing
from composer.recipe.read import Recipe, read_recipe_and_stored, top_level_problems

FORMAT = "composer-checkpoint"
TENSORS_FORMAT = "composer-tensors"
FORMAT_VERSION = "3"  # 2: a CRC-32 covers the metadata too; 3: an xxh3-64 digest instead (BENCHMARKS.md)
_ALIGN = 64

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

TensorTree = torch.Tensor | list | dict


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, summary: str | None = None) -> None:
    """Write weights and, for a built model, its recipe, to one file.

    Args:
        model: a model built by ``build_from_config`` (saved with its recipe, so
            ``load_checkpoint`` rebuilds it) or any other module (saved with its weights only).
        path: the file to write. It is written atomically: a crash at any point leaves the
            previous file or the new one, never a truncated one. The new file is written as
            ``.composer-<8 hex>.tmp`` in the same folder and renamed over ``path``; a temporary
            that a killed save left there is removed by the next save into that folder.
        summary: the model's summary table, stored for ``python -m composer inspect`` to show
            without running the model; by default ``summary(model)`` (a forward pass of zeros
            when the recipe gives input shapes, within ``limits.seconds``).

    Raises:
        ConfigError: lazy layers have no shapes yet.
        CheckpointError: the model is on the ``meta`` device, or the file cannot be written (no
            space left, too large for the file system: the previous file stays as it was; the
            ``OSError`` is the cause).
    """
    if _is_sharded(model):
        from composer.checkpoint.dcp import save_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only when sharded)

        save_sharded(model, path)
        return
    require_shapes(model, "a checkpoint")
    if holds_meta([*model.parameters(), *model.buffers()]):
        raise CheckpointError(
            "the model is on the meta device (built to check its recipe): it holds no weights to save"
        )
    tensors, aliases = _dedupe(model.state_dict())
    metadata = {"aliases": json.dumps(aliases)}
    record = record_of(model)
    if record is not None:
        metadata["recipe"] = json.dumps(record.recipe_to_store)
        metadata["allow_targets"] = json.dumps(list(record.allow_targets))
        metadata["init_schemes"] = json.dumps(record.schemes)
    metadata["summary"] = summary if summary is not None else _summary_of(model)
    _write(path, FORMAT, tensors, metadata)


def _summary_of(model: nn.Module) -> str:
    try:
        return summarize(model)
    except ConfigError as e:
        return f"(no summary: {'; '.join(e.lines())})"


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    *,
    allow_targets: Sequence[str] | None = None,
    mesh: DeviceMesh | None = None,
    limits: budget.LimitsArg = None,
    resolvers: Collection[str] | None = None,
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
        limits: budgets beyond the defaults (``composer.limits``), e.g. ``{"header_bytes": 2**26}``:
            the stored recipe is checked against them before anything is built from it.
        resolvers: the interpolation resolvers a stored recipe may call (a recipe built with
            ``resolvers=["oc.env"]`` stores ``${oc.env:...}`` unresolved, never what it read).

    Returns:
        The model, as ``build_from_config`` returned it when it was saved.

    Raises:
        CheckpointError: not a checkpoint, corrupted, weights only, a budget exceeded, or a
            recipe that cannot be rebuilt (an unregistered type: import the module that
            registers it first).
    """
    if Path(path).is_dir():
        from composer.checkpoint.dcp import load_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only for directories)

        return load_sharded(path, map_location, verify, allow_targets, mesh)
    if mesh is not None:
        raise CheckpointError(f"{path}: a single-file checkpoint loads whole; a checkpoint directory loads with a mesh")
    with budget.using(limits) as chosen:
        metadata, state = _read(path, FORMAT, map_location, verify)
        if "recipe" not in metadata:
            raise CheckpointError(
                f"{path}: holds weights only, no recipe: build the model yourself and use load_weights"
            )
        allow = (*DEFAULT_TARGETS, *(allow_targets or ()))
        recipe, stored, model, frozen = _rebuild(metadata, allow, torch.device(map_location), path, chosen, resolvers)
        _check_keys(model, state, path)
        if any(p.is_meta for p in model.parameters()):
            assign(model, state)
        else:
            model.load_state_dict(state, strict=True)
        schemes = json_field(metadata, "init_schemes", dict, path, default="{}")
        finish(model, frozen, BuildRecord(recipe, allow, schemes, stored if stored is not recipe else None))
    return model


def _is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a ``DTensor`` (none can be before ``torch.distributed.tensor`` is
    imported, which takes 0.6 s: single-process saves never pay for it)."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def _rebuild(
    metadata: Mapping[str, str],
    allow: Sequence[str],
    device: torch.device,
    path: str | os.PathLike,
    limits: budget.Limits,
    resolvers: Collection[str] | None,
) -> tuple[Recipe, Recipe, nn.Module, list]:
    """The stored recipe, read within the budgets, and its module tree, on ``meta`` where the
    file can fill every tensor."""
    text = metadata["recipe"]
    if len(text) > limits.recipe_bytes:
        raise CheckpointError(f"{path}: {budget.exceeded('recipe_bytes', f'its recipe of {len(text):,} bytes')}")
    raw = json_field(metadata, "recipe", dict, path)
    try:
        recipe, stored = read_recipe_and_stored(raw, resolvers=resolvers)
        problems = top_level_problems(recipe)
        if problems:
            raise ConfigError(problems)
        model, notes = construct(recipe, allow, device, "load")
    except ConfigError as e:
        unknown_type = any(message.startswith("unknown type") for _, message in e.problems)
        hint = " (import the module that registers it before loading)" if unknown_type else ""
        raise CheckpointError(f"{path}: cannot rebuild its recipe: {'; '.join(e.lines())}{hint}") from None
    return recipe, stored, model, notes.frozen


def read_metadata(path: str | os.PathLike, verify: bool = True, *, limits: budget.LimitsArg = None) -> dict[str, str]:
    """The metadata a file stores (recipe, summary, init report, versions, all JSON or text),
    checked against its CRC when ``verify``; nothing is built.

    Raises:
        CheckpointError: not a composer file, corrupted, or a header past ``limits.header_bytes``.
    """
    with budget.using(limits):
        metadata, _ = _read(path, FORMAT, "cpu", verify)
    return metadata


def load_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, *, limits: budget.LimitsArg = None
) -> None:
    """Copy a checkpoint's weights into an existing model.

    Raises:
        CheckpointError: not a checkpoint, corrupted, a header past ``limits.header_bytes``, or
            keys that do not fit: missing, unexpected (both only when ``strict``) and
            mis-shaped ones, all listed by name.
    """
    with budget.using(limits):
        _, state = _read(path, FORMAT, device_of(model), verify=True)
    _check_keys(model, state, path, names_only=not strict)
    model.load_state_dict(state, strict=strict)


def save_tensors(obj: TensorTree, path: str | os.PathLike) -> None:
    """A tensor, a list of tensors or a dict from strings to tensors (nested too), in one file."""
    flat: dict[str, torch.Tensor] = {}
    structure = _flatten(obj, flat)
    tensors, aliases = _dedupe(flat)
    _write(path, TENSORS_FORMAT, tensors, {"structure": json.dumps(structure), "aliases": json.dumps(aliases)})


def load_tensors(path: str | os.PathLike, *, limits: budget.LimitsArg = None) -> TensorTree:
    """What ``save_tensors`` wrote: same structure, dtypes, shapes and values."""
    with budget.using(limits):
        metadata, flat = _read(path, TENSORS_FORMAT, "cpu", verify=True)
    try:
        return _unflatten(json_field(metadata, "structure", dict, path), flat)
    except (KeyError, TypeError, AttributeError, RecursionError):
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
    metadata[field] = "?" * len(digest({}, metadata))  # as wide as the digest that replaces it
    unknown = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in _DTYPE_NAMES})
    if unknown:
        raise CheckpointError(f"{path}: safetensors cannot store {', '.join(unknown)} tensors")
    try:
        with replacing(Path(path)) as tmp:
            _serialize(tmp.fd, tensors, metadata)
    except OSError as e:
        where = _free_space(Path(path)) if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        raise CheckpointError(f"{path}: cannot write: {e.strerror or e}{where}; the previous file is unchanged") from e


def _serialize(fd: int, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file, written through ``fd`` (the temporary this process holds): the header,
    then each tensor's bytes in key order. The checksum pass runs in a thread beside the writes
    (xxhash holds the GIL, the writes release it); its result then replaces the fixed-width
    placeholder in the header."""
    field, digest = _CHECKSUMS[FORMAT_VERSION]
    placeholder = metadata[field]
    keys = sorted(tensors)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key in keys:
        t = tensors[key]
        end = offset + t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)  # the data starts 64-byte aligned
    entry = f'"{field}":"{placeholder}"'.encode()
    digest_at = 8 + text.index(entry) + len(entry) - len(placeholder) - 1
    with os.fdopen(os.dup(fd), "wb", buffering=1 << 20) as f, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(digest, tensors, metadata)
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for key in keys:
            data = _bytes_of(tensors[key])
            if len(data):
                f.write(data)
        f.flush()
        os.pwrite(fd, pending.result().encode(), digest_at)


def _bytes_of(t: torch.Tensor) -> memoryview:
    """A tensor's bytes, in memory order (contiguous), without a copy on the CPU."""
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


# safetensors' dtype names (its format's specification), for the dtypes this torch has
_DTYPE_NAMES: dict[torch.dtype, str] = {
    getattr(torch, attr): name
    for attr, name in (
        ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
        ("int64", "I64"), ("int32", "I32"), ("int16", "I16"), ("int8", "I8"),
        ("uint64", "U64"), ("uint32", "U32"), ("uint16", "U16"), ("uint8", "U8"), ("bool", "BOOL"),
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("complex64", "C64"),
    )
    if hasattr(torch, attr)
}  # fmt: skip


def _free_space(path: Path) -> str:
    try:
        return f" ({shutil.disk_usage(path.parent).free:,} bytes free in {path.parent})"
    except OSError:
        return ""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``.

    A crash at any point leaves the old file or the new one, never a truncated one. The temporary
    is ``.composer-<8 hex>.tmp``, held by this process while it is written; one left by a killed
    save is removed by the next save into the folder (``files.Temporary``).
    """
    with replacing(path) as tmp:
        write(tmp.path)


def _read(
    path: str | os.PathLike, kind: str, device: str | torch.device, verify: bool
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Check the header, load the tensors, verify their checksum, and restore aliased (tied) keys."""
    try:
        fd = open_regular(path)
    except FileProblem as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    try:
        metadata = _read_metadata(fd, Path(path), kind)
        try:
            tensors = load_file(fd_path(fd, path), device="cpu" if verify else str(device))
        except (SafetensorError, OSError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{path}: corrupted or truncated ({e})") from None
    finally:
        os.close(fd)
    field, digest = _CHECKSUMS[metadata["format_version"]]
    if verify and digest(tensors, metadata) != metadata.get(field):
        raise CheckpointError(f"{path}: its data does not match its checksum: the file is corrupted")
    if verify and torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    # Kernels may take other paths on data not 64-byte aligned (a ResNet's fc at file offset 40
    # gave outputs 1e-6 off): such a tensor is copied into aligned memory.
    tensors = {k: v.clone() if v.data_ptr() % _ALIGN else v for k, v in tensors.items()}
    for alias, key in json_field(metadata, "aliases", dict, path, default="{}").items():
        if not isinstance(key, str) or key not in tensors:
            raise CheckpointError(f"{path}: alias {alias!r} names a missing tensor {key!r}: the file is corrupted")
        tensors[alias] = tensors[key]
    return metadata, tensors


def json_field(
    metadata: Mapping[str, str], key: str, kind: type, path: str | os.PathLike, default: str | None = None
) -> Any:
    """A JSON-encoded metadata field, checked to be a ``kind``."""
    try:
        value = json.loads(metadata[key] if default is None else metadata.get(key, default), object_pairs_hook=_unique)
    except (KeyError, TypeError, ValueError, RecursionError):  # ValueError: a 5,000-digit number too
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: its {key!r} field is missing or malformed: the file is corrupted")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: a key given twice in a stored recipe (the last
    silently winning) is as wrong as in a recipe file. A ``ValueError``, reported as corruption."""
    found = dict(pairs)
    if len(found) < len(pairs):
        raise ValueError("a key is given twice")
    return found


def _read_metadata(fd: int, path: Path, kind: str) -> dict[str, str]:
    """The header's metadata, read within ``limits.header_bytes`` (a 60 MB header of ``{}``
    would take 1.6 GB to parse)."""
    limit = budget.current().header_bytes
    try:
        head = os.pread(fd, 8, 0)
        size = os.fstat(fd).st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
    if length is None or not 0 < length <= size - 8:
        raise CheckpointError(f"{path}: not a {kind} file (no safetensors header)")
    if length > limit:
        raise CheckpointError(f"{path}: {budget.exceeded('header_bytes', f'its header of {length:,} bytes', limit)}")
    try:
        header = json.loads(os.pread(fd, length, 8))  # C speed: 8 MiB of {} in 0.7 s (a hook per object: 1.5 s)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError):  # ValueError: invalid JSON, a 5,000-digit number
        raise CheckpointError(f"{path}: not a {kind} file (its header is not valid JSON)") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a {kind} file (its header nests too deeply)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != kind:
        raise CheckpointError(f"{path}: not a {kind} file")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: its metadata holds values that are not strings: the file is corrupted")
    if metadata.get("format_version") not in _CHECKSUMS:
        version, readable = metadata.get("format_version"), ", ".join(_CHECKSUMS)
        raise CheckpointError(f"{path}: format version {version} is not supported (composer reads {readable})")
    return metadata


def _chunks(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], field: str) -> Iterator[Any]:
    """What a checksum covers, in order: the metadata (but the checksum itself), then each key
    and its tensor's bytes, in key order."""
    fields = {k: v for k, v in metadata.items() if k != field}
    yield json.dumps(fields, sort_keys=True).encode()
    for key in sorted(tensors):
        yield key.encode()
        data = _bytes_of(tensors[key])
        if len(data):
            yield data


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
        tensors[key] = (
            t.contiguous()
            if pointer not in storages or t.numel() == 0
            else t.clone(memory_format=torch.contiguous_format)
        )
        storages.add(pointer)
    return tensors, aliases


def _check_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, names_only: bool = False
) -> None:
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
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415  (only when saving)

    try:
        return version("torch-recipe-composer")
    except PackageNotFoundError:
        return "unknown"
