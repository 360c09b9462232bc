"""Turning shapes into tensors: lazy layers through a dry forward, ``meta`` tensors into real ones.

Both keep what PyTorch's own tools lose: ``to_empty`` and ``load_state_dict(assign=True)`` untie
parameters shared across modules and a dry run under ``inference_mode`` leaves parameters that
never get gradients; these functions do neither.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _LazyNormBase
from torch.nn.modules.conv import _LazyConvXdMixin
from torch.nn.modules.lazy import LazyModuleMixin
from torch.overrides import TorchFunctionMode

from composer import limits as budget
from composer.build.placement import device_of, each_module
from composer.errors import ConfigError, first_line
from composer.recipe.read import InputSpec


def has_lazy(model: nn.Module) -> bool:
    """Whether any parameter or buffer still waits for its shape."""
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules())


def require_shapes(model: nn.Module, need: str) -> None:
    """A ``ConfigError`` naming ``input_shape`` where lazy layers still wait for their shapes."""
    if has_lazy(model):
        raise ConfigError(f"lazy layers have no shapes yet, and {need} needs them: set input_shape", "input_shape")


def forward_zeros(
    model: nn.Module,
    inputs: Sequence[InputSpec],
    device: torch.device | str | None = None,
    key: str = "input_shape",
    shapes_only: bool = False,
) -> Any:
    """One forward pass of zeros (valid token ids for integer inputs): what infers lazy shapes, and
    a smoke test of the recipe's example inputs.

    It runs under ``no_grad`` (not ``inference_mode``: parameters born there never get gradients)
    and in eval mode, so no batch statistics move; each module's mode is restored afterwards.
    Lazy layers come out as their plain classes (``LazyLinear`` -> ``Linear``). A failure is a
    ``ConfigError`` at ``key`` (the recipe key that gave the inputs) naming the innermost module
    that was running, which torch's own message does not. ``shapes_only`` (a check on ``meta``):
    control flow that reads values, which ``meta`` tensors do not have, ends the check quietly
    (None) instead.

    The inputs come from a file's numbers, and the model's code may loop (a ``FixedHiddenMLP``
    whose weights overflow to inf halves inf forever): the inputs together hold at most
    ``limits.tensor_elements`` elements (on a real device), the pass stops after
    ``limits.seconds``, and on a real device (lazy layers aside) a pass on ``meta`` first
    (``check_on_meta``) refuses a forward that would hold more than ``limits.activation_bytes``
    at once; each is a ``ConfigError`` naming the limit.
    """
    chosen = budget.current()
    device = torch.device(device or device_of(model))
    if device.type != "meta":
        check_input_elements(inputs, key, chosen.tensor_elements)
        if not has_lazy(model) and _plain_tensors(model):
            check_on_meta(model, inputs, key)
    return _forward(model, inputs, device, key, shapes_only)


def _plain_tensors(model: nn.Module) -> bool:
    """Whether every parameter and buffer is a plain tensor that ``check_on_meta`` may swap. A
    sharded model's are ``DTensor``s that FSDP2 gathers in its forward hooks: swapped for ``meta``
    tensors they would leave its state half set up, so the real forward alone checks that model."""
    plain = (torch.Tensor, nn.Parameter)
    return all(type(t) in plain for t in itertools.chain(model.parameters(), model.buffers()))


def check_input_elements(inputs: Sequence[InputSpec], key: str, limit: int) -> None:
    """The example inputs together within ``limit`` elements (20 inputs each at the limit: 2.5 GB)."""
    sizes = [math.prod(spec.shape) for spec in inputs]
    if sum(sizes) > limit:
        shapes = ", ".join(str(list(spec.shape)) for spec in inputs)
        what = f"{'an input' if len(inputs) == 1 else 'the inputs'} of shape {shapes} ({sum(sizes):,} elements)"
        raise ConfigError(budget.exceeded("tensor_elements", what, limit), key)


def check_on_meta(model: nn.Module, inputs: Sequence[InputSpec], key: str = "input_shape", memory: bool = True) -> None:
    """The forward of zeros run on ``meta``: its shapes checked, and the memory it would hold.

    The model's parameters and buffers are swapped for ``meta`` tensors of their shapes for the
    call (nothing copied; the same tensors put back after), so the pass allocates nothing. A
    shape error is a ``ConfigError`` at ``key`` naming the module, as the real forward's; a
    forward whose tensors alive at once (the inputs, and each result of a torch function until it
    is freed) pass ``limits.activation_bytes`` is refused before it allocates:
    ``cat`` doublings of a ``[1, 1]`` input ask for 2 GB, an outer product by ``matmul`` 1 GB.
    The pass computes shapes with composer's own rules (``_ShapePass``: torch's meta kernels
    import seconds of sympy and torch._dynamo), so it ends quietly, unchecked past that point,
    at the first operation without one (a convolution, an embedding), as it does at code that
    reads values, which ``meta`` tensors do not have: the real forward checks the rest. Lazy
    layers have no shapes to swap: the caller skips them. ``memory``
    False: the shapes only (a build, which runs no forward of its own).
    """
    limit = budget.current().activation_bytes if memory else None
    meta = torch.device("meta")
    with _on_meta(model):
        _forward(model, inputs, meta, key, shapes_only=True, memory=_ShapePass(inputs, limit))


@contextlib.contextmanager
def _on_meta(model: nn.Module) -> Iterator[None]:
    """Each parameter and buffer swapped for a ``meta`` tensor of its shape inside (a tensor held by
    several modules, one meta tensor), the very same objects put back after: nothing is copied,
    and what holds the model's parameters (an optimizer) holds them still."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    made: dict[int, torch.Tensor] = {}
    try:
        for module in model.modules():
            for slots in (module._parameters, module._buffers):
                for name, old in slots.items():
                    if old is None or old.is_meta:
                        continue
                    if id(old) not in made:
                        empty = torch.empty_strided(old.size(), old.stride(), dtype=old.dtype, device="meta")
                        made[id(old)] = (
                            nn.Parameter(empty, old.requires_grad) if isinstance(old, nn.Parameter) else empty
                        )
                    swapped.append((slots, name, old))
                    slots[name] = made[id(old)]
        yield
    finally:
        for slots, name, old in swapped:
            slots[name] = old


