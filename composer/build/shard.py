"""Past one machine: a built model sharded with FSDP2 (``fully_shard``) over a ``DeviceMesh``.

The single-process pipeline with the tensors left out until the end: the tree is built on
``meta``, lazy shapes are inferred and the init plan is made there (``pipeline``); then every unit
of the recipe's ``shard:`` policy is wrapped with ``fully_shard``, each rank allocates only its
shards, and each tensor is filled by making its full tensor from its own stream, exactly as
``init.rules.initialize`` fills it, and keeping this rank's slice. So with ``init.seed`` the
full tensors equal the single-process build's bit for bit, whatever the world size, and a rank
holds one full tensor at a time besides its shards (a user block that resets as a whole: that
block's tensors, while it resets).

Units: ``shard: {units: [{layer: Name} | {match: glob}, ...]}``. ``layer`` makes every module of
those classes (subclasses too) a unit; ``match`` the modules whose path matches the glob, a module
below one the same entry already selects being part of that unit. Without ``shard:``, every child
of a top-level Sequential, Repeat or Graph is a unit. The root is always one. A parameter shared by
several modules (a tie, a ``ref``) is sharded with the one unit that holds all its users: a default
unit that would split one is left to its enclosing unit; a unit the recipe names is an error.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.parallel import parallelize_module

from composer.build.materialize import allocate, require_shapes
from composer.build.placement import resets_itself
from composer.build.tensor_parallel import tp_plan
from composer.errors import ConfigError, did_you_mean
from composer.init.defaults import reset_method
from composer.init.initializers import SEED_LIMIT
from composer.init.rules import NamedModules, Plan, TensorFills, canonical_paths, first_paths
from composer.modules.graph import Graph
from composer.modules.registry import MODULES
from composer.recipe.parallel import Parallel


def mesh_device(mesh: DeviceMesh) -> torch.device:
    """The device this rank's shards live on: the mesh's device type, the current one of it."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


