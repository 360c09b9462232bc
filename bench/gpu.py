"""Optional: the large model built directly on CUDA, and a checkpoint loaded onto it.

Skipped (reported as not available) without CUDA; nothing in the tests needs a GPU. In a fresh
interpreter: ``build_from_config(large recipe, device="cuda")`` against handwritten construction on
CUDA followed by a ``normal_`` pass, and ``load_checkpoint(..., map_location="cuda")`` of the
403 M-parameter model with and without verification; best of 3, synchronized.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Result, not_available, run_child


def run(quick: bool = False) -> list[Result]:
    import torch

    if not torch.cuda.is_available():
        return [not_available("GPU", "large model on cuda, checkpoint onto cuda", "no CUDA device: skipped")]
    import composer
    from bench.common import large_recipe

    with tempfile.TemporaryDirectory(prefix="composer-bench-") as tmp:
        path = Path(tmp) / "large.safetensors"
        composer.save_checkpoint(composer.build_from_config(large_recipe()), path)
        res = run_child("gpu", str(path))
    build_ms, hand_ms = res["build_cuda_s"] * 1000, res["handwritten_cuda_s"] * 1000
    detail = f"build {build_ms:.0f} ms vs {hand_ms:.0f} ms; {res['device']}; best of 3"
    unverified = res["load_cuda_noverify_s"]
    return [
        Result("GPU", "build large on cuda / handwritten on cuda + normal_", "info", None,
               res["build_cuda_s"] / res["handwritten_cuda_s"], detail=detail),
        Result("GPU", "load_checkpoint(map_location='cuda'), 1.6 GB, verify", "info", None, res["load_cuda_s"], "s"),
        Result("GPU", "load_checkpoint(map_location='cuda', verify=False)", "info", None, unverified, "s"),
    ]  # fmt: skip
