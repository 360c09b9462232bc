"""Parameter groups for a ``torch.optim`` optimizer, from the recipe's ``optim.groups``.

A group selects parameters as an init rule does (``match``: modules by path, with everything
below them; ``layer``: of those classes) and by ``kind``, what a tensor is rather than its name:

- ``norm``: a parameter of a normalization layer (its gain and its bias);
- ``embedding``: a parameter of an ``Embedding`` (a tied head's weight is its embedding's);
- ``bias``: any other parameter whose name holds ``bias`` (``bias``, ``in_proj_bias``, ``bias_ih_l0``);
- ``weight``: everything else.

The rest of a group's keys are settings: ``weight_decay``, ``lr_scale`` (times ``lr``), any option
of the optimizer (``betas``, ``momentum``, ...) and ``frozen`` (``requires_grad`` off, in no group).
Groups apply in order, key by key, so a later group wins where two set the same key. Parameters
that end up with the same settings share one optimizer group, in the order of
``named_parameters`` (a shared or tied parameter appears once, at its first path): the same model
and recipe give the same groups, which a checkpoint's optimizer state relies on.

Sharded models (FSDP2) work as they are: their parameters are ``DTensor``s under the same module
paths, and the selection reads only paths, classes and names.

Layer: above ``build/`` (it reads the record a build attaches: the recipe's ``optim`` section),
below ``checkpoint/``, ``describe/`` and ``app/`` (the summary shows each parameter's group).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from composer.build.record import InitReport, record_of
from composer.build.record import init_report as schemes_report
from composer.errors import ConfigError
from composer.init.rules import _layer_classes, _select  # the selection of init rules, shared
from composer.recipe.optim import KINDS, optim_problems

_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, their lazy forms
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_PRECEDENCE = ("norm", "embedding", "bias", "weight")  # a tensor with several holders: the first that fits
_NOT_OPTIONS = ("frozen",)  # settings that never reach the optimizer


@dataclass
class Assignment:
    """Which settings each parameter gets, and what each group of the recipe selected.

    Attributes:
        paths: each parameter's first path, in ``named_parameters`` order (a tied one once).
        params: path -> the parameter.
        kinds: path -> its kind.
        settings: path -> the settings the groups gave it (later groups win, key by key).
        reached: for each group of the recipe, the paths it selected (empty: it selects nothing).
    """

    paths: list[str]
    params: dict[str, nn.Parameter]
    kinds: dict[str, str]
    settings: dict[str, dict[str, Any]]
    reached: list[list[str]]

    def labels(self) -> dict[str, str]:
        """Path -> the parameter's group as the summary shows it: ``0 (weight_decay=0.1)``,
        ``frozen``, or ``not trainable`` (frozen by the recipe's nodes)."""
        out: dict[str, str] = {}
        index: dict[tuple, int] = {}
        for path in self.paths:
            settings = self.settings[path]
            if settings.get("frozen"):
                out[path] = "frozen"
            elif not self.params[path].requires_grad:
                out[path] = "not trainable"
            else:
                key = _key(settings)
                number = index.setdefault(key, len(index))
                described = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if k != "frozen")
                out[path] = f"{number} ({described})" if described else str(number)
        return out

    def warnings(self, where: str = "optim.groups") -> list[str]:
        """One line for each group that selects no parameter."""
        return [f"warning: {where}[{i}] selects no parameter" for i, paths in enumerate(self.reached) if not paths]


def assign(model: nn.Module, groups: Sequence[Mapping[str, Any]], where: str = "optim.groups") -> Assignment:
    """Each parameter's settings under ``groups`` (the recipe's ``optim.groups`` or the same list).

    Raises:
        ConfigError: a malformed group (an unknown kind, selector or setting, with the closest name).
    """
    problems = optim_problems({"groups": list(groups)}, where.rpartition(".")[0] or "optim")
    if problems:
        raise ConfigError(problems)
    entries = list(model.named_modules(remove_duplicate=False))
    paths, params, kinds = _parameters(entries)
    first = {id(p): path for path, p in params.items()}
    settings: dict[str, dict[str, Any]] = {path: {} for path in paths}
    reached: list[list[str]] = []
    for i, group in enumerate(groups):
        chosen = _selected(group, entries, first, kinds, f"{where}[{i}]")
        for path in chosen:
            settings[path].update({k: _plain(v) for k, v in group.items() if k not in ("match", "layer", "kind")})
        reached.append(chosen)
    return Assignment(paths, params, kinds, settings, reached)


def init_report(model: nn.Module) -> InitReport:
    """Parameter path -> the scheme that set it (a rule, an inline spec, or ``default``): a ``dict``
    that prints as a table (``print(init_report(model))``), as ``summary`` prints its own; where
    the recipe has ``optim.groups``, the table has a column with each parameter's optimizer group
    (``groups``: path -> group, as ``param_groups`` makes them).

    Raises:
        ValueError: the model was not built by ``build_from_config`` or ``load_checkpoint``.
    """
    report = schemes_report(model)
    groups = recipe_groups(model)
    if groups:
        report.groups = assign(model, groups).labels()
    return report


def recipe_groups(model: nn.Module) -> list[Mapping[str, Any]]:
    """The ``optim.groups`` of the recipe a model was built from; none for any other module."""
    record = record_of(model)
    section = (record.recipe.get("optim") if record is not None else None) or {}
    return list(section.get("groups") or [])


