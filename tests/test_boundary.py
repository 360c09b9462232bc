"""The last-resort boundary (issue 23): whatever a recipe, a registered block or a crafted file
provokes, ``build_from_config`` raises a ``ConfigError`` and ``load_checkpoint``/``load_weights``
a ``CheckpointError``, at the key path (or file) reached, the original exception as the cause;
``MemoryError`` and ``KeyboardInterrupt`` pass through untouched."""

from __future__ import annotations

import json
import linecache
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import composer
from composer import CheckpointError, ConfigError, build_from_config, load_checkpoint, load_weights, register_module
from composer.app.inspect import main as inspect_main
from composer.modules import graph as graph_module
from tests.attacks import write_checkpoint


def _raising(error: BaseException) -> type[nn.Module]:
    class Raises(nn.Module):
        def __init__(self, n: int = 1) -> None:
            super().__init__()
            raise error

    return Raises


def _recipe(type_name: str) -> dict:
    return {"model": {"type": "Sequential", "layers": [{"type": "Identity"}, {"type": type_name, "n": 2}]}}


@pytest.mark.parametrize("error", [ValueError("bad n"), RecursionError("maximum recursion depth exceeded")])
def test_a_registered_constructor_raising_is_a_config_error_with_its_cause(error: Exception) -> None:
    register_module("Raises")(_raising(error))
    with pytest.raises(ConfigError) as info:
        build_from_config(_recipe("Raises"))
    assert info.value.path == "model.layers[1]"
    assert type(error).__name__ in str(info.value)
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [MemoryError(), KeyboardInterrupt()])
def test_memory_error_and_interrupt_pass_through(error: BaseException) -> None:
    register_module("Raises")(_raising(error))
    with pytest.raises(type(error)):
        build_from_config(_recipe("Raises"))


class _NoSignature(type(nn.Module)):
    @property
    def __signature__(cls):  # noqa: PLW3201  (what inspect.signature reads on a class)
        raise RuntimeError("no signature")


class _Unreadable(nn.Module, metaclass=_NoSignature):
    """A block whose signature cannot be read: the builder's own check raises, not the constructor."""

    def __init__(self, n: int = 1) -> None:
        super().__init__()


def test_an_error_of_the_walk_is_a_config_error_at_the_deepest_node() -> None:
    register_module("Unreadable")(_Unreadable)
    recipe = {"model": {"type": "Sequential", "layers": {"a": {"type": "Identity"}, "b": {"type": "Unreadable"}}}}
    with pytest.raises(ConfigError) as info:
        build_from_config(recipe)
    assert info.value.path == "model.layers.b"
    assert "RuntimeError: no signature" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


class _NoState(nn.Module):
    """Builds; its ``state_dict`` raises: what a load reads first."""

    def state_dict(self, *args, **kwargs):
        raise LookupError("stale")


def test_load_checkpoint_and_load_weights_turn_an_unexpected_error_into_a_checkpoint_error(tmp_path: Path) -> None:
    register_module("NoState")(_NoState)
    path = write_checkpoint(tmp_path / "m.safetensors", {"model": {"type": "NoState"}})
    for call in (lambda: load_checkpoint(path), lambda: load_weights(_NoState(), path)):
        with pytest.raises(CheckpointError) as info:
            call()
        assert str(info.value) == f"{path}: LookupError: stale"
        assert isinstance(info.value.__cause__, LookupError)


def test_a_checkpoint_with_fields_of_the_wrong_type_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", {"model": {"type": "Identity"}}, extra={"aliases": "[1, 2]"})
    for call in (lambda: load_checkpoint(path), lambda: load_weights(nn.Identity(), path)):
        with pytest.raises(CheckpointError, match="'aliases' field is missing or malformed"):
            call()


def test_inspect_prints_one_line_for_any_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    header = json.dumps({"__metadata__": {"format": "composer", "recipe": "{"}}).encode()
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    assert inspect_main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_inspect_prints_one_line_for_an_unexpected_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_module("Unreadable")(_Unreadable)
    path = write_checkpoint(tmp_path / "u.safetensors", {"model": {"type": "Unreadable"}})
    assert inspect_main([str(path), "--rebuild"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "RuntimeError: no signature" in err


def test_an_invalid_template_is_reported_once_and_the_valid_ones_still_expand() -> None:
    blocks = {
        "bad": {"args": ["c"], "body": {"type": "Linear", "in_features": "$(c.real)", "out_features": "$c"}},
        "ok": {"args": ["c"], "body": {"type": "Linear", "in_features": "$c", "out_features": "$c"}},
    }
    layers = [{"use": "bad", "c": 2}, {"use": "bad", "c": 3}, {"use": "ok", "c": 2, "d": 1}, {"use": "nope"}]
    with pytest.raises(ConfigError) as info:
        build_from_config({"blocks": blocks, "model": {"type": "Sequential", "layers": layers}})
    paths = [path for path, _ in info.value.problems]
    # the bad template at its own key, once; the valid one expanded (its unknown argument found);
    # only a name that is no template is unknown
    assert paths == ["blocks.bad.body.in_features", "model.layers[2].d", "model.layers[3].use"], paths
    assert "unknown template 'nope'" in info.value.problems[-1][1]


def _chain(n: int) -> dict:
    """A Graph of ``n`` ReLUs in a chain: its generated forward has about ``n`` lines."""
    return {"type": "Graph", "inputs": ["x"], "nodes": {f"r{i}": {"type": "ReLU"} for i in range(n)}}


def test_generated_sources_are_bounded_and_recent_ones_stay_in_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_module, "_SOURCE_CHARS_KEPT", 8_000)
    models = [build_from_config({"model": _chain(n)}) for n in range(100, 112)]  # about 3 KB of source each

    def generated() -> list[str]:
        return [name for name in linecache.cache if name.startswith("<composer.Graph.forward")]

    held = sum(len("".join(linecache.cache[name][2])) for name in generated())
    assert 0 < held <= 8_000 + len(models[-1].code)
    with pytest.raises(TypeError) as info:
        models[-1]("not a tensor")  # the newest graph's line is in the traceback
    assert "v0 = _m['r0'](x)" in "".join(traceback.format_exception(info.value))
    models[0](torch.zeros(2))  # an evicted source still runs: only its lines left linecache
    assert linecache.getline(models[0].forward.__code__.co_filename, 3) == ""


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_constructor_warning_names_the_recipe_not_composer(device: str) -> None:
    layer = {"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2}
    recipe = {"model": {"type": "TransformerEncoder", "encoder_layer": layer, "num_layers": 2}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_from_config(recipe, device=device)
    nested = [w for w in caught if "enable_nested_tensor" in str(w.message)]
    assert nested, [str(w.message) for w in caught]  # torch's own warning, still shown
    composer_dir = str(Path(composer.__file__).parent)
    assert all(w.filename == "<recipe>" for w in nested)
    assert not [w for w in caught if w.filename.startswith(composer_dir)]
