"""Training state in a checkpoint: the optimizer's state, the user's ``state`` and the RNG states.

Tensors go beside the weights (a single file's tensors, or a sharded model's DCP directory) under
keys no model can have (a module's name is never empty, so no state-dict key starts with ``.``):
``.optimizer.<key path>`` and ``.state.<key path>``. Everything else is JSON: the optimizer's
type, which model parameter each of its slots holds (by name, so a rebuilt model's parameters
take their place), its plain values (``lr``, ``betas``, ...), the user's plain values, and the
RNG states of torch (CPU, and CUDA where available) and of Python's ``random``. Nothing is
pickled.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from torch import nn

from composer.checkpoint.tree import flatten, unflatten
from composer.errors import CheckpointError

OPTIMIZER = ".optimizer"
STATE = ".state"
FIELD = "training"  # the metadata field (single file) or composer.json key (directory)


def is_training_key(key: str) -> bool:
    """Whether a stored tensor belongs to the training state rather than to the model."""
    return key.startswith((OPTIMIZER + ".", STATE + "."))


def type_name(optimizer: torch.optim.Optimizer) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def slots(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Each group's parameters as the model's names for them.

    Raises:
        CheckpointError: the optimizer holds a tensor that is not one of the model's parameters.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    groups = []
    for g, group in enumerate(optimizer.param_groups):
        strangers = [i for i, p in enumerate(group["params"]) if id(p) not in names]
        if strangers:
            raise CheckpointError(
                f"the optimizer's group {g} holds tensors that are not the model's parameters "
                f"(positions {strangers[:5]}): build the optimizer over this model's parameters"
            )
        groups.append([names[id(p)] for p in group["params"]])
    return groups


def capture(
    optimizer_state: Mapping[str, Any] | None,
    optimizer: torch.optim.Optimizer | None,
    groups: list[list[str]] | None,
    state: Mapping[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors to store and the JSON ``training`` field: the optimizer's ``state_dict`` (as
    ``optimizer_state``: torch's own, or the sharded one of ``get_optimizer_state_dict``), its
    slots, the user's ``state`` and the RNG states now.

    Raises:
        TypeError: ``state`` is not a mapping, or holds a value that cannot be stored (named by path).
    """
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"rng": rng_states()}
    if optimizer is not None and optimizer_state is not None:
        info["optimizer"] = {
            "type": type_name(optimizer),
            "groups": groups,
            "state_dict": flatten(optimizer_state, _storing(OPTIMIZER, tensors)),
        }
    if state is not None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state: a mapping of what to keep beside the weights, not a {type(state).__name__}")
        info["state"] = flatten(dict(state), _storing("", tensors), "state")  # .state.<path>
    return tensors, info


