"""Signal propagation at initialization: how a batch of noise travels forward and its gradient back.

``probe(model, recipe)`` feeds a standard-normal batch (random token ids for integer inputs) of the
recipe's example shapes, with the batch dimension replaced, through the model in training mode (as
the first step of training sees it: batch norm uses the batch's statistics), takes the loss
``out.pow(2).mean()`` (for a tuple output, of its first tensor) and runs backward. It records:

- per leaf module call, in forward order (a module called twice appears twice): the output's
  mean and standard deviation (for a tuple output, its first tensor's);
- the inputs' mean and standard deviation (the reference of a 10x growth or collapse);
- per parameter, in ``named_parameters`` order (a tied one once): the norm of its gradient.

Nothing is left changed: parameters, their ``.grad`` slots, buffers (batch norm's running
statistics, which training mode moves, are put back), each module's mode, the global RNG.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from composer import limits as budget
from composer.build.materialize import check_input_elements, check_on_meta, has_lazy
from composer.describe.summarize import shape_of
from composer.recipe.read import InputSpec, example_inputs

PROBE_FILE = "probe.json"
MIN_BATCH = 2  # one example gives no spread across the batch (and batch norm refuses it)
SMALL_MACS = 5e7  # a forward below this many multiply-adds runs on one thread


def probe(
    model: nn.Module,
    recipe: dict[str, Any],
    batch: int = 64,
    *,
    max_macs: float | None = None,
    seed: int = 0,
    shapes: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """Signal propagation of ``model`` at its current weights, as a JSON-ready dict.

    The first forward runs the recipe's own batch; it counts the multiply-adds of one example and,
    when ``shapes`` is given, records each module's output shape there (what ``summarize`` takes
    instead of its own forward of zeros). Where ``max_macs`` holds the batch at or below the
    recipe's own, that forward is the probe's; otherwise a second one runs ``batch`` examples.

    Args:
        recipe: the model's resolved recipe: its ``inputs`` or ``input_shape`` give the shapes and
            dtypes; the first dimension of each (the batch) becomes ``batch``.
        batch: examples in the batch.
        max_macs: when set, the batch shrinks (not below 2) so that one forward pass costs at
            most this many multiply-adds (``MacsCounter``).
        seed: of the batch's values (a generator of its own: the global RNG is not drawn from).
        shapes: filled with ``id(module) -> output shape`` of the recipe's own batch.

    Returns:
        ``{"batch", "requested_batch", "inputs": [{shape, dtype, mean, std}], "loss", "layers":
        [{path, type, call, mean, std}], "params": [{path, shape, grad_norm}]}``; ``None``
        statistics where a tensor is not floating point (or a parameter got no gradient).

    Raises:
        ValueError: the recipe has no example inputs.
    """
    example = example_inputs(recipe)
    if example is None:
        raise ValueError("the recipe has no input_shape or inputs: there is nothing to probe with")
    specs = example[1]
    own = specs[0].shape[0] if specs else 1
    _within_budgets(model, specs, own, example[0])
    with _Session(model) as session:
        run = session.forward(_batch_of(model, specs, own, seed), count=True, shapes=shapes)
        per_example = run.macs / max(own, 1)
        wanted = batch
        if max_macs is not None and per_example > 0:
            wanted = max(min(batch, MIN_BATCH), min(batch, int(max_macs // per_example)))
        capped = wanted < batch
        if not (wanted == own or (capped and wanted <= own)):
            del run
            _within_budgets(model, specs, wanted, "probe.batch")
            if per_example * wanted < SMALL_MACS:
                session.single_thread()  # small matmuls: a thread pool's wake-ups cost more (100x on a busy machine)
            run = session.forward(_batch_of(model, specs, wanted, seed))
        return {
            "batch": run.batch,
            "requested_batch": batch,
            "inputs": [
                {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."), **_stats_dict(x)}
                for x in run.inputs
            ],
            "loss": session.backward(run),
            "layers": run.layers,
            "params": session.grads(),
        }


def _within_budgets(model: nn.Module, specs: Sequence[InputSpec], batch: int, key: str) -> None:
    """A batch's inputs within ``limits.tensor_elements`` together, and its forward (on ``meta``
    first: ``check_on_meta``) within ``limits.activation_bytes``, before any is made: a batch
    of 10^6 examples would allocate gigabytes. (Backward's saved tensors are not counted.)"""
    batched = [replace(spec, shape=(batch, *spec.shape[1:])) for spec in specs]
    check_input_elements(batched, key, budget.current().tensor_elements)
    if not has_lazy(model):
        check_on_meta(model, batched, key)


def _batch_of(model: nn.Module, specs: Sequence[InputSpec], batch: int, seed: int) -> list[torch.Tensor]:
    """Standard-normal floats, random token ids: each batch from ``seed`` afresh (a batch of 64 is
    the same whatever ran before it)."""
    generator = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    high = _id_bound(model)
    return [_random(replace(spec, shape=(batch, *spec.shape[1:])), high, generator).to(device) for spec in specs]


class _Run:
    """One forward of the probe: its inputs, output, leaf statistics and multiply-adds."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = inputs
        self.batch = inputs[0].shape[0] if inputs else 1
        self.layers: list[dict[str, Any]] = []
        self.output: Any = None
        self.macs = 0.0


class _Session:
    """Training mode, gradients, buffers and threads for the probe's passes; all as they were after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.paths = {id(m): p for p, m in model.named_modules()}
        self.leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
        self.params = list(model.named_parameters())

    def __enter__(self) -> _Session:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.saved_grads = [p.grad for _, p in self.params]
        # training mode moves batch norm's running statistics: put them back after
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.threads = torch.get_num_threads()
        for _, p in self.params:
            p.grad = None
        self.model.train()
        return self

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes:
            module.training = training
        for (_, p), grad in zip(self.params, self.saved_grads, strict=True):
            p.grad = grad
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        torch.set_num_threads(self.threads)

    def single_thread(self) -> None:
        torch.set_num_threads(1)

    def forward(self, inputs: list[torch.Tensor], count: bool = False, shapes: dict[int, Any] | None = None) -> _Run:
        run = _Run(inputs)
        calls: dict[int, int] = {}

        def record(module: nn.Module, _args: Any, output: Any) -> None:
            calls[id(module)] = calls.get(id(module), 0) + 1
            path = self.paths.get(id(module), "?") or "(model)"
            entry = {"path": path, "type": type(module).__name__, "call": calls[id(module)]}
            run.layers.append({**entry, **_stats_dict(_first_tensor(output))})

        def shape(module: nn.Module, _args: Any, output: Any) -> None:
            shapes.setdefault(id(module), shape_of(output))

        handles = [m.register_forward_hook(record) for m in self.leaves]
        if shapes is not None:
            handles += [m.register_forward_hook(shape) for m in self.model.modules()]
        counter = MacsCounter(self.model) if count else contextlib.nullcontext()
        try:
            with counter, torch.enable_grad():
                run.output = self.model(*inputs)
        finally:
            for handle in handles:
                handle.remove()
        run.macs = counter.total if count else 0.0
        return run

    def backward(self, run: _Run) -> float | None:
        """``out.pow(2).mean()`` of the run's first output tensor, backward; the loss."""
        out = _first_tensor(run.output)
        if out is None or not out.is_floating_point():
            return None
        loss = out.float().pow(2).mean()
        if loss.requires_grad:
            loss.backward()
        return _finite(loss.detach())

    def grads(self) -> list[dict[str, Any]]:
        return [
            {
                "path": name,
                "shape": list(p.shape),
                "grad_norm": _finite(p.grad.detach().float().norm()) if p.grad is not None else None,
            }
            for name, p in self.params
        ]


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


def _stats_dict(t: torch.Tensor | None) -> dict[str, float | None]:
    mean, std = _stats(t)
    return {"mean": mean, "std": std}


def _stats(t: torch.Tensor | None) -> tuple[float | None, float | None]:
    if t is None or not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None, None
    with torch.no_grad():
        std, mean = torch.std_mean(t.detach().float(), correction=0)  # one pass over the tensor
        return _finite(mean), _finite(std)


def _finite(value: torch.Tensor) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has neither)."""
    number = float(value)
    return number if math.isfinite(number) else None
