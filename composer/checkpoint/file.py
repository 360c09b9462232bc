"""Single-file checkpoints and tensor files: safetensors with a self-describing header, written
atomically.

A checkpoint holds the weights (each tied tensor once), the resolved recipe, the init report,
optionally the summary the caller printed and the training state (``training``), versions and a
checksum (xxh3-64) of the metadata and the tensor data. Loading reads only JSON and raw tensor
bytes, so a crafted file cannot run code; it rebuilds the model on the ``meta`` device from the
recipe and places the stored tensors as its parameters, so no initializer runs and nothing is
copied twice.

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
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from composer import limits as budget
from composer.build.builder import DEFAULT_TARGETS
from composer.build.materialize import require_shapes
from composer.build.placement import holds_meta
from composer.build.record import BuildRecord, finish, record_of
from composer.checkpoint import training
from composer.checkpoint.common import check_keys, json_field, open_checked, place, rebuild, version
from composer.checkpoint.tree import flatten, unflatten
from composer.errors import CheckpointError
from composer.files import fd_path, replacing

FORMAT = "composer-checkpoint"
TENSORS_FORMAT = "composer-tensors"
FORMAT_VERSION = "3"  # 2: a CRC-32 covers the metadata too; 3: an xxh3-64 digest instead (BENCHMARKS.md)
_ALIGN = 64
_PIECE = 16 << 20  # bytes read at a time to verify a checksum without loading the tensors


def save_single(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    summary: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: Mapping[str, Any] | None = None,
) -> None:
    """``save_checkpoint`` of a model in one process: one file (see there)."""
    require_shapes(model, "a checkpoint")
    if holds_meta([*model.parameters(), *model.buffers()]):
        raise CheckpointError(
            "the model is on the meta device (built to check its recipe): it holds no weights to save"
        )
    state_dict = model.state_dict()
    metadata: dict[str, str] = {}
    record = record_of(model)
    if record is not None:
        metadata["recipe"] = json.dumps(record.recipe_to_store)
        metadata["allow_targets"] = json.dumps(list(record.allow_targets))
        metadata["init_schemes"] = json.dumps(record.schemes)
    if summary is not None:
        metadata["summary"] = summary
    if optimizer is not None or state is not None:
        groups = training.slots(model, optimizer) if optimizer is not None else None
        extra, info = training.capture(
            optimizer.state_dict() if optimizer is not None else None, optimizer, groups, state
        )
        state_dict.update(extra)
        metadata[training.FIELD] = json.dumps(info)
    tensors, aliases = _dedupe(state_dict)
    metadata["aliases"] = json.dumps(aliases)
    _write(path, FORMAT, tensors, metadata)


def load_single(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    *,
    allow_targets: Sequence[str] | None = None,
    resolvers: Collection[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: MutableMapping[str, Any] | None = None,
) -> nn.Module:
    """``load_checkpoint`` of one file, within the current budgets (see there)."""
    metadata, tensors = read_tensors(path, FORMAT, map_location, verify)
    if "recipe" not in metadata:
        raise CheckpointError(f"{path}: holds weights only, no recipe: build the model yourself and use load_weights")
    info = json_field(metadata, training.FIELD, dict, path, default="{}")
    if optimizer is not None:
        training.require(info, path)
    weights = {k: v for k, v in tensors.items() if not training.is_training_key(k)}
    allow = (*DEFAULT_TARGETS, *(allow_targets or ()))
    recipe, stored, model, frozen = rebuild(metadata["recipe"], allow, torch.device(map_location), path, resolvers)
    check_keys(model, weights, path)
    if optimizer is not None:
        shapes = {name: p.shape for name, p in model.named_parameters()}
        groups = training.check_optimizer(info, optimizer, shapes, path)
    place(model, weights)
    schemes = json_field(metadata, "init_schemes", dict, path, default="{}")
    finish(model, frozen, BuildRecord(recipe, allow, schemes, stored if stored is not recipe else None))
    if optimizer is not None or (state is not None and info):
        optimizer_state = training.restore(info, tensors, path, state)
        if optimizer is not None:
            training.rebind(optimizer, groups, dict(model.named_parameters()))
            training.load_optimizer(optimizer.load_state_dict, optimizer_state, path)
    return model


def rebuild_single_on_meta(path: str | os.PathLike, verify: bool = True) -> nn.Module:
    """The model a checkpoint file describes, on ``meta`` with its record and no weights: what
    ``python -m composer inspect`` summarizes when the file stores no summary.

    Raises:
        CheckpointError: as ``load_checkpoint``.
    """
    metadata = read_metadata(path, verify)
    if "recipe" not in metadata:
        raise CheckpointError(f"{path}: holds weights only, no recipe")
    meta = torch.device("meta")
    recipe, _, model, frozen = rebuild(metadata["recipe"], DEFAULT_TARGETS, meta, path)
    schemes = json_field(metadata, "init_schemes", dict, path, default="{}")
    finish(model, frozen, BuildRecord(recipe, DEFAULT_TARGETS, schemes))
    return model


def read_metadata(path: str | os.PathLike, verify: bool = True, *, limits: budget.LimitsArg = None) -> dict[str, str]:
    """The metadata a file stores (recipe, summary, init report, versions, all JSON or text),
    checked against its checksum when ``verify``; nothing is built.

    Raises:
        CheckpointError: not a composer file, corrupted, or a header past ``limits.header_bytes``.
    """
    with budget.using(limits):
        fd = open_checked(path)
        try:
            header = _read_header(fd, Path(path), FORMAT)
            metadata = header["__metadata__"]
            if verify:
                field, digest = _CHECKSUMS[metadata["format_version"]]
                if digest(_file_chunks(fd, header, field, Path(path))) != metadata.get(field):
                    raise CheckpointError(f"{path}: its data does not match its checksum: the file is corrupted")
        finally:
            os.close(fd)
    return metadata


def _file_chunks(fd: int, header: Mapping[str, Any], field: str, path: Path) -> Iterator[Any]:
    """What the checksum covers (``_chunks``), read from the file in pieces of 16 MiB: the
    metadata, then each key and its tensor's bytes, so a header is verified in bounded memory
    without loading a tensor."""
    start, size = 8 + struct.unpack("<Q", os.pread(fd, 8, 0))[0], os.fstat(fd).st_size
    fields = {k: v for k, v in header["__metadata__"].items() if k != field}
    view = memoryview(bytearray(_PIECE))
    yield json.dumps(fields, sort_keys=True).encode()
    for key in sorted(k for k in header if k != "__metadata__"):
        entry = header[key]
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= size - start
        ):
            raise CheckpointError(f"{path}: the entry of {key!r} is malformed: the file is corrupted")
        yield key.encode()
        at, end = start + offsets[0], start + offsets[1]
        while at < end:
            got = os.preadv(fd, [view[: min(_PIECE, end - at)]], at)  # one buffer, reused: no page faults
            if not got:
                raise CheckpointError(f"{path}: truncated: the file is corrupted")
            at += got
            yield view[:got]


def save_tensors(obj: Any, path: str | os.PathLike) -> None:
    """Tensors and plain values (``None``, bool, int, float, str) nested in lists, tuples and dicts
    (str or int keys: an optimizer's ``state_dict``), in one file; ``load_tensors`` returns it exactly.

    Raises:
        TypeError: a value of another type, named by its key path (``state[0].step: a set``).
        CheckpointError: the file cannot be written.
    """
    flat: dict[str, torch.Tensor] = {}

    def store(_where: str, tensor: torch.Tensor) -> str:
        key = str(len(flat))
        flat[key] = tensor
        return key

    structure = flatten(obj, store)
    tensors, aliases = _dedupe(flat)
    _write(path, TENSORS_FORMAT, tensors, {"structure": json.dumps(structure), "aliases": json.dumps(aliases)})


def load_tensors(path: str | os.PathLike, *, limits: budget.LimitsArg = None) -> Any:
    """What ``save_tensors`` wrote: same structure (int keys, tuples), dtypes, shapes and values."""
    with budget.using(limits):
        metadata, flat = read_tensors(path, TENSORS_FORMAT, "cpu", verify=True)
    try:
        return unflatten(json_field(metadata, "structure", dict, path), flat)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: its structure does not match its tensors: the file is corrupted") from None


# --- file format ------------------------------------------------------------------------------


def _write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    metadata = {
        "format": kind,
        "format_version": FORMAT_VERSION,
        "composer_version": version(),
        "torch_version": torch.__version__,
        **metadata,
    }
    field, digest = _CHECKSUMS[FORMAT_VERSION]
    metadata[field] = "?" * len(digest(_chunks({}, metadata, field)))  # as wide as the digest that replaces it
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
    # Tensors whose size is a multiple of 64 bytes first: each of them then starts aligned (an
    # optimizer's 4-byte step counters in key order would leave every tensor after them misaligned,
    # to be copied on load); the checksum covers keys in name order, whatever the layout.
    keys = sorted(tensors, key=lambda k: (tensors[k].numel() * tensors[k].element_size() % _ALIGN != 0, k))
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
        pending = pool.submit(lambda: digest(_chunks(tensors, metadata, field)))
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


def read_tensors(
    path: str | os.PathLike, kind: str, device: str | torch.device, verify: bool
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A ``kind`` file's metadata and tensors: the header checked, the tensors loaded onto
    ``device``, their checksum verified (with ``verify``), and aliased (tied) keys restored.

    Raises:
        CheckpointError: not a ``kind`` file, unreadable, corrupted, or a header past the budget.
    """
    fd = open_checked(path)
    try:
        metadata = _read_metadata(fd, Path(path), kind)
        try:
            tensors = load_file(fd_path(fd, path), device="cpu" if verify else str(device))
        except (SafetensorError, OSError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{path}: corrupted or truncated ({e})") from None
    finally:
        os.close(fd)
    field, digest = _CHECKSUMS[metadata["format_version"]]
    if verify and digest(_chunks(tensors, metadata, field)) != metadata.get(field):
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


def _read_metadata(fd: int, path: Path, kind: str) -> dict[str, str]:
    """The header's metadata, read within ``limits.header_bytes`` (a 60 MB header of ``{}``
    would take 1.6 GB to parse)."""
    return _read_header(fd, path, kind)["__metadata__"]


def _read_header(fd: int, path: Path, kind: str) -> dict[str, Any]:
    """The header (tensor entries and ``__metadata__``), its metadata checked (``_read_metadata``)."""
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
        found, readable = metadata.get("format_version"), ", ".join(_CHECKSUMS)
        raise CheckpointError(f"{path}: format version {found} is not supported (composer reads {readable})")
    return header


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


def _crc32(chunks: Iterable[Any]) -> str:
    """Format 2's checksum: CRC-32, in ten decimal digits."""
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return f"{crc:010d}"


def _xxh3(chunks: Iterable[Any]) -> str:
    """Format 3's checksum: xxh3-64, several times faster than CRC-32, in 16 hex digits."""
    state = xxhash.xxh3_64()
    for chunk in chunks:
        state.update(chunk)
    return state.hexdigest()


# format version -> (metadata field, checksum of what ``_chunks`` yields): every version this composer reads
_CHECKSUMS: dict[str, tuple[str, Callable[[Iterable[Any]], str]]] = {
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
