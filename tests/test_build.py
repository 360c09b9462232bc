"""Node forms of the recipe language, sharing, copies, imports behind the allowlist, registration."""

import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from composer import ConfigError, build_from_config, register_module

LINEAR = {"type": "Linear", "in_features": 4, "out_features": 4}


RECIPE = {"model": {"type": "Sequential", "layers": [LINEAR, {"type": "ReLU"}]}}

# Each input form of the same recipe, made from the path of its YAML file.
INPUT_FORMS = {
    "dict": lambda path: RECIPE,
    "str path": str,
    "Path": lambda path: path,
    "DictConfig": lambda path: OmegaConf.create(RECIPE),
    "bare node": lambda path: RECIPE["model"],
}


@pytest.mark.parametrize("form", INPUT_FORMS)
def test_inputs_path_dict_dictconfig_and_bare_node(tmp_path, form):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    model = build_from_config(INPUT_FORMS[form](path))
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU"]


def test_sequential_with_named_children_keeps_order():
    model = build_from_config({"type": "Sequential", "layers": {"enc": LINEAR, "act": {"type": "Tanh"}, "dec": LINEAR}})
    assert [n for n, _ in model.named_children()] == ["enc", "act", "dec"]


def test_repeat_builds_independent_named_copies():
    model = build_from_config({"type": "Repeat", "times": 3, "names": "layer{i}", "body": LINEAR})
    assert [n for n, _ in model.named_children()] == ["layer0", "layer1", "layer2"]
    assert len({id(m.weight) for m in model}) == 3
    default_names = build_from_config({"type": "Repeat", "times": 2, "body": LINEAR})
    assert [n for n, _ in default_names.named_children()] == ["0", "1"]


BLOCKS_AND_SHARED = """
model:
  type: Sequential
  layers: [{ref: tied}, "${blocks.lin}", "${blocks.lin}", {ref: tied}]
blocks:
  lin: {type: Linear, in_features: 4, out_features: 4}
shared:
  tied: {type: Linear, in_features: 4, out_features: 4}
"""


@pytest.mark.parametrize("form", ["file", "dict", "DictConfig"])
def test_blocks_interpolation_pastes_copies_and_ref_shares(tmp_path, form):
    path = tmp_path / "r.yaml"
    path.write_text(BLOCKS_AND_SHARED)
    cfg = {"file": path, "dict": yaml.safe_load(BLOCKS_AND_SHARED), "DictConfig": OmegaConf.create(BLOCKS_AND_SHARED)}
    model = build_from_config(cfg[form])
    assert model[0] is model[3]
    assert model[1] is not model[2] and model[1].weight is not model[2].weight


def test_shared_module_referenced_inside_shared_and_repeat():
    model = build_from_config({
        "model": {"type": "Repeat", "times": 2,
                  "body": {"type": "Sequential", "layers": [{"ref": "inner"}, {"type": "ReLU"}]}},
        "shared": {"inner": {"type": "Sequential", "layers": [{"ref": "lin"}]}, "lin": LINEAR},
    })  # fmt: skip
    assert model[0][0] is model[1][0] and model[0][0][0] is model[1][0][0]


def test_kwarg_nodes_and_lists_of_nodes_are_built_first():
    encoder = build_from_config({
        "type": "TransformerEncoder", "num_layers": 2, "enable_nested_tensor": False,
        "encoder_layer": {"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2, "dim_feedforward": 16,
                          "batch_first": True},
    })  # fmt: skip
    assert isinstance(encoder, nn.TransformerEncoder) and len(encoder.layers) == 2
    assert encoder(torch.rand(2, 3, 8)).shape == (2, 3, 8)
    modules = build_from_config({"type": "ModuleList", "modules": [LINEAR, {"type": "ReLU"}]})
    assert isinstance(modules, nn.ModuleList) and isinstance(modules[1], nn.ReLU)
    mdict = build_from_config({"type": "ModuleDict", "modules": {"a": LINEAR}})
    assert isinstance(mdict["a"], nn.Linear)


def test_positional_args_and_target():
    model = build_from_config({"_target_": "torch.nn.Linear", "_args_": [3, 5], "bias": False})
    assert model.weight.shape == (5, 3) and model.bias is None
    seq = build_from_config(
        {"_target_": "torch.nn.Sequential", "_args_": [LINEAR, {"_target_": "composer.modules.blocks.CenteredLayer"}]}
    )
    assert type(seq[1]).__name__ == "CenteredLayer"


def test_frozen_turns_off_gradients():
    model = build_from_config({"type": "Sequential", "layers": [dict(LINEAR, frozen=True), LINEAR]})
    assert not any(p.requires_grad for p in model[0].parameters())
    assert all(p.requires_grad for p in model[1].parameters())


