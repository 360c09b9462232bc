"""CI guard against gross speed regressions: small, fast versions of benchmark goals 1 and 4.

Shared CI machines are noisy, so a check fails only when a ratio is more than twice its goal
(build at most 2 x 1.15 handwritten, at least 8 / 2 times faster than ``hydra.utils.instantiate``,
forward at most 2 x 1.00 handwritten), and only if a second measurement confirms it. The timing
and the recipes are the benchmarks' own (``bench.common``); the full benchmarks are
``python -m bench`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate

import composer
from bench.common import blocks_handwritten, blocks_recipe, blocks_targets, confirmed, interleave

BLOCKS = 200
BUILD_LIMIT = 2 * 1.15  # goal 1: at most 1.15x handwritten
HYDRA_SPEEDUP_LIMIT = 8 / 2  # goal 1: at least 8x faster than hydra.utils.instantiate
FORWARD_LIMIT = 2 * 1.00  # goal 4: 1.00x handwritten


def test_build_is_not_grossly_slower_than_handwritten_nor_near_hydra() -> None:
    recipe, targets = blocks_recipe(BLOCKS), blocks_targets(BLOCKS)

    def measure() -> tuple[bool, str]:
        t = interleave(
            {
                "handwritten": lambda: blocks_handwritten(BLOCKS),
                "composer": lambda: composer.build_from_config(recipe),
                "hydra": lambda: instantiate(targets),
            },
            rounds=7,
            cap={"hydra": 2},
        )
        ratio, speedup = t.ratio("composer", "handwritten"), t.ratio("hydra", "composer")
        message = (
            f"{BLOCKS} blocks: composer {ratio:.2f}x handwritten (limit {BUILD_LIMIT}), "
            f"hydra {speedup:.1f}x slower than composer (limit {HYDRA_SPEEDUP_LIMIT})"
        )
        return ratio <= BUILD_LIMIT and speedup >= HYDRA_SPEEDUP_LIMIT, message

    ok, message = confirmed(measure)
    assert ok, message


def test_forward_of_a_built_model_is_not_grossly_slower_than_handwritten() -> None:
    built = composer.build_from_config(blocks_recipe(BLOCKS)).eval()
    hand = blocks_handwritten(BLOCKS).eval()
    hand.load_state_dict(built.state_dict())
    x = torch.randn(64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second OpenMP thread that loses its core stalls small matmuls at random
    try:
        with torch.no_grad():
            assert torch.equal(built(x), hand(x))

            def measure() -> tuple[bool, str]:
                t = interleave({"handwritten": lambda: hand(x), "built": lambda: built(x)}, rounds=15, collect=False)
                ratio = t.ratio("built", "handwritten")
                return (
                    ratio <= FORWARD_LIMIT,
                    f"forward of {BLOCKS} blocks: built {ratio:.2f}x handwritten (limit {FORWARD_LIMIT})",
                )

            ok, message = confirmed(measure)
            assert ok, message
    finally:
        torch.set_num_threads(threads)
