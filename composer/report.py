"""The sweep report: a Hydra callback that compares the jobs of a multirun from their run folders.

At the end of a multirun, whatever launcher ran the jobs (in this process, in worker processes or
on a cluster), it reads every job folder under the sweep's root — ``.hydra/overrides.yaml``,
``.hydra/hydra.yaml``, the checkpoint ``model.safetensors`` or the ``error.txt`` of a failed job —
and writes at the root:

- ``report.csv``: one row per job and parameter: mean, std (population), min, max, fraction of zeros;
- ``report.md``: the jobs, the same statistics as a table per layer across jobs, the failed jobs;
- ``report.png``: histograms of each weight (one row per layer, one column per job).

matplotlib (the ``report`` extra) is imported only to draw the plot, without pyplot (Agg, headless).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from composer.errors import first_line
from composer.recipe import YAML_LOADER

log = logging.getLogger(__name__)

CHECKPOINT, ERROR = "model.safetensors", "error.txt"
COLUMNS = (
    "job", "overrides", "model", "init", "status", "layer", "layer_type", "param", "shape", "numel",
    "mean", "std", "min", "max", "zero_fraction", "error",
)  # fmt: skip
STATS = ("mean", "std", "min", "max", "zero_fraction")
PLOT_SAMPLES = 20_000  # values per histogram, evenly strided from the tensor

_last_failures: list[str] = []


def last_failures() -> list[str]:
    """``#<job> (<overrides>): <error>`` for each failed job of the last report in this process."""
    return list(_last_failures)


@dataclass
class ParamStats:
    layer: str
    layer_type: str
    param: str
    shape: list[int]
    numel: int
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    sample: Any = None  # a 1-d float tensor of values for the plot (weights only)

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.param}" if self.layer else self.param


@dataclass
class Job:
    folder: Path
    num: int
    overrides: list[str]
    choices: dict[str, str]
    status: str = "ok"  # ok | failed | checked
    error: str = ""
    params: list[ParamStats] = field(default_factory=list)
    short: str = ""  # the overrides that differ from the other jobs'

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or f"job {self.num}"


class SweepReport(Callback):
    """Writes ``report.csv``, ``report.md`` and ``report.png`` at the root of a finished sweep."""

    def __init__(self, plot: bool = True, max_plot_rows: int = 8, max_plot_columns: int = 8) -> None:
        self.plot = plot
        self.max_plot_rows = max_plot_rows
        self.max_plot_columns = max_plot_columns

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        jobs = read_jobs(sweep_dir)
        _last_failures[:] = [f"#{j.num} ({j.label}): {j.error}" for j in jobs if j.status == "failed"]
        written = write_report(sweep_dir, jobs, self.plot, self.max_plot_rows, self.max_plot_columns)
        print(f"report of {len(jobs)} job(s): {', '.join(str(p) for p in written)}")