def shard_and_initialize(
    model: nn.Module,
    plan: Plan,
    seed: int | None,
    policy: Any,
    mesh: DeviceMesh,
    frozen: list[nn.Module],
    ties: Mapping[str, str] | None = None,
    parallel: Parallel | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Shard a model built on ``meta`` (shapes known, ``plan`` made) and fill this rank's shards;
    return it with its layout (``Layout.describe``).

    Every check runs before the first collective, so a bad recipe fails on every rank alike and
    none is left waiting in a collective for another.

    Raises:
        ConfigError: lazy layers without shapes, a policy that selects nothing or splits a shared
            parameter, a ``parallel:`` entry that selects nothing or a mesh that does not fit it, or
            a user block whose tensors only its constructor can make.
    """
    require_shapes(model, "a sharded build")
    layout = Layout.of(model, policy, mesh, parallel or Parallel())
    fills = TensorFills(model, plan, _agreed_seed(seed), ties)
    _check_refillable(model, fills)
    copies = _whole_copies(model, fills)  # full-size stand-ins of whole-reset blocks, on meta for now
    for module in frozen:
        module.requires_grad_(False)
    layout.apply(model)
    device = mesh_device(mesh)
    with swapping_params():
        model.to_empty(device=device)  # this rank's shards; swapping keeps ties (one object per tensor)
    _fill(model, fills, copies, device)
    return model, layout.describe(model, mesh, parallel or Parallel())


def shard(model: nn.Module, policy: Any, mesh: DeviceMesh, parallel: Parallel | None = None) -> dict[str, Any]:
    """Tensor parallel, activation checkpointing, then ``fully_shard`` of every unit of the policy,
    inner units first, the root last (torchtitan's order). Returns the layout (``Layout.describe``)."""
    layout = Layout.of(model, policy, mesh, parallel or Parallel())
    layout.apply(model)
    return layout.describe(model, mesh, parallel or Parallel())


class Layout:
    """How a model is spread over a mesh: its FSDP units and their policies, its tensor-parallel
    plan and its checkpointed modules, all selected (and checked) before anything is applied."""

    def __init__(
        self,
        units: set[int],
        fsdp_mesh: DeviceMesh,
        fsdp_options: dict[str, Any],
        tp: tuple[DeviceMesh, dict[str, Any]] | None,
        checkpointed: list[nn.Module],
    ) -> None:
        self.units, self.fsdp_mesh, self.fsdp_options = units, fsdp_mesh, fsdp_options
        self.tp, self.checkpointed = tp, checkpointed

    @classmethod
    def of(cls, model: nn.Module, policy: Any, mesh: DeviceMesh, parallel: Parallel) -> Layout:
        """Select and check everything; touch nothing.

        Raises:
            ConfigError: every problem at once, each with its key path.
        """
        problems: list[tuple[str, str]] = []
        fsdp_mesh, tp_mesh = _split_mesh(mesh, parallel, problems)
        entries = list(model.named_modules())
        plan = tp_plan(entries, parallel.tp, problems)
        checkpointed = _selected(entries, parallel.checkpoint, "parallel.checkpoint", problems)
        try:
            units = select_units(model, policy)
        except ConfigError as e:
            problems = [*e.problems, *problems]
        if problems:
            raise ConfigError(problems)
        tp = (tp_mesh, plan) if tp_mesh is not None and plan else None
        return cls(units, fsdp_mesh, _fsdp_options(parallel, mesh), tp, checkpointed)

    def describe(self, model: nn.Module, mesh: DeviceMesh, parallel: Parallel) -> dict[str, Any]:
        """The layout as plain data, for the summary and checkpoints: the mesh, the FSDP units with
        their policy, the tensor-parallel styles and the checkpointed modules, by path."""
        paths = {id(m): path for path, m in model.named_modules()}
        return {
            "mesh": {
                "device": mesh.device_type,
                "shape": list(mesh.shape),
                "dims": list(mesh.mesh_dim_names or ()),
            },
            "units": [path for path, m in model.named_modules() if id(m) in self.units],
            "policy": {
                "param_dtype": parallel.param_dtype or "as stored",
                "reduce_dtype": parallel.reduce_dtype or "as stored",
                "reshard_after_forward": parallel.reshard_after_forward,
                "cpu_offload": parallel.cpu_offload,
            },
            "tp": {path: _style_name(style) for path, style in (self.tp[1] if self.tp else {}).items()},
            "checkpoint": [paths[id(m)] for m in self.checkpointed],
        }

    def apply(self, model: nn.Module) -> None:
        if self.tp is not None:
            parallelize_module(model, *self.tp)
        for module in self.checkpointed:
            checkpoint_activations(module)
        for module in _post_order(model):
            if id(module) in self.units:
                fully_shard(module, mesh=self.fsdp_mesh, **self.fsdp_options)


def _style_name(style: Any) -> str:
    chunks = getattr(style, "chunks", None)
    name = type(style).__name__.removesuffix("Parallel").removeprefix("Fused").lower()
    return f"{name} (chunks {chunks})" if chunks else name


def _split_mesh(
    mesh: DeviceMesh, parallel: Parallel, problems: list[tuple[str, str]]
) -> tuple[DeviceMesh, DeviceMesh | None]:
    """The mesh FSDP shards over and the one tensor parallel splits over: a 1-D mesh is all FSDP;
    with ``tp``, a 2-D mesh whose dims are named ``dp`` and ``tp``."""
    names = tuple(mesh.mesh_dim_names or ())
    if not parallel.tp:
        if mesh.ndim != 1:
            problems.append(("parallel.tp", f"a {mesh.ndim}-D mesh {names or ''} needs a tensor-parallel plan (tp:)"))
        return mesh, None
    if mesh.ndim != 2 or set(names) != {"dp", "tp"}:
        shape = "x".join(map(str, mesh.shape))
        problems.append((
            "parallel.tp",
            f"tensor parallel needs a 2-D mesh with dims named ('dp', 'tp'), e.g. "
            f"init_device_mesh('cpu', (1, 2), mesh_dim_names=('dp', 'tp')); got a {shape} mesh named {names or None}",
        ))  # fmt: skip
        return mesh, None
    return mesh["dp"], mesh["tp"]


def _selected(
    entries: list[tuple[str, nn.Module]], selectors: list[tuple[str, Any]], where: str, problems: list
) -> list[nn.Module]:
    """The modules ``{layer: Name}`` or ``{match: glob}`` entries select (the outermost of a match)."""
    found: dict[int, nn.Module] = {}
    for i, (key, value) in enumerate(selectors):
        at = f"{where}[{i}].{key}" if len(selectors) > 1 else f"{where}.{key}"
        try:
            modules = _by_layer(entries, value, at) if key == "layer" else _by_match(entries, str(value))
        except ConfigError as e:
            problems += e.problems
            continue
        modules = [m for m in modules if m is not entries[0][1]]
        if not modules:
            problems.append((at, _nothing_selected(entries, key, value, holding="")))
        found.update((id(m), m) for m in modules)
    return list(found.values())


def _fsdp_options(parallel: Parallel, mesh: DeviceMesh) -> dict[str, Any]:
    """``fully_shard``'s keyword arguments from the section: dtype policy, resharding, offload."""
    dtype = lambda name: getattr(torch, name) if name else None  # noqa: E731
    offload: OffloadPolicy = OffloadPolicy()
    if parallel.cpu_offload:  # pinned memory needs an accelerator ("Cannot access accelerator device")
        offload = CPUOffloadPolicy(pin_memory=mesh.device_type != "cpu")
    return {
        "mp_policy": MixedPrecisionPolicy(
            param_dtype=dtype(parallel.param_dtype), reduce_dtype=dtype(parallel.reduce_dtype)
        ),
        "reshard_after_forward": parallel.reshard_after_forward,
        "offload_policy": offload,
    }


@contextlib.contextmanager
def swapping_params() -> Iterator[None]:
    """``to_empty`` and ``_apply`` swap each tensor's contents in place (``torch.utils.swap_tensors``)
    instead of registering new ``Parameter`` objects, which would untie shared parameters."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


# --- the policy: which modules are units ---------------------------------------------------------


def select_units(model: nn.Module, policy: Any) -> set[int]:
    """The ids of the modules to shard as units (the root among them).

    Raises:
        ConfigError: an entry that selects no module holding parameters, or a unit the recipe names
            that would split a shared parameter.
    """
    entries = list(model.named_modules(remove_duplicate=False))
    units = policy.get("units") if isinstance(policy, Mapping) else None
    chosen: dict[int, str] = {}  # unit id -> the policy entry that chose it ("" for the default)
    problems: list[tuple[str, str]] = []
    if units is None:
        if isinstance(model, (nn.Sequential, Graph)):
            chosen.update((id(child), "") for child in model.children() if _holds_parameters(child))
    else:
        for i, unit in enumerate(units):
            key, value = next(iter(unit.items()))
            where = f"shard.units[{i}].{key}"
            found = _by_layer(entries, value, where) if key == "layer" else _by_match(entries, str(value))
            found = [m for m in found if _holds_parameters(m)]
            if not found:
                problems.append((where, _nothing_selected(entries, key, value)))
            for module in found:
                chosen.setdefault(id(module), where)
    chosen[id(model)] = ""
    dropped = True
    while dropped:  # until no default unit had to go: every split left is one the recipe names
        dropped, named_splits = False, []
        for param, holders, managers in _splits(entries, set(chosen)):
            managers = [u for u in managers if u in chosen]  # one dropped this pass is gone
            named = [u for u in managers if chosen[u]]
            if named:
                where = chosen[named[0]]
                unit = next(p for p, m in entries if id(m) == named[0])
                message = (
                    f"unit {unit or '(root)'!r} would split the shared parameter {param} "
                    f"(held at {', '.join(holders)}): one unit must hold all its users; shard an enclosing module"
                )
                named_splits.append((where, message))
            for u in managers:
                if u != id(model) and not chosen[u]:
                    del chosen[u]  # a default unit: its parameters go to the enclosing unit
                    dropped = True
    problems += named_splits
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return set(chosen)


def _holds_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _by_layer(entries: list[tuple[str, nn.Module]], value: Any, where: str) -> list[nn.Module]:
    classes = tuple(MODULES.lookup(name, where) for name in ([value] if isinstance(value, str) else value))
    return list({id(m): m for _, m in entries if isinstance(m, classes)}.values())


def _by_match(entries: list[tuple[str, nn.Module]], glob: str) -> list[nn.Module]:
    """The outermost modules whose path matches: one below them is inside their unit."""
    found: dict[int, nn.Module] = {}
    hits: list[str] = []
    for path, module in entries:  # pre-order: parents first
        if any(path == h or path.startswith(f"{h}.") or h == "" for h in hits):
            continue
        if fnmatch.fnmatchcase(path, glob):
            hits.append(path)
            found.setdefault(id(module), module)
    return list(found.values())


def _nothing_selected(
    entries: list[tuple[str, nn.Module]], key: str, value: Any, holding: str = " holding parameters"
) -> str:
    """Why an entry selects nothing: the closest path, or the classes there are (those holding
    parameters). ``holding`` is dropped where any module will do (activation checkpointing)."""
    if key == "match":
        hint = did_you_mean(str(value), [p for p, _ in entries if p])
        return f"{value!r} matches no module{holding}{hint}"
    kinds = ", ".join(sorted({type(m).__name__ for _, m in entries if _holds_parameters(m)}))
    names = " or ".join([value] if isinstance(value, str) else value)
    return f"no module{holding} is a {names} (there: {kinds})"


def _splits(entries: list[tuple[str, nn.Module]], units: set[int]) -> list[tuple[str, list[str], list[int]]]:
    """Parameters whose holders fall in different units (each module belongs to the nearest unit
    above it): (first path, every path, those units)."""
    unit_at: dict[str, int] = {}
    managers: dict[int, dict[int, None]] = defaultdict(dict)
    holders: dict[int, list[str]] = defaultdict(list)
    for path, module in entries:  # pre-order: a parent's unit is known before its children's
        unit_at[path] = id(module) if id(module) in units else unit_at[path.rpartition(".")[0]]
        for name, p in module._parameters.items():
            if p is not None:
                managers[id(p)][unit_at[path]] = None
                holders[id(p)].append(f"{path}.{name}" if path else name)
    return [(holders[k][0], holders[k], list(m)) for k, m in managers.items() if len(m) > 1]


def _post_order(model: nn.Module) -> list[nn.Module]:
    """Each module once, after every module below it."""
    seen: set[int] = set()
    order: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for child in module.children():
            visit(child)
        order.append(module)

    visit(model)
    return order


# --- filling the shards ----------------------------------------------------------------------------


def _agreed_seed(seed: int | None) -> int:
    """The build's seed; without ``init.seed``, rank 0's random draw, so every rank fills the same
    full tensors."""
    if seed is not None:
        return seed
    drawn = [int(torch.randint(SEED_LIMIT - 1, ()))]
    dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


def _first_tensors(model: nn.Module, fills: TensorFills) -> dict[str, torch.Tensor]:
    """Each parameter and buffer once, by the path it is known by: its first path, a tied
    parameter's ``src`` (``init.rules.first_paths``; read again here, since sharding replaces
    the parameter objects)."""
    modules = NamedModules(model)
    tensors = {
        id(t): t for m in modules.modules for t in [*m._parameters.values(), *m._buffers.values()] if t is not None
    }
    return {path: tensors[key] for key, path in first_paths(modules, canonical_paths(model, fills.ties)).items()}


def _check_refillable(model: nn.Module, fills: TensorFills) -> None:
    """Every tensor must be made from its stream: a scheme, a per-tensor default or its block's
    reset. A user block's buffer, or a parameter of a block without a reset, holds what its
    constructor computed, which a build on ``meta`` never has."""
    owners = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for slots in (module._parameters, module._buffers):
            for name in slots:
                owners.setdefault(f"{path}.{name}" if path else name, (module, slots is module._buffers))
    resets = [path for path, module in fills.whole if reset_method(module) is not None]
    problems = []
    for path in _first_tensors(model, fills):
        if path in fills.schemes or path in fills.defaults:
            continue
        module, is_buffer = owners[path]
        made_by_reset = any(path.startswith(f"{p}.") or p == "" for p in resets)
        if not made_by_reset or (is_buffer and not resets_itself(type(module))):
            what = "a buffer its constructor makes" if is_buffer else "a parameter no reset makes"
            problems.append((
                "model",
                f"{path} of {type(module).__name__} is {what}: a sharded build makes every tensor on meta and "
                "fills it from its own stream; give the block a reset_parameters that sets it",
            ))  # fmt: skip
    if problems:
        raise ConfigError(problems)


def _whole_copies(model: nn.Module, fills: TensorFills) -> list[tuple[str, nn.Module, list[str]]]:
    """For each outermost module that resets as a whole: its path, a copy of it (on ``meta``) and
    the paths of the whole-reset modules inside it, in the order ``initialize`` resets them."""
    tops: dict[str, list[str]] = {}
    whole = [path for path, _ in fills.whole]
    for path in whole:
        top = min((p for p in whole if p == "" or path == p or path.startswith(f"{p}.")), key=len)
        tops.setdefault(top, []).append(path)
    return [(top, copy.deepcopy(model.get_submodule(top)), members) for top, members in tops.items()]


def _fill(
    model: nn.Module, fills: TensorFills, copies: list[tuple[str, nn.Module, list[str]]], device: torch.device
) -> None:
    """Fill this rank's part of every tensor, one full tensor at a time."""
    pending: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, tensor in _first_tensors(model, fills).items():
            if path not in fills.schemes and path not in fills.defaults:
                pending[path] = tensor
            elif isinstance(tensor, DTensor):
                full = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
                fills.fill(path, full)
                keep_slice(tensor, full)
                del full
            else:
                fills.fill(path, tensor)
        for top, module, members in copies:
            wanted = [p for p in pending if top == "" or p.startswith(f"{top}.")]
            if not wanted:
                continue
            allocate(module, device)
            for path in members:
                fills.reset_copy(path, module.get_submodule(path[len(top) + 1 :] if top else path))
            for path in wanted:
                keep_slice(pending.pop(path), _tensor_at(module, path[len(top) + 1 :] if top else path))
            module.to_empty(device="meta")  # frees the full copy
    if pending:
        raise RuntimeError(f"no fill for {', '.join(pending)}")


def keep_slice(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy into ``target`` its part of ``full``: this rank's shard of a ``DTensor``, all of a plain tensor."""
    with torch.no_grad():
        if isinstance(target, DTensor):
            shape, offset = compute_local_shape_and_global_offset(full.shape, target.device_mesh, target.placements)
            target.to_local().copy_(full[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))])
        else:
            target.copy_(full)


def _tensor_at(module: nn.Module, path: str) -> torch.Tensor:
    owner, _, name = path.rpartition(".")
    return getattr(module.get_submodule(owner), name)
