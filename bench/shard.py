"""Sharded builds: per-rank peak memory and build time against world size (figures for context).

24 x Linear(2048, 2048), 403 MB of float32 parameters, seeded. For 1, 2 and 3 gloo ranks on this
machine (fresh interpreters, ``tests.distributed.run_ranks``), each rank times
``build_from_config(recipe, mesh=mesh)`` and measures the bytes it allocates at its peak
(``PeakMemory``: glibc's count of bytes in use, sampled every millisecond; a first sharded build of
a tiny recipe comes first, so the one-off set-up of FSDP is not counted). The single-process build
(no mesh) is timed and measured in the world-size-1 processes, interleaved with the sharded one.

    python -m bench.shard            # 3 rounds per world size, about a minute
    python -m bench.shard --quick    # 1 round
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, Result, median  # noqa: E402

LAYERS, WIDTH = 24, 2048
LINEAR = {"type": "Linear", "in_features": WIDTH, "out_features": WIDTH}
RECIPE = {"model": {"type": "Repeat", "times": LAYERS, "body": LINEAR}, "init": {"seed": 0}}
PARAM_BYTES = LAYERS * (WIDTH * WIDTH + WIDTH) * 4
WORLDS = (1, 2, 3)


def _rank(rank: int, world: int, folder: str, rounds: int) -> None:
    import torch.distributed as dist

    from composer import build_from_config
    from tests.distributed import PeakMemory, cpu_mesh

    mesh = cpu_mesh()
    small = {"model": {"type": "Repeat", "times": 2, "body": {"type": "Linear", "in_features": 8, "out_features": 8}}}
    build_from_config(small, mesh=mesh)
    variants = ["sharded", "single"] if world == 1 else ["sharded"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(rounds):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            gc.collect()
            dist.barrier()
            started = time.perf_counter()
            with PeakMemory() as peak:
                model = build_from_config(RECIPE, mesh=mesh if variant == "sharded" else None)
            seconds = time.perf_counter() - started
            runs[variant].append({"seconds": seconds, "peak": peak.peak})
            del model
    if world == 2:
        runs.update(_forward_peaks(mesh, rounds))
    Path(folder, f"{world}-{rank}.json").write_text(json.dumps(runs))


def _forward_peaks(mesh, rounds: int) -> dict[str, list[dict]]:
    """Bytes a forward allocates at its peak, float32 parameters against ``param_dtype: bfloat16``:
    each FSDP unit gathers its full weights for its forward, in the dtype the policy names."""
    import torch

    from composer import build_from_config
    from tests.distributed import PeakMemory

    peaks: dict[str, list[dict]] = {}
    x = torch.randn(8, WIDTH)
    for name, parallel in (("forward_fp32", {}), ("forward_bf16", {"param_dtype": "bfloat16"})):
        model = build_from_config({**RECIPE, "parallel": parallel}, mesh=mesh)
        peaks[name] = []
        for _ in range(rounds):
            with torch.no_grad(), PeakMemory() as peak:
                model(x)
            peaks[name].append({"peak": peak.peak})
        del model
    return peaks


def run(quick: bool = False) -> list[Result]:
    from tests.distributed import PeakMemory, run_ranks

    if not PeakMemory.available():
        return [Result("shard", "sharded build: peak memory per rank", "info", None, None, detail="needs glibc")]
    rounds = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for world in WORLDS:
            run_ranks(world, _rank, folder, rounds)
        results = {
            (world, rank): json.loads(Path(folder, f"{world}-{rank}.json").read_text())
            for world in WORLDS
            for rank in range(world)
        }
    single = results[(1, 0)]["single"]
    single_s, single_mb = median([r["seconds"] for r in single]), max(r["peak"] for r in single) / MB
    rows.append(Result("shard", "single-process build: peak allocated", "info", None, single_mb, unit="MB",
                       detail=f"parameters {PARAM_BYTES / MB:.0f} MB; {single_s:.2f} s"))  # fmt: skip
    for world in WORLDS:
        per_rank = [results[(world, rank)]["sharded"] for rank in range(world)]
        peak_mb = max(r["peak"] for runs in per_rank for r in runs) / MB
        seconds = median([max(runs[i]["seconds"] for runs in per_rank) for i in range(rounds)])
        share = f"1/{world} of the parameters: {PARAM_BYTES / world / MB:.0f} MB"
        what = f"sharded build, {world} rank(s)"
        rows.append(Result("shard", f"{what}: peak allocated per rank", "info", None, peak_mb, unit="MB", detail=share))
        timing = f"{seconds:.2f} s vs {single_s:.2f} s"
        rows.append(Result("shard", f"{what}: time / single-process", "info", None, seconds / single_s, detail=timing))
    fp32, bf16 = (
        max(r["peak"] for rank in range(2) for r in results[(2, rank)][k]) / MB
        for k in ("forward_fp32", "forward_bf16")
    )
    unit = WIDTH * (WIDTH + 1) * 4 / MB
    detail = f"{bf16:.1f} MB vs {fp32:.1f} MB (one unit's full float32 weights: {unit:.1f} MB)"
    what = "2 ranks: forward peak, param_dtype bfloat16 / float32"
    rows.append(Result("shard", what, "info", None, bf16 / fp32, detail=detail))
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row.what:<60} {row.measured:>12}   {row.detail}")