class _TooMuchMemory(BaseException):  # noqa: N818  (not an Exception: model code's `except Exception` must not swallow it)
    """Raised inside a meta forward whose live tensors pass the budget."""


class _Unchecked(BaseException):  # noqa: N818
    """Raised inside a meta forward at a torch function the shape pass has no rule for."""


class _ShapePass(TorchFunctionMode):
    """A forward on ``meta`` that computes shapes itself: torch's meta kernels of most operations
    (``add``, ``relu``, ``conv2d``...) are Python code whose first call imports sympy and
    torch._dynamo (seconds), which a build or a summary must not pay. So each torch function
    runs here only if it is a view or a read of a tensor's attributes, or has a rule below
    (elementwise operations broadcast, ``cat``, ``matmul``; ``Linear`` and ``LayerNorm`` have
    theirs in ``_META_RULES``); any other ends the pass, unchecked (``_Unchecked``).

    With ``limit``, it also counts the bytes the forward would hold at once: each tensor a
    function returns counts from its creation until it is freed (a view counts nothing), and
    past ``limit`` the pass stops (``_TooMuchMemory``)."""

    def __init__(self, inputs: Sequence[InputSpec], limit: int | None) -> None:
        super().__init__()
        self.limit = limit
        self.live = sum(math.prod(s.shape) * s.dtype.itemsize for s in inputs)
        self.peak = self.live
        self.counted: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rule = _SHAPE_RULES.get(func)
        if rule is not None:
            out = rule(*args, **kwargs)
        elif func in _VIEWS or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)  # a view, a shape, a dtype: no memory, no meta kernel
        else:
            raise _Unchecked
        if self.limit is not None:
            self._count(out)
        return out

    def _count(self, out: torch.Tensor) -> None:
        if id(out) not in self.counted:
            size = out.numel() * out.element_size()
            self.counted.add(id(out))
            self.live += size
            weakref.finalize(out, self._free, id(out), size)
        self.peak = max(self.peak, self.live)
        if self.limit is not None and self.live > self.limit:
            raise _TooMuchMemory

    def _free(self, ident: int, size: int) -> None:
        self.counted.discard(ident)
        self.live -= size


