"""Where a build makes its tensors, and whether their constructors fill them.

The one home of those choices; the builder, the pipeline and checkpoint loading ask it.

A build that initializes makes a torch.nn layer whose reset composer writes per tensor
(``init.defaults``: ``Linear``, convolutions, norms, embeddings, recurrent layers) on the build's
device without that reset (``maker(..., unfilled=True)``): its tensors hold what their memory
held, as after torchtitan's ``to_empty``, until initialization fills each once from its own
stream. Other known layers (torch.nn's and composer's own), and every known layer of a load or of
the arguments of a user's block, are constructed on ``meta``, as torchtune and torchtitan build:
no memory, no random draws; a build then gives each tensor real storage
(``materialize.allocate``, ties kept), a load takes it from the file. A user's block is built for
real, as written: its constructor may compute from data, or make a constant its reset leaves
alone.

Nothing of torch is replaced. A reset is left out for one construction only, by an attribute of
that instance (``construct_from_recipe``); the fills of resets that run on ``meta`` return at once
through a ``TorchFunctionMode`` (``free_meta_fills``), torch's own scoped, per-thread mechanism.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from composer.init.defaults import reset_method, written_reset
from composer.modules.signatures import arguments

KNOWN_RESETS = ("torch.nn.", "composer.")


def resets_itself(cls: type) -> bool:
    """Whether ``cls`` is known to refill every tensor it holds from its reset."""
    return cls.__module__.startswith(KNOWN_RESETS)


def holds_meta(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether any of ``tensors`` (None slots allowed, as in ``module._buffers``) is on ``meta``."""
    return any(t is not None and t.is_meta for t in tensors)


def can_load_on_meta(model: nn.Module) -> bool:
    """Whether a file can fill every tensor of a ``meta`` build: a non-persistent buffer, which a
    file does not hold, must be made for real."""
    return not any(
        holds_meta(b for n, b in m._buffers.items() if n in m._non_persistent_buffers_set) for m in model.modules()
    )


def each_module(model: nn.Module) -> list[nn.Module]:
    """``model.modules()``, in its order (pre-order, a shared module once), without the path
    strings ``named_modules`` formats for each module, which these walks do not read."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append(module)
        if module._modules:
            stack.extend(reversed([m for m in module._modules.values() if m is not None]))
    return out


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first tensor lives (CPU for a model without any)."""
    return next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))


# --- constructing on meta ------------------------------------------------------------------------

META = torch.device("meta")

# The fills that known layers' resets call (LayerNorm's ones_ and zeros_, MultiheadAttention's
# xavier_uniform_ included), through ``torch.nn.init`` (which hands them to a mode
# with ``handle_torch_function``) or as tensor methods. On ``meta`` each writes nothing, but
# ``uniform_`` and ``normal_`` run a Python decomposition there (about 23 µs a call, half the cost
# of constructing a small ``Linear`` on ``meta``).
_FILLS = frozenset({
    nn.init.uniform_, nn.init.normal_, nn.init.constant_, nn.init.kaiming_uniform_, nn.init.ones_, nn.init.zeros_,
    nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.trunc_normal_, nn.init.kaiming_normal_,
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.fill_, torch.Tensor.zero_,
})  # fmt: skip


