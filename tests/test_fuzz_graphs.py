"""Property-based fuzzing of Graphs, ops, templates (issue 23) and of checkpoint directories.

- Graph recipes: inputs, module/op/call entries with ``in:`` wiring, params with shapes and
  inits, outputs of every shape (names, lists, nested lists, mappings), ops with drawn keyword
  values, nested Graphs, templates with ``$arg`` and ``$(expression)`` bodies used directly and
  as Repeat bodies (``i``); built on ``meta`` and on the CPU with an ``input_shape`` (the forward
  and the generated code run; the huge sizes drawn fail to allocate at once): only ``ConfigError``.
- Checkpoint directories: a real one (``composer.json``, ``.metadata``, a shard) with files
  replaced by random bytes, truncated, emptied, made directories, symbolic links (to a sibling,
  out of the folder, to ``/dev/zero``), FIFOs, or ``composer.json`` fields of other JSON types
  (its checksum made right): ``load_checkpoint`` and ``inspect`` raise only ``CheckpointError``
  (``ConfigError`` for a recipe), never block on a FIFO.

Fast lane: 100 examples each (1-3 s each). The fuzz lane (``-m fuzz``, a CI step of its own), on
the 2-core VM: 10,000 Graph recipes in 35 s on meta and 36 s on the CPU, 10,000 directories in
about 41 s. Under a load of 10 each takes about three times as long.
``FUZZ_EXAMPLES`` overrides the counts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composer import CheckpointError, ConfigError, load_checkpoint
from composer.app.inspect import main as inspect_main
from composer.checkpoint.dcp import _DCP_METADATA, INFO, _crc_info
from tests.attacks import write_directory
from tests.test_fuzz import JUNK, LIMITS, SMALL_INTS, builds_or_config_error, deadline, fuzz_settings

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

FAST, SLOW_GRAPHS, SLOW_DIRECTORIES = 100, 10_000, 10_000


def lane(slow: bool, count: int = SLOW_GRAPHS) -> settings:
    return settings(fuzz_settings(slow), max_examples=int(os.environ.get("FUZZ_EXAMPLES", count if slow else FAST)))


# --- Graphs, ops and templates ---------------------------------------------------------------------

WIRE = st.sampled_from(["x", "y", "a", "b", "c", "w", "v0", "nope", "", "x.y"])
WIRES = st.one_of(WIRE, st.lists(WIRE, max_size=3), st.lists(st.lists(WIRE, max_size=2), max_size=2))
OP_NAMES = st.sampled_from([
    "add", "sub", "mul", "div", "matmul", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "cat", "stack", "chunk",
    "getitem", "select", "flatten", "unflatten", "reshape", "transpose", "permute", "mean", "softmax",
    "positions", "expand_batch", "attention", "Add", "nope",
])  # fmt: skip
OP_KWARGS = st.sampled_from([
    "other", "alpha", "dim", "chunks", "index", "start_dim", "end_dim", "sizes", "shape", "dim0", "dim1",
    "dims", "keepdim", "rounding_mode", "is_causal", "scale", "dropout_p", "training", "tensors", "nope",
])  # fmt: skip
OP_VALUES = st.one_of(
    SMALL_INTS,
    st.lists(SMALL_INTS, max_size=4),
    st.sampled_from([0.5, True, None, "floor", "x", "$c", "$(c * 2)", "$(i)", 2**63, -(2**70), 1e308, [[1]], {}]),
)
ARG_REFS = st.sampled_from(["$c", "$d", "$(c * 2)", "$(c // d)", "$(i + 1)", "$(max(c, 2))", "$(c ** 99)", "$e"])
DIM = st.one_of(st.integers(min_value=1, max_value=4), ARG_REFS)
LEAVES = st.one_of(
    st.builds(lambda i, o: {"type": "Linear", "in_features": i, "out_features": o}, DIM, DIM),
    st.builds(lambda n: {"type": "LayerNorm", "normalized_shape": n}, DIM),
    st.sampled_from([{"type": "ReLU"}, {"type": "Identity"}, {"type": "Tanh"}, {"type": "Flatten"}]),
)
PARAM_SHAPES = st.one_of(
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=3),
    st.sampled_from([[], [0], [-1], [10**5, 10**5, 10**5], [2**62, 4], [1.5], "4", [None], [[2]], 3]),
)
PARAMS = st.dictionaries(
    st.sampled_from(["w", "b", "scale", "x", "forward", "a.b"]),
    st.one_of(
        st.fixed_dictionaries(
            {"shape": PARAM_SHAPES},
            optional={
                "init": st.sampled_from(["zeros", "ones", "normal", {"type": "constant", "val": 2}, "nope", 3]),
                "frozen": st.sampled_from([True, False, "no"]),
                "dtype": st.sampled_from(["float32", "int64", "bool"]),
            },
        ),
        JUNK,
    ),
    max_size=2,
)
OUTPUTS = st.one_of(
    st.just({}),
    st.builds(lambda o: {"output": o}, st.one_of(WIRE, st.lists(WIRE, max_size=3), st.just([["a"]]))),
    st.builds(lambda o: {"output": o}, st.sampled_from([{"a": 1}, 3, None, [], "${x}"])),
)


def graph_entries(children: st.SearchStrategy) -> st.SearchStrategy:
    op = st.builds(
        lambda name, kwargs, wires: {"op": name, **kwargs, **wires},
        OP_NAMES,
        st.dictionaries(OP_KWARGS, OP_VALUES, max_size=3),
        st.one_of(st.just({}), st.builds(lambda w: {"in": w}, WIRES)),
    )
    call = st.builds(lambda c, w: {"call": c, "in": w}, WIRE, WIRES)
    module = st.builds(lambda n, w: {**n, **w}, children, st.one_of(st.just({}), st.builds(lambda w: {"in": w}, WIRES)))
    return st.one_of(op, call, module)


def graphs(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(
            lambda inputs, nodes, params, output: {
                "type": "Graph", "inputs": inputs, "nodes": nodes, **({"params": params} if params else {}), **output,
            },
            st.one_of(st.just(["x"]), st.just(["x", "y"]), st.lists(WIRE, max_size=3), JUNK),
            st.dictionaries(st.sampled_from(["a", "b", "c", "x", "v0", "forward", "_m"]), graph_entries(children),
                            min_size=1, max_size=5),
            PARAMS,
            OUTPUTS,
        ),
        st.builds(lambda n, t: {"type": "Repeat", "times": t, "body": n}, children, st.integers(0, 3)),
        st.builds(lambda name, args: {"use": name, **args}, st.sampled_from(["t", "u", "nope"]),
                  st.dictionaries(st.sampled_from(["c", "d", "e", "i"]), st.one_of(SMALL_INTS, JUNK), max_size=2)),
        st.builds(lambda name, args, times: {"type": "Repeat", "times": times, "body": {"use": name, **args}},
                  st.sampled_from(["t", "u"]), st.fixed_dictionaries({"c": st.one_of(DIM, st.just("$(i + 1)"))}),
                  st.integers(1, 3)),
    )  # fmt: skip


GRAPH_NODES = st.recursive(LEAVES, graphs, max_leaves=8)
TEMPLATES = st.dictionaries(
    st.sampled_from(["t", "u"]),
    st.builds(
        lambda args, body: {"args": args, "body": body},
        st.sampled_from([["c"], {"c": 2}, {"c": "???", "d": 2}, ["c", "c"], {"c": 2, "i": 1}, [3], "c"]),
        GRAPH_NODES,
    ),
    max_size=2,
)
GRAPH_RECIPES = st.fixed_dictionaries(
    {"model": graphs(GRAPH_NODES)},
    optional={
        "blocks": TEMPLATES,
        "input_shape": st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=3),
        "inputs": st.sampled_from([[{"shape": [2, 4]}, {"shape": [2, 4]}], [{"shape": [2, 4], "dtype": "int64"}], 3]),
    },
)


def check_graph_recipes(slow: bool, device: str) -> None:
    @lane(slow)
    @given(GRAPH_RECIPES)
    def run(recipe: dict) -> None:
        builds_or_config_error(recipe, device=device)

    run()


def test_graph_recipes_raise_only_config_errors() -> None:
    check_graph_recipes(slow=False, device="meta")


def test_graph_recipes_built_on_the_cpu_raise_only_config_errors() -> None:
    check_graph_recipes(slow=False, device="cpu")


@pytest.mark.slow
@pytest.mark.fuzz
def test_graph_recipes_raise_only_config_errors_10000() -> None:
    check_graph_recipes(slow=True, device="meta")


@pytest.mark.slow
@pytest.mark.fuzz
def test_graph_recipes_built_on_the_cpu_raise_only_config_errors_10000() -> None:
    check_graph_recipes(slow=True, device="cpu")


# --- checkpoint directories ------------------------------------------------------------------------

DIR_RECIPE = {
    "model": {
        "type": "Sequential",
        "layers": [{"type": "Linear", "in_features": 4, "out_features": 8}, {"type": "ReLU"}, {"ref": "tail"}],
    },
    "shared": {"tail": {"type": "Linear", "in_features": 8, "out_features": 2}},
    "init": {"seed": 0},
}


@pytest.fixture(scope="module")
def real_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint directory (``.metadata``, one shard, ``composer.json``), as one rank saves it."""
    return write_directory(tmp_path_factory.mktemp("dir") / "ckpt", DIR_RECIPE)


