"""Hostile recipe folders, files and saves through real processes (issue 13): the Hydra app, the
inspect tool, a save killed with SIGKILL, a full disk and a file size limit.

Every process here starts Python and torch (seconds each), so the module is ``slow``; runs that do
not depend on each other start together.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.attacks import measure
from composer import load_checkpoint
from tests.attacks import ALIAS_BOMB, FILE_ATTACKS, REPEAT_BILLION, write_checkpoint
from tests.cli import TIMEOUT, command, run_together
from tests.recipes import ROOT

pytestmark = pytest.mark.slow

SECRET = "AKIA-hunter2-do-not-store"

# A --config-dir from someone else: each model or init file tries to reach Hydra, or to hang it.
HOSTILE = {
    "model/callback.yaml": """\
        # @package _global_
        model: {type: Linear, in_features: 4, out_features: 2}
        hydra:
          callbacks:
            zoo: {_target_: torch.save, obj: 1, f: PAYLOAD}
        """,
    "model/package.yaml": """\
        # @package hydra.callbacks
        zoo: {_target_: torch.save, obj: 1, f: PAYLOAD}
        """,
    "model/defaults.yaml": """\
        defaults:
          - /hydra/callbacks@hydra.callbacks.zoo: payload
        type: Identity
        """,
    "model/unknown_key.yaml": """\
        # @package _global_
        model: {type: Identity}
        launcher: {_target_: torch.save, obj: 1, f: PAYLOAD}
        """,
    "init/callback.yaml": """\
        rules: []
        hydra: {callbacks: {zoo: {_target_: torch.save, obj: 1, f: PAYLOAD}}}
        """,
    "hydra/callbacks/payload.yaml": """\
        _target_: torch.save
        obj: 1
        f: PAYLOAD
        """,
    "config.yaml": """\
        defaults: [_self_, {model: mlp}, {init: default}]
        hydra: {callbacks: {zoo: {_target_: torch.save, obj: 1, f: PAYLOAD}}}
        """,
    "model/bomb.yaml": "# @package _global_\n" + ALIAS_BOMB + "\nmodel: {type: Identity, unused: *i}\n",
    "model/secret.yaml": """\
        # @package _global_
        model: {type: Linear, in_features: 4, out_features: 2}
        blocks: {unused: {type: Identity, token: "${oc.env:AWS_SECRET_ACCESS_KEY}"}}
        input_shape: [2, 4]
        """,
    "model/loop.yaml": """\
        # @package _global_
        model: {type: FixedHiddenMLP}
        input_shape: [2, 20]
        """,
    "init/overflow.yaml": """\
        # a finite bias that overflows to inf in the hidden layer: FixedHiddenMLP's loop never ends
        rules:
          - {layer: Linear, weight: {type: constant, val: 1.0}, bias: {type: constant, val: 3.0e38}}
        """,
    "model/escape.yaml": 'type: Linear\nin_features: 2\nout_features: 2\n"\\e]0;pwned\\a\\e[2J": 1\n',
    "model/wide.yaml": "# @package _global_\nmodel: {type: Repeat, times: 200, body: {type: Identity}}\n",
}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("hostile")
    payload = root / "PAYLOAD_RAN"
    conf = root / "conf"
    for name, text in HOSTILE.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(textwrap.dedent(text).replace("PAYLOAD", str(payload)))
    os.mkfifo(conf / "model" / "fifo.yaml")

    def app(*args: str, env: dict[str, str] | None = None, name: str = "run") -> tuple:
        return command("--config-dir", str(conf), *args, f"hydra.run.dir={root / name}"), env

    secret = {"AWS_SECRET_ACCESS_KEY": SECRET}
    jobs = {
        **{f"model={m}": app(f"model={m}") for m in ("callback", "package", "defaults", "unknown_key", "bomb")},
        "init=callback": app("init=callback"),
        "primary config": app("model=mlp", name="primary"),
        "fifo": app("model=fifo"),
        "secret off": app("model=secret", env=secret),
        "secret on": app("model=secret", env={**secret, "COMPOSER_RESOLVERS": "oc.env"}, name="secret"),
        "loop": app("model=loop", "init=overflow", env={"COMPOSER_MAX_SECONDS": "1"}),
        "escape": app("model=escape"),
        "modules low": app("model=wide", env={"COMPOSER_MAX_MODULES": "100"}),
        "modules default": app("model=wide", name="wide"),
        "seed": app("model=mlp", "seed=100000000000000000000000"),
    }
    started = time.perf_counter()
    results = run_together(jobs, root)
    results["elapsed"] = time.perf_counter() - started  # type: ignore[assignment]
    return root, results


@pytest.mark.parametrize(
    "job, message",
    [
        ("model=callback", "callback.yaml: hydra: a model file holds a recipe only, no 'hydra' key"),
        ("model=package", "'# @package hydra.callbacks': a model file lands in its group (model) or in _global_"),
        ("model=defaults", "defaults.yaml: defaults: a model file holds a recipe only, no 'defaults' key"),
        ("model=unknown_key", "unknown_key.yaml: launcher: not a recipe key or an app setting"),
        ("init=callback", "init/callback.yaml: hydra: an init file holds a recipe only"),
        ("model=bomb", "exceeds the limit nodes=500,000"),
        ("fifo", "model: no config named 'fifo'"),
        ("secret off", "resolver 'oc.env' is off: enable it with COMPOSER_RESOLVERS=oc.env"),
        ("loop", "input_shape: the probe's forward and backward pass exceeds the limit seconds=1"),
        (
            "modules low",
            "exceeds the limit modules=100 (raise it with limits={'modules': N} or COMPOSER_MAX_MODULES=N)",
        ),
        ("seed", "seed: expected an integer in [0, 2**32) or null"),
    ],
)
def test_hostile_recipe_folder_is_one_error_line_and_runs_no_payload(hostile, job, message):
    root, results = hostile
    assert message in one_error_line(results[job])
    assert not (root / "PAYLOAD_RAN").exists()


def test_a_recipe_folders_primary_config_is_not_used(hostile):
    root, results = hostile
    assert results["primary config"].returncode == 0, results["primary config"].stderr
    assert (root / "primary" / "model.safetensors").exists() and not (root / "PAYLOAD_RAN").exists()


def test_hostile_runs_end_fast(hostile):
    _, results = hostile
    assert results["elapsed"] < 120  # 16 processes on two cores; each bomb, loop or FIFO ends in a second


def test_enabled_resolver_reads_the_secret_and_writes_it_nowhere(hostile):
    root, results = hostile
    assert results["secret on"].returncode == 0, results["secret on"].stderr
    out = root / "secret"
    for name in ("model.safetensors", "recipe.yaml", "summary.txt"):
        assert SECRET.encode() not in (out / name).read_bytes(), name
    assert "${oc.env:AWS_SECRET_ACCESS_KEY}" in (out / "recipe.yaml").read_text()
    assert SECRET not in results["secret on"].stdout + results["secret on"].stderr


def test_terminal_control_characters_are_escaped_on_output(hostile):
    _, results = hostile
    line = one_error_line(results["escape"])
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;pwned" in line


def test_the_modules_limit_is_raised_by_the_environment(hostile):
    root, results = hostile
    assert results["modules default"].returncode == 0, results["modules default"].stderr
    assert len(load_checkpoint(root / "wide" / "model.safetensors")) == 200


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_of_hostile_files(tmp_path):
    inspect = [sys.executable, "-m", "composer", "inspect"]
    repeat = write_checkpoint(tmp_path / "repeat.safetensors", REPEAT_BILLION)
    os.mkfifo(tmp_path / "fifo.safetensors")
    results = run_together({
        "repeat": ([*inspect, str(repeat)], None),
        "rebuild": ([*inspect, "--rebuild", str(repeat)], None),
        "fifo": ([*inspect, str(tmp_path / "fifo.safetensors")], None),
        "header": ([*inspect, str(repeat)], {"COMPOSER_MAX_HEADER_BYTES": "64"}),
    }, tmp_path)  # fmt: skip
    assert results["repeat"].returncode == 0 and "times: 1000000000" in results["repeat"].stdout
    assert "limit modules=50,000" in one_error_line(results["rebuild"])
    assert "not a regular file (a FIFO)" in one_error_line(results["fifo"])
    assert "limit header_bytes=64" in one_error_line(results["header"])


# --- saves: SIGKILL, a full disk, a file size limit ------------------------------------------------


SAVE_LOOP = """
import sys, torch, composer
linear = {"type": "Linear", "in_features": 1024, "out_features": 1024}
model = composer.build_from_config({"type": "Repeat", "times": 8, "body": linear})
composer.save_checkpoint(model, sys.argv[1])
print("saved", flush=True)
while True:
    composer.save_checkpoint(model, sys.argv[1])
