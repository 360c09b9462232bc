"""The sweep report: a Hydra callback that compares the jobs of a multirun from their run folders.

At the end of a multirun, whatever launcher ran the jobs (in this process, in worker processes or
on a cluster), it reads every job folder under the sweep's root — ``.hydra/overrides.yaml``,
``.hydra/hydra.yaml``, the checkpoint ``model.safetensors`` or the ``error.txt`` of a failed job —
and writes at the root:

- ``report.csv``: one row per job and parameter: mean, std (population), min, max, fraction of zeros;
- ``report.md``: the jobs, the same statistics as a table per layer across jobs, the failed jobs;
- ``report.png``: histograms of each weight (one row per layer, one column per job, a shared x
  axis per layer);
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

    def __init__(self, plot: bool = True, max_plot_rows: int = 8, max_plot_columns: int = 8) -> None:
        self.plot = plot
        self.max_plot_rows = max_plot_rows
        self.max_plot_columns = max_plot_columns
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
            written = write_report(sweep_dir, jobs, self.plot, self.max_plot_rows, self.max_plot_columns, plotter)
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
    sweep_dir: Path,
    jobs: list[Job],
    plot: bool = True,
    max_rows: int = 8,
    max_columns: int = 8,
    plotter: Any = None,
) -> list[Path]:
    """Write the CSVs, the Markdown and (with matplotlib) the PNGs; return their paths.

    ``plotter``: a ``composer.app.plots.Plotter`` started when the sweep did; without one the plots
    are drawn in this process.
    """
    written = [write_csv(sweep_dir / "report.csv", jobs)]
    groups = signal_groups(jobs)
    if groups:
        written.append(write_signal_csv(sweep_dir / "signal.csv", groups))
    pngs = draw(sweep_dir, jobs, groups, max_rows, max_columns, plotter) if plot else {}
    written.append(write_markdown(sweep_dir / "report.md", sweep_dir, jobs, groups, pngs))
    return [*written, *pngs.values()]


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

    title: str
    jobs: list[Job]
    layers: list[tuple[str, str]]  # (path, type) of each leaf call, in forward order

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
            groups[key] = SignalGroup(f"`{model}`" if model else "the model", [], layers)
        groups[key].jobs.append(job)
    titles = [g.title for g in groups.values()]
    for group in groups.values():
        if titles.count(group.title) > 1:  # one model, several architectures (a swept vars.depth)
            group.title += f" (jobs {', '.join(str(j.num) for j in group.jobs)})"
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


def _signal_markdown(groups: list[SignalGroup], png: Path | None) -> list[str]:
    lines: list[str] = []
    for group in groups:
        batch = sorted({j.probe.get("batch") for j in group.jobs}, key=str)
        lines += [
            "",
            f"## Signal propagation of {group.title} at init",
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
        lines += ["", f"![activation std and gradient norm against depth, one line per job]({png.name})"]
    return lines


# --- Markdown ---------------------------------------------------------------------------------


def write_markdown(
    path: Path, sweep_dir: Path, jobs: list[Job], groups: list[SignalGroup], pngs: dict[str, Path]
) -> Path:
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
    lines += _signal_markdown(groups, pngs.get("signal"))
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
    if "weights" in pngs:
        lines += [
            "",
            "## Weight distributions",
            "",
            f"![weight distributions per layer and job]({pngs['weights'].name})",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- plots: the data; composer.app.plots draws it ----------------------------------------------

HISTOGRAM_BINS = 40


def draw(
    sweep_dir: Path, jobs: list[Job], groups: list[SignalGroup], max_rows: int, max_columns: int, plotter: Any = None
) -> dict[str, Path]:
    """``report.png`` (weights) and ``signal.png`` (probes), as far as there is data and matplotlib."""
    payload = {
        "weights": weights_payload(sweep_dir / "report.png", jobs, max_rows, max_columns),
        "signal": signal_payload(sweep_dir / "signal.png", groups[:max_rows]),
    }
    if not any(payload.values()):
        if plotter is not None:
            plotter.close()
        return {}
    written = plotter.draw(payload) if plotter is not None else None
    if written is None:
        try:
            from composer.app.plots import draw as draw_here  # noqa: PLC0415  (matplotlib)

            written = draw_here(payload)
        except ImportError:
            written = []
    if not written:
        log.warning("matplotlib is not installed (pip install 'torch-recipe-composer[report]'): no plots")
    names = {str(sweep_dir / "report.png"): "weights", str(sweep_dir / "signal.png"): "signal"}
    return {names[path]: Path(path) for path in written if path in names}


def weights_payload(path: Path, jobs: list[Job], max_rows: int, max_columns: int) -> dict[str, Any] | None:
    """Per weight row: the jobs' histograms over one shared range (40 bins), with titles."""
    import torch  # noqa: PLC0415  (there are checkpoints: torch is loaded already)

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if any(p.sample is not None for p in job.params):
            groups.setdefault(job.choices.get("model", ""), []).append(job)
    rows = []
    for model, group in groups.items():
        for name in _weight_names(group):
            params = [next((p for p in job.params if p.name == name), None) for job in group[:max_columns]]
            samples = [p.sample for p in params if p is not None and p.sample is not None]
            lo, hi = min(float(t.min()) for t in samples), max(float(t.max()) for t in samples)
            if hi - lo < 1e-12 * max(1.0, abs(lo)):  # every job the same constant
                lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
            edges = torch.linspace(lo, hi, HISTOGRAM_BINS + 1, dtype=torch.float64)
            columns = []
            for job, p in zip(group[:max_columns], params, strict=True):
                if p is None or p.sample is None:
                    columns.append(None)
                    continue
                counts = torch.histogram(p.sample.double(), bins=edges).hist
                columns.append({"title": job.short, "counts": counts.tolist(), "edges": edges.tolist()})
            label = f"{model}: {name}" if len(groups) > 1 else name
            shape = "x".join(str(d) for d in next(p for p in params if p is not None).shape)
            rows.append({"label": label, "shape": shape, "lo": lo, "hi": hi, "columns": columns})
    return {"path": str(path), "rows": rows[:max_rows]} if rows else None


def signal_payload(path: Path, groups: list[SignalGroup]) -> dict[str, Any] | None:
    if not groups:
        return None
    return {
        "path": str(path),
        "groups": [
            {
                "title": group.title.strip("`"),
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
