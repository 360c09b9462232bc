"""``_target_`` import paths behind an allowlist: nothing outside it is imported or called."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from composer.errors import ConfigError


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
