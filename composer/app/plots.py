"""The sweep report's plots, drawn from plain data (lists of numbers and labels), with matplotlib.

``report.png``: weight histograms, one row per weight (its x axis and bins shared by the jobs),
one column per job, titled by the overrides that tell the jobs apart. ``signal.png``: per
architecture, activation std and weight-gradient norm against depth, one line per job, log scale.

matplotlib's import (~0.5 s) and ``savefig`` (~0.2 s a figure) would add most of a sweep's time
after the last job, so ``Plotter`` starts ``python -m composer.app.plots`` when the sweep starts: it
imports matplotlib on the other core while the jobs run, waits for the data on standard input and
draws the two figures in parallel (forked). Without it (a direct call) the same functions run here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

FONT = 9  # points: titles, labels and legends; ticks one smaller
TITLE_CHARS = 30  # characters per title line in a histogram column (2.4 in wide at 9 pt)
DPI = 100

log = logging.getLogger(__name__)


def draw(payload: dict[str, Any]) -> list[str]:
    """Draw what ``payload`` holds (``{"weights": ..., "signal": ...}``, each with its ``path``);
    the two figures in parallel where the system can fork. Returns the paths written."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no GUI backend, 1 s less)

    jobs = [(draw_weights, payload.get("weights")), (draw_signal, payload.get("signal"))]
    jobs = [(fn, data) for fn, data in jobs if data]
    for _, data in jobs:
        Path(data["path"]).unlink(missing_ok=True)  # what exists afterwards is what was drawn
    if len(jobs) == 2 and hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child draws the second figure and leaves without cleanup
            status = 0 if _draw_one(Figure, *jobs[1]) else 1
            os._exit(status)
        _draw_one(Figure, *jobs[0])
        os.waitpid(pid, 0)
    else:
        for fn, data in jobs:
            _draw_one(Figure, fn, data)
    return [data["path"] for _, data in jobs if Path(data["path"]).exists()]