# --- reading the run folders ------------------------------------------------------------------


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under ``sweep_dir`` (one holding ``.hydra/overrides.yaml``, a checkpoint or
    an error), by job number; the overrides that tell jobs apart become their short labels."""
    folders = {marker.parent.parent for marker in sweep_dir.glob("**/.hydra/overrides.yaml")}
    folders |= {
        marker.parent for name in (CHECKPOINT, ERROR) for marker in sweep_dir.glob(f"**/{name}")
    }  # hydra.output_subdir=null
    jobs = sorted((read_job(f) for f in folders if f != sweep_dir), key=lambda j: (j.num, str(j.folder)))
    common = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    for job in jobs:
        job.short = " ".join(o for o in job.overrides if o not in common) or job.label
    return jobs


def read_job(folder: Path) -> Job:
    hydra_cfg = _read_yaml(folder / ".hydra" / "hydra.yaml").get("hydra", {})
    job_cfg = _read_yaml(folder / ".hydra" / "config.yaml")
    num = hydra_cfg.get("job", {}).get("num")
    job = Job(
        folder=folder,
        num=num if isinstance(num, int) else _int_or(folder.name, -1),
        overrides=[str(o) for o in _read_yaml(folder / ".hydra" / "overrides.yaml", [])],
        choices={
            k: str(v)
            for k, v in (hydra_cfg.get("runtime", {}).get("choices") or {}).items()
            if not k.startswith("hydra/")
        },
    )
    if (folder / ERROR).exists():
        job.status, job.error = "failed", first_line((folder / ERROR).read_text()) or "failed"
    elif (folder / CHECKPOINT).exists():
        try:
            job.params = checkpoint_stats(folder / CHECKPOINT)
        except Exception as e:  # noqa: BLE001  (a corrupt or unreadable checkpoint fails its job only)
            job.status, job.error = "failed", f"cannot read {CHECKPOINT}: {first_line(str(e))}"
    elif job_cfg.get("check"):
        job.status = "checked"
    else:
        job.status, job.error = "failed", f"no {CHECKPOINT}: the job did not finish (see its log in {folder})"
    return job


def checkpoint_stats(path: Path) -> list[ParamStats]:
    """Statistics of every parameter of a checkpoint (a tied one once), in float64."""
    from composer import load_checkpoint  # noqa: PLC0415  (torch: only once there is a report to make)

    model = load_checkpoint(path)
    stats = []
    for name, p in model.named_parameters():
        layer, _, param = name.rpartition(".")
        t = p.detach().reshape(-1).double()
        n = t.numel()
        weight_like = p.dim() >= 2 or param.endswith("weight")
        stats.append(ParamStats(
            layer=layer,
            layer_type=type(model.get_submodule(layer)).__name__,
            param=param,
            shape=list(p.shape),
            numel=n,
            mean=t.mean().item() if n else math.nan,
            std=t.std(correction=0).item() if n else math.nan,
            min=t.min().item() if n else math.nan,
            max=t.max().item() if n else math.nan,
            zero_fraction=(t == 0).double().mean().item() if n else math.nan,
            sample=t[:: max(1, n // PLOT_SAMPLES)].float() if weight_like and n else None,
        ))  # fmt: skip
    return stats


def _read_yaml(path: Path, default: Any = None) -> Any:
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return {} if default is None else default
    return data if data is not None else ({} if default is None else default)


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


# --- writing ----------------------------------------------------------------------------------


def write_report(
    sweep_dir: Path, jobs: list[Job], plot: bool = True, max_rows: int = 8, max_columns: int = 8
) -> list[Path]:
    """Write the CSV, the Markdown and (with matplotlib and some weights) the PNG; return their paths."""
    written = [write_csv(sweep_dir / "report.csv", jobs)]
    png = sweep_dir / "report.png"
    drawn = plot and draw(png, jobs, max_rows, max_columns)
    written.append(write_markdown(sweep_dir / "report.md", sweep_dir, jobs, png if drawn else None))
    if drawn:
        written.append(png)
    return written


def write_csv(path: Path, jobs: list[Job]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for job in jobs:
            common = [
                job.num,
                " ".join(job.overrides),
                job.choices.get("model", ""),
                job.choices.get("init", ""),
                job.status,
            ]
            if not job.params:
                writer.writerow([*common, *[""] * (len(COLUMNS) - len(common) - 1), job.error])
            for p in job.params:
                shape = "x".join(str(d) for d in p.shape)
                writer.writerow(
                    [*common, p.layer, p.layer_type, p.param, shape, p.numel, *(repr(getattr(p, s)) for s in STATS), ""]
                )
    return path


def write_markdown(path: Path, sweep_dir: Path, jobs: list[Job], png: Path | None) -> Path:
    failed = [j for j in jobs if j.status == "failed"]
    lines = [
        "# Sweep report",
        "",
        f"`{sweep_dir}`: {len(jobs)} job(s), {len(failed)} failed.",
        "",
        "| job | overrides | status | folder |",
        "| --- | --- | --- | --- |",
        *(f"| {j.num} | `{_md(j.label)}` | {j.status} | `{_md(_relative(j.folder, sweep_dir))}` |" for j in jobs),
    ]
    by_model: dict[str, list[Job]] = {}
    for job in jobs:
        if job.params:
            by_model.setdefault(job.choices.get("model", ""), []).append(job)
    for model, model_jobs in by_model.items():
        lines += ["", f"## Weights{f' of `{model}`' if model else ''}: per layer, across jobs", ""]
        lines += [
            "| layer | param | shape | job | init | mean | std | min | max | zeros |",
            "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        order = list(dict.fromkeys(p.name for j in model_jobs for p in j.params))
        for name in order:
            for job in model_jobs:
                for p in (p for p in job.params if p.name == name):
                    shape = "x".join(str(d) for d in p.shape)
                    values = " | ".join(_num(getattr(p, s)) for s in STATS)
                    lines.append(
                        f"| `{_md(p.layer or '(model)')}` ({p.layer_type}) | `{p.param}` | {shape} | {job.num} | {_md(job.choices.get('init', job.label))} | {values} |"
                    )
    if failed:
        lines += ["", "## Failed jobs", "", "| job | overrides | error |", "| ---: | --- | --- |"]
        lines += [f"| {j.num} | `{_md(j.label)}` | {_md(j.error)} |" for j in failed]
    if png is not None:
        lines += ["", "## Weight distributions", "", f"![weight distributions per layer and job]({png.name})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def draw(path: Path, jobs: list[Job], max_rows: int, max_columns: int) -> bool:
    """Histograms of each weight: one row per layer, one column per job (jobs grouped by model).

    False when there is nothing to draw or no matplotlib.
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if any(p.sample is not None for p in job.params):
            groups.setdefault(job.choices.get("model", ""), []).append(job)
    rows = [(model, name) for model, group in groups.items() for name in _weight_names(group)][:max_rows]
    if not rows:
        return False
    try:
        import numpy as np  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: 1.2 s less, no GUI backend)
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'torch-recipe-composer[report]'): no report.png")
        return False
    n_columns = min(max_columns, max(len(groups[model]) for model, _ in rows))
    fig = Figure(figsize=(max(2.3 * n_columns + 0.7, 5.5), 1.6 * len(rows) + 0.7))
    axes = fig.subplots(len(rows), n_columns, squeeze=False)
    for r, (model, name) in enumerate(rows):
        first_of_model = r == 0 or rows[r - 1][0] != model
        for c in range(n_columns):
            ax = axes[r][c]
            group = groups[model]
            p = next((p for p in group[c].params if p.name == name), None) if c < len(group) else None
            if p is None or p.sample is None:
                ax.set_axis_off()
                continue
            counts, edges = np.histogram(p.sample.numpy(), bins=40)
            ax.stairs(counts, edges, fill=True, color=f"C{c % 10}")  # one artist, not 40 bars
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            if first_of_model:
                ax.set_title(_short(group[c].short), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{model}: {name}" if len(groups) > 1 else name, fontsize=7)
    fig.suptitle("weight distributions: one row per layer, one column per job", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.06, top=0.88, wspace=0.15, hspace=0.6)
    fig.savefig(path, dpi=80)
    return True


def _weight_names(jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(p.name for j in jobs for p in j.params if p.sample is not None))


def _short(text: str | None, width: int = 28) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
