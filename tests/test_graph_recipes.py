"""The section 7.8 recipes of composer/conf/model against the handwritten references: the same state_dict keys
in the same order, the same shapes, strict loading of the reference's weights, and then the same
outputs bit for bit; GPT-2's causality and its tie through a checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from composer import build_from_config, load_checkpoint, save_checkpoint
from tests import references as R
from tests.recipes import BIG, recipe_with

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


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in CASES])
def test_recipe_loads_the_references_weights_and_gives_its_outputs(name):
    make_reference, overrides, make_inputs = CASES[name]
    torch.manual_seed(0)
    reference = make_reference()
    model = build_from_config(recipe_with(name, overrides))
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
    model = build_from_config(recipe_with("gpt2_small"), device="meta")
    with torch.device("meta"):
        reference = R.gpt2()
    assert R.count_parameters(model) == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    logits = model(torch.zeros(2, 64, dtype=torch.long, device="meta"))
    assert list(logits.shape) == [2, 64, 50257]


def test_resnet18_and_vit_tiny_parameter_counts():
    assert R.count_parameters(build_from_config(recipe_with("resnet18"), device="meta")) == 11_689_512
    assert R.count_parameters(build_from_config(recipe_with("vit_tiny"), device="meta")) == 5_717_416


def small_gpt(**extra):
    return build_from_config(recipe_with("gpt2_small", {f"vars.{k}": v for k, v in SMALL_GPT.items()} | extra))


def test_gpt2_is_causal():
    model = small_gpt().eval()
    tokens = torch.randint(0, 100, (1, 16))
    changed = tokens.clone()
    changed[0, 9] = (tokens[0, 9] + 1) % 100
    a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :9], b[:, :9]) and not torch.equal(a[:, 9:], b[:, 9:])


def test_gpt2_tie_holds_through_a_checkpoint_stored_once(tmp_path):
    model = small_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    save_checkpoint(model, tmp_path / "gpt.safetensors")
    with safe_open(tmp_path / "gpt.safetensors", "pt") as f:
        assert "transformer.wte.weight" in f.keys() and "lm_head.weight" not in f.keys()
    loaded = load_checkpoint(tmp_path / "gpt.safetensors")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    tokens = torch.randint(0, 100, (2, 8))
    assert torch.equal(loaded.eval()(tokens), model.eval()(tokens))


def test_gpt2_xl_sized_recipe_checks_on_meta_without_allocating():
    xl = {"vars.n_layer": 48, "vars.n_embd": 1600, "vars.n_head": 25}
    model = build_from_config(recipe_with("gpt2_small", xl), device="meta")
    assert 1.5e9 < R.count_parameters(model) < 1.6e9
    assert all(p.is_meta for p in model.parameters())
