"""Initialization: named initializers, the rules that select parameters, and applying them once.

Selection works as the tutorial's ``net[0].apply(fn)``: a rule's ``match`` picks modules by path,
with everything below them; ``layer`` keeps modules of those classes; every other key names a
parameter those modules hold and the initializer for it. A later rule wins over an earlier one,
and a node's inline ``init:`` wins over every rule. Each parameter is filled once, by its winner;
the rest keep their module's default (``reset_defaults`` runs it, when the model was built on the
``meta`` device, only for the tensors no scheme covers).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from composer.errors import ConfigError, did_you_mean, unknown
from composer.placement import reset_method
from composer.registry import MODULES, Registry
from composer.signatures import is_int, signature_of

Initializer = Callable[..., Any]
INITIALIZERS: Registry[Initializer] = Registry("initializer")
register_init = INITIALIZERS.register

for _name in (
    "normal", "uniform", "constant", "zeros", "ones", "xavier_uniform", "xavier_normal",
    "kaiming_uniform", "kaiming_normal", "trunc_normal", "orthogonal", "eye", "dirac", "sparse",
):  # fmt: skip
    INITIALIZERS.add(_name, getattr(nn.init, f"{_name}_"))


@register_init("default")
def default(tensor: torch.Tensor) -> torch.Tensor:
    """The module's own reset: a marker the planner reads, never called on a tensor."""
    raise RuntimeError("'default' is run by the module's reset, not on a tensor")


@register_init("piecewise")
def piecewise(tensor: torch.Tensor) -> torch.Tensor:
    """The tutorial's custom scheme: U(5, 10) w.p. 1/4, 0 w.p. 1/2, U(-10, -5) w.p. 1/4."""
    with torch.no_grad():
        tensor.uniform_(-10, 10)
        return tensor.mul_(tensor.abs() >= 5)


@dataclass(frozen=True)
class Scheme:
    """One initializer with its arguments, and the key path of the spec that asked for it."""

    name: str
    kwargs: Mapping[str, Any]
    source: str

    @property
    def is_default(self) -> bool:
        return self.name == "default"

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args}) [{self.source}]" if args else f"{self.name} [{self.source}]"

    def apply(self, tensor: torch.Tensor, where: str) -> None:
        """Fill ``tensor``. On ``meta`` only check that the scheme fits: it runs on a small CPU
        tensor of the same rank, under a forked RNG (an ``nn.init`` call on ``meta`` would
        import torch._dynamo on first use, 1-3 s)."""
        try:
            with torch.no_grad():
                if tensor.is_meta:
                    probe = _probe_shape(list(tensor.shape))
                    with torch.random.fork_rng(devices=[]):
                        self._fn(torch.empty(probe) if probe is not None else tensor, **self.kwargs)
                else:
                    self._fn(tensor, **self.kwargs)
        except Exception as e:
            raise ConfigError(
                f"{self.name} cannot initialize {where} of shape {list(tensor.shape)}: {e}", self.source
            ) from None

    @property
    def _fn(self) -> Initializer:
        return INITIALIZERS.lookup(self.name, self.source)


_PROBE_LIMIT = 1 << 22  # elements (16 MB of float32) a check may really allocate


def _probe_shape(shape: list[int]) -> list[int] | None:
    """A CPU stand-in for a ``meta`` tensor's shape on which a scheme fails exactly when it would
    on the real one: the real shape where it is small; else dim 0 kept (``dirac``'s groups divide
    it) and the others cut to 4; None where even that is too large (then ``meta`` it is)."""
    if math.prod(shape) <= _PROBE_LIMIT:
        return shape
    small = shape[:1] + [min(d, 4) for d in shape[1:]]
    return small if math.prod(small) <= _PROBE_LIMIT else None


@dataclass(frozen=True)
class Rule:
    match: str
    layers: tuple[str, ...] | None
    params: Mapping[str, Scheme]
    path: str


@dataclass(frozen=True)
class InitConfig:
    seed: int | None = None
    rules: tuple[Rule, ...] = ()


