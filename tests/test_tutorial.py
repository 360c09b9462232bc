"""The tutorial's networks and printed results, reproduced from recipes."""

import pytest
import torch
from torch import nn

from composer import build_from_config
from tests.recipes import BIG, MODELS, example_batch, model_recipe

RGNET_PRINT = """Sequential(
  (0): Sequential(
    (block 0): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 1): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 2): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 3): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
  )
  (1): Linear(in_features=4, out_features=1, bias=True)
)"""


# The output shape of each composer/conf/model recipe on its example inputs.
OUTPUT_SHAPES = {
    "mlp": [2, 10], "mlp_block": [2, 10], "my_sequential": [2, 10], "fixed_hidden_mlp": [],
    "chimera": [], "param_mlp": [2, 1], "rgnet": [2, 1], "tied": [2, 1], "centered": [4, 128],
    "my_linear": [2, 1], "lazy_mlp": [2, 10], "resnet18": [2, 1000], "vit_tiny": [2, 1000],
    "gpt2_small": [2, 64, 50257], "unet": [2, 2, 64, 64], "lstm_classifier": [2, 5], "siamese": [2, 1],
    "deep_mlp": [2, 10], "llama": [2, 16, 256], "mixtral": [2, 16, 256], "bert": [[2, 16, 64], [2, 64]],
    "convnext": [2, 1000], "seq2seq": [2, 10, 64],
}  # fmt: skip


def test_every_conf_model_has_an_expected_output_shape():
    assert sorted(OUTPUT_SHAPES) == MODELS


def shapes(out):
    """An output's shape as a list, a tuple's as a list of them (BERT: last_hidden_state, pooler_output)."""
    return [shapes(x) for x in out] if isinstance(out, tuple) else list(out.shape)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in OUTPUT_SHAPES])
def test_every_conf_model_builds_and_forwards(name):
    model = build_from_config(model_recipe(name))
    assert shapes(model(*example_batch(model.composer_record.recipe))) == OUTPUT_SHAPES[name]


def test_mlp_structure_matches_handwritten():
    model = build_from_config(model_recipe("mlp"))
    hand = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    assert str(model) == str(hand)
    assert type(model) is nn.Sequential  # a plain module, no wrapper in the forward path


def test_defaults_have_torchs_distributions_and_the_same_seed_the_same_weights():
    """Each tensor draws from its own stream, so the values differ from a handwritten model's
    under the same global seed, but the distributions are torch's: U(+-1/sqrt(fan_in))."""
    torch.manual_seed(0)
    model = build_from_config(model_recipe("mlp"))
    torch.manual_seed(0)
    again = build_from_config(model_recipe("mlp"))
    hand = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    for (n1, p1), (n2, p2), (n3, _) in zip(
        model.named_parameters(), again.named_parameters(), hand.named_parameters(), strict=True
    ):
        assert n1 == n2 == n3 and torch.equal(p1, p2)
    for layer in (model[0], model[2]):
        bound = 1 / layer.in_features**0.5
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound and p.std() > bound / 3  # filled, not left empty


def test_blocks_have_tutorial_structure():
    mlp = build_from_config(model_recipe("mlp_block"))
    assert (mlp.hidden.in_features, mlp.hidden.out_features, mlp.out.out_features) == (20, 256, 10)
    seq = build_from_config(model_recipe("my_sequential"))
    assert [name for name, _ in seq.named_children()] == ["0", "1", "2"]
    x = torch.rand(2, 20)
    assert torch.equal(seq(x), seq._modules["2"](torch.relu(seq._modules["0"](x))))


def test_centered_layer_reproduces_tutorial():
    layer = build_from_config({"type": "CenteredLayer"})
    assert layer(torch.tensor([1.0, 2, 3, 4, 5])).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    net = build_from_config(model_recipe("centered"))
    assert abs(net(torch.rand(4, 8)).mean().item()) < 1e-6


def test_rgnet_prints_like_the_tutorial():
    net = build_from_config(model_recipe("rgnet"))
    assert str(net) == RGNET_PRINT
    assert net[0][1][0].bias.shape == (8,)
    # four independent copies, not one block four times
    assert net[0][0][0].weight.data_ptr() != net[0][1][0].weight.data_ptr()


def test_param_mlp_named_parameters():
    net = build_from_config(model_recipe("param_mlp"))
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == [
        ("0.weight", (8, 4)), ("0.bias", (8,)), ("2.weight", (1, 8)), ("2.bias", (1,)),
    ]  # fmt: skip
    assert net[2].state_dict().keys() == {"weight", "bias"}
    assert isinstance(net[2].bias, nn.Parameter) and net[2].weight.grad is None


def test_tied_layers_are_one_object_and_stay_equal():
    net = build_from_config(model_recipe("tied"))
    assert net[2] is net[4]
    assert torch.equal(net[2].weight, net[4].weight)
    with torch.no_grad():
        net[2].weight[0, 0] = 100
    assert net[4].weight[0, 0].item() == 100
    assert len(list(net.parameters())) == 6  # the shared layer's two tensors counted once
    net(torch.rand(2, 4)).sum().backward()
    assert net[2].weight.grad is net[4].weight.grad


def test_fixed_hidden_mlp_and_chimera_forward_to_a_scalar():
    fixed = build_from_config(model_recipe("fixed_hidden_mlp"))
    assert "rand_weight" in fixed.state_dict() and not fixed.rand_weight.requires_grad
    assert ((fixed.rand_weight >= 0) & (fixed.rand_weight < 1)).all()
    assert fixed(torch.rand(2, 20)).dim() == 0
    chimera = build_from_config(model_recipe("chimera"))
    assert [type(m).__name__ for m in chimera] == ["NestMLP", "Linear", "FixedHiddenMLP"]
    out = chimera(torch.rand(2, 20))
    assert out.dim() == 0
    out.backward()  # trainable end to end
    assert chimera[0].linear.weight.grad is not None


def test_my_linear_trains_through_its_parameters():
    net = build_from_config(model_recipe("my_linear"))
    assert net[0].weight.shape == (64, 8) and net[0].bias.shape == (8,)
    x = torch.rand(2, 64)
    assert torch.equal(net[0](x), torch.relu(x @ net[0].weight + net[0].bias))
    net(x).sum().backward()
    assert net[0].weight.grad is not None


def test_lazy_mlp_gets_concrete_shapes_and_plain_classes():
    net = build_from_config(model_recipe("lazy_mlp"))
    assert type(net[0]) is nn.Linear and net[0].weight.shape == (256, 20)
    assert net[2].weight.shape == (10, 256)
    net(torch.rand(2, 20)).sum().backward()  # not inference tensors: gradients flow
    assert net[0].weight.grad is not None


def test_lazy_without_input_shape_stays_lazy_like_pytorch():
    net = build_from_config({"type": "Sequential", "layers": [{"type": "Linear", "out_features": 3}]})
    assert isinstance(net[0], nn.LazyLinear)
    assert net(torch.rand(5, 7)).shape == (5, 3)
    assert type(net[0]) is nn.Linear


@pytest.mark.parametrize(
    "node, lazy_class",
    [
        ({"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, nn.Conv2d),
        ({"type": "BatchNorm1d"}, nn.BatchNorm1d),
        ({"_target_": "torch.nn.Linear", "out_features": 2}, nn.Linear),
    ],
)
def test_other_lazy_layers(node, lazy_class):
    shape = [2, 3, 8, 8] if lazy_class is nn.Conv2d else [2, 5]
    model = build_from_config({"model": node, "input_shape": shape})
    assert type(model) is lazy_class
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
