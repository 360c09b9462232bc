"""What torch.nn's layers do to initialize themselves, written per tensor.

A layer's ``reset_parameters`` draws all its tensors from one global stream, so the values of one
depend on the others. Written per tensor, each default draws from that tensor's own stream
(``initializers.stream_seed``): the same distribution as the layer's own reset, values that depend
only on the seed and the tensor's path. Entries are keyed by the reset function itself, so a
subclass that overrides its reset keeps its own (``resets_by_module``: one stream per module).

A table entry maps a path relative to the module to a fill ``fn(tensor, generator)``: most name
the module's own tensors; ``MultiheadAttention`` also zeroes ``out_proj.bias`` and
``Transformer`` re-draws every matrix below it, as their resets do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import init
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.rnn import RNNBase, RNNCellBase

from composer.modules.graph import Graph

Fill = Callable[[torch.Tensor, torch.Generator], object]
Table = dict[str, Fill]


def reset_method(module: nn.Module) -> Callable[[], None] | None:
    """The module's own reset of its tensors (``MultiheadAttention`` names it ``_reset_parameters``)."""
    name = _reset_name(module)
    return getattr(module, name) if name is not None else None


def _reset_name(obj: object) -> str | None:
    """The name of a module's (or a module class's) reset, where it has one."""
    for name in ("reset_parameters", "_reset_parameters"):
        if getattr(obj, name, None) is not None:
            return name
    return None


def _zeros(t: torch.Tensor, _g: torch.Generator) -> None:
    init.zeros_(t)


def _ones(t: torch.Tensor, _g: torch.Generator) -> None:
    init.ones_(t)


@functools.lru_cache(maxsize=1024)
def _uniform(bound: float) -> Fill:
    return lambda t, g: t.uniform_(-bound, bound, generator=g)


def _fan_in(weight: torch.Tensor) -> int:
    """``init._calculate_fan_in_and_fan_out``'s fan-in, from the shape alone."""
    return weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]


_KAIMING_A5 = math.sqrt(3.0) * math.sqrt(2.0 / (1 + 5.0))  # kaiming_uniform_(a=sqrt(5))'s bound x sqrt(fan_in)


def _linear(m: nn.Linear | _ConvNd) -> Table:
    """Linear and every convolution: Kaiming-uniform weight (a = sqrt(5)), bias U(±1/sqrt(fan_in)).
    The weight's bound is computed here, as ``kaiming_uniform_`` computes it, and drawn directly."""
    return _linear_table(_fan_in(m._parameters["weight"]), m._parameters.get("bias") is not None)


@functools.lru_cache(maxsize=1024)
def _linear_table(fan_in: int, bias: bool) -> Table:
    """One table per fan-in (a model of a thousand equal layers reads one): read, never changed."""
    table: Table = {"weight": _uniform(_KAIMING_A5 / math.sqrt(fan_in) if fan_in > 0 else 0)}
    if bias:
        table["bias"] = _uniform(1 / math.sqrt(fan_in) if fan_in > 0 else 0)
    return table


def _bilinear(m: nn.Bilinear) -> Table:
    bound = 1 / math.sqrt(m.weight.size(1))
    return {"weight": _uniform(bound), **({"bias": _uniform(bound)} if m.bias is not None else {})}


def _embedding(m: nn.Embedding | nn.EmbeddingBag) -> Table:
    def fill(t: torch.Tensor, g: torch.Generator) -> None:
        init.normal_(t, generator=g)
        if m.padding_idx is not None:
            with torch.no_grad():
                t[m.padding_idx].fill_(0)

    return {"weight": fill}


def _norm(m: nn.Module) -> Table:
    """Norms: weight ones, bias zeros; batch norms' running statistics reset."""
    table: Table = {}
    for name, fill in (("weight", _ones), ("bias", _zeros), ("running_mean", _zeros), ("running_var", _ones)):
        if getattr(m, name, None) is not None:
            table[name] = fill
    if getattr(m, "num_batches_tracked", None) is not None:
        table["num_batches_tracked"] = _zeros
    return table


