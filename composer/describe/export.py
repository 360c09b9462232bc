"""Model -> recipe: ``to_recipe`` writes the recipe that rebuilds a model made of registered modules.

``torch.nn`` classes do not keep their constructor arguments, so each is read back from the
attribute its constructor stored under the same name (a short table covers the classes that store
one elsewhere, and a ``bias: bool`` is whether the module holds a bias), and then checked: the
class is built again from what was read, on ``meta``, and must give the same children, parameter
and buffer names, shapes and persistence, the same plain attributes (where a constructor keeps the
arguments it was given) and the same sharing. Whatever cannot be read back or does not check out is
a ``ConfigError`` naming the module path and class: a recipe that builds another model is worse
than none.

Sharing is read from object identity, as the builder makes it: a module held by two parents becomes
a ``shared:`` entry used through ``{ref: name}``; a parameter held by two different modules, a
``tie: {dst: src}``. A module whose parameters are all frozen gets ``frozen: true``. The recipe has
no ``init``: the weights are the model's ``state_dict``, loaded into the rebuilt model.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parameter import UninitializedTensorMixin

from composer.errors import ConfigError
from composer.modules import signatures as args_of
from composer.modules.blocks import MyLinear, MySequential
from composer.modules.registry import MODULES
from composer.recipe.grammar import RESERVED

# nn.Module's own bookkeeping, and the record a build attaches: not set by a constructor.
_MODULE_STATE = frozenset(vars(nn.Module())) | {"composer_record"}
_HOOKS = tuple(sorted(k for k in _MODULE_STATE if k.endswith("hooks")))
_NOT_ARGUMENTS = frozenset({"device", "dtype"})  # where it lives, not what it is: the recipe's dtype
_ACTIVATIONS = {F.relu: "relu", F.gelu: "gelu"}


class _Refusal(Exception):
    """A module the recipe language cannot express; the message says why."""


def to_recipe(model: nn.Module) -> dict[str, Any]:
    """A recipe that rebuilds ``model``: the same module tree, names, shapes, sharing and ties.

    Load ``model.state_dict()`` into ``build_from_config(to_recipe(model))`` for the same weights.
    The recipe holds ``model``, and ``shared``, ``tie`` and ``dtype`` where the model needs them.

    Raises:
        ConfigError: one problem per module that a recipe cannot express (an unregistered class,
            an argument that cannot be read back, a rebuild that differs, hooks, sharing with a
            module that a class creates itself, a partly frozen module, mixed dtypes, lazy
            parameters not yet materialized), each at its module path.
    """
    return _Exporter(model).recipe()


class _Exporter:
    """One walk over a model, by object: each module becomes a node once (a shared one, a ref)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = _registered_names()
        self.problems: list[tuple[str, str]] = []
        self.holders: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for module in model.modules():
            for name, child in module._modules.items():
                if child is not None:
                    self.holders[id(child)].append((id(module), name))
        self.shared: dict[str, Any] = {}
        self.shared_names: dict[int, str] = {}
        self.writing: set[str] = set()
        self.implied: list[set[str]] = []  # parameter paths a constructor ties by itself
        self.dtype = self._dtype()

    def recipe(self) -> dict[str, Any]:
        if self.holders.get(id(self.model)):
            self.fail("", self.model, "the model contains itself")
            raise ConfigError(self.problems)
        model = self.node(self.model, "", frozen_above=False)
        ties = self._ties()
        if self.problems:
            raise ConfigError(self.problems)
        recipe: dict[str, Any] = {"model": model}
        if self.shared:
            recipe["shared"] = self.shared
        if ties:
            recipe["tie"] = ties
        if self.dtype != torch.float32:
            recipe["dtype"] = str(self.dtype).removeprefix("torch.")
        return recipe

    def fail(self, path: str, module: nn.Module, message: str) -> None:
        self.problems.append((path or "(model)", f"{type(module).__name__}: {message}"))

    # --- nodes ------------------------------------------------------------------------------

    def node(self, module: nn.Module, path: str, frozen_above: bool) -> dict[str, Any]:
        """``{ref: name}`` for a module held by several parents (its node goes to ``shared``)."""
        if len(self.holders.get(id(module), ())) < 2:
            return self._node(module, path, frozen_above)
        name = self.shared_names.get(id(module))
        if name is None:
            name = self.shared_names[id(module)] = _shared_name(module, path, self.shared)
            self.writing.add(name)
            self.shared[name] = {}  # holds its place in order while its own node is written
            self.shared[name] = self._node(module, path, frozen_above)
            self.writing.discard(name)
        elif name in self.writing:
            self.fail(path, module, "it contains itself")
        return {"ref": name}

    def _node(self, module: nn.Module, path: str, frozen_above: bool) -> dict[str, Any]:
        frozen = not frozen_above and _all_frozen(module)
        try:
            form = _FORMS.get(type(module), _Exporter._call)
            node = form(self, module, path, frozen_above or frozen)
        except _Refusal as e:
            self.fail(path, module, str(e))
            return {}
        if frozen:
            node["frozen"] = True
        return node

    def _call(self, module: nn.Module, path: str, frozen: bool) -> dict[str, Any]:
        """``{type: Name, <arguments>}``, checked by building the class again from them."""
        cls = type(module)
        name = self.names.get(cls)
        if name is None:
            raise _Refusal(
                f"{cls.__module__}.{cls.__qualname__} is not a registered type: register it "
                "(@register_module) or build the model from registered modules"
            )
        lazy = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if _is_lazy(t)]
        if lazy:
            raise _Refusal(f"{', '.join(lazy)} not materialized yet: run a forward pass (or build with input_shape)")
        raw = _read_arguments(module)
        candidate, kwargs = self._rebuild(module, raw)
        # What the class made itself: everything below but the modules passed in and kept as given
        # (a TransformerEncoder keeps copies of its encoder_layer, not the layer).
        kept = {id(m) for m in candidate.modules()} & {id(m) for m in _modules_in(raw.values())}
        made = [m for _, m in _walk(module, stop=frozenset(kept))][1:]
        self._check_made(module, made, frozen)
        self._record_implied(module, path, candidate)
        where: dict[int, str] = {}
        for sub_path, sub in _walk(module, path):
            where.setdefault(id(sub), sub_path)
        kwargs = {
            key: _map_modules(value, lambda m, key=key: self.node(m, where.get(id(m), f"{path}.{key}"), frozen))
            for key, value in kwargs.items()
        }
        return {"type": name, **_positional(cls, kwargs)}

    def _rebuild(self, module: nn.Module, raw: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        """The class built again from ``raw``; a tuple of equal numbers is first tried as one number
        (``kernel_size: 3``), then as written, for classes that keep the argument as given."""
        cls, why = type(module), ""
        tries = [_compact(raw, module, collapse=True), _compact(raw, module)]
        for kwargs in tries if tries[0] != tries[1] else tries[:1]:
            candidate = _construct(cls, kwargs, real=_needs_values(module))
            if isinstance(candidate, str):
                why = f"{cls.__name__}({_show(kwargs)}), from what it keeps, raised {candidate}"
                continue
            difference = _difference(module, candidate)
            if difference is None:
                return candidate, kwargs
            why = f"{cls.__name__}({_show(kwargs)}), from what it keeps, differs: {difference}"
        raise _Refusal(why)

    def _check_made(self, module: nn.Module, made: list[nn.Module], frozen: bool) -> None:
        """What the class creates itself is the recipe's only if nothing outside holds it, and it
        is frozen only as a whole (``frozen: true`` on the node)."""
        inside = {id(module)} | {id(m) for m in made}
        for sub in made:
            outside = [parent for parent, _ in self.holders[id(sub)] if parent not in inside]
            if outside:
                raise _Refusal(
                    f"{_path_of(module, sub)!r} ({type(sub).__name__}) is made by {type(module).__name__} "
                    "but also held outside it: a recipe cannot share what a class creates itself"
                )
        if frozen:
            return  # every parameter below is frozen: _all_frozen said so of this node or one above
        stuck = [
            _join(_path_of(module, m), n)
            for m in dict.fromkeys([module, *made])
            for n, p in _own_params(m)
            if not p.requires_grad
        ]
        if stuck:
            raise _Refusal(
                f"some of its parameters are frozen ({', '.join(stuck[:3])}) and others not: "
                "a recipe freezes whole modules (frozen: true)"
            )

    def _record_implied(self, module: nn.Module, path: str, candidate: nn.Module) -> None:
        """Parameters the class ties by itself need no ``tie`` entry; the model must tie them too."""
        groups: dict[int, list[str]] = defaultdict(list)
        for name, p in candidate.named_parameters(remove_duplicate=False):
            groups[id(p)].append(name)
        ours = dict(module.named_parameters(remove_duplicate=False))
        for names in groups.values():
            if len({id(ours[n]) for n in names}) > 1:
                raise _Refusal(f"{type(module).__name__} ties {', '.join(names)} itself; in the model they differ")
            if len(names) > 1:
                self.implied.append({_join(path, n) for n in names})

    # --- model-wide -------------------------------------------------------------------------

    def _ties(self) -> dict[str, str]:
        """``dst: src`` for each parameter held by several modules: ``src`` its first holder."""
        holders: dict[int, list[str]] = defaultdict(list)
        for path, module in self.model.named_modules():
            for name, p in module._parameters.items():
                if p is not None:
                    holders[id(p)].append(_join(path, name))
        ties = {}
        for paths in holders.values():
            src = paths[0]
            for dst in paths[1:]:
                if not any(src in group and dst in group for group in self.implied):
                    ties[dst] = src
        return ties

    def _dtype(self) -> torch.dtype:
        """The one floating dtype of the model's tensors (the recipe's ``dtype``)."""
        found: dict[torch.dtype, str] = {}
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if not _is_lazy(t) and t.is_floating_point():
                found.setdefault(t.dtype, name)
        if len(found) > 1:
            which = ", ".join(f"{str(d).removeprefix('torch.')} ({name})" for d, name in found.items())
            self.fail("", self.model, f"its floating tensors mix dtypes: {which}; a recipe has one dtype")
        return next(iter(found), torch.float32)


# --- containers -----------------------------------------------------------------------------


def _sequential(ex: _Exporter, module: nn.Module, path: str, frozen: bool) -> dict[str, Any]:
    """List form when the children are named 0, 1, ...; else the mapping form, in order."""
    nodes = _children(ex, module, path, frozen)
    numbered = list(nodes) == [str(i) for i in range(len(nodes))]
    return {"type": "Sequential", "layers": list(nodes.values()) if numbered else nodes}


def _module_list(ex: _Exporter, module: nn.Module, path: str, frozen: bool) -> dict[str, Any]:
    nodes = _children(ex, module, path, frozen, numbered=True)
    return {"type": ex.names[nn.ModuleList], **({"modules": list(nodes.values())} if nodes else {})}


def _module_dict(ex: _Exporter, module: nn.Module, path: str, frozen: bool) -> dict[str, Any]:
    clash = [k for k in module._modules if k in RESERVED]
    if clash:
        raise _Refusal(f"a key named {clash[0]!r} would make its mapping read as a node")
    nodes = _children(ex, module, path, frozen)
    return {"type": ex.names[nn.ModuleDict], **({"modules": nodes} if nodes else {})}


def _my_sequential(ex: _Exporter, module: nn.Module, path: str, frozen: bool) -> dict[str, Any]:
    nodes = _children(ex, module, path, frozen, numbered=True)
    return {"type": ex.names[MySequential], **({"layers": list(nodes.values())} if nodes else {})}


def _children(ex: _Exporter, module: nn.Module, path: str, frozen: bool, numbered: bool = False) -> dict[str, Any]:
    """Each child's node, after checking the container holds nothing a fresh one would not."""
    difference = _own_difference(module, type(module)(), children=False)
    if difference:
        raise _Refusal(difference)
    if None in module._modules.values():
        raise _Refusal(f"child {next(k for k, v in module._modules.items() if v is None)!r} is None")
    if numbered and list(module._modules) != [str(i) for i in range(len(module._modules))]:
        raise _Refusal(f"children must be named 0, 1, ... to be rebuilt, not {', '.join(module._modules)}")
    return {name: ex.node(child, _join(path, name), frozen) for name, child in module._modules.items()}


_FORMS: dict[type, Callable[[_Exporter, nn.Module, str, bool], dict[str, Any]]] = {
    nn.Sequential: _sequential,
    nn.ModuleList: _module_list,
    nn.ModuleDict: _module_dict,
    MySequential: _my_sequential,
}


# --- reading arguments back -----------------------------------------------------------------


def _transformer_layer(m: nn.Module) -> dict[str, Any]:
    return {
        "d_model": m.self_attn.embed_dim, "nhead": m.self_attn.num_heads, "dim_feedforward": m.linear1.out_features,
        "dropout": m.dropout.p, "activation": _activation(m.activation), "layer_norm_eps": m.norm1.eps,
        "batch_first": m.self_attn.batch_first, "bias": m.linear1.bias is not None,
    }  # fmt: skip


def _transformer(m: nn.Module) -> dict[str, Any]:
    first = m.encoder.layers[0] if len(m.encoder.layers) else _refuse("it has no encoder layer")
    return {
        **_transformer_layer(first), "num_encoder_layers": len(m.encoder.layers),
        "num_decoder_layers": len(m.decoder.layers), "layer_norm_eps": m.encoder.norm.eps,
        "norm_first": first.norm_first,
    }  # fmt: skip


def _stack(kind: str) -> Callable[[nn.Module], dict[str, Any]]:
    """TransformerEncoder / Decoder: the layer it copies, and how many copies."""

    def read(m: nn.Module) -> dict[str, Any]:
        if not len(m.layers):
            _refuse("it has no layer to copy")
        return {f"{kind}_layer": m.layers[0], "num_layers": len(m.layers)}

    return read


def _activation(fn: Any) -> Any:
    if isinstance(fn, nn.Module) or fn in _ACTIVATIONS:
        return _ACTIVATIONS.get(fn, fn)
    return _refuse(
        f"its activation {getattr(fn, '__qualname__', fn)!r} has no recipe spelling ('relu', 'gelu' or a module)"
    )


def _spelling(default: Any) -> Any:
    """A default as a recipe writes it (``activation=F.relu`` is ``relu``)."""
    try:
        return _ACTIVATIONS.get(default, default)
    except TypeError:  # unhashable
        return default


def _refuse(message: str) -> Any:
    raise _Refusal(message)


# Classes whose constructors store an argument elsewhere than under its name: where to read it.
_READERS: dict[type, Callable[[nn.Module], dict[str, Any]]] = {
    nn.TransformerEncoderLayer: _transformer_layer,
    nn.TransformerDecoderLayer: _transformer_layer,
    nn.TransformerEncoder: _stack("encoder"),
    nn.TransformerDecoder: _stack("decoder"),
    nn.Transformer: _transformer,
    nn.MultiheadAttention: lambda m: {"bias": m.out_proj.bias is not None, "add_bias_kv": m.bias_k is not None},
    nn.AdaptiveLogSoftmaxWithLoss: lambda m: {"cutoffs": list(m.cutoffs[:-1])},  # it appends n_classes
    nn.PairwiseDistance: lambda m: {"p": m.norm},
    MyLinear: lambda m: dict(zip(("in_units", "units"), m.weight.shape, strict=False)),
}


def _read_arguments(module: nn.Module) -> dict[str, Any]:
    """Every named argument the module's class takes, read back; a required one that is nowhere
    to be found refuses, an optional one keeps its default (the rebuild check catches a wrong one)."""
    cls = type(module)
    signature = args_of.arguments(cls)
    if signature is None:
        raise _Refusal("its constructor's signature cannot be read")
    try:
        special = _READERS.get(cls, lambda _: {})(module)
    except _Refusal:
        raise
    except Exception as e:  # noqa: BLE001  (a reader meets a module its table did not foresee)
        raise _Refusal(f"its arguments cannot be read back: {type(e).__name__}: {e}") from None
    found = {**vars(module), **module._modules, **module._parameters, **module._buffers}
    raw = {}
    for arg in signature.named:
        if arg.name in _NOT_ARGUMENTS:
            continue
        if arg.name in special:
            raw[arg.name] = special[arg.name]
        elif arg.name in found:
            raw[arg.name] = _plain(found[arg.name], arg)
        elif arg.required:
            raise _Refusal(
                f"its argument {arg.name!r} cannot be read back: {cls.__name__} keeps no attribute of that name"
            )
    return raw


def _plain(value: Any, arg: args_of.Argument) -> Any:
    """A recipe value: numbers, strings, lists; modules stay modules (they become nodes)."""
    if isinstance(arg.default, bool) and (value is None or isinstance(value, torch.Tensor)):
        return value is not None  # bias=True made a bias tensor
    if value is None or isinstance(value, (bool, int, float, str, nn.Module)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v, args_of.Argument(arg.name)) for v in value]
    raise _Refusal(f"its argument {arg.name!r} holds a {type(value).__name__}, which a recipe cannot write")


