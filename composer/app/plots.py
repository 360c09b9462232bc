"""The sweep report's plots, drawn from plain data (lists of numbers and labels), with matplotlib.

``report.png`` (``report-1.png``, ``report-2.png``, ... for several pages): weight histograms, one
row per weight, one column per job, titled by the overrides that tell the jobs apart; each
histogram on its own x range (the schemes of one sweep differ by orders of magnitude: ±10 against
±0.06), its y axis the share of the weight's values. ``signal.png``: per architecture, activation
std and weight-gradient norm against depth, one line per job (its own marker and dash), log scale.

matplotlib's import (~0.5 s) and ``savefig`` (~0.2 s a figure) would add most of a sweep's time
after the last job, so ``Plotter`` starts ``python -m composer.app.plots`` when the sweep starts: it
imports matplotlib on the other core while the jobs run, waits for the data on standard input and
draws the figures in two processes (forked). Without it (a direct call) the same functions run here.
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
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")  # one per job, with LINESTYLES: overlapping lines stay apart
LINESTYLES = ("-", "--", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)))

log = logging.getLogger(__name__)


def draw(payload: dict[str, Any]) -> list[str]:
    """Draw the figures of ``payload`` (``{"figures": [{kind: "weights" | "signal", path, ...}]}``),
    in two processes where the system can fork. Returns the paths written."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no GUI backend, 1 s less)

    figures = [f for f in payload.get("figures", []) if f.get("kind") in _DRAWERS]
    for figure in figures:
        Path(figure["path"]).unlink(missing_ok=True)  # what exists afterwards is what was drawn
    if len(figures) > 1 and hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child draws every other figure and leaves without cleanup
            status = 0 if all([_draw_one(Figure, f) for f in figures[1::2]]) else 1
            os._exit(status)
        for figure in figures[0::2]:
            _draw_one(Figure, figure)
        os.waitpid(pid, 0)
    else:
        for figure in figures:
            _draw_one(Figure, figure)
    return [f["path"] for f in figures if Path(f["path"]).exists()]


def _draw_one(Figure: Any, data: dict[str, Any]) -> bool:  # noqa: N803
    """One figure; a failure is a warning on standard error (the report goes on without it)."""
    try:
        _DRAWERS[data["kind"]](Figure, data)
        return True
    except Exception as e:  # noqa: BLE001  (a plot must never cost the report)
        print(f"cannot draw {Path(data['path']).name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return False


def draw_weights(Figure: Any, data: dict[str, Any]) -> None:  # noqa: N803
    """``data``: ``{path, title, rows: [{label, shape, columns: [{title, shares, edges, mean, std,
    constant, zero_fraction} | None]}]}``: one page of histograms, each on its own x range."""
    rows = data["rows"]
    n_columns = max(len(row["columns"]) for row in rows)
    titles = [_wrap(c["title"]) for row in rows for c in row["columns"] if c is not None]
    title_lines = max((len(t) for t in titles), default=1)
    label_chars = min(max(len(row["label"]) for row in rows), 40)
    left = 1.0 + 0.075 * label_chars  # inches: the row labels, then the y axis' label and ticks
    cell_width, cell, title = 2.4, 1.3, 0.12 + 0.17 * title_lines  # inches: one histogram, one row's titles
    gap = 0.55  # inches below each row: its tick labels and x label
    width = left + cell_width * n_columns + 0.3
    height = 0.6 + len(rows) * (cell + title + gap)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width, right=1 - 0.3 / width, top=1 - (0.55 + title) / height, bottom=gap / height,
        wspace=0.3, hspace=(title + gap) / cell,
    )  # fmt: skip
    axes = fig.subplots(len(rows), n_columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_columns):
            column = row["columns"][c] if c < len(row["columns"]) else None
            _histogram(axes[r][c], column, c)
        axes[r][0].set_ylabel("% of values", fontsize=FONT - 1)
        axes[r][0].annotate(
            f"{_wrap_path(row['label'], 40)}\n{row['shape']}", xy=(0, 0.5), xycoords="axes fraction",
            xytext=(-42, 0), textcoords="offset points", ha="right", va="center", fontsize=FONT,
        )  # fmt: skip
    title = data.get("title", "weight histograms")
    fig.suptitle(f"{title}; each on its own x range (the weight's values), y: % of its values", fontsize=FONT + 1)
    fig.savefig(data["path"])


