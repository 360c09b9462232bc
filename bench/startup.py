"""Goal 6: start-up of the Hydra app, and a six-scheme multirun against one run.

Whole processes, wall clock, alternating round after round in one run:
- ``python -c "import torch, hydra"``: the floor any Hydra app on torch pays;
- ``python -m composer model=mlp``: one run (build, summary, checkpoint, recipe, summary file);
- ``python -m composer -m model=mlp init=default,normal,constant,xavier,mixed,custom`` with the
  basic launcher: six jobs in one process, plus the sweep report;
- the probe's share of a job: ``model=mlp`` and ``model=resnet18`` with the probe on (the default)
  against ``probe=false``.
Run and sweep directories go to a temporary folder. Without ``composer/__main__.py`` the figures
are reported as not available.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import Result, composer_app_available, median, ms, not_available, wall

SCHEMES = "default,normal,constant,xavier,mixed,custom"


def commands(tmp: Path, r: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "import torch, hydra": [py, "-c", "import torch, hydra"],
        "single run": [py, "-m", "composer", "model=mlp", f"hydra.run.dir={tmp}/run{r}"],
        "multirun (6 jobs)": [
            py,
            "-m",
            "composer",
            "-m",
            "model=mlp",
            f"init={SCHEMES}",
            f"hydra.sweep.dir={tmp}/sweep{r}",
        ],
        "single run, probe=false": [py, "-m", "composer", "model=mlp", "probe=false", f"hydra.run.dir={tmp}/np{r}"],
        "resnet18": [py, "-m", "composer", "model=resnet18", f"hydra.run.dir={tmp}/rn{r}"],
        "resnet18, probe=false": [py, "-m", "composer", "model=resnet18", "probe=false", f"hydra.run.dir={tmp}/rnp{r}"],
    }


def run(quick: bool = False) -> list[Result]:
    startup, sweep = (
        "python -m composer model=mlp / python -c 'import torch, hydra'",
        "six-scheme multirun (basic launcher) / one run",
    )
    if not composer_app_available():
        why = "composer/__main__.py does not exist yet"
        return [not_available("6", startup, why, "<=", 1.3), not_available("6", sweep, why, "<=", 1.5)]
    rounds, sweep_rounds = (1, 1) if quick else (5, 3)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="composer-bench-") as tmp:
        for r in range(-1, rounds):  # round -1 warms the page cache and .pyc files, untimed
            cmds = commands(Path(tmp), r + 1)
            names = list(cmds)
            order = names[r % len(names) :] + names[: r % len(names)] if r >= 0 else names
            for name in order:
                if name.startswith("multirun") and r >= sweep_rounds:
                    continue
                try:
                    seconds, cpu_seconds = wall(cmds[name])
                except Exception as e:  # the app exists but fails: say so in the table
                    why = f"{name} failed: {str(e).splitlines()[-1][:200]}"
                    return [not_available("6", startup, why, "<=", 1.3), not_available("6", sweep, why, "<=", 1.5)]
                if r >= 0:
                    times.setdefault(name, []).append(seconds)
                    cpu.setdefault(name, []).append(cpu_seconds)
    t = {name: median(values) for name, values in times.items()}
    c = {name: median(values) for name, values in cpu.items()}
    detail = (
        "; ".join(f"{name} {ms(t[name])}" for name in t) + f" (medians of {sweep_rounds}-{rounds} alternating runs)"
    )
    base, one, many = "import torch, hydra", "single run", "multirun (6 jobs)"
    probes = [
        (label, on, off)
        for label, on, off in (
            ("mlp", one, "single run, probe=false"),
            ("resnet18", "resnet18", "resnet18, probe=false"),
        )
    ]
    return [
        Result("6", startup, "<=", 1.3, t[one] / t[base], detail=f"{detail}; CPU-time ratio {c[one] / c[base]:.2f}x"),
        Result("6", sweep, "<=", 1.5, t[many] / t[one], detail=f"CPU-time ratio {c[many] / c[one]:.2f}x"),
        *(
            Result(
                "6", f"a {label} job with the probe / probe=false", "<=", 1.1, t[on] / t[off],
                detail=f"{ms(t[on])} / {ms(t[off])}; CPU-time ratio {c[on] / c[off]:.2f}x",
            )
            for label, on, off in probes
        ),
    ]  # fmt: skip
