"""What a recipe can name: one ``Registry`` type, the module registry built from it, scopes that
undo registrations, plugins (a user's modules that register names), and ``_target_`` import paths
behind an allowlist.

Every ``torch.nn`` class is registered under its class name, then the tutorial's blocks, before any
user code can take those names. Other registries (initializers, ops) are made where their objects
live, from the same type. A ``_target_`` names a class by import path instead: nothing outside the
allowlist is imported or called.

Plugins reach the registries from the user's side only, never from a recipe or a checkpoint: the
modules named by the app's ``plugins=[...]`` or ``COMPOSER_PLUGINS`` (``import_plugins``), and the
installed packages' entry points of the group ``composer.plugins``, loaded on the first name a
registry does not hold (``import composer`` scans nothing). Each registry remembers which plugin
added a name (``Registry.origin``), for ``list``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from torch import nn

from composer.errors import ConfigError, first_line, unknown
from composer.modules import blocks as blocks

T = TypeVar("T")

_REGISTRIES: list[Registry] = []


class Registry(Generic[T]):
    """Names to objects. A name is taken once: registering it again is an error, never an overwrite."""

    def __init__(self, kind: str, reserved: Iterable[str] = ()) -> None:
        self.kind = kind
        self.reserved = frozenset(reserved)
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name -> the plugin module that registered it
        _REGISTRIES.append(self)

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; the same object again is a no-op.

        Raises:
            ValueError: the name is reserved by the recipe language or taken by another object.
        """
        if name in self.reserved:
            raise ValueError(f"{self.kind} name {name!r} is reserved by the recipe language")
        taken = self._entries.get(name)
        if taken is not None and taken is not obj:
            raise ValueError(
                f"{self.kind} name {name!r} is already registered "
                f"(by {getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', taken)})"
            )
        self._entries[name] = obj
        return obj

    @overload
    def register(self, name: T) -> T: ...
    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, name=None):
        """Decorator: ``@register`` (under the object's ``__name__``) or ``@register("Name")``.

        Returns:
            The object itself, registered (``register_module``, ``register_init`` and
            ``register_op`` are this method of their registries).

        Raises:
            ValueError: the name is reserved or taken by another object (names are taken once;
                ``registry_scope()`` gives them back on exit).
        """
        if name is not None and not isinstance(name, str):
            return self.add(name.__name__, name)
        return lambda obj: self.add(name or obj.__name__, obj)

    def lookup(self, name: str, key_path: str, also_valid: Iterable[str] = (), hint: bool = True) -> T:
        """The object registered as ``name``; ``hint`` False: an error without the closest name.

        Raises:
            ConfigError: at ``key_path``, with the closest registered name (or one of ``also_valid``).
        """
        if name in self:
            return self._entries[name]
        valid = [*self._entries, *also_valid] if hint else ()
        raise ConfigError(unknown(self.kind, name, valid, listed=False, hint=hint), key_path)

    def origin(self, name: str) -> str | None:
        """The plugin module that registered ``name`` (None: composer, torch, or the user's own code)."""
        return self._origins.get(name)

    @contextlib.contextmanager
    def scope(self, entries: Mapping[str, T] | None = None) -> Iterator[Registry[T]]:
        """Names registered inside (and ``entries``) are removed on exit, as Keras'
        ``CustomObjectScope`` does: a test or a notebook cell can register and run again."""
        before, origins = dict(self._entries), dict(self._origins)
        try:
            for name, obj in (entries or {}).items():
                self.add(name, obj)
            yield self
        finally:
            self._entries, self._origins = before, origins

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered; a name not found loads the installed plugins first (once)."""
        try:
            if name in self._entries:
                return True
        except TypeError:  # an unhashable "name" from a recipe
            return False
        return isinstance(name, str) and load_entry_points() and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> ItemsView[str, T]:
        """``(name, object)`` pairs, in registration order."""
        return self._entries.items()


@contextlib.contextmanager
def registry_scope() -> Iterator[None]:
    """Every registry (types, initializers, ops) forgets on exit what was registered inside."""
    with contextlib.ExitStack() as stack:
        for registry in list(_REGISTRIES):
            stack.enter_context(registry.scope())
        yield


# "Repeat" is a form of the builder, not a class; "Sequential" is both.
MODULES: Registry[type[nn.Module]] = Registry("type", reserved=("Repeat",))
for _name, _obj in vars(nn).items():
    if isinstance(_obj, type) and issubclass(_obj, nn.Module):
        MODULES.add(_name, _obj)
for _block in blocks.TUTORIAL:
    MODULES.add(_block.__name__, _block)

register_module = MODULES.register


# --- plugins: a user's modules that register names --------------------------------------------

ENTRY_POINT_GROUP = "composer.plugins"
PLUGINS_ENV = "COMPOSER_PLUGINS"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_entry_points_loaded = False


def env_plugins() -> list[str]:
    """The module names of ``COMPOSER_PLUGINS=a.b,c.d`` (none when unset)."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def import_plugins(names: Sequence[str], key: str = "plugins") -> list[str]:
    """Import each named module (``my_pkg.blocks``), which registers its types, ops and initializers,
    recording which names each one adds. A module already imported is not imported again.

    Returns:
        The names, in order.

    Raises:
        ConfigError: one problem per module that is no module name or does not import, at
            ``key[i]``: ``plugins[0]: cannot import 'my_pkg.blokcs': No module named 'my_pkg'``.
    """
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            problems.append((f"{key}[{i}]", f"{name!r} is not a module name (such as my_pkg.blocks)"))
            continue
        problem = _import_recording(name, name)
        if problem:
            problems.append((f"{key}[{i}]", problem))
    if problems:
        raise ConfigError(problems)
    return list(names)


