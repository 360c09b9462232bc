"""The recipe's ``optim`` section, as read: ``optim: {groups: [{<selectors>, <settings>}, ...]}``.

Only its shape is checked here (no torch, no model): each group's keys are selectors (``match``,
``layer``, ``kind``) or settings (``weight_decay``, ``lr_scale``, ``frozen`` or any option of a
``torch.optim`` optimizer). Which parameters a group selects is ``composer.train.groups``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from composer.errors import unknown
from composer.modules.signatures import describe, is_int

SELECTORS = ("match", "layer", "kind")
KINDS = ("bias", "norm", "embedding", "weight")
SETTINGS = ("weight_decay", "lr_scale", "frozen")
# The keyword arguments of torch.optim's optimizers (torch 2.13; tests/test_train.py checks that
# this list still holds them all), so that a typo such as ``weigth_decay`` is caught.
OPTIMIZER_OPTIONS = (
    "lr", "momentum", "dampening", "nesterov", "betas", "eps", "amsgrad", "maximize", "foreach", "capturable",
    "differentiable", "fused", "alpha", "centered", "rho", "lr_decay", "initial_accumulator_value", "lambd",
    "t0", "etas", "step_sizes", "momentum_decay", "decoupled_weight_decay", "beta2_decay", "d", "max_iter",
    "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn", "adjust_lr_fn",
    "ns_coefficients", "ns_steps",
)  # fmt: skip
GROUP_KEYS = (*SELECTORS, *SETTINGS, *OPTIMIZER_OPTIONS)


def optim_problems(raw: Any, path: str = "optim") -> list[tuple[str, str]]:
    """Every problem of an ``optim`` section's shape, each at its key path, with the closest name."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [(path, f"expected {{groups: [...]}}, got {describe(raw)}")]
    problems = [(f"{path}.{k}", unknown("key", k, ("groups",))) for k in raw if k != "groups"]
    groups = raw.get("groups")
    if groups is None:
        return problems
    if not isinstance(groups, list):
        return [*problems, (f"{path}.groups", f"expected a list of groups, got {describe(groups)}")]
    for i, group in enumerate(groups):
        problems += _group_problems(group, f"{path}.groups[{i}]")
    return problems


def _group_problems(group: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(group, Mapping):
        return [(path, f"expected a mapping of selectors (match, layer, kind) and settings, got {describe(group)}")]
    problems = [
        (f"{path}.{key}", unknown("selector or setting", key, GROUP_KEYS, listed=False)
         + f"; selectors: {', '.join(SELECTORS)}; settings: {', '.join(SETTINGS)} or an optimizer option")
        for key in group
        if key not in GROUP_KEYS
    ]  # fmt: skip
    match = group.get("match", "*")
    if not isinstance(match, str) and not is_int(match):
        problems.append((f"{path}.match", f"expected a glob over module paths, got {describe(match)}"))
    kinds = group.get("kind")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else kinds
        if not isinstance(names, list) or not names:
            problems.append((f"{path}.kind", f"expected a kind or a list of them ({', '.join(KINDS)}), got {kinds!r}"))
        else:
            problems += [(f"{path}.kind", unknown("kind", k, KINDS)) for k in names if k not in KINDS]
    if "layer" in group:
        problems += layer_problems(group["layer"], f"{path}.layer")
    if "frozen" in group and not isinstance(group["frozen"], bool):
        problems.append((f"{path}.frozen", f"expected true or false, got {describe(group['frozen'])}"))
    for key in ("weight_decay", "lr_scale", "lr"):
        value = group.get(key)
        if key in group and (type(value) not in (int, float) or value < 0):
            problems.append((f"{path}.{key}", f"expected a non-negative number, got {describe(value)}"))
    return problems


def layer_problems(value: Any, path: str) -> list[tuple[str, str]]:
    """A class name or a list of them, each registered."""
    from composer.modules.registry import MODULES  # noqa: PLC0415  (it imports torch; few recipes need it)

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return [(path, f"expected a class name or a list of them, got {value!r}")]
    return [(path, unknown("layer class", n, MODULES, listed=False)) for n in names if n not in MODULES]
