"""``build_from_config``: recipe -> modules -> concrete shapes -> initialized model.

Without init rules the model is built as handwritten PyTorch would build it. With rules it is
built on the ``meta`` device first, so the rules can be checked against real shapes before a byte
is allocated, and each parameter is then filled once: by the scheme that wins for it, or by its
module's default (see ``initializers.reset_defaults``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from composer.build import DEFAULT_TARGETS, BuildNotes, construct
from composer.errors import ConfigError
from composer.initializers import InitConfig, Plan, cannot_reset, parse_init, plan_init, reset_defaults
from composer.materialize import allocate, forward_zeros, has_lazy, require_shapes
from composer.recipe import Recipe, read_recipe, top_level_problems

RECORD_ATTR = "composer_record"


@dataclass
class BuildRecord:
    """What a built model carries: its recipe (so a checkpoint can rebuild it) and, for each
    parameter path a scheme set, that scheme (every other parameter kept its default)."""

    recipe: Recipe
    allow_targets: tuple[str, ...]
    schemes: dict[str, str]


def build_from_config(
    cfg: str | os.PathLike | Mapping | DictConfig,
    allow_targets: Sequence[str] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the model a recipe describes: a YAML path, a dict, a DictConfig or a bare node."""
    recipe = read_recipe(cfg)
    if isinstance(allow_targets, str):
        allow_targets = (allow_targets,)
    allow = (*DEFAULT_TARGETS, *(allow_targets or ()))
    early = top_level_problems(recipe)
    if "model" not in recipe:
        raise ConfigError(early)
    try:
        init = parse_init(recipe.get("init"))
    except ConfigError as e:
        init, early = InitConfig(), [*early, *e.problems]
    device = torch.device(device)
    with seeded(init.seed):
        try:
            model, notes, deferred = _construct(recipe, allow, device, try_meta=bool(init.rules) and not early)
        except ConfigError as e:
            raise ConfigError([*early, *e.problems]) from None
        if early:
            raise ConfigError(early)
        plan = _shape_and_initialize(model, notes, recipe, init, device, deferred)
    finish(model, notes, BuildRecord(recipe, allow, plan.report(model)))
    return model


def finish(model: nn.Module, notes: BuildNotes, record: BuildRecord) -> None:
    """The last step of a build or a load: freeze what the recipe freezes, attach the record."""
    for module in notes.frozen:
        module.requires_grad_(False)
    setattr(model, RECORD_ATTR, record)


def _construct(recipe: Recipe, allow: Sequence[str], device: torch.device, try_meta: bool) -> tuple[nn.Module, BuildNotes, bool]:
    """On ``meta`` when every tensor-holding module can reset itself afterwards, else for real;
    the flag says which.

    Lazy layers also send the build the real way: inferring their shapes on ``meta`` would need a
    forward pass there, whose first call in a process costs about 2 s of imports.
    """
    if try_meta:
        model, notes = construct(recipe, allow, torch.device("meta"), real_device=device)
        if not cannot_reset(model) and not (notes.may_be_lazy and has_lazy(model)):
            return model, notes, True
    return (*construct(recipe, allow, None if device.type == "cpu" else device), False)


def _shape_and_initialize(
    model: nn.Module, notes: BuildNotes, recipe: Recipe, init: InitConfig, device: torch.device, deferred: bool
) -> Plan:
    lazy = not deferred and notes.may_be_lazy and has_lazy(model)
    if lazy and recipe.get("input_shape") is not None:
        forward_zeros(model, recipe["input_shape"], device)
        lazy = has_lazy(model)
    if not (init.rules or notes.inline_init):
        return Plan()
    if lazy:
        require_shapes(model, "initialization")
    plan = plan_init(model, init, notes.inline_init)
    if deferred and device.type != "meta":
        fresh = allocate(model, device)
        reset_defaults(model, plan.covered, fresh)  # covered: the ids of the allocated parameters
    plan.apply()
    return plan


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from ``seed`` inside, and leave the caller's global RNG state as it was."""
    if seed is None:
        yield
        return
    # devices=None also saves and restores every CUDA generator, which manual_seed reseeds
    with torch.random.fork_rng(devices=None if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield


def init_report(model: nn.Module) -> dict[str, str]:
    """Parameter path -> the scheme that set it (a rule, an inline spec, or ``default``)."""
    record = getattr(model, RECORD_ATTR, None)
    if record is None:
        raise ValueError("this model was not built by build_from_config: it has no init report")
    return {path: record.schemes.get(path, "default") for path, _ in model.named_parameters(remove_duplicate=False)}
