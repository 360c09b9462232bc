"""Property-based fuzzing (issue 13): whatever a recipe or a checkpoint file holds, composer answers
with its own error, never another exception, and never hangs.

- Recipes drawn from the recipe grammar (every node form, templates, refs, interpolations, init
  rules, input shapes), valid and then mutated (subtrees replaced by junk: huge numbers, keys
  that are not names, control characters, interpolations, deep lists, values no file can store),
  as dicts and as YAML text with mutated bytes: ``build_from_config`` raises only ``ConfigError``.
- A real checkpoint with mutated bytes (header and data) or mutated fields (metadata, the recipe
  inside it, tensor entries): ``load_checkpoint`` / ``load_tensors`` raise only ``CheckpointError``.

Each example runs under a deadline (a hang fails it). The fast lane draws a few dozen examples per
property; the slow lane 10,000 (``FUZZ_EXAMPLES`` overrides both).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from composer import CheckpointError, ConfigError, build_from_config, load_checkpoint, load_tensors, save_checkpoint
from composer.checkpoint.file import _CHECKSUMS, FORMAT, _chunks, read_metadata
from tests.attacks import guard

# the recursive strategies' own repr grows large: hypothesis warns about it, harmlessly
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

FAST, SLOW = 100, 10_000
DEADLINE = 10  # seconds for one example: far above what any takes (milliseconds)
LIMITS = {"modules": 2_000, "nodes": 20_000}  # a drawn Repeat may ask for many copies: refused, fast


def examples(slow: bool) -> int:
    return int(os.environ.get("FUZZ_EXAMPLES", SLOW if slow else FAST))


def fuzz_settings(slow: bool) -> settings:
    return settings(
        max_examples=examples(slow),
        deadline=None,  # our own, below: a hang is a failure, slowness on a busy machine is not
        database=None,
        derandomize=not slow,  # the fast lane is the same every run
        suppress_health_check=list(HealthCheck),
    )


def deadline(seconds: float = DEADLINE) -> contextlib.AbstractContextManager[None]:
    return guard(seconds)


# --- the recipe grammar ---------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "block", "x1", "0", "head", "enc"])
HOSTILE_NAMES = st.sampled_from(["forward", "training", "", "a.b", "\x1b[2J", "type", "__class__", "${a}", "🙂"])
TYPES = st.sampled_from([
    "Linear", "ReLU", "Identity", "Conv2d", "LayerNorm", "Dropout", "Embedding", "GELU", "Tanh",
    "MLP", "FixedHiddenMLP", "NestMLP", "CenteredLayer", "MyLinear", "BatchNorm1d", "LSTM", "Flatten",
    "Linaer", "Nope",
])  # fmt: skip
KWARGS = st.sampled_from([
    "in_features", "out_features", "bias", "p", "normalized_shape", "num_embeddings", "embedding_dim",
    "kernel_size", "out_channels", "in_channels", "inplace", "eps", "units", "in_units", "hidden_size",
    "input_size", "num_layers", "batch_first", "dtype", "device", "start_dim", "padding",
])  # fmt: skip
SMALL_INTS = st.integers(min_value=-2, max_value=9)
SCALARS = st.one_of(
    SMALL_INTS,
    st.sampled_from([0.5, 1e-5, 0.0, True, False, None, "float32", "bfloat16", "cpu", "meta", "same"]),
)
ODD_KEYS = st.one_of(st.integers(), st.none(), st.booleans(), st.floats(), st.text(max_size=3))
ARG_NAMES = st.sampled_from(["c", "d", "i"])
INLINE_INIT = st.dictionaries(
    st.sampled_from(["weight", "bias"]), st.sampled_from(["zeros", "normal", "nope"]), max_size=2
)
HUGE_CONSTANT = {"type": "constant", "val": 1e308}
SEEDS = st.one_of(SMALL_INTS, st.just(2**64))
JUNK = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**300), 2**64, 2**63, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([
        "${vars.w}", "${vars}", "${blocks.b}", "${oc.env:HOME}", "${now:%Y}", "${.x}", "${..y}", "\\${x}", "${",
        "$c", "$(c * 2)", "$(1/0)", "$(2**100000)", "$(__import__('os'))", "???", "{i:>999999999}", "{i.x}",
        "\x1b]0;x\x07", "a" * 300,
    ]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=4),
    st.dictionaries(ODD_KEYS, st.integers(), max_size=3),
    st.builds(lambda n: [[[]]] * n, st.integers(min_value=0, max_value=3)),
    st.sampled_from([b"bytes", frozenset({1}), object, range(3)]),
)  # fmt: skip


def leaf() -> st.SearchStrategy[dict]:
    kwargs = st.dictionaries(KWARGS, SCALARS, max_size=4)
    return st.builds(lambda t, kw: {"type": t, **kw}, TYPES, kwargs)


def op_node() -> st.SearchStrategy[dict]:
    ops = st.sampled_from(["add", "mul", "flatten", "relu", "cat", "getitem", "mean", "softmax", "nope"])
    extra = st.dictionaries(st.sampled_from(["other", "dim", "index", "start_dim", "in"]), SCALARS, max_size=2)
    return st.builds(lambda op, kw: {"op": op, **kw}, ops, extra)


def sequential(layers: Any) -> dict:
    return {"type": "Sequential", "layers": layers}


def extend(children: st.SearchStrategy) -> st.SearchStrategy:
    names = st.one_of(NAMES, HOSTILE_NAMES)
    graph_entry = st.one_of(
        children,
        op_node(),
        st.builds(lambda c, i: {"call": c, "in": i}, NAMES, NAMES),
        st.builds(lambda n, i: {**n, "in": i}, children, st.one_of(NAMES, st.lists(NAMES, max_size=2))),
    )
    return st.one_of(
        st.builds(lambda layers: {"type": "Sequential", "layers": layers}, st.lists(children, max_size=4)),
        st.builds(sequential, st.dictionaries(names, children, max_size=3)),
        st.builds(
            lambda times, names, body: {"type": "Repeat", "times": times, "names": names, "body": body},
            st.one_of(st.integers(min_value=0, max_value=4), st.sampled_from([10**9, -1, "3", 2.5, "${vars.w}"])),
            st.sampled_from(["{i}", "block {i}", "b{i:02d}", "{i:>99999}", "{j}", "{i!r}", "x"]),
            children,
        ),
        st.builds(
            lambda nodes, inputs, output: {"type": "Graph", "inputs": inputs, "nodes": nodes, **output},
            st.dictionaries(names, graph_entry, min_size=1, max_size=4),
            st.one_of(st.just(["x"]), st.lists(names, max_size=2)),
            st.one_of(st.just({}), st.builds(lambda o: {"output": o}, st.one_of(NAMES, st.lists(NAMES, max_size=2)))),
        ),
        st.builds(lambda name, args: {"use": name, **args}, NAMES, st.dictionaries(ARG_NAMES, SCALARS, max_size=2)),
        st.builds(lambda name: {"ref": name}, NAMES),
        op_node(),
        st.builds(lambda node, init: {**node, "init": init}, children, INLINE_INIT),
        st.builds(lambda node, frozen: {**node, "frozen": frozen}, children, st.sampled_from([True, False, "yes"])),
    )  # fmt: skip


NODES = st.recursive(leaf(), extend, max_leaves=10)

TEMPLATE = st.builds(
    lambda args, body: {"args": args, "body": body},
    st.one_of(st.just({"c": 4}), st.just(["c"]), st.just({"c": "???", "d": 2}), st.just({})),
    NODES,
)
RULE = st.fixed_dictionaries(
    {},
    optional={
        "match": st.sampled_from(["*", "0", "a.*", "[", 3]),
        "layer": st.sampled_from(["Linear", ["Linear", "Conv2d"], "Nope", 5]),
        "weight": st.sampled_from(["zeros", "xavier_uniform", {"type": "normal", "std": 0.1}, HUGE_CONSTANT, "nope"]),
        "bias": st.sampled_from(["zeros", {"type": "uniform", "a": 1, "b": 0}]),
    },
)  # fmt: skip
RECIPES = st.fixed_dictionaries(
    {"model": NODES},
    optional={
        "shared": st.dictionaries(NAMES, NODES, max_size=2),
        "blocks": st.dictionaries(NAMES, st.one_of(NODES, TEMPLATE), max_size=2),
        "init": st.fixed_dictionaries({}, optional={"seed": SEEDS, "rules": st.lists(RULE, max_size=2)}),
        "input_shape": st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4),
        "vars": st.fixed_dictionaries({"w": st.one_of(SMALL_INTS, st.just("${vars.w}"))}),
        "tie": st.dictionaries(st.sampled_from(["0.weight", "a.w"]), st.sampled_from(["1.weight", "b"]), max_size=1),
        "dtype": st.sampled_from(["float32", "bfloat16", "nope"]),
    },
)  # fmt: skip


def paths(tree: Any, here: tuple = ()) -> list[tuple]:
    """Every place in a tree: the key paths of its containers' values."""
    found = [here]
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += paths(v, (*here, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += paths(v, (*here, i))
    return found


def replaced(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    if isinstance(tree, dict):
        return {k: replaced(v, path[1:], value) if k == path[0] else v for k, v in tree.items()}
    return [replaced(v, path[1:], value) if i == path[0] else v for i, v in enumerate(tree)]


@st.composite
def mutated_recipes(draw: st.DrawFn) -> Any:
    recipe = draw(RECIPES)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = paths(recipe)
        place = draw(st.sampled_from(places))
        recipe = replaced(recipe, place, draw(st.one_of(JUNK, NODES, SCALARS)))
    return recipe


def builds_or_config_error(recipe: Any, device: str = "meta") -> None:
    with deadline():
        try:
            build_from_config(recipe, device=device, limits=LIMITS)
        except ConfigError as e:
            assert str(e) and "\x1b" not in str(e)


def check_recipes(slow: bool) -> None:
    @fuzz_settings(slow)
    @given(st.one_of(RECIPES, mutated_recipes()))
    def run(recipe: Any) -> None:
        builds_or_config_error(recipe)

    run()


def check_cpu_recipes(slow: bool) -> None:
    """On the CPU too: initialization and lazy shapes run (the numbers here are small)."""

    @fuzz_settings(slow)
    @given(st.one_of(RECIPES, mutated_recipes()))
    def run(recipe: Any) -> None:
        if _big(recipe):
            return
        builds_or_config_error(recipe, device="cpu")

    run()


def _big(tree: Any) -> bool:
    """Whether a tree holds a number that could make a large tensor on the CPU."""
    if isinstance(tree, dict):
        return any(_big(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_big(v) for v in tree)
    if isinstance(tree, bool) or not isinstance(tree, (int, float)):
        return False
    return not (abs(tree) <= 64)  # nan, inf and big integers too


def check_yaml_text(slow: bool, tmp: Path) -> None:
    @fuzz_settings(slow)
    @given(RECIPES, st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=3)), max_size=4))
    def run(recipe: Any, edits: list[tuple[int, bytes]]) -> None:
        text = bytearray(yaml.safe_dump(recipe, allow_unicode=True).encode())
        for at, new in edits:
            at %= len(text) + 1
            text[at : at + len(new)] = new
        path = tmp / "fuzz.yaml"
        path.write_bytes(bytes(text))
        builds_or_config_error(path)

    run()


def test_recipes_from_the_grammar_raise_only_config_errors() -> None:
    check_recipes(slow=False)


def test_recipes_built_on_the_cpu_raise_only_config_errors() -> None:
    check_cpu_recipes(slow=False)


def test_yaml_with_mutated_bytes_raises_only_config_errors(tmp_path: Path) -> None:
    check_yaml_text(slow=False, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.fuzz
def test_recipes_from_the_grammar_raise_only_config_errors_10000() -> None:
    check_recipes(slow=True)


@pytest.mark.slow
@pytest.mark.fuzz
def test_recipes_built_on_the_cpu_raise_only_config_errors_10000() -> None:
    check_cpu_recipes(slow=True)


@pytest.mark.slow
@pytest.mark.fuzz
def test_yaml_with_mutated_bytes_raises_only_config_errors_10000(tmp_path: Path) -> None:
    check_yaml_text(slow=True, tmp=tmp_path)


# --- checkpoints ------------------------------------------------------------------------------------

BASE_RECIPE = {
    "model": {
        "type": "Sequential",
        "layers": [
            {"type": "Linear", "in_features": 4, "out_features": 8},
            {"ref": "shared"},
            {"type": "ReLU"},
            {"ref": "shared"},
            {"type": "Linear", "out_features": 2},
        ],
    },
    "shared": {"shared": {"type": "Linear", "in_features": 8, "out_features": 8}},
    "input_shape": [2, 4],
    "init": {"seed": 0},
}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A checkpoint (a tie, a lazy layer, a stored summary) and a tensors file, as bytes."""
    from composer import save_tensors  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("real")
    save_checkpoint(build_from_config(BASE_RECIPE), tmp / "m.safetensors")
    save_tensors({"a": torch.arange(6.0).reshape(2, 3), "b": [torch.ones(2, dtype=torch.int64)]}, tmp / "t.safetensors")
    return {"checkpoint": (tmp / "m.safetensors").read_bytes(), "tensors": (tmp / "t.safetensors").read_bytes()}


def loads_or_checkpoint_error(path: Path, kind: str, verify: bool) -> None:
    with deadline():
        try:
            if kind == "tensors":
                load_tensors(path)
            else:
                load_checkpoint(path, verify=verify, limits=LIMITS)
        except CheckpointError as e:
            assert str(e) and "\x1b" not in str(e)


def check_byte_mutations(slow: bool, files: dict[str, bytes], tmp: Path) -> None:
    @fuzz_settings(slow)
    @given(
        st.sampled_from(sorted(files)),
        st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)), min_size=1, max_size=5),
        st.one_of(st.none(), st.integers(min_value=0)),
        st.booleans(),
        st.booleans(),
    )
    def run(kind: str, edits: list[tuple[int, bytes]], cut: int | None, in_header: bool, verify: bool) -> None:
        data = bytearray(files[kind])
        (length,) = struct.unpack("<Q", data[:8])
        for at, new in edits:
            at = at % (8 + length) if in_header else at % len(data)
            data[at : at + len(new)] = new
        if cut is not None:
            data = data[: cut % (len(data) + 1)]
        path = tmp / f"fuzz-{kind}.safetensors"
        path.write_bytes(bytes(data))
        loads_or_checkpoint_error(path, kind, verify)

    run()


FIELD_JUNK = st.one_of(
    JUNK, st.text(max_size=20), st.sampled_from(["{}", "[]", "null", '{"a": "b"}', "1e999", "[" * 5000])
)


def check_field_mutations(slow: bool, files: dict[str, bytes], tmp: Path) -> None:
    """The header rewritten by someone who knows the format: any field, any value, a valid CRC."""
    source = tmp / "source.safetensors"
    source.write_bytes(files["checkpoint"])
    metadata = read_metadata(source)
    (length,) = struct.unpack("<Q", files["checkpoint"][:8])
    header = json.loads(files["checkpoint"][8 : 8 + length])
    data = files["checkpoint"][8 + length :]
    recipe = json.loads(metadata["recipe"])
    tensors = load_file(source)  # the data the CRC covers, unchanged by a metadata mutation

    @fuzz_settings(slow)
    @given(st.data())
    def run(draw: st.DataObject) -> None:
        new_header = json.loads(json.dumps(header))
        meta = dict(metadata)
        choice = draw.draw(st.sampled_from(["recipe", "metadata", "tensor", "aliases"]))
        if choice == "recipe":
            tree = recipe
            for _ in range(draw.draw(st.integers(min_value=1, max_value=3))):
                place = draw.draw(st.sampled_from(paths(tree)))
                tree = replaced(tree, place, draw.draw(st.one_of(FIELD_JUNK, NODES)))
            try:
                meta["recipe"] = json.dumps(tree)
            except (TypeError, ValueError):
                return  # not JSON at all: a file cannot hold it
        elif choice == "metadata":
            key = draw.draw(st.sampled_from(sorted(meta) + ["extra"]))
            meta[key] = draw.draw(st.text(max_size=30) | st.sampled_from(["{}", "[]", '{"x": 1}', "2"]))
        elif choice == "aliases":
            meta["aliases"] = draw.draw(
                st.sampled_from(['{"x": "0.weight"}', '{"0.weight": "x"}', '{"a": 1}', "[]", '{"1.bias": "0.bias"}'])
            )
        else:
            name = draw.draw(st.sampled_from(sorted(k for k in new_header if k != "__metadata__")))
            field = draw.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            new_header[name][field] = draw.draw(
                st.one_of(
                    st.sampled_from(["F16", "BF16", "I64", "U8", "BOOL", "F64", "X"]),
                    st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3),
                )
            )
        field, digest = _CHECKSUMS.get(meta.get("format_version"), _CHECKSUMS["3"])
        meta.pop(field, None)
        meta[field] = digest(_chunks(tensors, meta, field))  # right unless a tensor entry changed
        new_header["__metadata__"] = meta
        text = json.dumps(new_header).encode()
        path = tmp / "fuzz-fields.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)
        loads_or_checkpoint_error(path, "checkpoint", verify=draw.draw(st.booleans()))

    run()


def test_checkpoint_bytes_mutated_raise_only_checkpoint_errors(real_files, tmp_path: Path) -> None:
    check_byte_mutations(slow=False, files=real_files, tmp=tmp_path)


def test_checkpoint_fields_mutated_raise_only_checkpoint_errors(real_files, tmp_path: Path) -> None:
    check_field_mutations(slow=False, files=real_files, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.fuzz
def test_checkpoint_bytes_mutated_raise_only_checkpoint_errors_10000(real_files, tmp_path: Path) -> None:
    check_byte_mutations(slow=True, files=real_files, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.fuzz
def test_checkpoint_fields_mutated_raise_only_checkpoint_errors_10000(real_files, tmp_path: Path) -> None:
    check_field_mutations(slow=True, files=real_files, tmp=tmp_path)


def test_the_fuzzed_checkpoint_is_a_real_one(real_files, tmp_path: Path) -> None:
    """The base the fuzzers mutate loads, ties and all: mutations start from a valid file."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(real_files["checkpoint"])
    model = load_checkpoint(path)
    assert model[1] is model[3] and model[4].in_features == 8
    assert read_metadata(path)["format"] == FORMAT
