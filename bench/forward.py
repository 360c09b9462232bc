"""Goal 4: a built model runs as fast as the same handwritten model, and compiles without breaks.

Each recipe is built by composer and written out by hand with the same weights (outputs must be
equal bit for bit); the forward passes are timed interleaved, under ``no_grad``, in batches of
calls, on one thread (on a shared 2-core machine a second OpenMP thread that loses its core
stalls every small matmul, which swamps what is measured). An A/A control, a second handwritten
copy, measures the noise of this run: the goal is a ratio of 1.00 within twice that noise, and at
least ±0.05. Then ``torch._dynamo.explain`` counts graph breaks in the ``mlp`` and ``rgnet``
recipes, and ``torch.compile(fullgraph=True)`` must compile them (with the ``aot_eager`` backend:
dynamo and AOTAutograd trace the whole graph; no C++ compiler runs).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from bench.common import ROOT, Result, blocks_handwritten, blocks_recipe, interleave, median

MIN_TOLERANCE = 0.05


def handwritten_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))


def handwritten_rgnet() -> nn.Module:
    def block() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())

    return nn.Sequential(nn.Sequential(OrderedDict((f"block {i}", block()) for i in range(4))), nn.Linear(4, 1))


def cases(blocks: int) -> dict[str, tuple[object, Callable[[], nn.Module], list[int]]]:
    """name -> (recipe, handwritten builder, input shape)."""
    return {
        "mlp": (ROOT / "composer" / "conf" / "model" / "mlp.yaml", handwritten_mlp, [64, 20]),
        "rgnet": (ROOT / "composer" / "conf" / "model" / "rgnet.yaml", handwritten_rgnet, [64, 4]),
        f"{blocks} blocks": (blocks_recipe(blocks), lambda: blocks_handwritten(blocks), [64, 64]),
    }


def pair(
    recipe: object, handwritten: Callable[[], nn.Module], shape: list[int]
) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The built model and a handwritten one holding the same weights; outputs checked equal."""
    import composer

    built = composer.build_from_config(recipe)
    hand = handwritten()
    hand.load_state_dict(built.state_dict(), strict=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        if not torch.equal(built(x), hand(x)):
            raise AssertionError("the built and the handwritten model disagree")
    return built.eval(), hand.eval(), x


def forward_ratio(
    built: nn.Module, hand: nn.Module, x: torch.Tensor, rounds: int, calls: int
) -> tuple[float, float, str]:
    """(built / handwritten, A/A control, detail): medians of interleaved batches of ``calls`` calls.

    The handwritten reference pools the samples of both handwritten copies; the A/A control is
    one copy over the other, the noise of this run.
    """
    control = copy.deepcopy(hand)

    def batch(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for _ in range(calls):
                    model(x)

        return run

    variants = {"handwritten": batch(hand), "built": batch(built), "control": batch(control)}
    times = interleave(variants, rounds=rounds, collect=False)
    reference = median([*times.wall["handwritten"], *times.wall["control"]])  # two identical handwritten models
    per_call = f"{reference / calls * 1e6:.0f} µs per call"
    return times.median("built") / reference, times.ratio("control", "handwritten"), per_call


def calls_for(model: nn.Module, x: torch.Tensor, target: float) -> int:
    """How many calls take about ``target`` seconds."""
    with torch.no_grad():
        for _ in range(5):
            model(x)
        t0 = time.perf_counter()
        for _ in range(5):
            model(x)
        one = (time.perf_counter() - t0) / 5
    return max(1, int(target / max(one, 1e-6)))


def graph_breaks(model: nn.Module, x: torch.Tensor) -> tuple[int, str]:
    """Graph breaks under ``torch._dynamo.explain``, then a ``fullgraph=True`` compile that must run."""
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    breaks = explained.graph_break_count
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(x)
        ok = torch.allclose(out, model(x))
    torch._dynamo.reset()
    compile_result = "ran, output matches" if ok else "OUTPUT DIFFERS"
    return breaks, f"{explained.graph_count} graph(s), {breaks} break(s); fullgraph compile {compile_result}"


def run(quick: bool = False, blocks: int = 1000) -> list[Result]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine stalls multi-threaded small ops at random
    try:
        return _run(quick, blocks)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, blocks: int) -> list[Result]:
    rounds, target = (31, 0.003) if quick else (101, 0.005)
    rows: list[Result] = []
    for name, (recipe, handwritten, shape) in cases(blocks).items():
        built, hand, x = pair(recipe, handwritten, shape)
        calls = calls_for(hand, x, target)
        ratio, control, detail = forward_ratio(built, hand, x, rounds, calls)
        tolerance = max(MIN_TOLERANCE, 2 * abs(control - 1.0))
        rows.append(Result("4", f"forward {name}: built / handwritten", "~1", tolerance, ratio,
                           detail=f"A/A control {control:.3f}x; {detail}; {rounds} x {calls} calls"))  # fmt: skip
    for name in ("mlp", "rgnet"):
        recipe, _, shape = cases(blocks)[name]
        import composer

        model = composer.build_from_config(recipe).eval()
        breaks, detail = graph_breaks(model, torch.randn(*shape))
        rows.append(
            Result("4", f"torch.compile(fullgraph=True) {name}: graph breaks", "<=", 0, breaks, "breaks", detail=detail)
        )
    return rows