def _broadcast(*shapes: Sequence[int]) -> list[int]:
    """NumPy's broadcasting of shapes, in Python (``torch.broadcast_shapes`` imports sympy)."""
    out: list[int] = []
    for sizes in itertools.zip_longest(*(reversed(s) for s in shapes), fillvalue=1):
        wanted = {n for n in sizes if n != 1}
        if len(wanted) > 1:
            raise RuntimeError(f"shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(wanted.pop() if wanted else 1)
    return out[::-1]


def _elementwise(input: Any, other: Any = None, *_args: Any, **_kwargs: Any) -> torch.Tensor:
    tensors = [t for t in (input, other) if isinstance(t, torch.Tensor)]
    return tensors[0].new_empty(_broadcast(*(t.shape for t in tensors)))


def _cat(tensors: Sequence[torch.Tensor], dim: int = 0, **_kwargs: Any) -> torch.Tensor:
    first = list(tensors[0].shape)
    axis = dim % len(first)
    for t in tensors[1:]:
        if t.dim() != len(first) or any(
            a != b for i, (a, b) in enumerate(zip(first, t.shape, strict=True)) if i != axis
        ):
            raise RuntimeError(f"cat: shapes {[list(t.shape) for t in tensors]} differ outside dimension {dim}")
    first[axis] = sum(t.shape[axis] for t in tensors)
    return tensors[0].new_empty(first)


def _matmul(input: torch.Tensor, other: torch.Tensor, **_kwargs: Any) -> torch.Tensor:
    a, b = list(input.shape), list(other.shape)
    if not a or not b:
        raise RuntimeError("matmul: both arguments need at least one dimension")
    inner_a = a[-1]
    inner_b = b[0] if len(b) == 1 else b[-2]
    if inner_a != inner_b:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied: {a} and {b}")
    rows = a[-2:-1] if len(a) > 1 else []
    cols = b[-1:] if len(b) > 1 else []
    batch = _broadcast(a[:-2], b[:-2]) if len(a) > 2 or len(b) > 2 else []
    return input.new_empty([*batch, *rows, *cols])


def _same(input: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
    return input.new_empty(input.shape)


_T = torch.Tensor
_F = nn.functional
_SHAPE_RULES: dict[Any, Callable[..., torch.Tensor]] = {
    **dict.fromkeys((torch.add, torch.sub, torch.mul, torch.div, _T.add, _T.sub, _T.mul, _T.div), _elementwise),
    **dict.fromkeys((_T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__, _T.__mul__, _T.__rmul__), _elementwise),
    **dict.fromkeys((_T.__truediv__,), _elementwise),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _cat),
    **dict.fromkeys((torch.matmul, _T.matmul, _T.__matmul__), _matmul),
    **dict.fromkeys((torch.relu, _F.relu, _F.gelu, _F.silu, torch.tanh, torch.sigmoid, _T.relu, _T.tanh), _same),
    **dict.fromkeys((_T.sigmoid, _F.dropout, _F.softmax, torch.softmax, _T.softmax, _T.clone), _same),
}
_VIEWS = frozenset(
    (
        _T.view,
        _T.reshape,
        torch.reshape,
        _T.flatten,
        torch.flatten,
        _T.transpose,
        torch.transpose,
        _T.permute,
        torch.permute,
        _T.unsqueeze,
        torch.unsqueeze,
        _T.squeeze,
        torch.squeeze,
        _T.__getitem__,
        _T.size,
        _T.dim,
        _T.new_empty,
        _T.numel,
        _T.element_size,
        torch.zeros,
    )
)  # fmt: skip  (torch.zeros: the example inputs, counted from the start)


def _forward(
    model: nn.Module,
    inputs: Sequence[InputSpec],
    device: torch.device,
    key: str,
    shapes_only: bool,
    memory: _ShapePass | None = None,
) -> Any:
    """The pass of ``forward_zeros`` (``memory``: the mode counting its live tensors, entered)."""
    chosen = budget.current()
    paths = {id(m): p for p, m in model.named_modules()}
    running: list[tuple[str, nn.Module, Any]] = []
    given = {tuple(spec.shape) for spec in inputs}
    first_spatial: list[tuple[str, nn.Module, Any]] = []  # the first N-d layer called on a model input

    def enter(module: nn.Module, args: Any) -> None:
        first = args[0] if args else None
        call = (paths[id(module)], module, tuple(first.shape) if isinstance(first, torch.Tensor) else None)
        running.append(call)
        if not first_spatial and call[2] in given and _spatial_dims(module) is not None:
            first_spatial.append(call)

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        running.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    shortcuts = _meta_shortcuts(model) if device.type == "meta" else []
    try:
        with torch.no_grad(), budget.deadline(chosen.seconds), memory or contextlib.nullcontext():
            return model(*(torch.zeros(spec.shape, dtype=spec.dtype, device=device) for spec in inputs))
    except budget.DeadlineExceeded:
        where = f" in module '{running[-1][0] or '(model)'}'" if running else ""
        what = f"a forward pass of zeros (stopped{where})"
        raise ConfigError(budget.exceeded("seconds", what, chosen.seconds), key) from None
    except _Unchecked:
        return None  # an operation the shape pass has no rule for: the real forward checks the rest
    except _TooMuchMemory:
        where = f" (in module '{running[-1][0] or '(model)'}')" if running else ""
        shapes = ", ".join(str(list(spec.shape)) for spec in inputs)
        what = (
            f"the memory a forward pass of zeros shaped {shapes} holds at once{where}, {memory.peak:,} bytes or more,"
        )
        raise ConfigError(budget.exceeded("activation_bytes", what, memory.limit), key) from None
    except Exception as e:  # torch raises many kinds; each means the inputs do not fit
        if shapes_only and ("cannot be called on meta tensors" in str(e) or isinstance(e, NotImplementedError)):
            return None
        where = f" in module '{running[-1][0] or '(model)'}'" if running else ""
        shapes = ", ".join(str(list(spec.shape)) for spec in inputs)
        message = f"a forward pass of zeros shaped {shapes} failed{where}: {type(e).__name__}: {first_line(e)}"
        hint = _batch_hint(running[-1], first_spatial[0] if first_spatial else None, key) if running else ""
        raise ConfigError(message + hint, key) from None
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
        for module in shortcuts:
            del module.__dict__["forward"]


def _spatial_dims(module: nn.Module) -> int | None:
    """N of a layer over N spatial dims (``Conv2d``, ``BatchNorm2d``, ``MaxPool2d``, ...), else None."""
    match = re.search(r"(\d)d$", type(module).__name__)
    return int(match.group(1)) if match else None


def _batch_hint(failed: tuple[str, nn.Module, Any], first: tuple[str, nn.Module, Any] | None, key: str) -> str:
    """Where a layer of N spatial dims failed on an input one dimension short of
    [batch, channels, *spatial], and so was the model's input that the first such layer took: the
    shape was most likely written without its batch dimension. The failing layer need not be that
    first one: a ``Conv2d`` runs an unbatched [C, H, W] input and the ``BatchNorm2d`` after it fails.
    The example completes the shape the way the first layer's channels say it is short."""
    _path, module, shape = failed
    spatial = _spatial_dims(module)
    if spatial is None or shape is None or first is None or len(shape) != spatial + 1:
        return ""
    _first_path, first_module, given = first
    if len(given) != spatial + 1:
        return ""
    channels = getattr(first_module, "in_channels", None) or getattr(first_module, "num_features", None)
    example = ""
    if isinstance(channels, int):  # [C, *spatial] lacks the batch; [B, *spatial] lacks the channels
        example = f", e.g. {[2, *given] if given[0] == channels else [given[0], channels, *given[1:]]}"
    return (
        f" ({key} includes the batch dimension: {type(module).__name__} takes {spatial + 2} dims, "
        f"[batch, channels, {', '.join(['size'] * spatial)}], and {list(given)} has {len(given)}{example})"
    )


def _linear_shape(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] != m.in_features:
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied: input {list(x.shape)}, in_features={m.in_features}"
        )
    return x.new_empty((*x.shape[:-1], m.out_features))


