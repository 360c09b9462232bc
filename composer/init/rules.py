"""Initialization: the rules that select parameters, the plan of who fills what, and filling.

Selection works as the tutorial's ``net[0].apply(fn)``: a rule's ``match`` picks modules by path,
with everything below them; ``layer`` keeps modules of those classes (subclasses too); every other
key names a parameter those modules hold and the initializer for it. A later rule wins over an
earlier one, and a node's inline ``init:`` wins over every rule.

Each tensor is filled once, from its own random stream (``initializers.stream_seed`` of the build's
seed and the tensor's first path): by the scheme that wins for it, or else by its module's default
(``init.defaults``, written per tensor for torch.nn's layers). A module whose reset is not
written per tensor (a user's block) runs its own reset once, from the stream of its path, with
the tensors a scheme covers swapped out. So a tensor's values depend only on the seed, its path,
the scheme that sets it and its shape: not on other rules, build order, or a ``meta`` build.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedTensorMixin

from composer.errors import ConfigError, did_you_mean, unknown
from composer.init.defaults import Fill, default_table, reset_method
from composer.init.initializers import INITIALIZERS, SEED_LIMIT, Scheme, Streams, parse_scheme, seed_forked
from composer.init.threads import run_split
from composer.modules.registry import MODULES
from composer.modules.signatures import describe, is_int

_RULE_KEYS = ("match", "layer")


@dataclass(frozen=True)
class Rule:
    match: str
    layers: tuple[type[nn.Module], ...]
    params: Mapping[str, Scheme]
    path: str


@dataclass(frozen=True)
class InitConfig:
    seed: int | None = None
    rules: tuple[Rule, ...] = ()


def parse_init(cfg: Any, path: str = "init") -> InitConfig:
    """The recipe's ``init`` section, every problem reported at once."""
    if cfg is None:
        return InitConfig()
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping with 'seed' and 'rules', got {describe(cfg)}", path)
    problems: list[tuple[str, str]] = []
    for key in cfg:
        if key not in ("seed", "rules"):
            problems.append((f"{path}.{key}", unknown("key", key, ("seed", "rules"))))
    seed = cfg.get("seed")
    if seed is not None and not (is_int(seed) and 0 <= seed < SEED_LIMIT):
        problems.append((f"{path}.seed", f"expected an integer in [0, 2**63), got {describe(seed)}"))
    raw_rules = cfg.get("rules") or []
    if not isinstance(raw_rules, list):
        problems.append((f"{path}.rules", f"expected a list of rules, got {describe(raw_rules)}"))
        raw_rules = []
    rules = [_parse_rule(raw, f"{path}.rules[{i}]", problems) for i, raw in enumerate(raw_rules)]
    if problems:
        raise ConfigError(problems)
    return InitConfig(seed, tuple(rules))


def _parse_rule(raw: Any, path: str, problems: list[tuple[str, str]]) -> Rule | None:
    if not isinstance(raw, Mapping):
        problems.append((path, f"expected a mapping with match, layer and parameter: initializer keys, got {raw!r}"))
        return None
    match = raw.get("match", "*")
    if is_int(match):
        match = str(match)  # `match: 0` in YAML is the module named "0"
    if not isinstance(match, str):
        problems.append((f"{path}.match", f"expected a glob string, got {match!r}"))
    params = {}
    for key, spec in raw.items():
        if key in _RULE_KEYS:
            continue
        hint = did_you_mean(str(key), _RULE_KEYS)
        if hint and not (isinstance(spec, str) and spec in INITIALIZERS):
            problems.append(
                (
                    f"{path}.{key}",
                    f"unknown rule key {key!r}{hint}; a rule has match, layer and parameter: initializer keys",
                )
            )
            continue
        params[key] = parse_scheme(spec, f"{path}.{key}", problems)
    if not params:
        problems.append((path, "rule sets no parameter: add a key such as 'weight: xavier_uniform'"))
    return Rule(match, _layer_classes(raw.get("layer"), f"{path}.layer", problems), params, path)


