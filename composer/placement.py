"""Where a build makes its tensors: on ``meta``, to be filled once afterwards, or for real.

The one home of that choice; the builder, the pipeline, initialization and checkpoint loading ask
it. A model built on ``meta`` costs no memory and no random draws, and gets every tensor later:
from an initializer or its module's reset (a build), or from a file (a load). That works when
something can refill each tensor. torch.nn's classes and composer's own are known to reset every
tensor they hold; a user's block is checked once built: a buffer its class made (often a constant
its reset leaves alone) or a parameter without a reset sends it to a real build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

KNOWN_RESETS = ("torch.nn.", "composer.")

Purpose = Literal["init", "load"]


def resets_itself(cls: type) -> bool:
    """Whether ``cls`` is known to refill every tensor it holds from its reset."""
    return cls.__module__.startswith(KNOWN_RESETS)


def reset_method(module: nn.Module) -> Callable[[], None] | None:
    """The module's own reset of its tensors (``MultiheadAttention`` names it ``_reset_parameters``)."""
    return getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)


def holds_meta(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether any of ``tensors`` (None slots allowed, as in ``module._buffers``) is on ``meta``."""
    return any(t is not None and t.is_meta for t in tensors)


def needs_real_build(module: nn.Module) -> bool:
    """Whether a user block just built on ``meta`` holds a tensor nothing can refill: a buffer of a
    class not known to reset itself, or a parameter of a module without a reset."""
    for m in module.modules():
        if resets_itself(type(m)):
            continue
        if holds_meta(m._buffers.values()) or (holds_meta(m._parameters.values()) and reset_method(m) is None):
            return True
    return False


def cannot_reset(model: nn.Module) -> list[str]:
    """Classes that hold ``meta`` tensors of their own but have no reset to fill them."""
    return sorted({
        type(m).__name__ for m in model.modules()
        if holds_meta([*m._parameters.values(), *m._buffers.values()]) and reset_method(m) is None
    })  # fmt: skip


def can_defer(model: nn.Module, purpose: Purpose, may_be_lazy: bool) -> bool:
    """Whether a ``meta`` build of ``model`` can be completed for ``purpose``.

    ``init``: every module can reset its tensors, and no lazy layer waits for a shape (inferring
    it on ``meta`` would need a forward there, whose first call imports about 2 s of torch).
    ``load``: the file refills every persistent tensor; a non-persistent buffer it does not hold
    must be made for real.
    """
    if purpose == "load":
        return not any(
            holds_meta(b for n, b in m._buffers.items() if n in m._non_persistent_buffers_set) for m in model.modules()
        )
    lazy = may_be_lazy and any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules())
    return not lazy and not cannot_reset(model)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first tensor lives (CPU for a model without any)."""
    return next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
