"""Copies of a built leaf module for the identical nodes after it.

A recipe of 1,000 blocks names ``{type: Linear, in_features: 64, out_features: 64}`` 1,000 times.
Calling the constructor each time costs 18 µs a Linear (most of it ``nn.Module.__setattr__``); a
copy of the first one with new empty tensors costs 8 µs. A copy is made only where it is provably
what the constructor would make:

- a leaf class known to reset itself (``torch.nn``'s, composer's), not lazy;
- its state, beside ``nn.Module``'s own, plain values (numbers, strings, tuples, dtypes, devices,
  and lists of those, which are copied); no hook, no child, no non-persistent buffer;
- each of its tensors one that initialization writes, from the per-tensor defaults of its class
  (``init_defaults``): what the constructor would have put there is overwritten anyway. A class
  whose constructor makes a constant (``FixedHiddenMLP``'s random weight) is constructed each time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from composer.init_defaults import default_table
from composer.placement import resets_itself

# What nn.Module.__init__ makes: (name, type); the containers among them are made anew in a copy.
_MODULE_STATE = {name: type(value) for name, value in nn.Module().__dict__.items()}
_PLAIN = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)


def copier(module: nn.Module) -> Callable[[], nn.Module] | None:
    """A function making copies of ``module`` (just constructed) that equal what its constructor
    would make with the same arguments, up to the values of tensors initialization writes; None
    where that cannot be shown."""
    cls = type(module)
    if not resets_itself(cls) or issubclass(cls, LazyModuleMixin) or module._modules:
        return None
    state = module.__dict__
    for name, kind in _MODULE_STATE.items():
        if kind in (OrderedDict, set) and state[name]:
            return None  # a hook or a non-persistent buffer the constructor registered
    tensors = [(n, t) for n, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
    if tensors:
        table = default_table(module)
        if table is None or any(n not in table for n, _ in tensors):
            return None
    if any(type(p) is not nn.Parameter for p in module._parameters.values() if p is not None):
        return None
    if any(type(b) is not torch.Tensor for b in module._buffers.values() if b is not None):
        return None
    lists = [name for name, value in state.items() if name not in _MODULE_STATE and type(value) is list]
    if not all(_is_plain(value) for name, value in state.items() if name not in _MODULE_STATE):
        return None
    return lambda: _copy(module, lists)


def _is_plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return type(value) in _PLAIN


def _copy(original: nn.Module, lists: list[str]) -> nn.Module:
    copy = object.__new__(type(original))
    state = original.__dict__.copy()
    for name, kind in _MODULE_STATE.items():
        if kind is OrderedDict:
            state[name] = OrderedDict()
    state["_modules"] = {}
    state["_non_persistent_buffers_set"] = set()
    state["_parameters"] = {
        n: None if p is None else nn.Parameter(_empty(p), p.requires_grad) for n, p in original._parameters.items()
    }
    state["_buffers"] = {n: None if b is None else _empty(b) for n, b in original._buffers.items()}
    for name in lists:
        state[name] = list(state[name])
    copy.__dict__ = state
    return copy


def _empty(like: torch.Tensor) -> torch.Tensor:
    """A new tensor as the constructor makes it (``empty_like`` on ``meta`` imports sympy on first use)."""
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)
