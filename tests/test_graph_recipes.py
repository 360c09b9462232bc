"""The section 7.8 recipes of conf/model against the handwritten references: the same state_dict keys
in the same order, the same shapes, strict loading of the reference's weights, and then the same
outputs bit for bit. Built with the stand-in of ``tests/graph_recipes.py`` until the builder knows
Graph; switch ``build``/``read`` to ``composer.build_from_config`` then.
"""

from __future__ import annotations

import pytest
import torch

from tests import references as R
from tests.recipes import model_recipe
from tests.graph_recipes import build, read

SMALL_GPT = {"vocab_size": 100, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}

CASES = {
    "resnet18": (R.resnet18, {}, lambda: (torch.randn(2, 3, 224, 224),)),
    "vit_tiny": (R.vit_tiny, {}, lambda: (torch.randn(2, 3, 224, 224),)),
    "gpt2_small": (lambda: R.gpt2(**SMALL_GPT), {f"vars.{k}": v for k, v in SMALL_GPT.items()},
                   lambda: (torch.randint(0, 100, (2, 16)),)),
    "unet": (R.UNet, {}, lambda: (torch.randn(2, 3, 64, 64),)),
    "lstm_classifier": (R.LSTMClassifier, {}, lambda: (torch.randint(0, 1000, (2, 16)),)),
    "siamese": (R.Siamese, {}, lambda: (torch.randn(2, 32), torch.randn(2, 32))),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_recipe_loads_the_references_weights_and_gives_its_outputs(name):
    make_reference, overrides, make_inputs = CASES[name]
    torch.manual_seed(0)
    reference = make_reference()
    model = build(read(model_recipe(name), overrides))
    expected, got = reference.state_dict(), model.state_dict()
    assert list(got) == list(expected)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}
    model.load_state_dict(expected, strict=True)
    inputs = make_inputs()
    for mode in ("eval", "train"):
        getattr(model, mode)(), getattr(reference, mode)()
        torch.manual_seed(1)
        out = model(*inputs)
        torch.manual_seed(1)
        assert torch.equal(out, reference(*inputs)), mode


def test_gpt2_small_full_size_counts_and_ties():
    with torch.device("meta"):
        model = build(read(model_recipe("gpt2_small")))
        reference = R.gpt2()
    assert R.count_parameters(model) == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    logits = model(torch.zeros(2, 64, dtype=torch.long, device="meta"))
    assert list(logits.shape) == [2, 64, 50257]


def test_resnet18_and_vit_tiny_parameter_counts():
    with torch.device("meta"):
        assert R.count_parameters(build(read(model_recipe("resnet18")))) == 11_689_512
        assert R.count_parameters(build(read(model_recipe("vit_tiny")))) == 5_717_416
