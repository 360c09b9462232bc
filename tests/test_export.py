"""``to_recipe``: a model -> the recipe that rebuilds it, with the same names, shapes, sharing and outputs."""

import warnings

import pytest
import torch
import yaml
from torch import nn

from composer import ConfigError, build_from_config, register_module, to_recipe
from composer.modules.blocks import FixedHiddenMLP, MyLinear, MySequential, NestMLP
from tests.recipes import MODELS, model_recipe


def layout(model: nn.Module) -> dict:
    """What a rebuild must keep: module paths and classes, parameter and buffer names and shapes,
    and which paths are one module or one tensor."""

    def canonical(named):
        first = {}
        return {path: first.setdefault(id(obj), path) for path, obj in named}

    return {
        "modules": [(p, type(m).__name__) for p, m in model.named_modules(remove_duplicate=False)],
        "params": [(p, list(t.shape), t.requires_grad) for p, t in model.named_parameters(remove_duplicate=False)],
        "buffers": [(p, list(t.shape)) for p, t in model.named_buffers(remove_duplicate=False)],
        "same_module": canonical(model.named_modules(remove_duplicate=False)),
        "same_tensor": canonical(model.named_parameters(remove_duplicate=False)),
    }


def outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in outputs(v)] if isinstance(value, (tuple, list)) else []


def assert_rebuilds(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """The recipe survives YAML, rebuilds the same layout and, with the same weights, the same outputs."""
    recipe = to_recipe(model)
    assert yaml.safe_load(yaml.safe_dump(recipe)) == recipe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's nested-tensor notes on transformer layers
        rebuilt = build_from_config(recipe)
    assert layout(rebuilt) == layout(model)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        ours, theirs = outputs(model(*inputs)), outputs(rebuilt(*inputs))
    assert ours and len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=False))
    assert to_recipe(rebuilt) == recipe  # a fixed point: exporting the rebuild says the same
    return rebuilt


GRAPHS = {"resnet18", "vit_tiny", "gpt2_small", "unet", "lstm_classifier", "siamese"}  # to_recipe has no Graph yet
GRAPHS |= {"llama", "mixtral", "bert", "convnext", "seq2seq"}


@pytest.mark.parametrize("name", sorted(set(MODELS) - GRAPHS))
def test_every_packaged_recipe_rebuilds(name):
    model = build_from_config(model_recipe(name))
    shape = yaml.safe_load(model_recipe(name).read_text())["input_shape"]
    assert_rebuilds(model, torch.randn(*shape))


@pytest.mark.parametrize(
    "name", ["mlp", "mlp_block", "my_sequential", "fixed_hidden_mlp", "chimera", "param_mlp", "centered", "my_linear"]
)
def test_plain_recipes_come_back_as_written(name):
    written = yaml.safe_load(model_recipe(name).read_text())["model"]
    assert to_recipe(build_from_config(model_recipe(name))) == {"model": written}


def test_tutorial_mlp_by_hand():
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    assert to_recipe(model) == {"model": yaml.safe_load(model_recipe("mlp").read_text())["model"]}
    assert_rebuilds(model, torch.rand(2, 20))


def test_chimera_by_hand_keeps_the_constant_buffer():
    model = nn.Sequential(NestMLP(), nn.Linear(16, 20), FixedHiddenMLP())
    rebuilt = assert_rebuilds(model, torch.rand(2, 20))
    assert torch.equal(rebuilt[2].rand_weight, model[2].rand_weight)


def test_shared_module_by_hand_becomes_shared_and_ref():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 1))
    recipe = to_recipe(model)
    assert recipe["shared"] == {"linear_2": {"type": "Linear", "in_features": 8, "out_features": 8}}
    assert recipe["model"]["layers"][2] == recipe["model"]["layers"][4] == {"ref": "linear_2"}
    rebuilt = assert_rebuilds(model, torch.rand(2, 4))
    assert rebuilt[2] is rebuilt[4]


def test_shared_module_inside_shared_and_nested_containers():
    inner = nn.Linear(3, 3)
    block = nn.Sequential(inner, nn.Tanh())
    model = nn.Sequential(block, nn.ModuleList([inner]), block)
    recipe = to_recipe(model)  # a ModuleList has no forward: the layout is checked, not outputs
    assert set(recipe["shared"]) == {"sequential_0", "linear_0_0"}
    assert recipe["shared"]["sequential_0"]["layers"][0] == {"ref": "linear_0_0"}
    rebuilt = build_from_config(recipe)
    assert layout(rebuilt) == layout(model)
    assert rebuilt[0] is rebuilt[2] and rebuilt[1][0] is rebuilt[0][0]


