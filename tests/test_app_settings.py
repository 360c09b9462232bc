"""The app's own settings in one job, in process (fast): ``save=false`` writes no checkpoint and
``summary.depth=N`` prints the summary's first N levels, while ``summary.txt`` keeps them all.

The config is composed by Hydra's compose API from the packaged ``conf/``, as the app composes it;
``composer.app.main.run`` is the job the app runs with it. Every command-line path of the same
settings runs in tests/test_app.py (slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from composer import ConfigError, load_checkpoint
from composer.app.main import CONF_DIR, run
from composer.app.report import CHECKPOINT, read_job

SMALL_GPT2 = ["model=gpt2_small", "vars.n_layer=2", "vars.n_embd=32", "vars.n_head=2", "vars.vocab_size=64"]


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["probe=false", *overrides])


def test_save_false_writes_no_checkpoint_and_the_other_files(tmp_path, capsys):
    cfg = composed("model=mlp", "save=false")
    run(cfg, tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "summary.txt"]
    assert f"wrote recipe.yaml and summary.txt to {tmp_path}" in capsys.readouterr().out
    # a sweep's report tells such a job from a failed one by the job's config, which Hydra saves
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    assert read_job(tmp_path).status == "unsaved"


def test_save_true_is_the_default(tmp_path):
    run(composed("model=mlp"), tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT) is not None


def test_summary_depth_1_prints_gpt2_in_under_60_lines_and_keeps_the_file_whole(tmp_path, capsys):
    run(composed(*SMALL_GPT2, "summary.depth=1", "save=false"), tmp_path)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) < 60, "\n".join(printed)
    rows = [line.split()[0] for line in printed[2:5]]
    assert rows == ["(model)", "transformer", "lm_head"]
    assert any(line.startswith("(") and "below depth 1 not shown" in line for line in printed)
    assert any(line.strip().startswith("transformer.*:") and "tensors)" in line for line in printed)
    whole = (tmp_path / "summary.txt").read_text().splitlines()
    assert len(whole) > len(printed) and any("transformer.h.1.mlp.c_proj.bias:" in line for line in whole)


def test_summary_depth_at_full_gpt2_size_stays_short(tmp_path, capsys):
    """The issue's figure: GPT-2 small printed 312 lines; depth 1 prints a screenful (checked on meta)."""
    run(composed("model=gpt2_small", "summary.depth=1", "check=true"), tmp_path)
    assert len(capsys.readouterr().out.splitlines()) < 60


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("save=maybe", "save: expected true or false, got 'maybe'"),
        ("summary.depth=-1", "summary.depth: expected a non-negative integer or null, got -1"),
        ("+summary.deep=1", "summary.deep: unknown setting (did you mean 'depth'?); valid: depth"),
    ],
)
def test_bad_settings_name_their_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        run(composed("model=mlp", override), tmp_path)
    assert message in str(error.value)
    assert not any(Path(tmp_path).iterdir())
