"""The command line, end to end: real ``python -m composer`` processes, as a user runs them.

Every run writes under pytest's tmp_path (``hydra.run.dir`` / ``hydra.sweep.dir``, and the
processes start there), so nothing lands in the repository. Runs that do not depend on each other
start together (two cores here: start-up, mostly ``import torch``, dominates each run). Every test
here waits on such processes, so the whole module is ``slow``: ``pytest -m "not slow"`` skips it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from composer import build_from_config, load_checkpoint
from composer.describe.summarize import shape_of
from tests.cli import command, run, run_together
from tests.recipes import MODELS, example_batch

pytestmark = pytest.mark.slow


# A user's own config dir: a recipe that shadows the packaged mlp, one that is valid but
# extra, an init scheme of their own, and two broken ones.
USER_CONF = {
    "model/mlp.yaml": """\
        # @package _global_
        model:
          type: Sequential
          layers:
            - {type: Linear, in_features: 20, out_features: 7}
        input_shape: [3, 20]
        """,
    "model/huge.yaml": """\
        # @package _global_
        # 40 x Linear(16384, 16384): 10.7 billion parameters, 43 GB of float32
        model: {type: Repeat, times: 40, body: {type: Linear, in_features: 16384, out_features: 16384}}
        input_shape: [1, 16384]
        """,
    "init/halves.yaml": """\
        rules:
          - layer: Linear
            weight: {type: constant, val: 0.5}
        """,
    "init/broken.yaml": """\
        rules:
          - weight: nosuch
        """,
    # a recipe with init rules of its own: they survive the init group, the scheme's apply after them
    "model/own_rules.yaml": """\
        # @package _global_
        model:
          type: Sequential
          layers:
            - {type: Linear, in_features: 4, out_features: 8}
            - {type: ReLU}
            - {type: Linear, in_features: 8, out_features: 2}
        init:
          seed: 7
          rules:
            - {match: "0", weight: zeros, bias: ones}
        input_shape: [2, 4]
        """,
    # a whole recipe without its `# @package _global_` header
    "model/no_header.yaml": """\
        model: {type: Linear, in_features: 4, out_features: 2}
        input_shape: [2, 4]
        """,
    # an image model given an input shape without its channel dimension
    "model/conv.yaml": """\
        # @package _global_
        model: {type: Sequential, layers: [{type: Conv2d, in_channels: 1, out_channels: 4, kernel_size: 3}]}
        input_shape: [2, 28, 28]
        """,
}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def forward(model: torch.nn.Module, shape: list[int]) -> torch.Tensor:
    torch.manual_seed(1234)
    x = torch.randn(*shape)
    model.eval()
    with torch.no_grad():
        return model(x)


def rebuild(recipe_file: Path) -> torch.nn.Module:
    """What the app built: the resolved recipe, from the app's seed 0."""
    torch.manual_seed(0)
    return build_from_config(recipe_file)


def tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in tensors(item)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def user_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user_conf")
    for name, text in USER_CONF.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


# --- a single run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("single")
    result = ok(run(command("model=mlp", "init=xavier", f"hydra.run.dir={tmp / 'run'}"), tmp))
    return result, tmp / "run"


def test_single_run_prints_summary_and_writes_its_files(single):
    result, out = single
    assert "xavier_uniform" in result.stdout  # the init report
    assert "total parameters: 7,946" in result.stdout
    assert "output shape: [2, 10]" in result.stdout  # the smoke forward
    assert str(out) in result.stdout  # says where the files are
    assert f"wrote model.safetensors, recipe.yaml, summary.txt and probe.json to {out}" in result.stdout
    assert {"model.safetensors", "recipe.yaml", "summary.txt", "probe.json", ".hydra"} <= {
        p.name for p in out.iterdir()
    }
    assert "output shape: [2, 10]" in (out / "summary.txt").read_text()
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert list(recipe) == ["model", "init", "input_shape"]  # app keys (seed, check, probe) stripped
    assert recipe["init"]["rules"] == [{"layer": "Linear", "weight": "xavier_uniform"}]