def _layer_classes(layers: Any, path: str, problems: list[tuple[str, str]]) -> tuple[type[nn.Module], ...]:
    """``layer: Linear`` or a list of names, as registered classes (any registered or torch.nn name)."""
    if layers is None:
        return ()
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        problems.append((path, f"expected a class name or a list of them, got {layers!r}"))
        return ()
    classes = []
    for name in names:
        if name in MODULES:
            classes.append(MODULES.lookup(name, path))
        else:
            problems.append((path, unknown("layer class", name, MODULES, listed=False)))
    return tuple(classes)


# --- the plan: which scheme wins for which parameter --------------------------------------------


class NamedModules:
    """``model.named_modules(remove_duplicate=False)`` (a shared module at each of its paths),
    kept as two lists: a pair per module would stay alive through planning and filling, and a
    model of 20,000 modules pays the collector a full pass more for them."""

    def __init__(self, model: nn.Module) -> None:
        self.paths: list[str] = []
        self.modules: list[nn.Module] = []
        for path, module in model.named_modules(remove_duplicate=False):
            self.paths.append(path)
            self.modules.append(module)

    def __iter__(self) -> Iterator[tuple[str, nn.Module]]:
        return zip(self.paths, self.modules, strict=True)


@dataclass
class Plan:
    """The winning scheme for each parameter a rule or inline spec covers.

    Entries name a parameter by its module and attribute (for the report and its messages), keyed
    by the parameter's id, so a tied or shared parameter has one entry.
    """

    entries: dict[int, tuple[nn.Module, str, str, Scheme]] = field(default_factory=dict)
    # the model's named_modules (duplicates kept) and each tensor's path, as planned: ``initialize``
    # right after reuses them instead of walking the model again
    layout: tuple[NamedModules, dict[int, str]] | None = None

    def current(self) -> Iterator[tuple[nn.Parameter, str, Scheme]]:
        """(parameter as it is now, its path, its scheme) for each covered parameter."""
        for module, name, where, scheme in self.entries.values():
            yield module._parameters[name], where, scheme

    def report(self, model: nn.Module) -> dict[str, str]:
        """Each parameter path a scheme covers (tied ones under each of their names) -> that scheme."""
        if not self.entries:
            return {}
        schemes = {id(p): str(scheme) for p, _, scheme in self.current()}
        return {path: schemes[id(p)] for path, p in model.named_parameters(remove_duplicate=False) if id(p) in schemes}


def plan_init(
    model: nn.Module,
    rules: tuple[Rule, ...],
    inline: list[tuple[nn.Module, str, Any]],
    ties: Mapping[str, str] | None = None,
) -> Plan:
    """Decide each parameter's winner: rules in order, then inline specs. A rule or key that
    reaches nothing is an error, never a silent no-op. A tied parameter (``tie: {dst: src}``) is
    set by the scheme that wins for ``src``: a rule may reach ``dst`` only together with ``src``
    (then with the same spec), and an inline spec on ``dst`` is an error."""
    problems: list[tuple[str, str]] = []
    entries = NamedModules(model)
    paths = first_paths(entries, canonical_paths(model, ties))
    plan = Plan(layout=(entries, paths))
    tie_sites = {dst: (_site(model, dst), _site(model, src)) for dst, src in (ties or {}).items()}
    reached: set[tuple[int, str]] = set()

    def cover(module: nn.Module, key: str, scheme: Scheme) -> bool:
        param = module._parameters.get(key)
        if param is None:
            return False
        plan.entries[id(param)] = (module, key, paths[id(param)], scheme)
        reached.add((id(module), key))
        return True

    for rule in rules:
        reached.clear()
        selected = _selected(rule, entries, problems)
        for key, scheme in rule.params.items():
            if selected and scheme is not None and not any([cover(m, key, scheme) for m in selected]):
                held = sorted({n for m in selected for n, p in m._parameters.items() if p is not None})
                problems.append((
                    f"{rule.path}.{key}",
                    f"no selected module has a parameter {key!r}{did_you_mean(key, held)} "
                    f"(they have: {', '.join(held) or 'none'})",
                ))  # fmt: skip
        for dst, (dst_site, src_site) in tie_sites.items():
            if dst_site in reached and src_site not in reached:
                problems.append((rule.path, f"reaches {dst}, tied to {ties[dst]}, without it: a rule that sets a "
                                 "tied parameter reaches its src too (the src's scheme sets it)"))  # fmt: skip
    in_model = set(map(id, entries.modules))
    dst_sites = {dst_site: dst for dst, (dst_site, _) in tie_sites.items()}
    for module, path, spec in inline:
        for key in spec:
            if (id(module), key) in dst_sites:
                dst = dst_sites[(id(module), key)]
                problems.append((f"{path}.{key}", f"{dst} is tied to {ties[dst]}: initialize it there"))
        if id(module) in in_model:  # else a shared module nothing references: not part of the model
            _cover_inline(module, path, spec, cover, problems)
    if problems:
        raise ConfigError(problems)
    return plan


