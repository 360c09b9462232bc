"""The sweep report: a Hydra callback that compares the jobs of a multirun from their run folders.

At the end of a multirun, whatever launcher ran the jobs (in this process, in worker processes or
on a cluster), it reads every job folder under the sweep's root — ``.hydra/overrides.yaml``,
``.hydra/hydra.yaml``, the checkpoint ``model.safetensors`` or the ``error.txt`` of a failed job —
and writes at the root:

- ``report.csv``: one row per job and parameter: mean, std (population), min, max, fraction of zeros;
- ``report.md``: the jobs, what each file shows, the same statistics as a table per layer across
  jobs, the failed jobs;
- ``report.png`` (or ``report-1.png``, ``report-2.png``, ... where one page would hold more than
  ``rows_per_page`` weights or ``columns_per_page`` jobs): a histogram of every weight of every job,
  one row per weight and one column per job, each on its own x range;
- ``signal.csv`` and ``signal.png``, where the jobs probed their models (``probe.json``): each leaf
  module's output std against depth and each weight's gradient norm against depth, one line per
  job, log scale; ``report.md`` then flags the layers whose std grew or shrank more than 10x from
  the input's.

matplotlib (the ``report`` extra) is imported only to draw the plots, without pyplot (Agg, headless).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from composer.errors import first_line
from composer.recipe.read import YAML_LOADER

log = logging.getLogger(__name__)

CHECKPOINT, ERROR, PROBE = "model.safetensors", "error.txt", "probe.json"
COLUMNS = (
    "job", "overrides", "model", "init", "status", "layer", "layer_type", "param", "shape", "numel",
    "mean", "std", "min", "max", "zero_fraction", "error",
)  # fmt: skip
STATS = ("mean", "std", "min", "max", "zero_fraction")
SIGNAL_COLUMNS = ("job", "overrides", "model", "init", "index", "layer", "layer_type", "call", "mean", "std", "ratio")
FLAG = 10.0  # a layer whose output std is this many times larger or smaller than the input's is flagged
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
    status: str = "ok"  # ok | failed | checked | unsaved (save=false: no checkpoint, no weight statistics)
    error: str = ""
    params: list[ParamStats] = field(default_factory=list)
    short: str = ""  # the overrides that differ from the other jobs'
    probe: dict[str, Any] | None = None  # the job's probe.json

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or f"job {self.num}"


class SweepReport(Callback):
    """Writes ``report.csv``, ``report.md`` and ``report.png`` at the root of a finished sweep."""

    def __init__(self, plot: bool = True, rows_per_page: int = 8, columns_per_page: int = 8) -> None:
        self.plot = plot
        self.rows_per_page = rows_per_page
        self.columns_per_page = columns_per_page
        self._plotter: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Launchers that pickle the callbacks for their workers (joblib) leave the helper behind."""
        return {**self.__dict__, "_plotter": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the plotting helper: it imports matplotlib while the jobs run."""
        if self.plot:
            from composer.app.plots import Plotter  # noqa: PLC0415  (no matplotlib here)

            self._plotter = Plotter()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        jobs = read_jobs(sweep_dir)
        _last_failures[:] = [f"#{j.num} ({j.label}): {j.error}" for j in jobs if j.status == "failed"]
        plotter, self._plotter = self._plotter, None
        try:
            written = write_report(sweep_dir, jobs, self.plot, self.rows_per_page, self.columns_per_page, plotter)
        finally:
            if plotter is not None:
                plotter.close()
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
    elif job_cfg.get("save") is False:
        job.status = "unsaved"
    else:
        job.status, job.error = "failed", f"no {CHECKPOINT}: the job did not finish (see its log in {folder})"
    if job.status in ("ok", "unsaved") and (folder / PROBE).exists():
        try:
            job.probe = json.loads((folder / PROBE).read_text())
        except (OSError, ValueError) as e:
            log.warning("job %s: cannot read %s: %s", job.num, PROBE, first_line(str(e)))
    return job


def checkpoint_stats(path: Path) -> list[ParamStats]:
    """Statistics of every parameter of a checkpoint (a tied one once), in float64."""
    from composer.checkpoint.api import load_checkpoint  # noqa: PLC0415  (torch: only once there is a report to make)

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
    sweep_dir: Path,
    jobs: list[Job],
    plot: bool = True,
    rows_per_page: int = 8,
    columns_per_page: int = 8,
    plotter: Any = None,
) -> list[Path]:
    """Write the CSVs, the Markdown and (with matplotlib) the PNGs; return their paths.

    ``rows_per_page`` weights and ``columns_per_page`` jobs make one page of weight histograms;
    every weight of every job is drawn, on as many pages as that takes. ``plotter``: a
    ``composer.app.plots.Plotter`` started when the sweep did; without one the plots are drawn in
    this process.
    """
    written = [write_csv(sweep_dir / "report.csv", jobs)]
    groups = signal_groups(jobs)
    if groups:
        written.append(write_signal_csv(sweep_dir / "signal.csv", groups))
    plots = draw(sweep_dir, jobs, groups, rows_per_page, columns_per_page, plotter) if plot else []
    written.append(write_markdown(sweep_dir / "report.md", sweep_dir, jobs, groups, plots))
    return [*written, *(p.path for p in plots)]


def write_csv(path: Path, jobs: list[Job]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for job in jobs:
            common = [job.num, " ".join(job.overrides), job.choices.get("model", ""), job.choices.get("init", "")]
            common.append(job.status)
            if not job.params:
                writer.writerow([*common, *[""] * (len(COLUMNS) - len(common) - 1), job.error])
            for p in job.params:
                shape = "x".join(str(d) for d in p.shape)
                stats = (repr(getattr(p, s)) for s in STATS)
                writer.writerow([*common, p.layer, p.layer_type, p.param, shape, p.numel, *stats, ""])
    return path


# --- signal propagation -----------------------------------------------------------------------


@dataclass
class SignalGroup:
    """Jobs that probed the same architecture (the same leaf calls in the same order)."""

    model: str  # the model choice ("" where unknown)
    jobs: list[Job]
    layers: list[tuple[str, str]]  # (path, type) of each leaf call, in forward order
    suffix: str = ""  # " (jobs 0, 2)" where one model probed several architectures

    @property
    def title(self) -> str:
        """Plain text, for a plot's title."""
        return (self.model or "the model") + self.suffix

    @property
    def markdown_title(self) -> str:
        return (f"`{_md(self.model)}`" if self.model else "the model") + self.suffix

    def stds(self, job: Job) -> list[float | None]:
        """Depth 0: the input's std (or the first layer's, for integer inputs); then each layer's."""
        return [reference_std(job.probe), *(layer["std"] for layer in job.probe["layers"])]

    def weight_grads(self, job: Job) -> list[tuple[str, float | None]]:
        """(path, gradient norm) of each weight (a parameter of two or more dims, else ``*weight``)."""
        params = job.probe["params"]
        weights = [p for p in params if len(p.get("shape", [])) >= 2 or p["path"].endswith("weight")]
        return [(p["path"], p["grad_norm"]) for p in weights or params]


def reference_std(probe: dict[str, Any]) -> float | None:
    """The std that layers are compared with: the first floating input's, else the first layer's."""
    for x in probe.get("inputs", []):
        if x.get("std") is not None and not str(x.get("dtype", "")).startswith(("int", "uint", "bool")):
            return x["std"]
    return next((layer["std"] for layer in probe.get("layers", []) if layer.get("std") is not None), None)


def signal_groups(jobs: list[Job]) -> list[SignalGroup]:
    groups: dict[tuple, SignalGroup] = {}
    for job in jobs:
        if job.probe is None or not job.probe.get("layers"):
            continue
        layers = [(layer["path"], layer["type"]) for layer in job.probe["layers"]]
        model = job.choices.get("model", "")
        key = (model, tuple(layers))
        if key not in groups:
            groups[key] = SignalGroup(model, [], layers)
        groups[key].jobs.append(job)
    models = [g.model for g in groups.values()]
    for group in groups.values():
        if models.count(group.model) > 1:  # one model, several architectures (a swept vars.depth)
            group.suffix = f" (jobs {', '.join(str(j.num) for j in group.jobs)})"
    return list(groups.values())


def ratio(std: float | None, reference: float | None) -> float | None:
    if std is None or not reference:
        return None
    return std / reference


def flagged(r: float | None) -> bool:
    return r is not None and (r > FLAG or r < 1 / FLAG)


def write_signal_csv(path: Path, groups: list[SignalGroup]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SIGNAL_COLUMNS)
        for group in groups:
            for job in group.jobs:
                common = [job.num, " ".join(job.overrides), job.choices.get("model", ""), job.choices.get("init", "")]
                reference = reference_std(job.probe)
                writer.writerow([*common, 0, "(input)", "", "", "", repr(reference), repr(1.0)])
                for i, layer in enumerate(job.probe["layers"], 1):
                    r = ratio(layer["std"], reference)
                    row = [i, layer["path"], layer["type"], layer["call"], repr(layer["mean"]), repr(layer["std"])]
                    writer.writerow([*common, *row, repr(r)])
    return path


def _signal_markdown(groups: list[SignalGroup], png: Plot | None) -> list[str]:
    lines: list[str] = []
    for group in groups:
        batch = sorted({j.probe.get("batch") for j in group.jobs}, key=str)
        lines += [
            "",
            f"## Signal propagation of {group.markdown_title} at init",
            "",
            f"Each leaf module's output std for a standard-normal batch of {', '.join(map(str, batch))} "
            f"(`probe.json`), as a multiple of the input's std; **bold** and flagged where it grew or shrank "
            f"more than {FLAG:g}x.",
            "",
            "| # | layer | type | " + " | ".join(f"`{_md(j.short)}`" for j in group.jobs) + f" | beyond {FLAG:g}x |",
            "| ---: | --- | --- | " + " | ".join("---:" for _ in group.jobs) + " | --- |",
        ]
        columns = [group.stds(job) for job in group.jobs]
        for i, (path, kind) in enumerate([("(input)", ""), *group.layers]):
            cells, flags = [], []
            for job, stds in zip(group.jobs, columns, strict=True):
                r = ratio(stds[i], stds[0])
                cell = "—" if stds[i] is None else f"{stds[i]:.3g}" + (f" ({r:.2g}x)" if i and r is not None else "")
                if i and flagged(r):
                    cell = f"**{cell}**"
                    flags.append(f"{'↑' if r > 1 else '↓'} `{_md(job.short)}`")
                cells.append(cell)
            label = f"`{_md(path)}`" if i else "(input)"
            lines.append(f"| {i} | {label} | {kind} | {' | '.join(cells)} | {', '.join(flags)} |")
        lines += [
            "",
            "| job | overrides | batch | loss | weight grad norm, first → last layer |",
            "| ---: | --- | ---: | ---: | --- |",
        ]
        for job in group.jobs:
            grads = [g for _, g in group.weight_grads(job)]
            span = f"{_num(grads[0])} → {_num(grads[-1])}" if grads and None not in (grads[0], grads[-1]) else "—"
            loss = job.probe.get("loss")
            lines.append(f"| {job.num} | `{_md(job.label)}` | {job.probe.get('batch')} | {_num(loss)} | {span} |")
    if png is not None:
        lines += ["", f"![{png.what}]({png.path.name})"]
    return lines


# --- Markdown ---------------------------------------------------------------------------------


def write_markdown(path: Path, sweep_dir: Path, jobs: list[Job], groups: list[SignalGroup], plots: list[Plot]) -> Path:
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
    lines += _files_markdown(groups, plots)
    lines += _signal_markdown(groups, next((p for p in plots if p.kind == "signal"), None))
    by_model: dict[str, list[Job]] = {}
    for job in jobs:
        if job.params:
            by_model.setdefault(job.choices.get("model", ""), []).append(job)
    for model, model_jobs in by_model.items():
        lines += ["", f"## Weights{f' of `{model}`' if model else ''}: per layer, across jobs", ""]
        lines += ["| layer | param | shape | job | init | mean | std | min | max | zeros |"]
        lines += ["| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        order = list(dict.fromkeys(p.name for j in model_jobs for p in j.params))
        for name in order:
            for job in model_jobs:
                for p in (p for p in job.params if p.name == name):
                    shape = "x".join(str(d) for d in p.shape)
                    values = " | ".join(_num(getattr(p, s)) for s in STATS)
                    layer = f"`{_md(p.layer or '(model)')}` ({p.layer_type})"
                    init = _md(job.choices.get("init", job.label))
                    lines.append(f"| {layer} | `{p.param}` | {shape} | {job.num} | {init} | {values} |")
    if failed:
        lines += ["", "## Failed jobs", "", "| job | overrides | error |", "| ---: | --- | --- |"]
        lines += [f"| {j.num} | `{_md(j.label)}` | {_md(j.error)} |" for j in failed]
    pages = [p for p in plots if p.kind == "weights"]
    if pages:
        lines += ["", "## Weight distributions", ""]
        lines += [f"{p.what}:\n\n![{p.what}]({p.path.name})\n" for p in pages]
    path.write_text("\n".join(lines) + "\n")
    return path


def _files_markdown(groups: list[SignalGroup], plots: list[Plot]) -> list[str]:
    """What each file at the sweep's root holds."""
    lines = [
        "",
        "## Files",
        "",
        "- `report.csv`: per job and parameter, its mean, std, min, max and fraction of zeros (failed jobs: "
        "their error).",
    ]
    if groups:
        lines.append(
            "- `signal.csv`: per job and leaf module call, the output's mean and std, and its ratio to the input's."
        )
    lines += [f"- `{p.path.name}`: {p.what}." for p in plots]
    return lines


# --- plots: the data; composer.app.plots draws it ----------------------------------------------

HISTOGRAM_BINS = 40


@dataclass
class Plot:
    """A figure of the report: its file, what it is (``weights`` or ``signal``) and what it shows."""

    path: Path
    kind: str
    what: str
    data: dict[str, Any] = field(default_factory=dict, repr=False)


def draw(
    sweep_dir: Path,
    jobs: list[Job],
    groups: list[SignalGroup],
    rows_per_page: int = 8,
    columns_per_page: int = 8,
    plotter: Any = None,
) -> list[Plot]:
    """The weight pages (``report.png``, or ``report-1.png`` ... when there are several) and
    ``signal.png``, as far as there is data and matplotlib; the figures written."""
    plots = weight_pages(sweep_dir, jobs, rows_per_page, columns_per_page)
    signal = signal_payload(sweep_dir / "signal.png", groups)
    if signal is not None:
        titles = ", ".join(g.title for g in groups)
        what = f"activation std and weight-gradient norm against depth at init, one line per job ({titles})"
        plots.append(Plot(sweep_dir / "signal.png", "signal", what, signal))
    if not plots:
        if plotter is not None:
            plotter.close()
        return []
    payload = {"figures": [{"kind": p.kind, **p.data} for p in plots]}
    written = plotter.draw(payload) if plotter is not None else None
    if written is None:
        try:
            from composer.app.plots import draw as draw_here  # noqa: PLC0415  (matplotlib)

            written = draw_here(payload)
        except ImportError:
            written = []
    if not written:
        log.warning("matplotlib is not installed (pip install 'torch-recipe-composer[report]'): no plots")
    done = set(written)
    return [p for p in plots if str(p.path) in done]


def weight_pages(sweep_dir: Path, jobs: list[Job], rows_per_page: int, columns_per_page: int) -> list[Plot]:
    """Every weight of every job that saved one: rows of at most ``columns_per_page`` jobs (a
    weight of a sweep with more jobs takes several rows), ``rows_per_page`` rows a page. A model
    that only one job built has nothing to compare across: its weights fill the rows instead."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if any(p.sample is not None for p in job.params):
            groups.setdefault(job.choices.get("model", ""), []).append(job)
    width = max(1, columns_per_page)
    rows = []
    for model, group in groups.items():
        names = _weight_names(group)
        if len(group) == 1:  # one row holds several weights of the job
            for i in range(0, len(names), width):
                chunk = names[i : i + width]
                label = f"{model or group[0].short}: {chunk[0]}" + (f" to {chunk[-1]}" if len(chunk) > 1 else "")
                rows.append({**_histogram_row(label, [(group[0], name, name) for name in chunk]), "across": "weights"})
            continue
        chunks = [group[i : i + width] for i in range(0, len(group), width)]
        for chunk in chunks:
            for name in names:
                label = f"{model}: {name}" if len(groups) > 1 else name
                if len(chunks) > 1:
                    label += f" (jobs {chunk[0].num}-{chunk[-1].num})"
                rows.append({**_histogram_row(label, [(job, name, job.short) for job in chunk]), "across": "jobs"})
    pages = [rows[i : i + max(1, rows_per_page)] for i in range(0, len(rows), max(1, rows_per_page))]
    plots = []
    for k, page in enumerate(pages, 1):
        path = sweep_dir / ("report.png" if len(pages) == 1 else f"report-{k}.png")
        where = page[0]["label"] if len(page) == 1 else f"{page[0]['label']} … {page[-1]['label']}"
        what = (
            f"weight histograms{f', page {k} of {len(pages)}' if len(pages) > 1 else ''}, "
            f"{len(page)} of {len(rows)} rows ({where}), each on its own x range"
        )
        title = _PAGE_TITLES[frozenset(row["across"] for row in page)]
        plots.append(Plot(path, "weights", what, {"path": str(path), "rows": page, "title": title}))
    return plots


_PAGE_TITLES = {
    frozenset({"jobs"}): "weight histograms: one row per weight, one column per job",
    frozenset({"weights"}): "weight histograms of models that one job built: each row holds a model's weights",
    frozenset({"jobs", "weights"}): "weight histograms: a row per weight across jobs, or, for a model that one job "
    "built, a row of its weights",
}


def _histogram_row(label: str, cells: list[tuple[Job, str, str]]) -> dict[str, Any]:
    """One row of histograms, a cell per ``(job, weight name, title)``: the share of the weight's
    values in 40 bins over its own range (None where the job has no such weight)."""
    import torch  # noqa: PLC0415  (there are checkpoints: torch is loaded already)

    columns: list[dict[str, Any] | None] = []
    shapes = []
    for job, name, title in cells:
        p = next((p for p in job.params if p.name == name), None)
        if p is None or p.sample is None:
            columns.append(None)
            continue
        shapes.append("x".join(str(d) for d in p.shape))
        sample = p.sample.double()
        lo, hi = float(sample.min()), float(sample.max())
        constant = hi - lo <= 1e-12 * max(1.0, abs(lo))
        if constant:  # one value: a single bar in the middle of a range around it
            lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
        edges = torch.linspace(lo, hi, HISTOGRAM_BINS + 1, dtype=torch.float64)
        share = torch.histogram(sample, bins=edges).hist / sample.numel()
        columns.append({
            "title": title if title != name else f"{name} {shapes[-1]}",
            "shares": share.tolist(),
            "edges": edges.tolist(),
            "mean": p.mean,
            "std": p.std,
            "constant": p.min if constant else None,
            "zero_fraction": p.zero_fraction,
        })  # fmt: skip
    shape = shapes[0] if len(set(shapes)) == 1 and cells[0][1] != cells[0][2] else ""  # one weight: its shape
    return {"label": label, "shape": shape, "columns": columns}


def signal_payload(path: Path, groups: list[SignalGroup]) -> dict[str, Any] | None:
    if not groups:
        return None
    return {
        "path": str(path),
        "groups": [
            {
                "title": group.title,
                "layers": [f"{p} ({t})" for p, t in group.layers],
                "weights": [name for name, _ in group.weight_grads(group.jobs[0])],
                "jobs": [
                    {"label": job.short, "stds": group.stds(job), "grads": [g for _, g in group.weight_grads(job)]}
                    for job in group.jobs
                ],
            }
            for group in groups
        ],
    }


def _weight_names(jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(p.name for j in jobs for p in j.params if p.sample is not None))


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