"""


def kill_mid_save(tmp_path: Path, path: Path) -> list[str]:
    """SIGKILL a process that saves in a loop while a temporary exists; the temporaries left."""
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".composer-") for p in tmp_path.iterdir()):  # mid-save
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    return [p.name for p in tmp_path.iterdir() if p.name.startswith(".composer-")]


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "big.safetensors"
    for _ in range(5):  # the kill may land between two saves, when no temporary exists
        left = kill_mid_save(tmp_path, path)
        if left:
            break
    assert len(left) == 1 and len(left[0]) == len(".composer-01234567.tmp")  # short: fits any file name
    model = load_checkpoint(path)  # the previous checkpoint, whole
    from composer import save_checkpoint  # noqa: PLC0415

    save_checkpoint(model, tmp_path / "other.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors", "other.safetensors"]


FILL = """
import resource, signal, sys, torch, composer
from composer import CheckpointError
small = composer.build_from_config({"type": "Linear", "in_features": 2, "out_features": 2})
big = composer.build_from_config({"type": "Linear", "in_features": 1024, "out_features": 1024})
composer.save_checkpoint(small, sys.argv[1])
if sys.argv[2] == "efbig":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    composer.save_checkpoint(big, sys.argv[1])
except CheckpointError as e:
    cause = e.__cause__
    print(type(cause).__name__, cause.errno, "|", e)
