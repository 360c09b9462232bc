"""Recipe tree -> modules: one walk over a plain tree, building each node once.

Each node form of ``recipe.grammar`` has a small handler in ``HANDLERS``, so a new form is a new
entry there and here. Sharing falls out of memoization: ``{ref: name}`` builds
``shared.name`` on first use and returns that same instance ever after, while ``${blocks.x}``
(resolved earlier, in ``recipe``) pastes a copy that builds into a new module. Problems are
collected along the walk, each with its key path, and raised together at the end.
"""

from __future__ import annotations

import contextlib
import re
import string
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedTensorMixin

from composer import limits as budget
from composer.build.materialize import allocate
from composer.build.placement import (
    META,
    Make,
    can_load_on_meta,
    leaves_unfilled,
    maker,
    makes_no_tensors,
    refilled,
    resets_itself,
)
from composer.errors import (
    PASSED_THROUGH,
    ConfigError,
    did_you_mean,
    first_line,
    has_control,
    listing,
    shown,
    unexpected,
    unknown,
)
from composer.init.defaults import writes_defaults
from composer.init.initializers import Scheme, parse_scheme
from composer.modules.graph import (
    Buffer,
    CallEntry,
    Graph,
    GraphSpec,
    ModuleEntry,
    OpEntry,
    RepeatChain,
    RepeatParallel,
)
from composer.modules.inner import inner_copies, is_container
from composer.modules.ops import lookup_op, make_op, op_callable, op_problems
from composer.modules.registry import MODULES, resolve_target
from composer.modules.signatures import describe, is_int, op_arguments, signature_of
from composer.modules.torch_ops import TorchOp
from composer.recipe.count import count_modules
from composer.recipe.grammar import (
    BUFFER_KEYS,
    CALL,
    CALLED,
    FORWARD,
    GRAPH,
    IN,
    OP,
    PARAM_KEYS,
    REF,
    REPEAT,
    SEQUENTIAL,
    TARGET,
    TYPE_FORMS,
    USE,
    Form,
    arguments_of,
    form_of,
    is_node,
)
from composer.recipe.plain import SCALARS
from composer.recipe.read import Recipe, active_ties, dtype_of
from composer.recipe.templates import (
    INDEX,
    Template,
    evaluate,
    expand,
    index_expression,
    is_template,
    parse_templates,
    split_use,
    substitute_index,
)
from composer.recipe.walk import Visits, child_path

DEFAULT_TARGETS = ("torch.nn.", "composer.modules.blocks.")
_RESERVED = frozenset({*CALLED.reserved, *TARGET.reserved})  # a called node's keys that are not its kwargs

# A class built without its input size becomes its Lazy counterpart, which infers it.
LAZY: dict[type[nn.Module], tuple[type[nn.Module], str]] = {
    nn.Linear: (nn.LazyLinear, "in_features"),
    **{getattr(nn, f"Conv{d}d"): (getattr(nn, f"LazyConv{d}d"), "in_channels") for d in (1, 2, 3)},
    **{getattr(nn, f"ConvTranspose{d}d"): (getattr(nn, f"LazyConvTranspose{d}d"), "in_channels") for d in (1, 2, 3)},
    **{getattr(nn, f"BatchNorm{d}d"): (getattr(nn, f"LazyBatchNorm{d}d"), "num_features") for d in (1, 2, 3)},
}


@dataclass
class BuildNotes:
    """What the walk leaves beside the modules: inline ``init:`` specs and ``frozen`` modules."""

    inline_init: list[tuple[nn.Module, str, Any]] = field(default_factory=list)
    frozen: list[nn.Module] = field(default_factory=list)
    ties: dict[str, str] = field(default_factory=dict)  # dst parameter path -> src, once applied
    # False when every class built is known to make no lazy layer: no walk needed to look for one
    may_be_lazy: bool = False
    # False when nothing the walk made can be on ``meta``: every known layer unfilled on the device
    # or made without tensors, no user's block, no node placed by its own ``device``. Then nothing
    # is to be allocated, and no walk looks for it
    may_hold_meta: bool = False