@pytest.mark.parametrize(
    "target, why",
    [
        ("torch.nn.parallel.distributed.os.system", "reaches module 'os'"),
        ("os.system", "not under an allowed prefix"),
        ("torch.nn.functional.relu", "not an nn.Module class"),
        ("torch.nn.Lineer", "does not resolve"),
        ("torch.nn.modules.linear.torch.Tensor", "outside the allowlist"),
        ("builtins.eval", "not under an allowed prefix"),
    ],
)
def test_target_outside_allowlist_is_refused(target, why):
    with pytest.raises(ConfigError, match=why) as info:
        build_from_config({"_target_": target})
    assert info.value.path == "model._target_"


def test_target_refusal_imports_nothing():
    name = "composer_never_imported_probe"
    with pytest.raises(ConfigError):
        build_from_config({"_target_": f"{name}.Evil"})
    assert name not in sys.modules


def test_allow_targets_widens_the_allowlist(tmp_path, monkeypatch):
    (tmp_path / "userblocks.py").write_text(
        "from torch import nn\nclass Twice(nn.Module):\n    def forward(self, x):\n        return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="allow_targets"):
        build_from_config({"_target_": "userblocks.Twice"})
    model = build_from_config({"_target_": "userblocks.Twice"}, allow_targets=["userblocks."])
    assert model(torch.ones(1)).item() == 2


def test_register_module_by_name_and_twice_is_an_error():
    @register_module("Doubler")
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    assert isinstance(build_from_config({"type": "Doubler"}), Doubler)

    @register_module
    class Tripler(nn.Module):
        def forward(self, x):
            return 3 * x

    assert isinstance(build_from_config({"type": "Tripler"}), Tripler)
    with pytest.raises(ValueError, match="already registered"):

        @register_module("Doubler")
        class Other(nn.Module):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_module("Linear")(Tripler)


def problems(cfg) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        build_from_config(cfg)
    return info.value.problems


def test_unknown_type_names_the_path_and_closest_name():
    [(path, message)] = problems(
        {"type": "Sequential", "layers": [LINEAR, {"type": "ReLU"}, {"type": "Linaer", "out_features": 2}]}
    )
    assert path == "model.layers[2].type"
    assert message == "unknown type 'Linaer' (did you mean 'Linear'?)"


def test_bad_arguments_list_valid_names():
    [(path, message)] = problems({"type": "Linear", "in_feature": 4, "out_features": 2})
    assert path == "model.in_feature"
    assert (
        "did you mean 'in_features'" in message and "valid: bias, device, dtype, in_features, out_features" in message
    )
    [(path, message)] = problems({"type": "Linear", "in_features": 4})
    assert path == "model" and "missing required argument 'out_features'" in message


def test_a_constructor_taking_args_and_kwargs_is_checked_as_it_documents():
    """LSTM(*args, **kwargs) parses its arguments by hand: a typo gets its key path and the
    closest name, as a Linear's does, not "LSTM(...) raised TypeError"."""
    found = problems({"type": "LSTM", "input_sizee": 4, "hidden_size": 8})
    assert found[0][0] == "model.input_sizee" and "did you mean 'input_size'" in found[0][1]
    assert found[1] == ("model", "LSTM is missing required argument 'input_size'")
    [(path, message)] = problems({"type": "Tanh", "inplace": True})  # inherits nn.Module.__init__: takes nothing
    assert path == "model.inplace" and message.startswith("Tanh takes no argument 'inplace'")


def test_wrong_value_types():
    found = dict(problems({"type": "Sequential", "layers": [
        {"type": "Linear", "in_features": "four", "out_features": 2},
        {"type": "Linear", "in_features": 2, "out_features": 2, "bias": "yes"},
        {"type": "Dropout", "p": 2.0},
        {"type": "ReLU", "frozen": "no"},
        {"type": "Repeat", "times": "3", "body": LINEAR},
        5,
    ]}))  # fmt: skip
    assert "expected int, got str 'four'" in found["model.layers[0].in_features"]
    assert "expected bool" in found["model.layers[1].bias"]
    assert "raised ValueError" in found["model.layers[2]"]  # the constructor's own check, placed
    assert "expected true or false" in found["model.layers[3].frozen"]
    assert "positive integer" in found["model.layers[4].times"]
    assert "expected a node" in found["model.layers[5]"]
    assert found["model.layers[0].in_features"]  # all reported in one round


def test_every_independent_problem_is_reported_at_once():
    found = problems({
        "model": {"type": "Sequential", "layers": [
            {"type": "Linaer"}, {"ref": "missing"}, {"type": "Repeat", "times": 0, "body": LINEAR},
        ]},
        "sahred": {},
        "init": {"rules": [{"weight": "normall"}]},
    })  # fmt: skip
    assert [p for p, _ in found] == [
        "sahred",
        "init.rules[0].weight",
        "model.layers[0].type",
        "model.layers[1].ref",
        "model.layers[2].times",
    ]
    messages = dict(found)
    assert "did you mean 'shared'" in messages["sahred"]
    assert "did you mean 'normal'" in messages["init.rules[0].weight"]


def test_ref_to_missing_name_suggests_the_closest():
    [(path, message)] = problems({"model": {"ref": "encodr"}, "shared": {"encoder": LINEAR}})
    assert path == "model.ref" and "did you mean 'encoder'" in message


def test_ref_node_takes_no_other_keys():
    [(path, _)] = problems({"model": {"ref": "a", "in_features": 3}, "shared": {"a": LINEAR}})
    assert path == "model.in_features"


@pytest.mark.parametrize(
    "shared, cycle",
    [
        ({"a": {"ref": "a"}}, "a -> a"),
        (
            {
                "a": {"type": "Sequential", "layers": [{"ref": "b"}]},
                "b": {"type": "Sequential", "layers": [{"ref": "a"}]},
            },
            "a -> b -> a",
        ),
    ],
)
def test_shared_cycles_are_refused(shared, cycle):
    [(path, message)] = problems({"model": {"ref": "a"}, "shared": shared})
    assert path == "shared.a" and cycle in message


def test_unreferenced_shared_module_is_still_checked():
    [(path, _)] = problems({"model": LINEAR, "shared": {"spare": {"type": "Linaer"}}})
    assert path == "shared.spare.type"


@pytest.mark.parametrize(
    "cfg, path, message",
    [
        pytest.param({"type": "Repeat", "times": -1, "body": LINEAR}, "model.times", (), id="Repeat times"),
        pytest.param(
            {"type": "Repeat", "times": 2, "names": "x", "body": LINEAR},
            "model.names",
            "names repeat",
            id="Repeat names",
        ),
        pytest.param({"type": "Repeat", "times": 2}, "model.body", (), id="Repeat body"),
        pytest.param({"type": "Sequential", "layers": 3}, "model.layers", (), id="Sequential layers"),
        pytest.param({"type": "Sequential", "layer": []}, "model.layer", (), id="Sequential key"),
        pytest.param({"type": "Sequential", "layers": {"a.b": LINEAR}}, "model.layers", ("without '.'",), id="name"),
        pytest.param({"shared": {}}, "model", "missing: a recipe needs a model node", id="no model"),
        pytest.param({"model": LINEAR, "input_shape": [2, "x"]}, "input_shape", (), id="input_shape"),
    ],
)
def test_form_problems(cfg, path, message):
    """One problem at ``path``; ``message`` is its exact text, or a tuple of parts of it."""
    [(got_path, got)] = problems(cfg)
    assert got_path == path, got
    assert got == message if isinstance(message, str) else all(part in got for part in message), got


def test_broken_repeat_body_is_reported_once_not_once_per_copy():
    assert problems({"type": "Repeat", "times": 5, "body": {"type": "Nope"}}) == [
        ("model.body.type", "unknown type 'Nope'")
    ]


def test_recipe_that_is_no_mapping():
    with pytest.raises(ConfigError, match="not int"):
        build_from_config(5)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  type: Linear\n  in_features: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        build_from_config(path)
    assert info.value.path.startswith(f"{path}:")
    assert "YAML syntax error" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        build_from_config(tmp_path / "missing.yaml")


def test_bad_interpolation_names_the_key():
    with pytest.raises(ConfigError, match="interpolation") as info:
        build_from_config({"model": "${blocks.nope}", "blocks": {}})
    assert info.value.path == "model"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_the_model_keeps_its_own_copy_of_a_dict_recipe():
    recipe = {"model": {"type": "Linear", "in_features": 2, "out_features": 3}}
    model = build_from_config(recipe)
    recipe["model"]["out_features"] = 5
    assert model.composer_record.recipe["model"]["out_features"] == 3


def test_allow_targets_given_as_one_string(tmp_path, monkeypatch):
    (tmp_path / "userblocks2.py").write_text(
        "from torch import nn\nclass Half(nn.Module):\n    def forward(self, x):\n        return x / 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        build_from_config({"_target_": "userblocks2.Half"}, allow_targets="userblocks2.")(torch.ones(1)).item() == 0.5
    )


def test_missing_arguments_are_named_once():
    [(_, message)] = problems({"type": "Conv2d", "in_channels": 1})
    assert message == "Conv2d is missing required arguments 'out_channels', 'kernel_size'"


def test_registered_factory_that_returns_no_module():
    register_module("NotAModule")(lambda: 3)
    [(path, message)] = problems({"type": "Sequential", "layers": [{"type": "NotAModule"}]})
    assert path == "model.layers[0]" and "returned int, not an nn.Module" in message


def test_repeat_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        register_module("Repeat")(nn.Identity)


def test_checked_leaf_path_still_refuses_a_non_module():
    register_module("SometimesModule")(lambda n: nn.Linear(n, n) if n > 0 else "x")
    [(path, message)] = problems(
        {"type": "Sequential", "layers": [{"type": "SometimesModule", "n": 2}, {"type": "SometimesModule", "n": 0}]}
    )
    assert path == "model.layers[1]" and "returned str" in message


def test_unhashable_type_is_a_config_error():
    assert problems({"type": ["Linear"]})[0][0] == "model.type"
