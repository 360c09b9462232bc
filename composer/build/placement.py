"""Where and how a build makes its tensors: empty, to be filled once afterwards, or as
constructors fill them; on ``meta`` or for real.

The one home of those choices; the builder, the pipeline and checkpoint loading ask it.

A build constructs layers with their default fills skipped (``skipping_fills``): a ``Linear``
allocates its weight and leaves it empty, and initialization then fills every tensor once from
its own stream. A load constructs on ``meta`` (no memory, no draws) and takes every tensor from
the file. Both work only where something refills each tensor: torch.nn's classes and composer's
own are known to reset every tensor they hold. A user's block is built for real, as written: its
constructor may compute from data, or make a constant its reset leaves alone.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

KNOWN_RESETS = ("torch.nn.", "composer.")


def resets_itself(cls: type) -> bool:
    """Whether ``cls`` is known to refill every tensor it holds from its reset."""
    return cls.__module__.startswith(KNOWN_RESETS)


def reset_method(module: nn.Module) -> Callable[[], None] | None:
    """The module's own reset of its tensors (``MultiheadAttention`` names it ``_reset_parameters``)."""
    return getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)


def holds_meta(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether any of ``tensors`` (None slots allowed, as in ``module._buffers``) is on ``meta``."""
    return any(t is not None and t.is_meta for t in tensors)


def can_load_on_meta(model: nn.Module) -> bool:
    """Whether a file can fill every tensor of a ``meta`` build: a non-persistent buffer, which a
    file does not hold, must be made for real."""
    return not any(
        holds_meta(b for n, b in m._buffers.items() if n in m._non_persistent_buffers_set) for m in model.modules()
    )


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first tensor lives (CPU for a model without any)."""
    return next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))


# --- skipping the default fills of known layers ------------------------------------------------

_local = threading.local()  # per thread: a build here skips nothing in another thread


def skipping() -> bool:
    """Whether this thread is inside ``skipping_fills`` (and not in ``own_fills``)."""
    return getattr(_local, "builds", 0) > 0 and getattr(_local, "paused", 0) == 0


def _skippable(fill: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fill`` as it is, except inside ``skipping_fills`` in this thread: there it returns its
    tensor untouched."""

    @functools.wraps(fill)
    def maybe_fill(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor if skipping() else fill(tensor, *args, **kwargs)

    maybe_fill.composer_skippable = True  # type: ignore[attr-defined]
    return maybe_fill


# The torch.nn.init functions, wrapped once: layers call them through the module at reset time
# (``init.kaiming_uniform_(self.weight, ...)``), so a build can skip them, as transformers'
# ``no_init_weights`` does, but per thread and without swapping them in and out. Outside a build
# they behave as before.
for _name in [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]:
    _fill = getattr(nn.init, _name)
    if callable(_fill) and not getattr(_fill, "composer_skippable", False):
        setattr(nn.init, _name, _skippable(_fill))


def skip_reset(owner: type, name: str) -> Callable[[nn.Module], None]:
    """Make ``owner.name`` (a layer's reset) a no-op inside ``skipping_fills`` in this thread, as the
    ``torch.nn.init`` functions are; for the layers whose every tensor initialization then writes
    (``init_defaults``): their reset's own bookkeeping (fans, bounds, calls) is skipped too.
    Returns the wrapped reset."""
    reset = getattr(owner, name)
    if getattr(reset, "composer_skippable", False):
        return reset

    @functools.wraps(reset)
    def maybe_reset(self: nn.Module) -> None:
        if not skipping():
            reset(self)

    maybe_reset.composer_skippable = True  # type: ignore[attr-defined]
    setattr(owner, name, maybe_reset)
    return maybe_reset


@contextlib.contextmanager
def skipping_fills(device: torch.device) -> Iterator[None]:
    """Construct on ``device`` with the ``torch.nn.init`` fills of known classes skipped, and the
    resets of the layers whose every tensor initialization writes (``skip_reset``): their tensors
    are allocated (nothing is written, so untouched pages cost nothing) and filled once
    afterwards, each from its own stream."""
    _local.builds = getattr(_local, "builds", 0) + 1
    try:
        with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
            yield
    finally:
        _local.builds -= 1


@contextlib.contextmanager
def own_fills() -> Iterator[None]:
    """Inside ``skipping_fills``: let a constructor fill its tensors (a user's block, whose reset
    may not refill all it made)."""
    _local.paused = getattr(_local, "paused", 0) + 1
    try:
        yield
    finally:
        _local.paused -= 1
