"""The wheel, installed (not editable) into a fresh environment, runs every command from any folder:
the packaged recipes (Hydra's primary config directory) travel inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.recipes import ROOT

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR", "VIRTUAL_ENV")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; torch and the other dependencies come from this environment
    (a .pth line), so nothing is downloaded. Returns the venv's bin folder."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT)],
        tmp,
    )
    [wheel] = tmp.glob("*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    return bin_dir


def test_the_installed_wheel_runs_recipes_from_any_folder(installed, tmp_path):
    python = str(installed / "python")
    where = run([python, "-c", "import composer; print(composer.__file__)"], tmp_path).stdout
    assert str(ROOT) not in where  # the wheel's copy, not the checkout
    licence = (
        "from importlib.metadata import metadata, files; dist = 'torch-recipe-composer'; "
        "print(metadata(dist)['License-Expression']); print([str(f) for f in files(dist) if 'LICENSE' in str(f)])"
    )
    expression, licence_files = run([python, "-c", licence], tmp_path).stdout.splitlines()
    assert expression == "Apache-2.0" and "licenses/LICENSE" in licence_files  # the full text travels too
    result = run(
        [str(installed / "nncompose"), "model=rgnet", "init=xavier", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert "total parameters: 309" in result.stdout and (tmp_path / "run" / "model.safetensors").exists()
    assert "model recipes (model=NAME):" in run([python, "-m", "composer", "list", "recipes"], tmp_path).stdout
    assert run([python, "-m", "composer", "schema"], tmp_path).stdout.startswith('{"$schema"')
    # --config-dir still shadows a packaged recipe
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "mlp.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        model: {type: Linear, in_features: 3, out_features: 5}
        input_shape: [2, 3]
        """)
    )
    shadow = run(
        [python, "-m", "composer", "--config-dir", "mine", "model=mlp", "probe=false", "hydra.run.dir=shadow"], tmp_path
    )
    assert "output shape: [2, 5]" in shadow.stdout