def _layer_norm_shape(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if tuple(x.shape[-len(m.normalized_shape) :]) != tuple(m.normalized_shape):
        expected = ", ".join(map(str, m.normalized_shape))
        raise RuntimeError(
            f"Given normalized_shape={list(m.normalized_shape)}, expected input with shape [*, {expected}], "
            f"but got input of size {list(x.shape)}"
        )
    return x


def _pass_through(_m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


# Shape rules for a forward on ``meta``, keyed by the ``forward`` they stand in for: a subclass
# that overrides ``forward`` keeps its own. Each checks what the real kernel would check.
_META_RULES: dict[Callable, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    nn.Linear.forward: _linear_shape,
    nn.LayerNorm.forward: _layer_norm_shape,
    **{cls.forward: _pass_through for cls in (
        nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    )},
}  # fmt: skip


def _meta_shortcuts(model: nn.Module) -> list[nn.Module]:
    """Shape rules for a forward on ``meta``, for modules whose meta kernels are Python
    decompositions (``Linear``'s addmm, LayerNorm, GELU) that import torch._dynamo on first call
    (seconds) to compute a shape known up front."""
    patched = []
    for module in model.modules():
        rule = _META_RULES.get(type(module).forward)
        if rule is not None and "forward" not in module.__dict__:
            module.__dict__["forward"] = lambda x, m=module, rule=rule: rule(m, x)
            patched.append(module)
    return patched


def allocate(model: nn.Module, device: torch.device | str) -> None:
    """Give every ``meta`` parameter and buffer real, uninitialized storage on ``device``. Ties
    survive (``to_empty`` breaks them)."""

    # ``_replace_tensors`` without the state_dict keys it formats, which nothing here reads
    placed: dict[int, torch.Tensor] = {}
    for module in each_module(model):
        for slots in (module._parameters, module._buffers):
            if not slots:
                continue
            for name, old in slots.items():
                if old is None:
                    continue
                new = placed.get(id(old))
                if new is None:
                    if not old.is_meta:
                        continue
                    # empty_strided, not empty_like: from a meta tensor, empty_like goes through
                    # Python references whose first call imports sympy
                    new = torch.empty_strided(old.size(), old.stride(), dtype=old.dtype, device=device)
                    if slots is module._parameters:
                        new = nn.Parameter(new, requires_grad=old.requires_grad)
                    placed[id(old)] = new
                slots[name] = new


def assign(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Make the tensors of ``state`` the model's parameters and buffers, without copying them.

    Keys follow ``state_dict``. Ties survive (``load_state_dict(assign=True)`` breaks them), and
    lazy layers take the stored shapes and their plain classes, as after a first forward.
    """
    _replace_tensors(model, lambda key, _old, persistent: state[key] if persistent else None)
    for module in model.modules():
        if isinstance(module, LazyModuleMixin):
            _finish_lazy(module)


def _replace_tensors(
    model: nn.Module, new: Callable[[str, torch.Tensor, bool], torch.Tensor | None]
) -> dict[int, torch.Tensor]:
    """Swap each parameter and buffer for ``new(state_dict key, old tensor, persistent)`` (None:
    keep it). A tensor held by several modules is swapped once and the new one held by all, so
    ties survive; a parameter stays a ``Parameter`` with its ``requires_grad``. Returns the new
    tensors by the id of the old ones."""
    placed: dict[int, torch.Tensor] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for slots, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for name, old in slots.items():
                if old is None:
                    continue
                if id(old) not in placed:
                    persistent = is_parameter or name not in module._non_persistent_buffers_set
                    tensor = new(prefix + name, old, persistent)
                    if tensor is None:
                        continue
                    placed[id(old)] = nn.Parameter(tensor, requires_grad=old.requires_grad) if is_parameter else tensor
                slots[name] = placed[id(old)]
    return placed


def _finish_lazy(module: LazyModuleMixin) -> None:
    """What a lazy layer's first forward does once shapes are known: record the inferred size
    (read back from the weights), drop the hooks, take the plain class (``LazyLinear`` -> ``Linear``)."""
    if isinstance(module, nn.LazyLinear):
        module.in_features = module.weight.shape[1]
    elif isinstance(module, _LazyConvXdMixin):
        module.in_channels = module.weight.shape[0] if module.transposed else module.weight.shape[1] * module.groups
    elif isinstance(module, _LazyNormBase):
        stats = module.weight if module.weight is not None else module.running_mean
        module.num_features = stats.shape[0]
    module._initialize_hook.remove()
    module._load_hook.remove()
    del module._initialize_hook, module._load_hook
    if module.cls_to_become is not None:
        module.__class__ = module.cls_to_become
