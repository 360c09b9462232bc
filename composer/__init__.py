"""composer: config-driven PyTorch model composition."""

from composer import blocks as _blocks  # noqa: F401  (registers the tutorial's blocks)
from composer.checkpoint import load_checkpoint, load_tensors, load_weights, save_checkpoint, save_tensors
from composer.compose import build_from_config, init_report
from composer.errors import CheckpointError, ConfigError
from composer.initializers import register_init
from composer.registry import register_module
from composer.summary import summary

__all__ = [
    "CheckpointError",
    "ConfigError",
    "build_from_config",
    "init_report",
    "load_checkpoint",
    "load_tensors",
    "load_weights",
    "register_init",
    "register_module",
    "save_checkpoint",
    "save_tensors",
    "summary",
]
