"""Signal propagation at initialization: how a batch of noise travels forward and its gradient back.

``probe(model, recipe)`` feeds a standard-normal batch (random token ids for integer inputs) of the
recipe's example shapes, with the batch dimension replaced, through the model in training mode (as
the first step of training sees it: batch norm uses the batch's statistics), takes the loss
``out.pow(2).mean()`` (for a tuple output, of its first tensor) and runs backward. It records:

- per leaf module call, in forward order (a module called twice appears twice): the output's
  mean and standard deviation (for a tuple output, its first tensor's);
- the inputs' mean and standard deviation (the reference of a 10x growth or collapse);
- per parameter, in ``named_parameters`` order (a tied one once): the norm of its gradient.

The parameters' values, the gradients' ``.grad`` slots and each module's mode are left as they
were. Buffers that training updates (batch norm's running statistics) do move: the app probes
after the checkpoint is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from composer.recipe import InputSpec, example_inputs

PROBE_FILE = "probe.json"
MIN_BATCH = 2  # one example gives no spread across the batch (and batch norm refuses it)
SMALL_MACS = 5e7  # a forward below this many multiply-adds runs on one thread


def probe(
    model: nn.Module,
    recipe: dict[str, Any],
    batch: int = 64,
    *,
    max_macs: float | None = None,
    example_macs: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Signal propagation of ``model`` at its current weights, as a JSON-ready dict.

    Args:
        recipe: the model's resolved recipe: its ``inputs`` or ``input_shape`` give the shapes and
            dtypes; the first dimension of each (the batch) becomes ``batch``.
        batch: examples in the batch.
        max_macs: when set, the batch shrinks (not below 2) so that one forward pass costs at
            most this many multiply-adds, estimated from the weights' shapes and the output
            shapes of a forward of the recipe's own batch.
        example_macs: the multiply-adds of one example, where the caller counted them already
            (``MacsCounter`` around the summary's forward); else one more forward counts them.
        seed: of the batch's values (a generator of its own: the global RNG is not drawn from).

    Returns:
        ``{"batch", "inputs": [{shape, dtype, mean, std}], "loss", "layers": [{path, type, call,
        mean, std}], "params": [{path, shape, grad_norm}]}``; ``None`` statistics where a tensor
        is not floating point (or a parameter got no gradient).

    Raises:
        ValueError: the recipe has no example inputs.
    """
    example = example_inputs(recipe)
    if example is None:
        raise ValueError("the recipe has no input_shape or inputs: there is nothing to probe with")
    specs = example[1]
    requested = batch
    per_example = example_macs
    if max_macs is not None:
        if per_example is None:
            per_example = macs_per_example(model, specs)
        if per_example > 0:
            batch = max(min(batch, MIN_BATCH), min(batch, int(max_macs // per_example)))
    specs = [replace(spec, shape=(batch, *spec.shape[1:])) for spec in specs]
    generator = torch.Generator().manual_seed(seed)
    high = _id_bound(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = [_random(spec, high, generator).to(device) for spec in specs]

    paths = {id(m): p for p, m in model.named_modules()}
    layers: list[dict[str, Any]] = []
    calls: dict[int, int] = {}

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        mean, std = _stats(_first_tensor(output))
        path = paths.get(id(module), "?")
        layers.append(
            {
                "path": path or "(model)",
                "type": type(module).__name__,
                "call": calls[id(module)],
                "mean": mean,
                "std": std,
            }
        )

    leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.named_parameters())
    saved_grads = [p.grad for _, p in params]
    for _, p in params:
        p.grad = None
    threads = torch.get_num_threads()
    if threads > 1 and per_example is not None and per_example * batch < SMALL_MACS:
        torch.set_num_threads(1)  # a few small matmuls: a thread pool's wake-ups cost more (100x on a busy machine)
    try:
        model.train()
        with torch.enable_grad():
            output = model(*inputs)
            out = _first_tensor(output)
            loss = out.float().pow(2).mean() if out is not None and out.is_floating_point() else None
            if loss is not None and loss.requires_grad:
                loss.backward()
        grads = [
            {
                "path": name,
                "shape": list(p.shape),
                "grad_norm": _finite(p.grad.detach().float().norm()) if p.grad is not None else None,
            }
            for name, p in params
        ]
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
        for (_, p), grad in zip(params, saved_grads, strict=True):
            p.grad = grad
        torch.set_num_threads(threads)
    return {
        "batch": batch,
        "requested_batch": requested,
        "inputs": [
            {
                "shape": list(x.shape),
                "dtype": str(x.dtype).removeprefix("torch."),
                **dict(zip(("mean", "std"), _stats(x), strict=True)),
            }
            for x in inputs
        ],
        "loss": _finite(loss.detach()) if loss is not None else None,
        "layers": layers,
        "params": grads,
    }


class MacsCounter:
    """Counts multiply-adds while registered (``with MacsCounter(model) as macs: model(x)``): for
    each call of a module holding weights of two or more dimensions (Linear, Conv, Embedding, ...),
    ``weight.numel() / weight.shape[0]`` per element of its output. Exact for Linear and Conv; an
    estimate elsewhere, enough to size a batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.total = 0.0
        self._handles: list[Any] = []

    def _count(self, module: nn.Module, _args: Any, output: Any) -> None:
        out = _first_tensor(output)
        if out is None:
            return
        for p in module._parameters.values():
            if p is not None and p.dim() >= 2:
                self.total += p.numel() / p.shape[0] * out.numel()

    def __enter__(self) -> MacsCounter:
        self._handles = [m.register_forward_hook(self._count) for m in self.model.modules() if m._parameters]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def macs_per_example(model: nn.Module, specs: Sequence[InputSpec]) -> float:
    """Multiply-adds of one example (``MacsCounter``), from a forward of zeros of ``specs``."""
    from composer.materialize import forward_zeros  # noqa: PLC0415

    with MacsCounter(model) as macs:
        forward_zeros(model, specs)
    return macs.total / max(specs[0].shape[0], 1)


def _random(spec: InputSpec, high: int, generator: torch.Generator) -> torch.Tensor:
    if spec.dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(spec.dtype)
    if spec.dtype == torch.bool:
        return torch.zeros(spec.shape, dtype=torch.bool)
    return torch.randint(0, high, spec.shape, generator=generator, dtype=torch.int64).to(spec.dtype)


def _id_bound(model: nn.Module) -> int:
    """Token ids below every embedding's size (1: all zeros, where the model has no embedding)."""
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return min(sizes) if sizes else 1


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        return _first_tensor(list(output.values()))
    return None


def _stats(t: torch.Tensor | None) -> tuple[float | None, float | None]:
    if t is None or not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None, None
    with torch.no_grad():
        x = t.detach().float()
        return _finite(x.mean()), _finite(x.std(correction=0))


def _finite(value: torch.Tensor) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has neither)."""
    number = float(value)
    return number if math.isfinite(number) else None
