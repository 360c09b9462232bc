"""Checkpoints of sharded models: a ``torch.distributed.checkpoint`` (DCP) directory, read safely.

A checkpoint directory holds DCP's files (``.metadata`` and one ``__<rank>_<n>.distcp`` per rank)
and ``composer.json``: the format and its version, the recipe (JSON), the import allowlist, the
init report, the aliases of tied tensors (each stored once) and the CRC-32 of every other file and
of itself. Saving writes into a temporary sibling directory on every rank; once every rank has
finished and the checksums are in, rank 0 swaps it in for the old directory (an atomic exchange
where the OS has one), so a rank that dies mid-save leaves the previous checkpoint as it was.

Loading executes nothing from the directory. DCP's own reader unpickles ``.metadata`` and its
default planner reads non-tensor entries with ``torch.load(weights_only=False)``: here
``.metadata`` goes through an unpickler that builds only DCP's metadata classes, an entry that is
not a tensor is refused, and tensor data is read by DCP with ``torch.load(weights_only=True)``.
The model is rebuilt from the recipe, sharded over any mesh (DCP reshards: save with 2 ranks,
load with 3) or whole in one process.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import pickle
import shutil
import stat
import uuid
import warnings
import zlib
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import DeviceMesh

from composer import limits as budget
from composer.build.builder import DEFAULT_TARGETS
from composer.build.record import BuildRecord, finish, record_of
from composer.build.shard import mesh_device, shard, swapping_params
from composer.checkpoint import training
from composer.checkpoint.common import check_keys, json_depth, max_json_depth, place, rebuild, version
from composer.checkpoint.pickled import PickleShape, check_depth
from composer.errors import CheckpointError, ConfigError, printable
from composer.files import FileProblem, TooLarge, open_regular, read_regular
from composer.recipe.parallel import parse_parallel

FORMAT = "composer-dcp-checkpoint"
FORMAT_VERSION = "1"
INFO = "composer.json"
_DCP_METADATA = ".metadata"
_MAX_DEPTH = 100  # of what .metadata's pickle builds: DCP's metadata nests fewer than 10 deep
_CHUNK = 16 * 1024 * 1024


# --- saving ------------------------------------------------------------------------------------------


def save_sharded(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: Mapping[str, Any] | None = None,
) -> None:
    """Write a sharded model to the directory ``path``; called on every rank of the process group.
    The optimizer's state goes through ``get_optimizer_state_dict`` (keyed by parameter name, its
    tensors sharded as the parameters are), its plain values and ``state`` into ``composer.json``
    with each rank's RNG states.

    Raises:
        CheckpointError: ``path`` exists and is not a checkpoint directory (it is never replaced),
            or a rank failed: the previous checkpoint at ``path`` is left as it was.
    """
    path = Path(path)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:  # one temporary name for all ranks, and one verdict on what sits at path now
        refusal, tmp = _on_rank0(lambda: (_refusal(path), path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))
    except OSError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if refusal:
        raise CheckpointError(refusal)
    state_dict, aliases = _canonical(model)
    trained = _training_info(model, optimizer, state, state_dict)
    try:
        # DCP writes and syncs every rank's file, then rank 0 writes .metadata, before save returns
        dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True, overwrite=False))
        files = _on_rank0(lambda: sorted(p.name for p in tmp.iterdir() if p.suffix == ".distcp"))
        every: list = [None] * world  # each rank checksums a share of the files
        dist.all_gather_object(every, _crcs(tmp, files[rank::world]))
        crcs = {name: crc for part in every for name, crc in part.items()}
        failed = [f"{name}: {crc}" for name, crc in crcs.items() if isinstance(crc, str)]
        if failed:
            raise OSError("; ".join(failed))
        info = _info(model, aliases, {**crcs, **_crcs(tmp, [_DCP_METADATA])}, world)
        if trained is not None:
            info[training.FIELD] = trained
        _on_rank0(lambda: _write_info(tmp, info))
        _on_rank0(lambda: _swap_in(tmp, path))
    except (CheckpointException, RuntimeError, OSError) as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: saving failed, the previous checkpoint is kept: {_reason(e)}") from None


def _training_info(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: Mapping[str, Any] | None,
    state_dict: dict[str, torch.Tensor],
) -> dict[str, Any] | None:
    """The training state's JSON part (its tensors added to ``state_dict``), with every rank's RNG
    states (``rng_ranks``); ``None`` without an optimizer or a state."""
    if optimizer is None and state is None:
        return None
    osd, groups = None, None
    if optimizer is not None:
        training.slots(model, optimizer)  # every slot is one of the model's parameters
        osd = get_optimizer_state_dict(model, optimizer)
        groups = [list(group["params"]) for group in osd["param_groups"]]
    tensors, info = training.capture(osd, optimizer, groups, state)
    state_dict.update(tensors)
    ranks: list = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, info.pop("rng"))
    info["rng_ranks"] = ranks
    return info


def _on_rank0(action: Callable[[], Any]) -> Any:
    """``action()`` on rank 0, its result (or its failure, raised on every rank) sent to all."""
    outcome: list = [None]
    if dist.get_rank() == 0:
        try:
            outcome = [("ok", action())]
        except OSError as e:
            outcome = [("failed", f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(outcome, src=0)
    status, value = outcome[0]
    if status == "failed":
        raise OSError(value)
    return value


def _crcs(folder: Path, names: Sequence[str]) -> dict[str, int | str]:
    """The CRC-32 of each file, or why it could not be read."""
    crcs: dict[str, int | str] = {}
    for name in names:
        try:
            crcs[name] = _crc_file(folder / name)
        except OSError as e:
            crcs[name] = f"cannot read: {e.strerror}"
    return crcs


def _refusal(path: Path) -> str | None:
    """Why ``path`` must not be replaced: anything there but an empty directory or a composer
    checkpoint directory, which is one whose ``composer.json`` says so (format and version) and
    which holds nothing beyond it and the files it lists. A folder that merely holds a file named
    ``composer.json`` (PHP's Composer writes one into every project) is never replaced."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink():
        names = set(os.listdir(path))
        if not names:
            return None
        try:
            listed = {INFO, *read_info(path, verify=False)["files"]}
        except CheckpointError:
            listed = set()
        if names <= listed:
            return None
    return f"{path} exists and is not a composer checkpoint directory: it is not replaced"


def _canonical(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each tied tensor once, and the other keys as aliases of it."""
    first: dict[int, str] = {}
    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
            state[key] = tensor.detach()
    return state, aliases


def _info(model: nn.Module, aliases: dict[str, str], crcs: dict[str, int], world: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "composer_version": version(),
        "torch_version": torch.__version__,
        "world_size": world,
        "aliases": aliases,
        "files": crcs,
    }
    record = record_of(model)
    if record is not None:
        # never what an enabled resolver read (``${oc.env:...}`` stays unresolved), as in a file
        info.update(
            recipe=record.recipe_to_store, allow_targets=list(record.allow_targets), init_schemes=record.schemes
        )
        if record.layout is not None:
            info["layout"] = record.layout
    return info


def _layout(info: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """The layout the saving ranks had (``shard.Layout.describe``), checked for its shape: it is
    only shown, but a crafted file must not make the summary fail."""
    layout = info.get("layout")
    if layout is None:
        return None
    strings = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    ok = (
        isinstance(layout, dict)
        and isinstance(layout.get("mesh"), dict)
        and isinstance(layout["mesh"].get("device"), str)
        and isinstance(layout["mesh"].get("shape"), list)
        and all(isinstance(n, int) for n in layout["mesh"]["shape"])
        and strings(layout["mesh"].get("dims"))
        and len(layout["mesh"]["dims"]) in (0, len(layout["mesh"]["shape"]))
        and strings(layout.get("units"))
        and isinstance(layout.get("policy"), dict)
        and set(layout["policy"]) == {"param_dtype", "reduce_dtype", "reshard_after_forward", "cpu_offload"}
        and isinstance(layout.get("tp"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in layout["tp"].items())
        and strings(layout.get("checkpoint"))
    )
    if not ok:
        raise CheckpointError(f"{path}: its layout field is malformed: the checkpoint is corrupted")
    return layout


def _write_info(folder: Path, info: dict[str, Any]) -> None:
    info = {**info, "crc32": _crc_info(info)}
    with open(folder / INFO, "w") as f:
        json.dump(info, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(folder)


def _crc_info(info: Mapping[str, Any]) -> int:
    return zlib.crc32(json.dumps({k: v for k, v in info.items() if k != "crc32"}, sort_keys=True).encode())


def _crc_file(path: Path) -> int:
    """The CRC-32 of a regular file (never a FIFO, a device or a symbolic link: ``OSError``)."""
    crc = 0
    try:
        fd = open_regular(path, follow=False)
    except FileProblem as e:
        raise OSError(errno.EINVAL, str(e), str(path)) from None
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the finished directory ``tmp`` at ``path``: renamed there if nothing is; else exchanged
    with the old one in one step (``renameat2(RENAME_EXCHANGE)`` on Linux), which is then removed."""
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp)  # the old checkpoint, now under the temporary name
    else:  # no atomic exchange here: a crash between the two renames leaves the old one at `old`
        old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the OS or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(e: BaseException) -> str:
    if isinstance(e, CheckpointException):
        failures = [f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in e.failures.items()]
        return "; ".join(failures) or str(e)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# --- loading -------------------------------------------------------------------------------------


def load_sharded(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    allow_targets: Sequence[str] | None = None,
    mesh: DeviceMesh | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: MutableMapping[str, Any] | None = None,
    resolvers: Collection[str] | None = None,
) -> nn.Module:
    """Rebuild the model of a checkpoint directory and load its weights: sharded over ``mesh``
    (called on every rank; any world size) or, without one, whole in this process; with
    ``optimizer`` or ``state``, its training state too (as ``load_checkpoint``).

    Raises:
        CheckpointError: not a composer checkpoint directory, corrupted (with ``verify``), weights
            only, a recipe that cannot be rebuilt, or keys that do not fit; an optimizer that does
            not fit the stored state.
    """
    path = Path(path)
    info = read_info(path, verify)
    sizes = _check_files(path, info)
    if verify:
        _verify_files(path, info, sharded=mesh is not None)
    metadata = read_dcp_metadata(path, info, sizes)
    if "recipe" not in info:
        raise CheckpointError(f"{path}: holds weights only, no recipe: build the model yourself and load it with DCP")
    allow = (*DEFAULT_TARGETS, *(allow_targets or ()))
    device = mesh_device(mesh) if mesh is not None else torch.device(map_location)
    recipe, as_stored, model, frozen = rebuild(json.dumps(info["recipe"]), allow, device, path, resolvers)
    every = _stored_shapes(metadata, info["aliases"], path)
    stored = {k: v for k, v in every.items() if not training.is_training_key(k)}
    trained = info.get(training.FIELD)
    if optimizer is not None:
        training.require(trained, path)
    check_keys(model, stored, path)
    if optimizer is not None:
        groups = training.check_optimizer(trained, optimizer, {n: p.shape for n, p in model.named_parameters()}, path)
    layout = _load_weights(path, info, metadata, model, stored, mesh, frozen, device)
    kept = as_stored if as_stored is not recipe else None
    finish(model, frozen, BuildRecord(recipe, allow, info.get("init_schemes", {}), kept, layout))
    if isinstance(trained, dict) and (optimizer is not None or state is not None):
        if optimizer is not None:
            training.rebind(optimizer, groups, dict(model.named_parameters()))
        _load_training(path, info, metadata, model, optimizer, state, every, no_dist=mesh is None)
    return model


def _load_weights(
    path: Path,
    info: Mapping[str, Any],
    metadata: Metadata,
    model: nn.Module,
    stored: Mapping[str, torch.Tensor],
    mesh: DeviceMesh | None,
    frozen: list[nn.Module],
    device: torch.device,
) -> dict[str, Any] | None:
    """The stored weights into the rebuilt model: sharded over ``mesh`` (returns its layout), or whole."""
    if mesh is not None:
        layout = _shard_for_load(model, info["recipe"], mesh, frozen, device, path)
        weights, _ = _canonical(model)
        _read(path, info, metadata, weights, no_dist=False)
        return layout
    weights = {
        k: torch.empty(t.shape, dtype=t.dtype, device=device) for k, t in stored.items() if k not in info["aliases"]
    }
    _read(path, info, metadata, weights, no_dist=True)
    weights.update({alias: weights[key] for alias, key in info["aliases"].items()})
    place(model, weights)
    return None


def _load_training(
    path: Path,
    info: Mapping[str, Any],
    metadata: Metadata,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: MutableMapping[str, Any] | None,
    shapes: Mapping[str, torch.Tensor],
    no_dist: bool,
) -> None:
    """Read the training state into tensors shaped as this rank needs them: the optimizer's as
    ``get_optimizer_state_dict`` lays them out for the (re)sharded model, the user's whole."""
    trained = dict(info[training.FIELD])
    ranks = trained.pop("rng_ranks", None)
    if isinstance(ranks, list) and ranks:
        rank = dist.get_rank() if not no_dist else 0
        trained["rng"] = ranks[rank] if len(ranks) == (1 if no_dist else dist.get_world_size()) else ranks[0]
    tensors: dict[str, torch.Tensor] = {
        key: torch.empty(t.shape, dtype=t.dtype)
        for key, t in shapes.items()
        if training.is_training_key(key) and not key.startswith(training.OPTIMIZER + ".")
    }
    if optimizer is not None:
        tensors.update(training.optimizer_tensors(get_optimizer_state_dict(model, optimizer)))
    _read(path, info, metadata, tensors, no_dist=no_dist)
    optimizer_state = training.restore(trained, tensors, path, state)
    if optimizer is not None:
        training.load_optimizer(lambda osd: set_optimizer_state_dict(model, optimizer, osd), optimizer_state, path)


def rebuild_sharded_on_meta(path: str | os.PathLike, verify: bool = True) -> nn.Module:
    """The model a checkpoint directory describes, on ``meta`` with its record and no weights:
    what ``python -m composer inspect DIR`` summarizes reading ``composer.json`` and
    ``.metadata`` only (``verify``: their checksums; the shards, which it does not read, are not
    checked, nor opened)."""
    path = Path(path)
    info = read_info(path, verify)
    sizes = _check_files(path, info)
    if verify:
        _verify_files(path, info, sharded=False, only=[_DCP_METADATA])
    if "recipe" not in info:
        raise CheckpointError(f"{path}: holds weights only, no recipe")
    metadata = read_dcp_metadata(path, info, sizes)
    _, _, model, frozen = rebuild(json.dumps(info["recipe"]), DEFAULT_TARGETS, torch.device("meta"), path)
    every = _stored_shapes(metadata, info["aliases"], path)
    stored = {k: v for k, v in every.items() if not training.is_training_key(k)}
    check_keys(model, stored, path)
    place(model, stored)
    record = BuildRecord(info["recipe"], DEFAULT_TARGETS, info.get("init_schemes", {}), layout=_layout(info, path))
    finish(model, frozen, record)
    return model


def read_info(path: Path, verify: bool) -> dict[str, Any]:
    """``composer.json``, its fields checked (and its CRC, with ``verify``): a regular file inside
    the directory (no symbolic link, FIFO or device), within ``limits.header_bytes``, nesting no
    deeper than a stored value may (``common.max_json_depth``)."""
    limit, file = budget.current().header_bytes, Path(path) / INFO
    if file.is_symlink():  # a link may point anywhere: a checkpoint's files are its own
        raise CheckpointError(f"{path}: {INFO} is a symbolic link: refused")
    try:
        info = json.loads(read_regular(file, limit, follow=False))  # a FIFO or a device is refused, not read
    except TooLarge as e:
        what = f"its {e.size:,} bytes"
        raise CheckpointError(f"{path}: {INFO}: {budget.exceeded('header_bytes', what, limit)}") from None
    except FileProblem as e:
        raise CheckpointError(f"{path}: {INFO}: {e}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a composer checkpoint directory (no {INFO})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {INFO}: {e.strerror}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, a 5,000-digit number
        raise CheckpointError(f"{path}: {INFO} is not valid JSON: the checkpoint is corrupted") from None
    if json_depth(info) > max_json_depth() + 2:  # the recipe or training state, in composer.json
        raise CheckpointError(f"{path}: {INFO} nests too deeply: the checkpoint is corrupted")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a composer checkpoint directory")
    if info.get("format_version") != FORMAT_VERSION:
        found = printable(repr(info.get("format_version")))[:40]
        raise CheckpointError(f"{path}: format version {found} is not supported (this composer reads {FORMAT_VERSION})")
    if verify and info.get("crc32") != _crc_info(info):
        raise CheckpointError(f"{path}: {INFO} does not match its checksum: the checkpoint is corrupted")
    _check_fields(path, info)
    return info


def _check_fields(path: Path, info: dict[str, Any]) -> None:
    """Each field composer reads has the type it writes: a crafted file is a ``CheckpointError``,
    never a ``TypeError`` or ``AttributeError`` later."""
    kinds = {
        "aliases": dict, "files": dict, "recipe": dict, "allow_targets": list, "init_schemes": dict,
        "world_size": int, training.FIELD: dict,
    }  # fmt: skip
    for key, kind in kinds.items():
        if key in info and not isinstance(info[key], kind) or key in ("aliases", "files") and key not in info:
            raise CheckpointError(f"{path}: its {key!r} field is missing or malformed: the checkpoint is corrupted")
    if any(not _plain_name(name) or not isinstance(crc, int) for name, crc in info["files"].items()):
        raise CheckpointError(f"{path}: its file list is malformed: the checkpoint is corrupted")
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in info["aliases"].items()):
        raise CheckpointError(f"{path}: its 'aliases' field is malformed: the checkpoint is corrupted")
    if not all(isinstance(t, str) for t in info.get("allow_targets", [])):
        raise CheckpointError(f"{path}: its 'allow_targets' field is malformed: the checkpoint is corrupted")


def _check_files(path: Path, info: Mapping[str, Any]) -> dict[str, int]:
    """Every file ``composer.json`` lists is a regular file in the directory (``lstat``: no
    symbolic link, FIFO or device); returns each one's size. DCP opens them by name later."""
    sizes = {}
    for name in info["files"]:
        try:
            mode = os.lstat(path / name)
        except OSError as e:
            raise CheckpointError(f"{path / name}: cannot read: {e.strerror}: the checkpoint is incomplete") from None
        if not stat.S_ISREG(mode.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode.st_mode) else "not a regular file"
            raise CheckpointError(f"{path / name}: {kind}: refused (a checkpoint's files are its own regular files)")
        sizes[name] = mode.st_size
    if _DCP_METADATA not in sizes:
        raise CheckpointError(f"{path}: its file list does not name {_DCP_METADATA}: the checkpoint is corrupted")
    return sizes


def _plain_name(name: Any) -> bool:
    """A file directly inside the directory: no separator, no ``..``."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _verify_files(path: Path, info: dict[str, Any], sharded: bool, only: Collection[str] | None = None) -> None:
    """Each file's CRC-32 against ``composer.json`` (or those of ``only``); sharded, each rank
    checks a share of them."""
    names = sorted(only if only is not None else info["files"])
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    bad = []
    for name in names[rank::world]:
        try:
            if _crc_file(path / name) != info["files"][name]:
                bad.append(f"{name} does not match its checksum")
        except OSError as e:
            bad.append(f"{name}: {e.strerror}")
    if sharded:
        every: list = [None] * world
        dist.all_gather_object(every, bad)
        bad = [b for part in every for b in part]
    if bad:
        raise CheckpointError(f"{path}: {'; '.join(bad)}: the checkpoint is corrupted")


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, ``torch.Size``, dtypes, layouts and paths; nothing else."""

    ALLOWED = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorProperties", "TensorStorageMetadata",
            "BytesStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch": {"Size"},
        "torch.serialization": {"_get_layout"},
        "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
        "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
        "collections": {"OrderedDict"},
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if name in self.ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_dcp_metadata(path: Path, info: Mapping[str, Any], sizes: Mapping[str, int] | None = None) -> Metadata:
    """DCP's ``.metadata``, unpickled with only DCP's own classes: a regular file within
    ``limits.metadata_bytes`` (unpickled, a byte may cost 80; checked, a microsecond), its opcodes
    checked first for how deeply they nest (``pickled``); each
    shard entry names a file ``composer.json`` lists, at a place inside it (``sizes``: each listed
    file's size, from ``_check_files``)."""
    sizes = _check_files(path, info) if sizes is None else sizes
    limit = budget.current().metadata_bytes
    try:
        data = read_regular(Path(path) / _DCP_METADATA, limit, follow=False)
        check_depth(data, _MAX_DEPTH)
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except TooLarge as e:
        what = f"its {e.size:,} bytes"
        raise CheckpointError(f"{path}: {_DCP_METADATA}: {budget.exceeded('metadata_bytes', what, limit)}") from None
    except (FileProblem, PickleShape) as e:
        raise CheckpointError(f"{path}: {_DCP_METADATA}: {e}: refused") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {_DCP_METADATA}: {e.strerror}") from None
    except Exception as e:  # a crafted or truncated pickle: whatever it raises, nothing it names ran
        why = printable(f"{type(e).__name__}: {e}", keep_newlines=False)[:200]
        raise CheckpointError(f"{path}: {_DCP_METADATA} is not DCP metadata ({why})") from None
    _check_metadata(path, metadata, sizes)
    return metadata


def _check_metadata(path: Path, metadata: Any, sizes: Mapping[str, int]) -> None:
    """What composer and DCP read of the metadata has DCP's types, and each stored range lies
    inside a file ``composer.json`` lists: a crafted entry is a ``CheckpointError``."""
    bad = f"{path}: {_DCP_METADATA} is not DCP metadata"
    if not (
        isinstance(metadata, Metadata)
        and isinstance(metadata.storage_data, dict)
        and isinstance(metadata.state_dict_metadata, dict)
    ):
        raise CheckpointError(bad)
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{bad}: a key is not a string")
        if isinstance(entry, TensorStorageMetadata) and not _tensor_entry(entry):
            raise CheckpointError(f"{bad}: entry {printable(key)!r} is malformed")
    for entry in metadata.storage_data.values():
        name = getattr(entry, "relative_path", None)
        if not isinstance(entry, _StorageInfo) or not isinstance(name, str):
            raise CheckpointError(f"{bad}: a storage entry is malformed")
        if name not in sizes:
            listed = printable(repr(name))[:100]
            raise CheckpointError(f"{path}: {_DCP_METADATA} names a file composer.json does not list: {listed}")
        offset, length = entry.offset, entry.length
        if not (_count(offset) and _count(length) and offset + length <= sizes[name]):
            raise CheckpointError(
                f"{path}: {_DCP_METADATA} names bytes beyond the end of {name}: the checkpoint is corrupted"
            )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(entry: TensorStorageMetadata) -> bool:
    """A tensor's entry: its shape and dtype, and its chunks' offsets and sizes, as DCP writes them."""
    shape = lambda v: isinstance(v, tuple) and all(_count(n) for n in v)  # noqa: E731
    return (
        shape(entry.size)
        and isinstance(entry.properties, TensorProperties)
        and isinstance(entry.properties.dtype, torch.dtype)
        and isinstance(entry.chunks, list)
        and all(
            isinstance(c, ChunkStorageMetadata)
            and shape(c.offsets)
            and shape(c.sizes)
            and len(c.offsets) == len(c.sizes) == len(entry.size)
            for c in entry.chunks
        )
    )


def _stored_shapes(metadata: Metadata, aliases: Mapping[str, str], path: Path) -> dict[str, torch.Tensor]:
    """Each stored key (aliases too) as a ``meta`` tensor of its stored shape and dtype."""
    shapes = {}
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{path}: entry {key!r} is not a tensor: composer checkpoints hold tensors only")
        shapes[key] = torch.empty(torch.Size(entry.size), dtype=entry.properties.dtype, device="meta")
    for alias, key in aliases.items():
        if key not in shapes:
            raise CheckpointError(
                f"{path}: alias {alias!r} names a missing tensor {key!r}: the checkpoint is corrupted"
            )
        shapes[alias] = shapes[key]
    return shapes


def _shard_for_load(
    model: nn.Module, recipe: dict, mesh: DeviceMesh, frozen: list[nn.Module], device: torch.device, path: Path
) -> dict[str, Any]:
    """Shard the rebuilt tree and give its ``meta`` tensors this rank's storage (to be read into);
    return its layout. Tensors a user block made for real keep their values (non-persistent
    buffers are not stored)."""
    for module in frozen:
        module.requires_grad_(False)
    try:
        layout = shard(model, recipe.get("shard"), mesh, parse_parallel(recipe.get("parallel")))
    except ConfigError as e:
        plan = "; ".join(e.lines())
        raise CheckpointError(f"{path}: its recipe's shard or parallel plan does not fit this mesh: {plan}") from e
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        kept = [
            (m, n, b.clone()) for m in model.modules() for n, b in m._buffers.items() if b is not None and not b.is_meta
        ]
        with swapping_params():
            model.to_empty(device=device)
        with torch.no_grad():
            for module, name, value in kept:
                module._buffers[name].copy_(value)
    return layout


class _TensorsOnly(dcp.DefaultLoadPlanner):
    """DCP's default load planner, without its ``torch.load(weights_only=False)`` of non-tensor entries."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise CheckpointError(
            f"entry {read_item.dest_index.fqn!r} is not a tensor: composer checkpoints hold tensors only"
        )


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader, given the metadata composer read its own way."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._metadata


def _read(
    path: Path, info: Mapping[str, Any], metadata: Metadata, state: dict[str, torch.Tensor], no_dist: bool
) -> None:
    """Read the stored values into ``state``'s tensors (in place)."""
    try:
        with warnings.catch_warnings():  # no_dist: "assuming the intent is to load in a single process", it is
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, storage_reader=_SafeReader(path, metadata), planner=_TensorsOnly(), no_dist=no_dist)
    except CheckpointException as e:
        raise CheckpointError(f"{path}: loading failed: {_reason(e)}") from None