def parse_scheme(spec: Any, path: str, problems: list[tuple[str, str]]) -> Scheme | None:
    """A bare name or ``{type: name, **kwargs}``, its kwargs checked against the initializer."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("type"), str):
        name, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    else:
        problems.append((path, f"expected an initializer name or {{type: name, ...}}, got {spec!r}"))
        return None
    if name not in INITIALIZERS:
        where = f"{path}.type" if isinstance(spec, Mapping) else path
        problems.append((where, unknown("initializer", name, INITIALIZERS, listed=False)))
        return None
    sig = signature_of(INITIALIZERS.lookup(name, path), skip=1, hidden=frozenset({"generator"}))
    if sig is not None:
        problems += sig.problems(name, (), kwargs, path, optional=sig.required)
        missing = [key for key in sig.keywords if key in sig.required and key not in kwargs]
        if missing:
            write = f"write {{type: {name}, {missing[0]}: ...}}"
            problems.append((path, f"{name} needs {', '.join(map(repr, missing))}: {write}"))
    return Scheme(name, kwargs, path)


def parse_init(cfg: Any, path: str = "init") -> InitConfig:
    """The recipe's ``init`` section, every problem reported at once."""
    if cfg is None:
        return InitConfig()
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping with 'seed' and 'rules', got {cfg!r}", path)
    problems: list[tuple[str, str]] = []
    for key in cfg:
        if key not in ("seed", "rules"):
            problems.append((f"{path}.{key}", unknown("key", key, ("seed", "rules"))))
    seed = cfg.get("seed")
    if seed is not None and not is_int(seed):
        problems.append((f"{path}.seed", f"expected an integer, got {seed!r}"))
    raw_rules = cfg.get("rules") or []
    if not isinstance(raw_rules, list):
        problems.append((f"{path}.rules", f"expected a list of rules, got {raw_rules!r}"))
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
    layers = raw.get("layer")
    if isinstance(layers, str):
        layers = (layers,)
    elif layers is not None:
        layers = tuple(layers) if isinstance(layers, list) else None
        if layers is None or not all(isinstance(x, str) for x in layers):
            problems.append((f"{path}.layer", f"expected a class name or a list of them, got {raw['layer']!r}"))
    for name in layers or ():
        if name not in MODULES:
            problems.append((f"{path}.layer", unknown("layer class", name, MODULES, listed=False)))
    params = {}
    for key, spec in raw.items():
        if key in ("match", "layer"):
            continue
        hint = did_you_mean(str(key), ("match", "layer"))
        if hint and not (isinstance(spec, str) and spec in INITIALIZERS):
            problems.append((f"{path}.{key}", f"unknown rule key {key!r}{hint}; a rule has match, layer and parameter: initializer keys"))
            continue
        params[key] = parse_scheme(spec, f"{path}.{key}", problems)
    if not params:
        problems.append((path, "rule sets no parameter: add a key such as 'weight: xavier_uniform'"))
    return Rule(match, layers, params, path)


@dataclass
class Plan:
    """The winning scheme for each covered parameter.

    Entries name a parameter by its module and attribute, not by the tensor object, because
    ``allocate`` replaces ``meta`` parameters between planning and applying.
    """

    entries: dict[int, tuple[nn.Module, str, str, Scheme]] = field(default_factory=dict)

    def _current(self) -> Iterator[tuple[nn.Parameter, str, Scheme]]:
        for module, name, where, scheme in self.entries.values():
            yield module._parameters[name], where, scheme

    @property
    def covered(self) -> set[int]:
        """Parameters an explicit scheme fills, so their module's default must not run on them."""
        return {id(p) for p, _, scheme in self._current() if not scheme.is_default}

    def apply(self) -> None:
        """Fill each covered parameter; on ``meta`` tensors, check that its scheme fits."""
        for param, where, scheme in self._current():
            if not scheme.is_default:
                scheme.apply(param, where)

    def report(self, model: nn.Module) -> dict[str, str]:
        """Each parameter path a scheme covers (tied ones under each of their names) -> that scheme."""
        if not self.entries:
            return {}
        schemes = {id(p): str(scheme) for p, _, scheme in self._current()}
        return {path: schemes[id(p)] for path, p in model.named_parameters(remove_duplicate=False) if id(p) in schemes}