class Builder:
    """Walks one recipe. ``build`` returns a module, or None after recording the problem."""

    def __init__(
        self,
        recipe: Recipe,
        allow_targets: Sequence[str] = DEFAULT_TARGETS,
        device: torch.device = META,
        known_on_meta: bool = True,
        initializes: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        shared = recipe.get("shared")  # not a mapping: top_level_problems reports it
        self.shared_nodes: Mapping[str, Any] = shared if isinstance(shared, Mapping) else {}
        self.allow_targets = tuple(allow_targets)
        self.device = device
        self.dtype = dtype  # the recipe's top-level dtype: floating computed buffers take it
        # where known layers make their tensors (``placement``): on meta, unless this walk builds
        # everything for real (a load whose file cannot fill a meta build)
        self.known_device = META if known_on_meta else device
        # a lazy layer of a build materializes on ``device`` (its first forward); a load's takes
        # the file's tensors on meta, as known layers do
        self.lazy_device = device if initializes else self.known_device
        # a build that initializes fills each tensor of a layer whose reset is written per tensor
        # from those tables (``defaults.written_reset``): the layer is made on ``device`` without
        # its reset, the memory left as it is (``placement.maker``), nothing to allocate later
        self.unfilled_device = device if initializes and known_on_meta else None
        self._makers: dict[type, Make] = {}  # each class's construction, chosen once
        self._filled_makers: dict[type, Make] = {}  # the same where no layer is left unfilled
        self.notes = BuildNotes()
        self.problems: list[tuple[str, str]] = []
        self._shared: Visits[str, nn.Module | None] = Visits()  # shared.name -> its one module
        blocks = recipe.get("blocks")
        blocks = blocks if isinstance(blocks, Mapping) else {}
        self.templates: dict[str, Template] = parse_templates(blocks, problems=self.problems)
        # templates reported as invalid: a use of one is not also an unknown template
        self.invalid_templates = {name for name, entry in blocks.items() if is_template(entry)} - self.templates.keys()
        self._using: Visits[str, None] = Visits()  # templates being expanded: a cycle is an error
        # Leaf nodes of a shape already checked: (type, keys, value types) -> the class to call.
        # The 1,000 identical blocks of a deep recipe are then checked once, not 1,000 times.
        self._checked: dict[tuple, type] = {}
        # The modules budget: nodes built so far, and the copies the enclosing Repeats ask for.
        self.max_modules = budget.current().modules
        self.built = 0
        self.scale = 1
        # The nodes budget, on work: values walked (each copy's arguments) and copied (template pastes).
        self.max_values = budget.current().nodes
        self.walked = 0
        # The key path of the deepest node being built: where an error nobody expected is reported.
        self.at = "model"
        # The first exception a constructor raised: the cause of the ConfigError that reports it.
        self.cause: Exception | None = None

    def build_model(self, node: Any) -> nn.Module:
        """Build the model node and every shared module; raise all problems found at once."""
        nodes = {"model": node, **{f"shared.{name}": n for name, n in self.shared_nodes.items()}}
        asked, where = count_modules(nodes, self.templates, self.max_modules)
        if asked > self.max_modules:  # before building any (templates of templates: 10^9 modules)
            self.too_many(where or "model", "the number of modules the recipe asks for")
        try:
            model = self.build(node, "model")
            for name in self.shared_nodes:
                self._shared_module(name)  # an unreferenced shared module is still checked
        except PASSED_THROUGH:
            raise
        except Exception as e:  # a bug of ours or of torch on a strange recipe: still a ConfigError, at its place
            raise ConfigError([*self.problems, (self.at, unexpected(e))]) from e
        if self.problems:
            # a template's problem once, not per use; a constructor's exception is the cause
            raise ConfigError(list(dict.fromkeys(self.problems))) from self.cause
        return model

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def too_many(self, path: str, what: str) -> None:
        """Stop the walk: the recipe asks for more modules than ``limits.modules``."""
        raise ConfigError(budget.exceeded("modules", what, self.max_modules), path)

    def spend(self, values: int, path: str) -> None:
        """Count values walked or copied; past ``limits.nodes``, stop the walk at ``path``.

        The recipe itself is within the budget (``recipe/plain.py``); each Repeat copy walks its
        arguments again and each template paste copies its argument: a Repeat of 2,000 copies of a
        200,000-value argument walks 4 * 10**8."""
        self.walked += values
        if self.walked > self.max_values:
            what = "the number of values the build walks and copies (each copy's arguments, each template paste)"
            raise ConfigError(budget.exceeded("nodes", what, self.max_values), path)

    def build(self, node: Any, path: str) -> nn.Module | None:
        """The module for ``node`` at key ``path``, or None after recording what is wrong."""
        self.built += 1
        if self.built > self.max_modules:
            self.too_many(path, "the number of modules built")
        module = self._from_checked(node)
        return module if module is not None else self._build(node, path)

    def build_item(self, node: Any, parent: str, index: int | str) -> nn.Module | None:
        """A child of a container: its key path is only formatted where the fast path misses."""
        self.built += 1
        if self.built > self.max_modules:
            self.too_many(child_path(parent, index), "the number of modules built")
        module = self._from_checked(node)
        if module is None:
            module = self._build(node, child_path(parent, index))
        return module

    def charge_inner(self, cls: type, kwargs: Mapping[str, Any], path: str) -> None:
        """Count what a torch container makes inside its constructor (``num_layers`` copies of a
        built ``encoder_layer``, an RNN's parameters), before it runs: the values a template
        computed, which the tree's count could not see."""
        for copies in inner_copies(cls, kwargs):
            layer = kwargs.get(copies.of) if copies.of else None
            each = sum(1 for _ in layer.modules()) if isinstance(layer, nn.Module) else copies.each
            self.built += copies.count * each
            if self.built > self.max_modules:
                self.too_many(f"{path}.{copies.key}", f"{copies.count:,} copies made by {cls.__name__}")

    def _from_checked(self, node: Any) -> nn.Module | None:
        """A leaf node of a shape already checked, built directly; None to take the full path."""
        if type(node) is not dict or type(node.get("type")) is not str:
            return None
        if self.walked + len(node) > self.max_values:
            return None  # the full path spends it, with the key path
        self.walked += len(node)
        shape = _leaf_key(node)
        cls = self._checked.get(shape)
        if cls is None:
            return None
        kwargs = dict(node)
        del kwargs["type"]
        try:
            module = self._instantiate(cls, (), kwargs)
        except MemoryError:
            raise
        except Exception:
            return None  # the full path reports it, with its key path
        return module if isinstance(module, nn.Module) else None

    def _build(self, node: Any, path: str) -> nn.Module | None:
        if isinstance(node, Mapping):
            self.spend(len(node), path)
        if not is_node(node):
            self.fail(path, f"expected a node (a mapping with 'type', 'ref' or '_target_'), got {describe(node)}")
            return None
        outer, self.at = self.at, path  # not restored by an exception: it then names the deepest node
        form = form_of(node)
        handler = _conflict if form is TARGET and CALLED.marker in node else HANDLERS[form]
        module = handler(self, node, path)
        if module is not None and form is not REF:
            self._extras(node, module, path)
        self.at = outer
        return module

    def _extras(self, node: Mapping, module: nn.Module, path: str) -> None:
        """The keys any node may carry (``grammar.COMMON``): inline ``init:`` and ``frozen``."""
        if "init" in node:
            if isinstance(node["init"], Mapping):
                self.notes.inline_init.append((module, f"{path}.init", node["init"]))
            else:
                self.fail(f"{path}.init", f"expected a mapping of parameter: initializer, got {describe(node['init'])}")
        frozen = node.get("frozen", False)
        if not isinstance(frozen, bool):
            self.fail(f"{path}.frozen", f"expected true or false, got {describe(frozen)}")
        elif frozen:
            self.notes.frozen.append(module)

    def _shared_module(self, name: str) -> nn.Module | None:
        """The one instance of ``shared.name``, built on first use; a cycle of refs is reported."""
        if name in self._shared.done:
            return self._shared.done[name]
        if name in self._shared:
            self.fail(f"shared.{name}", f"shared module refers to itself: {self._shared.cycle(name)}")
            return None
        self._shared.enter(name)
        with self.filled():  # a user's block may be given it
            return self._shared.finish(name, self.build(self.shared_nodes[name], f"shared.{name}"))

    def value(self, value: Any, path: str) -> Any:
        """An argument: nodes become modules, lists and mappings are walked, the rest passes."""
        if type(value) in SCALARS:
            return value
        if is_node(value):
            return self.build(value, path)
        if isinstance(value, list):
            self.spend(len(value), path)
            return [self.value(v, child_path(path, i)) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            self.spend(len(value), path)
            return {k: self.value(v, child_path(path, k)) for k, v in value.items()}
        return value

    def remember_checked(self, node: Mapping, cls: type) -> None:
        """Note a plain leaf node's shape as checked, so the identical nodes after it skip the checks."""
        if (
            "type" in node
            and not (node.keys() & _RESERVED - {"type"})
            and all(type(v) in SCALARS for v in node.values())
            and not is_container(cls)  # its num_layers is counted at each build
        ):
            self._checked[_leaf_key(node)] = cls

    def instantiate(self, label: str, cls: type, args: Sequence, kwargs: dict, path: str) -> nn.Module | None:
        """``cls(*args, **kwargs)``, its failure or a non-module result recorded at ``path``."""
        if not resets_itself(cls) or issubclass(cls, LazyModuleMixin):
            self.notes.may_be_lazy = True
        try:
            module = self._instantiate(cls, args, kwargs)
        except MemoryError:  # the machine's limit, not the recipe's mistake
            raise
        except Exception as e:  # the constructor's own complaint (a user's too), given its place in the recipe
            self.fail(path, f"{label}(...) raised {type(e).__name__}: {e}")
            self.cause = self.cause or e
            return None
        if not isinstance(module, nn.Module):
            self.fail(path, f"{label}(...) returned {type(module).__name__}, not an nn.Module")
            return None
        return module

    def _instantiate(self, cls: type, args: Sequence, kwargs: dict) -> Any:
        """``cls(*args, **kwargs)`` where the walk builds (``placement``): a known layer unfilled
        on ``device`` or on ``meta`` (its tensors are filled, or allocated and filled, afterwards),
        and a user's block for real on ``device``, with its own fills: its constructor may compute
        from data (on ``meta`` that fails, or imports seconds of torch's meta kernels) or make a
        constant its reset leaves alone. A build's lazy layer is made on ``device`` too: its first
        forward materializes it there. A node that gives its own ``device`` is made as written there
        (meta included: then allocated as any other)."""
        if "device" in kwargs:
            self.notes.may_hold_meta = True
            return self._maker(cls, unfilled=False)(args, kwargs)
        make = self._makers.get(cls)
        if make is None:
            make = self._makers[cls] = self._maker(cls, unfilled=self.unfilled_device is not None)
        return make(args, kwargs)

    @contextlib.contextmanager
    def filled(self) -> Iterator[None]:
        """Inside, no layer is left unfilled: a user's block may read the tensors of the modules it
        is given (``weight_norm`` does), so its arguments and the shared modules are built as
        loads are, known layers on ``meta``; where one of its own tensors is then left unwritten,
        ``construct`` builds everything for real (``placement.refilled``)."""
        if self.unfilled_device is None:
            yield
            return
        saved = self.unfilled_device, self._makers
        self.unfilled_device, self._makers = None, self._filled_makers
        try:
            yield
        finally:
            self.unfilled_device, self._makers = saved

    def _maker(self, cls: type, unfilled: bool) -> Make:
        """How ``_instantiate`` makes ``cls``: unfilled, on ``meta``, or on a device as written.
        A class that makes no tensor (an activation) is made as written: there is nothing to place."""
        if unfilled and leaves_unfilled(cls):
            return maker(cls, self.unfilled_device, unfilled=True)
        if not resets_itself(cls):
            self.notes.may_hold_meta = True  # a user's block makes its tensors where it chooses
            device = self.device
        elif makes_no_tensors(cls):
            device = self.device
        else:
            device = self.lazy_device if issubclass(cls, LazyModuleMixin) else self.known_device
        return maker(cls, self.on(device))

    def on(self, device: torch.device) -> torch.device:
        """``device``, noted where it is ``meta`` (``BuildNotes.may_hold_meta``)."""
        if device.type == "meta":
            self.notes.may_hold_meta = True
        return device


def _leaf_key(node: Mapping) -> tuple:
    """A leaf node's shape, one flat tuple (one is made for every node): its type, its keys, then
    the types of its values."""
    return (node["type"], *node, *map(type, node.values()))


# --- node forms -------------------------------------------------------------------------------


def _conflict(builder: Builder, node: Mapping, path: str) -> None:
    builder.fail(path, "a node has 'type' or '_target_', not both")


def _ref(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{ref: name}``: the one instance built from ``shared.name``."""
    for key in node:
        if key != REF.marker:
            builder.fail(f"{path}.{key}", "a ref node has no other keys: configure the module in shared")
    name = node[REF.marker]
    if not isinstance(name, str) or name not in builder.shared_nodes:
        if not shown(builder.problems):
            builder.fail(f"{path}.ref", f"no shared module {name!r}")
            return None
        hint = did_you_mean(str(name), builder.shared_nodes)
        builder.fail(f"{path}.ref", f"no shared module {name!r}{hint}; shared: {listing(builder.shared_nodes)}")
        return None
    return builder._shared_module(name)


def _call(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """A registered ``type`` or an allowed ``_target_``, called with its (built) arguments."""
    found = _class_of(builder, node, path)
    if found is None:
        return None
    label, cls = found
    before = len(builder.problems)
    if resets_itself(cls):
        args, kwargs = _arguments(builder, node, path)
    else:
        with builder.filled():  # a user's block: it may read its arguments' tensors
            args, kwargs = _arguments(builder, node, path)
    lazy = LAZY.get(cls)
    deferred = lazy[1] if lazy and not args and lazy[1] not in kwargs else None
    sig = signature_of(cls)
    if sig is not None:
        optional = (deferred,) if deferred else ()
        builder.problems += sig.problems(label, args, kwargs, path, optional, hint=shown(builder.problems))
    if len(builder.problems) > before:
        return None
    builder.charge_inner(cls, kwargs, path)
    module = builder.instantiate(label, lazy[0] if deferred else cls, args, kwargs, path)
    if module is not None and not args:
        builder.remember_checked(node, lazy[0] if deferred else cls)
    return module


def _class_of(builder: Builder, node: Mapping, path: str) -> tuple[str, type] | None:
    """The node's label and class: a registered ``type`` or an allowed ``_target_``."""
    try:
        if "type" in node:
            hint = shown(builder.problems)  # past the problems a message shows: no closest name to compute
            return node["type"], MODULES.lookup(node["type"], f"{path}.type", TYPE_FORMS, hint=hint)
        return node["_target_"], resolve_target(node["_target_"], builder.allow_targets, f"{path}._target_")
    except ConfigError as e:
        builder.problems += e.problems
        return None


def _arguments(builder: Builder, node: Mapping, path: str) -> tuple[list, dict]:
    """``_args_`` and the kwargs, nodes among them built first."""
    raw_args = node.get("_args_", [])
    if not isinstance(raw_args, list):
        builder.fail(f"{path}._args_", f"expected a list of positional arguments, got {describe(raw_args)}")
        raw_args = []
    args = [v if type(v) in SCALARS else builder.value(v, f"{path}._args_[{i}]") for i, v in enumerate(raw_args)]
    kwargs = {
        k: v if type(v) in SCALARS else builder.value(v, f"{path}.{k}") for k, v in node.items() if k not in _RESERVED
    }
    if isinstance(kwargs.get("dtype"), str):  # any kwarg named dtype takes a dtype's name
        try:
            kwargs["dtype"] = dtype_of(kwargs["dtype"], f"{path}.dtype")
        except ConfigError as e:
            builder.problems += e.problems
    return args, kwargs


def _sequential(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{type: Sequential, layers: [...]}`` or ``layers: {name: node}``: an ``nn.Sequential``."""
    _only_keys(builder, node, path, SEQUENTIAL)
    layers, where = node.get("layers", []), f"{path}.layers"
    if isinstance(layers, list):
        children = [builder.build_item(n, where, i) for i, n in enumerate(layers)]
        if any(child is None for child in children):
            return None
        return nn.Sequential(*children)  # named 0, 1, ...: nothing to check
    elif isinstance(layers, Mapping):
        names = [str(k) for k in layers]
        children = [builder.build_item(n, where, str(k)) for k, n in layers.items()]
    else:
        builder.fail(f"{path}.layers", f"expected a list or a mapping of nodes, got {describe(layers)}")
        return None
    return _named_sequential(builder, names, children, f"{path}.layers")


_MODES = ("chain", "parallel")


def _repeat(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{type: Repeat, times: N, names: "block {i}", body: node}``: N independent copies, an
    ``nn.Sequential`` (``mode: parallel``: side by side, a ``RepeatParallel``)."""
    _only_keys(builder, node, path, REPEAT)
    times, names = node.get("times"), node.get("names", "{i}")
    mode, stack = node.get("mode", "chain"), node.get("stack")
    if mode not in _MODES:
        builder.fail(f"{path}.mode", unknown("mode", mode, _MODES))
        return None
    if stack is not None and (mode != "parallel" or not is_int(stack)):
        why = "stack is for mode: parallel" if mode != "parallel" else f"expected an integer, got {describe(stack)}"
        builder.fail(f"{path}.stack", why)
        return None
    if not is_int(times) or times < 1:
        builder.fail(f"{path}.times", f"expected a positive integer, got {describe(times)}")
        return None
    if builder.scale * times > builder.max_modules:  # before a label is made or a copy built
        outer = f" inside Repeats of {builder.scale:,} copies" if builder.scale > 1 else ""
        builder.too_many(f"{path}.times", f"{times:,} copies{outer}")
    labels = _labels(names, times)
    if isinstance(labels, str):
        builder.fail(f"{path}.names", labels)
        return None
    if "body" not in node:
        builder.fail(f"{path}.body", "missing: the node to repeat")
        return None
    builder.scale *= times
    try:
        copies = _repeat_body(builder, node, path, times, labels)
    finally:
        builder.scale //= times
    if copies is None or mode == "chain":
        return copies
    return RepeatParallel(OrderedDict(copies._modules), stack=stack)


def _repeat_body(builder: Builder, node: Mapping, path: str, times: int, labels: list[str]) -> nn.Module | None:
    body, where = node["body"], f"{path}.body"
    if isinstance(body, Mapping) and "use" in body:  # $i in its arguments: copy i's index
        copies = []
        for i in range(times):
            try:
                copies.append(builder.build(substitute_index(body, i, where), where))
            except ConfigError as e:
                builder.problems += e.problems
                return None
            if copies[-1] is None:
                return None
    else:
        first = builder.build(body, where)
        if first is None:
            return None  # its problems are recorded once, not once per copy
        copies = [first] + [builder.build(body, where) for _ in range(times - 1)]
    return _named_sequential(builder, labels, copies, f"{path}.names")


_MAX_WIDTH = 255  # a field width or precision in Repeat's names: a name is a file-name-sized string


def _labels(names: Any, times: int) -> list[str] | str:
    """Repeat's child names: each field of ``names`` an expression of ``i`` (``{i}``, ``{i + 1}``,
    ``{i:03d}``) evaluated by the restricted evaluator for each copy, formatted by its spec; what
    is wrong (a str) for anything else (``{i:>100000000000}`` would take a terabyte,
    ``{i.__class__}`` reads attributes)."""
    expected = f"expected a format of i such as 'block {{i}}' or 'layer{{i + 1}}', got {describe(names)}"
    if not isinstance(names, str):
        return expected
    try:
        fields = list(string.Formatter().parse(names))
    except ValueError:
        return expected
    parts: list[tuple[str, Any, str]] = []
    for literal, name, spec, conversion in fields:
        if name is None:
            parts.append((literal, None, ""))
            continue
        widths = re.findall(r"\d+", spec or "")  # a 5,000-digit width is no int Python will read
        if (
            not name.strip()
            or conversion
            or "{" in (spec or "")
            or any(len(n) > 9 or int(n) > _MAX_WIDTH for n in widths)
        ):
            return expected
        try:
            parts.append((literal, index_expression(name), spec or ""))
        except ConfigError as e:
            return f"{e.problems[0][1]}; {expected}"
    labels = []
    for i in range(times):
        try:
            labels.append(
                "".join(
                    lit + ("" if tree is None else format(evaluate(tree, {INDEX: i}), spec))
                    for lit, tree, spec in parts
                )
            )
        except ConfigError as e:
            return f"{e.problems[0][1]} (for i = {i})"
        except (ValueError, TypeError) as e:
            return f"cannot format copy {i}'s name: {e}"
    return labels


# Child names a Sequential cannot take: the attributes nn.Module and nn.Sequential already have
# (``add_module('forward', ...)`` raises KeyError).
_TAKEN = frozenset(dir(nn.Sequential)) | frozenset(vars(nn.Sequential()))


def _named_sequential(builder: Builder, names: list[str], children: list, path: str) -> nn.Module | None:
    if any(child is None for child in children):
        return None
    for name in names:
        if not name or "." in name:
            builder.fail(path, f"names must be non-empty and without '.': {name!r}")
        elif has_control(name):
            builder.fail(path, f"name {name!r} holds a control character: names reach terminals and files")
        elif name in _TAKEN:
            builder.fail(path, f"name {name!r} is an attribute nn.Sequential uses; choose another name")
        else:
            continue
        return None
    if len(set(names)) < len(names):
        builder.fail(path, "names repeat")
        return None
    return nn.Sequential(OrderedDict(zip(names, children, strict=True)))


def _use(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{use: template, <args>}``: an independent copy of a template's body, arguments filled in."""
    name, args, _extras = split_use(node)
    template = builder.templates.get(name) if isinstance(name, str) else None
    if template is None and isinstance(name, str) and name in builder.invalid_templates:
        return None  # its problems are reported at blocks.<name>
    if template is None:
        builder.fail(f"{path}.use", unknown("template", name, builder.templates, hint=shown(builder.problems)))
        return None
    if name in builder._using:
        builder.fail(f"{path}.use", f"templates use each other in a cycle: {builder._using.cycle(name)}")
        return None
    try:
        body = expand(template, args, path, spend=lambda n: builder.spend(n, path))
    except ConfigError as e:
        builder.problems += e.problems
        return None
    builder._using.enter(name)
    try:
        return builder.build(body, f"{template.key_path}.body")
    finally:
        builder._using.leave(name)


def _op_kwargs(builder: Builder, node: Mapping, path: str) -> dict[str, Any]:
    """An op node's keys, a ``dtype`` name as the torch dtype (as for any kwarg named dtype)."""
    kwargs = arguments_of(node, OP)
    if isinstance(kwargs.get("dtype"), str):
        try:
            kwargs["dtype"] = dtype_of(kwargs["dtype"], f"{path}.dtype")
        except ConfigError as e:
            builder.problems += e.problems
    return kwargs


def _op(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{op: name, <kwargs>}`` where a module stands (a Sequential's item): an ``Op`` module."""
    try:
        return make_op(node[OP.marker], _op_kwargs(builder, node, path), path)
    except ConfigError as e:
        builder.problems += e.problems
        return None


_PARAM_KEYS = tuple(key.name for key in PARAM_KEYS)
_BUFFER_KEYS = tuple(key.name for key in BUFFER_KEYS)


def _graph(builder: Builder, node: Mapping, path: str) -> nn.Module | None:
    """``{type: Graph, inputs, nodes, output, params, buffers}``: children wired by name (see ``graph``)."""
    _only_keys(builder, node, path, GRAPH)
    inputs = node.get("inputs", ["x"])
    if not (isinstance(inputs, list) and all(isinstance(n, str) for n in inputs)):
        builder.fail(f"{path}.inputs", f"expected a list of input names such as [x], got {describe(inputs)}")
        return None
    nodes = node.get("nodes")
    if not isinstance(nodes, Mapping) or not nodes:
        builder.fail(f"{path}.nodes", f"expected a mapping of name: entry, got {describe(nodes)}")
        return None
    raw_params = _mapping(builder, node, "params", path, "{shape: [...], init: ...}")
    raw_buffers = _mapping(builder, node, "buffers", path, "{shape: [...]} or {value: [...]}")
    if raw_params is None or raw_buffers is None:
        return None
    before = len(builder.problems)
    entries = [
        _graph_entry(builder, str(name), entry, f"{path}.nodes.{name}", first=i == 0 and not inputs)
        for i, (name, entry) in enumerate(nodes.items())
    ]
    params = {
        name: _graph_param(builder, str(name), spec, f"{path}.params.{name}") for name, spec in raw_params.items()
    }
    buffers = {name: _graph_buffer(builder, spec, f"{path}.buffers.{name}") for name, spec in raw_buffers.items()}
    if len(builder.problems) > before:
        return None
    try:
        graph = Graph(GraphSpec(entries, tuple(inputs), params, node.get("output"), buffers), path)
    except ConfigError as e:
        builder.problems += e.problems
        return None
    for name, spec in raw_params.items():
        if "init" in spec:
            builder.notes.inline_init.append((graph, f"{path}.params.{name}", {name: spec["init"]}))
    return graph


def _mapping(builder: Builder, node: Mapping, key: str, path: str, entry: str) -> Mapping | None:
    """A Graph's ``params`` or ``buffers``: a mapping of name: spec (absent: none)."""
    value = node.get(key) or {}
    if not isinstance(value, Mapping):
        builder.fail(f"{path}.{key}", f"expected a mapping of name: {entry}, got {describe(value)}")
        return None
    return value


def _entry_inputs(builder: Builder, entry: Mapping, path: str) -> list[str] | dict[str, str] | None:
    """An entry's ``in:``: a name, a list of names, or argument: name (passed by keyword)."""
    inputs = entry.get(IN.name)
    if isinstance(inputs, str):
        return [inputs]
    if inputs is None or (isinstance(inputs, list) and all(isinstance(n, str) for n in inputs)):
        return inputs
    if isinstance(inputs, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
        return dict(inputs)
    builder.fail(f"{path}.in", f"expected a name, a list of names or argument: name, got {describe(inputs)}")
    return None


def _graph_entry(builder: Builder, name: str, entry: Any, path: str, first: bool = False) -> Any:
    """One entry of ``nodes``: a call of an earlier entry, an op, or a module node. ``first``: the
    first entry of a Graph without inputs, given none by default."""
    if not isinstance(entry, Mapping):
        builder.fail(path, f"expected a node, an op or a call, got {describe(entry)}")
        return None
    inputs = _entry_inputs(builder, entry, path)
    constants = entry.get(FORWARD.name) or {}
    if not (isinstance(constants, Mapping) and all(isinstance(k, str) for k in constants)):
        builder.fail(f"{path}.forward", f"expected a mapping of argument: value, got {describe(constants)}")
        constants = {}
    form = form_of(entry, entry=True)
    if form is CALL:
        for key in entry:
            if key not in CALL.reserved:
                builder.fail(f"{path}.{key}", "a call entry has only 'call', 'in' and 'forward'")
        return CallEntry(name, entry[CALL.marker], inputs, dict(constants))
    if form is OP:
        label = entry[OP.marker]
        try:
            fn = lookup_op(label, f"{path}.op")
        except ConfigError as e:
            builder.problems += e.problems
            return None
        kwargs = _op_kwargs(builder, entry, path)
        count = int(not first) if inputs is None else len(inputs) if isinstance(inputs, list) else list(inputs)
        builder.problems += op_problems(label, fn, kwargs, count, path)
        return OpEntry(name, op_callable(fn, kwargs, count), kwargs, inputs, label=label)
    module = builder.build({k: v for k, v in entry.items() if k not in (IN.name, FORWARD.name)}, path)
    if form in (REPEAT, USE) and type(module) is nn.Sequential and isinstance(inputs, list) and len(inputs) > 1:
        module.__class__ = RepeatChain  # a Repeat's copies (a template's): the first input through, the others to each
    return ModuleEntry(name, module, inputs, dict(constants))


def _empty(builder: Builder, shape: Any, path: str) -> torch.Tensor | None:
    """An empty tensor of ``shape`` (a list of positive integers) where known layers are made."""
    if not isinstance(shape, list) or not shape or not all(is_int(d) and d > 0 for d in shape):
        builder.fail(path, f"expected a list of positive integers, got {describe(shape)}")
        return None
    try:
        return torch.empty(shape, device=builder.on(builder.known_device))
    except (RuntimeError, OverflowError) as e:  # more elements than a tensor can count
        builder.fail(path, f"cannot make a tensor of shape {shape}: {first_line(e)}")
        return None


def _keys_and_flag(
    builder: Builder, spec: Mapping, keys: tuple[str, ...], flag: str, default: bool, path: str
) -> bool | None:
    """A param's or buffer's spec: each key outside ``keys`` reported, and its boolean ``flag``
    (``frozen``, ``persistent``; ``default`` when absent), None (reported) when it is not a bool."""
    for key in spec:
        if key not in keys:
            builder.fail(f"{path}.{key}", unknown("key", key, keys))
    value = spec.get(flag, default)
    if not isinstance(value, bool):
        builder.fail(f"{path}.{flag}", f"expected true or false, got {describe(value)}")
        return None
    return value


def _graph_param(builder: Builder, name: str, spec: Any, path: str) -> nn.Parameter | None:
    """``{shape: [...], init: spec, frozen: bool}``: a parameter of the graph (default init: zeros)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("shape"), list):
        builder.fail(path, f"expected {{shape: [...], init: ..., frozen: ...}}, got {describe(spec)}")
        return None
    frozen = _keys_and_flag(builder, spec, _PARAM_KEYS, "frozen", False, path)
    tensor = _empty(builder, spec["shape"], f"{path}.shape")
    return None if tensor is None else nn.Parameter(tensor, requires_grad=not frozen)


def _graph_buffer(builder: Builder, spec: Any, path: str) -> Buffer | None:
    """``{shape: [...], init: spec}`` or ``{value: chain or Graph}``, ``persistent``: a buffer of
    the graph. A computed one is computed here, where known layers are made (on ``meta``: its
    shape), and again by its fill wherever its tensor gets storage (initialization, a reset)."""
    if not isinstance(spec, Mapping) or ("shape" in spec) == ("value" in spec):
        why = (
            f"expected {{shape: [...], init: ...}} or {{value: [...]}} (shape or value, not both), got {describe(spec)}"
        )
        builder.fail(path, why)
        return None
    persistent = _keys_and_flag(builder, spec, _BUFFER_KEYS, "persistent", True, path)
    if persistent is None:
        return None
    if "value" in spec:
        if "init" in spec:
            builder.fail(f"{path}.init", "a buffer with a value takes no init: its value is computed")
            return None
        return _computed_buffer(builder, spec["value"], f"{path}.value", persistent)
    tensor = _empty(builder, spec["shape"], f"{path}.shape")
    fill: Callable[[torch.Tensor, torch.Generator | None], None] | None = None
    if "init" in spec:
        problems: list[tuple[str, str]] = []
        scheme = parse_scheme(spec["init"], f"{path}.init", problems)
        builder.problems += problems
        fill = None if scheme is None else _SchemeFill(scheme, path)
    if tensor is None:
        return None
    if not tensor.is_meta:  # made for real (a load's rebuild): a non-persistent one keeps this
        with torch.no_grad():
            (fill or _zero)(tensor, None)
    return Buffer(tensor, persistent, fill)


def _zero(tensor: torch.Tensor, _generator: torch.Generator | None) -> None:
    tensor.zero_()


@dataclass(frozen=True)
class _SchemeFill:
    """A shape buffer's ``init:``: from initialization's stream, or a fresh one (a reset)."""

    scheme: Scheme
    where: str

    def __call__(self, tensor: torch.Tensor, generator: torch.Generator | None) -> None:
        if generator is None:
            generator = torch.Generator(tensor.device)
            generator.manual_seed(int(torch.randint(1 << 62, ())))
        self.scheme.fill(tensor, generator, self.where)


@dataclass(frozen=True)
class _Chain:
    """A buffer's ``value: [op, ...]``: the first op called with its keys alone, each next one with
    the previous result as its first tensor argument not given as a key (``slot``; "" by position)."""

    steps: tuple[tuple[Callable[..., Any], Mapping[str, Any], str], ...]

    def step(self, i: int, value: Any) -> Any:
        fn, kwargs, slot = self.steps[i]
        if i == 0:
            return fn(**kwargs)
        return fn(**{slot: value}, **kwargs) if slot else fn(value, **kwargs)

    def __call__(self) -> Any:
        value = None
        for i in range(len(self.steps)):
            value = self.step(i, value)
        return value


@dataclass(frozen=True)
class _Computed:
    """A computed buffer's fill: its value computed again on the tensor's device, cast to its dtype."""

    compute: Callable[[], torch.Tensor]

    def __call__(self, tensor: torch.Tensor, _generator: torch.Generator | None) -> None:
        with torch.no_grad(), torch.device(tensor.device):
            tensor.copy_(self.compute())


def _computed_buffer(builder: Builder, value: Any, path: str, persistent: bool) -> Buffer | None:
    """A buffer's ``value``: computed once here where known layers are made (where that is
    ``meta``, its shape, from a computation on CPU)."""
    before = len(builder.problems)
    compute = _chain(builder, value, path) if isinstance(value, list) else _value_graph(builder, value, path)
    if compute is None or len(builder.problems) > before:
        return None
    steps = range(len(compute.steps)) if isinstance(compute, _Chain) else [None]
    result: Any = None
    # a build on meta learns the shape on CPU: meta kernels of ops such as div are Python
    # decompositions that import torch._dynamo on first call (seconds); the value is small (budgets)
    where = torch.device("cpu") if builder.known_device.type == "meta" else builder.known_device
    with torch.no_grad(), torch.device(where):
        for i in steps:
            try:
                result = compute() if i is None else compute.step(i, result)
            except ConfigError as e:
                builder.problems += [(p or (path if i is None else f"{path}[{i}]"), m) for p, m in e.problems]
                return None
            except Exception as e:  # the op's own complaint, at the step that made it
                builder.fail(
                    path if i is None else f"{path}[{i}]", f"computing it failed: {type(e).__name__}: {first_line(e)}"
                )
                return None
    if not isinstance(result, torch.Tensor):
        builder.fail(path, f"expected a tensor, the value computes {describe(result)}")
        return None
    dtype = builder.dtype if builder.dtype is not None and result.is_floating_point() else result.dtype
    if builder.known_device.type == "meta":  # filled where it gets storage (initialization, a reset)
        return Buffer(torch.empty(result.shape, dtype=dtype, device=builder.on(META)), persistent, _Computed(compute))
    return Buffer(result.to(dtype), persistent, _Computed(compute))  # dtype rules, as for every floating buffer


def _chain(builder: Builder, steps: list, path: str) -> _Chain | None:
    """``value: [op, ...]``: each step an op with its keys; checked against its signature."""
    if not steps:
        builder.fail(path, "expected a non-empty list of ops")
        return None
    chain = []
    before = len(builder.problems)
    for i, step in enumerate(steps):
        where = f"{path}[{i}]"
        if not isinstance(step, Mapping) or form_of(step) is not OP:
            builder.fail(where, f"expected an op {{op: name, <arguments>}}, got {describe(step)}")
            continue
        for key in (IN.name, "init", "frozen"):
            if key in step:
                builder.fail(f"{where}.{key}", "a step of a value takes the previous result and its keys, nothing else")
        try:
            fn = lookup_op(step[OP.marker], f"{where}.op")
        except ConfigError as e:
            builder.problems += e.problems
            continue
        kwargs = _op_kwargs(builder, step, where)
        slot = "" if i == 0 else _chain_slot(fn, kwargs)
        given = {**kwargs, slot: None} if slot else kwargs
        builder.problems += op_problems(step[OP.marker], fn, given, 0 if i == 0 or slot else 1, where)
        fn = op_callable(fn, kwargs, 0 if i == 0 else [slot] if slot else 1)
        chain.append((fn, kwargs, slot))
    return _Chain(tuple(chain)) if len(builder.problems) == before else None


def _chain_slot(fn: Callable[..., Any] | TorchOp, kwargs: Mapping[str, Any]) -> str:
    """The argument a chain's previous result fills: the op's first tensor argument not given as
    a key; "" where that is its first (passed by position), and for torch's functions, whose
    first input fills exactly that (``op_callable``)."""
    if isinstance(fn, TorchOp):
        return ""
    read = op_arguments(fn)
    if read is None:
        return ""
    free = [(j, a) for j, a in enumerate(read.slots) if a.name not in kwargs]
    if not free or free[0][0] == 0 or free[0][1].positional_only:
        return ""
    return free[0][1].name


def _value_graph(builder: Builder, value: Any, path: str) -> Graph | None:
    """``value: {type: Graph, nodes: ...}``: a Graph of ops without inputs (none by default)."""
    if not (isinstance(value, Mapping) and value.get("type") == GRAPH.type_name):
        builder.fail(path, f"expected a list of ops or a Graph without inputs, got {describe(value)}")
        return None
    graph = builder.build({"inputs": [], **value}, path)
    if not isinstance(graph, Graph):
        return None
    if graph.input_names:
        builder.fail(f"{path}.inputs", "a buffer's value is a Graph without inputs")
        return None
    if graph._modules or graph._parameters or graph._buffers:
        why = "a buffer's value is a Graph of ops alone: it is computed at build, before any weight is made"
        builder.fail(f"{path}.nodes", why)
        return None
    return graph


# The handler of each form of ``recipe.grammar`` (``call`` is a Graph's, in ``_graph_entry``).
HANDLERS: dict[Form, Callable[[Builder, Mapping, str], nn.Module | None]] = {
    REF: _ref,
    USE: _use,
    OP: _op,
    TARGET: _call,
    CALLED: _call,
    SEQUENTIAL: _sequential,
    REPEAT: _repeat,
    GRAPH: _graph,
}


def _only_keys(builder: Builder, node: Mapping, path: str, form: Form) -> None:
    valid = form.reserved
    for key in node:
        if key not in valid:
            hint = did_you_mean(str(key), valid)
            builder.fail(f"{path}.{key}", f"{form.name} takes no key {key!r}{hint}; valid: {', '.join(valid)}")


def tie_parameters(model: nn.Module, ties: Mapping[str, str]) -> None:
    """``tie: {dst: src}``: each ``dst`` parameter becomes the ``src`` parameter object.

    Raises:
        ConfigError: a path that names no parameter (with the closest one), or shapes or dtypes that differ.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for dst, src in ties.items():
        missing = [(p, k) for p, k in ((dst, "dst"), (src, "src")) if p not in params]
        for name, _ in missing:
            problems.append((f"tie.{dst}", f"no parameter {name!r}{did_you_mean(name, params)}"))
        if missing:
            continue
        lazy = [p for p in (dst, src) if isinstance(params[p], UninitializedTensorMixin)]
        if lazy:
            why = f"{lazy[0]} has no shape yet (a lazy layer): give its layer's sizes to tie it"
            problems.append((f"tie.{dst}", why))
            continue
        if params[dst].shape != params[src].shape:
            shapes = f"{list(params[dst].shape)} vs {list(params[src].shape)}"
            problems.append((f"tie.{dst}", f"cannot tie {dst} to {src}: shapes differ ({shapes})"))
            continue
        if params[dst].dtype != params[src].dtype:  # one tensor cannot hold both
            dtypes = f"{params[dst].dtype} vs {params[src].dtype}".replace("torch.", "")
            problems.append((f"tie.{dst}", f"cannot tie {dst} to {src}: dtypes differ ({dtypes})"))
            continue
        owner, _, leaf = dst.rpartition(".")
        model.get_submodule(owner).register_parameter(leaf, params[src])
    if problems:
        raise ConfigError(problems)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Floating tensors made inside take ``dtype`` (a recipe's top-level ``dtype``): built in it
    directly, no float32 copy first."""
    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def construct(
    recipe: Recipe, allow: Sequence[str], device: torch.device, purpose: Literal["init", "load"]
) -> tuple[nn.Module, BuildNotes]:
    """The module tree alone, on ``device``, ties applied: no shapes, no rules.

    ``init``: known layers whose defaults are written per tensor are made unfilled on ``device``,
    the other known layers on ``meta``, user blocks for real (``placement``); every ``meta``
    tensor is then allocated on ``device`` (ties kept), empty, to be filled once by
    initialization; where some tensor would stay unwritten (a known module with neither per-tensor
    defaults nor a reset), everything is built for real instead. ``load``: known layers on
    ``meta``, left there where the file can fill every tensor, else built for real with the fills
    constructors make.
    """
    dtype = dtype_of(recipe["dtype"], "dtype") if recipe.get("dtype") is not None else None
    if dtype is not None and not dtype.is_floating_point:
        dtype = None  # top_level_problems reports it; the tree is still walked for its own problems
    with default_dtype(dtype):
        builder = Builder(recipe, allow, device, initializes=purpose == "init", dtype=dtype)
        model = builder.build_model(recipe["model"])
        real = device.type != "meta"
        may_hold_meta = real and builder.notes.may_hold_meta
        if may_hold_meta and not (can_load_on_meta(model) if purpose == "load" else refilled(model, writes_defaults)):
            model = None  # its layers made unfilled hold memory: not kept through the second walk
            builder = Builder(recipe, allow, device, known_on_meta=False, dtype=dtype)
            model = builder.build_model(recipe["model"])
            may_hold_meta = builder.notes.may_hold_meta
    ties = active_ties(recipe.get("tie"))
    if ties:
        tie_parameters(model, ties)
    builder.notes.ties = dict(ties)
    if purpose == "init" and may_hold_meta:
        allocate(model, device)
    return model, builder.notes