FILES = st.sampled_from([INFO, _DCP_METADATA, "__0_0.distcp", "__1_0.distcp", "notes.txt"])
INFO_FIELDS = st.sampled_from([
    "format", "format_version", "world_size", "aliases", "files", "recipe", "allow_targets", "init_schemes",
    "layout", "training", "composer_version", "extra",
])  # fmt: skip
INFO_VALUES = st.one_of(
    JUNK,
    st.sampled_from([
        {}, [], None, "", {"__0_0.distcp": "x"}, {"../x": 1}, {"a": "b"}, {"/etc/passwd": 0}, {".metadata": -1},
        {"model": {"type": "Repeat", "times": 10**9, "body": {"type": "Identity"}}}, [[[[[]]]]], 10**400 // 10**300,
    ]),
)  # fmt: skip


@st.composite
def directory_edits(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """A list of (action, file, argument) applied to a copy of the real directory."""
    actions = st.sampled_from(
        ["bytes", "truncate", "empty", "remove", "dir", "symlink", "symlink_out", "dev_zero", "fifo", "field"]
    )
    edits = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action, name = draw(actions), draw(FILES)
        if action == "bytes":
            arg: Any = draw(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)))
        elif action == "truncate":
            arg = draw(st.integers(min_value=0))
        elif action == "field":
            arg = (draw(INFO_FIELDS), draw(INFO_VALUES), draw(st.booleans()))
        else:
            arg = None
        edits.append((action, name, arg))
    return edits