def _histogram(ax: Any, column: dict[str, Any] | None, c: int) -> None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    if column is None:
        ax.set_axis_off()
        return
    shares = [100 * v for v in column["shares"]]
    ax.stairs(shares, column["edges"], fill=True, color=f"C{c % 10}")  # one artist, not 40 bars
    ax.set_xlim(column["edges"][0], column["edges"][-1])
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
    ax.tick_params(labelsize=FONT - 1)
    ax.set_xlabel("value", fontsize=FONT - 1, labelpad=1)
    ax.set_title("\n".join(_wrap(column["title"])), fontsize=FONT)
    if column["constant"] is not None:
        stats = f"all {column['constant']:.4g}"
    else:
        stats = f"mean {column['mean']:.2g}\nstd {column['std']:.2g}"
        if column["zero_fraction"] >= 0.01:
            stats += f"\nzeros {100 * column['zero_fraction']:.0f}%"
    ax.set_ylim(0, (max(shares) or 1) * (1.15 + 0.22 * (stats.count("\n") + 1)))  # headroom for the statistics
    ax.text(0.98, 0.96, stats, transform=ax.transAxes, ha="right", va="top", fontsize=FONT - 1)


def draw_signal(Figure: Any, data: dict[str, Any]) -> None:  # noqa: N803
    """``data``: ``{path, groups: [{title, layers, weights, jobs: [{label, stds, grads}]}]}``: per
    group, activation std against depth (0: the input) and each weight's gradient norm."""
    groups = data["groups"]
    n_jobs = max(len(g["jobs"]) for g in groups)
    legend_columns = min(3, n_jobs)
    panel = 3.3  # inches
    named = any(len(g["layers"]) < 12 or len(g["weights"]) <= 12 for g in groups)  # rotated names under the axis
    noted = any(_zeros(job[key], key == "grads") for g in groups for job in g["jobs"] for key in ("stds", "grads"))
    notes = 0.45 if noted else 0.0  # inches under the x label: which jobs' zeros a log axis cannot draw
    legend = 0.2 * math.ceil(n_jobs / legend_columns)
    top, bottom = 0.45, (1.5 if named else 0.8) + notes + legend  # titles; x labels, notes, legend
    height = len(groups) * (panel + top + bottom)
    fig = Figure(figsize=(12, height), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - top / height, bottom=bottom / height,
                        wspace=0.2, hspace=(top + bottom) / panel)  # fmt: skip
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for g, group in enumerate(groups):
        std_ax, grad_ax = axes[g]
        jobs = group["jobs"]
        for c, job in enumerate(jobs):
            later = (len(jobs) - 1 - c) / max(len(jobs) - 1, 1)  # 1 for the first job, 0 for the last
            style = {
                # later lines thinner, with smaller markers, on top: a line another one covers still shows
                "color": f"C{c % 10}", "marker": MARKERS[c % len(MARKERS)], "markersize": 3 + 3 * later,
                "linestyle": LINESTYLES[c % len(LINESTYLES)], "linewidth": 1 + 2 * later, "label": job["label"],
                "markerfacecolor": "none" if c % 2 else f"C{c % 10}", "zorder": 2 + c,
            }  # fmt: skip
            std_ax.plot(range(len(job["stds"])), [_positive(s) for s in job["stds"]], **style)
            grad_ax.plot(range(1, len(job["grads"]) + 1), [_positive(v) for v in job["grads"]], **style)
        std_ax.set_title(f"{group['title']}: activation std at init", fontsize=FONT + 1)
        std_ax.set_xlabel("depth: leaf module output, in forward order (0: the input)", fontsize=FONT)
        std_ax.set_ylabel("std of the output", fontsize=FONT)
        grad_ax.set_title(f"{group['title']}: gradient norm of each weight at init", fontsize=FONT + 1)
        grad_ax.set_xlabel("depth: weight, in parameter order", fontsize=FONT)
        grad_ax.set_ylabel("‖grad‖ of out.pow(2).mean()", fontsize=FONT)
        _depth_axes(((std_ax, ["input", *group["layers"]], 0), (grad_ax, group["weights"], 1)))
        for ax, key, what in ((std_ax, "stds", "zero std"), (grad_ax, "grads", "zero gradients")):
            _zero_note(ax, group["jobs"], key, what)
        handles, names = std_ax.get_legend_handles_labels()
        band_bottom = 1 - (g + 1) * (panel + top + bottom) / height  # of this group's band, in figure fractions
        fig.legend(
            handles, [_shorten(n, 45) for n in names], fontsize=FONT, ncol=legend_columns, frameon=False,
            loc="lower center", bbox_to_anchor=(0.5, band_bottom + 0.05 / height),
        )  # fmt: skip
    fig.savefig(data["path"])


