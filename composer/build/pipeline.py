"""``build_from_config``: recipe -> modules -> concrete shapes -> initialized model.

Known layers are constructed on ``meta`` and their tensors then allocated, not written
(``placement``); users' blocks are built for real. The init rules are then checked against the real shapes, and
each tensor is filled once, from its own random stream: by the scheme that wins for it, or by its
module's default (see ``composer.init.rules``). On ``meta`` nothing is allocated or filled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from composer import limits as budget
from composer.build.builder import DEFAULT_TARGETS, BuildNotes, construct
from composer.build.materialize import check_on_meta, forward_zeros, has_lazy, require_shapes
from composer.build.record import BuildRecord, finish
from composer.errors import PASSED_THROUGH, ConfigError, unexpected
from composer.init.initializers import SEED_LIMIT, seed_forked
from composer.init.rules import InitConfig, Plan, check_plan, initialize, parse_init, plan_init
from composer.recipe.parallel import parse_parallel
from composer.recipe.read import Recipe, example_inputs, read_recipe_and_stored, top_level_problems

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch.distributed.device_mesh import DeviceMesh


def build_from_config(
    cfg: str | os.PathLike | Mapping | DictConfig,
    allow_targets: Sequence[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    mesh: DeviceMesh | None = None,
    limits: budget.LimitsArg = None,
    resolvers: Collection[str] | str | None = None,
    vars: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the model a recipe describes.

    Args:
        cfg: a packaged recipe's name (``"resnet18"``, ``"gpt2_small"``: ``composer/conf/model``,
            as ``timm.create_model`` takes a name), a path to a YAML file, a ``dict``, an OmegaConf
            ``DictConfig`` (such as Hydra composes), or a bare node (``{type: Linear, ...}``), read
            as ``{model: node}``.
        allow_targets: import prefixes that ``_target_`` nodes may use beyond the default
            ``torch.nn.`` and ``composer.modules.blocks.``; nothing outside them is imported.
        device: where the parameters are made. ``"meta"`` checks the recipe, its shapes and its
            init rules without allocating any weight.
        dtype: the dtype of every floating parameter and buffer (a name such as ``"bfloat16"`` or
            a ``torch.dtype``), over the recipe's top-level ``dtype``; built in it directly.
        mesh: a ``DeviceMesh``; called on every rank of an initialized process group, returns the
            model sharded with FSDP2 over it, each unit of the recipe's ``shard:`` policy a
            ``fully_shard`` unit (``composer.build.shard``). Each rank allocates only its shards; the
            full tensors equal the single-process build's, bit for bit with ``init.seed``.
        limits: budgets beyond the defaults (``composer.limits``: recipe size, expanded nodes,
            nesting, modules, example input elements, forward seconds), e.g.
            ``{"modules": 500_000}``; the defaults come from ``COMPOSER_MAX_*`` where set.
        resolvers: interpolation resolvers the recipe may call (``["oc.env"]``); all are off by
            default (``COMPOSER_RESOLVERS`` where set), as they read outside the recipe. What
            they read is used for the build, and never stored: the model's recipe (in its
            checkpoint, in ``recipe.yaml``) keeps their ``${...}`` unresolved.
        vars: values over the recipe's ``vars`` (``{"n_layer": 2}``), as a sweep's ``vars.n_layer=2``;
            each must be one of the recipe's vars. The model's recipe holds them.

    Returns:
        Plain ``torch.nn`` modules (no wrapper in the forward path), with concrete shapes where
        the recipe gives ``input_shape``, initialized as its ``init`` section says; with ``mesh``,
        the same modules made ``FSDPModule``s, parameters as ``DTensor``s.

    Raises:
        ConfigError: every problem of the recipe at once, each with its key path; a budget
            exceeded, naming the limit and how to raise it; an unknown recipe name or var, with
            the closest one. Any other exception raised on the way (a constructor's, a registered
            block's, torch's, a bug of ours) is a ConfigError too, at the key path reached (the
            deepest node being built, or the section being applied), the exception as its
            ``__cause__``; ``MemoryError``, ``KeyboardInterrupt`` and ``SystemExit`` pass through.
    """
    reached = [""]  # the section being applied, for an error nobody expected (the builder names its node)
    try:
        with budget.using(limits):
            return _build(cfg, allow_targets, torch.device(device), dtype, mesh, resolvers, vars, reached)
    except PASSED_THROUGH:
        raise
    except Exception as e:  # the last resort: one ConfigError, with the original as its cause
        raise ConfigError(unexpected(e), reached[0]) from e


