"""composer: config-driven PyTorch model composition.

The public API, imported on first use (PEP 562), so that ``python -m composer`` reads its
configuration and reports a mistyped override before paying for ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_from_config": "composer.build.pipeline",
    "init_report": "composer.train.groups",
    "save_checkpoint": "composer.checkpoint.api",
    "load_checkpoint": "composer.checkpoint.api",
    "load_weights": "composer.checkpoint.weights",
    "save_tensors": "composer.checkpoint.file",
    "load_tensors": "composer.checkpoint.file",
    "param_groups": "composer.train.groups",
    "summary": "composer.describe.summarize",
    "to_recipe": "composer.describe.export",
    "registry_scope": "composer.modules.registry",
    "register_module": "composer.modules.registry",
    "register_init": "composer.init.initializers",
    "register_op": "composer.modules.ops",
    "ConfigError": "composer.errors",
    "CheckpointError": "composer.errors",
}
_MODULES = {"limits"}  # composer.limits: the budgets (Limits, using), see its docstring
__all__ = sorted([*_EXPORTS, *_MODULES])

if TYPE_CHECKING:
    from composer import limits
    from composer.build.pipeline import build_from_config
    from composer.checkpoint.api import load_checkpoint, save_checkpoint
    from composer.checkpoint.file import load_tensors, save_tensors
    from composer.checkpoint.weights import load_weights
    from composer.describe.export import to_recipe
    from composer.describe.summarize import summary
    from composer.errors import CheckpointError, ConfigError
    from composer.init.initializers import register_init
    from composer.modules.ops import register_op
    from composer.modules.registry import register_module, registry_scope
    from composer.train.groups import init_report, param_groups


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"composer.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'composer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
