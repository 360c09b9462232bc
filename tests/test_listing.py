"""``list_text``: what ``python -m composer list [KIND] [NAME]`` prints, read from the registries and conf/."""

import pytest
from torch import nn

from composer import ConfigError
from composer.describe.listing import KINDS, list_text
from tests.recipes import CONF as conf
from tests.recipes import MODELS


def rows(text: str) -> dict[str, list[str]]:
    """A table's rows by argument name: ``{name: [default, type]}``."""
    table = {}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) >= 2:
            table[parts[0]] = [parts[1], " ".join(parts[2:])]
    return table


def test_overview_names_every_kind():
    text = list_text(conf_dir=conf)
    assert [line.split()[0] for line in text.splitlines()[1:]] == list(KINDS)
    assert f"{len(MODELS)} model recipes, 6 init schemes" in text and "28 templates in the recipes" in text


def test_types_lists_torch_nn_forms_and_blocks_by_origin():
    text = list_text("types")
    assert text.splitlines()[:2] == ["forms of the builder (3):", "  Sequential, Repeat, Graph"]
    torch_names = text.split("torch.nn (")[1].split("composer.modules.blocks")[0]
    assert "Conv2d" in torch_names and "TransformerEncoderLayer" in torch_names
    assert "composer.modules.blocks (6):\n  MLP, MySequential, FixedHiddenMLP, NestMLP, CenteredLayer, MyLinear" in text


def test_a_type_shows_its_arguments_with_defaults_from_its_signature():
    text = list_text("types", "Conv2d")
    assert text.startswith("Conv2d: torch.nn.modules.conv.Conv2d\n  Applies a 2D convolution")
    table = rows(text)
    assert table["in_channels"] == ["required", "int"]
    assert table["kernel_size"] == ["required", "int | tuple[int, int]"]
    assert table["stride"] == ["1", "int | tuple[int, int]"]
    assert table["bias"] == ["true", "bool"]
    assert table["padding_mode"][0] == "'zeros'" and "'reflect'" in table["padding_mode"][1]
    assert "without in_channels it is built as LazyConv2d" in text


def test_types_whose_constructors_hide_their_arguments():
    lstm = rows(list_text("types", "LSTM"))  # LSTM(*args, **kwargs): the documented arguments
    assert lstm["hidden_size"] == ["required", "int"] and lstm["proj_size"] == ["0", "int"]
    assert "takes no argument" in list_text("types", "Tanh")  # inherits nn.Module.__init__
    assert rows(list_text("types", "MyLinear"))["units"] == ["required", "int"]
    assert "layers" in rows(list_text("types", "Sequential"))
    assert rows(list_text("types", "Repeat"))["times"] == ["required", "int"]


def test_initializers_with_their_arguments():
    text = list_text("inits")
    assert "  normal(mean=0.0, std=1.0)" in text.splitlines()
    assert "  sparse(sparsity, std=0.01)" in text.splitlines()
    assert "  piecewise()" in text.splitlines()
    assert rows(list_text("inits", "kaiming_uniform"))["mode"] == ["'fan_in'", "'fan_in' | 'fan_out'"]


def test_ops_from_a_registry():
    assert "  transpose(dim0, dim1)" in list_text("ops").splitlines()  # the builder's op registry by default
    transpose = list_text("ops", "transpose")
    assert "in: input" in transpose and rows(transpose)["dim0"] == ["required", "int"]  # not "no kwargs"
    add = list_text("ops", "add")
    assert "in: input, other" in add and "other: an input or an argument" in add and rows(add)["alpha"][0] == "1"

    def flatten(x, start_dim: int = 0, end_dim: int = -1):
        """Flatten dims start_dim..end_dim."""

    assert "  flatten(start_dim=0, end_dim=-1)" in list_text("ops", ops={"flatten": flatten}).splitlines()
    text = list_text("ops", "flatten", ops={"flatten": flatten})
    assert "in: x" in text and rows(text)["end_dim"] == ["-1", "int"]


def test_templates_of_the_recipes(tmp_path):
    assert "block                  pasted with ${blocks.NAME}: Sequential  [model/rgnet]" in list_text(
        "templates", conf_dir=conf
    )
    assert "in_features: 4" in list_text("templates", "block", conf_dir=conf)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "res.yaml").write_text(
        "model: {use: unit, c: 4}\nblocks:\n  unit:\n    args:\n      c: ???\n      stride: 1\n    body: {type: ReLU}\n"
    )
    text = " ".join(list_text("templates", conf_dir=[tmp_path, conf]).split())
    assert "unit args: c (required), stride=1 [model/res]" in text


def test_recipes_with_descriptions_and_a_recipe_itself():
    text = list_text("recipes", conf_dir=conf)
    assert "  mlp               The tutorial's first network: Linear 20-256, ReLU, Linear 256-10." in text
    assert "  xavier    Xavier-uniform weights on every Linear." in text
    assert list_text("recipes", "mlp", conf_dir=conf).startswith(
        f"# {conf / 'model' / 'mlp.yaml'}\n# @package _global_"
    )
    assert "weight: xavier_uniform" in list_text("recipes", "init/xavier", conf_dir=conf)


def test_a_users_directory_shadows_the_packaged_one(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mlp.yaml").write_text("# My own mlp.\nmodel: {type: MLP}\n")
    (tmp_path / "model" / "mine.yaml").write_text("model: {type: ReLU}\n")
    text = list_text("recipes", conf_dir=[tmp_path, conf])
    assert "  mlp               My own mlp." in text and "  mine" in text
    assert "type: MLP" in list_text("recipes", "mlp", conf_dir=[tmp_path, conf])


def test_registries_are_arguments():
    assert list_text("types", modules={"Lin": nn.Linear}).splitlines()[2:4] == ["torch.nn (1):", "  Lin"]


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("typo", None, "nothing to list as 'typo' (did you mean 'types'?)"),
        ("types", "Conv2D", "unknown type 'Conv2D' (did you mean 'Conv2d'?)"),
        ("inits", "xavier", "unknown initializer 'xavier' (did you mean 'xavier_normal'?)"),
        ("recipes", "mlpp", "no recipe 'mlpp' (did you mean 'mlp'?)"),
        ("templates", "blok", "no template 'blok' (did you mean 'block'?)"),
    ],
)
def test_unknown_names_say_the_closest(kind, name, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        list_text(kind, name, conf_dir=conf)
