"""Plugins (CONTRACT 7.11): a user's own modules, ops and initializers reach recipes from the user's
side only: ``plugins=[...]`` on the command line, ``COMPOSER_PLUGINS``, or an installed package's
entry point in the group ``composer.plugins`` (loaded on the first name a registry lacks). A recipe
file, a ``--config-dir`` file or a checkpoint never imports anything.

The plugin is a real package written to tmp_path; its module writes a marker file when imported,
so "imports nothing" is a file that is absent. In-process tests import it under a name of their
own (``sys.path`` and ``sys.modules`` restored by monkeypatch, the registries by conftest's scope);
the app and the entry points run in subprocesses.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from composer import ConfigError, build_from_config
from composer.app.confsource import check_recipe_file
from composer.app.main import plugins_setting
from composer.describe.listing import list_text
from composer.init.initializers import INITIALIZERS
from composer.modules.ops import OPS
from composer.modules.registry import MODULES, import_plugins
from tests.cli import command, run_together
from tests.recipes import ROOT

PLUGIN = """\
    import os
    import pathlib

    import torch
    from torch import nn

    from composer import register_init, register_module, register_op

    if os.environ.get("PLUGIN_MARK"):
        pathlib.Path(os.environ["PLUGIN_MARK"]).write_text("imported")


    @register_module
    class {prefix}Doubler(nn.Module):
        \"\"\"Twice a Linear's output.\"\"\"

        def __init__(self, features: int) -> None:
            super().__init__()
            self.fc = nn.Linear(features, features)

        def forward(self, x):
            return 2 * self.fc(x)


    @register_op("{prefix}halve")
    def halve(x):
        return x / 2


    @register_init("{prefix}sevens")
    def sevens(tensor, generator=None):
        with torch.no_grad():
            return tensor.fill_(7.0)
    """

RECIPE = """\
    # @package _global_
    model:
      type: Sequential
      layers:
        - {type: Doubler, features: 4}
        - {op: halve}
    init:
      rules:
        - {match: "0.fc", weight: sevens}
    input_shape: [2, 4]
    """


def write_plugin(root: Path, package: str, prefix: str = "") -> Path:
    """``root/package/blocks.py``, registering ``{prefix}Doubler``, op ``{prefix}halve`` and
    initializer ``{prefix}sevens``."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "blocks.py").write_text(textwrap.dedent(PLUGIN).replace("{prefix}", prefix))
    return root


def write_distribution(root: Path, name: str, module: str) -> None:
    """An installed distribution, as importlib.metadata finds one on sys.path: a ``*.dist-info``
    folder with METADATA and an entry point of the group ``composer.plugins``."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[composer.plugins]\nblocks = {module}\n")


# --- in process --------------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A plugin package importable for this test only, under a name of its own."""
    package = f"plugin_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path, package, prefix="T")))
    for name in (package, f"{package}.blocks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield f"{package}.blocks"
    for name in (package, f"{package}.blocks"):
        sys.modules.pop(name, None)


def test_a_plugin_registers_and_each_name_knows_its_plugin(plugin: str, tmp_path: Path):
    assert import_plugins([plugin]) == [plugin]
    assert (MODULES.origin("TDoubler"), OPS.origin("Thalve"), INITIALIZERS.origin("Tsevens")) == (plugin,) * 3
    assert MODULES.origin("Linear") is None
    model = build_from_config(
        {
            "model": {"type": "Sequential", "layers": [{"type": "TDoubler", "features": 4}, {"op": "Thalve"}]},
            "init": {"rules": [{"match": "0.fc", "weight": "Tsevens"}]},
        }
    )
    assert type(model[0]).__name__ == "TDoubler"
    assert model[0].fc.weight.eq(7).all()
    assert f"plugin {plugin}: 1 type, 1 initializer, 1 op" in list_text()
    assert f"plugin {plugin} (1):\n  TDoubler" in list_text("types")
    assert f"Thalve()  [plugin {plugin}]" in list_text("ops")
    assert f"Tsevens()  [plugin {plugin}]" in list_text("inits")
    assert list_text("types", "TDoubler").startswith(f"TDoubler: {plugin}.TDoubler, from plugin {plugin}")


def test_a_plugin_that_does_not_import_is_one_problem_naming_it(plugin: str):
    typo = plugin.replace("blocks", "blokcs")
    with pytest.raises(ConfigError) as e:
        import_plugins([plugin, typo, "os; rm"])
    assert e.value.problems == [
        ("plugins[1]", f"cannot import {typo!r}: No module named {typo!r}"),
        ("plugins[2]", "'os; rm' is not a module name (such as my_pkg.blocks)"),
    ]
    assert "TDoubler" in MODULES  # the good one was imported all the same


def test_a_recipe_file_setting_plugins_is_refused():
    with pytest.raises(ConfigError, match=r"m.yaml: plugins: a model file holds a recipe only, no 'plugins' key"):
        check_recipe_file("model", "_global_", {"plugins": ["os"], "model": {"type": "ReLU"}}, "m.yaml")
    with pytest.raises(ConfigError, match="an init file holds a recipe only, no 'plugins' key"):
        check_recipe_file("init", None, {"plugins": ["os"], "rules": []}, "i.yaml")


@pytest.mark.parametrize(
    ("composed", "given", "expected", "problem"),
    [
        (["a.b"], ["a.b"], ["a.b"], None),  # plugins=[a.b] on the command line
        ("a.b", ["a.b"], ["a.b"], None),  # plugins=a.b
        ([], [], [], None),  # the packaged default
        (["a.b"], [], [], "set by a config file, not by the command line"),  # a --config-dir primary config
        (["a.b", "evil"], ["a.b"], [], "set by a config file"),
        (["a.b"], None, ["a.b"], None),  # not under Hydra: a Python caller
        (3, None, [], "expected a list of module names"),
    ],
)
def test_the_plugins_setting_is_the_command_lines(composed, given, expected, problem):
    problems: list[tuple[str, str]] = []
    assert plugins_setting(composed, given, problems) == expected
    assert [p for _, p in problems if problem in p] if problem else problems == []


# --- subprocesses: the app, COMPOSER_PLUGINS, entry points --------------------------------------


def _conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "plug.yaml").write_text(textwrap.dedent(RECIPE))
    # a recipe file trying to import: refused before anything runs
    (conf / "model" / "sneaky.yaml").write_text("# @package _global_\nplugins: [my_pkg.blocks]\nmodel: {type: ReLU}\n")
    # a primary config of the --config-dir trying the same
    (conf / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nplugins: [my_pkg.blocks]\n")
    # or a sweep of them from its sweeper's params
    sweep = "defaults:\n  - config\n  - _self_\nhydra:\n  sweeper:\n    params:\n      plugins: '[my_pkg.blocks],[]'\n"
    (conf / "sweepy.yaml").write_text(sweep)
    return conf


def _env(*paths: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)]), **extra}