def canonical_paths(model: nn.Module, ties: Mapping[str, str] | None) -> dict[int, str]:
    """A tied parameter is known by its ``src`` path: its stream and its default come from there."""
    return {id(model.get_parameter(src)): src for src in (ties or {}).values()}


def _site(model: nn.Module, path: str) -> tuple[int, str]:
    owner, _, leaf = path.rpartition(".")
    return id(model.get_submodule(owner)), leaf


def _selected(rule: Rule, entries: NamedModules, problems: list[tuple[str, str]]) -> list[nn.Module]:
    """The modules a rule reaches: matched by path with everything below, then kept by class."""
    selected = _select(entries, rule.match)
    if not selected:
        hint = did_you_mean(rule.match, [p for p in entries.paths if p])
        problems.append((f"{rule.path}.match", f"{rule.match!r} matches no module{hint}"))
        return []
    if rule.layers:
        kinds = sorted({type(m).__name__ for m in selected})
        selected = [m for m in selected if isinstance(m, rule.layers)]
        if not selected:
            names = " or ".join(c.__name__ for c in rule.layers)
            problems.append(
                (f"{rule.path}.layer", f"no module under {rule.match!r} is a {names} (there: {', '.join(kinds)})")
            )
    return selected


def _cover_inline(module: nn.Module, path: str, spec: Mapping, cover: Any, problems: list[tuple[str, str]]) -> None:
    for key, raw in spec.items():
        scheme = parse_scheme(raw, f"{path}.{key}", problems)
        if scheme is not None and not cover(module, key, scheme):
            held = [n for n, p in module._parameters.items() if p is not None]
            problems.append((
                f"{path}.{key}",
                f"{type(module).__name__} has no parameter {key!r} of its own{did_you_mean(key, held)} "
                f"(it has: {', '.join(held) or 'none'})",
            ))  # fmt: skip


def _select(entries: NamedModules, pattern: str) -> list[nn.Module]:
    """Modules whose path matches, with everything below them; a shared module once."""
    hit_paths: set[str] = set()
    chosen: dict[int, nn.Module] = {}
    for path, module in entries:  # pre-order: a parent comes before its children
        if fnmatch.fnmatchcase(path, pattern) or (path and path.rpartition(".")[0] in hit_paths):
            hit_paths.add(path)
            chosen.setdefault(id(module), module)
    return list(chosen.values())


# --- filling --------------------------------------------------------------------------------------


def first_paths(modules: NamedModules, canonical: Mapping[int, str] | None = None) -> dict[int, str]:
    """Each parameter's and buffer's first path (a tied or shared tensor has several), from
    ``named_modules(remove_duplicate=False)``: the order ``named_parameters`` follows; a tied
    parameter's ``canonical`` path wins. Lazy tensors that wait for their shapes are left out:
    nothing can fill them yet."""
    paths: dict[int, str] = dict(canonical or {})
    holding_buffers: list[int] = []  # most modules hold none: the second pass visits only those that do
    for i, (path, module) in enumerate(modules):
        _name_tensors(module._parameters, f"{path}." if path else "", paths)
        if module._buffers:
            holding_buffers.append(i)
    for i in holding_buffers:
        path = modules.paths[i]
        _name_tensors(modules.modules[i]._buffers, f"{path}." if path else "", paths)
    return paths


def _name_tensors(slots: Mapping[str, torch.Tensor | None], prefix: str, paths: dict[int, str]) -> None:
    for name, t in slots.items():
        if t is not None and id(t) not in paths and not isinstance(t, UninitializedTensorMixin):
            paths[id(t)] = prefix + name


