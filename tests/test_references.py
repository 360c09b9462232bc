"""The handwritten references have their originals' sizes and key names."""

from __future__ import annotations

import torch

from tests import references as R


def test_resnet18_has_torchvisions_parameter_count_and_keys():
    with torch.device("meta"):
        model = R.resnet18()
    assert R.count_parameters(model) == 11_689_512
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias", "fc.bias"} <= keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_vit_tiny_has_timms_parameter_count_and_keys():
    with torch.device("meta"):
        model = R.vit_tiny()
    assert R.count_parameters(model) == 5_717_416
    keys = list(model.state_dict())
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert {"blocks.11.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight", "head.weight"} <= set(keys)


def test_gpt2_small_has_nanogpts_parameter_count_keys_and_tie():
    with torch.device("meta"):
        model = R.gpt2()
    assert R.count_parameters(model) == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    keys = model.state_dict().keys()
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.11.attn.c_attn.weight",
            "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"} <= keys  # fmt: skip


def test_small_gpt_is_causal():
    torch.manual_seed(0)
    model = R.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16).eval()
    idx = torch.randint(0, 50, (2, 8))
    changed = idx.clone()
    changed[:, -1] = (idx[:, -1] + 1) % 50
    with torch.no_grad():
        assert torch.equal(model(idx)[:, :-1], model(changed)[:, :-1])
        assert list(model(idx).shape) == [2, 8, 50]


def test_small_networks_shapes():
    torch.manual_seed(0)
    assert list(R.UNet()(torch.randn(2, 3, 32, 48)).shape) == [2, 2, 32, 48]
    assert list(R.LSTMClassifier()(torch.randint(0, 1000, (2, 16))).shape) == [2, 5]
    siamese = R.Siamese()
    a, b = torch.randn(2, 32), torch.randn(2, 32)
    assert torch.equal(siamese(a, b), siamese(b, a))
    assert list(siamese(a, b).shape) == [2, 1]
