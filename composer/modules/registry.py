"""What a recipe can name: one ``Registry`` type, the module registry built from it, scopes that
undo registrations, and ``_target_`` import paths behind an allowlist.

Every ``torch.nn`` class is registered under its class name, then the tutorial's blocks, before any
user code can take those names. Other registries (initializers, ops) are made where their objects
live, from the same type. A ``_target_`` names a class by import path instead: nothing outside the
allowlist is imported or called.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from torch import nn

from composer.errors import ConfigError, unknown
from composer.modules import blocks as blocks

T = TypeVar("T")

_REGISTRIES: list[Registry] = []


class Registry(Generic[T]):
    """Names to objects. A name is taken once: registering it again is an error, never an overwrite."""

    def __init__(self, kind: str, reserved: Iterable[str] = ()) -> None:
        self.kind = kind
        self.reserved = frozenset(reserved)
        self._entries: dict[str, T] = {}
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
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = [*self._entries, *also_valid] if hint else ()
            raise ConfigError(unknown(self.kind, name, valid, listed=False, hint=hint), key_path) from None

    @contextlib.contextmanager
    def scope(self, entries: Mapping[str, T] | None = None) -> Iterator[Registry[T]]:
        """Names registered inside (and ``entries``) are removed on exit, as Keras'
        ``CustomObjectScope`` does: a test or a notebook cell can register and run again."""
        before = dict(self._entries)
        try:
            for name, obj in (entries or {}).items():
                self.add(name, obj)
            yield self
        finally:
            self._entries = before

    def __contains__(self, name: object) -> bool:
        return name in self._entries

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
