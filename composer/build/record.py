"""What a built model carries beside its modules: the recipe that rebuilds it and its init report.

Kept apart from the pipeline so that checkpoint I/O, the summary and the app can read it without
importing the builder or initialization.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

_ATTR = "composer_record"


@dataclass
class BuildRecord:
    """The resolved recipe, the import allowlist it was built under, and for each parameter path
    a scheme set, that scheme (every other parameter kept its default)."""

    recipe: dict[str, Any]
    allow_targets: tuple[str, ...]
    schemes: dict[str, str]
    # The recipe to write into files where it differs from ``recipe``: what enabled interpolation
    # resolvers read (``${oc.env:...}``) stays unresolved there (``interpolation.resolve``).
    stored: dict[str, Any] | None = None
    # How a sharded model is spread over its mesh (``shard.Layout.describe``); None in one process.
    layout: dict[str, Any] | None = None

    @property
    def recipe_to_store(self) -> dict[str, Any]:
        """The recipe a checkpoint or ``recipe.yaml`` holds: never what a resolver read."""
        return self.recipe if self.stored is None else self.stored


def record_of(model: nn.Module) -> BuildRecord | None:
    """The record of a model built (or loaded) by composer; None for any other module."""
    return getattr(model, _ATTR, None)


def finish(model: nn.Module, frozen: Iterable[nn.Module], record: BuildRecord) -> None:
    """The last step of a build or a load: freeze what the recipe freezes, attach the record."""
    for module in frozen:
        for parameter in module.parameters():
            # an attribute, not requires_grad_(): a lazy layer's parameter may still be
            # uninitialized (no input_shape), and keeps the flag when it materializes
            parameter.requires_grad = False
    setattr(model, _ATTR, record)


class InitReport(dict):
    """Parameter path -> scheme: a ``dict``, which prints as the summary's ``initialization:`` lines.

    ``groups`` (path -> optimizer group, set by the summary, which reads the recipe's ``optim``
    section) adds a column: the group each parameter is in.
    """

    groups: dict[str, str] | None = None

    def __str__(self) -> str:
        width = max((len(path) for path in self), default=0)
        if not self.groups:
            rows = [f"  {path + ':':<{width + 1}} {scheme}" for path, scheme in self.items()]
            return "\n".join(["initialization:", *rows])
        schemes = max((len(scheme) for scheme in self.values()), default=0)
        rows = [
            f"  {path + ':':<{width + 1}} {scheme:<{schemes}}  group {self.groups.get(path, '(tied)')}".rstrip()
            for path, scheme in self.items()
        ]
        return "\n".join(["initialization (and optimizer group):", *rows])


def init_report(model: nn.Module) -> InitReport:
    """Parameter path -> the scheme that set it (a rule, an inline spec, or ``default``): a ``dict``
    that prints as a table (``print(init_report(model))``), as ``summary`` prints its own.

    Raises:
        ValueError: the model was not built by ``build_from_config`` or ``load_checkpoint``.
    """
    record = record_of(model)
    if record is None:
        raise ValueError("this model was not built by build_from_config: it has no init report")
    params = model.named_parameters(remove_duplicate=False)
    return InitReport((path, record.schemes.get(path, "default")) for path, _ in params)
