"""Initialization: the tutorial's schemes, rule selection and precedence, seeds, each parameter once."""

import math
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from composer import (
    ConfigError,
    build_from_config,
    init_report,
    load_checkpoint,
    register_init,
    register_module,
    save_checkpoint,
    summary,
)
from tests.recipes import ROOT, model_recipe


def with_init(model: str, init: str) -> dict:
    recipe = yaml.safe_load(model_recipe(model).read_text())
    recipe["init"] = yaml.safe_load((ROOT / "composer" / "conf" / "init" / f"{init}.yaml").read_text())
    return recipe


def test_normal_weights_and_zero_biases():
    net = build_from_config(with_init("mlp", "normal"))
    assert abs(net[0].weight.std().item() - 0.01) < 0.001
    assert abs(net[0].weight.mean().item()) < 0.001
    assert net[0].bias.abs().max().item() == 0 and net[2].bias.abs().max().item() == 0


@pytest.mark.parametrize("model", ["mlp", "param_mlp"])
def test_constant_scheme(model):
    net = build_from_config(with_init(model, "constant"))
    assert (net[0].weight == 1).all() and (net[0].bias == 0).all()
    assert (net[2].weight == 1).all()


@pytest.mark.parametrize("scheme", ["normal", "constant"])
def test_normal_and_constant_reach_linear_layers_only(scheme):
    """As the tutorial's ``init_normal``/``init_constant`` (``type(m) == nn.Linear``): a norm's gain
    stays 1 and its bias 0, convolutions keep their defaults, only ``fc`` takes the scheme."""
    net = build_from_config(with_init("resnet18", scheme))
    assert torch.equal(net.bn1.weight, torch.ones(64)) and torch.equal(net.bn1.bias, torch.zeros(64))
    assert torch.equal(net.layer4[1].bn2.weight, torch.ones(512))
    report = init_report(net)
    assert report["conv1.weight"] == "default" and report["bn1.weight"] == "default"
    assert report["fc.weight"].startswith(scheme) and report["fc.bias"].startswith("zeros")
    if scheme == "constant":
        assert (net.fc.weight == 1).all()
    else:
        assert abs(net.fc.weight.std().item() - 0.01) < 0.001


def test_mixed_xavier_on_0_and_42_on_2():
    net = build_from_config(with_init("mlp", "mixed"))
    assert (net[2].weight == 42).all()
    bound = math.sqrt(6 / (20 + 256))
    assert net[0].weight.abs().max().item() <= bound and net[0].weight.std().item() > bound / 3
    report = init_report(net)
    assert report["0.weight"] == "xavier_uniform [init.rules[0].weight]"
    assert report["2.weight"] == "constant(val=42) [init.rules[1].weight]"
    assert report["0.bias"] == "default"


def test_custom_piecewise_scheme_value_set_and_proportions():
    net = build_from_config(with_init("mlp", "custom"))
    w = net[0].weight.detach()
    magnitude = w.abs()
    assert ((magnitude == 0) | ((magnitude >= 5) & (magnitude <= 10))).all()
    n = w.numel()
    assert abs((w == 0).sum().item() / n - 0.5) < 0.03
    assert abs((w > 0).sum().item() / n - 0.25) < 0.03
    assert abs((w < 0).sum().item() / n - 0.25) < 0.03


def test_xavier_on_every_linear_of_the_lazy_network():
    net = build_from_config(with_init("lazy_mlp", "xavier"))
    assert type(net[0]) is nn.Linear and net[0].weight.shape == (256, 20)
    assert net[0].weight.abs().max().item() <= math.sqrt(6 / (20 + 256))
    assert set(init_report(net).values()) == {"xavier_uniform [init.rules[0].weight]", "default"}


def test_later_rule_wins_and_inline_spec_wins_over_rules():
    net = build_from_config({
        "model": {"type": "Sequential", "layers": [
            {"type": "Linear", "in_features": 3, "out_features": 3, "init": {"weight": {"type": "constant", "val": 7}}},
            {"type": "Linear", "in_features": 3, "out_features": 3},
        ]},
        "init": {"rules": [
            {"weight": "ones", "bias": "ones"},
            {"match": "1", "weight": "zeros"},
        ]},
    })  # fmt: skip
    assert (net[0].weight == 7).all() and (net[0].bias == 1).all()
    assert (net[1].weight == 0).all() and (net[1].bias == 1).all()
    report = init_report(net)
    assert report["0.weight"] == "constant(val=7) [model.layers[0].init.weight]"
    assert report["1.weight"] == "zeros [init.rules[1].weight]"


