"""What torch's own containers make inside one constructor, asked for by a number in a recipe.

``{type: TransformerEncoder, encoder_layer: {...}, num_layers: 10000000}`` is one node, and its
constructor deep-copies ``encoder_layer`` ten million times; ``{type: RNN, num_layers: 100000000}``
is a leaf whose constructor makes four parameters per layer and direction. Neither shows in the
recipe's tree, so the module budget (``limits.modules``) counts them from here: the tree count
(``recipe/count.py``) before anything is built, the builder again with the values a template
computed, before the constructor runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

ENCODER_LAYER, DECODER_LAYER = 10, 14  # modules of one nn.TransformerEncoderLayer / DecoderLayer


@dataclass(frozen=True)
class Copies:
    """``count`` copies asked for by the keyword ``key``: each a copy of the node under ``of``, or
    (``of`` None) ``each`` modules or parameters made by the constructor itself."""

    key: str
    count: int
    of: str | None = None
    each: int = 1


def _positive(kwargs: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = kwargs.get(key, default)
    return value if type(value) is int and value > 0 else None  # anything else: the constructor refuses it


def _rnn(kwargs: Mapping[str, Any]) -> list[Copies]:
    layers = _positive(kwargs, "num_layers", 1)
    if layers is None:
        return []
    directions = 2 if kwargs.get("bidirectional") is True else 1
    each = (4 if kwargs.get("bias", True) is not False else 2) + (1 if kwargs.get("proj_size") else 0)
    return [Copies("num_layers", layers * directions, each=each)]


def _stack(number: str, layer: str) -> Any:
    def copies(kwargs: Mapping[str, Any]) -> list[Copies]:
        n = _positive(kwargs, number, None)
        return [Copies(number, n, of=layer)] if n is not None else []

    return copies


def _transformer(kwargs: Mapping[str, Any]) -> list[Copies]:
    found = []
    for number, custom, each in (
        ("num_encoder_layers", "custom_encoder", ENCODER_LAYER),
        ("num_decoder_layers", "custom_decoder", DECODER_LAYER),
    ):
        n = _positive(kwargs, number, 6)
        if n is not None and kwargs.get(custom) is None:
            found.append(Copies(number, n, each=each))
    return found


_CONTAINERS = {
    nn.TransformerEncoder: _stack("num_layers", "encoder_layer"),
    nn.TransformerDecoder: _stack("num_layers", "decoder_layer"),
    nn.Transformer: _transformer,
    nn.RNNBase: _rnn,  # RNN, LSTM, GRU
}
# the names a recipe gives them: a ``type`` (torch's class name) or a ``_target_``
NAMES: dict[str, type] = {
    name: cls
    for base in _CONTAINERS
    for cls in (base, *base.__subclasses__())
    for name in (cls.__name__, f"torch.nn.{cls.__name__}", f"{cls.__module__}.{cls.__name__}")
}


def is_container(cls: type) -> bool:
    """Whether ``cls``'s constructor makes copies a number asks for (its nodes are counted each time)."""
    return isinstance(cls, type) and issubclass(cls, tuple(_CONTAINERS))


def inner_copies(cls: type, kwargs: Mapping[str, Any]) -> list[Copies]:
    """The copies ``cls(**kwargs)`` makes inside its constructor (none for most classes)."""
    for base, copies in _CONTAINERS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return copies(kwargs)
    return []