def check_plan(plan: Plan) -> None:
    """On a ``meta`` model: that each covered parameter's scheme can fill its shape."""
    streams = Streams(0)
    for param, where, scheme in plan.current():
        if not scheme.is_default:
            scheme.fill(param, streams.at(where, torch.device("cpu")), where)


def initialize(model: nn.Module, plan: Plan, base_seed: int, ties: Mapping[str, str] | None = None) -> None:
    """Fill every tensor of ``model`` once, each from its own stream under ``base_seed``: the
    planned scheme where one covers it, else its module's default. Per-tensor fills run in
    several threads (``parallel``) where there are enough elements on CPU; modules that reset as
    a whole, and users' initializers, run here, one after the other."""
    streams = Streams(base_seed)
    if plan.layout is not None:
        modules, paths = plan.layout
    else:
        modules = NamedModules(model)
        paths = first_paths(modules, canonical_paths(model, ties))
    covered = {id(p) for p, _, scheme in plan.current() if not scheme.is_default}
    fills, whole = _defaults(modules, paths, skip=covered)
    serial = Fills()
    for param, where, scheme in plan.current():
        if not scheme.is_default:
            fill = functools.partial(_scheme_fill, scheme, where)
            (fills if scheme.any_thread else serial).put(param, paths[id(param)], fill)
    jobs = range(len(fills))
    with torch.no_grad():
        for path, module in whole:
            _reset_whole(module, covered, streams.at(path, torch.device("cpu")).initial_seed())
        serial.run(range(len(serial)), streams)
    if all(t.is_cpu for t in fills.tensors):
        run_split(
            jobs,
            lambda i: fills.tensors[i].numel(),
            functools.partial(_fill_in_thread, fills, base_seed),
            lambda all_jobs: fills.run(all_jobs, streams),
        )
    else:
        fills.run(jobs, streams)


