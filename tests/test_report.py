"""The sweep report from run folders laid out as Hydra leaves them, without running Hydra."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from composer import build_from_config, save_checkpoint
from composer.report import SweepReport, last_failures, read_jobs, write_report
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
