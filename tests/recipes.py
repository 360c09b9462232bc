"""The packaged recipes the tests build: ``composer/conf/model/<name>.yaml`` by name, and the repository root."""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from composer.recipe.read import example_inputs

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "composer" / "conf"  # the packaged recipes, shipped inside the wheel
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
BIG = {"gpt2_small", "vit_tiny", "resnet18"}  # seconds each to build and run: the slow lane


def model_recipe(name: str) -> Path:
    return CONF / "model" / f"{name}.yaml"


def example_batch(recipe: dict) -> list[torch.Tensor]:
    """Random inputs of the shapes and dtypes a built recipe declares (integers 0 or 1: valid token
    ids, BERT's token types and attention masks alike)."""
    _, specs = example_inputs(recipe)
    return [
        torch.rand(spec.shape, dtype=spec.dtype)
        if spec.dtype.is_floating_point
        else torch.randint(0, 2, spec.shape, dtype=spec.dtype)
        for spec in specs
    ]


def recipe_with(name: str, overrides: dict | None = None) -> DictConfig:
    """A packaged recipe with dotted-key overrides (``vars.n_layer``), as Hydra would compose it."""
    cfg = OmegaConf.load(model_recipe(name))
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    return cfg