@pytest.mark.slow
def test_the_app_imports_the_command_lines_plugins_and_no_files(tmp_path: Path):
    site = write_plugin(tmp_path / "site", "my_pkg")
    conf = _conf(tmp_path)
    mark = tmp_path / "imported"
    app = ["--config-dir", str(conf)]
    settings = ["save=false", "probe=false", f"hydra.run.dir={tmp_path / 'out'}"]
    results = run_together(
        {
            "cli": (command(*app, "model=plug", "plugins=[my_pkg.blocks]", *settings), _env(site)),
            "env": (command(*app, "model=plug", *settings), _env(site, COMPOSER_PLUGINS="my_pkg.blocks")),
            "typo": (command(*app, "model=plug", "plugins=[my_pkg.blokcs]", *settings), _env(site)),
            "file": (command(*app, "model=sneaky", *settings), _env(site, PLUGIN_MARK=str(mark))),
            "primary": (
                command(*app, "--config-name", "mine", "model=plug", *settings),
                _env(site, PLUGIN_MARK=str(mark)),
            ),
            "list": (command("list", "plugins=[my_pkg.blocks]"), _env(site)),
            "sweep": (
                command(*app, "--config-name", "sweepy", "-m", "model=plug", "save=false", "probe=false")
                + [f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                _env(site, PLUGIN_MARK=str(mark)),
            ),
        },
        tmp_path,
    )
    for name in ("cli", "env"):
        assert results[name].returncode == 0, results[name].stderr
        assert "0.fc.weight: sevens [init.rules[0].weight]" in results[name].stdout
        assert "1        Op" in results[name].stdout
    assert results["typo"].returncode != 0
    assert results["typo"].stderr.strip().splitlines() == [
        "error: plugins[0]: cannot import 'my_pkg.blokcs': No module named 'my_pkg.blokcs'"
    ]
    assert results["file"].returncode != 0
    assert "sneaky.yaml: plugins: a model file holds a recipe only, no 'plugins' key" in results["file"].stderr
    assert results["primary"].returncode != 0
    assert "error: plugins: set by a config file, not by the command line" in results["primary"].stderr
    assert results["sweep"].returncode != 0
    assert "hydra.sweeper.params.plugins: plugins import code: only the command line" in results["sweep"].stderr
    assert not mark.exists()  # no file imported the plugin
    assert "plugin my_pkg.blocks: 1 type, 1 initializer, 1 op" in results["list"].stdout


@pytest.mark.slow
def test_an_installed_entry_point_loads_on_a_miss(tmp_path: Path):
    site = write_plugin(tmp_path / "site", "my_pkg")
    write_distribution(site, "my-plugin", "my_pkg.blocks")
    broken = tmp_path / "broken"
    broken.mkdir()
    write_distribution(broken, "broken-plugin", "no_such_pkg.blocks")
    conf = _conf(tmp_path)
    in_process = textwrap.dedent("""\
        import sys
        import composer
        assert "importlib.metadata" not in sys.modules, "entry points scanned at import"
        from composer import build_from_config
        from composer.modules.registry import MODULES
        build_from_config({"model": {"type": "Linear", "in_features": 2, "out_features": 2}})
        assert "my_pkg.blocks" not in sys.modules, "loaded without a miss"
        model = build_from_config({"model": {"type": "Doubler", "features": 3}})
        print(type(model).__module__, MODULES.origin("Doubler"))
        """)
    settings = ["save=false", "probe=false", f"hydra.run.dir={tmp_path / 'out'}"]
    results = run_together(
        {
            "python": ([sys.executable, "-c", in_process], _env(site)),
            "app": (command("--config-dir", str(conf), "model=plug", *settings), _env(site)),
            "broken": (command("--config-dir", str(conf), "model=plug", *settings), _env(site, broken)),
            "unused": (command("model=mlp", *settings), _env(broken)),
        },
        tmp_path,
    )
    assert results["python"].returncode == 0, results["python"].stderr
    assert results["python"].stdout.split() == ["my_pkg.blocks", "my_pkg.blocks"]
    assert results["app"].returncode == 0, results["app"].stderr
    assert "0.fc.weight: sevens" in results["app"].stdout
    assert results["broken"].returncode != 0
    lines = results["broken"].stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: entry point 'blocks' of broken-plugin (composer.plugins): "
        "cannot import 'no_such_pkg.blocks': No module named 'no_such_pkg'"
    )
    assert results["unused"].returncode == 0, results["unused"].stderr  # no miss: a broken plugin stays unread