class _FreeMetaFills(TorchFunctionMode):
    """Returns a fill of a ``meta`` tensor at once (it writes nothing there); runs every other call."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _FILLS:
            tensor = args[0] if args else (kwargs or {}).get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **(kwargs or {}))


def free_meta_fills() -> contextlib.AbstractContextManager:
    """Inside, in this thread, a fill of a ``meta`` tensor returns at once: what it would write
    is nothing, and skipping it makes a ``meta`` construction several times cheaper. Fills of
    real tensors (a user's block built for real) run as always."""
    return _FreeMetaFills()


@functools.cache
def takes_device(cls: type) -> bool:
    """Whether ``cls(...)`` takes a ``device`` keyword (torch.nn's layers make every tensor there):
    then it is placed by that keyword, without ``torch.device``'s mode around it."""
    read = arguments(cls)
    return read is not None and read.get("device") is not None


@functools.cache
def makes_no_tensors(cls: type) -> bool:
    """Whether ``cls`` is a torch.nn class that makes no tensor of its own: its arguments are known
    in full (``signatures.arguments``, the one reading of them) and hold no ``device``, which every
    torch.nn layer that makes tensors takes (an activation, a dropout, a pooling, a container)."""
    if not cls.__module__.startswith("torch.nn.") or takes_device(cls):
        return False
    read = arguments(cls)
    return read is not None and not (read.var_positional or read.var_keyword)


def _recipe_call() -> Callable[..., Any]:
    """``call(cls, args, kwargs, reset=None)``: ``cls(*args, **kwargs)`` from a frame whose file
    is ``<recipe>``; with ``reset``, the module's method of that name is left out of its
    construction, by an attribute of that one instance, removed once ``__init__`` returns.

    A constructor that warns about its arguments names its caller's line (``stacklevel=2``:
    ``nn.TransformerEncoder``'s "enable_nested_tensor is True, but ..."); called from here, the
    warning names the recipe that chose the arguments, not a line of composer. The warning itself
    is left to the user's filters."""
    source = (
        "def call(cls, args, kwargs, reset=None):\n"
        "    if reset is None:\n"
        "        return cls(*args, **kwargs)\n"
        "    module = cls.__new__(cls)\n"
        "    module.__dict__[reset] = _nothing\n"
        "    module.__init__(*args, **kwargs)\n"
        "    del module.__dict__[reset]\n"
        "    return module\n"
    )
    namespace: dict[str, Any] = {"_nothing": lambda: None}
    exec(compile(source, "<recipe>", "exec"), namespace)  # noqa: S102  (a constant source: no input reaches it)
    return namespace["call"]


construct_from_recipe = _recipe_call()

# Known layers whose constructors make modules of their own (MultiheadAttention's out_proj,
# Transformer's layers), whose resets run right there: made on ``meta``, where those fills are
# skipped, never unfilled on a device, where they would draw from the caller's generator.
MAKES_MODULES = (nn.MultiheadAttention, nn.Transformer)

Make = Callable[[Sequence, dict], Any]


def leaves_unfilled(cls: type) -> bool:
    """Whether ``maker(..., unfilled=True)`` makes ``cls`` without its reset: a known layer (never
    a user's subclass, whose constructor may read its tensors) whose reset ``init.defaults`` writes
    per tensor, made by plain ``__new__`` and ``__init__``, that makes no module of its own."""
    return resets_itself(cls) and _skippable_reset(cls) is not None and not issubclass(cls, MAKES_MODULES)


def maker(cls: type, device: torch.device, *, unfilled: bool = False) -> Make:
    """``make(args, kwargs)``: ``cls(*args, **kwargs)`` with its tensors on ``device``, the way
    to do it chosen once per class (a build makes a thousand of one class).

    On ``meta``: ``on_meta``. Elsewhere as the constructor fills them; with ``unfilled``, a class
    that ``leaves_unfilled`` is made without its reset, for a build whose initialization fills each
    tensor from ``init.defaults``' tables: the tensors hold whatever their memory held until then,
    as after ``to_empty``, and nothing is allocated twice."""
    if device.type == "meta":
        return functools.partial(on_meta, cls)
    if unfilled and leaves_unfilled(cls):
        return functools.partial(_made, cls, device=device, reset=_skippable_reset(cls))
    if device.type == "cpu":
        return functools.partial(construct_from_recipe, cls)
    return functools.partial(_in, device, cls)  # as written, torch.device's mode placing its tensors


def _in(device: torch.device, cls: type, args: Sequence, kwargs: dict[str, Any]) -> Any:
    with torch.device(device):
        return construct_from_recipe(cls, args, kwargs)


def on_meta(cls: type, args: Sequence, kwargs: dict[str, Any]) -> nn.Module:
    """``cls(*args, **kwargs)`` with its tensors on ``meta`` (a known layer: see the module).

    Where its reset is written per tensor (``defaults.written_reset``), it is left out: on
    ``meta`` it would write nothing, and it is most of a small layer's construction. The fills of
    resets that do run (a class not in those tables, the modules a constructor makes) return at
    once (``free_meta_fills``); a layer whose reset is left out and that makes no module is built
    without that mode, whose dispatch costs a few microseconds on every torch call."""
    if makes_no_tensors(cls):  # no torch.device mode to enter and leave (half a ReLU's cost)
        module = construct_from_recipe(cls, args, kwargs)
        if not (isinstance(module, nn.Module) and (module._parameters or module._buffers)):
            return module
        # it made tensors of its own after all: made again, on meta
    reset = _skippable_reset(cls) if kwargs.get("device") is None else None  # a node's own device: as written
    if reset is not None and not issubclass(cls, MAKES_MODULES):
        return _made(cls, args, kwargs, META, reset)
    with free_meta_fills():
        return _made(cls, args, kwargs, META, reset)


def _skippable_reset(cls: type) -> str | None:
    """The name of ``cls``'s reset, where a construction may leave it out: written per tensor, and
    ``cls`` made by plain ``__new__`` and ``__init__`` (no metaclass, no ``__new__`` of its own)."""
    if type(cls) is not type or cls.__new__ is not object.__new__:
        return None
    return written_reset(cls)


def _made(cls: type, args: Sequence, kwargs: dict[str, Any], device: torch.device, reset: str | None) -> nn.Module:
    """``cls(*args, **kwargs)`` on ``device`` (its ``device`` keyword where it takes one and the
    recipe gives none, else ``torch.device``'s mode), the method ``reset`` left out where given."""
    if takes_device(cls) and kwargs.get("device") is None:
        return construct_from_recipe(cls, args, {**kwargs, "device": device}, reset)
    with torch.device(device):
        return construct_from_recipe(cls, args, kwargs, reset)


def refilled(model: nn.Module, writes_defaults: Callable[[type], bool]) -> bool:
    """Whether initialization writes every tensor of a ``meta`` build once it is allocated: each
    module holding a ``meta`` tensor has per-tensor defaults (``writes_defaults`` of its class) or
    a reset of its own."""
    known: dict[type, bool] = {}
    for module in each_module(model):
        if not (module._parameters or module._buffers):
            continue
        cls = type(module)
        if cls not in known:
            known[cls] = writes_defaults(cls) or reset_method(module) is not None
        if not known[cls] and holds_meta([*module._parameters.values(), *module._buffers.values()]):
            return False
    return True