def optimizer_tensors(optimizer_state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of an optimizer state dict under the keys ``capture`` stores them at: where a
    sharded load reads the stored values into."""
    tensors: dict[str, torch.Tensor] = {}
    flatten(optimizer_state, _storing(OPTIMIZER, tensors))
    return tensors


def _storing(prefix: str, tensors: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], str]:
    def store(where: str, tensor: torch.Tensor) -> str:
        key = f"{prefix}.{where}"
        tensors[key] = tensor
        return key

    return store


def require(info: Any, path: str | os.PathLike) -> None:
    """Refuse to resume an optimizer from a checkpoint saved without training state.

    Raises:
        CheckpointError: ``info`` (the stored training field) is empty or missing.
    """
    if not isinstance(info, dict) or not info:
        raise CheckpointError(
            f"{path}: holds no training state (saved without optimizer=): load it without optimizer= "
            "and start the optimizer afresh"
        )


def check_optimizer(
    info: Mapping[str, Any], optimizer: torch.optim.Optimizer, shapes: Mapping[str, torch.Size], path: str | os.PathLike
) -> list[list[str]]:
    """The stored slots, checked against ``optimizer``: same type, same groups (count and sizes),
    each slot's parameter of the stored shape (``shapes``: the loaded model's, by name).

    Raises:
        CheckpointError: no training state, no optimizer state, another type or other groups.
    """
    stored = info.get("optimizer")
    if stored is None:
        raise CheckpointError(
            f"{path}: holds no optimizer state (saved without optimizer=): load it without optimizer= "
            "and start the optimizer afresh"
        )
    groups = stored.get("groups") if isinstance(stored, dict) else None
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(name, str) for name in g) for g in groups
    ):
        raise CheckpointError(f"{path}: its training state is malformed: the file is corrupted")
    if stored.get("type") != type_name(optimizer):
        raise CheckpointError(
            f"{path}: its optimizer state is a {stored.get('type')}'s, not a {type_name(optimizer)}'s: "
            "build the optimizer it was saved from"
        )
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g) for g in groups]
    if ours != theirs:
        raise CheckpointError(
            f"{path}: its optimizer has {_groups(theirs)}, this one has {_groups(ours)}: "
            "build the optimizer with the parameter groups it was saved with"
        )
    wrong = [
        f"group {g} slot {i} ({name}): stored for {list(shapes[name])}, the optimizer holds {list(p.shape)}"
        if name in shapes
        else f"group {g} slot {i}: {name!r} is not a parameter of the model"
        for g, (names, group) in enumerate(zip(groups, optimizer.param_groups, strict=True))
        for i, (name, p) in enumerate(zip(names, group["params"], strict=True))
        if name not in shapes or shapes[name] != p.shape
    ]
    if wrong:
        raise CheckpointError(f"{path}: its optimizer's groups hold other parameters: {'; '.join(wrong[:10])}")
    return groups


def _groups(sizes: list[int]) -> str:
    counts = ", ".join(map(str, sizes))
    return f"{len(sizes)} group{'s' if len(sizes) != 1 else ''} of {counts} parameters"


def load_optimizer(set_state: Callable[[Any], None], optimizer_state: Any, path: str | os.PathLike) -> None:
    """``set_state(optimizer_state)`` (``optimizer.load_state_dict``, or ``set_optimizer_state_dict``
    for a sharded model), torch's refusal of what the file stored reported as corruption.

    Raises:
        CheckpointError: torch refuses the stored state (a malformed file).
    """
    try:
        set_state(optimizer_state)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not load ({e}): the file is corrupted") from None


def rebind(optimizer: torch.optim.Optimizer, groups: list[list[str]], params: Mapping[str, nn.Parameter]) -> None:
    """Point the optimizer's slots at the loaded model's parameters (by name) and drop the state
    it held for the old ones."""
    for names, group in zip(groups, optimizer.param_groups, strict=True):
        group["params"] = [params[name] for name in names]
    optimizer.state.clear()


def restore(
    info: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    state: MutableMapping[str, Any] | None,
) -> Any:
    """Put the stored user ``state`` into ``state`` (updated in place), set the RNG states, and
    return the optimizer's stored state dict (``None`` without one), for the caller to load.

    Raises:
        CheckpointError: a malformed structure or RNG state (a corrupted file).
    """
    try:
        optimizer_state = None
        if isinstance(info.get("optimizer"), dict):
            optimizer_state = unflatten(info["optimizer"].get("state_dict"), tensors)
        if state is not None and "state" in info:
            state.update(unflatten(info["state"], tensors))
        set_rng_states(info.get("rng"))
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its training state is malformed ({e}): the file is corrupted") from None
    return optimizer_state


def rng_states() -> dict[str, Any]:
    """torch's CPU generator, each CUDA device's (where CUDA is available) and Python's ``random``."""
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {"torch": _b64(torch.get_rng_state()), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        states["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: Any) -> None:
    """Restore what ``rng_states`` captured (CUDA's only where this process has as many devices).

    Raises:
        ValueError, TypeError: malformed states.
    """
    if not isinstance(states, dict):
        raise ValueError("no RNG states")
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(_tensor(states["torch"]))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_tensor(s) for s in cuda])


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)
