"""A model's table, as torchinfo and Keras print it: module path, type, output shape, parameters,
their bytes and dtypes, and what is shared; totals of trainable and frozen parameters and bytes.

Every parameter is counted once in every column: on the row of the first path that holds it (in
``named_modules`` order), and in the subtotal of each container above that row. A module met
again (``{ref: name}``) or a tied parameter (``tie:``) is marked on its other rows, not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from composer.build.materialize import forward_zeros, require_shapes
from composer.build.record import record_of
from composer.errors import ConfigError
from composer.recipe.read import InputSpec, example_inputs
from composer.train.groups import assign, init_report, recipe_groups

_HEADER = ("module", "type", "output shape", "params", "bytes", "dtype", "shared")


@dataclass
class Row:
    path: str  # "" for the model itself
    type: str
    depth: int  # 0 for the model, 1 for its children, ...
    output_shape: Any  # a list (a tuple output: a list of lists), or None when unknown
    params: int  # this module's and everything below it, each parameter once in the whole table
    bytes: int
    trainable: int
    dtypes: list[str]
    container: bool  # has children: params is a subtotal
    same_module_as: str | None  # the first path of a module met again (then params == 0)
    ties: str  # "weight = 4.weight": parameters other paths hold too

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Summary:
    """What ``summary`` prints, as data: ``text()`` or ``as_dict()``."""

    rows: list[Row]
    totals: dict[str, int]
    inputs: list[InputSpec] | None
    output_shape: Any = None
    error: ConfigError | None = None  # why there are no output shapes (the forward of zeros failed)
    init: dict[str, str] | None = None
    depth: int | None = None
    hidden: int = 0  # rows below ``depth``
    extra: list[str] = field(default_factory=list)
    layout: dict[str, Any] | None = None  # a sharded model's (``BuildRecord.layout``)

    def text(self) -> str:
        cells = [_HEADER, *(_cells(row) for row in self.rows)]
        lines = _table(cells)
        if self.hidden:
            lines.append(
                f"({self.hidden} module(s) below depth {self.depth} not shown; their parameters are in the subtotals)"
            )
        lines += _totals_text(self.totals)
        if self.inputs is not None:
            described = ", ".join(describe_input(spec) for spec in self.inputs)
            why = f" (output shapes unavailable: {self.error.problems[0][1]})" if self.error is not None else ""
            lines.append(f"input shape: {described}{why}")
        if self.layout is not None:
            lines += layout_lines(self.layout)
        if self.init is not None:
            lines.append(str(self.init) if self.depth is None else _init_to_depth(self.init, self.depth))
        lines += self.extra
        return "\n".join(lines)

    def to_depth(self, depth: int) -> Summary:
        """The same summary showing modules down to ``depth`` only, and its init report grouped there:
        a whole GPT-2 prints in a dozen lines, its files can keep every level."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth: expected a non-negative integer or None, got {depth!r}")
        shown = [row for row in self.rows if row.depth <= depth]
        return replace(self, rows=shown, depth=depth, hidden=self.hidden + len(self.rows) - len(shown))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.as_dict() for row in self.rows],
            "totals": dict(self.totals),
            "inputs": None
            if self.inputs is None
            else [{"shape": list(s.shape), "dtype": _dtype_name(s.dtype)} for s in self.inputs],
            "output_shape": self.output_shape,
            "output_shapes_unavailable": None if self.error is None else self.error.problems[0][1],
            "init": None if self.init is None else dict(self.init),
            "layout": self.layout,
            "groups": None if self.init is None else self.init.groups,
            "warnings": list(self.extra),
        }


def summary(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, depth: int | None = None, as_dict: bool = False
) -> str | dict[str, Any]:
    """The table, then totals (each parameter counted once) and, for a built model, its init report.

    Args:
        model: any module; one built by composer also gets its recipe's input shape and init report.
        input_shape: the full shape of one input batch; defaults to the recipe's. With one, each
            row shows its module's output shape from a forward pass of zeros (under ``no_grad``, in
            eval mode, modes restored afterwards).
        depth: show modules down to this depth only (0: the model's own row, 1: its children, ...);
            a container's row always holds the subtotal of everything below it.
        as_dict: return the same content as data: ``rows`` (path, type, depth, output_shape,
            params, bytes, trainable, dtypes, container, same_module_as, ties), ``totals``,
            ``inputs``, ``output_shape``, ``output_shapes_unavailable`` and ``init``.

    Returns:
        The table as text, one row per module path (a shared module on each of its paths); or a dict.

    Raises:
        ConfigError: lazy layers still wait for their shapes and no input shape is known.
    """
    result = summarize(model, input_shape, depth=depth)
    return result.as_dict() if as_dict else result.text()