def _recurrent(m: RNNBase | RNNCellBase) -> Table:
    bound = 1.0 / math.sqrt(m.hidden_size) if m.hidden_size > 0 else 0
    return {name: _uniform(bound) for name, p in m.named_parameters() if p is not None}


def _attention(m: nn.MultiheadAttention) -> Table:
    xavier: Fill = lambda t, g: init.xavier_uniform_(t, generator=g)  # noqa: E731
    xavier_normal: Fill = lambda t, g: init.xavier_normal_(t, generator=g)  # noqa: E731
    names = ("in_proj_weight",) if m._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    table: Table = dict.fromkeys(names, xavier)
    if m.in_proj_bias is not None:
        table["in_proj_bias"] = table["out_proj.bias"] = _zeros
    for name in ("bias_k", "bias_v"):
        if getattr(m, name) is not None:
            table[name] = xavier_normal
    return table


def _transformer(m: nn.Transformer) -> Table:
    return {name: lambda t, g: init.xavier_uniform_(t, generator=g) for name, p in m.named_parameters() if p.dim() > 1}


def _graph(m: Graph) -> Table:
    """Parameters zeros; buffers their fills (a computed one computed again, on its device)."""
    return {**dict.fromkeys(m._parameters, _zeros), **m.buffer_fills}


def _prelu(m: nn.PReLU) -> Table:
    return {"weight": lambda t, _g: init.constant_(t, m.init)}


# The classes whose reset is written here, by the class that defines it and its name. Keyed by
# that reset function, so a subclass that overrides its reset is not covered.
_WRITTEN: dict[tuple[type, str], Callable[[nn.Module], Table]] = {
    (nn.Linear, "reset_parameters"): _linear,
    (_ConvNd, "reset_parameters"): _linear,
    (nn.Bilinear, "reset_parameters"): _bilinear,
    (nn.Embedding, "reset_parameters"): _embedding,
    (nn.EmbeddingBag, "reset_parameters"): _embedding,
    (_NormBase, "reset_parameters"): _norm,
    (nn.LayerNorm, "reset_parameters"): _norm,
    (nn.GroupNorm, "reset_parameters"): _norm,
    (nn.RMSNorm, "reset_parameters"): _norm,
    (RNNBase, "reset_parameters"): _recurrent,
    (RNNCellBase, "reset_parameters"): _recurrent,
    (nn.MultiheadAttention, "_reset_parameters"): _attention,
    (nn.Transformer, "_reset_parameters"): _transformer,
    (nn.PReLU, "reset_parameters"): _prelu,
    (Graph, "reset_parameters"): _graph,
}
TABLES: dict[Callable, Callable[[nn.Module], Table]] = {
    vars(owner)[name]: make for (owner, name), make in _WRITTEN.items()
}


def default_table(module: nn.Module) -> Table | None:
    """The per-tensor defaults of ``module``'s class (to read, not change: equal layers may share
    one); None where its reset is not written per tensor (a user's block, a subclass with its own
    reset): it then resets as a whole."""
    make = _maker(type(module))
    return make(module) if make is not None else None


def writes_defaults(cls: type) -> bool:
    """Whether ``cls``'s defaults are written here per tensor (its reset is in ``TABLES``)."""
    return _maker(cls) is not None


@functools.cache
def written_reset(cls: type) -> str | None:
    """The name of ``cls``'s reset where it is written here per tensor, else None.

    Such a reset only fills its module's tensors (each table above says with what), so a
    construction whose tensors are filled afterwards from these tables may leave it out."""
    return _reset_name(cls) if _maker(cls) is not None else None


@functools.cache
def _maker(cls: type) -> Callable[[nn.Module], Table] | None:
    name = _reset_name(cls)
    return TABLES.get(getattr(cls, name)) if name is not None else None