def tied_by_hand() -> nn.Module:
    """An embedding and an output layer holding one weight (a language model's tied head)."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight
    return model


def test_parameter_held_by_two_modules_is_a_tie():
    assert to_recipe(tied_by_hand()) == {
        "model": {"type": "Sequential", "layers": [
            {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4},
            {"type": "Linear", "in_features": 4, "out_features": 4},
            {"type": "Linear", "in_features": 4, "out_features": 10, "bias": False},
        ]},
        "tie": {"2.weight": "0.weight"},
    }  # fmt: skip


def test_tied_parameters_rebuild():
    assert_rebuilds(tied_by_hand(), torch.tensor([[1, 2, 3]]))


def test_conv_batchnorm_net():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=0.2), nn.ReLU(inplace=True),
        nn.MaxPool2d((2, 2)), nn.Conv2d(8, 4, (3, 5), stride=2, padding="valid", padding_mode="reflect"),
        nn.GroupNorm(2, 4, eps=1e-3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4, elementwise_affine=False),
        nn.Dropout(0.3), nn.Linear(4, 2),
    )  # fmt: skip
    model(torch.randn(4, 3, 16, 16))  # running statistics differ from a fresh BatchNorm's
    recipe = to_recipe(model)
    assert recipe["model"]["layers"][0] == {
        "type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False,
    }  # fmt: skip
    assert recipe["model"]["layers"][1] == {"type": "BatchNorm2d", "num_features": 8, "momentum": 0.2}
    assert_rebuilds(model, torch.randn(2, 3, 16, 16))


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_lstm_gru_rnn():
    assert to_recipe(nn.LSTM(4, 8, 2, batch_first=True, dropout=0.1)) == {"model": {
        "type": "LSTM", "input_size": 4, "hidden_size": 8, "num_layers": 2, "batch_first": True, "dropout": 0.1,
    }}  # fmt: skip
    assert_rebuilds(nn.LSTM(4, 8, 2, batch_first=True, dropout=0.1), torch.randn(2, 5, 4))
    assert_rebuilds(nn.LSTM(4, 8, proj_size=3, bidirectional=True, bias=False), torch.randn(5, 2, 4))
    assert_rebuilds(nn.GRU(3, 5), torch.randn(4, 2, 3))
    assert_rebuilds(nn.RNN(3, 5, nonlinearity="relu"), torch.randn(4, 2, 3))


def test_transformer_encoder_layer_and_stack():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    assert to_recipe(layer) == {"model": {
        "type": "TransformerEncoderLayer", "d_model": 16, "nhead": 2, "dim_feedforward": 32, "dropout": 0.0,
        "activation": "gelu", "batch_first": True, "norm_first": True,
    }}  # fmt: skip
    assert_rebuilds(layer, torch.randn(2, 5, 16))
    assert_rebuilds(nn.TransformerEncoderLayer(8, 2, 16, bias=False, layer_norm_eps=1e-6), torch.randn(5, 2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, norm=nn.LayerNorm(16))
    recipe = to_recipe(stack)["model"]
    assert recipe["num_layers"] == 2 and recipe["encoder_layer"]["type"] == "TransformerEncoderLayer"
    assert_rebuilds(stack, torch.randn(2, 5, 16))


def test_attention_embedding_and_activation_modules():
    assert_rebuilds(nn.MultiheadAttention(8, 2, bias=False, add_bias_kv=True), *(torch.randn(3, 2, 8),) * 3)
    assert_rebuilds(nn.Embedding(10, 4, padding_idx=0, max_norm=None), torch.tensor([[1, 2, 0]]))
    assert_rebuilds(
        nn.Sequential(nn.LeakyReLU(0.2), nn.GELU("tanh"), nn.Softmax(dim=1), nn.Hardtanh(-2, 2)), torch.randn(2, 3)
    )
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation=nn.SiLU())
    assert to_recipe(layer)["model"]["activation"] == {"type": "SiLU"}
    assert_rebuilds(layer, torch.randn(5, 2, 8))


LAYERS = {
    "Bilinear": lambda: nn.Bilinear(3, 4, 5, bias=False),
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1, groups=2),
    "Conv1d": lambda: nn.Conv1d(2, 3, 3, padding="same"),
    "Conv3d": lambda: nn.Conv3d(2, 2, (1, 2, 3)),
    "Upsample": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "Unflatten": lambda: nn.Unflatten(1, (2, 3)),
    "EmbeddingBag": lambda: nn.EmbeddingBag(10, 3, mode="max"),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(3, affine=True),
    "RMSNorm": lambda: nn.RMSNorm([4, 5], eps=1e-6),
    "BatchNorm1d": lambda: nn.BatchNorm1d(3, track_running_stats=False, affine=False),
    "AvgPool2d": lambda: nn.AvgPool2d(3, stride=1, count_include_pad=False),
    "MaxPool1d": lambda: nn.MaxPool1d(3, return_indices=True, ceil_mode=True),
    "Fold": lambda: nn.Fold((4, 5), (2, 2)),
    "ZeroPad2d": lambda: nn.ZeroPad2d((1, 2, 3, 4)),
    "Softplus": lambda: nn.Softplus(2, 10),
    "Hardtanh": lambda: nn.Hardtanh(min_value=-3.0, max_value=3.0),
    "TransformerDecoder": lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 2),
    "Transformer": lambda: nn.Transformer(8, 2, 1, 1, 16, norm_first=True, batch_first=True),
    "MultiheadAttention": lambda: nn.MultiheadAttention(8, 2, kdim=4, vdim=6),
    "LSTMCell": lambda: nn.LSTMCell(3, 4),
    "RNNCell": lambda: nn.RNNCell(3, 4, nonlinearity="relu"),
    "AdaptiveLogSoftmaxWithLoss": lambda: nn.AdaptiveLogSoftmaxWithLoss(8, 20, [5, 10], div_value=2.0),
    "PairwiseDistance": lambda: nn.PairwiseDistance(p=1.0, keepdim=True),
    "CrossEntropyLoss": lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
    "Embedding": lambda: nn.Embedding.from_pretrained(torch.randn(5, 3)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_torch_nn_layers_rebuild_with_the_same_layout_and_arguments(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hardtanh's deprecated spellings, nested-tensor notes
        model = LAYERS[name]()
        rebuilt = build_from_config(to_recipe(model))
    assert layout(rebuilt) == layout(model)
    rebuilt.load_state_dict(model.state_dict())
    assert to_recipe(rebuilt) == to_recipe(model)


def test_argument_named_like_a_node_key_goes_positionally():
    assert to_recipe(nn.PReLU(3, init=0.1)) == {"model": {"type": "PReLU", "_args_": [3, 0.1]}}
    assert to_recipe(nn.PReLU(3)) == {"model": {"type": "PReLU", "num_parameters": 3}}
    assert_rebuilds(nn.PReLU(3, init=0.1), torch.randn(2, 3))


def test_sequential_with_names_module_list_and_dict():
    model = nn.Sequential()
    model.add_module("enc", nn.Linear(4, 4))
    model.add_module("act", nn.ReLU())
    assert to_recipe(model)["model"]["layers"] == {
        "enc": {"type": "Linear", "in_features": 4, "out_features": 4},
        "act": {"type": "ReLU"},
    }
    assert_rebuilds(model, torch.randn(2, 4))
    holder = nn.Sequential(
        nn.ModuleDict({"b": nn.Linear(2, 2), "a": nn.ModuleList([nn.ReLU(), nn.Linear(2, 3)])}), nn.ModuleList()
    )
    recipe = to_recipe(holder)
    linear = {"type": "Linear", "in_features": 2, "out_features": 3}
    assert recipe["model"]["layers"][0] == {"type": "ModuleDict", "modules": {
        "b": {"type": "Linear", "in_features": 2, "out_features": 2},
        "a": {"type": "ModuleList", "modules": [{"type": "ReLU"}, linear]},
    }}  # fmt: skip
    assert recipe["model"]["layers"][1] == {"type": "ModuleList"}
    assert layout(build_from_config(recipe)) == layout(holder)


def test_my_sequential_and_my_linear_by_hand():
    model = MySequential(MyLinear(6, 4), nn.ReLU(), MyLinear(4, 2))
    assert to_recipe(model) == {"model": {"type": "MySequential", "layers": [
        {"type": "MyLinear", "in_units": 6, "units": 4}, {"type": "ReLU"},
        {"type": "MyLinear", "in_units": 4, "units": 2},
    ]}}  # fmt: skip
    assert_rebuilds(model, torch.randn(2, 6))


def test_frozen_whole_modules():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    model[1].requires_grad_(False)
    model[2].requires_grad_(False)
    layers = to_recipe(model)["model"]["layers"]
    assert "frozen" not in layers[0] and layers[1]["frozen"] is True and layers[2]["frozen"] is True
    assert "frozen" not in layers[1]["layers"][0]  # its parent freezes it
    assert_rebuilds(model, torch.randn(2, 2))
    model.requires_grad_(False)
    assert to_recipe(model)["model"]["frozen"] is True


def test_dtype_of_the_whole_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).double()
    recipe = to_recipe(model)
    assert recipe["dtype"] == "float64"
    assert recipe["model"]["layers"][0] == {"type": "Linear", "in_features": 2, "out_features": 2}


class TiedInside(nn.Module):
    """A block whose constructor ties two layers itself."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.n = n
        self.a, self.b = nn.Linear(n, n), nn.Linear(n, n)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class Residual(nn.Module):
    """A block that takes a module argument: the argument becomes a node."""

    def __init__(self, body: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.body, self.scale = body, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.body(x)


register_module("ExportTestTiedInside")(TiedInside)
register_module("ExportTestResidual")(Residual)


def test_user_blocks_with_their_own_ties_and_module_arguments():
    model = nn.Sequential(TiedInside(3), Residual(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), scale=0.5))
    assert to_recipe(model) == {"model": {"type": "Sequential", "layers": [
        {"type": "ExportTestTiedInside", "n": 3},  # its own tie needs no tie entry
        {"type": "ExportTestResidual", "scale": 0.5, "body": {"type": "Sequential", "layers": [
            {"type": "Linear", "in_features": 3, "out_features": 3}, {"type": "ReLU"}]}},
    ]}}  # fmt: skip
    rebuilt = assert_rebuilds(model, torch.randn(2, 3))
    assert rebuilt[0].a.weight is rebuilt[0].b.weight