"""


def fill(path: Path, how: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(wrap or []), sys.executable, "-c", FILL, str(path), how]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def test_file_too_large_is_a_checkpoint_error_and_the_old_file_stays(tmp_path):
    path = tmp_path / "m.safetensors"
    result = fill(path, "efbig")
    assert result.stdout.startswith("OSError 27 |"), result.stdout + result.stderr
    assert f"{path}: cannot write: File too large (" in result.stdout and "bytes free in" in result.stdout
    assert load_checkpoint(path).weight.shape == (2, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_no_space_left_is_a_checkpoint_error_and_the_old_file_stays(tmp_path):
    """On a 600 KB tmpfs of a private mount namespace (skipped where one cannot be made)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    unshare = shutil.which("unshare")
    probe = unshare and subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("no unshare with user and mount namespaces here")
    script = f'mount -t tmpfs -o size=600k none {mount} && exec "$@"'
    path = mount / "m.safetensors"
    wrap = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
    # the check runs inside the namespace: the tmpfs vanishes with it
    check = f"""
import sys, torch
sys.argv = ["fill", {str(path)!r}, "enospc"]
exec(compile({FILL!r}, "fill", "exec"))
from composer import load_checkpoint
import os
print("old", tuple(load_checkpoint(sys.argv[1]).weight.shape), sorted(os.listdir({str(mount)!r})))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [*wrap, sys.executable, "-c", check], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith("OSError 28 |"), result.stdout + result.stderr
    assert "No space left on device" in lines[0] and "bytes free in" in lines[0]
    assert lines[1] == "old (2, 2) ['m.safetensors']"


# --- checkpoint directories and large files (issue 23): each in a fresh process, time and memory capped


@pytest.mark.parametrize("index", range(len(FILE_ATTACKS)), ids=[a.name for a in FILE_ATTACKS])
def test_checkpoint_directory_and_large_file_attacks_end_fast_in_a_fresh_process(index: int) -> None:
    """Each attack in its own process (``bench.attacks``), stopped after 60 s or at 4 GB of address
    space: before, a FIFO hung load and inspect, a deep pickle killed the process (SIGSEGV), a
    sparse file cost its size in memory."""
    attack = FILE_ATTACKS[index]
    result = measure(index, timeout=60, memory_gb=4, catalogue="FILE_ATTACKS")
    expected = "ends (no error)" if attack.error is None else f"{attack.error.__name__}: "
    assert result["outcome"].startswith(expected), result
    assert attack.match in result["outcome"], result
    assert result["seconds"] < 5 and result["mb"] < 200, result  # measured: under 0.5 s and 35 MB each


# --- list and schema read a --config-dir as the app reads it (issue 23) ----------------------------


# ``python -m composer`` that caps its own address space first: the runs go in threads, and a
# ``preexec_fn`` in a child forked from a threaded process may crash it before it starts (the
# subprocess module warns of it; seen here as segmentation faults).
_CAPPED_COMPOSER = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    "runpy.run_module('composer', run_name='__main__', alter_sys=True)"
)


def _capped(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess | None, float]:
    """``python -m composer ARGS`` with 4 GB of address space and 60 s: (result or None if it
    ran past them, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CAPPED_COMPOSER, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    return done, time.perf_counter() - start


@pytest.fixture(scope="module")
def hostile_conf(tmp_path_factory) -> Path:
    """A --config-dir from elsewhere: escape sequences, a FIFO, a link to a secret, an alias bomb in
    a template's arguments, a 20 MB file."""
    root = tmp_path_factory.mktemp("conf")
    model = root / "conf" / "model"
    model.mkdir(parents=True)
    (model / "escape.yaml").write_text(
        "# \x1b]0;pwned\x07\x1b[2J a title\n# @package _global_\nmodel: {type: Identity}\n"
        "blocks:\n  t\x1b[31m: {args: [c], body: {type: Identity}}\n"
    )
    os.mkfifo(model / "fifo.yaml")
    (root / "secret.txt").write_text(f"# {SECRET}\nmodel: {{type: Identity}}\n")
    (model / "link.yaml").symlink_to(root / "secret.txt")
    bomb = "\n".join(f"      {line}" for line in ALIAS_BOMB.splitlines())
    (model / "bomb.yaml").write_text(
        "# @package _global_\nmodel: {type: Identity}\nblocks:\n  t:\n    args:\n"
        f"{bomb}\n    body: {{type: Identity}}\n"
    )
    with open(model / "big.yaml", "w") as f:
        f.write("# @package _global_\nmodel: {type: Identity}\nblocks:\n  pad:\n")
        f.write("    - [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]\n" * 350_000)
    return root


LIST_RUNS = {
    "overview": ["list"],
    "recipes": ["list", "recipes"],
    "templates": ["list", "templates"],
    "escape": ["list", "recipes", "escape"],
    "link": ["list", "recipes", "link"],
    "fifo": ["list", "recipes", "fifo"],
    "big": ["list", "recipes", "big"],
    "bomb template": ["list", "templates", "t"],
    "schema": ["schema"],
}


def test_list_and_schema_read_a_hostile_config_dir_as_the_app_does(hostile_conf: Path) -> None:
    conf = str(hostile_conf / "conf")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {n: pool.submit(_capped, ["--config-dir", conf, *a], hostile_conf) for n, a in LIST_RUNS.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, (done, seconds) in results.items():
        assert done is not None, f"{name}: still running after {seconds:.0f} s"
        assert seconds < 30, f"{name}: {seconds:.1f} s"
        assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout, name
        assert SECRET not in done.stdout + done.stderr, name
        assert "Traceback" not in done.stderr, f"{name}: {done.stderr}"
    assert results["overview"][0].returncode == 0 and results["recipes"][0].returncode == 0
    assert "\\x1b]0;pwned" in results["escape"][0].stdout  # shown, escaped
    assert "\\x1b]0;pwned" in results["recipes"][0].stdout  # its description
    assert "symbolic link out of its config folder" in results["link"][0].stderr
    assert "not a regular file" in results["fifo"][0].stderr
    assert "limit recipe_bytes=" in results["big"][0].stderr
    assert "no template 't'" in results["bomb template"][0].stderr  # its file is over the nodes limit: not listed
    assert results["schema"][0].returncode == 0 and results["schema"][0].stdout.startswith("{")
