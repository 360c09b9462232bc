"""Nested values as tensors plus JSON: what ``save_tensors`` and a checkpoint's training state store.

A tree is a tensor, a plain value (``None``, ``bool``, ``int``, ``float``, ``str``), or a list,
tuple or dict of trees; dict keys are strings or ints (an optimizer's ``state_dict`` keys its
state by parameter index). ``flatten`` hands each tensor to a callback, which stores it and
returns the key it is stored under, and returns the structure as JSON-ready data; ``unflatten``
reverses it exactly: int keys stay ints, tuples stay tuples, floats keep every bit (JSON writes
``repr``; ``NaN`` and ``Infinity`` too).

Encoding (one key per node): ``{"tensor": key}``, ``{"value": plain}``, ``{"list": [...]}``,
``{"tuple": [...]}``, ``{"dict": {str: node}}`` (every key a string) or ``{"items": [[key, node],
...]}`` (some key an int).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

PLAIN = (type(None), bool, int, float, str)


def flatten(obj: Any, store: Callable[[str, torch.Tensor], str], where: str = "") -> Any:
    """The structure of ``obj``; ``store(where, tensor)`` is called for each tensor, in order, with
    the tensor's key path (``state[0].exp_avg``), and returns the key it was stored under.

    Raises:
        TypeError: a value that is none of the above, or a dict key that is not a str or an int,
            named by its key path (``state[0].step: a set``).
    """
    if isinstance(obj, torch.Tensor):
        return {"tensor": store(where, obj)}
    if isinstance(obj, PLAIN):
        return {"value": obj}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [flatten(item, store, f"{where}[{i}]") for i, item in enumerate(obj)]}
    if isinstance(obj, Mapping):
        bad = [k for k in obj if isinstance(k, bool) or not isinstance(k, (str, int))]
        if bad:
            what = f"a key of type {type(bad[0]).__name__} ({bad[0]!r})"
            raise TypeError(f"{where or 'the value'}: {what}: keys are str or int")
        items = [(k, flatten(v, store, _child(where, k))) for k, v in obj.items()]
        if all(isinstance(k, str) for k in obj):
            return {"dict": dict(items)}
        return {"items": [list(pair) for pair in items]}
    allowed = "tensors, None, bool, int, float, str and lists, tuples and dicts of them"
    name = type(obj).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    raise TypeError(f"{where or 'the value'}: {article} {name}: only {allowed}")


def _child(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def unflatten(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The tree ``flatten`` described, its tensors taken from ``tensors``.

    Raises:
        ValueError: the structure is malformed or names a missing tensor (a corrupted file: the
            caller says which).
    """
    if not isinstance(structure, dict) or len(structure) != 1:
        raise ValueError("a node is not an object of one key")
    ((kind, body),) = structure.items()
    if kind == "tensor":
        if body not in tensors:
            raise ValueError(f"names a missing tensor {body!r}")
        return tensors[body]
    if kind == "value":
        if not isinstance(body, PLAIN):
            raise ValueError("a value is not plain")
        return body
    if kind in ("list", "tuple") and isinstance(body, list):
        items = [unflatten(item, tensors) for item in body]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(body, dict):
        return {k: unflatten(v, tensors) for k, v in body.items()}
    if kind == "items" and isinstance(body, list):
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in body):
            raise ValueError("a dict's items are malformed")
        return {k: unflatten(v, tensors) for k, v in body}
    raise ValueError(f"unknown node {kind!r}")
