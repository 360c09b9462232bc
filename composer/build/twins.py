"""Copies of a built leaf module for the identical nodes after it.

A recipe of 1,000 blocks names ``{type: Linear, in_features: 64, out_features: 64}`` 1,000 times.
Calling the constructor each time costs 18 µs a Linear (most of it ``nn.Module.__setattr__``); a
copy of the first one, with new empty tensors, costs 8 µs. A copy is made only where it is
provably what the constructor would make:

- inside a build that skips the default fills (``placement.skipping_fills``): the constructor
  would leave the tensors unwritten too, for initialization (or a checkpoint) to fill;
- a leaf class known to reset itself (``torch.nn``'s, composer's), not lazy;
- its state, beside ``nn.Module``'s own, plain values (numbers, strings, tuples, dtypes, devices,
  and lists of those, which are copied); no hook, no child, no non-persistent buffer;
- each of its tensors one that initialization writes, from the per-tensor defaults of its class
  (``init_defaults``). A class whose constructor makes a constant (``FixedHiddenMLP``'s random
  weight) is constructed each time;
- nothing watching construction: no global parameter, buffer or module registration hook
  (``torch.nn.modules.module.register_module_*_registration_hook``), no patched
  ``register_parameter``/``register_buffer``/``add_module`` (as ``accelerate.init_empty_weights``
  does), no wrapped or replaced constructor (as ``deepspeed.zero.Init`` does).

The copier takes its snapshot when it is made, right after the constructor returned: what
happens to that first module later (a user's block that freezes or wraps it) reaches no copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.modules.lazy import LazyModuleMixin

from composer.build.placement import resets_itself, skipping
from composer.init.defaults import default_table

# What nn.Module.__init__ makes: (name, type); its containers (hooks, children, tensors) are made
# anew, empty, in each copy.
_MODULE_STATE = {name: type(value) for name, value in nn.Module().__dict__.items()}
_CONTAINERS = {name: kind for name, kind in _MODULE_STATE.items() if kind in (dict, OrderedDict, set, list)}
_TENSORS = ("_parameters", "_buffers")
_PLAIN = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)
_REGISTRATION = ("register_parameter", "register_buffer", "add_module")
_GLOBAL_HOOKS = (
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
)

TensorSpec = tuple[str, torch.Size, torch.dtype, torch.device, bool]


def copier(module: nn.Module) -> Callable[[], nn.Module | None] | None:
    """A function making copies of ``module`` (just constructed) that equal what its constructor
    would make with the same arguments, up to the values of tensors initialization writes (or
    None, when a registration hook was set since); None where that cannot be shown."""
    cls = type(module)
    if not skipping() or not resets_itself(cls) or issubclass(cls, LazyModuleMixin):
        return None
    if _watched() or not _own_constructor(cls):
        return None
    state = module.__dict__
    if any(state[name] for name in _CONTAINERS if name not in _TENSORS):
        return None  # a child, a hook or a non-persistent buffer the constructor registered
    params = [(n, p) for n, p in module._parameters.items() if p is not None]
    buffers = [(n, b) for n, b in module._buffers.items() if b is not None]
    if params or buffers:
        table = default_table(module)
        if table is None or any(n not in table for n, _ in [*params, *buffers]):
            return None
    if any(type(p) is not nn.Parameter for _, p in params) or any(type(b) is not torch.Tensor for _, b in buffers):
        return None
    own = {name: value for name, value in state.items() if name not in _MODULE_STATE}
    if not all(_is_plain(value) for value in own.values()):
        return None
    # the state as the constructor left it, in its order; containers are made anew in each copy
    snapshot = {name: list(value) if type(value) is list else value for name, value in state.items()}
    param_specs = _specs(module._parameters)
    buffer_specs = _specs(module._buffers)
    return lambda: None if _hooked() else _copy(cls, snapshot, param_specs, buffer_specs)


def _watched() -> bool:
    """Whether something outside watches modules being made: a global registration hook, or
    ``register_parameter`` and its kin replaced (``accelerate.init_empty_weights``)."""
    return _hooked() or not all(_is_torchs(getattr(nn.Module, name), nn.Module, name) for name in _REGISTRATION)


def _hooked() -> bool:
    """Whether a global registration hook is set (checked again at each copy: a user's block
    constructed between two twins may set one)."""
    return any(getattr(torch_module, name, None) for name in _GLOBAL_HOOKS)


def _own_constructor(cls: type) -> bool:
    """Whether the ``__init__`` that ``cls`` runs is its library's own, not one wrapped or
    replaced from outside (``deepspeed.zero.Init`` wraps every module class's)."""
    owner = next(klass for klass in cls.__mro__ if "__init__" in vars(klass))
    return _is_torchs(vars(owner)["__init__"], owner, "__init__")


def _is_torchs(fn: Any, owner: type, name: str) -> bool:
    """Whether ``fn`` is ``owner.name`` as its module defines it: not a replacement, not a wrapper."""
    return (
        getattr(fn, "__module__", None) == owner.__module__
        and getattr(fn, "__qualname__", None) == f"{owner.__qualname__}.{name}"
        and not hasattr(fn, "__wrapped__")
    )


def _is_plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(type(v) in _PLAIN for v in value)  # one level: torch's layers keep flat lists
    return type(value) in _PLAIN


def _specs(tensors: dict[str, torch.Tensor | None]) -> list[tuple[str, TensorSpec | None]]:
    return [
        (name, None if t is None else (name, t.shape, t.dtype, t.device, t.requires_grad))
        for name, t in tensors.items()
    ]


def _copy(
    cls: type[nn.Module],
    snapshot: dict[str, Any],
    param_specs: list[tuple[str, TensorSpec | None]],
    buffer_specs: list[tuple[str, TensorSpec | None]],
) -> nn.Module:
    copy = object.__new__(cls)
    state = dict(snapshot)
    for name, kind in _CONTAINERS.items():
        state[name] = kind()
    for name, value in snapshot.items():
        if type(value) is list:
            state[name] = list(value)
    state["_parameters"] = {
        name: None if spec is None else nn.Parameter(_empty(spec), requires_grad=spec[4]) for name, spec in param_specs
    }
    state["_buffers"] = {name: None if spec is None else _empty(spec) for name, spec in buffer_specs}
    copy.__dict__ = state
    return copy


def _empty(spec: TensorSpec) -> torch.Tensor:
    """A new tensor as the constructor makes it (``empty_like`` on ``meta`` imports sympy on first use)."""
    _, shape, dtype, device, _ = spec
    return torch.empty(shape, dtype=dtype, device=device)