def test_single_run_probes_signal_propagation(single):
    result, out = single
    signal = json.loads((out / "probe.json").read_text())
    assert signal["batch"] == 64 and signal["inputs"][0]["shape"] == [64, 20]
    assert [layer["path"] for layer in signal["layers"]] == ["0", "1", "2"]
    assert [p["path"] for p in signal["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p["grad_norm"] > 0 for p in signal["params"])
    assert "probe: batch 64, loss " in result.stdout


def test_single_run_checkpoint_reloads_to_the_built_model(single):
    _, out = single
    loaded = load_checkpoint(out / "model.safetensors")
    rebuilt = rebuild(out / "recipe.yaml")
    assert loaded.state_dict().keys() == rebuilt.state_dict().keys()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(forward(loaded, [2, 20]), forward(rebuilt, [2, 20]))


def test_inspect_prints_recipe_summary_and_init_report(single, tmp_path):
    _, out = single
    results = run_together({
        "good": ([sys.executable, "-m", "composer", "inspect", str(out / "model.safetensors")], None),
        "bad": ([sys.executable, "-m", "composer", "inspect", str(out / "recipe.yaml")], None),
    }, tmp_path)  # fmt: skip
    text = ok(results["good"]).stdout
    assert "in_features: 20" in text and "xavier_uniform" in text  # the recipe
    assert "total parameters: 7,946" in text and "0.weight: xavier_uniform" in text  # summary, init report
    assert results["bad"].returncode != 0
    assert error_lines(results["bad"]) == [
        f"error: {out / 'recipe.yaml'}: not a composer-checkpoint file (no safetensors header)"
    ]


# --- every packaged recipe --------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One job per conf/model recipe: a multirun, to pay the start-up once."""
    tmp = tmp_path_factory.mktemp("every")
    ok(run(command("-m", f"model={','.join(MODELS)}", f"hydra.sweep.dir={tmp / 'sweep'}"), tmp))
    return tmp / "sweep"


@pytest.mark.parametrize("num,name", list(enumerate(MODELS)))
def test_every_recipe_runs_and_its_checkpoint_reloads(every_recipe, num, name):
    out = every_recipe / str(num)
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == [f"model={name}"]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    loaded = load_checkpoint(out / "model.safetensors")
    rebuilt = rebuild(out / "recipe.yaml")
    batch = example_batch(recipe)
    loaded.eval(), rebuilt.eval()
    with torch.no_grad():
        a, b = loaded(*batch), rebuilt(*batch)
    assert shape_of(a) == shape_of(b) and all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b), strict=True))
    assert f"output shape: {shape_of(b)}" in (out / "summary.txt").read_text()
    signal = json.loads((out / "probe.json").read_text())  # every job probes, graphs and tuples included
    assert signal["layers"] and signal["loss"] is not None


def test_every_recipe_sweep_has_a_report(every_recipe):
    rows = read_csv(every_recipe / "report.csv")
    assert {r["model"] for r in rows} == set(MODELS)
    assert all(r["status"] == "ok" for r in rows)
    pages = sorted(every_recipe.glob("report*.png"))  # every weight of every model: several pages
    assert len(pages) > 1 and all(is_png(page) for page in pages) and is_png(every_recipe / "signal.png")
    assert {r["model"] for r in read_csv(every_recipe / "signal.csv")} == set(MODELS)


