"""A model's table: module path, type, output shape, own parameter count, and what is shared."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from composer.errors import ConfigError
from composer.materialize import forward_zeros, require_shapes
from composer.recipe import InputSpec, example_inputs
from composer.record import init_report, record_of

_HEADER = ("module", "type", "output shape", "params", "shared")


def summary(model: nn.Module, input_shape: Sequence[int] | None = None) -> str:
    """The table, then totals (a shared parameter counted once) and, for a built model, its init report.

    Args:
        model: any module; one built by composer also gets its recipe's input shape and init report.
        input_shape: the full shape of one input batch; defaults to the recipe's. With one, each
            row shows its module's output shape from a forward pass of zeros (under ``no_grad``, in
            eval mode, modes restored afterwards).

    Returns:
        The table as text, one row per module path (a shared module on each of its paths).

    Raises:
        ConfigError: lazy layers still wait for their shapes and no input shape is known.
    """
    record = record_of(model)
    if input_shape is not None:
        inputs: list[InputSpec] | None = [InputSpec(tuple(input_shape), torch.float32)]
    else:
        example = example_inputs(record.recipe) if record is not None else None
        inputs = example[1] if example is not None else None
    if inputs is None:
        require_shapes(model, "the summary")
    shapes, why = _output_shapes(model, inputs) if inputs is not None else ({}, "")
    lines = _table([_HEADER, *_rows(model, shapes)])
    lines.append(_totals(model))
    if inputs is not None:
        described = ", ".join(_describe_input(spec) for spec in inputs)
        lines.append(f"input shape: {described}" + (f" (output shapes unavailable: {why})" if why else ""))
    if record is not None:
        lines.append("initialization:")
        lines += [f"  {path}: {scheme}" for path, scheme in init_report(model).items()]
    return "\n".join(lines)


def _rows(model: nn.Module, shapes: dict[int, Any]) -> list[tuple[str, ...]]:
    """One row per module path: a module met again says where it was first; a tied parameter
    names its other paths."""
    names_of = _parameter_paths(model)
    first_path: dict[int, str] = {}
    rows = []
    for path, module in model.named_modules(remove_duplicate=False):
        own = [(n, p) for n, p in module._parameters.items() if p is not None]
        if id(module) in first_path:
            shared = f"same module as {first_path[id(module)] or '(model)'}"
        else:
            first_path[id(module)] = path
            shared = _ties(own, names_of, f"{path}." if path else "")
        shape = shapes.get(id(module))
        count = f"{sum(p.numel() for _, p in own):,}" if own else ""
        rows.append((path or "(model)", type(module).__name__, "" if shape is None else str(shape), count, shared))
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


def _totals(model: nn.Module) -> str:
    params = list(model.parameters())  # each parameter once, however many modules hold it
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    n_shared = sum(1 for names in _parameter_paths(model).values() if len(names) > 1)
    return f"total parameters: {total:,} (trainable {trainable:,}; {n_shared} shared tensor(s) counted once)"


def _describe_input(spec: InputSpec) -> str:
    return str(list(spec.shape)) + ("" if spec.dtype == torch.float32 else f" {str(spec.dtype).removeprefix('torch.')}")


def _output_shapes(model: nn.Module, inputs: Sequence[InputSpec]) -> tuple[dict[int, Any], str]:
    """Each module's first output shape, from one forward pass of zeros; or why there are none
    (a model that takes token ids, or data-dependent control flow on ``meta`` tensors)."""
    shapes: dict[int, Any] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        shapes.setdefault(id(module), shape_of(output))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        forward_zeros(model, inputs)
    except ConfigError as e:
        return {}, e.problems[0][1]
    finally:
        for handle in handles:
            handle.remove()
    return shapes, ""


def shape_of(output: Any) -> Any:
    """A tensor's shape as a list; tuples and lists of tensors as lists of those."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)):
        return [shape_of(o) for o in output]
    return type(output).__name__


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
