"""Measurements that need a fresh interpreter: peak memory, and time after import.

``python -m bench.child TASK [ARGS]`` prints one JSON line. Peak RSS is the kernel's high-water mark
(``VmHWM``), reset to the current RSS after the imports, so ``delta_mb`` is what the measured call
alone added on top of the interpreter with torch and composer loaded.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any


def _load_composer():
    """torch and all of composer's API, imported before anything is measured (``composer`` itself
    imports its modules on first use, so that its command line starts before torch)."""
    import torch  # noqa: F401

    import composer

    for name in composer.__all__:
        getattr(composer, name)
    import composer.modules.blocks  # noqa: F401  (the tutorial's blocks register themselves)

    return composer


def _measure(fn) -> dict[str, Any]:
    from bench.common import peak_rss_mb, reset_peak_rss, rss_mb

    gc.collect()
    baseline = rss_mb()
    reset = reset_peak_rss()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_mb()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "delta_mb": peak - baseline,
        "hwm_reset": reset,
        "out": out,
    }


# --- goal 3: the large model ----------------------------------------------------------------------


def large(variant: str) -> dict[str, Any]:
    import math

    import torch
    from torch import nn

    from bench.common import LARGE_LAYERS, LARGE_WIDTH, large_recipe

    composer = _load_composer()

    n, w = LARGE_LAYERS, LARGE_WIDTH
    bound = 1 / math.sqrt(w)
    keep: list[Any] = []

    def floor():
        """Allocate every parameter, one normal_ pass over the weights (biases: their default uniform)."""
        for _ in range(n):
            keep.append(torch.empty(w, w).normal_(0.0, 0.02))
            keep.append(torch.empty(w).uniform_(-bound, bound))

    def handwritten():
        model = nn.Sequential(*[nn.Linear(w, w) for _ in range(n)])
        with torch.no_grad():
            for layer in model:
                layer.weight.normal_(0.0, 0.02)
        keep.append(model)

    def expert():
        """What an expert writes: on meta, to_empty, one pass (weights normal, biases their default)."""
        with torch.device("meta"):
            model = nn.Sequential(*[nn.Linear(w, w) for _ in range(n)])
        model.to_empty(device="cpu")
        with torch.no_grad():
            for layer in model:
                layer.weight.normal_(0.0, 0.02)
                layer.bias.uniform_(-bound, bound)
        keep.append(model)

    def build():
        keep.append(composer.build_from_config(large_recipe()))

    def mmengine():
        from mmengine.model import BaseModule

        class Net(BaseModule):
            def __init__(self):
                super().__init__(init_cfg=dict(type="Normal", layer="Linear", std=0.02))
                self.layers = nn.Sequential(*[nn.Linear(w, w) for _ in range(n)])

        model = Net()
        model.init_weights()
        keep.append(model)

    fn = {"floor": floor, "handwritten": handwritten, "expert": expert, "composer": build, "mmengine": mmengine}[
        variant
    ]
    if variant == "mmengine":
        import mmengine.model  # noqa: F401  (imported before the baseline, like torch)
    result = _measure(fn)
    tensors = [t for t in keep if isinstance(t, torch.Tensor)] or list(keep[0].parameters())
    result["param_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    weight = tensors[0] if tensors[0].dim() == 2 else tensors[1]
    result["weight_std"] = float(weight.detach()[:256].std())
    del result["out"]
    return result


# --- goal 7: check mode of a 10-billion-parameter recipe --------------------------------------------


def meta_recipe() -> dict[str, Any]:
    """20 blocks of LayerNorm(8192), Linear 8192-32768, GELU, Linear 32768-8192: 10.7 B parameters."""
    d, h = 8192, 32768
    block = {
        "type": "Sequential",
        "layers": [
            {"type": "LayerNorm", "normalized_shape": d},
            {"type": "Linear", "in_features": d, "out_features": h},
            {"type": "GELU"},
            {"type": "Linear", "in_features": h, "out_features": d},
        ],
    }
    return {
        "model": {"type": "Repeat", "times": 20, "names": "block {i}", "body": block},
        "init": {"rules": [{"layer": "Linear", "weight": {"type": "normal", "std": 0.02}, "bias": "zeros"}]},
        "input_shape": [2, d],
    }


def meta() -> dict[str, Any]:
    composer = _load_composer()

    recipe = meta_recipe()
    phases: dict[str, float] = {}

    def check():
        t0 = time.perf_counter()
        model = composer.build_from_config(recipe, device="meta")
        phases["build_s"] = time.perf_counter() - t0
        text = composer.summary(model)
        phases["summary_s"] = time.perf_counter() - phases["build_s"] - t0
        return model, text

    result = _measure(check)
    model, text = result.pop("out")
    result.update(phases)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["all_meta"] = all(p.is_meta for p in model.parameters())
    result["summary_lines"] = text.count("\n") + 1
    return result


# --- optional GPU section ------------------------------------------------------------------------


def gpu(checkpoint: str) -> dict[str, Any]:
    import torch
    from torch import nn

    from bench.common import large_recipe

    composer = _load_composer()
    out: dict[str, Any] = {}
    if not torch.cuda.is_available():
        return {"available": False}
    torch.zeros(1, device="cuda")  # the CUDA context, outside the timings
    recipe = large_recipe()

    def sync_time(fn) -> float:
        torch.cuda.synchronize()
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        del result
        torch.cuda.empty_cache()
        return seconds

    def hand():
        model = nn.Sequential(*[nn.Linear(4096, 4096, device="cuda") for _ in range(24)])
        with torch.no_grad():
            for layer in model:
                layer.weight.normal_(0.0, 0.02)
        return model

    for name, fn in [
        ("build_cuda_s", lambda: composer.build_from_config(recipe, device="cuda")),
        ("handwritten_cuda_s", hand),
        ("load_cuda_s", lambda: composer.load_checkpoint(checkpoint, map_location="cuda")),
        ("load_cuda_noverify_s", lambda: composer.load_checkpoint(checkpoint, map_location="cuda", verify=False)),
    ]:
        out[name] = min(sync_time(fn) for _ in range(3))
    out["available"] = True
    out["device"] = torch.cuda.get_device_name()
    return out


# --- goal 8: GPT-2 small built with nanoGPT's init -----------------------------------------------


def gpt2(variant: str) -> dict[str, Any]:
    """``composer``: the gpt2_small recipe with a normal(0, 0.02) rule (``composer_bf16``: in
    bfloat16); ``handwritten``: the reference GPT, then nanoGPT's ``_init_weights`` pass."""
    import torch
    from torch import nn

    composer = _load_composer()
    from tests import references as R
    from tests.recipes import recipe_with

    rule = {"layer": ["Linear", "Embedding"], "weight": {"type": "normal", "std": 0.02}}
    recipe = recipe_with("gpt2_small", {"init": {"seed": 0, "rules": [rule, {"layer": "Linear", "bias": "zeros"}]}})
    if variant == "composer_bf16":
        recipe.dtype = "bfloat16"
    keep = []

    def handwritten():
        model = R.gpt2()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    m.weight.normal_(0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
        keep.append(model)

    def build():
        keep.append(composer.build_from_config(recipe))

    out = _measure(handwritten if variant == "handwritten" else build)
    del out["out"]
    params = list(keep[0].parameters())
    out["param_mb"] = sum(p.numel() * p.element_size() for p in params) / 2**20
    return out


if __name__ == "__main__":
    task, *args = sys.argv[1:]
    result = {"large": large, "meta": meta, "gpu": gpu, "gpt2": gpt2}[task](*args)
    print(json.dumps(result))
