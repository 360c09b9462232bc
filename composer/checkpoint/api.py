"""The checkpoint calls of the public API: a single file or, for a sharded model, a directory.

``file`` writes and reads one safetensors file; ``dcp`` a ``torch.distributed.checkpoint``
directory, imported only when a model is sharded or a path is a directory (importing
``torch.distributed.checkpoint`` costs a second a single-process user never pays).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from composer import limits as budget
from composer.checkpoint.common import is_sharded, last_resort
from composer.checkpoint.file import load_single, rebuild_single_on_meta, save_single
from composer.errors import CheckpointError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None = None,
    state: Mapping[str, Any] | None = None,
    *,
    summary: str | None = None,
) -> None:
    """Write weights and, for a built model, its recipe; with ``optimizer``/``state``, the training
    state too.

    Args:
        model: a model built by ``build_from_config`` (saved with its recipe, so
            ``load_checkpoint`` rebuilds it) or any other module (saved with its weights only). A
            sharded model (``DTensor`` parameters) is saved, by every rank, to a
            ``torch.distributed.checkpoint`` directory at ``path``.
        path: the file to write. It is written atomically: a crash at any point leaves the
            previous file or the new one, never a truncated one. The new file is written as
            ``.composer-<8 hex>.tmp`` in the same folder and renamed over ``path``; a temporary
            that a killed save left there is removed by the next save into that folder.
        optimizer: a ``torch.optim`` optimizer over the model's parameters: its state tensors are
            stored beside the weights, its plain values (``lr``, ``betas``, ...) as JSON, with
            which parameter each slot holds (by name). The RNG states (torch CPU, CUDA where
            available, Python's ``random``) are stored with it.
        state: the caller's own values (step, epoch, a scheduler's ``state_dict()``...): tensors
            and plain values nested in dicts and lists, returned by ``load_checkpoint(state=)``.
        summary: the model's summary table, stored for ``python -m composer inspect`` to show
            without rebuilding the model (the app stores the one it printed). Without one, none
            is stored and ``inspect`` summarizes the recipe rebuilt on ``meta``.

    Raises:
        ConfigError: lazy layers have no shapes yet.
        CheckpointError: the model is on the ``meta`` device, the optimizer holds tensors that
            are not the model's parameters, or the file cannot be written (no space left, too
            large for the file system: the previous file stays as it was; the ``OSError`` is the
            cause).
        TypeError: ``state`` holds a value that cannot be stored (named by its key path).
    """
    if is_sharded(model):
        from composer.checkpoint.dcp import save_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only when sharded)

        save_sharded(model, path, optimizer=optimizer, state=state)
        return
    save_single(model, path, summary=summary, optimizer=optimizer, state=state)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: MutableMapping[str, Any] | None = None,
    allow_targets: Sequence[str] | None = None,
    mesh: DeviceMesh | None = None,
    limits: budget.LimitsArg = None,
    resolvers: Collection[str] | None = None,
) -> nn.Module:
    """Rebuild the model from the recipe inside the file and load its weights strictly; with
    ``optimizer``, resume its training state.

    Ties come back, outputs equal the saved model's bit for bit, and no initializer runs. Training
    resumed with ``optimizer`` (and the same data) is bitwise equal to training that never stopped.

    Args:
        path: a checkpoint written by ``save_checkpoint``: a file, or a sharded model's directory.
        map_location: the device the weights are placed on.
        verify: check the stored checksum of the data and metadata first.
        optimizer: an optimizer of the type saved, with the same parameter groups (built over a
            model of the same recipe: ``build_from_config(recipe, device="meta")`` will do). Its
            slots are pointed at the returned model's parameters, its state is the stored one, and
            the RNG states are restored: train the returned model.
        state: a dict updated in place with the ``state`` that was saved (the RNG states are
            restored too).
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
        CheckpointError: not a checkpoint, corrupted, weights only, a budget exceeded, a recipe
            that cannot be rebuilt (an unregistered type: import the module that registers it
            first); with ``optimizer``: no training state stored, or an optimizer of another
            type or with other groups (the message says which). Any other exception raised on the
            way (by a crafted file, a registered block's constructor, torch, a bug of ours) is a
            CheckpointError naming the path, the exception as its ``__cause__`` (a ConfigError
            stays one; ``MemoryError``, ``KeyboardInterrupt`` and ``SystemExit`` pass through).
    """
    with last_resort(path):
        return _load(path, map_location, verify, optimizer, state, allow_targets, mesh, limits, resolvers)


def _load(
    path: str | os.PathLike,
    map_location: str | torch.device,
    verify: bool,
    optimizer: torch.optim.Optimizer | None,
    state: MutableMapping[str, Any] | None,
    allow_targets: Sequence[str] | None,
    mesh: DeviceMesh | None,
    limits: budget.LimitsArg,
    resolvers: Collection[str] | None,
) -> nn.Module:
    with budget.using(limits):
        if Path(path).is_dir():
            from composer.checkpoint.dcp import load_sharded  # noqa: PLC0415  (torch.distributed.checkpoint: only for directories)

            return load_sharded(
                path, map_location, verify, allow_targets, mesh, optimizer=optimizer, state=state, resolvers=resolvers
            )
        if mesh is not None:
            raise CheckpointError(
                f"{path}: a single-file checkpoint loads whole; a checkpoint directory loads with a mesh"
            )
        return load_single(
            path,
            map_location,
            verify,
            allow_targets=allow_targets,
            resolvers=resolvers,
            optimizer=optimizer,
            state=state,
        )


def rebuild_on_meta(path: str | os.PathLike, verify: bool = True) -> nn.Module:
    """The model a checkpoint (file or directory) describes, rebuilt on ``meta`` with its record
    and no weights read: for describing it without running it on data.

    Raises:
        CheckpointError: as ``load_checkpoint``.
    """
    with last_resort(path):
        if Path(path).is_dir():
            from composer.checkpoint.dcp import rebuild_sharded_on_meta  # noqa: PLC0415

            return rebuild_sharded_on_meta(path, verify)
        return rebuild_single_on_meta(path, verify)