def test_match_selects_the_module_and_everything_below_and_layer_filters():
    net = build_from_config({
        "model": {"type": "Sequential", "layers": [
            {"type": "Sequential", "layers": [
                {"type": "Linear", "in_features": 2, "out_features": 2},
                {"type": "LayerNorm", "normalized_shape": 2},
            ]},
            {"type": "Linear", "in_features": 2, "out_features": 2},
        ]},
        "init": {"rules": [{"match": "0", "layer": "Linear", "weight": "zeros"}]},
    })  # fmt: skip
    assert (net[0][0].weight == 0).all()
    assert (net[0][1].weight == 1).all()  # LayerNorm kept its default
    assert not (net[1].weight == 0).all()


def test_rgnet_blocks_are_matched_by_glob():
    recipe = yaml.safe_load(model_recipe("rgnet").read_text())
    recipe["init"] = {"rules": [{"match": "0.block [13]", "layer": "Linear", "weight": "ones"}]}
    net = build_from_config(recipe)
    assert (net[0][1][0].weight == 1).all() and (net[0][3][2].weight == 1).all()
    assert not (net[0][0][0].weight == 1).all()


def test_seed_gives_bitwise_identical_parameters_and_keeps_global_rng():
    recipe = with_init("chimera", "normal")
    recipe["init"]["seed"] = 3
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build_from_config(recipe)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(1000)  # disturb the global RNG
    second = build_from_config(recipe)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    recipe["init"]["seed"] = 4
    third = build_from_config(recipe)
    assert not torch.equal(first[1].bias, third[1].bias) or not torch.equal(first[2].rand_weight, third[2].rand_weight)
    assert not torch.equal(first[2].rand_weight, third[2].rand_weight)


@pytest.mark.slow
def test_seed_reproduces_across_processes():
    code = (
        "import torch, composer, hashlib;"
        "torch.manual_seed(int(__import__('sys').argv[1]));"
        "m = composer.build_from_config({'model': {'type': 'Sequential', 'layers': ["
        "{'type': 'Linear', 'out_features': 20}, {'type': 'FixedHiddenMLP'}]}, 'input_shape': [2, 20],"
        " 'init': {'seed': 0, 'rules': [{'match': '0', 'weight': {'type': 'normal', 'std': 0.02}}]}});"
        "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in m.state_dict().values())).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code, s], capture_output=True, text=True, check=True).stdout for s in "12"
    }
    assert len(digests) == 1


def test_shared_module_is_initialized_once():
    calls = []

    @register_init("counting_ones")
    def counting_ones(tensor):
        calls.append(tuple(tensor.shape))
        return nn.init.ones_(tensor)

    net = build_from_config(
        with_init("tied", "default") | {"init": {"rules": [{"layer": "Linear", "weight": "counting_ones"}]}}
    )
    assert sorted(calls) == [(1, 8), (8, 4), (8, 8)]
    assert net[2].weight is net[4].weight and (net[4].weight == 1).all()


class CountingResets(nn.Module):
    """A block whose reset counts the times it fills real (non-meta) tensors."""

    real_resets: list[str] = []

    def __init__(self, n: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        self.bias = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self):
        for name in ("weight", "bias"):
            tensor = getattr(self, name)
            if not tensor.is_meta:
                CountingResets.real_resets.append(name)
            nn.init.ones_(tensor)

    def forward(self, x):
        return x @ self.weight + self.bias


register_module(CountingResets)


def test_a_user_blocks_reset_skips_the_parameters_a_scheme_covers():
    """A user's block is constructed as written (its constructor's own reset runs, on the real
    device); the reset that then draws its defaults from the block's stream leaves covered
    parameters alone, and the scheme sets them."""
    CountingResets.real_resets.clear()
    net = build_from_config(
        {"model": {"type": "CountingResets"}, "init": {"rules": [{"weight": "zeros", "bias": "zeros"}]}}
    )
    assert CountingResets.real_resets == ["weight", "bias"]  # the constructor's, nothing after it
    assert (net.weight == 0).all() and (net.bias == 0).all()
    CountingResets.real_resets.clear()
    net = build_from_config({"model": {"type": "CountingResets"}, "init": {"rules": [{"weight": "zeros"}]}})
    assert CountingResets.real_resets == ["weight", "bias", "bias"]  # then only the uncovered one
    assert (net.weight == 0).all() and (net.bias == 1).all()


def test_partly_covered_linear_bias_keeps_its_default_distribution():
    net = build_from_config(
        {"model": {"type": "Linear", "in_features": 400, "out_features": 300}, "init": {"rules": [{"weight": "zeros"}]}}
    )
    bound = 1 / math.sqrt(400)
    assert net.bias.abs().max().item() <= bound and net.bias.std().item() > bound / 3


