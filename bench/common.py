"""What every benchmark shares: results, interleaved timing, fresh-process runs, memory, recipes.

Timings on a shared 2-core VM swing by up to 40% between runs, so nothing here compares numbers
taken in different runs: the variants of one figure are timed in the same run, interleaved (the
order rotates each round), after ``gc.collect()``, and compared by their medians.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


# --- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the table: a figure, its goal, what was measured and whether it passes.

    ``op`` is ``"<="`` or ``">="`` against ``limit``; ``"~1"`` means 1.00 within ``limit`` (the noise
    band); ``"info"`` is a figure shown for context, with no goal. ``value`` None: not measured here
    (``detail`` says why), which is neither a pass nor a failure.
    """

    figure: str
    what: str
    op: str
    limit: float | None
    value: float | None
    unit: str = "x"
    detail: str = ""
    error: bool = False  # the benchmark itself failed: counts as a missed goal

    @property
    def passed(self) -> bool | None:
        if self.error:
            return False
        if self.op == "info" or self.value is None or self.limit is None:
            return None
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == ">=":
            return self.value >= self.limit
        if self.op == "~1":
            return abs(self.value - 1.0) <= self.limit
        raise ValueError(self.op)

    @property
    def goal(self) -> str:
        if self.op == "info":
            return "(info)"
        if self.op == "~1":
            return f"1.00 ± {self.limit:.2f}"
        sign = "≤" if self.op == "<=" else "≥"
        return f"{sign} {self.limit:g}{_unit(self.unit)}"

    @property
    def measured(self) -> str:
        if self.error:
            return "error"
        if self.value is None:
            return "not available"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "s":
            return f"{self.value:.3f} s"
        if self.unit == "MB":
            return f"{self.value:.0f} MB"
        if self.unit == "breaks":
            return f"{self.value:g} graph breaks"
        return f"{self.value:g} {self.unit}"

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.value is None:
            return "n/a" if self.op != "info" else "skipped"
        return {True: "PASS", False: "FAIL", None: "-"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goal": self.goal, "measured": self.measured, "verdict": self.verdict}


def _unit(unit: str) -> str:
    return {"x": "x", "s": " s", "MB": " MB", "breaks": ""}.get(unit, f" {unit}")


def not_available(
    figure: str, what: str, why: str, op: str = "info", limit: float | None = None, unit: str = "x"
) -> Result:
    """A row whose figure could not be measured here: neither a pass nor a failure."""
    return Result(figure, what, op, limit, None, unit, detail=why)


# --- timing -------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], collect: bool = True) -> tuple[float, float, Any]:
    """Wall and CPU seconds (all threads, user + system) of one call, after a full collection.

    CPU time is shown beside the wall time: on a machine shared with other jobs the wall clock
    also counts the time spent waiting for a core, the CPU time does not.
    """
    if collect:
        gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


@dataclass
class Timings:
    """Seconds per call of each variant, wall clock and CPU, in the order they were taken."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def ratio(self, a: str, b: str) -> float:
        """Median wall time of ``a`` over that of ``b``."""
        return statistics.median(self.wall[a]) / statistics.median(self.wall[b])

    def cpu_ratio(self, a: str, b: str) -> float:
        return statistics.median(self.cpu[a]) / statistics.median(self.cpu[b])

    def describe(self, names: Sequence[str] | None = None) -> str:
        """``name median (min)`` for each variant, for the detail column."""
        names = list(names or self.wall)
        counts = {len(self.wall[name]) for name in names}
        n = f"{max(counts)}" if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
        return (
            "; ".join(f"{name} {ms(self.median(name))} (min {ms(min(self.wall[name]))})" for name in names)
            + f" (medians of {n} interleaved runs)"
        )

    def paired_ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``a``'s time over ``b``'s in the same round: a slow spell of the
        machine (a disk flushing for another job) slows both of a pair, and cancels out."""
        return statistics.median(x / y for x, y in zip(self.wall[a], self.wall[b], strict=False))

    def min_ratio(self, a: str, b: str) -> float:
        """Fastest run of ``a`` over fastest of ``b``: what each can do when nothing else runs."""
        return min(self.wall[a]) / min(self.wall[b])


def interleave(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    cap: dict[str, int] | None = None,
    collect: bool = True,
    prepare: Mapping[str, Callable[[], Any]] | None = None,
    freeze: bool = True,
) -> Timings:
    """Run every variant once per round, in an order that rotates each round.

    ``cap`` limits a slow variant (a peer that takes seconds) to its first few rounds; ``collect``
    False skips the ``gc.collect()`` before each call (for many short calls that allocate no
    objects); ``prepare`` runs before a variant's call, untimed (dropping a file from the page
    cache). ``freeze`` moves what lives before the rounds out of the collector's sight, so each
    ``gc.collect()`` is short; False keeps the process as a user's is, every object in the
    collector's generations (a build that leaves the collector on then pays its full passes).
    """
    names = list(variants)
    cap = cap or {}
    prepare = prepare or {}
    gc.collect()
    if freeze:
        gc.freeze()
    try:
        for _ in range(warmup):
            for name in names:
                *_, out = timed(variants[name], collect)
                del out
        timings = Timings({name: [] for name in names}, {name: [] for name in names})
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if r >= cap.get(name, rounds):
                    continue
                if name in prepare:
                    prepare[name]()
                seconds, cpu, out = timed(variants[name], collect)
                del out
                timings.wall[name].append(seconds)
                timings.cpu[name].append(cpu)
    finally:
        if freeze:
            gc.unfreeze()
    return timings


def confirmed(measure: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """A noisy check misses only when two measurements in a row miss: one slow sample is not a regression.

    ``measure`` returns (passed, what it measured); the result is the same, with both descriptions
    when the first missed.
    """
    ok, message = measure()
    if ok:
        return ok, message
    ok, second = measure()
    return ok, f"{message}; measured again: {second}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# --- memory -------------------------------------------------------------------------------------


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux 4.0+); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- fresh processes ----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HYDRA_FULL_ERROR", "0")
    return env


def run_child(task: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """``python -m bench.child task args...`` in a fresh interpreter; the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.child", task, *args],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"bench.child {task} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wall(cmd: Sequence[str], cwd: Path = ROOT, timeout: float = 600) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of a whole process, start-up included."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


# --- recipes ------------------------------------------------------------------------------------


def blocks_recipe(n: int, width: int = 64) -> dict[str, Any]:
    """``n`` blocks of Linear(width, width) + ReLU, written out as one flat Sequential."""
    linear = {"type": "Linear", "in_features": width, "out_features": width}
    return {
        "model": {
            "type": "Sequential",
            "layers": [layer for _ in range(n) for layer in (dict(linear), {"type": "ReLU"})],
        }
    }


def blocks_targets(n: int, width: int = 64) -> dict[str, Any]:
    """The same tree written for ``hydra.utils.instantiate``, with ``_target_``."""
    linear = {"_target_": "torch.nn.Linear", "in_features": width, "out_features": width}
    relu = {"_target_": "torch.nn.ReLU"}
    return {
        "_target_": "torch.nn.Sequential",
        "_args_": [layer for _ in range(n) for layer in (dict(linear), dict(relu))],
    }


def blocks_handwritten(n: int, width: int = 64):
    from torch import nn

    return nn.Sequential(*[layer for _ in range(n) for layer in (nn.Linear(width, width), nn.ReLU())])


LARGE_LAYERS, LARGE_WIDTH = 24, 4096
LARGE_PARAMS = LARGE_LAYERS * (LARGE_WIDTH * LARGE_WIDTH + LARGE_WIDTH)


def large_recipe(layers: int = LARGE_LAYERS, width: int = LARGE_WIDTH) -> dict[str, Any]:
    """``layers`` x Linear(width, width) with the rule normal(0, 0.02) on every weight."""
    return {
        "model": {
            "type": "Repeat",
            "times": layers,
            "body": {"type": "Linear", "in_features": width, "out_features": width},
        },
        "init": {"rules": [{"layer": "Linear", "weight": {"type": "normal", "mean": 0.0, "std": 0.02}}]},
    }


def composer_app_available() -> bool:
    return (ROOT / "composer" / "__main__.py").exists()