def test_tie_from_outside_into_a_block():
    block, head = TiedInside(3), nn.Linear(3, 3)
    head.weight = block.a.weight
    assert to_recipe(nn.Sequential(block, head))["tie"] == {"1.weight": "0.a.weight"}


# --- refusals: a ConfigError naming the module path and class, never a guess ------------------


def refusal(model: nn.Module) -> str:
    with pytest.raises(ConfigError) as info:
        to_recipe(model)
    return str(info.value)


class Unregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)


class KeepsNoArgument(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)


class RandomMask(nn.Module):
    """A buffer that checkpoints leave out, drawn at random: no rebuild gives it back."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.rand(3), persistent=False)


register_module("ExportTestKeepsNoArgument")(KeepsNoArgument)
register_module("ExportTestRandomMask")(RandomMask)


def test_refuses_unregistered_class_and_names_path_and_class():
    message = refusal(nn.Sequential(nn.ReLU(), Unregistered()))
    assert message.startswith("1: Unregistered: ") and "not a registered type" in message


def test_refuses_every_problem_at_once():
    message = refusal(nn.Sequential(Unregistered(), nn.ReLU(), nn.LazyLinear(3)))
    assert "0: Unregistered" in message and "2: LazyLinear: weight, bias not materialized" in message


def test_refuses_argument_it_cannot_read_back():
    assert "argument 'width' cannot be read back" in refusal(nn.Sequential(KeepsNoArgument(3)))


def test_refuses_a_rebuild_that_differs():
    assert "0: ExportTestRandomMask" not in refusal(nn.Sequential(RandomMask()))  # registered name, class named
    assert "0: RandomMask: " in refusal(nn.Sequential(RandomMask()))
    assert "'mask'" in refusal(RandomMask())
    grown = nn.Linear(2, 2)
    grown.extra = nn.Parameter(torch.zeros(1))  # a parameter no Linear(...) makes
    assert "parameter 'extra'" in refusal(grown)


def test_refuses_a_replaced_forward():
    model = nn.Sequential(nn.Linear(2, 2))
    model.forward = lambda x: x  # behaviour no recipe holds
    assert "(model): Sequential: " in refusal(model) and "'forward'" in refusal(model)


def test_refuses_hooks_and_foreign_functions():
    hooked = nn.Linear(2, 2)
    hooked.register_forward_hook(lambda *_: None)
    assert "forward hooks" in refusal(nn.Sequential(hooked))
    assert "activation" in refusal(nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh))


def test_refuses_sharing_what_a_class_creates():
    nest = NestMLP()
    message = refusal(nn.Sequential(nest, nest.net[0]))
    assert message.startswith("0: NestMLP: 'net.0' (Linear) is made by NestMLP but also held outside it")


def test_refuses_partly_frozen_module_and_mixed_dtypes():
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].bias.requires_grad_(False)
    assert "0: Linear: some of its parameters are frozen (bias)" in refusal(model)
    assert "mix dtypes" in refusal(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()))


def test_refuses_untying_what_a_class_ties():
    block = TiedInside(3)
    block.b.weight = nn.Parameter(torch.zeros(3, 3))
    assert "(model): TiedInside: TiedInside ties a.weight, b.weight itself" in refusal(block)


def test_refuses_module_dict_key_that_reads_as_a_node():
    assert "'ref'" in refusal(nn.ModuleDict({"ref": nn.ReLU()}))


def test_refuses_a_module_that_contains_itself():
    loop = nn.Sequential(nn.ReLU())
    loop.add_module("again", loop)
    assert "contains itself" in refusal(loop)
