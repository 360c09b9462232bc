"""Goal 3: 24 x Linear(4096, 4096), 403 M parameters, with a normal(0, 0.02) rule on the weights.

Each variant runs in its own fresh interpreter (time after import, and peak RSS above the
interpreter's baseline), and the variants alternate, round after round, in one run:
- floor: allocate every parameter and one ``normal_`` pass (what no builder can beat);
- expert: on ``meta``, ``to_empty``, one init pass: what an expert writes by hand;
- handwritten: ``nn.Sequential`` of ``nn.Linear`` (default init) followed by a ``normal_`` pass;
- composer: ``build_from_config`` with the rule;
- mmengine (peer, where installed): ``BaseModule`` with ``init_cfg`` and ``init_weights()``.
"""

from __future__ import annotations

from bench.common import LARGE_PARAMS, MB, Result, median, ms, run_child


def run(quick: bool = False) -> list[Result]:
    rounds = 1 if quick else 3
    variants = ["floor", "expert", "handwritten", "composer"]
    try:
        import mmengine.model  # noqa: F401

        peer = True
    except Exception:
        peer = False
    runs: dict[str, list[dict]] = {v: [] for v in [*variants, "mmengine"]}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        if peer and r == 0:
            order.append("mmengine")  # one run: it takes twice as long as the others
        for variant in order:
            runs[variant].append(run_child("large", variant))
    for variant in variants:
        for res in runs[variant]:
            if abs(res["weight_std"] - 0.02) > 0.002:
                raise AssertionError(f"{variant}: weight std {res['weight_std']:.4f}, expected 0.02")

    t = {v: median([res["seconds"] for res in runs[v]]) for v in runs if runs[v]}
    cpu = {v: median([res["cpu_s"] for res in runs[v]]) for v in runs if runs[v]}
    peak = {v: max(res["delta_mb"] for res in runs[v]) for v in runs if runs[v]}
    param_mb = LARGE_PARAMS * 4 / MB
    n = f"(medians of {rounds} fresh processes)" if rounds > 1 else "(one fresh process each)"
    detail = "; ".join(f"{v} {ms(t[v])}" for v in t) + f" {n}"
    mem = "; ".join(f"{v} +{peak[v]:.0f} MB" for v in peak) + f"; parameters {param_mb:.0f} MB"
    rows = [
        Result("3", "large: build + init / floor (alloc + normal_)", "<=", 1.1, t["composer"] / t["floor"],
               detail=f"{detail}; CPU-time ratio {cpu['composer'] / cpu['floor']:.2f}x"),
        Result("3", "large: build + init / expert (meta + to_empty + one pass)", "<=", 0.6, t["composer"] / t["expert"],
               detail=f"CPU-time ratio {cpu['composer'] / cpu['expert']:.2f}x"),
        Result("3", "large: build + init / handwritten + normal_ (double init)", "info", None,
               t["composer"] / t["handwritten"], detail=f"CPU-time ratio {cpu['composer'] / cpu['handwritten']:.2f}x"),
        Result("3", "large: peak RSS above baseline / parameter bytes", "info", None, peak["composer"] / param_mb,
               detail=mem),
        Result("3", "large: peak RSS above baseline / expert's", "<=", 1.1, peak["composer"] / peak["expert"]),
        Result("3", "large: handwritten + normal_, peak RSS / parameter bytes", "info", None,
               peak["handwritten"] / param_mb),
    ]  # fmt: skip
    if peer:
        mmengine = t["mmengine"] / t["composer"]
        rows.append(Result("3", "large: mmengine init_cfg + init_weights / composer (peer)", "info", None, mmengine))
    return rows
