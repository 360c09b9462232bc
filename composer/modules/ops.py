"""Ops: parameter-free tensor functions a recipe names (``{op: add, in: [a, b]}``), and ``Op``, the
module that lets one stand in a Sequential.

Every op is called as ``fn(*inputs, **kwargs)`` (or ``fn(**named_inputs, **kwargs)`` for an
``in:`` mapping): the inputs are the node's ``in:``, the kwargs are the node's other keys, named as
in the torch function. The op set is open: a name registered here (the short names of the first
version, and a user's ``@register_op``) comes first; any other name is torch's own function of that
name (``torch_ops``: every public function of ``torch``, ``torch.nn.functional`` and every
``Tensor`` method, with torch's argument names), read on its first lookup. Registered ops are
small Python functions with real signatures, read once (``signatures.op_arguments``); derived ones
are read from torch's stubs. ``op_problems``, the schema and ``list ops`` check and show both the
same way.

An op that needs to know whether its module is training (attention's dropout) sets
``fn.takes_training = True``: the graph (or ``Op``) passes ``training=self.training``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from composer.errors import ConfigError, did_you_mean
from composer.modules import torch_ops
from composer.modules.registry import Registry
from composer.modules.signatures import OpArguments, op_arguments
from composer.modules.torch_ops import TorchOp

OPS: Registry[Callable[..., Any]] = Registry("op")
register_op = OPS.register


def lookup_op(name: Any, key_path: str) -> Callable[..., Any] | TorchOp:
    """The op registered as ``name``, else torch's function of that name (a ``TorchOp``).

    Raises:
        ConfigError: at ``key_path``: an excluded name, with why; an unknown one, with the closest
            names and how to register one.
    """
    if isinstance(name, str) and name in OPS:
        return OPS.lookup(name, key_path)
    found = torch_ops.derived(name) if isinstance(name, str) else None
    if found is not None:
        return found
    why = torch_ops.excluded(name) if isinstance(name, str) and not name.startswith("_") else None
    if why is not None:
        raise ConfigError(f"op {name!r} is excluded: {why}", key_path)
    names = dict.fromkeys([*OPS, *torch_ops.derived_names()])
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6) or [
        n for n in names if n.lower() == str(name).lower()
    ]
    shown = [repr(n) for n in close]
    hint = (
        f" (did you mean {' or '.join([', '.join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)}?)"
        if close
        else ""
    )
    raise ConfigError(f"unknown op {name!r}{hint}; or register one with @composer.register_op", key_path)


def op_callable(fn: Callable[..., Any] | TorchOp, kwargs: Mapping[str, Any], inputs: Any) -> Callable[..., Any]:
    """What a node runs as ``fn(*inputs, **kwargs)``: a registered op itself; for a derived op,
    torch's function itself where it can (``torch_ops.bind``)."""
    return torch_ops.bind(fn, kwargs, inputs) if isinstance(fn, TorchOp) else fn


def op_name(fn: Callable[..., Any] | TorchOp) -> str:
    """The name ``fn`` is registered under, else its ``__name__``."""
    if isinstance(fn, TorchOp):
        return fn.name
    for name, registered in OPS.items():
        if registered is fn:
            return name
    return getattr(fn, "__name__", type(fn).__name__)


# --- built-in ops --------------------------------------------------------------------------------
# Arithmetic: two inputs, or one input and a number ``other`` ({op: mul, other: 0.5}).


@register_op("add")
def add(input: torch.Tensor, /, other: Any, *, alpha: float = 1) -> torch.Tensor:
    return torch.add(input, other) if alpha == 1 else torch.add(input, other, alpha=alpha)


@register_op("sub")
def sub(input: torch.Tensor, /, other: Any, *, alpha: float = 1) -> torch.Tensor:
    return torch.sub(input, other) if alpha == 1 else torch.sub(input, other, alpha=alpha)


@register_op("mul")
def mul(input: torch.Tensor, /, other: Any) -> torch.Tensor:
    return torch.mul(input, other)


@register_op("div")
def div(input: torch.Tensor, /, other: Any, *, rounding_mode: str | None = None) -> torch.Tensor:
    return torch.div(input, other, rounding_mode=rounding_mode)


@register_op("matmul")
def matmul(input: torch.Tensor, other: torch.Tensor, /) -> torch.Tensor:
    return torch.matmul(input, other)


# Elementwise, one input. Activations stay modules (ReLU, GELU, ...).


@register_op("abs")
def abs_(input: torch.Tensor, /) -> torch.Tensor:
    return torch.abs(input)


@register_op("neg")
def neg(input: torch.Tensor, /) -> torch.Tensor:
    return torch.neg(input)


@register_op("exp")
def exp(input: torch.Tensor, /) -> torch.Tensor:
    return torch.exp(input)


@register_op("log")
def log(input: torch.Tensor, /) -> torch.Tensor:
    return torch.log(input)


@register_op("sqrt")
def sqrt(input: torch.Tensor, /) -> torch.Tensor:
    return torch.sqrt(input)


