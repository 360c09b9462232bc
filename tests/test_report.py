"""The sweep report from run folders laid out as Hydra leaves them, without running Hydra."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from composer import build_from_config, save_checkpoint
from composer.app.plots import _tail, _zeros
from composer.app.report import (
    SweepReport,
    last_failures,
    read_jobs,
    signal_groups,
    signal_payload,
    weight_pages,
    write_report,
)
from composer.build.record import record_of
from composer.describe.probe import probe
from tests.recipes import model_recipe


def job_folder(
    sweep: Path, num: int, overrides: list[str], choices: dict[str, str], config: dict | None = None
) -> Path:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"num": num}, "runtime": {"choices": {**choices, "hydra/launcher": "basic"}}}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {}))
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_job_folder_is_reported_whatever_became_of_it(tmp_path):
    sweep = tmp_path / "sweep"
    torch.manual_seed(0)
    model = build_from_config(model_recipe("tied"))
    save_checkpoint(
        model, job_folder(sweep, 0, ["model=tied"], {"model": "tied", "init": "default"}) / "model.safetensors"
    )
    (job_folder(sweep, 1, ["model=bad"], {"model": "bad"}) / "error.txt").write_text("model.type: unknown type 'X'\n")
    job_folder(sweep, 2, ["model=killed"], {"model": "killed"})  # no checkpoint, no error: it died
    job_folder(sweep, 3, ["model=tied", "check=true"], {"model": "tied"}, config={"check": True})

    jobs = read_jobs(sweep)
    assert [(j.num, j.status) for j in jobs] == [(0, "ok"), (1, "failed"), (2, "failed"), (3, "checked")]
    assert jobs[1].error == "model.type: unknown type 'X'"
    assert "did not finish" in jobs[2].error
    written = write_report(sweep, jobs)
    assert [p.name for p in written] == ["report.csv", "report.md", "report.png"]

    table = rows(sweep / "report.csv")
    params = [r for r in table if r["job"] == "0"]
    # the tied Linear is one parameter, reported once, under its first path
    assert [f"{r['layer']}.{r['param']}" for r in params] == [name for name, _ in model.named_parameters()]
    weight = model.get_parameter("2.weight").detach().double()
    row = next(r for r in params if r["layer"] == "2" and r["param"] == "weight")
    assert float(row["std"]) == weight.std(correction=0).item() and row["shape"] == "8x8"
    assert [(r["job"], r["status"]) for r in table if r["job"] != "0"] == [
        ("1", "failed"),
        ("2", "failed"),
        ("3", "checked"),
    ]
    markdown = (sweep / "report.md").read_text()
    assert "## Failed jobs" in markdown and "unknown type 'X'" in markdown and "![" in markdown


def test_the_callback_records_failures_and_can_skip_the_plot(tmp_path):
    sweep = tmp_path / "sweep"
    (job_folder(sweep, 0, ["init=bad"], {"init": "bad"}) / "error.txt").write_text("init.rules[0]: bad\n")
    SweepReport(plot=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert last_failures() == ["#0 (init=bad): init.rules[0]: bad"]
    assert (sweep / "report.md").exists() and not (sweep / "report.png").exists()


def test_signal_propagation_is_plotted_and_flagged(tmp_path):
    """Two jobs that probed a deep net: one keeps the std, one collapses it (flagged in report.md)."""
    sweep = tmp_path / "sweep"
    layers = [{"type": "Linear", "in_features": 32, "out_features": 32} for _ in range(4)]
    for num, (init, rules) in enumerate(
        [
            ("xavier", [{"weight": "orthogonal", "bias": "zeros"}]),
            ("tiny", [{"weight": {"type": "normal", "std": 0.01}, "bias": "zeros"}]),
        ]
    ):
        model = build_from_config(
            {"model": {"type": "Sequential", "layers": layers}, "init": {"rules": rules}, "input_shape": [2, 32]}
        )
        folder = job_folder(sweep, num, [f"init={init}", "model=deep"], {"model": "deep", "init": init})
        save_checkpoint(model, folder / "model.safetensors")
        (folder / "probe.json").write_text(json.dumps(probe(model, record_of(model).recipe, batch=16)))
    written = write_report(sweep, read_jobs(sweep))
    assert [p.name for p in written] == ["report.csv", "signal.csv", "report.md", "report.png", "signal.png"]
    signal = rows(sweep / "signal.csv")
    tiny = [r for r in signal if r["init"] == "tiny"]
    assert [r["layer"] for r in tiny] == ["(input)", "0", "1", "2", "3"]
    assert float(tiny[-1]["ratio"]) < 1e-4
    markdown = (sweep / "report.md").read_text()
    assert "## Signal propagation of `deep` at init" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 4 | `3` | Linear |"))
    assert row.endswith("↓ `init=tiny` |")  # flagged: the orthogonal job keeps its std (x1)
    assert "(signal.png)" in markdown and "- `signal.png`: activation std and weight-gradient norm" in markdown
    assert is_png(sweep / "signal.png") and is_png(sweep / "report.png")
    [group] = signal_payload(sweep / "signal.png", signal_groups(read_jobs(sweep)))["groups"]
    assert group["title"] == "deep"  # plain text in the plot; `deep` in the Markdown


def test_the_report_plots_every_weight_of_deep_mlp_on_pages(tmp_path):
    """deep_mlp's 21 weights under two schemes: three pages of 8 rows, each row one weight across
    both jobs, each histogram on its own range; report.md says what each page shows."""
    sweep = tmp_path / "sweep"
    recipe = yaml.safe_load(model_recipe("deep_mlp").read_text())
    for num, (init, rules) in enumerate([("default", []), ("custom", [{"layer": "Linear", "weight": "piecewise"}])]):
        model = build_from_config({**recipe, "init": {"seed": 0, "rules": rules}})
        folder = job_folder(sweep, num, ["model=deep_mlp", f"init={init}"], {"model": "deep_mlp", "init": init})
        save_checkpoint(model, folder / "model.safetensors")
    weights = [name for name, p in model.named_parameters() if p.dim() == 2]
    assert len(weights) == 21
    jobs = read_jobs(sweep)
    pages = weight_pages(sweep, jobs, rows_per_page=8, columns_per_page=8)
    rows = [row for page in pages for row in page.data["rows"]]
    assert [row["label"] for row in rows] == weights  # every weight, in order, none dropped
    for row in rows:
        default, custom = row["columns"]
        assert (default["title"], custom["title"]) == ("init=default", "init=custom")
        assert default["edges"][-1] < 1 < 5 < custom["edges"][-1]  # each job on its own scale
        assert abs(sum(default["shares"]) - 1) < 1e-9
    written = [p.name for p in write_report(sweep, jobs)]
    assert written[-3:] == ["report-1.png", "report-2.png", "report-3.png"] and "report.png" not in written
    assert all(is_png(sweep / name) for name in written[-3:])
    markdown = (sweep / "report.md").read_text()
    assert "- `report-3.png`: weight histograms, page 3 of 3, 5 of 21 rows (32.weight … 40.weight)" in markdown
    assert "(report-1.png)" in markdown and "(report-2.png)" in markdown


def test_a_model_that_one_job_built_fills_its_rows_with_its_weights(tmp_path):
    sweep = tmp_path / "sweep"
    for num, name in enumerate(["rgnet", "mlp"]):
        model = build_from_config(model_recipe(name))
        folder = job_folder(sweep, num, [f"model={name}"], {"model": name, "init": "default"})
        save_checkpoint(model, folder / "model.safetensors")
    [page] = weight_pages(sweep, read_jobs(sweep), rows_per_page=8, columns_per_page=4)
    labels = [row["label"] for row in page.data["rows"]]
    assert labels == [
        "rgnet: 0.block 0.0.weight to 0.block 1.2.weight",
        "rgnet: 0.block 2.0.weight to 0.block 3.2.weight",
        "rgnet: 1.weight",
        "mlp: 0.weight to 2.weight",
    ]
    assert [c["title"] for c in page.data["rows"][3]["columns"]] == ["0.weight 256x20", "2.weight 10x256"]


def test_signal_plot_labels_show_the_end_of_a_path_and_name_zero_gradients():
    assert _tail("transformer.h.11.attn.c_attn.weight", 24) == "…h.11.attn.c_attn.weight"
    assert _tail("transformer.wte.weight", 24) == "transformer.wte.weight"
    assert _zeros([0.0, 0.0, None], some=True) == "all 2"
    assert _zeros([0.0, 0.0, 3.0], some=True) == "2 of 3"
    assert _zeros([0.0, 0.0, 3.0], some=False) == "" and _zeros([1.0], some=True) == ""


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