def summarize(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    shapes: dict[int, Any] | None = None,
) -> Summary:
    """``summary``'s content as a ``Summary``; a failed forward of zeros is kept in ``error``.

    ``shapes``: ``id(module) -> output shape`` from a forward the caller ran on the example inputs
    (the app's probe), instead of a forward of zeros here.
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth: expected a non-negative integer or None, got {depth!r}")
    record = record_of(model)
    key = "input_shape"
    if input_shape is not None:
        inputs: list[InputSpec] | None = [InputSpec(tuple(input_shape), torch.float32)]
    else:
        example = example_inputs(record.recipe) if record is not None else None
        key, inputs = example if example is not None else (key, None)
    if inputs is None:
        require_shapes(model, "the summary")
    error = None
    if shapes is None:
        shapes, error = _output_shapes(model, inputs, key) if inputs is not None else ({}, None)
    init = init_report(model) if record is not None else None
    groups = recipe_groups(model)
    warnings = assign(model, groups).warnings() if groups else []
    result = Summary(
        rows=_rows(model, shapes),
        totals=totals(model),
        inputs=inputs,
        output_shape=shapes.get(id(model)),
        error=error,
        init=init,
        extra=warnings,
        layout=record.layout if record is not None else None,
    )
    return result if depth is None else result.to_depth(depth)


def _init_to_depth(init: dict[str, str], depth: int) -> str:
    """The init report with the parameters of modules below ``depth`` counted under their ancestor
    at ``depth``, one line per scheme (and optimizer group, where the recipe has ``optim.groups``):
    ``transformer.*: default (146 tensors)``."""
    groups = getattr(init, "groups", None)
    counts: dict[str, dict[str, int]] = {}
    for path, scheme in init.items():
        module = path.split(".")[:-1]
        key = ".".join([*module[:depth], "*"]) if len(module) > depth else path  # depth 0: "*", the model
        label = f"{scheme}, group {groups.get(path, '(tied)')}" if groups else scheme
        schemes = counts.setdefault(key, {})
        schemes[label] = schemes.get(label, 0) + 1
    width = max((len(key) for key in counts), default=0)
    lines = ["initialization (and optimizer group):" if groups else "initialization:"]
    for key, schemes in counts.items():
        for label, n in schemes.items():
            count = f" ({n} tensors)" if key.endswith("*") else ""
            lines.append(f"  {key + ':':<{width + 1}} {label}{count}")
    return "\n".join(lines)


def layout_lines(layout: dict[str, Any]) -> list[str]:
    """How a sharded model is spread: its mesh, FSDP units and their dtype policy, tensor-parallel
    styles and checkpointed modules."""
    mesh, policy = layout["mesh"], layout["policy"]
    dims = " x ".join(
        f"{n} {s}" if n else str(s)
        for n, s in zip(mesh["dims"] or [""] * len(mesh["shape"]), mesh["shape"], strict=True)
    )
    lines = [
        f"layout: {mesh['device']} mesh {dims}",
        f"  fsdp units: {', '.join(u or '(model)' for u in layout['units'])}",
        f"  dtypes: parameters {policy['param_dtype']} in forward, gradients reduced in {policy['reduce_dtype']}; "
        f"reshard after forward: {'yes' if policy['reshard_after_forward'] else 'no'}; "
        f"cpu offload: {'yes' if policy['cpu_offload'] else 'no'}",
    ]
    lines += [f"  tp: {path}: {style}" for path, style in layout["tp"].items()]
    if layout["checkpoint"]:
        lines.append(f"  activation checkpointing: {', '.join(layout['checkpoint'])}")
    return lines


def _rows(model: nn.Module, shapes: dict[int, Any]) -> list[Row]:
    """One row per module path; each parameter counted on the first path that holds it and in the
    subtotals of the containers above."""
    names_of = _parameter_paths(model)
    entries = list(model.named_modules(remove_duplicate=False))
    first_path: dict[int, str] = {}
    counted: set[int] = set()
    own: dict[str, list[nn.Parameter]] = {}  # path -> the parameters counted on it
    for path, module in entries:
        own[path] = []
        if id(module) in first_path:
            continue
        first_path[id(module)] = path
        for p in module._parameters.values():
            if p is not None and id(p) not in counted:
                counted.add(id(p))
                own[path].append(p)
    below: dict[str, list[nn.Parameter]] = defaultdict(list)  # path -> everything counted at or under it
    for path, params in own.items():
        if params:
            parts = path.split(".") if path else []
            for i in range(len(parts) + 1):
                below[".".join(parts[:i])].extend(params)
    rows = []
    for path, module in entries:
        first = first_path[id(module)]
        params = below.get(path, [])
        prefix = f"{path}." if path else ""
        mine = [(n, p) for n, p in module._parameters.items() if p is not None]
        rows.append(Row(
            path=path,
            type=type(module).__name__,
            depth=path.count(".") + 1 if path else 0,
            output_shape=shapes.get(id(module)),
            params=sum(p.numel() for p in params),
            bytes=sum(p.numel() * p.element_size() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            dtypes=sorted({_dtype_name(p.dtype) for p in params}),
            container=next(iter(module.children()), None) is not None,
            same_module_as=None if first == path else first,
            ties="" if first != path else _ties(mine, names_of, prefix),
        ))  # fmt: skip
    return rows


def _parameter_paths(model: nn.Module) -> dict[int, list[str]]:
    names_of: dict[int, list[str]] = defaultdict(list)
    for path, p in model.named_parameters(remove_duplicate=False):
        names_of[id(p)].append(path)
    return names_of


def _ties(own: list[tuple[str, nn.Parameter]], names_of: dict[int, list[str]], prefix: str) -> str:
    """``weight = other.path`` for each parameter of a module that other paths hold too."""
    ties = [
        f"{n} = {', '.join(q for q in names_of[id(p)] if q != prefix + n)}" for n, p in own if len(names_of[id(p)]) > 1
    ]
    return "; ".join(ties)


def totals(model: nn.Module) -> dict[str, int]:
    """Parameter counts and bytes, each tensor once: all, trainable, frozen; shared tensors; buffers."""
    params = list(model.parameters())  # each parameter once, however many modules hold it
    buffers = list(model.buffers())

    def size(tensors: list[torch.Tensor]) -> tuple[int, int]:
        return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)

    count, nbytes = size(params)
    trainable, trainable_bytes = size([p for p in params if p.requires_grad])
    buffer_count, buffer_bytes = size(buffers)
    return {
        "params": count,
        "bytes": nbytes,
        "trainable": trainable,
        "trainable_bytes": trainable_bytes,
        "frozen": count - trainable,
        "frozen_bytes": nbytes - trainable_bytes,
        "shared_tensors": sum(1 for names in _parameter_paths(model).values() if len(names) > 1),
        "buffers": buffer_count,
        "buffer_bytes": buffer_bytes,
    }


def _totals_text(t: dict[str, int]) -> list[str]:
    shared = f"; {t['shared_tensors']} shared tensor(s) counted once" if t["shared_tensors"] else ""
    lines = [
        f"total parameters: {t['params']:,} ({format_bytes(t['bytes'])}){shared}",
        f"  trainable: {t['trainable']:,} ({format_bytes(t['trainable_bytes'])})",
        f"  frozen:    {t['frozen']:,} ({format_bytes(t['frozen_bytes'])})",
    ]
    if t["buffers"]:
        lines.append(f"buffers: {t['buffers']:,} values ({format_bytes(t['buffer_bytes'])})")
    return lines


def _cells(row: Row) -> tuple[str, ...]:
    if row.same_module_as is not None:
        counts = ("", "", "")
        shared = f"same module as {row.same_module_as or '(model)'}"
    else:
        counts = (
            (f"{row.params:,}", format_bytes(row.bytes), "/".join(row.dtypes))
            if row.params or not row.container and row.dtypes
            else ("", "", "")
        )
        shared = row.ties
    indent = "  " * max(row.depth - 1, 0) if row.depth else ""
    shape = "" if row.output_shape is None else str(row.output_shape)
    return (f"{indent}{row.path or '(model)'}", row.type, shape, *counts, shared)


def format_bytes(n: float) -> str:
    """``484 B``, ``31.8 KB``, ``46.8 MB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_input(spec: InputSpec) -> str:
    return str(list(spec.shape)) + ("" if spec.dtype == torch.float32 else f" {_dtype_name(spec.dtype)}")


def _output_shapes(
    model: nn.Module, inputs: Sequence[InputSpec], key: str = "input_shape"
) -> tuple[dict[int, Any], ConfigError | None]:
    """Each module's first output shape, from one forward pass of zeros; or why there are none
    (a model that takes token ids, or data-dependent control flow on ``meta`` tensors)."""
    shapes: dict[int, Any] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        shapes.setdefault(id(module), shape_of(output))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        forward_zeros(model, inputs, key=key)
    except ConfigError as e:
        return {}, e
    finally:
        for handle in handles:
            handle.remove()
    return shapes, None


def shape_of(output: Any) -> Any:
    """A tensor's shape as a list; tuples and lists of tensors as lists of those. ``None`` parts
    of a tuple are left out and a tuple left with one tensor shows as that tensor
    (``MultiheadAttention(need_weights=False)`` returns ``(out, None)``: ``[2, 10, 64]``)."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)):
        parts = [shape_of(o) for o in output if o is not None]
        return parts[0] if len(parts) == 1 and isinstance(output, tuple) else parts
    return type(output).__name__


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4}  # numbers
    lines = [
        "  ".join(
            cell.rjust(w) if i in right and r else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for r, row in enumerate(rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
