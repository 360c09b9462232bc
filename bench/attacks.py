"""The hostile inputs of issue 13, each in a fresh process: wall time and peak memory of the attack.

``python -m bench.attacks`` measures this tree. ``PYTHONPATH=/path/to/another/tree python -m
bench.attacks`` measures another composer (an older one: what the attacks did before the budgets),
taking the attacks themselves from this tree's ``tests/attacks.py``.

Each attack's input is written first (``prepare``, not measured); then the part a user runs is
timed, and its memory is the growth of the process's peak resident size during it (Linux resets
the peak on request; elsewhere, the growth over the peak before it).
A process is stopped after ``--timeout`` seconds, or when it passes ``--memory`` GB of address space.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, pathlib, resource, sys, tempfile, time
limit = int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # the cap, set here: no preexec_fn (below)
from tests import attacks
from composer import CheckpointError, ConfigError, build_from_config
build_from_config({"type": "Linear", "in_features": 2, "out_features": 2})  # imports paid first
attack = getattr(attacks, sys.argv[2])[int(sys.argv[1])]
with tempfile.TemporaryDirectory() as tmp:
    try:
        argument = attack.prepare(pathlib.Path(tmp))
    except Exception as e:
        print(json.dumps({"outcome": f"cannot prepare: {type(e).__name__}: {e}"[:120]}))
        sys.exit()
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    try:  # Linux: reset the peak resident size, so the attack's own peak shows
        open("/proc/self/clear_refs", "w").write("5")
        before, peak = status("VmRSS"), lambda: status("VmHWM")
    except OSError:
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        before = peak()
    start = time.perf_counter()
    try:
        attack.run(argument)
        outcome = "ends (no error)"
    except (ConfigError, CheckpointError) as e:
        outcome = f"{type(e).__name__}: {e}"
    except BaseException as e:
        outcome = f"RAW {type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    grown = (peak() - before) / 1024
    print(json.dumps({"outcome": outcome.splitlines()[0][:150], "seconds": seconds, "mb": grown}))
"""


def measure(index: int, timeout: float, memory_gb: float, catalogue: str = "ATTACKS") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))

    # The child caps its own address space: a ``preexec_fn`` runs Python in a child forked from a
    # process that may have threads (a test's pool, torch's), where it can deadlock before exec.
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(index), catalogue, str(memory_gb)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"outcome": f"HANGS: still running after {timeout:g} s", "seconds": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"outcome": f"DIES (exit {done.returncode}): {tail}"[:150]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before an attack counts as a hang")
    parser.add_argument("--memory", type=float, default=6.0, help="GB of address space a process may take")
    parser.add_argument("-k", default="", help="only the attacks whose name holds this text")
    parser.add_argument(
        "--at-limits", action="store_true", help="measure instead the costliest inputs each default limit lets through"
    )
    parser.add_argument(
        "--files", action="store_true", help="measure instead the attacks on checkpoint directories and large files"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests import attacks  # noqa: PLC0415  (this tree's attacks, whatever composer is measured)

    catalogue = "AT_THE_LIMITS" if args.at_limits else "FILE_ATTACKS" if args.files else "ATTACKS"
    print(f"{'attack':58} {'seconds':>8} {'MB':>7}  outcome")
    for index, attack in enumerate(getattr(attacks, catalogue)):
        if args.k not in attack.name:
            continue
        result = measure(index, args.timeout, args.memory, catalogue)
        seconds = f"{result['seconds']:.3f}" if "seconds" in result else "-"
        mb = f"{result['mb']:.0f}" if "mb" in result else "-"
        print(f"{attack.name:58} {seconds:>8} {mb:>7}  {result['outcome']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