def _draw_one(Figure: Any, fn: Any, data: dict[str, Any]) -> bool:  # noqa: N803
    """One figure; a failure is a warning on standard error (the report goes on without it)."""
    try:
        fn(Figure, data)
        return True
    except Exception as e:  # noqa: BLE001  (a plot must never cost the report)
        print(f"cannot draw {Path(data['path']).name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return False


def draw_weights(Figure: Any, data: dict[str, Any]) -> None:  # noqa: N803
    """``data``: ``{path, rows: [{label, shape, lo, hi, columns: [{title, counts, edges} | None]}]}``."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    rows = data["rows"]
    n_columns = max(len(row["columns"]) for row in rows)
    titles = [_wrap(c["title"]) for row in rows for c in row["columns"] if c is not None]
    title_lines = max((len(t) for t in titles), default=1)
    labels = [row["label"] for row in rows]
    left = 0.35 + 0.075 * min(max(len(label) for label in labels), 40)  # inches for the row labels
    width = left + 2.4 * n_columns + 0.25
    cell, title = 1.3, 0.12 + 0.17 * title_lines  # inches: one histogram, one row's titles
    gap = 0.35  # inches below each row: its tick labels
    height = 0.5 + len(rows) * (cell + title + gap)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width, right=1 - 0.25 / width, top=1 - (0.45 + title) / height, bottom=gap / height,
        wspace=0.12, hspace=(title + gap) / cell,
    )  # fmt: skip
    axes = fig.subplots(len(rows), n_columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_columns):
            ax = axes[r][c]
            column = row["columns"][c] if c < len(row["columns"]) else None
            if column is None:
                ax.set_axis_off()
                continue
            ax.stairs(column["counts"], column["edges"], fill=True, color=f"C{c % 10}")  # one artist, not 40 bars
            ax.set_xlim(row["lo"], row["hi"])
            ax.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.tick_params(labelsize=FONT - 1)
            ax.set_title("\n".join(_wrap(column["title"])), fontsize=FONT)
            if c == 0:
                ax.set_ylabel(f"{row['label']}\n{row['shape']}", fontsize=FONT, rotation=0, ha="right", va="center")
    fig.suptitle("weight distributions: one row per weight (its x axis shared), one column per job", fontsize=FONT + 1)
    fig.savefig(data["path"])


def draw_signal(Figure: Any, data: dict[str, Any]) -> None:  # noqa: N803
    """``data``: ``{path, groups: [{title, layers, weights, jobs: [{label, stds, grads}]}]}``: per
    group, activation std against depth (0: the input) and each weight's gradient norm."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    groups = data["groups"]
    n_jobs = max(len(g["jobs"]) for g in groups)
    legend_columns = min(3, n_jobs)
    panel = 3.3  # inches
    named = any(len(g["layers"]) < 12 or len(g["weights"]) <= 12 for g in groups)  # rotated names under the axis
    top, bottom = 0.45, (1.2 if named else 0.8) + 0.2 * math.ceil(n_jobs / legend_columns)  # titles; x labels, legend
    height = len(groups) * (panel + top + bottom)
    fig = Figure(figsize=(12, height), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - top / height, bottom=bottom / height,
                        wspace=0.2, hspace=(top + bottom) / panel)  # fmt: skip
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for g, group in enumerate(groups):
        std_ax, grad_ax = axes[g]
        for c, job in enumerate(group["jobs"]):
            style = {"color": f"C{c % 10}", "marker": "o", "markersize": 3, "linewidth": 1.5, "label": job["label"]}
            std_ax.plot(range(len(job["stds"])), [_positive(s) for s in job["stds"]], **style)
            grad_ax.plot(range(1, len(job["grads"]) + 1), [_positive(v) for v in job["grads"]], **style)
        std_ax.set_title(f"{group['title']}: activation std at init", fontsize=FONT + 1)
        std_ax.set_xlabel("depth: leaf module output, in forward order (0: the input)", fontsize=FONT)
        std_ax.set_ylabel("std of the output", fontsize=FONT)
        grad_ax.set_title(f"{group['title']}: gradient norm of each weight at init", fontsize=FONT + 1)
        grad_ax.set_xlabel("depth: weight, in parameter order", fontsize=FONT)
        grad_ax.set_ylabel("‖grad‖ of out.pow(2).mean()", fontsize=FONT)
        for ax, names, start in ((std_ax, ["input", *group["layers"]], 0), (grad_ax, group["weights"], 1)):
            if len(names) <= 12:  # a short network: each depth by name
                ax.set_xticks(range(start, start + len(names)))
                ax.set_xticklabels([_shorten(n, 14) for n in names], rotation=30, ha="right")
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
            if any(line.get_ydata().size and (line.get_ydata() > 0).any() for line in ax.get_lines()):
                ax.set_yscale("log")  # else nothing is positive: a linear axis shows the zeros
            ax.tick_params(labelsize=FONT - 1)
            ax.grid(True, which="major", alpha=0.3)
        for ax, key, what in ((std_ax, "stds", "zero std"), (grad_ax, "grads", "zero gradients")):
            hidden = [job["label"] for job in group["jobs"] if not any(v is not None and v > 0 for v in job[key])]
            if hidden:  # a log axis cannot draw them: say so rather than leave the line out silently
                note = f"{what}, not drawn: {', '.join(hidden)}"
                ax.text(0.01, 0.01, _shorten(note, 90), transform=ax.transAxes, fontsize=FONT - 1, va="bottom")
        handles, names = std_ax.get_legend_handles_labels()
        band_bottom = 1 - (g + 1) * (panel + top + bottom) / height  # of this group's band, in figure fractions
        fig.legend(
            handles, [_shorten(n, 45) for n in names], fontsize=FONT, ncol=legend_columns, frameon=False,
            loc="lower center", bbox_to_anchor=(0.5, band_bottom + 0.05 / height),
        )  # fmt: skip
    fig.savefig(data["path"])


def _positive(value: float | None) -> float:
    """A value a log axis can show; NaN (a gap in the line) for None, zero or negative."""
    return value if value is not None and value > 0 else math.nan


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text or "", TITLE_CHARS, break_long_words=True) or [""]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the helper process -------------------------------------------------------------------------


class Plotter:
    """``python -m composer.app.plots`` in the background: matplotlib imports while the jobs run."""

    def __init__(self) -> None:
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "composer.app.plots"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        except OSError:
            self.process = None

    def draw(self, payload: dict[str, Any]) -> list[str] | None:
        """The paths written; None where the helper failed (the caller then draws itself)."""
        if self.process is None:
            return None
        try:
            out, err = self.process.communicate(json.dumps(payload), timeout=300)
        except (OSError, subprocess.SubprocessError):
            self.close()
            return None
        for line in err.splitlines():
            if line.startswith("cannot draw "):
                log.warning("%s", line)
        if self.process.returncode != 0:
            return None if "No module named 'matplotlib'" not in err else []
        return json.loads(out or "[]")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def serve() -> None:
    """The helper: import matplotlib now, then draw what arrives on standard input."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import io  # noqa: PLC0415

    from matplotlib.figure import Figure  # noqa: PLC0415

    warm = Figure(figsize=(2, 1))  # fonts, text layout and the Agg canvas load once, before the data comes
    warm.subplots().set_title("warm up")
    warm.savefig(io.BytesIO(), format="png")
    payload = json.loads(sys.stdin.read() or "{}")
    print(json.dumps(draw(payload)) if payload else "[]")


if __name__ == "__main__":
    serve()
