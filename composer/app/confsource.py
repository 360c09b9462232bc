"""What the command line lets a config file do: a Hydra config source that reads files within the
budgets, and keeps recipe files (``model/``, ``init/``) to recipes.

Hydra composes before the job runs, and a file it composes can set Hydra's own keys: a
``--config-dir`` recipe with ``hydra: {callbacks: {x: {_target_: ...}}}`` (or ``# @package
hydra.callbacks``, or a ``defaults`` entry that overrides ``/hydra/...``) has Hydra import and
call what it names before our code runs. So every ``file://`` config Hydra loads is read the
guarded way, once ``install()`` gave Hydra's file config source these methods:

- it must be a regular file within ``limits.recipe_bytes`` (a FIFO blocks forever), UTF-8 YAML
  read by composer's loader (duplicate keys refused), within ``limits.nodes`` and
  ``limits.depth`` once its aliases are expanded (a nine-level alias bomb is 10^9 nodes);
- a file of the ``model`` or ``init`` group holds a recipe or a scheme only: it lands in its
  group's package or in ``_global_`` (no ``# @package hydra...``); in ``_global_`` its top-level
  keys are recipe keys or app settings; no ``hydra`` or ``defaults`` key anywhere at its top;
  no interpolation resolver that is not enabled (``COMPOSER_RESOLVERS``);
- the user's ``--config-dir``, which ``UserConfigFirst`` puts before the packaged configs so that
  its recipes shadow ours, is searched there for ``model/`` and ``init/`` only: its other files
  (a ``config.yaml``, launcher configs) keep Hydra's order, after the packaged ones.

Each problem is a ``ConfigError`` naming the file, raised while Hydra composes: before any
callback, launcher or sweeper is instantiated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from hydra._internal.core_plugins import file_config_source
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

from composer import limits as budget
from composer.errors import ConfigError
from composer.files import FileProblem, TooLarge, read_regular
from composer.recipe.interpolation import enabled_resolvers, resolver_calls
from composer.recipe.plain import plain_tree
from composer.recipe.read import parse_yaml

RECIPE_GROUPS = ("model", "init")
USER_PROVIDER = "composer-config-dir"  # the provider name of the --config-dir entry put first
_FORBIDDEN = ("hydra", "defaults")

_allowed_global_keys: tuple[str, ...] = ()


def install(global_keys: Iterable[str]) -> None:
    """Read every ``file://`` config the guarded way from now on (see the module), allowing
    ``global_keys`` (recipe keys and app settings) at the top of a ``_global_`` recipe file.

    Hydra's ``FileConfigSource`` itself takes the guarded methods, rather than a subclass taking
    its place in Hydra's registry: a launcher's worker restores that registry and registers
    Hydra's class again, which a different class under the ``file`` scheme makes fail.
    """
    global _allowed_global_keys
    _allowed_global_keys = tuple(global_keys)
    cls = file_config_source.FileConfigSource
    if cls.__dict__.get("_composer_guarded"):
        return
    for name, guarded in _GUARDED.items():
        _ORIGINAL[name] = cls.__dict__[name]
        setattr(cls, name, guarded)
    cls._composer_guarded = True


def _load_config(self: ConfigSource, config_path: str) -> ConfigResult:
    """A config file, read the way composer reads a recipe; a recipe file checked as one."""
    name = self._normalize_file_name(config_path)
    full_path = os.path.realpath(os.path.join(self.path, name))
    if not os.path.exists(full_path):
        raise ConfigLoadError(f"Config not found : {full_path}")
    limits = budget.current()
    try:
        raw = read_regular(full_path, limits.recipe_bytes)
    except TooLarge as e:
        raise ConfigError(budget.exceeded("recipe_bytes", f"the file ({e.size:,} bytes)"), full_path) from None
    except FileProblem as e:
        raise ConfigError(str(e), full_path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x})", full_path) from None
    header = ConfigSource._get_header_dict(text[:512])
    try:
        data, _ = plain_tree(parse_yaml(text, full_path), limits)
    except ConfigError as e:
        raise ConfigError([(_in_file(full_path, p), m) for p, m in e.problems]) from None
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


def _serves(self: ConfigSource, config_path: str) -> bool:
    return self.provider != USER_PROVIDER or config_path.strip("/").split("/", 1)[0] in RECIPE_GROUPS


def _is_group(self: ConfigSource, config_path: str) -> bool:
    return (config_path == "" or _serves(self, config_path)) and _ORIGINAL["is_group"](self, config_path)


def _is_config(self: ConfigSource, config_path: str) -> bool:
    return _serves(self, config_path) and _ORIGINAL["is_config"](self, config_path)


def _list(self: ConfigSource, config_path: str, results_filter: ObjectType | None) -> list[str]:
    found = _ORIGINAL["list"](self, config_path, results_filter)
    if self.provider == USER_PROVIDER and config_path.strip("/") == "":
        return [item for item in found if item in RECIPE_GROUPS]
    return found if _serves(self, config_path) else []


_GUARDED = {"load_config": _load_config, "is_group": _is_group, "is_config": _is_config, "list": _list}
_ORIGINAL: dict[str, Any] = {}


def _in_file(file: str, key: str) -> str:
    """``FILE: key`` (the file alone for its top level), for a problem found in a config file."""
    return file if key in ("", "(recipe)") or key.startswith(file) else f"{file}: {key}"


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
            elif package == "_global_" and key not in _allowed_global_keys:
                valid = ", ".join(_allowed_global_keys)
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
