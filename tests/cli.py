"""Running the command line as a user does: real ``python -m composer`` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.recipes import ROOT

TIMEOUT = 300


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "composer", *args]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One run, composer importable whether installed or not, in an environment without the
    caller's ``HYDRA_FULL_ERROR`` or ``COMPOSER_*`` settings (a test states the ones it means)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("COMPOSER_")}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)


def run_together(jobs: dict[str, tuple], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Start independent runs at once: {name: (cmd, env or None)} -> {name: result}."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, cmd, cwd, env) for name, (cmd, env) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}
