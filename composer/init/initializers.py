"""Named initializers, the schemes a recipe writes with them, and the random stream of a tensor.

An initializer is a function ``fn(tensor, **kwargs)`` that fills ``tensor`` in place: the
``torch.nn.init`` functions under their names without ``_``, ``piecewise`` (the tutorial's custom
scheme) and whatever users add with ``@register_init``. Each tensor draws from a stream of its
own, a generator seeded from the build's seed and the tensor's path (``stream_seed``), so its
values never depend on which other tensors were drawn before it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from composer.errors import ConfigError, unknown
from composer.modules.registry import Registry
from composer.modules.signatures import describe, signature_of

Initializer = Callable[..., Any]
INITIALIZERS: Registry[Initializer] = Registry("initializer")
register_init = INITIALIZERS.register

for _name in (
    "normal", "uniform", "constant", "zeros", "ones", "xavier_uniform", "xavier_normal",
    "kaiming_uniform", "kaiming_normal", "trunc_normal", "orthogonal", "eye", "dirac", "sparse",
):  # fmt: skip
    INITIALIZERS.add(_name, getattr(nn.init, f"{_name}_"))

SEED_LIMIT = 2**63  # seeds are integers in [0, 2**63): what torch.manual_seed takes without wrapping


@register_init("default")
def default(tensor: torch.Tensor) -> torch.Tensor:
    """The module's own default: a marker the planner reads, never called on a tensor."""
    raise RuntimeError("'default' is the module's own initialization, not a function of a tensor")


@register_init("piecewise")
def piecewise(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The tutorial's custom scheme: U(5, 10) w.p. 1/4, 0 w.p. 1/2, U(-10, -5) w.p. 1/4."""
    with torch.no_grad():
        tensor.uniform_(-10, 10, generator=generator)
        return tensor.mul_(tensor.abs() >= 5)


# Initializers that draw from the ``generator`` they are given and touch no other state, so they
# may fill tensors in several threads at once. Not ``sparse`` (it permutes rows with the global
# generator), nor those without a ``generator`` argument, which ``call_seeded`` runs under a fork
# of the global generators; nor users' initializers.
_ANY_THREAD = frozenset(
    {"normal", "uniform", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "trunc_normal",
     "orthogonal", "piecewise"}
)  # fmt: skip


def stream_seed(base: int, path: str) -> int:
    """The seed of the tensor (or module) at ``path`` in a build seeded with ``base``: a hash of
    both, so it depends on nothing else (not on other tensors, build order or world size)."""
    digest = hashlib.blake2b(f"{base}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Streams:
    """The streams of one build: a generator per device, reseeded for each tensor (making a
    generator per tensor costs more than drawing a small tensor)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self._generators: dict[torch.device, torch.Generator] = {}
        # ``stream_seed``'s hash with the base already in: each path continues a copy of it
        self._hash = hashlib.blake2b(f"{base}\0".encode(), digest_size=8)

    def at(self, path: str, device: torch.device) -> torch.Generator:
        """The generator of the tensor (or module) at ``path``, at the start of its stream."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        digest = self._hash.copy()
        digest.update(path.encode())
        gen.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)  # = stream_seed(base, path)
        return gen


# Initializers that draw nothing: they need no stream, forked or not.
_DRAW_NOTHING = frozenset({nn.init.constant_, nn.init.zeros_, nn.init.ones_, nn.init.eye_, nn.init.dirac_})


def seed_forked(seed: int, devices: Sequence[torch.device]) -> None:
    """Seed what ``torch.random.fork_rng(devices=devices)`` saves and restores: the CPU generator
    and those of ``devices``. Not ``torch.manual_seed``, which also seeds every CUDA device that
    fork does not restore, and on a machine whose CUDA is not initialized formats the stack to
    queue that seed (half a millisecond a call)."""
    torch.default_generator.manual_seed(seed)
    for device in devices:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)