def test_buffers_and_modules_without_public_reset_under_rules():
    net = build_from_config({
        "model": {"type": "Sequential", "layers": [
            {"type": "BatchNorm1d", "num_features": 4},
            {"type": "TransformerEncoderLayer", "d_model": 4, "nhead": 2, "dim_feedforward": 8},
            {"type": "FixedHiddenMLP"},
        ]},
        "init": {"rules": [{"layer": "Linear", "weight": "zeros"}]},
    })  # fmt: skip
    bn, layer, fixed = net
    assert bn.num_batches_tracked.item() == 0 and (bn.running_var == 1).all() and (bn.running_mean == 0).all()
    assert (layer.linear1.weight == 0).all()
    assert (layer.self_attn.in_proj_bias == 0).all()  # MultiheadAttention's _reset_parameters ran
    assert layer.self_attn.in_proj_weight.abs().sum() > 0
    assert ((fixed.rand_weight >= 0) & (fixed.rand_weight < 1)).all() and fixed.rand_weight.std() > 0.2


class ConstantBuffer(nn.Module):
    """Holds a constant made in its constructor and has no reset: it cannot be built on meta."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(6.0))
        self.linear = nn.Linear(6, 2)

    def forward(self, x):
        return self.linear(x + self.table)


register_module(ConstantBuffer)


def test_module_that_cannot_reset_is_built_for_real():
    net = build_from_config({"model": {"type": "ConstantBuffer"}, "init": {"rules": [{"weight": "ones"}]}})
    assert torch.equal(net.table, torch.arange(6.0)) and (net.linear.weight == 1).all()


def test_init_report_and_summary_show_every_parameter():
    net = build_from_config(with_init("tied", "xavier"))
    report = init_report(net)
    assert list(report) == [n for n, _ in net.named_parameters(remove_duplicate=False)]
    assert report["2.weight"] == report["4.weight"] == "xavier_uniform [init.rules[0].weight]"
    text = summary(net)
    assert "2.weight: xavier_uniform [init.rules[0].weight]" in text
    with pytest.raises(ValueError, match="not built by build_from_config"):
        init_report(nn.Linear(2, 2))


def init_problems(init: dict, model: str = "mlp") -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        build_from_config(with_init(model, "default") | {"init": init})
    return info.value.problems


def assert_one_problem(init: dict, path: str, message: str | tuple[str, ...]) -> None:
    """mlp with ``init`` fails with one problem, at ``path``; ``message``: its exact text, or parts of it (a tuple)."""
    [(got_path, got)] = init_problems(init)
    assert got_path == path, got
    assert got == message if isinstance(message, str) else all(part in got for part in message), got


@pytest.mark.parametrize(
    "init, path, message",
    [
        pytest.param(
            {"rules": [{"weight": "xavier_unifrom"}]},
            "init.rules[0].weight",
            "unknown initializer 'xavier_unifrom' (did you mean 'xavier_uniform'?)",
            id="unknown initializer",
        ),
        pytest.param(
            {"rules": [{"weight": {"type": "normal", "sdt": 1}}]},
            "init.rules[0].weight.sdt",
            ("did you mean 'std'", "valid: mean, std"),
            id="unknown argument",
        ),
        pytest.param(
            {"rules": [{"weight": "constant"}]},
            "init.rules[0].weight",
            ("constant needs 'val'",),
            id="missing argument",
        ),
        pytest.param({"sed": 1}, "init.sed", (), id="unknown init key"),
        pytest.param({"seed": "x"}, "init.seed", (), id="seed not an integer"),
    ],
)
def test_bad_initializer_specs_are_named_by_path(init, path, message):
    assert_one_problem(init, path, message)


@pytest.mark.parametrize(
    "rule, path, message",
    [
        pytest.param(
            {"match": "0"},
            "init.rules[0]",
            "rule sets no parameter: add a key such as 'weight: xavier_uniform'",
            id="sets nothing",
        ),
        pytest.param({"match": "7", "weight": "ones"}, "init.rules[0].match", ("matches no module",), id="match"),
        pytest.param(
            {"match": "1", "weight": "ones"},
            "init.rules[0].weight",
            ("no selected module has a parameter 'weight'",),
            id="parameter",
        ),
        pytest.param(
            {"layer": "Conv2d", "weight": "ones"}, "init.rules[0].layer", ("Linear, ReLU, Sequential",), id="layer"
        ),
        pytest.param(
            {"layer": "Linaer", "weight": "ones"}, "init.rules[0].layer", ("did you mean 'Linear'",), id="layer typo"
        ),
        pytest.param(
            {"weight": "ones", "biass": "zeros"}, "init.rules[0].biass", ("did you mean 'bias'",), id="parameter typo"
        ),
        pytest.param(
            {"layers": "Linear", "weight": "ones"},
            "init.rules[0].layers",
            ("did you mean 'layer'",),
            id="rule key typo",
        ),
    ],
)
def test_rules_that_reach_nothing_are_errors(rule, path, message):
    assert_one_problem({"rules": [rule]}, path, message)


def test_inline_spec_for_a_parameter_the_module_lacks():
    with pytest.raises(ConfigError) as info:
        build_from_config({"model": {"type": "ReLU", "init": {"weight": "ones"}}})
    assert info.value.path == "model.init.weight"


@pytest.mark.parametrize(
    "rule, words",
    [
        ({"layer": "Linear", "bias": "orthogonal"}, "orthogonal cannot initialize 0.bias of shape [256]"),
        ({"layer": "Linear", "weight": "dirac"}, "dirac cannot initialize 0.weight of shape [256, 20]"),
    ],
)
def test_initializer_that_cannot_apply_to_a_shape(rule, words):
    [(path, message)] = init_problems({"rules": [rule]})
    assert path.startswith("init.rules[0].") and words in message


def test_input_shape_that_does_not_fit_names_input_shape():
    with pytest.raises(ConfigError, match="forward pass of zeros shaped") as info:
        build_from_config(
            {
                "model": {
                    "type": "Sequential",
                    "layers": [{"type": "Linear", "out_features": 8}, {"type": "FixedHiddenMLP"}],
                },
                "input_shape": [2, 5],
            }
        )
    assert info.value.path == "input_shape"


def test_lazy_layers_without_input_shape_and_rules_name_input_shape():
    with pytest.raises(ConfigError, match="input_shape") as info:
        build_from_config({"model": {"type": "Linear", "out_features": 3}, "init": {"rules": [{"weight": "ones"}]}})
    assert info.value.path == "input_shape"


class MaskedLinear(nn.Module):
    """A user block with a constant buffer that its reset leaves alone."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        self.register_buffer("mask", torch.tril(torch.ones(n, n)))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        return x @ (self.weight * self.mask).T