def _compact(raw: dict[str, Any], module: nn.Module, collapse: bool = False) -> dict[str, Any]:
    """Arguments without those equal to their defaults; with ``collapse``, ``[3, 3]`` as ``3``."""
    signature = args_of.arguments(type(module))
    out = {}
    for key, value in raw.items():
        if collapse and isinstance(value, list) and value and all(_same_number(v, value[0]) for v in value):
            value = value[0]
        arg = signature.get(key)
        if arg is not None and not arg.required and _same(value, _spelling(arg.default)):
            continue
        out[key] = value
    return out


def _positional(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments named like a node key (``PReLU``'s ``init``) go positionally, in ``_args_``."""
    clash = [k for k in kwargs if k in RESERVED]
    if not clash:
        return kwargs
    signature = args_of.arguments(cls)
    order = signature.positional
    if any(k not in order for k in clash):
        raise _Refusal(f"its keyword-only argument {clash[0]!r} is named like a node key")
    last = max(order.index(k) for k in clash)
    positional = [kwargs.pop(n) if n in kwargs else signature.get(n).default for n in order[: last + 1]]
    return {"_args_": positional, **kwargs}


def _construct(cls: type, kwargs: dict[str, Any], real: bool) -> nn.Module | str:
    """``cls(**kwargs)`` on ``meta`` (nothing allocated, nothing drawn) unless values must be
    compared; the exception as text when it refuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not real:
            try:
                with torch.device("meta"):
                    return cls(**kwargs)
            except Exception:  # noqa: BLE001  (a constructor that reads data: built for real below)
                pass
        try:
            return cls(**kwargs)
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}"


# --- comparing a module with its rebuild ----------------------------------------------------


def _difference(original: nn.Module, candidate: nn.Module) -> str | None:
    """How the rebuilt module differs from the original, or None: children and their classes,
    which of them are one module, and each module's own tensors, attributes and hooks."""
    ours, theirs = list(_walk(original)), list(_walk(candidate))
    paths, rebuilt = [p for p, _ in ours], [p for p, _ in theirs]
    if paths != rebuilt:
        missing = [p for p in paths if p not in rebuilt]
        return (
            f"child {missing[0]!r} is missing"
            if missing
            else f"it has a child {next(p for p in rebuilt if p not in paths)!r} the model lacks"
        )
    for (path, a), (_, b) in zip(ours, theirs, strict=False):
        if type(a) is not type(b):
            return f"{path!r} is a {type(b).__name__}, in the model a {type(a).__name__}"
    ours_canon, theirs_canon = _canonical(ours), _canonical(theirs)
    if ours_canon != theirs_canon:
        path = next(p for p in paths if ours_canon[p] != theirs_canon[p])
        rebuilt_as = f"one module with {theirs_canon[path]!r}" if theirs_canon[path] != path else "its own module"
        return f"{path!r} is {rebuilt_as}, unlike in the model"
    seen: set[int] = set()
    for (path, a), (_, b) in zip(ours, theirs, strict=False):
        if id(a) in seen or a is b:
            continue
        seen.add(id(a))
        difference = _own_difference(a, b)
        if difference:
            return f"{path}: {difference}" if path else difference
    return None


def _own_difference(a: nn.Module, b: nn.Module, children: bool = True) -> str | None:
    """Differences in what one module holds itself, not in its children (``children``: whether
    their empty slots count; a container's children are compared one by one instead)."""
    if children and [k for k, v in a._modules.items() if v is None] != [k for k, v in b._modules.items() if v is None]:
        return "its empty child slots differ"
    for kind, ours, theirs in (("parameter", a._parameters, b._parameters), ("buffer", a._buffers, b._buffers)):
        for name in dict.fromkeys([*ours, *theirs]):
            x, y = ours.get(name, "missing"), theirs.get(name, "missing")
            if isinstance(x, str) or isinstance(y, str) or (x is None) != (y is None):
                return f"{kind} {name!r} is {_state(y)} when rebuilt, {_state(x)} in the model"
            if x is not None and (list(x.shape) != list(y.shape) or _dtype_differs(x, y)):
                return f"{kind} {name!r} is {_state(y)} when rebuilt, {_state(x)} in the model"
    if a._non_persistent_buffers_set != b._non_persistent_buffers_set:
        return "its buffers that checkpoints leave out differ"
    for name in a._non_persistent_buffers_set:
        x, y = a._buffers[name], b._buffers[name]
        if x is not None and not (y.is_meta or torch.equal(x.detach().cpu(), y.detach().cpu())):
            return f"its buffer {name!r} is not saved in checkpoints, and a rebuild gives other values"
    for hooks in _HOOKS:
        if len(getattr(a, hooks)) != len(getattr(b, hooks)):
            return f"it has {hooks.strip('_').replace('_', ' ')} a recipe cannot express"
    attributes = dict.fromkeys(k for k in [*vars(a), *vars(b)] if k not in _MODULE_STATE)
    for key in attributes:
        x, y = vars(a).get(key, "(none)"), vars(b).get(key, "(none)")
        if not _same(x, y):
            return f"its attribute {key!r} is {_short(y)} when rebuilt, {_short(x)} in the model"
    return None


def _dtype_differs(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Floating tensors follow the recipe's ``dtype`` (checked model-wide); others must match."""
    return not (x.is_floating_point() and y.is_floating_point()) and x.dtype != y.dtype


def _same(x: Any, y: Any) -> bool:
    """Equal as a recipe means it: a list is a tuple, True is not 1, NaN is NaN. A tensor kept as
    an attribute (an RNN's ``_flat_weights``) is a view of the weights: its shape must match, its
    values come with the ``state_dict``."""
    if x is y:
        return True
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=False))
    if isinstance(x, weakref.ref) and isinstance(y, weakref.ref):
        return _same(x(), y())
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.shape == y.shape
            and not _dtype_differs(x, y)
        )
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and math.isnan(x) and math.isnan(y):
        return True
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001  (an object without a plain ==)
        return False