def plan_init(model: nn.Module, config: InitConfig, inline: list[tuple[nn.Module, str, Any]]) -> Plan:
    """Decide each parameter's winner; a rule or key that reaches nothing is an error."""
    problems: list[tuple[str, str]] = []
    entries = list(model.named_modules(remove_duplicate=False))
    paths = {id(p): name for name, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    plan = Plan()

    def cover(module: nn.Module, key: str, scheme: Scheme) -> bool:
        param = module._parameters.get(key)
        if param is None:
            return False
        plan.entries[id(param)] = (module, key, paths[id(param)], scheme)
        return True

    for rule in config.rules:
        selected = _select(entries, rule.match)
        if not selected:
            problems.append((f"{rule.path}.match", f"{rule.match!r} matches no module{did_you_mean(rule.match, [p for p, _ in entries if p])}"))
            continue
        if rule.layers:
            kinds = sorted({type(m).__name__ for m in selected})
            selected = [m for m in selected if _is_layer(m, rule.layers)]
            if not selected:
                problems.append((f"{rule.path}.layer", f"no module under {rule.match!r} is a {' or '.join(rule.layers)} (there: {', '.join(kinds)})"))
                continue
        for key, scheme in rule.params.items():
            hits = [cover(module, key, scheme) for module in selected]
            if not any(hits):
                held = sorted({n for m in selected for n, p in m._parameters.items() if p is not None})
                problems.append((f"{rule.path}.{key}", f"no selected module has a parameter {key!r}{did_you_mean(key, held)} (they have: {', '.join(held) or 'none'})"))
    in_model = {id(m) for _, m in entries}
    for module, path, spec in inline:
        if id(module) not in in_model:
            continue  # a shared module that nothing references: not part of the model
        for key, raw in spec.items():
            scheme = parse_scheme(raw, f"{path}.{key}", problems)
            if scheme is not None and not cover(module, key, scheme):
                held = [n for n, p in module._parameters.items() if p is not None]
                problems.append((f"{path}.{key}", f"{type(module).__name__} has no parameter {key!r} of its own{did_you_mean(key, held)} (it has: {', '.join(held) or 'none'})"))
    if problems:
        raise ConfigError(problems)
    return plan


def _select(entries: list[tuple[str, nn.Module]], pattern: str) -> list[nn.Module]:
    """Modules whose path matches, with everything below them; a shared module once."""
    hit_paths: set[str] = set()
    chosen: dict[int, nn.Module] = {}
    for path, module in entries:  # pre-order: a parent comes before its children
        if fnmatch.fnmatchcase(path, pattern) or (path and path.rpartition(".")[0] in hit_paths):
            hit_paths.add(path)
            chosen.setdefault(id(module), module)
    return list(chosen.values())


def _is_layer(module: nn.Module, layers: tuple[str, ...]) -> bool:
    return type(module).__name__ in layers or any(MODULES._entries.get(name) is type(module) for name in layers)


def reset_defaults(model: nn.Module, covered: set[int], fresh: set[int]) -> None:
    """Run each module's own reset once, children before parents as construction does, for the
    ``fresh`` (just allocated) tensors that no scheme covers. Its other parameters are swapped
    for ``meta`` stand-ins meanwhile, so the reset spends nothing on them and draws no random
    numbers for them."""
    done = set(covered)
    for module in _post_order(model, set()):
        own = module._parameters
        pending = [n for n, p in own.items() if p is not None and id(p) in fresh and id(p) not in done]
        if not pending and not any(id(b) in fresh for b in module._buffers.values()):
            continue
        reset = reset_method(module)
        if reset is None:
            continue
        standins = {n: p for n, p in own.items() if p is not None and n not in pending}
        for name, p in standins.items():
            own[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        try:
            reset()
        finally:
            own.update(standins)
        done.update(id(own[n]) for n in pending)


def _post_order(module: nn.Module, seen: set[int]) -> Iterator[nn.Module]:
    seen.add(id(module))
    for child in module.children():
        if id(child) not in seen:
            yield from _post_order(child, seen)
    yield module
