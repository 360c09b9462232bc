"""Goal 7: check mode of a 10-billion-parameter recipe on the ``meta`` device.

In a fresh interpreter (``bench.child meta``): ``composer.build_from_config(recipe, device="meta")``
then ``composer.summary(model)``, timed after the imports, with the peak RSS of the whole process.
The recipe: 20 blocks of LayerNorm(8192), Linear 8192-32768, GELU, Linear 32768-8192, a normal rule
on every Linear weight and zeros on its bias, and an input shape, so the summary runs a forward on
``meta`` for the output shapes.
"""

from __future__ import annotations

from bench.common import Result, median, run_child


def run(quick: bool = False) -> list[Result]:
    runs = [run_child("meta") for _ in range(1 if quick else 3)]
    for res in runs:
        if not res["all_meta"] or res["params"] < 10e9:
            raise AssertionError(f"check mode built {res['params']:,} parameters, all on meta: {res['all_meta']}")
    seconds = median([res["seconds"] for res in runs])
    peak = max(res["peak_mb"] for res in runs)
    build = median([res["build_s"] for res in runs])
    summ = median([res["summary_s"] for res in runs])
    n = f"median of {len(runs)} fresh processes" if len(runs) > 1 else "one fresh process"
    params = runs[0]["params"] / 1e9
    lines = runs[0]["summary_lines"]
    above = peak - max(r["baseline_mb"] for r in runs)
    return [
        Result("7", f"check mode, {params:.1f} B params: build (meta) + summary", "<=", 2.0, seconds, "s",
               detail=f"build {build * 1000:.0f} ms, summary {summ * 1000:.0f} ms ({n}; {lines} summary lines)"),
        Result("7", "check mode: peak RSS of the whole process", "<=", 500, peak, "MB",
               detail=f"{above:.0f} MB above the interpreter with torch and composer imported"),
    ]  # fmt: skip