def load_entry_points() -> bool:
    """Import every installed plugin (entry points of the group ``composer.plugins``, each naming
    a module), once per process; the registries call this on the first name they do not hold.

    Returns:
        Whether this call loaded them (False: they were loaded or are loading already).

    Raises:
        ConfigError: a plugin that does not import, naming its entry point and distribution.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return False
    _entry_points_loaded = True
    from importlib.metadata import entry_points  # noqa: PLC0415  (only on a miss: start-up stays fast)

    problems = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        module = point.value.partition(":")[0].strip()
        problem = _import_recording(module, module, point.load)
        if problem:
            dist = f" of {point.dist.name}" if point.dist is not None else ""
            problems.append((f"entry point {point.name!r}{dist} ({ENTRY_POINT_GROUP})", problem))
    if problems:
        raise ConfigError(problems)
    return True


def _import_recording(module: str, label: str, load: Callable[[], Any] | None = None) -> str | None:
    """Import ``module`` (or call ``load``), recording as ``label``'s what it adds to the registries
    that exist already; the problem in one line, or None."""
    before = [(registry, set(registry._entries)) for registry in _REGISTRIES]
    try:
        load() if load is not None else importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (a plugin's own error, whatever it is, is one line naming it)
        what = first_line(str(e)) if isinstance(e, ImportError) else f"{type(e).__name__}: {first_line(str(e))}"
        return f"cannot import {module!r}: {what}"
    finally:
        for registry, names in before:
            for name in registry._entries.keys() - names:
                registry._origins[name] = label
    return None


# --- _target_: import paths behind an allowlist ---------------------------------------------------


def resolve_target(target: Any, allow: Sequence[str], path: str) -> type[nn.Module]:
    """An import path to an ``nn.Module`` class, importing nothing outside the allowlist.

    Every module imported or passed through must be named under an allowed prefix, and so must
    the module defining the class: ``torch.nn.parallel.distributed.os.system`` starts well but
    reaches ``os`` through an attribute, and is refused.
    """
    prefixes = tuple(p if p.endswith(".") else p + "." for p in allow)
    allowed = ", ".join(prefixes)
    if not isinstance(target, str) or not target.startswith(prefixes):
        raise ConfigError(
            f"{target!r} is not under an allowed prefix ({allowed}); "
            "widen it with build_from_config(cfg, allow_targets=[...])",
            path,
        )

    def inside(module_name: str) -> bool:
        return (module_name + ".").startswith(prefixes)

    parts = target.split(".")
    obj: Any = None
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        if not inside(name):
            break
        try:
            obj = importlib.import_module(name)
            break
        except ImportError:
            continue
    if obj is None:
        raise ConfigError(f"cannot import any module of {target!r} under the allowlist ({allowed})", path)
    for attr in parts[cut:]:
        obj = getattr(obj, attr, None)
        if obj is None:
            raise ConfigError(f"{target!r} does not resolve: no attribute {attr!r}", path)
        if inspect.ismodule(obj) and not inside(obj.__name__):
            raise ConfigError(f"{target!r} reaches module {obj.__name__!r}, outside the allowlist ({allowed})", path)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{target!r} is not an nn.Module class", path)
    if not inside(obj.__module__):
        raise ConfigError(f"{target!r} is defined in {obj.__module__!r}, outside the allowlist ({allowed})", path)
    return obj
