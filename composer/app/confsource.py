"""What the command line lets a config file do: a Hydra config source that reads files within the
budgets, and keeps recipe files (``model/``, ``init/``) to recipes.

Hydra composes before the job runs, and a file it composes can set Hydra's own keys: a
``--config-dir`` recipe with ``hydra: {callbacks: {x: {_target_: ...}}}`` (or ``# @package
hydra.callbacks``, or a ``defaults`` entry that overrides ``/hydra/...``) has Hydra import and
call what it names before our code runs. So the app's config folders are read by
``GuardedConfigSource``, a config source of its own scheme (``composer-file://``) registered
through Hydra's plugin registry; the app's search-path plugin (``main.UserConfigFirst``) names
the folders with that scheme (``guarded``). Hydra's own classes stay as they are.

- A file must be a regular file within ``limits.recipe_bytes`` (a FIFO blocks forever), inside
  its folder once links are followed (``recipe.read.read_config_file``: ``list`` reads the same way), UTF-8
  YAML read by composer's loader (duplicate keys refused), within ``limits.nodes`` and
  ``limits.depth`` once its aliases are expanded (a nine-level alias bomb is 10^9 nodes);
- a file of the ``model`` or ``init`` group holds a recipe or a scheme only: it lands in its
  group's package or in ``_global_`` (no ``# @package hydra...``); in ``_global_`` its top-level
  keys are recipe keys or app settings other than ``probe`` (its batch is the runner's to choose);
  no ``hydra`` or ``defaults`` key anywhere at its top;
  no interpolation resolver that is not enabled (``COMPOSER_RESOLVERS``);
- the user's ``--config-dir``, which ``UserConfigFirst`` puts before the packaged configs so that
  its recipes shadow ours, is searched there for ``model/`` and ``init/`` only: its other files
  (a ``config.yaml``, launcher configs) keep Hydra's order, after the packaged ones.

Each problem is a ``ConfigError`` naming the file, raised while Hydra composes: before any
callback, launcher or sweeper is instantiated. A launcher's workers in other processes (joblib)
restore Hydra's registries from the parent, this class with them, and compose the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

from composer.errors import ConfigError
from composer.recipe.interpolation import enabled_resolvers, resolver_calls
from composer.recipe.read import TOP_LEVEL_KEYS as RECIPE_KEYS
from composer.recipe.read import read_config_file

RECIPE_GROUPS = ("model", "init")
USER_PROVIDER = "composer-config-dir"  # the provider name of the --config-dir entry put first
SCHEME = "composer-file"
APP_KEYS = ("seed", "check", "probe", "save", "summary")  # the app's own settings: not part of the recipe
CONFIG_KEYS = (*RECIPE_KEYS, *APP_KEYS)  # the keys of the composed config
# The settings a recipe file may not set: ``probe.batch`` sizes the probe's forward (a model file
# asking for a batch of 10^6 made the app allocate gigabytes); it belongs to whoever runs the app.
RUNNER_KEYS = ("probe",)
FILE_KEYS = tuple(key for key in CONFIG_KEYS if key not in RUNNER_KEYS)  # what a ``_global_`` recipe file may set
_FORBIDDEN = ("hydra", "defaults")


def guarded(path: str) -> str:
    """``path`` (a folder, or a ``file://`` search-path entry) as an entry this source reads."""
    return f"{SCHEME}://{path.removeprefix('file://')}"


class GuardedConfigSource(FileConfigSource):
    """Hydra's file config source, reading each file the guarded way (see the module). A subclass
    under its own scheme: Hydra's ``file`` source stays registered and unchanged beside it."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        """A config file, read the way composer reads a recipe; a recipe file checked as one."""
        name = self._normalize_file_name(config_path)
        full_path = os.path.join(self.path, name)
        if not os.path.exists(full_path):
            raise ConfigLoadError(f"Config not found : {os.path.realpath(full_path)}")
        data, header = _read(full_path, self.path)
        group = name.split("/", 1)[0] if "/" in name else ""
        if group in RECIPE_GROUPS:
            check_recipe_file(group, header.get("package"), data, full_path)
        return ConfigResult(
            config=OmegaConf.create(data if data is not None else {}),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=header,
        )

    # The user's --config-dir, searched first, serves the recipe groups only.

    def _serves(self, config_path: str) -> bool:
        return self.provider != USER_PROVIDER or config_path.strip("/").split("/", 1)[0] in RECIPE_GROUPS

    def is_group(self, config_path: str) -> bool:
        return (config_path == "" or self._serves(config_path)) and super().is_group(config_path)

    def is_config(self, config_path: str) -> bool:
        return self._serves(config_path) and super().is_config(config_path)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        found = super().list(config_path, results_filter)
        if self.provider == USER_PROVIDER and config_path.strip("/") == "":
            return [item for item in found if item in RECIPE_GROUPS]
        return found if self._serves(config_path) else []


def _read(full_path: str, folder: str) -> tuple[Any, dict[str, str]]:
    """A config file's plain tree and its header, within the budgets (``read_config_file``)."""
    data, text = read_config_file(full_path, folder)
    return data, ConfigSource._get_header_dict(text[:512])


def check_recipe_file(group: str, package: str | None, data: Any, where: str) -> None:
    """A ``model``/``init`` file holds a recipe or a scheme only (see the module).

    Raises:
        ConfigError: every problem found, each naming the file and the key.
    """
    problems: list[tuple[str, str]] = []
    a_file = f"{'an' if group[0] in 'aeiou' else 'a'} {group} file"
    if package not in (None, "_group_", group, "_global_"):
        message = f"'# @package {package}': {a_file} lands in its group ({group}) or in _global_, nowhere else"
        problems.append((where, message))
    if data is not None and not isinstance(data, Mapping):
        problems.append((where, f"{a_file} holds a mapping, not {type(data).__name__}"))
    elif data:
        for key in data:
            if key in _FORBIDDEN:
                hint = "Hydra settings belong on the command line or in your own primary config"
                problems.append((f"{where}: {key}", f"{a_file} holds a recipe only, no {key!r} key ({hint})"))
            elif package == "_global_" and key in RUNNER_KEYS:
                why = f"{a_file} cannot set {key!r}: it is the command line's setting (probe.batch=N, probe=false)"
                problems.append((f"{where}: {key}", why))
            elif package == "_global_" and key not in FILE_KEYS:
                valid = ", ".join(FILE_KEYS)
                problems.append((f"{where}: {key}", f"not a recipe key or an app setting; valid: {valid}"))
    enabled = enabled_resolvers(None)
    for key, text in _strings(data, ""):
        off = [name for name in resolver_calls(text) if name not in enabled]
        if off:
            message = f"resolver {off[0]!r} is off: enable it with COMPOSER_RESOLVERS={off[0]}"
            problems.append((f"{where}: {key}", message))
    if problems:
        raise ConfigError(problems)


def _strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Every string holding ``${`` in a plain tree, with its key path."""
    if isinstance(value, str):
        if "${" in value:
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")
