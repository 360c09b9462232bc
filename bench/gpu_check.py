"""A prepared check for a machine with a CUDA device (``python -m bench.gpu_check``): every
conf/model recipe on ``cuda``, the real torchvision/timm networks' weights in the recipes where
those packages are installed, forward timings against the references, and the GPU section of the
benchmarks. Prints one JSON line per result; nothing in the test suite needs it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT

sys.path.insert(0, str(ROOT))


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def recipes_on_cuda() -> None:
    from composer import build_from_config, load_checkpoint, save_checkpoint
    from tests.recipes import MODELS, example_batch, recipe_with

    for name in MODELS:
        try:
            recipe = recipe_with(name, {"init.seed": 0})
            state = torch.cuda.get_rng_state()
            a = build_from_config(recipe, device="cuda")
            b = build_from_config(recipe, device="cuda")
            same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
            rng_kept = torch.equal(state, torch.cuda.get_rng_state())
            x = [t.cuda() for t in example_batch(a.composer_record.recipe)]
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(a, Path(tmp) / "m.safetensors")
                loaded = load_checkpoint(Path(tmp) / "m.safetensors", map_location="cuda")
            a.eval(), loaded.eval()
            with torch.no_grad():
                equal = torch.equal(a(*x), loaded(*x))
            on_cuda = all(p.is_cuda for p in loaded.parameters())
            emit(check="recipe on cuda", name=name, bitwise_same_build=same, cuda_rng_kept=rng_kept,
                 reload_equal=equal, loaded_on_cuda=on_cuda)  # fmt: skip
        except Exception as e:  # report and go on: one recipe's failure should not hide the others
            emit(check="recipe on cuda", name=name, error=f"{type(e).__name__}: {e}")


def real_references() -> None:
    """torchvision's ResNet-18 and timm's ViT-Tiny (random weights: no download) into the recipes."""
    from composer import build_from_config
    from tests.recipes import recipe_with

    cases = []
    try:
        import torchvision

        cases.append(("resnet18", lambda: torchvision.models.resnet18(weights=None)))
    except Exception as e:
        emit(check="torchvision", error=str(e))
    try:
        import timm

        cases.append(("vit_tiny", lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False)))
    except Exception as e:
        emit(check="timm", error=str(e))
    for name, make in cases:
        try:
            torch.manual_seed(0)
            ref = make().cuda().eval()
            model = build_from_config(recipe_with(name), device="cuda").eval()
            missing = model.load_state_dict(ref.state_dict(), strict=True)
            x = torch.randn(4, 3, 224, 224, device="cuda")
            with torch.no_grad():
                out, expected = model(x), ref(x)
            emit(check="real reference weights", name=name, strict_load=str(missing), equal=torch.equal(out, expected),
                 max_abs_diff=float((out - expected).abs().max()), forward_ratio=_ratio(model, ref, x))  # fmt: skip
        except Exception as e:
            emit(check="real reference weights", name=name, error=f"{type(e).__name__}: {e}")


def _ratio(a: torch.nn.Module, b: torch.nn.Module, *x: torch.Tensor, rounds: int = 30) -> float:
    """Median CUDA time of a's forward over b's, interleaved."""
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.no_grad():
        for m in (a, b):
            m(*x)
        for r in range(rounds):
            for i, m in ((0, a), (1, b)) if r % 2 else ((1, b), (0, a)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                m(*x)
                end.record()
                torch.cuda.synchronize()
                times[i].append(start.elapsed_time(end))
    return sorted(times[0])[rounds // 2] / sorted(times[1])[rounds // 2]


def gpt2_forward() -> None:
    from composer import build_from_config
    from tests import references as R
    from tests.recipes import recipe_with

    torch.manual_seed(0)
    ref = R.gpt2().cuda().eval()
    model = build_from_config(recipe_with("gpt2_small"), device="cuda").eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randint(0, 50257, (8, 256), device="cuda")
    with torch.no_grad():
        equal = torch.equal(model(x), ref(x))
    emit(check="gpt2_small forward on cuda", equal=equal, forward_ratio=_ratio(model, ref, x))


def bench_gpu() -> None:
    from bench import gpu

    for row in gpu.run():
        emit(check="bench gpu", what=row.what, measured=row.measured, detail=row.detail)


if __name__ == "__main__":
    t0 = time.perf_counter()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    for step in (recipes_on_cuda, real_references, gpt2_forward, bench_gpu):
        try:
            step()
        except Exception as e:
            emit(step=step.__name__, error=f"{type(e).__name__}: {e}")
    emit(seconds=round(time.perf_counter() - t0, 1))