def _depth_axes(panels: Any) -> None:
    """Each depth by name on a short network (the end of the path: what tells layers apart), else
    numbers; a log y axis where anything is positive."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    for ax, names, start in panels:
        if len(names) <= 12:
            ax.set_xticks(range(start, start + len(names)))
            ax.set_xticklabels([_tail(n, 24) for n in names], rotation=30, ha="right")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        if any(line.get_ydata().size and (line.get_ydata() > 0).any() for line in ax.get_lines()):
            ax.set_yscale("log")  # else nothing is positive: a linear axis shows the zeros
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(True, which="major", alpha=0.3)


def _zero_note(ax: Any, jobs: list[dict[str, Any]], key: str, what: str) -> None:
    """A log axis cannot draw zeros: name the jobs whose values are zero (all, or how many), rather
    than leave their lines out silently."""
    notes = [f"{job['label']} ({zeros})" for job in jobs if (zeros := _zeros(job[key], key == "grads"))]
    if notes:
        text = "\n".join(textwrap.wrap(f"{what}, not drawn: {'; '.join(notes)}", 70)[:3])
        ax.set_xlabel(f"{ax.get_xlabel()}\n{text}", fontsize=FONT)  # under the tick labels, however tall


def _zeros(values: list[float | None], some: bool) -> str:
    """``all 21`` where every value is zero; ``20 of 21`` where some are (with ``some``); else ``""``."""
    known = [v for v in values if v is not None]
    zeros = sum(1 for v in known if v <= 0)
    if known and zeros == len(known):
        return f"all {zeros}"
    return f"{zeros} of {len(known)}" if zeros and some else ""


_DRAWERS = {"weights": draw_weights, "signal": draw_signal}


def _positive(value: float | None) -> float:
    """A value a log axis can show; NaN (a gap in the line) for None, zero or negative."""
    return value if value is not None and value > 0 else math.nan


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text or "", TITLE_CHARS, break_long_words=True) or [""]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _tail(text: str, width: int) -> str:
    """The end of a path, where its names differ, in whole names (``…h.11.mlp.c_fc.weight``)."""
    if len(text) <= width:
        return text
    names = text.split(".")
    kept = names[-1]
    for name in reversed(names[:-1]):
        if len(name) + len(kept) + 2 > width:
            break
        kept = f"{name}.{kept}"
    return "…" + (kept if len(kept) < width else kept[-(width - 1) :])


def _wrap_path(text: str, width: int) -> str:
    """A long label on lines of at most ``width`` characters, broken after dots."""
    lines = [""]
    for part in text.replace(".", ".\n").splitlines():
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


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