# --- sweeps: the report, a failing job, launchers ---------------------------------------------


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory, user_conf: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Three schemes and a broken one, with the basic launcher (every job in this one process)."""
    tmp = tmp_path_factory.mktemp("basic")
    args = [
        "-m",
        "--config-dir",
        str(user_conf),
        "init=constant,custom,normal,broken",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]
    return run(command(*args), tmp), tmp / "sweep"


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory, user_conf: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Three schemes, one from --config-dir, each job in a worker process."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the joblib launcher is the 'launchers' extra")
    tmp = tmp_path_factory.mktemp("joblib")
    args = [
        "-m", "--config-dir", str(user_conf), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "init=constant,custom,halves", f"hydra.sweep.dir={tmp / 'sweep'}",
    ]  # fmt: skip
    return run(command(*args), tmp), tmp / "sweep"


def check_report_matches_checkpoints(sweep: Path, n_jobs: int) -> dict[str, dict[str, dict[str, str]]]:
    """Run folders, CSV, Markdown and PNG exist; every CSV statistic equals the checkpoint's.

    Returns {init: {param: row}} for the jobs that succeeded.
    """
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        str(i) for i in range(n_jobs)
    ]
    rows = read_csv(sweep / "report.csv")
    assert is_png(sweep / "report.png")
    markdown = (sweep / "report.md").read_text()
    by_init: dict[str, dict[str, dict[str, str]]] = {}
    for row in (r for r in rows if r["status"] == "ok"):
        by_init.setdefault(row["init"], {})[f"{row['layer']}.{row['param']}"] = row
    for init, params in by_init.items():
        job = next(r["job"] for r in params.values())
        model = load_checkpoint(sweep / job / "model.safetensors")
        assert set(params) == {name for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            t, row = p.detach().double(), params[name]
            expected = {
                "mean": t.mean().item(), "std": t.std(correction=0).item(), "min": t.min().item(),
                "max": t.max().item(), "zero_fraction": (t == 0).double().mean().item(),
            }  # fmt: skip
            for stat, value in expected.items():
                assert float(row[stat]) == pytest.approx(value, rel=1e-9, abs=1e-12), (init, name, stat)
            assert f"| {job} | {init} |" in markdown
    return by_init


def test_sweep_report_with_the_basic_launcher_and_a_failing_job(basic_sweep):
    result, sweep = basic_sweep
    assert result.returncode != 0  # a job failed
    assert "Traceback" not in result.stderr
    # the failing job, named with its overrides, on one line
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "error: 1 job(s) of the sweep failed: #3 (init=broken): init.rules[0].weight: unknown initializer 'nosuch'"
    )
    stats = check_report_matches_checkpoints(sweep, n_jobs=4)
    assert set(stats) == {"constant", "custom", "normal"}  # the others still ran and are reported
    assert float(stats["constant"]["0.weight"]["std"]) == 0 and float(stats["constant"]["0.weight"]["mean"]) == 1
    assert float(stats["custom"]["0.weight"]["zero_fraction"]) == pytest.approx(0.5, abs=0.05)
    assert float(stats["normal"]["0.weight"]["std"]) == pytest.approx(0.01, rel=0.1)
    assert (sweep / "3" / "error.txt").read_text().startswith("init.rules[0].weight: unknown initializer 'nosuch'")
    assert not (sweep / "3" / "model.safetensors").exists()
    failed = [r for r in read_csv(sweep / "report.csv") if r["status"] == "failed"]
    assert [(r["job"], r["overrides"]) for r in failed] == [("3", "init=broken")]
    markdown = (sweep / "report.md").read_text()
    assert "## Failed jobs" in markdown and "`init=broken`" in markdown and "nosuch" in markdown
    assert "## Signal propagation of `mlp` at init" in markdown and is_png(sweep / "signal.png")
    signal = read_csv(sweep / "signal.csv")
    assert {r["init"] for r in signal} == {"constant", "custom", "normal"}


def test_sweep_report_with_joblib_matches_the_basic_launcher(joblib_sweep, basic_sweep):
    result, sweep = ok(joblib_sweep[0]), joblib_sweep[1]
    assert "Joblib.Parallel" in result.stdout + result.stderr
    stats = check_report_matches_checkpoints(sweep, n_jobs=3)
    assert float(stats["halves"]["0.weight"]["mean"]) == 0.5  # the user's own scheme, from --config-dir
    # A job's result does not depend on the launcher: the basic one reset the seed for each job.
    basic = check_report_matches_checkpoints(basic_sweep[1], n_jobs=4)
    for init in ("constant", "custom"):
        for name, row in stats[init].items():
            assert {s: row[s] for s in ("mean", "std", "min", "max")} == {
                s: basic[init][name][s] for s in ("mean", "std", "min", "max")
            }


# --- independent single runs: errors, --config-dir, check mode ---------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, user_conf: Path) -> dict[str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("quick")
    (tmp / "a_file").write_text("")
    full = {"HYDRA_FULL_ERROR": "1"}
    huge = command("--config-dir", str(user_conf), "model=huge", "check=true", f"hydra.run.dir={tmp}/huge")
    imports = (
        "import sys, composer.app.main, composer.app.report; "
        "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    )
    peak_rss = textwrap.dedent(f"""\
        import resource, subprocess, sys
        r = subprocess.run({huge!r})
        print("peak_rss_kb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        sys.exit(r.returncode)
        """)  # fmt: skip
    return run_together({
        "typo": (command("model.layers.2.type=Linaer", f"hydra.run.dir={tmp}/typo"), None),
        "typo_full": (command("model.layers.2.type=Linaer", f"hydra.run.dir={tmp}/typo_full"), full),
        "option": (command("init=xaveir", f"hydra.run.dir={tmp}/option"), None),
        "key": (command("modle=mlp", f"hydra.run.dir={tmp}/key"), None),
        "unwritable": (command(f"hydra.run.dir={tmp}/a_file/run"), None),
        "lazy_no_shape": (command("model=lazy_mlp", "input_shape=null", f"hydra.run.dir={tmp}/lazy"), None),
        "no_shape": (command("model=mlp", "input_shape=null", f"hydra.run.dir={tmp}/no_shape"), None),
        "shadow": (command("--config-dir", str(user_conf), "model=mlp", f"hydra.run.dir={tmp}/shadow"), None),
        "check": (command("model=lazy_mlp", "init=xavier", "check=true", f"hydra.run.dir={tmp}/check"), None),
        "huge": ([sys.executable, "-c", peak_rss], None),
        "imports": ([sys.executable, "-c", imports], None),
        "nested_typo": (command("model.layers.0.out_feature=5", f"hydra.run.dir={tmp}/nested_typo"), None),
        "missing_arg": (command("model.layers.0.bias=false", f"hydra.run.dir={tmp}/missing_arg"), None),
        "own_rules": (command("--config-dir", str(user_conf), "model=own_rules", f"hydra.run.dir={tmp}/own"), None),
        "own_rules_xavier": (
            command("--config-dir", str(user_conf), "model=own_rules", "init=xavier", f"hydra.run.dir={tmp}/own_x"),
            None,
        ),
        "no_header": (command("--config-dir", str(user_conf), "model=no_header", f"hydra.run.dir={tmp}/nh"), None),
        "conv": (command("--config-dir", str(user_conf), "model=conv", f"hydra.run.dir={tmp}/conv"), None),
        "no_probe": (command("probe=false", f"hydra.run.dir={tmp}/no_probe"), None),
        "probe_typo": (command("probe.bach=8", f"hydra.run.dir={tmp}/probe_typo"), None),
        "probe_batch": (command("probe.batch=8", "model=lstm_classifier", f"hydra.run.dir={tmp}/pb"), None),
        "list": (command("list"), None),
        "list_type": (command("list", "types", "Conv2d"), None),
        "list_typo": (command("list", "types", "Conv2D"), None),
        "list_user": (command("--config-dir", str(user_conf), "list", "recipes"), None),
        "schema": (command("schema"), None),
        "help": (command("--help"), None),
    }, tmp) | {"tmp": tmp}  # fmt: skip


def test_bad_recipe_is_one_line_without_traceback(quick):
    result = quick["typo"]
    assert result.returncode != 0
    assert error_lines(result) == ["error: model.layers[2].type: unknown type 'Linaer' (did you mean 'Linear'?)"]


def test_hydra_full_error_still_shows_the_line(quick):
    result = quick["typo_full"]
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert error_lines(result)[-1] == "error: model.layers[2].type: unknown type 'Linaer' (did you mean 'Linear'?)"


def test_bad_overrides_are_one_line(quick):
    option, key = quick["option"], quick["key"]
    assert option.returncode != 0 and key.returncode != 0
    [line] = error_lines(option)
    assert line.startswith("error: init: no config named 'xaveir' (did you mean 'xavier'?); available: ")
    assert "constant, custom, default" in line
    assert error_lines(key) == [
        "error: modle: no such key in the config (did you mean 'model'?); to add it, use +modle=mlp"
    ]


def test_unwritable_run_folder_is_a_clear_error(quick):
    result = quick["unwritable"]
    assert result.returncode != 0
    assert error_lines(result) == [f"error: {quick['tmp']}/a_file/run: cannot write: Not a directory"]


def test_without_input_shape(quick):
    lazy = quick["lazy_no_shape"]
    assert lazy.returncode != 0
    assert len(error_lines(lazy)) == 1 and error_lines(lazy)[0].startswith("error: input_shape: ")
    plain = ok(quick["no_shape"])  # no lazy layer: it runs, without the smoke forward
    assert "output shape:" not in plain.stdout
    assert (quick["tmp"] / "no_shape" / "model.safetensors").exists()
    assert "input_shape" not in yaml.safe_load((quick["tmp"] / "no_shape" / "recipe.yaml").read_text())


def test_config_dir_shadows_the_packaged_recipe(quick):
    result = ok(quick["shadow"])
    assert "output shape: [3, 7]" in result.stdout
    model = load_checkpoint(quick["tmp"] / "shadow" / "model.safetensors")
    assert model[0].weight.shape == (7, 20)


def test_check_mode_validates_on_meta_without_writing_weights(quick):
    result = ok(quick["check"])
    assert "check: the recipe is valid; 7,946 parameters" in result.stdout
    assert "[2, 256]" in result.stdout  # lazy shapes inferred on meta
    assert "0.weight: xavier_uniform" in result.stdout
    assert not (quick["tmp"] / "check" / "model.safetensors").exists()


def test_check_mode_handles_ten_billion_parameters_in_little_memory(quick):
    result = ok(quick["huge"])
    assert "check: the recipe is valid; 10,738,073,600 parameters (43.0 GB)" in result.stdout
    peak_kb = int(result.stdout.rsplit("peak_rss_kb", 1)[1])
    assert peak_kb < 500 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_app_does_not_import_matplotlib(quick):
    assert ok(quick["imports"]).stdout.strip() == "[]"


def test_a_misspelled_nested_key_names_the_one_meant(quick):
    assert error_lines(quick["nested_typo"]) == [
        "error: model.layers.0.out_feature: no such key in the config (did you mean 'out_features'?)"
    ]
    assert error_lines(quick["missing_arg"]) == [
        "error: model.layers.0.bias: Linear takes bias, but the recipe does not set it; "
        "to set it, use +model.layers.0.bias=false"
    ]


def test_a_model_files_own_init_rules_survive_the_init_group(quick):
    own = yaml.safe_load((quick["tmp"] / "own" / "recipe.yaml").read_text())["init"]
    assert own == {"seed": 7, "rules": [{"match": "0", "weight": "zeros", "bias": "ones"}]}
    with_scheme = yaml.safe_load((quick["tmp"] / "own_x" / "recipe.yaml").read_text())["init"]
    assert with_scheme["rules"] == [
        {"match": "0", "weight": "zeros", "bias": "ones"},
        {"layer": "Linear", "weight": "xavier_uniform"},  # the scheme's, after: a later rule wins
    ]
    model = load_checkpoint(quick["tmp"] / "own_x" / "model.safetensors")
    assert torch.all(model[0].bias == 1) and model[0].weight.std() > 0  # xavier won the weight, ones kept the bias
    assert "0.weight: xavier_uniform [init.rules[1].weight]" in ok(quick["own_rules_xavier"]).stdout


def test_a_model_file_without_its_package_header_says_to_add_it(quick):
    assert error_lines(quick["no_header"]) == [
        "error: model: the conf file model/no_header.yaml holds a whole recipe (top-level model, input_shape) "
        "but is read as the model node: add '# @package _global_' as its first line"
    ]


def test_an_input_shape_without_the_batch_dimension_says_so(quick):
    [line] = error_lines(quick["conv"])
    assert line.startswith("error: input_shape: a forward pass of zeros shaped [2, 28, 28] failed in module '0'")
    assert line.endswith(
        "(input_shape includes the batch dimension: Conv2d takes 4 dims, [batch, channels, size, size], "
        "and [2, 28, 28] has 3, e.g. [2, 1, 28, 28])"
    )


def test_probe_settings(quick):
    assert "probe:" not in ok(quick["no_probe"]).stdout
    assert not (quick["tmp"] / "no_probe" / "probe.json").exists()
    assert error_lines(quick["probe_typo"]) == ["error: probe.bach: no such key in the config (did you mean 'batch'?)"]
    ok(quick["probe_batch"])
    signal = json.loads((quick["tmp"] / "pb" / "probe.json").read_text())
    assert signal["batch"] == 8 and signal["inputs"][0]["dtype"] == "int64"


def test_help_lists_the_groups_and_the_subcommands(quick):
    text = ok(quick["help"]).stdout
    assert "model: bert, centered, chimera, convnext, deep_mlp" in text
    assert "nncompose list [types|inits|ops|templates|recipes] [NAME]" in text
    assert 'eval "$(nncompose -sc install=bash)"' in text
    assert "save=false (no\ncheckpoint), summary.depth=N (print the summary's first N levels)" in text
    assert "save: true\nsummary:\n  depth: null\n" in text  # the config section, as Hydra prints it


def test_list_and_schema_subcommands(quick):
    overview = ok(quick["list"]).stdout
    assert overview.startswith("what a recipe can name") and "26 ops" in overview
    assert "without in_channels it is built as LazyConv2d" in ok(quick["list_type"]).stdout
    assert error_lines(quick["list_typo"]) == ["error: list types: unknown type 'Conv2D' (did you mean 'Conv2d'?)"]
    listed = ok(quick["list_user"]).stdout
    assert "own_rules" in listed and "halves" in listed and "deep_mlp" in listed  # the user's and ours
    schema = json.loads(ok(quick["schema"]).stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "type.Linear" in schema["$defs"] and "op.add" in schema["$defs"]


def test_inspect_prints_the_recipe_ready_to_edit(single, tmp_path):
    _, out = single
    result = ok(
        run([sys.executable, "-m", "composer", "inspect", str(out / "model.safetensors"), "--recipe"], tmp_path)
    )
    assert result.stdout.startswith("# @package _global_\n")
    recipe = yaml.safe_load(result.stdout)
    assert recipe == yaml.safe_load((out / "recipe.yaml").read_text())
    assert (
        build_from_config(recipe).state_dict().keys() == load_checkpoint(out / "model.safetensors").state_dict().keys()
    )


def test_console_script_and_tab_completion(tmp_path):
    script = Path(sys.executable).parent / "nncompose"
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment (nncompose)")
    install = ok(run([str(script), "-sc", "install=bash"], tmp_path))
    assert "complete -o nospace -o default -F hydra_bash_completion nncompose" in install.stdout
    env = {"COMP_LINE": "nncompose model=ml", "COMP_POINT": "18"}
    query = ok(run([str(script), "-sc", "query=bash"], tmp_path, env=env))
    assert "model=mlp" in query.stdout.split() and "model=mlp_block" in query.stdout.split()
