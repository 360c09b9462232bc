"""One ``Registry`` type, and the two registries built from it: modules and initializers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

from torch import nn

from composer.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects. A name is taken once: registering it again is an error, never an overwrite."""

    def __init__(self, kind: str, reserved: Iterable[str] = ()) -> None:
        self.kind = kind
        self.reserved = frozenset(reserved)
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; the same object again is a no-op."""
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
        """Decorator: ``@register`` (under the object's ``__name__``) or ``@register("Name")``."""
        if name is not None and not isinstance(name, str):
            return self.add(name.__name__, name)
        return lambda obj: self.add(name or obj.__name__, obj)

    def get(self, name: str, path: str, extra: Iterable[str] = ()) -> T:
        """The object registered as ``name``; a ``ConfigError`` at ``path`` with the closest name if none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            hint = did_you_mean(str(name), [*self._entries, *extra])
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}", path) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


# "Repeat" is a form of the builder (build.FORMS), not a class; "Sequential" is both.
MODULES: Registry[type[nn.Module]] = Registry("type", reserved=("Repeat",))
for _name, _obj in vars(nn).items():
    if isinstance(_obj, type) and issubclass(_obj, nn.Module):
        MODULES.add(_name, _obj)

register_module = MODULES.register

# The tutorial's blocks take their names before any user code can: whoever has the registry
# has them. (blocks imports register_module, defined above.)
from composer import blocks as _blocks  # noqa: E402, F401