def call_seeded(fn: Callable[..., Any], tensor: torch.Tensor, gen: torch.Generator, **kwargs: Any) -> None:
    """``fn(tensor, **kwargs)`` drawing from ``gen``: through its ``generator`` argument where it
    has one, else from the global generators, forked and seeded alike (not for a fill that draws
    nothing)."""
    if fn in _DRAW_NOTHING:
        fn(tensor, **kwargs)
        return
    sig = signature_of(fn)
    if sig is not None and "generator" in sig.keywords:
        fn(tensor, **kwargs, generator=gen)
        return
    devices = [tensor.device] if tensor.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed_forked(gen.initial_seed(), devices)
        fn(tensor, **kwargs)


@dataclass(frozen=True)
class Scheme:
    """One initializer with its arguments, and the key path of the spec that asked for it."""

    name: str
    kwargs: Mapping[str, Any]
    source: str

    @property
    def is_default(self) -> bool:
        return self.name == "default"

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args}) [{self.source}]" if args else f"{self.name} [{self.source}]"

    def fill(self, tensor: torch.Tensor, gen: torch.Generator, where: str) -> None:
        """Fill ``tensor`` drawing from ``gen``. On ``meta`` only check that the scheme fits: it
        runs on a CPU tensor of the same rank (an ``nn.init`` call on ``meta`` would import
        torch._dynamo on first use)."""
        try:
            with torch.no_grad():
                if tensor.is_meta:
                    probe = _probe_shape(list(tensor.shape))
                    call_seeded(self._fn, torch.empty(probe) if probe is not None else tensor, gen, **self.kwargs)
                else:
                    call_seeded(self._fn, tensor, gen, **self.kwargs)
        except Exception as e:
            raise ConfigError(
                f"{self.name} cannot initialize {where} of shape {list(tensor.shape)}: {e}", self.source
            ) from None

    @property
    def _fn(self) -> Initializer:
        return INITIALIZERS.lookup(self.name, self.source)

    @property
    def any_thread(self) -> bool:
        """Whether ``fill`` may run beside other fills in other threads (``_ANY_THREAD``)."""
        return self.name in _ANY_THREAD


_PROBE_LIMIT = 1 << 22  # elements (16 MB of float32) a check may really allocate


def _probe_shape(shape: list[int]) -> list[int] | None:
    """A CPU stand-in for a ``meta`` tensor's shape on which a scheme fails exactly when it would
    on the real one: the real shape where it is small; else dim 0 kept (``dirac``'s groups divide
    it) and the others cut to 4; None where even that is too large (then ``meta`` it is)."""
    if math.prod(shape) <= _PROBE_LIMIT:
        return shape
    small = shape[:1] + [min(d, 4) for d in shape[1:]]
    return small if math.prod(small) <= _PROBE_LIMIT else None


def parse_scheme(spec: Any, path: str, problems: list[tuple[str, str]]) -> Scheme | None:
    """A bare name or ``{type: name, **kwargs}``, its kwargs checked against the initializer:
    names, required ones, and values that cannot be meant (``inf``, ``nan``, a sparsity outside
    [0, 1])."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("type"), str):
        name, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    else:
        problems.append((path, f"expected an initializer name or {{type: name, ...}}, got {describe(spec)}"))
        return None
    if name not in INITIALIZERS:
        where = f"{path}.type" if isinstance(spec, Mapping) else path
        problems.append((where, unknown("initializer", name, INITIALIZERS, listed=False)))
        return None
    before = len(problems)
    sig = signature_of(INITIALIZERS.lookup(name, path), skip=1, hidden=frozenset({"generator"}))
    if sig is not None:
        problems += sig.problems(name, (), kwargs, path, optional=sig.required)
        missing = [key for key in sig.keywords if key in sig.required and key not in kwargs]
        if missing:
            write = f"write {{type: {name}, {missing[0]}: ...}}"
            problems.append((path, f"{name} needs {', '.join(map(repr, missing))}: {write}"))
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((f"{path}.{key}", f"expected a finite number, got {value!r}"))
        elif key == "sparsity" and isinstance(value, (int, float)) and not 0 <= value <= 1:
            problems.append((f"{path}.{key}", f"expected a fraction in [0, 1], got {value!r}"))
    return Scheme(name, kwargs, path) if len(problems) == before else None