class Fills:
    """Tensors to fill, each with its path (which names its stream) and its fill, kept as three
    lists: a tuple per tensor would stay alive through filling (see ``NamedModules``). A job is
    an index into them."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.paths: list[str] = []
        self.fills: list[Fill] = []
        self._index: dict[int, int] = {}  # id of a tensor -> its index

    def __len__(self) -> int:
        return len(self.tensors)

    def put(self, tensor: torch.Tensor, path: str, fill: Fill) -> None:
        """Fill ``tensor`` (first at ``path``) with ``fill``, over the fill it had."""
        i = self._index.get(id(tensor))
        if i is not None:
            self.fills[i] = fill
            return
        self._index[id(tensor)] = len(self.tensors)
        self.tensors.append(tensor)
        self.paths.append(path)
        self.fills.append(fill)

    def run(self, jobs: Iterable[int], streams: Streams, aliases: bool = False) -> None:
        """Each job's fill, from its tensor's stream (through a detached alias with ``aliases``)."""
        with torch.no_grad():
            for i in jobs:
                tensor = self.tensors[i]
                self.fills[i](tensor.detach() if aliases else tensor, streams.at(self.paths[i], tensor.device))


def _scheme_fill(scheme: Scheme, where: str, tensor: torch.Tensor, gen: torch.Generator) -> None:
    scheme.fill(tensor, gen, where)


def _fill_in_thread(fills: Fills, base_seed: int, jobs: Sequence[int]) -> None:
    """``fills.run`` with the thread's own generators (``no_grad`` is per thread too), through
    detached aliases: measured here, in-place fills of ``Parameter``s in two threads do not
    overlap, those of their detached aliases (same storage) do."""
    fills.run(jobs, Streams(base_seed), aliases=True)


def _defaults(
    modules: NamedModules, paths: dict[int, str], skip: Collection[int] = ()
) -> tuple[Fills, list[tuple[str, nn.Module]]]:
    """Each tensor's default fill, from the module at its first path or an ancestor's override
    (descendants first, so a parent's reset wins, as it does in torch), but those of the tensors
    whose ids are in ``skip`` (a scheme fills them); and the modules that reset as a whole, with
    their first paths."""
    fills = Fills()
    whole: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    first = [i for i, m in enumerate(modules.modules) if id(m) not in seen and not seen.add(id(m))]
    for i in reversed(first):  # pre-order reversed: every module after all below it
        path, module = modules.paths[i], modules.modules[i]
        if not module._parameters and not module._buffers and not module._modules:
            continue  # an activation, a dropout: nothing to fill
        table = default_table(module)
        if table is None:
            if any(id(t) in paths for t in [*module._parameters.values(), *module._buffers.values()]):
                whole.append((path, module))
            continue
        prefix = f"{path}." if path else ""
        for relative, fill in table.items():
            tensor = _tensor_at(module, relative)
            # a tensor held at several paths takes the default of the path it is known by
            known = paths.get(id(tensor))
            if known is not None and ("." in relative or known == prefix + relative) and id(tensor) not in skip:
                fills.put(tensor, known, fill)
    return fills, whole


def _reset_whole(module: nn.Module, covered: set[int], seed: int) -> None:
    """A module's own reset from the stream ``seed``; the parameters a scheme covers are swapped
    for ``meta`` stand-ins meanwhile, so the reset writes nothing and spends nothing on them."""
    reset = reset_method(module)
    if reset is None:
        return  # a user's block without a reset keeps what its constructor made
    own = module._parameters
    standins = {n: p for n, p in own.items() if p is not None and id(p) in covered}
    for name, p in standins.items():
        own[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    devices = [t.device for t in module.parameters() if t.device.type == "cuda"][:1]
    try:
        with torch.random.fork_rng(devices=devices):
            seed_forked(seed, devices)
            reset()
    finally:
        own.update(standins)


def _tensor_at(module: nn.Module, relative: str) -> torch.Tensor | None:
    owner_path, _, name = relative.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    tensor = owner._parameters.get(name)
    return tensor if tensor is not None or not owner._buffers else owner._buffers.get(name)


# --- one tensor at a time (a sharded build: ``composer.build.shard``) ---------------------------------


class TensorFills:
    """What ``initialize(model, plan, base_seed)`` writes, one tensor at a time, for a model whose
    tensors are sharded: each full tensor is made, filled and sliced by the caller.

    Made from the model before it is sharded (on ``meta``); tensors are named by their first path,
    which sharding keeps. ``fill`` gives the tensors a scheme or a per-tensor default fills; the
    rest belong to modules that reset as a whole (``whole``, in the order ``initialize`` resets
    them), which ``reset_copy`` resets on a full-size copy of the module.
    """

    def __init__(self, model: nn.Module, plan: Plan, base_seed: int, ties: Mapping[str, str] | None = None) -> None:
        self.streams = Streams(base_seed)
        self.ties = dict(ties or {})
        modules = NamedModules(model)
        self.paths = first_paths(modules, canonical_paths(model, ties))
        self.schemes = {self.paths[id(p)]: (w, s) for p, w, s in plan.current() if not s.is_default}
        defaults, self.whole = _defaults(modules, self.paths)
        self.defaults = dict(zip(defaults.paths, defaults.fills, strict=True))
        self._covered = {  # a whole module's own parameters a scheme covers, by name
            path: {n for n, p in m._parameters.items() if p is not None and self.paths.get(id(p)) in self.schemes}
            for path, m in self.whole
        }

    def fill(self, path: str, full: torch.Tensor) -> bool:
        """Write into ``full`` (the full shape of the tensor first at ``path``, on a real device) the
        values ``initialize`` gives that tensor; False (nothing written) for a tensor its module's
        reset as a whole makes."""
        with torch.no_grad():
            if path in self.schemes:
                where, scheme = self.schemes[path]
                scheme.fill(full, self.streams.at(path, full.device), where)
            elif path in self.defaults:
                self.defaults[path](full, self.streams.at(path, full.device))
            else:
                return False
        return True

    def reset_copy(self, path: str, copy: nn.Module) -> None:
        """Reset ``copy`` (a full-size copy of the whole-reset module first at ``path``) as
        ``initialize`` resets that module: from its stream, skipping what a scheme covers."""
        covered = {id(copy._parameters[n]) for n in self._covered[path]}
        with torch.no_grad():
            _reset_whole(copy, covered, self.streams.at(path, torch.device("cpu")).initial_seed())