def _same_number(x: Any, y: Any) -> bool:
    return type(x) is type(y) and isinstance(x, (int, float)) and not isinstance(x, bool) and x == y


# --- small helpers --------------------------------------------------------------------------


def _registered_names() -> dict[type, str]:
    """Class -> the name a recipe uses for it (its own name where registered under several)."""
    names: dict[type, str] = {}
    for name, cls in args_of.entries(MODULES).items():
        if cls not in names or name == getattr(cls, "__name__", None):
            names[cls] = name
    return names


def _walk(
    module: nn.Module, prefix: str = "", stop: frozenset[int] = frozenset(), above: tuple = ()
) -> Iterator[tuple[str, nn.Module]]:
    """Every ``(path, module)`` below ``module``, a shared one under each of its paths, not
    entering the modules in ``stop``."""
    if id(module) in above:
        raise _Refusal(f"{prefix!r} contains itself")
    yield prefix, module
    for name, child in module._modules.items():
        if child is not None and id(child) not in stop:
            yield from _walk(child, _join(prefix, name), stop, (*above, id(module)))


def _canonical(walk: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """Each path -> the first path of the same module object."""
    first: dict[int, str] = {}
    return {path: first.setdefault(id(m), path) for path, m in walk}


def _modules_in(values: Any) -> Iterator[nn.Module]:
    for value in values:
        if isinstance(value, nn.Module):
            yield value
        elif isinstance(value, list):
            yield from _modules_in(value)


def _map_modules(value: Any, fn: Callable[[nn.Module], Any]) -> Any:
    if isinstance(value, nn.Module):
        return fn(value)
    if isinstance(value, list):
        return [_map_modules(v, fn) for v in value]
    return value


def _needs_values(module: nn.Module) -> bool:
    """A rebuild must be real (not ``meta``) to compare buffers that checkpoints leave out."""
    return any(m._non_persistent_buffers_set for m in module.modules())


def _all_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def _own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module._parameters.items() if p is not None]


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, UninitializedTensorMixin)


def _path_of(root: nn.Module, target: nn.Module) -> str:
    return next((p for p, m in root.named_modules() if m is target), "?")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _shared_name(module: nn.Module, path: str, taken: dict[str, Any]) -> str:
    """``linear_2`` for the Linear first met at ``2``: readable, and unique in ``shared``."""
    kind = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(module).__name__).lower()
    base = f"{kind}_{re.sub(r'[^0-9A-Za-z_]+', '_', path)}" if path else kind
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def _state(t: Any) -> str:
    if t is None:
        return "None"
    if isinstance(t, str):
        return t
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={_short(v) if not isinstance(v, nn.Module) else type(v).__name__ + '(...)'}" for k, v in kwargs.items()
    )