def _apply(folder: Path, action: str, name: str, arg: Any, outside: Path) -> None:
    path = folder / name
    if action in ("dir", "symlink", "symlink_out", "dev_zero", "fifo", "remove", "empty"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    if action == "bytes" and path.is_file() and not path.is_symlink():
        data = bytearray(path.read_bytes())
        at = arg[0] % (len(data) + 1)
        data[at : at + len(arg[1])] = arg[1]
        path.write_bytes(bytes(data))
    elif action == "truncate" and path.is_file() and not path.is_symlink():
        os.truncate(path, arg % (path.stat().st_size + 1))
    elif action == "empty":
        path.write_bytes(b"")
    elif action == "dir":
        path.mkdir()
    elif action == "symlink":
        path.symlink_to(INFO if name != INFO else "__0_0.distcp")
    elif action == "symlink_out":
        path.symlink_to(outside)
    elif action == "dev_zero":
        path.symlink_to("/dev/zero")
    elif action == "fifo":
        os.mkfifo(path)
    elif action == "field" and path.name == INFO and path.is_file() and not path.is_symlink():
        _edit_info(path, *arg)


def _edit_info(path: Path, field: str, value: Any, fix_crc: bool) -> None:
    try:
        info = json.loads(path.read_text())
    except ValueError:
        return
    if not isinstance(info, dict):
        return
    info[field] = value
    try:
        if fix_crc:
            info["crc32"] = _crc_info(info)
        text = json.dumps(info)
    except (TypeError, ValueError):
        return  # not JSON: no file holds it
    path.write_text(text)


def loads_or_error(folder: Path) -> None:
    with deadline():
        try:
            load_checkpoint(folder, limits=LIMITS)
        except (CheckpointError, ConfigError) as e:
            assert str(e) and "\x1b" not in str(e)
        assert inspect_main([str(folder)]) in (0, 1)


def check_directories(slow: bool, base: Path, tmp: Path) -> None:
    outside = tmp / "outside.bin"
    outside.write_bytes(b"\x00" * 64)

    @lane(slow, SLOW_DIRECTORIES)
    @given(directory_edits())
    def run(edits: list[tuple[str, str, Any]]) -> None:
        folder = tmp / "fuzzed"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        for action, name, arg in edits:
            _apply(folder, action, name, arg, outside)
        loads_or_error(folder)

    run()


def test_the_fuzzed_directory_is_a_real_checkpoint(real_directory: Path) -> None:
    model = load_checkpoint(real_directory)
    assert model[2].out_features == 2 and sorted(os.listdir(real_directory)) == [
        ".metadata", "__0_0.distcp", INFO,
    ]  # fmt: skip


def test_checkpoint_directories_mutated_raise_only_checkpoint_errors(
    real_directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_directories(slow=False, base=real_directory, tmp=tmp_path)
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.fuzz
def test_checkpoint_directories_mutated_raise_only_checkpoint_errors_10000(
    real_directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_directories(slow=True, base=real_directory, tmp=tmp_path)
    capsys.readouterr()
