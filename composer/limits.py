"""Budgets for reading and building: what a small, hostile input may make composer do.

A recipe or a checkpoint is data, and data can ask for unbounded work: a YAML alias bomb of a few
hundred bytes expands to 10^9 nodes, ``{type: Repeat, times: 1000000000}`` builds forever, a
60 MB header of ``{}`` takes 1.6 GB to parse, an ``input_shape`` of ``[1, 5e8]`` allocates 2 GB,
a model's forward may loop forever. Each such amount has a limit here, checked before the work:

========================  ===============  ===========================================================
limit                     default          what it bounds
========================  ===============  ===========================================================
``recipe_bytes``          1 MiB            the size of a recipe file (and of a recipe in a checkpoint)
``nodes``                 500,000          the values of a recipe, counting each YAML alias and each
                                           ``${...}`` interpolation as the tree it expands to
``depth``                 100              the nesting of a recipe's mappings and lists
``modules``               50,000           the modules one build makes; a Repeat (times nested
                                           Repeats) asking for more is refused before building
``header_bytes``          8 MiB            a checkpoint's header (its JSON index and metadata), and a
                                           checkpoint directory's ``composer.json``
``metadata_bytes``        1 MiB            a checkpoint directory's ``.metadata`` (DCP's pickled
                                           index: about 4,700 tensor shards a MiB), checked opcode by
                                           opcode before it is unpickled
``tensor_elements``       2**25            the elements of the example inputs made from a recipe's
                                           ``input_shape``/``inputs``, all inputs together (the
                                           model's weights are not limited)
``activation_bytes``      1 GiB            the memory a forward of example inputs holds at once
                                           (its tensors alive together), measured by a pass on
                                           ``meta`` before the real one
``seconds``               60               a forward pass of example inputs (lazy shapes, the summary,
                                           the CLI's smoke forward)
========================  ===============  ===========================================================

The defaults fit a 1,000-layer real model (GPT-2 has about 13 modules a layer, ResNets fewer) and
keep each attack above under a second and 200 MB. Each check that fails raises ``ConfigError`` (a
recipe) or ``CheckpointError`` (a file) naming the limit and how to raise it:

- a keyword argument: ``build_from_config(cfg, limits={"modules": 500_000})``, likewise
  ``load_checkpoint``, ``load_weights`` and ``load_tensors``; or ``with composer.limits.using(seconds=600):``
  around any call (``summary`` included);
- an environment variable, read by the command line and as every call's default:
  ``COMPOSER_MAX_MODULES=500000 python -m composer ...``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "COMPOSER_MAX_"


@dataclass(frozen=True)
class Limits:
    """The budgets of one read or build (see the module's table)."""

    recipe_bytes: int = 1 << 20
    nodes: int = 500_000
    depth: int = 100
    modules: int = 50_000
    header_bytes: int = 8 << 20
    metadata_bytes: int = 1 << 20
    tensor_elements: int = 1 << 25
    activation_bytes: int = 1 << 30
    seconds: float = 60.0

    def replace(self, values: Mapping[str, Any]) -> Limits:
        """These limits with some raised or lowered; an unknown name or a bad value is a ``ValueError``."""
        if not values:
            return self
        known = {f.name: f for f in dataclasses.fields(self)}
        changed = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown limit {name!r}; the limits are {', '.join(known)}")
            kind = float if name == "seconds" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limit {name!r} takes a positive number, got {value!r}")
            changed[name] = kind(value)
        return dataclasses.replace(self, **changed)


_DEFAULTS = Limits()


def env_name(name: str) -> str:
    """The environment variable of a limit: ``COMPOSER_MAX_NODES``."""
    return ENV_PREFIX + name.upper()


def from_environment(environ: Mapping[str, str] = os.environ) -> Limits:
    """The defaults, with each ``COMPOSER_MAX_<NAME>`` set in the environment applied."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Limits):
        raw = environ.get(env_name(field.name))
        if raw is None or not raw.strip():
            continue
        try:
            values[field.name] = float(raw) if field.name == "seconds" else int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{env_name(field.name)}={raw!r}: expected a positive number") from None
    return _DEFAULTS.replace(values)


_ACTIVE: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("composer_limits", default=None)


def current() -> Limits:
    """The limits in force: those of the innermost ``using`` block, else the environment's."""
    active = _ACTIVE.get()
    return active if active is not None else from_environment()


LimitsArg = Limits | Mapping[str, Any] | None


@contextlib.contextmanager
def using(limits: LimitsArg = None, /, **values: Any) -> Iterator[Limits]:
    """Apply limits to everything inside: ``with using(seconds=600): summary(model)``.

    ``limits`` is a ``Limits`` or a mapping of name -> value over the limits in force; None and
    no ``values`` leave them as they are.
    """
    base = limits if isinstance(limits, Limits) else current().replace(limits or {})
    chosen = base.replace(values)
    token = _ACTIVE.set(chosen)
    try:
        yield chosen
    finally:
        _ACTIVE.reset(token)


def how_to_raise(name: str) -> str:
    """The hint every limit error ends with."""
    return f"raise it with limits={{'{name}': N}} or {env_name(name)}=N"


def exceeded(name: str, what: str, limit: float | None = None) -> str:
    """``<what> exceeds the limit nodes=500,000 (raise it with ...)``: the one wording of a limit error."""
    value = getattr(current(), name) if limit is None else limit
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    return f"{what} exceeds the limit {name}={shown} ({how_to_raise(name)})"


# --- a deadline on model code -------------------------------------------------------------------


class DeadlineExceeded(BaseException):  # noqa: N818  (not an Exception: model code's `except Exception` must not swallow it)
    """Raised inside code that ran past its deadline; ``deadline`` turns it into the caller's error."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Stop the code inside after ``seconds`` by raising ``DeadlineExceeded`` in it.

    On the main thread a real-time interval timer (``SIGALRM``) interrupts it between two Python
    bytecodes, so a Python loop stops in time and one long torch kernel stops when it returns.
    Elsewhere (a worker thread, or a caller that uses ``SIGALRM`` itself) a trace function checks
    the clock on every line and call of Python code. A deadline inside another keeps the earlier
    end of the two.
    """
    end = time.monotonic() + seconds
    outer = getattr(_deadline_state, "end", None)
    if outer is not None and outer <= end:
        yield  # the enclosing deadline ends first and is already armed
        return
    _deadline_state.end = end
    try:
        if _can_alarm():
            with _alarm(end):
                yield
        else:
            with _traced(end):
                yield
    finally:
        _deadline_state.end = outer


_deadline_state = threading.local()


def _can_alarm() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None, _on_alarm)
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise DeadlineExceeded


@contextlib.contextmanager
def _alarm(end: float) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(end - time.monotonic(), 1e-3))
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _traced(end: float) -> Iterator[None]:
    previous = sys.gettrace()

    def check(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > end:
            raise DeadlineExceeded
        return check

    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous)
