"""Graph's generated forward against the same module written by hand (goal: <= 1.05x).

A tiny residual block (where only the per-call overhead shows), then two blocks, each at a small
and a real size: a ResNet
basic block (torchvision's, with a downsample shortcut) and a pre-norm transformer block (timm's
ViT block, attention through ``scaled_dot_product_attention``). The Graph holds the handwritten
block's own modules, so outputs are checked equal bit for bit before timing.

Timing as in ``bench/forward.py``: one thread, ``no_grad``, eval mode, batches of calls interleaved
in a rotating order, medians; an A/A control (a second copy of the handwritten block) measures the
noise of the run. ``--compile`` then compiles both with ``torch.compile(fullgraph=True)`` (inductor;
slow on 2 cores), counts graph breaks with ``torch._dynamo.explain`` and times the compiled pair.

    python -m bench.graph_forward [--rounds 41] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from composer.graph import CallEntry, Graph, GraphSpec, ModuleEntry, OpEntry
from composer.ops import OPS
from tests import references as R

op = OPS._entries.__getitem__


def basic_block_graph(block: R.BasicBlock) -> Graph:
    entries = [ModuleEntry(n, getattr(block, n)) for n in ("conv1", "bn1", "relu", "conv2", "bn2")]
    entries += [
        ModuleEntry("downsample", block.downsample, ["x"]),
        OpEntry("sum", op("add"), inputs=["bn2", "downsample"]),
        CallEntry("out", "relu"),
    ]
    return Graph(GraphSpec(entries))


def vit_block_graph(block: R.ViTBlock) -> Graph:
    a = block.attn
    attn = Graph(GraphSpec([
        ModuleEntry("qkv", a.qkv),
        OpEntry("split", op("unflatten"), {"dim": -1, "sizes": [3, a.num_heads, a.head_dim]}),
        OpEntry("by_head", op("permute"), {"dims": [2, 0, 3, 1, 4]}),
        OpEntry("q", op("getitem"), {"index": 0}, ["by_head"]),
        OpEntry("k", op("getitem"), {"index": 1}, ["by_head"]),
        OpEntry("v", op("getitem"), {"index": 2}, ["by_head"]),
        OpEntry("mixed", op("attention"), inputs=["q", "k", "v"]),
        OpEntry("merged", op("transpose"), {"dim0": 1, "dim1": 2}),
        OpEntry("flat", op("flatten"), {"start_dim": 2}),
        ModuleEntry("proj", a.proj),
    ]))  # fmt: skip
    mlp = Graph(
        GraphSpec(
            [ModuleEntry("fc1", block.mlp.fc1), ModuleEntry("act", block.mlp.act), ModuleEntry("fc2", block.mlp.fc2)]
        )
    )
    return Graph(GraphSpec([
        ModuleEntry("norm1", block.norm1), ModuleEntry("attn", attn), OpEntry("res1", op("add"), inputs=["x", "attn"]),
        ModuleEntry("norm2", block.norm2), ModuleEntry("mlp", mlp), OpEntry("res2", op("add"), inputs=["res1", "mlp"]),
    ]))  # fmt: skip


class TinyResidual(nn.Module):
    """Where only the per-call overhead shows: Linear(4, 4), ReLU, Linear(4, 4), plus the input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def tiny_graph(block: TinyResidual) -> Graph:
    entries = [ModuleEntry(n, getattr(block, n)) for n in ("fc1", "act", "fc2")]
    return Graph(GraphSpec([*entries, OpEntry("sum", op("add"), inputs=["x", "fc2"])]))


def cases() -> dict[str, tuple[nn.Module, Callable[[nn.Module], Graph], torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "tiny residual Linear(4, 4) x2": (TinyResidual(), tiny_graph, torch.randn(1, 4)),
        "resnet basic block 8ch 8x8": (R.BasicBlock(8, 16, stride=2), basic_block_graph, torch.randn(1, 8, 8, 8)),
        "resnet basic block 64ch 56x56": (
            R.BasicBlock(64, 128, stride=2),
            basic_block_graph,
            torch.randn(1, 64, 56, 56),
        ),
        "transformer block d32 t8": (R.ViTBlock(32, 4), vit_block_graph, torch.randn(1, 8, 32)),
        "transformer block d192 t197": (R.ViTBlock(192, 3), vit_block_graph, torch.randn(1, 197, 192)),
    }


def calls_for(model: nn.Module, x: torch.Tensor, target: float) -> int:
    with torch.no_grad():
        for _ in range(5):
            model(x)
        t0 = time.perf_counter()
        for _ in range(5):
            model(x)
    return max(1, int(target / max((time.perf_counter() - t0) / 5, 1e-7)))


def ratios(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, target: float = 0.004) -> dict[str, float]:
    """Median seconds per call of each model: interleaved batches, rotating order."""
    calls = calls_for(models["handwritten"], x, target)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    with torch.no_grad():
        for r in range(rounds + 1):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                model = models[name]
                t0 = time.perf_counter()
                for _ in range(calls):
                    model(x)
                if r:  # round 0 warms up
                    times[name].append((time.perf_counter() - t0) / calls)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--compile", action="store_true", help="also compile with fullgraph=True (inductor)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median of {args.rounds} interleaved batches per figure")
    print(f"{'case':32} {'hand µs':>9} {'graph/hand':>11} {'A/A':>6}")
    built = {}
    for name, (block, to_graph, x) in cases().items():
        hand = block.eval()
        graph = to_graph(copy.deepcopy(block)).eval()
        with torch.no_grad():
            assert torch.equal(graph(x), hand(x)), name
        t = ratios({"handwritten": hand, "graph": graph, "control": copy.deepcopy(hand)}, x, args.rounds)
        hand_us, graph_ratio, control = (
            t["handwritten"] * 1e6,
            t["graph"] / t["handwritten"],
            t["control"] / t["handwritten"],
        )
        print(f"{name:32} {hand_us:9.1f} {graph_ratio:10.3f}x {control:5.3f}x")
        built[name] = (hand, graph, x)
    if not args.compile:
        return
    import torch._dynamo as dynamo

    print("\ntorch.compile(fullgraph=True), inductor")
    for name, (hand, graph, x) in built.items():
        dynamo.reset()
        explained = dynamo.explain(graph)(x)
        t0 = time.perf_counter()
        compiled_graph = torch.compile(graph, fullgraph=True)
        compiled_hand = torch.compile(hand, fullgraph=True)
        with torch.no_grad():
            out_graph, out_hand = compiled_graph(x), compiled_hand(x)
        seconds = time.perf_counter() - t0
        same = torch.equal(out_graph, out_hand)
        close = torch.allclose(out_graph, hand(x), atol=1e-5, rtol=1e-4)
        t = ratios({"handwritten": compiled_hand, "graph": compiled_graph}, x, max(11, args.rounds // 4))
        print(
            f"{name:32} {explained.graph_count} graph, {explained.graph_break_count} breaks; "
            f"compiled both in {seconds:.0f} s; compiled graph == compiled hand: {same}, close to eager: {close}; "
            f"compiled graph/hand {t['graph'] / t['handwritten']:.3f}x"
        )


if __name__ == "__main__":
    main()