def _build(
    cfg: str | os.PathLike | Mapping | DictConfig,
    allow_targets: Sequence[str] | None,
    device: torch.device,
    dtype: str | torch.dtype | None,
    mesh: DeviceMesh | None,
    resolvers: Collection[str] | str | None,
    overrides: Mapping[str, Any] | None,
    reached: list[str],
) -> nn.Module:
    recipe, stored = read_recipe_and_stored(cfg, resolvers=resolvers, vars=overrides)
    if dtype is not None:
        recipe["dtype"] = str(dtype).removeprefix("torch.")
    allow = (*DEFAULT_TARGETS, *((allow_targets,) if isinstance(allow_targets, str) else allow_targets or ()))
    early = top_level_problems(recipe)
    if "model" not in recipe:
        raise ConfigError(early)
    try:
        init = parse_init(recipe.get("init"))
    except ConfigError as e:
        init, early = InitConfig(), [*early, *e.problems]
    if mesh is not None:  # built on meta, then sharded and filled by composer.build.shard
        if device.type not in ("cpu", mesh.device_type):
            raise ConfigError(
                f"a sharded build puts its shards on the mesh's device ({mesh.device_type}), not {device}", "device"
            )
        device = torch.device("meta")
    with seeded(init.seed):
        reached[0] = "model"
        try:
            model, notes = construct(recipe, allow, device, "init")
        except ConfigError as e:
            raise ConfigError([*early, *e.problems]) from e.__cause__
        if early:
            raise ConfigError(early)
        plan = _shape_and_initialize(model, notes, recipe, init, device, reached)
    report = plan.report(model)
    layout = None
    if mesh is not None:
        reached[0] = "shard"
        from composer.build.shard import shard_and_initialize  # noqa: PLC0415  (torch.distributed: only to shard)

        parallel = parse_parallel(recipe.get("parallel"))
        model, layout = shard_and_initialize(
            model, plan, init.seed, recipe.get("shard"), mesh, notes.frozen, notes.ties, parallel
        )
    record = BuildRecord(recipe, allow, report, stored if stored is not recipe else None, layout)
    finish(model, notes.frozen, record)
    return model


def _shape_and_initialize(
    model: nn.Module, notes: BuildNotes, recipe: Recipe, init: InitConfig, device: torch.device, reached: list[str]
) -> Plan:
    """Lazy shapes, the plan of rules and inline specs, then filling every tensor (on ``meta``:
    only the check that each scheme fits its shape).

    Lazy layers learn their shapes from a forward pass, which must not read empty memory: the
    tensors that exist are filled first (each again later, from its same stream, if a rule wins).
    Without ``input_shape`` the lazy layers stay lazy, as in PyTorch: they materialize (with
    their own reset) on the first forward. With it and no lazy layer, the shapes are checked by a
    forward on ``meta`` (``check_on_meta``): a ``Linear`` of the wrong ``in_features`` is the
    build's ``ConfigError``, as it is the command line's.
    """
    base = init.seed if init.seed is not None else int(torch.randint(SEED_LIMIT - 1, ()))
    real = device.type != "meta"
    lazy = notes.may_be_lazy and has_lazy(model)
    if lazy and real:
        initialize(model, Plan(), base, notes.ties)
    example = example_inputs(recipe)
    if example is not None:
        reached[0] = example[0]
    if example is not None and (lazy or not real):  # on meta: the shape check a real run makes
        # lazy layers materialize with their own resets, which draw from the global generators:
        # the values come from the streams below, and the caller's RNG state stays as it was
        with torch.random.fork_rng(devices=_cuda_devices(device)) if lazy else contextlib.nullcontext():
            forward_zeros(model, example[1], device, key=example[0], shapes_only=not real)
        lazy = has_lazy(model)
    elif example is not None:  # a real build: its shapes checked on meta (no weight read, nothing allocated)
        check_on_meta(model, example[1], key=example[0], memory=False)
    if lazy and (init.rules or notes.inline_init):
        require_shapes(model, "initialization")
    reached[0] = "init"
    plan = plan_init(model, init.rules, notes.inline_init, notes.ties)
    if real:
        initialize(model, plan, base, notes.ties)
    else:
        check_plan(plan)
    return plan


def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators a build on ``device`` draws from (none on CPU, and
    none initialized for a CPU build)."""
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from ``seed`` inside, and leave the caller's global RNG state as it was."""
    if seed is None:
        yield
        return
    if not torch.cuda.is_available():  # the CPU generator alone (``seed_forked``)
        with torch.random.fork_rng(devices=[]):
            seed_forked(seed, [])
            yield
        return
    # devices=None also saves and restores every CUDA generator, which manual_seed reseeds
    with torch.random.fork_rng(devices=None):
        torch.manual_seed(seed)
        yield