class Buckets(nn.Module):
    """A user block whose constructor reads tensor data, which meta tensors do not have."""

    def __init__(self, n: int):
        super().__init__()
        self.edges = torch.linspace(0, 1, n).tolist()
        self.scale = nn.Parameter(torch.ones(n))

    def reset_parameters(self):
        nn.init.ones_(self.scale)

    def forward(self, x):
        return x * self.scale


register_module(MaskedLinear)
register_module(Buckets)


def test_user_blocks_that_cannot_be_built_on_meta_are_built_for_real(tmp_path):
    recipe = {
        "model": {"type": "Sequential", "layers": [
            {"type": "MaskedLinear", "n": 4},
            {"type": "Buckets", "n": 4},
            {"type": "Linear", "in_features": 4, "out_features": 2},
        ]},
        "init": {"rules": [{"layer": "Linear", "weight": "xavier_uniform"}]},
    }  # fmt: skip
    net = build_from_config(recipe)
    assert torch.equal(net[0].mask, torch.tril(torch.ones(4, 4)))
    assert net[1].edges == torch.linspace(0, 1, 4).tolist() and (net[1].scale == 1).all()
    save_checkpoint(net, tmp_path / "u.safetensors")
    loaded = load_checkpoint(tmp_path / "u.safetensors")
    x = torch.rand(3, 4)
    assert torch.equal(loaded(x), net(x)) and torch.equal(loaded[0].mask, net[0].mask)


def test_check_on_meta_validates_schemes_against_shapes():
    with pytest.raises(ConfigError, match="eye cannot initialize 0.bias of shape"):
        build_from_config(with_init("mlp", "default") | {"init": {"rules": [{"bias": "eye"}]}}, device="meta")
    model = build_from_config(with_init("mlp", "xavier"), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_numeric_match():
    net = build_from_config(with_init("mlp", "default") | {"init": {"rules": [{"match": 2, "weight": "ones"}]}})
    assert (net[2].weight == 1).all()


def test_inline_init_of_an_unreferenced_shared_module_is_ignored():
    lin = {"type": "Linear", "in_features": 2, "out_features": 2}
    net = build_from_config({"model": lin, "shared": {"spare": dict(lin, init={"weight": "zeros"})}})
    assert set(init_report(net).values()) == {"default"}


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("groups, fits", [(3, True), (4, False)])
def test_check_mode_tests_schemes_on_the_real_sizes(groups, fits, device):
    recipe = {
        "model": {"type": "Conv2d", "in_channels": 6, "out_channels": 6, "kernel_size": 3},
        "init": {"rules": [{"weight": {"type": "dirac", "groups": groups}}]},
    }
    if fits:
        model = build_from_config(recipe, device=device)
        assert model.weight.is_meta == (device == "meta")
    else:
        with pytest.raises(ConfigError, match="dirac cannot initialize weight"):
            build_from_config(recipe, device=device)