@register_op("rsqrt")
def rsqrt(input: torch.Tensor, /) -> torch.Tensor:
    return torch.rsqrt(input)


# Joining and splitting.


def _tensors(tensors: tuple[Any, ...]) -> Sequence[torch.Tensor]:
    """The inputs themselves, or the one input's items when it is a tuple or list (a chunk's result)."""
    if len(tensors) == 1 and isinstance(tensors[0], (tuple, list)):
        return tensors[0]
    return tensors


@register_op("cat")
def cat(*tensors: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.cat(_tensors(tensors), dim=dim)


@register_op("stack")
def stack(*tensors: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.stack(_tensors(tensors), dim=dim)


@register_op("chunk")
def chunk(input: torch.Tensor, /, *, chunks: int, dim: int = 0) -> tuple[torch.Tensor, ...]:
    return torch.chunk(input, chunks, dim=dim)


@register_op("getitem")
def getitem(input: Any, /, *, index: int | Sequence[int]) -> Any:
    """``input[index]``; a list of indices picks in turn: ``[1, 0, -1]`` is ``input[1][0][-1]``."""
    if isinstance(index, (list, tuple)):
        for i in index:
            input = input[i]
        return input
    return input[index]


@register_op("select")
def select(input: torch.Tensor, /, *, dim: int, index: int) -> torch.Tensor:
    return input.select(dim, index)


# Shapes.


@register_op("flatten")
def flatten(input: torch.Tensor, /, *, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    return torch.flatten(input, start_dim, end_dim)


@register_op("unflatten")
def unflatten(input: torch.Tensor, /, *, dim: int, sizes: Sequence[int]) -> torch.Tensor:
    return torch.unflatten(input, dim, sizes)


@register_op("reshape")
def reshape(input: torch.Tensor, /, *, shape: Sequence[int]) -> torch.Tensor:
    return torch.reshape(input, shape)


@register_op("transpose")
def transpose(input: torch.Tensor, /, *, dim0: int, dim1: int) -> torch.Tensor:
    return torch.transpose(input, dim0, dim1)


@register_op("permute")
def permute(input: torch.Tensor, /, *, dims: Sequence[int]) -> torch.Tensor:
    return torch.permute(input, dims)


# Reductions.


@register_op("mean")
def mean(input: torch.Tensor, /, *, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> torch.Tensor:
    return torch.mean(input) if dim is None and not keepdim else torch.mean(input, dim=dim, keepdim=keepdim)


@register_op("softmax")
def softmax(input: torch.Tensor, /, *, dim: int) -> torch.Tensor:
    return torch.softmax(input, dim=dim)


# Transformer pieces.


@register_op("positions")
def positions(input: torch.Tensor, /, *, dim: int = 1) -> torch.Tensor:
    """``arange(input.size(dim))`` on ``input``'s device: token positions for a position embedding."""
    return torch.arange(input.size(dim), device=input.device)


@register_op("expand_batch")
def expand_batch(tensor: torch.Tensor, reference: torch.Tensor, /) -> torch.Tensor:
    """A leading-1 tensor (a class token) expanded to ``reference``'s batch size, without a copy."""
    return tensor.expand(reference.size(0), *([-1] * (tensor.dim() - 1)))


@register_op("attention")
def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    /,
    *,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    training: bool = True,
) -> torch.Tensor:
    """``scaled_dot_product_attention``; ``dropout_p`` applies in training only, as in nanoGPT and timm."""
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p if training else 0.0,
        is_causal=is_causal,
        scale=scale,
    )


attention.takes_training = True  # type: ignore[attr-defined]


# --- checking a node against an op's signature ---------------------------------------------------


def op_problems(
    label: str,
    fn: Callable[..., Any] | TorchOp,
    kwargs: Mapping[str, Any],
    n_inputs: int | Sequence[str] | None,
    key_path: str,
) -> list[tuple[str, str]]:
    """What is wrong with calling ``fn(*n_inputs inputs, **kwargs)``, as ``(key path, message)``.

    Args:
        label: the op's name, for messages.
        fn: the op (registered, or a ``TorchOp``).
        kwargs: the node's keyword arguments (its keys other than ``op`` and ``in``).
        n_inputs: how many inputs the node passes, or the argument names of an ``in:`` mapping;
            None where unknown (inputs are not checked).
        key_path: the op node's path; a bad kwarg is reported at ``<key_path>.<kwarg>``.

    Checked: unknown kwargs (with the closest name), required arguments given neither as an input
    nor as a kwarg, too many inputs, an argument given both as an input and as a kwarg; a derived
    creation op's size against the ``tensor_elements`` budget. An op whose signature cannot be
    read is not checked.
    """
    if isinstance(fn, TorchOp):
        return torch_ops.problems(fn, label, kwargs, n_inputs, key_path)
    read = op_arguments(fn)
    if read is None:
        return []
    keywords = [a.name for a in read.keywords]
    problems: list[tuple[str, str]] = []
    for key in kwargs:
        if key not in keywords and not read.any_keyword:
            hint = did_you_mean(str(key), keywords)
            valid = ", ".join(keywords) or "none"
            problems.append((f"{key_path}.{key}", f"op {label!r} takes no argument {key!r}{hint}; valid: {valid}"))
    if isinstance(n_inputs, int):
        problems += _input_problems(label, read, kwargs, n_inputs, key_path)
    elif n_inputs is not None:
        problems += _named_input_problems(label, read, kwargs, n_inputs, key_path)
    return problems


def _named_input_problems(
    label: str, read: OpArguments, kwargs: Mapping[str, Any], names: Sequence[str], key_path: str
) -> list[tuple[str, str]]:
    """An ``in:`` mapping: each name an argument the op takes by keyword, not a key as well."""
    keywords = [a.name for a in read.keywords]
    problems: list[tuple[str, str]] = []
    for name in names:
        if name in kwargs:
            problems.append((f"{key_path}.{name}", f"op {label!r} gets {name!r} both as an input and as an argument"))
        elif name not in keywords and not read.any_keyword:
            hint = did_you_mean(str(name), keywords)
            problems.append((f"{key_path}.in.{name}", f"op {label!r} takes no input by the name {name!r}{hint}"))
    given = set(names) | set(kwargs)
    for a in read.keywords:
        if a.required and a.name not in given:
            problems.append((key_path, f"op {label!r} is missing {a.name!r} (an input or an argument)"))
    return problems


def _input_problems(
    label: str, read: OpArguments, kwargs: Mapping[str, Any], n_inputs: int, key_path: str
) -> list[tuple[str, str]]:
    """Too few or too many inputs, one given twice, a required argument given neither way."""
    problems: list[tuple[str, str]] = []
    slots = read.slots
    if n_inputs > len(slots) and not read.rest:
        takes = f"at most {len(slots)} input{'s' if len(slots) != 1 else ''}"
        problems.append((f"{key_path}.in", f"op {label!r} takes {takes}, got {n_inputs}"))
    for a in slots[:n_inputs]:
        if a.name in kwargs:
            problems.append(
                (f"{key_path}.{a.name}", f"op {label!r} gets {a.name!r} both as an input and as an argument")
            )
    filled = {a.name for a in slots[:n_inputs]} | set(kwargs)
    needed_inputs = sum(a.required and a.positional_only for a in slots)
    if n_inputs < needed_inputs:
        at_least = "at least " if read.rest or len(slots) > needed_inputs else ""
        takes = f"{at_least}{needed_inputs} input{'s' if needed_inputs != 1 else ''}"
        problems.append((f"{key_path}.in", f"op {label!r} takes {takes}, got {n_inputs}"))
    for a in {a.name: a for a in (*slots, *read.keywords)}.values():  # signature order, each once
        if a.required and a.name not in filled and not a.positional_only:
            how = "an argument" if a.keyword_only else "an input or an argument"
            problems.append((key_path, f"op {label!r} is missing {a.name!r} ({how})"))
    return problems


def check_op(
    label: str,
    fn: Callable[..., Any] | TorchOp,
    kwargs: Mapping[str, Any],
    n_inputs: int | Sequence[str] | None,
    key_path: str,
) -> None:
    """``op_problems``, raised as one ``ConfigError`` when there are any."""
    problems = op_problems(label, fn, kwargs, n_inputs, key_path)
    if problems:
        raise ConfigError(problems)


# --- an op as a module ---------------------------------------------------------------------------


class Op(nn.Module):
    """An op as an item of a Sequential: ``forward(*xs)`` is ``fn(*xs, **kwargs)``; no parameters.

    Args:
        fn: the op (a registered one, a ``TorchOp`` or any callable).
        label: its name in the repr (default: the name it is registered under).
        **kwargs: its keyword arguments.

    Its repr reads like the recipe: ``Op(flatten, start_dim=1)``.
    """

    def __init__(self, fn: Callable[..., Any] | TorchOp, label: str | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        self.label = label or op_name(fn)
        self.fn = op_callable(fn, kwargs, 1)
        self.kwargs = dict(kwargs)
        self.takes_training = bool(getattr(self.fn, "takes_training", False))

    def forward(self, *xs: Any) -> Any:
        if self.takes_training:
            return self.fn(*xs, training=self.training, **self.kwargs)
        return self.fn(*xs, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join([self.label, *(f"{k}={v!r}" for k, v in self.kwargs.items())])


def make_op(name: str, kwargs: Mapping[str, Any], key_path: str, n_inputs: int | None = 1) -> Op:
    """The ``Op`` module for ``{op: name, **kwargs}`` in a Sequential (one input), checked first.

    Raises:
        ConfigError: an unknown op, or kwargs or inputs its signature refuses.
    """
    fn = lookup_op(name, f"{key_path}.op")
    check_op(name, fn, kwargs, n_inputs, key_path)
    return Op(fn, name, **kwargs)
