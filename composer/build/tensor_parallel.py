"""Tensor parallel from a recipe's ``parallel.tp``: module-path globs to torch's parallel styles.

``colwise``, ``rowwise`` and ``sequence`` are torch's ``ColwiseParallel``, ``RowwiseParallel`` and
``SequenceParallel``, applied with ``parallelize_module`` over the mesh dim ``tp`` before FSDP
shards over ``dp`` (torchtitan's order). Their outputs are local tensors, so the ops after a
``colwise`` projection see this rank's columns only: a recipe whose attention reshapes with
``unflatten(sizes: [-1, head_dim])`` then runs on this rank's heads.

A fused projection (GPT-2's ``c_attn``: q, k and v side by side) needs more than ``colwise``:
plain column sharding gives rank 0 all of q and half of k. ``{style: colwise, chunks: 3}`` keeps
the projection's weight whole on every tp rank (a ``Replicate`` DTensor, which DCP saves and FSDP
shards over ``dp`` like any other) and hands on, from each of its ``chunks`` output blocks, this
rank's share: ``[q_r, k_r, v_r]``, the heads of rank r, in the layout the next ``rowwise``
projection expects. Its weight and its matmul are not split over tp (a quarter of a transformer
block's weights); everything after it is. Its gradients are summed over the tp ranks, so the
replicated weight stays the same on each.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel
from torch.distributed.tensor.parallel.style import ParallelStyle

from composer.errors import did_you_mean

_STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel, "sequence": SequenceParallel}


class FusedColwiseParallel(ParallelStyle):
    """A projection whose output is ``chunks`` blocks side by side, split by columns within each
    block: rank r of tp gets block i's r-th share, for every i (see the module)."""

    def __init__(self, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module, device_mesh, _replicate_params, input_fn=_replicated_input, output_fn=self._rank_share
        )

    def _rank_share(self, module: nn.Module, output: DTensor, mesh: DeviceMesh) -> torch.Tensor:
        # This rank's gradient of the whole output is non-zero in its share only: a partial sum of
        # the full gradient, which DTensor reduces over the tp ranks for the replicated weight.
        whole = output.to_local(grad_placements=[Partial()])
        rank, size = mesh.get_local_rank(), mesh.size()
        return torch.cat([block.tensor_split(size, dim=-1)[rank] for block in whole.chunk(self.chunks, -1)], -1)


def _replicate_params(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
    for key, param in list(module._parameters.items()):
        if param is not None and not isinstance(param, DTensor):
            replicated = DTensor.from_local(param, mesh, [Replicate()], run_check=False)
            module.register_parameter(key, nn.Parameter(replicated, requires_grad=param.requires_grad))


def _replicated_input(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
    return tuple(
        DTensor.from_local(x, mesh, [Replicate()], run_check=False) if isinstance(x, torch.Tensor) else x
        for x in inputs
    )


def tp_plan(entries: list[tuple[str, nn.Module]], tp: Mapping[str, Any], problems: list) -> dict[str, ParallelStyle]:
    """Module path -> the parallel style of the ``tp`` glob that matches it (a later glob wins);
    a glob that matches no module is a problem."""
    plan: dict[str, ParallelStyle] = {}
    paths = [path for path, _ in entries if path]
    for glob, spec in tp.items():
        matched = [path for path in paths if fnmatch.fnmatchcase(path, glob)]
        if not matched:
            problems.append((f"parallel.tp.{glob}", f"matches no module{did_you_mean(glob, paths)}"))
        plan.update(dict.fromkeys(matched, style_of(spec)))
    return plan


def style_of(spec: Any) -> ParallelStyle:
    """``colwise`` | ``rowwise`` | ``sequence``, or ``{style: colwise, chunks: N}``."""
    if isinstance(spec, Mapping):
        return FusedColwiseParallel(spec["chunks"])
    return _STYLES[spec]()
