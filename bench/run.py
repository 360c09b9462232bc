"""Run every benchmark and print one table: figure, what, goal, measured, pass/fail.

    python -m bench                   # everything (a few minutes on a 2-core machine)
    python -m bench --quick           # fewer rounds: a rough look in about two and a half minutes
    python -m bench --only 1,4        # some figures (1-8, shard, gpu)
    python -m bench --markdown out.md --json out.json

Every ratio compares variants measured in this run, interleaved; see ``bench/common.py``.
Exits 0 unless ``--strict`` is given and a goal is missed (missed goals are explained in
BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/run.py``: make ``bench`` and ``composer`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result  # noqa: E402

SECTIONS = {
    "1": ("build from a dict and from YAML (goals 1, 2)", "bench.build"),
    "3": ("large model build + init (goal 3)", "bench.large"),
    "4": ("forward pass and torch.compile (goal 4)", "bench.forward"),
    "5": ("checkpoints (goal 5)", "bench.checkpoint"),
    "6": ("start-up and multirun (goal 6)", "bench.startup"),
    "7": ("check mode on meta (goal 7)", "bench.meta"),
    "8": ("real architectures: forward, compile, GPT-2 build, graph build (goal 8)", "bench.architectures"),
    "shard": ("sharded builds over 1-3 gloo ranks (context)", "bench.shard"),
    "gpu": ("optional GPU section", "bench.gpu"),
}
ALIASES = {"2": "1"}


def machine() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        mem = "unknown"
    import torch

    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{n} {version(n)}"
            for n in ("torch", "hydra-core", "omegaconf", "safetensors", "PyYAML", "numpy", "mmengine")
        ),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def table(results: list[Result]) -> list[str]:
    rows = [("fig", "what", "goal", "measured", "result")]
    rows += [(r.figure, r.what, r.goal, r.measured, r.verdict) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def markdown(results: list[Result], info: dict[str, str], seconds: float, command: str) -> str:
    out = [
        f"Command: `{command}`, {seconds:.0f} s. "
        f"Load average before/after: {info['load_before']} / {info['load_after']}.",
        "",
        "| fig | what | goal | measured | result | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        detail = r.detail.replace("|", "\\|")
        out.append(f"| {r.figure} | {r.what} | {r.goal} | {r.measured} | {r.verdict} | {detail} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--only", default="", help="comma-separated figures: 1,2,3,4,5,6,7,shard,gpu")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="also write every row and the machine as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)

    chosen = [ALIASES.get(s.strip().lower(), s.strip().lower()) for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from 1-8, shard or gpu")
    chosen = [s for s in SECTIONS if not chosen or s in chosen]

    info = machine()
    info["load_before"] = load_average()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items() if k != "load_before"), file=sys.stderr)
    results: list[Result] = []
    started = time.perf_counter()
    for key in chosen:
        title, module_name = SECTIONS[key]
        t0 = time.perf_counter()
        print(f"[{key}] {title} ...", file=sys.stderr, flush=True)
        try:
            module = __import__(module_name, fromlist=["run"])
            rows = module.run(quick=args.quick)
        except Exception as e:
            traceback.print_exc()
            rows = [Result(key, title, "info", None, None, detail=f"{type(e).__name__}: {e}"[:300], error=True)]
        for row in rows:
            print(f"    {row.what}: {row.measured} (goal {row.goal}) {row.verdict}  {row.detail}", file=sys.stderr)
        print(f"    ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        results += rows
    seconds = time.perf_counter() - started
    info["load_after"] = load_average()

    print()
    print("\n".join(table(results)))
    print(f"\n{sum(r.passed is True for r in results)} pass, {sum(r.passed is False for r in results)} fail, "
          f"{sum(r.verdict == 'n/a' for r in results)} not available; {seconds:.0f} s; "
          f"load average {info['load_before']} -> {info['load_after']}")  # fmt: skip
    command = "python -m bench" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    if args.markdown:
        args.markdown.write_text(markdown(results, info, seconds, command))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "seconds": seconds, "command": command,
                                         "results": [r.as_dict() for r in results]}, indent=2))  # fmt: skip
    missed = any(r.passed is False for r in results)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
