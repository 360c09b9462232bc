"""The recipe's ``parallel:`` section: how a sharded build trains past one device.

torchtitan's knobs, on the same engine (``composer.build.shard`` applies them):

```yaml
parallel:
  param_dtype: bfloat16          # FSDP2 MixedPrecisionPolicy: the dtype the forward computes in
  reduce_dtype: float32          # ... and the one gradients are reduced in
  reshard_after_forward: false   # keep each unit's gathered parameters from forward to backward
  cpu_offload: true              # CPUOffloadPolicy: shards and optimizer state live on the CPU
  tp:                            # tensor parallel over the mesh dim "tp" of a ("dp", "tp") mesh
    "*.mlp.c_fc": colwise
    "*.mlp.c_proj": rowwise
  checkpoint: {layer: Block}     # activation checkpointing of every matching module
```

Read here, checked against nothing but itself (which modules a glob or a layer selects is checked
when the model is sharded, before any collective). A single-process build ignores the section:
the same recipe builds on one device and on a mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from composer.errors import ConfigError, unknown

TP_STYLES = ("colwise", "rowwise", "sequence")
"""The tensor-parallel styles a ``tp`` entry names: torch's ``ColwiseParallel``, ``RowwiseParallel``
and ``SequenceParallel``."""

_FLOATING = ("float32", "float16", "bfloat16", "float64")
_KEYS = ("param_dtype", "reduce_dtype", "reshard_after_forward", "cpu_offload", "tp", "checkpoint")


@dataclass(frozen=True)
class Parallel:
    """The ``parallel:`` section, checked. Dtypes are torch's names (``bfloat16``)."""

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    tp: dict[str, Any] = field(default_factory=dict)  # glob -> style name | {style: colwise, chunks: N}
    checkpoint: list[tuple[str, Any]] = field(default_factory=list)  # ("layer" | "match", value)


def parse_parallel(raw: Any) -> Parallel:
    """The section as a ``Parallel``.

    Raises:
        ConfigError: every problem of the section, each with its key path.
    """
    problems = parallel_problems(raw)
    if problems:
        raise ConfigError(problems)
    if raw is None:
        return Parallel()
    return Parallel(
        param_dtype=_dtype_name(raw.get("param_dtype")),
        reduce_dtype=_dtype_name(raw.get("reduce_dtype")),
        reshard_after_forward=raw.get("reshard_after_forward", True),
        cpu_offload=raw.get("cpu_offload", False),
        tp={str(glob): style for glob, style in (raw.get("tp") or {}).items()},
        checkpoint=_selectors(raw.get("checkpoint")),
    )


def parallel_problems(raw: Any) -> list[tuple[str, str]]:
    """Every problem of a ``parallel:`` section (None: no section, none)."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [("parallel", f"expected a mapping of {', '.join(_KEYS)}, got {raw!r}")]
    problems = [(f"parallel.{k}", unknown("key", k, _KEYS)) for k in raw if k not in _KEYS]
    for key in ("param_dtype", "reduce_dtype"):
        value = raw.get(key)
        if value is not None and _dtype_name(value) not in _FLOATING:
            problems.append((f"parallel.{key}", f"{unknown('floating dtype', value, _FLOATING)}"))
    for key in ("reshard_after_forward", "cpu_offload"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append((f"parallel.{key}", f"expected true or false, got {raw[key]!r}"))
    problems += _tp_problems(raw.get("tp"))
    problems += _checkpoint_problems(raw.get("checkpoint"))
    return problems


def _dtype_name(value: Any) -> str | None:
    return value.removeprefix("torch.") if isinstance(value, str) else value


def _tp_problems(tp: Any) -> list[tuple[str, str]]:
    if tp is None:
        return []
    if not isinstance(tp, Mapping) or not tp:
        return [("parallel.tp", f"expected a mapping of module-path glob: {' | '.join(TP_STYLES)}, got {tp!r}")]
    problems = []
    for glob, spec in tp.items():
        where = f"parallel.tp.{glob}"
        if isinstance(spec, Mapping):
            problems += [
                (f"{where}.{k}", unknown("key", k, ("style", "chunks"))) for k in spec if k not in ("style", "chunks")
            ]
            if spec.get("style") != "colwise":
                problems.append(
                    (f"{where}.style", f"a fused projection (chunks) is split colwise, got {spec.get('style')!r}")
                )
            chunks = spec.get("chunks")
            if not isinstance(chunks, int) or isinstance(chunks, bool) or not 1 <= chunks <= 64:
                problems.append(
                    (f"{where}.chunks", f"expected the number of blocks side by side (1-64), got {chunks!r}")
                )
        elif spec not in TP_STYLES:
            problems.append((where, unknown("tp style", spec, TP_STYLES)))
    return problems


def _checkpoint_problems(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    entries = raw if isinstance(raw, list) else [raw]
    problems = []
    for i, entry in enumerate(entries):
        where = f"parallel.checkpoint[{i}]" if isinstance(raw, list) else "parallel.checkpoint"
        if not isinstance(entry, Mapping) or len(entry) != 1:
            problems.append((where, f"expected {{layer: Name}} or {{match: glob}}, got {entry!r}"))
            continue
        key, value = next(iter(entry.items()))
        if key not in ("layer", "match"):
            problems.append((f"{where}.{key}", unknown("key", key, ("layer", "match"))))
        elif key == "match" and not isinstance(value, str):
            problems.append((f"{where}.match", f"expected a glob over module paths, got {value!r}"))
        elif key == "layer" and not (
            isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        ):
            problems.append((f"{where}.layer", f"expected a class name or a list of them, got {value!r}"))
    return problems


def _selectors(raw: Any) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    return [next(iter(entry.items())) for entry in (raw if isinstance(raw, list) else [raw])]
