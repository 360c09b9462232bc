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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


# What a layer's constructor calls to fill its tensors: the torch.nn.init functions (which hand
# themselves to a TorchFunctionMode whole) and the in-place fills that resets use.
_FILLS = frozenset(
    {getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")}
    | {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.fill_, torch.Tensor.zero_}
)


class _SkipFills(TorchFunctionMode):
    """Default fills are no-ops inside, except while ``paused`` (a user's block constructs)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _FILLS and not self.paused:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


_active: list[_SkipFills] = []


@contextlib.contextmanager
def skipping_fills(device: torch.device) -> Iterator[None]:
    """Construct on ``device`` with the default fills of known classes skipped: their tensors are
    allocated (nothing is written, so untouched pages cost nothing) and filled once afterwards."""
    mode = _SkipFills()
    with torch.device(device) if device.type != "cpu" else contextlib.nullcontext(), mode:
        _active.append(mode)
        try:
            yield
        finally:
            _active.pop()


@contextlib.contextmanager
def own_fills() -> Iterator[None]:
    """Inside ``skipping_fills``: let a constructor fill its tensors (a user's block, whose reset
    may not refill all it made)."""
    if not _active:
        yield
        return
    _active[-1].paused += 1
    try:
        yield
    finally:
        _active[-1].paused -= 1
