"""Goals 1 and 2: building 1,000 and 10,000 blocks of Linear(64, 64) + ReLU, from a dict and from a YAML file.

Side by side in one run: handwritten ``nn.Sequential``, ``composer.build_from_config`` (dict and
YAML path), ``hydra.utils.instantiate`` on the same tree written with ``_target_`` (from a dict,
and from YAML through ``OmegaConf.load``), and mmengine's registry where it is installed.

Goals 1 and 2 run with the collector as in a user's process (nothing frozen, left on by both:
composer leaves it as the caller set it). A second copy of the handwritten build is the A/A
control (the noise of the run).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import Result, Timings, blocks_handwritten, blocks_recipe, blocks_targets, interleave

BLOCKS = 1000
BIG_BLOCKS = 10_000


def mmengine_builder(n: int, width: int = 64) -> Callable[[], Any] | None:
    """mmengine's way: a registry of the classes, a builder per node; None without mmengine.

    mmengine's ``MODELS`` holds no ``torch.nn`` class (mmcv registers them), so the bench registers
    ``Linear`` and ``ReLU`` and a ``Sequential`` that builds its children through the registry, as
    an OpenMMLab model does.
    """
    try:
        from mmengine.registry import Registry
    except Exception:
        return None
    from torch import nn

    registry = Registry("composer-bench")
    registry.register_module("Linear", module=nn.Linear)
    registry.register_module("ReLU", module=nn.ReLU)

    def sequential(layers: list) -> nn.Module:
        return nn.Sequential(*[registry.build(layer) for layer in layers])

    registry.register_module("Sequential", module=sequential)
    cfg = blocks_recipe(n, width)["model"]
    return lambda: registry.build(cfg)


def run(quick: bool = False) -> list[Result]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import composer

    rounds, big_rounds, peer_rounds = (7, 3, 2) if quick else (21, 7, 4)
    recipe = blocks_recipe(BLOCKS)
    targets = blocks_targets(BLOCKS)
    with tempfile.TemporaryDirectory(prefix="composer-bench-") as tmp:
        recipe_yaml = Path(tmp) / "blocks.yaml"
        recipe_yaml.write_text(yaml.safe_dump(recipe, sort_keys=False))
        size = f"{recipe_yaml.stat().st_size / 1000:.0f} KB"
        targets_yaml = Path(tmp) / "blocks_targets.yaml"
        targets_yaml.write_text(yaml.safe_dump(targets, sort_keys=False))

        def yaml_floor() -> Any:
            """The floor of YAML -> model: PyYAML's C loader, then the handwritten build."""
            yaml.load(recipe_yaml.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            return blocks_handwritten(BLOCKS)

        ours: dict[str, Callable[[], Any]] = {
            "handwritten": lambda: blocks_handwritten(BLOCKS),
            "handwritten (A/A copy)": lambda: blocks_handwritten(BLOCKS),
            "composer dict": lambda: composer.build_from_config(recipe),
            "composer yaml": lambda: composer.build_from_config(recipe_yaml),
            "C loader + handwritten": yaml_floor,
        }
        big = blocks_recipe(BIG_BLOCKS)
        ten_k: dict[str, Callable[[], Any]] = {
            "handwritten": lambda: blocks_handwritten(BIG_BLOCKS),
            "handwritten (A/A copy)": lambda: blocks_handwritten(BIG_BLOCKS),
            "composer dict": lambda: composer.build_from_config(big),
        }
        peers: dict[str, Callable[[], Any]] = {
            "handwritten": ours["handwritten"],
            "composer dict": ours["composer dict"],
            "hydra instantiate": lambda: instantiate(targets),
            "hydra yaml": lambda: instantiate(OmegaConf.load(targets_yaml)),
        }
        mm = mmengine_builder(BLOCKS)
        if mm is not None:
            peers["mmengine"] = mm
        check(peers | ours)  # also the warm-up
        # The goals against handwritten first, on their own: seconds-long peers between them
        # churn the allocator and shift the ratio by up to 0.3 from one run to the next.
        # The collector as in a user's process (every object of torch and the rest in its
        # generations, none frozen), on for both.
        times = interleave(ours, rounds=rounds, warmup=0, freeze=False)
        big_times = interleave(ten_k, rounds=big_rounds, warmup=0, freeze=False)
        peer_times = interleave(peers, rounds=peer_rounds, warmup=0)

    t = {name: times.median(name) for name in times.wall}
    p = {name: peer_times.median(name) for name in peer_times.wall}
    rows = [
        Result("1", "build 1,000 blocks from a dict / handwritten", "<=", 1.25,
               t["composer dict"] / t["handwritten"], detail=_detail(times, "composer dict", "handwritten")),
        Result("1", "A/A control: handwritten / its copy, 1,000 blocks (noise of the run)", "info", None,
               times.ratio("handwritten (A/A copy)", "handwritten"),
               detail=f"fastest/fastest {times.min_ratio('handwritten (A/A copy)', 'handwritten'):.2f}x"),
        Result("1", "build 10,000 blocks from a dict / handwritten", "<=", 1.25,
               big_times.ratio("composer dict", "handwritten"),
               detail=_detail(big_times, "composer dict", "handwritten")),
        Result("1", "A/A control: handwritten / its copy, 10,000 blocks", "info", None,
               big_times.ratio("handwritten (A/A copy)", "handwritten")),
        Result("1", "hydra.utils.instantiate / composer (speed-up)", ">=", 8.0,
               p["hydra instantiate"] / p["composer dict"], detail=peer_times.describe()),
    ]  # fmt: skip
    if mm is not None:
        rows += [
            Result("1", "mmengine registry / handwritten (peer)", "info", None, p["mmengine"] / p["handwritten"]),
            Result("1", "mmengine registry / composer (speed-up)", "info", None, p["mmengine"] / p["composer dict"]),
        ]
    else:
        rows.append(
            Result("1", "mmengine registry / handwritten (peer)", "info", None, None, detail="mmengine not installed")
        )
    rows += [
        Result("2", f"build from a {size} YAML file / PyYAML C loader + handwritten", "<=", 1.15,
               t["composer yaml"] / t["C loader + handwritten"],
               detail=_detail(times, "composer yaml", "C loader + handwritten")),
        Result("2", "hydra: OmegaConf.load + instantiate / handwritten (peer)", "info", None,
               p["hydra yaml"] / p["handwritten"]),
    ]  # fmt: skip
    return rows


def _detail(times: Timings, a: str, b: str) -> str:
    """The medians and fastest runs, the CPU-time ratio and the fastest/fastest ratio of a figure."""
    return (
        times.describe([a, b])
        + f"; CPU-time ratio {times.cpu_ratio(a, b):.2f}x; fastest/fastest {times.min_ratio(a, b):.2f}x"
    )


def check(variants: dict[str, Callable[[], Any]]) -> None:
    """Every variant builds the same architecture, or the comparison means nothing."""
    from torch import nn

    shapes = None
    for name, build in variants.items():
        model = build()
        got = [
            (type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False)))
            for m in model.modules()
            if not isinstance(m, nn.Sequential)
        ]
        if shapes is None:
            shapes = got
        elif got != shapes:
            raise AssertionError(f"{name} builds a different model than handwritten")