def param_groups(
    model: nn.Module,
    lr: float | None = None,
    groups: Sequence[Mapping[str, Any]] | None = None,
    **defaults: Any,
) -> list[dict[str, Any]]:
    """The parameter groups a ``torch.optim`` optimizer takes, from the recipe's ``optim.groups``.

    ``torch.optim.AdamW(param_groups(model, lr=3e-4), lr=3e-4)``: no weight decay where the recipe
    says so, a smaller step for a head, frozen layers out, a tied parameter once.

    Args:
        model: a model built by ``build_from_config`` or ``load_checkpoint`` (its recipe's
            ``optim.groups`` apply), or any module with ``groups=``.
        lr: the base learning rate; a group's ``lr_scale`` multiplies it (or the group's own ``lr``).
        groups: a list of groups in the recipe's form, instead of the recipe's ``optim.groups``.
        **defaults: settings of every group, under what the groups set (``weight_decay=0.1``).

    Returns:
        ``[{"params": [...], "lr": ..., "weight_decay": ..., ...}, ...]``: one dict for each
        distinct set of settings, in the order of ``named_parameters``; a group with an
        ``lr_scale`` keeps it (for schedulers that rescale). Parameters frozen by a group get
        ``requires_grad=False``; frozen ones (there, or by the recipe's ``frozen:``) are in no
        group. A model with no groups gives one group of all its trainable parameters.

    Raises:
        ConfigError: a malformed group, or an ``lr_scale`` with no learning rate to scale.
    """
    if groups is None:
        groups = recipe_groups(model)
    assignment = assign(model, groups)
    out: dict[tuple, dict[str, Any]] = {}
    for path in assignment.paths:
        settings = assignment.settings[path]
        param = assignment.params[path]
        if settings.get("frozen"):
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        key = _key(settings)
        if key not in out:
            out[key] = _options(settings, lr, defaults, groups)
        out[key]["params"].append(param)
    return list(out.values())


def _options(settings: dict[str, Any], lr: float | None, defaults: dict[str, Any], groups: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"params": [], **defaults}
    if lr is not None:
        options["lr"] = lr
    options.update((k, v) for k, v in settings.items() if k not in _NOT_OPTIONS)
    scale = options.get("lr_scale")
    if scale is not None:
        if "lr" not in options:
            where = next(i for i, g in enumerate(groups) if "lr_scale" in g)
            raise ConfigError("lr_scale needs a learning rate to scale: pass lr= to param_groups",
                              f"optim.groups[{where}].lr_scale")  # fmt: skip
        options["lr"] = options["lr"] * scale
    return options


def _parameters(entries: list[tuple[str, nn.Module]]) -> tuple[list[str], dict[str, nn.Parameter], dict[str, str]]:
    """Each parameter once at its first path (``named_parameters`` order), and its kind."""
    paths: list[str] = []
    params: dict[str, nn.Parameter] = {}
    kind_of: dict[int, str] = {}
    path_of: dict[int, str] = {}
    for path, module in entries:
        prefix = f"{path}." if path else ""
        for name, param in module._parameters.items():
            if param is None:
                continue
            kind = _kind(module, name)
            key = id(param)
            if key not in path_of:
                path_of[key] = prefix + name
                paths.append(prefix + name)
                params[prefix + name] = param
                kind_of[key] = kind
            elif _PRECEDENCE.index(kind) < _PRECEDENCE.index(kind_of[key]):
                kind_of[key] = kind
    return paths, params, {path_of[k]: kind for k, kind in kind_of.items()}


def _kind(module: nn.Module, name: str) -> str:
    if isinstance(module, _NORMS) or type(module).__name__.endswith("Norm"):
        return "norm"
    if isinstance(module, _EMBEDDINGS):
        return "embedding"
    return "bias" if "bias" in name else "weight"


def _selected(
    group: Mapping[str, Any],
    entries: list[tuple[str, nn.Module]],
    first: dict[int, str],
    kinds: dict[str, str],
    where: str,
) -> list[str]:
    """The first paths of the parameters a group selects, in ``named_parameters`` order."""
    match = str(group.get("match", "*"))
    problems: list[tuple[str, str]] = []
    layers = _layer_classes(group.get("layer"), f"{where}.layer", problems)
    if problems:
        raise ConfigError(problems)
    modules = _select(entries, match)
    if layers:
        modules = [m for m in modules if isinstance(m, layers)]
    wanted = group.get("kind")
    wanted = set(KINDS) if wanted is None else {wanted} if isinstance(wanted, str) else set(wanted)
    chosen = {first[id(p)] for m in modules for p in m._parameters.values() if p is not None}
    order = {path: i for i, path in enumerate(first.values())}
    return sorted((p for p in chosen if kinds[p] in wanted), key=order.__getitem__)


def _plain(value: Any) -> Any:
    """A list setting (``betas: [0.9, 0.95]``) as the tuple torch takes, hashable."""
    return tuple(value) if isinstance(value, list) else value


def _key(settings: dict[str, Any]) -> tuple:
    """What makes two parameters share an optimizer group: their options (``frozen`` is not one)."""
    return tuple(sorted((k, v) for k, v in settings.items() if k not in _NOT_OPTIONS))
