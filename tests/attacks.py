"""Hostile recipes and files (issue 13): each attack, as a function of a scratch folder, that must
end fast with composer's own error (or, for the few that are not errors, end fast).

``tests/test_hostile.py`` runs them under a deadline and asserts the error; ``python -m
bench.attacks`` runs each in a fresh process and measures its time and peak memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer import CheckpointError, ConfigError


class StillRunning(BaseException):  # noqa: N818  (not an Exception: composer's last resort must not turn it into a ConfigError)
    """A guarded call ran past its seconds."""


@contextlib.contextmanager
def guard(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, when the code inside runs past ``seconds`` (main thread): a test's
    own stop for an attack or a fuzzed example that a regression lets loop."""

    def stop(_signum: int, _frame: Any) -> None:
        raise StillRunning(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Attack:
    name: str
    prepare: Callable[[Path], Any]  # writes the hostile input into a scratch folder; returns it
    run: Callable[[Any], Any]  # what a user does with it: the part that must end fast
    error: type[Exception] | None  # None: the attack is harmless work that must simply end fast
    match: str = ""  # in the error's message

    def __call__(self, tmp: Path) -> Any:
        return self.run(self.prepare(tmp))


# --- building blocks ----------------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    [f"{chr(97)}: &{chr(97)} [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 10)}]" for i in range(1, 9)]
)  # nine levels of ten: 10^9 leaves from about 400 bytes


def alias_bomb_yaml() -> str:
    """The bomb in a kwarg (``nn.Identity`` takes any), which the builder walks to find nodes."""
    lines = "\n".join(f"  {line}" for line in ALIAS_BOMB.splitlines())
    return f"blocks:\n{lines}\nmodel: {{type: Identity, unused: *i}}\n"


def interpolation_bomb() -> dict:
    """``${blocks.x}`` chains that double nine times... by ten: 10^9 nodes once pasted."""
    blocks: dict[str, Any] = {"l0": [0] * 10}
    for i in range(1, 10):
        blocks[f"l{i}"] = [f"${{blocks.l{i - 1}}}"] * 10
    return {"model": {"type": "Identity"}, "blocks": blocks}


def write_checkpoint(path: Path, recipe: dict | None, extra: dict[str, str] | None = None, tensors=None) -> Path:
    """A well-formed composer checkpoint (valid CRC) holding whatever recipe an attacker wants."""
    from composer.checkpoint.file import FORMAT, _write  # noqa: PLC0415

    metadata = {"aliases": "{}", "init_schemes": "{}"}
    if recipe is not None:
        metadata["recipe"] = json.dumps(recipe)
        metadata["allow_targets"] = "[]"
    metadata.update(extra or {})
    _write(path, FORMAT, dict(tensors or {}), metadata)
    return path


def raw_header_file(path: Path, header: bytes) -> Path:
    """A file whose safetensors header is ``header``, verbatim."""
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
    return path


def _build(cfg: Any, **kwargs: Any) -> Any:
    from composer import build_from_config  # noqa: PLC0415

    return build_from_config(cfg, **kwargs)


def _load(path: Path, **kwargs: Any) -> Any:
    from composer import load_checkpoint  # noqa: PLC0415

    return load_checkpoint(path, **kwargs)


def _inspect(*args: str | Path) -> int:
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from composer.app.inspect import main  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    if status:
        raise CheckpointError(err.getvalue().strip())
    return status


def _file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- the attacks: (prepare, run) ------------------------------------------------------------------

REPEAT_BILLION = {"model": {"type": "Repeat", "times": 1_000_000_000, "body": {"type": "Identity"}}}
WIDE_NAMES = {"type": "Repeat", "times": 2, "names": "{i:>100000000000}", "body": {"type": "Identity"}}
WIDE_INPUT = {"model": {"type": "Identity"}, "input_shape": [1, 500_000_000]}


def _alias_bomb_dict(_tmp: Path) -> dict:
    """The alias bomb as a Python dict: one list held ten times at each of nine levels."""
    level: Any = ["x"] * 10
    for _ in range(8):
        level = [level] * 10
    return {"model": {"type": "Identity", "unused": level}}


def _string_bomb(_tmp: Path) -> dict:
    """A string that doubles 40 times through interpolations: 10 TB of text."""
    blocks = {"s0": "xxxxxxxxxx", **{f"s{i}": f"${{blocks.s{i - 1}}}${{blocks.s{i - 1}}}" for i in range(1, 41)}}
    return {"model": {"type": "Identity"}, "blocks": blocks}


def _nested_repeats(_tmp: Path) -> dict:
    node: dict = {"type": "Identity"}
    for _ in range(4):
        node = {"type": "Repeat", "times": 1000, "body": node}
    return node


def _template_bomb(_tmp: Path) -> dict:
    """Templates each using the next ten times: 10^9 modules from a dozen lines."""
    blocks: dict[str, Any] = {"t0": {"args": [], "body": {"type": "Identity"}}}
    for i in range(1, 10):
        blocks[f"t{i}"] = {"args": [], "body": {"type": "Sequential", "layers": [{"use": f"t{i - 1}"}] * 10}}
    return {"model": {"use": "t9"}, "blocks": blocks}


def _empty_objects_header(tmp: Path) -> Path:
    """A 60 MB header of ``{}``: 1.6 GB once parsed."""
    body = b"{" + b",".join(b'"%d":{}' % i for i in range(6_000_000)) + b"}"
    return raw_header_file(tmp / "braces.safetensors", body)


def _three_million_lines(tmp: Path) -> Path:
    path = tmp / "long.yaml"
    with open(path, "w") as f:
        f.write("model: {type: Identity}\nvars:\n  x:\n")
        f.write("  - 0\n" * 3_000_000)
    return path


def _half_a_megabyte(tmp: Path) -> Path:
    """0.5 MB of values and one ``${``: resolved in one linear pass (OmegaConf: 20 s)."""
    rows = "\n".join(f"    k{i}: {i}" for i in range(40_000))
    model = "{type: Linear, in_features: 4, out_features: '${vars.width}'}"
    return _file(tmp, "half.yaml", f"vars:\n  width: 8\n  pad:\n{rows}\nmodel: {model}\n")


def _fifo(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        os.mkfifo(tmp / name)
        return tmp / name

    return make


def _looping_checkpoint(tmp: Path) -> Path:
    """A FixedHiddenMLP whose bias is inf: its forward halves inf forever."""
    import torch  # noqa: PLC0415

    from composer import save_checkpoint  # noqa: PLC0415

    model = _build({"model": {"type": "FixedHiddenMLP"}, "input_shape": [2, 20]})
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
        model.linear.bias.fill_(float("inf"))
    path = tmp / "loop.safetensors"
    save_checkpoint(model, path)  # no summary stored: inspect summarizes its recipe on meta, runs no forward
    return path


def _summary_of_loaded(path: Path) -> str:
    from composer import summary  # noqa: PLC0415

    text = summary(_load(path))
    if "tensor_elements" not in text:
        raise AssertionError(f"the summary does not say the input was refused:\n{text}")
    return text


def _rebuild(path: Path) -> int:
    return _inspect("--rebuild", path)


def _deep_header(tmp: Path) -> Path:
    return raw_header_file(tmp / "deep.safetensors", b"[" * 10**6 + b"]" * 10**6)


def _meta(cfg: Any) -> Any:
    return _build(cfg, device="meta")


def _bomb_file(tmp: Path) -> Path:
    return _file(tmp, "bomb.yaml", alias_bomb_yaml())


def _checkpoint_of(recipe: dict) -> Callable[[Path], Path]:
    return lambda tmp: write_checkpoint(tmp / "hostile.safetensors", recipe)


def _value(value: Any) -> Callable[[Path], Any]:
    return lambda _tmp: value


ATTACKS = [
    Attack("alias bomb (9 levels, YAML file)", _bomb_file, _build, ConfigError, "limit nodes="),
    Attack("alias bomb, device=meta", _bomb_file, _meta, ConfigError, "limit nodes="),
    Attack("alias bomb as a Python dict", _alias_bomb_dict, _build, ConfigError, "limit nodes="),
    Attack("${blocks.x} chains (10^9 nodes)", lambda _: interpolation_bomb(), _build, ConfigError, "limit nodes="),
    Attack("${blocks.x} chains, device=meta", lambda _: interpolation_bomb(), _meta, ConfigError, "limit nodes="),
    Attack("a string doubled 40 times", _string_bomb, _build, ConfigError, "limit recipe_bytes="),
    Attack("Repeat times 1e9", _value(REPEAT_BILLION), _build, ConfigError, "limit modules="),
    Attack("Repeat times 1e9, device=meta", _value(REPEAT_BILLION), _meta, ConfigError, "limit modules="),
    Attack("nested Repeats 1000^4, device=meta", _nested_repeats, _meta, ConfigError, "limit modules="),
    Attack("names '{i:>100000000000}'", _value(WIDE_NAMES), _build, ConfigError, "names"),
    Attack("templates using templates 10^9 times", _template_bomb, _meta, ConfigError, "limit modules="),
    Attack("checkpoint of Repeat 1e9: load", _checkpoint_of(REPEAT_BILLION), _load, CheckpointError, "limit modules="),
    Attack("checkpoint of Repeat 1e9: inspect", _checkpoint_of(REPEAT_BILLION), _inspect, None),
    Attack("checkpoint of Repeat 1e9: rebuild", _checkpoint_of(REPEAT_BILLION), _rebuild, CheckpointError, "modules="),
    Attack("checkpoint with input_shape [1, 5e8]: inspect", _checkpoint_of(WIDE_INPUT), _inspect, None),
    Attack("checkpoint, input_shape [1, 5e8]: summary", _checkpoint_of(WIDE_INPUT), _summary_of_loaded, None),
    Attack("60 MB header of {}", _empty_objects_header, _load, CheckpointError, "limit header_bytes="),
    Attack("header JSON nested 10^6 deep", _deep_header, _load, CheckpointError, "nests too deeply"),
    Attack("3,000,000-line recipe", _three_million_lines, _build, ConfigError, "limit recipe_bytes="),
    Attack("${ in 0.5 MB of recipe", _half_a_megabyte, _build, None),
    Attack("recipe path is a FIFO", _fifo("pipe.yaml"), _build, ConfigError, "not a regular file"),
    Attack("checkpoint path is a FIFO", _fifo("pipe.safetensors"), _load, CheckpointError, "not a regular file"),
    Attack("recipe path is /dev/zero", _value("/dev/zero"), _build, ConfigError, "not a regular file"),
    Attack("FixedHiddenMLP with an inf bias: inspect", _looping_checkpoint, _inspect, None),
]  # fmt: skip


# --- the costliest inputs each default still lets through: what a limit's default costs ------------


def _repeat_at_limit(_tmp: Path) -> dict:
    return {"type": "Repeat", "times": 49_999, "body": {"type": "Identity"}}


def _nodes_at_limit(_tmp: Path) -> dict:
    """A list of 240,000 numbers pasted twice by interpolation: about 480,000 values."""
    return {"model": {"type": "Identity"}, "blocks": {"a": list(range(240_000)), "b": "${blocks.a}"}}


def _recipe_file_at_limit(tmp: Path) -> Path:
    rows = "\n".join(f"    k{i}: {i}" for i in range(55_000))
    path = _file(tmp, "big.yaml", f"model: {{type: Identity}}\nvars:\n  pad:\n{rows}\n")
    assert path.stat().st_size < 1 << 20
    return path


def _header_at_limit(tmp: Path) -> Path:
    body = b"{" + b",".join(b'"%d":{}' % i for i in range(690_000)) + b"}"
    assert len(body) < 8 << 20
    return raw_header_file(tmp / "braces.safetensors", body)


def _input_at_limit(_tmp: Path) -> dict:
    return {"model": {"type": "Identity"}, "input_shape": [1, 1 << 25]}


def _summary(recipe: dict) -> str:
    from composer import summary  # noqa: PLC0415

    return summary(_build(recipe))


def _metadata_at_limit(tmp: Path) -> Path:
    """A ``.metadata`` just under 1 MiB of one-byte opcodes: a million empty lists, each checked."""
    return _directory_with(lambda folder: _rewrite_metadata(folder, b"\x80\x04(" + b"]" * 1_048_000 + b"l."))(tmp)


AT_THE_LIMITS = [
    Attack("Repeat of 49,999 Identity, device=meta (modules)", _repeat_at_limit, _meta, None),
    Attack("480,000 values after a paste (nodes)", _nodes_at_limit, _meta, None),
    Attack("a recipe file of 1 MB (recipe_bytes)", _recipe_file_at_limit, _build, None),
    Attack("a header of 8 MB of {} (header_bytes)", _header_at_limit, _load, CheckpointError, "not a composer"),
    Attack("summary with an input of 2**25 elements (tensor_elements)", _input_at_limit, _summary, None),
    Attack(".metadata of 1 MB of empty lists (metadata_bytes)", _metadata_at_limit, _load, CheckpointError, "not DCP"),
]  # fmt: skip


# --- checkpoint directories and large files (issue 23): each measured in a fresh process --------

SMALL = {"model": {"type": "Linear", "in_features": 2, "out_features": 2}}


def write_directory(folder: Path, recipe: dict = SMALL) -> Path:
    """A well-formed checkpoint directory (valid checksums) of ``recipe``, saved by one process
    with DCP as composer saves a sharded model."""
    import warnings  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    import torch.distributed.checkpoint as dcp  # noqa: PLC0415

    from composer.checkpoint.dcp import FORMAT, FORMAT_VERSION, _crc_info  # noqa: PLC0415

    state = {k: v.detach() for k, v in _build(recipe).state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    files = {p.name: zlib.crc32(p.read_bytes()) for p in folder.iterdir()}
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "aliases": {}, "files": files, "recipe": recipe}
    (folder / "composer.json").write_text(json.dumps({**info, "crc32": _crc_info(info)}))
    return folder


def _directory_with(change: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = write_directory(tmp / "ckpt")
        change(folder)
        return folder

    return make


def _replace_by_fifo(name: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)

    return change


def _shard_fifo(folder: Path) -> None:
    _replace_by_fifo(next(p.name for p in folder.iterdir() if p.suffix == ".distcp"))(folder)


def _info_links_to_dev_zero(folder: Path) -> None:
    (folder / "composer.json").unlink()
    (folder / "composer.json").symlink_to("/dev/zero")


def _shard_links_out(folder: Path) -> None:
    shard = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    outside = folder.parent / "elsewhere.distcp"
    shard.rename(outside)
    shard.symlink_to(outside)


def _large_info(folder: Path) -> None:
    """composer.json of 60 MB: a recipe padded with one long list."""
    info = json.loads((folder / "composer.json").read_text())
    info["padding"] = [{}] * 20_000_000
    (folder / "composer.json").write_text(json.dumps(info))


def _rewrite_metadata(folder: Path, data: bytes) -> None:
    """``.metadata`` replaced by ``data``, its checksum in composer.json updated to match."""
    import zlib  # noqa: PLC0415

    from composer.checkpoint.dcp import _crc_info  # noqa: PLC0415

    (folder / ".metadata").write_bytes(data)
    info = json.loads((folder / "composer.json").read_text())
    info.pop("crc32")
    info["files"][".metadata"] = zlib.crc32(data)
    (folder / "composer.json").write_text(json.dumps({**info, "crc32": _crc_info(info)}))


def _large_metadata(folder: Path) -> None:
    """60 MB of ``.metadata``: a list of 20 million one-tuples (1.3 GB once unpickled)."""
    _rewrite_metadata(folder, b"\x80\x04(" + b"K\x01\x85" * 20_000_000 + b"l.")


def _deep_metadata(folder: Path) -> None:
    """A 0.9 MB pickle (within ``metadata_bytes``): a dict keyed by a tuple nested 900,000 deep
    (``TUPLE1`` repeated), which Python hashes recursively in C (SIGSEGV) while it unpickles."""
    _rewrite_metadata(folder, b"\x80\x02})" + b"\x85" * 900_000 + b"K\x01s.")


def sparse_checkpoint(path: Path, features: int = 16384) -> Path:
    """A valid checkpoint of a ``Linear(features, features)`` whose 1 GiB of weights is a hole
    in a sparse file: its checksum is computed over zeros, nothing is written but the header."""
    import xxhash  # noqa: PLC0415

    from composer.checkpoint.file import FORMAT, FORMAT_VERSION  # noqa: PLC0415

    recipe = {"model": {"type": "Linear", "in_features": features, "out_features": features}}
    sizes = {"bias": [features], "weight": [features, features]}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "aliases": "{}", "init_schemes": "{}"}
    metadata |= {"recipe": json.dumps(recipe), "allow_targets": "[]"}
    digest = xxhash.xxh3_64(json.dumps(metadata, sort_keys=True).encode())
    header: dict[str, Any] = {"__metadata__": {**metadata, "xxh3_64": ""}}
    offset, zeros = 0, bytes(16 << 20)
    for key in sorted(sizes):
        nbytes = 4 * (features if key == "bias" else features * features)
        header[key] = {"dtype": "F32", "shape": sizes[key], "data_offsets": [offset, offset + nbytes]}
        digest.update(key.encode())
        for at in range(0, nbytes, len(zeros)):
            digest.update(zeros[: min(len(zeros), nbytes - at)])
        offset += nbytes
    header["__metadata__"]["xxh3_64"] = digest.hexdigest()
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return path


def _sparse_directory(tmp: Path) -> Path:
    """A checkpoint directory whose shard file also holds a 1 GiB hole (its checksum recomputed)."""
    import zlib  # noqa: PLC0415

    from composer.checkpoint.dcp import _crc_info  # noqa: PLC0415

    folder = write_directory(tmp / "ckpt")
    shard = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    crc, zeros = zlib.crc32(shard.read_bytes()), bytes(16 << 20)
    hole = (1 << 30) - shard.stat().st_size
    for at in range(0, hole, len(zeros)):  # the hole reads as zeros
        crc = zlib.crc32(zeros[: min(len(zeros), hole - at)], crc)
    with open(shard, "r+b") as f:
        f.truncate(1 << 30)
    info = json.loads((folder / "composer.json").read_text())
    info.pop("crc32")
    info["files"][shard.name] = crc
    (folder / "composer.json").write_text(json.dumps({**info, "crc32": _crc_info(info)}))
    return folder


FILE_ATTACKS = [
    Attack(".metadata is a FIFO: load", _directory_with(_replace_by_fifo(".metadata")), _load, CheckpointError,
           "not a regular file"),
    Attack("composer.json is a FIFO: load", _directory_with(_replace_by_fifo("composer.json")), _load,
           CheckpointError, "not a regular file"),
    Attack("a listed shard is a FIFO: load", _directory_with(_shard_fifo), _load, CheckpointError,
           "not a regular file"),
    Attack("a listed shard is a FIFO: inspect", _directory_with(_shard_fifo), _inspect, CheckpointError,
           "not a regular file"),
    Attack("composer.json links to /dev/zero: load", _directory_with(_info_links_to_dev_zero), _load,
           CheckpointError, "symbolic link"),
    Attack("a shard links out of the directory: load", _directory_with(_shard_links_out), _load, CheckpointError,
           "symbolic link"),
    Attack("composer.json of 60 MB: load", _directory_with(_large_info), _load, CheckpointError,
           "limit header_bytes="),
    Attack(".metadata of 60 MB: load", _directory_with(_large_metadata), _load, CheckpointError,
           "limit metadata_bytes="),
    Attack(".metadata nested 900,000 deep: load", _directory_with(_deep_metadata), _load, CheckpointError,
           "nests more than 100"),
    Attack("sparse 1 GiB checkpoint: inspect", lambda tmp: sparse_checkpoint(tmp / "big.safetensors"), _inspect,
           None),
    Attack("directory with a 1 GiB shard: inspect", _sparse_directory, _inspect, None),
]  # fmt: skip


# --- work past the input's size (issue 23): constructors' layer counts, template copies, error
# hints, activations -------------------------------------------------------------------------------

ENCODER_LAYERS = {
    "model": {
        "type": "TransformerEncoder",
        "encoder_layer": {"type": "TransformerEncoderLayer", "d_model": 4, "nhead": 1, "dim_feedforward": 4},
        "num_layers": 10_000_000,
    }
}
RNN_LAYERS = {"model": {"type": "RNN", "input_size": 4, "hidden_size": 4, "num_layers": 100_000_000}}
LSTM_LAYERS = {"model": {"type": "LSTM", "input_size": 4, "hidden_size": 4, "num_layers": 100_000_000}}
TRANSFORMER_LAYERS = {
    "model": {"type": "Transformer", "d_model": 4, "nhead": 1, "dim_feedforward": 4, "num_decoder_layers": 10_000_000}
}


def _doubling_templates(_tmp: Path) -> dict:
    """40 templates each passing ``[$x, $x]`` to the next: 2**40 values from 40 lines."""
    blocks: dict[str, Any] = {"t0": {"args": ["x"], "body": {"type": "Identity", "unused": "$x"}}}
    for i in range(1, 41):
        blocks[f"t{i}"] = {"args": ["x"], "body": {"use": f"t{i - 1}", "x": ["$x", "$x"]}}
    return {"model": {"use": "t40", "x": 0}, "blocks": blocks}


def _pasted_argument(_tmp: Path) -> dict:
    """A 100,000-value argument pasted into 4,000 copies: 4 * 10^8 values copied."""
    body = {"type": "Identity", "unused": "$x"}
    blocks = {"t": {"args": ["x"], "body": {"type": "Sequential", "layers": [body] * 4000}}}
    return {"model": {"use": "t", "x": list(range(100_000))}, "blocks": blocks}


def _repeated_kwarg(_tmp: Path) -> dict:
    """A Repeat of 2,000 copies of a module whose kwarg holds 200,000 values: each copy walks them."""
    body = {"type": "Identity", "unused": list(range(200_000))}
    return {"model": {"type": "Repeat", "times": 2000, "body": body}}


def _bad_inputs_graph(_tmp: Path) -> dict:
    """A Graph whose 16,000 entries each read an input that does not exist (0.5 MB of recipe)."""
    nodes = {f"n{i}": {"op": "add", "in": [f"m{i}", "x"]} for i in range(16_000)}
    return {"model": {"type": "Graph", "inputs": ["x"], "nodes": nodes}}


def _bad_calls_graph(_tmp: Path) -> dict:
    """5,000 ``call:`` entries naming modules that do not exist."""
    nodes: dict[str, Any] = {f"m{i}": {"type": "Identity", "in": "x"} for i in range(5000)}
    nodes.update({f"c{i}": {"call": f"z{i}", "in": "x"} for i in range(5000)})
    return {"model": {"type": "Graph", "inputs": ["x"], "nodes": nodes}}


def _doubling_graph(doublings: int) -> dict:
    nodes: dict[str, Any] = {}
    last = "x"
    for i in range(doublings):
        nodes[f"d{i}"] = {"op": "cat", "in": [last, last], "dim": 1}
        last = f"d{i}"
    return {"type": "Graph", "inputs": ["x"], "nodes": nodes}


CAT_DOUBLINGS = {"model": _doubling_graph(29), "input_shape": [1, 1]}  # 2**29 floats: 2 GB
OUTER_PRODUCT = {
    "model": {
        "type": "Graph",
        "inputs": ["x", "y"],
        "nodes": {"p": {"op": "matmul", "in": ["x", "y"]}},
    },
    "inputs": [{"shape": [16384, 1]}, {"shape": [1, 16384]}],
}  # 2**28 floats: 1 GB from two inputs of 16,384
MANY_INPUTS = {
    "model": {
        "type": "Graph",
        "inputs": [f"x{i}" for i in range(20)],
        "nodes": {"o": {"op": "add", "in": ["x0", "x1"]}},
    },
    "inputs": [{"shape": [1, 1 << 25]} for _ in range(20)],
}  # each input at the element budget: 2.5 GB in all


def _summary_refusing(limit: str) -> Callable[[dict], str]:
    """The summary of a model built from ``recipe``, which must say the forward was refused by ``limit``."""

    def run(recipe: dict) -> str:
        from composer import summary  # noqa: PLC0415

        text = summary(_build(recipe))
        if f"limit {limit}=" not in text:
            raise AssertionError(f"the summary does not say the forward was refused by {limit}:\n{text}")
        return text

    return run


def _wrong_in_features(_tmp: Path) -> dict:
    return {
        "model": {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 8, "out_features": 4}]},
        "input_shape": [2, 5],
    }


_REFUSED_MEMORY = _summary_refusing("activation_bytes")

ATTACKS += [
    Attack("TransformerEncoder num_layers 1e7", _value(ENCODER_LAYERS), _build, ConfigError, "model.num_layers"),
    Attack("TransformerEncoder num_layers 1e7, meta", _value(ENCODER_LAYERS), _meta, ConfigError, "limit modules="),
    Attack("RNN num_layers 1e8, device=meta", _value(RNN_LAYERS), _meta, ConfigError, "model.num_layers"),
    Attack("LSTM num_layers 1e8", _value(LSTM_LAYERS), _build, ConfigError, "limit modules="),
    Attack("Transformer num_decoder_layers 1e7", _value(TRANSFORMER_LAYERS), _meta, ConfigError, "num_decoder_layers"),
    Attack("checkpoint of RNN num_layers 1e8: load", _checkpoint_of(RNN_LAYERS), _load, CheckpointError, "modules="),
    Attack("templates doubling [$x, $x] 40 times", _doubling_templates, _meta, ConfigError, "limit nodes="),
    Attack("a 100,000-value argument pasted 4,000 times", _pasted_argument, _meta, ConfigError, "limit nodes="),
    Attack("Repeat x2000 of a 200,000-value kwarg", _repeated_kwarg, _meta, ConfigError, "limit nodes="),
    Attack("Graph of 16,000 unknown inputs", _bad_inputs_graph, _meta, ConfigError, "more problem"),
    Attack("Graph of 5,000 unknown calls", _bad_calls_graph, _meta, ConfigError, "more problem"),
    Attack("cat doublings of a [1, 1] input: summary", _value(CAT_DOUBLINGS), _REFUSED_MEMORY, None),
    Attack("an outer product by matmul: summary", _value(OUTER_PRODUCT), _REFUSED_MEMORY, None),
    Attack("20 inputs at the element budget: summary", _value(MANY_INPUTS), _summary_refusing("tensor_elements"), None),
    Attack("Linear of the wrong in_features: build", _wrong_in_features, _build, ConfigError, "in_features"),
]  # fmt: skip


# --- the rest of issue 23's findings, as data (the fixes are in the budgets and the builder) ----------


def _graph(**keys: Any) -> dict:
    return {"model": {"type": "Graph", "inputs": ["x"], "nodes": {"a": {"type": "ReLU"}}, **keys}}


def _unary_minus(_tmp: Path) -> dict:
    """A template expression of 5,000 nested unary minuses: Python's parser recurses on each."""
    body = {"type": "Linear", "in_features": "$(" + "-" * 5000 + "c)", "out_features": 2}
    return {"blocks": {"t": {"args": ["c"], "body": body}}, "model": {"use": "t", "c": 2}}


def _nested_400(tmp: Path) -> Path:
    """A checkpoint whose stored recipe nests 400 lists deep (valid checksum)."""
    value: Any = 1
    for _ in range(400):
        value = [value]
    return write_checkpoint(tmp / "deep.safetensors", {"model": {"type": "Identity", "unused": value}})


WIDE_NAME_DIGITS = {"model": {**WIDE_NAMES, "names": "{i:>" + "9" * 5000 + "}"}}
LINEAR = {"type": "Linear", "in_features": 2, "out_features": 2}

ATTACKS += [
    Attack("Graph output [[a]]", _value(_graph(output=[["a"]])), _build, ConfigError, "model.output"),
    Attack("Graph output {a: 1}", _value(_graph(output={"a": 1})), _build, ConfigError, "model.output"),
    Attack("Graph params [1, 2]", _value(_graph(params=[1, 2])), _build, ConfigError, "model.params"),
    Attack("Graph param shape [1e5, 1e5, 1e5]", _value(_graph(params={"w": {"shape": [10**5] * 3}})), _build,
           ConfigError, "model"),
    Attack("Graph param shape [2**62, 4]", _value(_graph(params={"w": {"shape": [2**62, 4]}})), _build,
           ConfigError, "model.params.w.shape"),
    Attack("dtype int64", _value({"model": LINEAR, "dtype": "int64"}), _build, ConfigError, "dtype"),
    Attack("dtype bool", _value({"model": LINEAR, "dtype": "bool"}), _build, ConfigError, "dtype"),
    Attack("5,000 nested unary minus", _unary_minus, _build, ConfigError, "blocks.t.body.in_features"),
    Attack("Repeat names of a 5,000-digit width", _value(WIDE_NAME_DIGITS), _build, ConfigError, "model.names"),
    Attack("checkpoint recipe nested 400 deep: inspect", _nested_400, _inspect, CheckpointError, "recipe"),
    Attack("checkpoint recipe nested 400 deep: load", _nested_400, _load, CheckpointError, "recipe"),
]  # fmt: skip


def _list(folder: Path) -> int:
    """``python -m composer list templates --config-dir folder`` (and ``list recipes``), in process."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from composer.app.main import list_command  # noqa: PLC0415

    for kind in ("templates", "recipes"):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = list_command(["list", kind, "--config-dir", str(folder)])
        if status:
            raise ConfigError(err.getvalue().strip())
        if "\x1b" in out.getvalue():
            raise AssertionError("an escape byte reached the terminal")
    return status


def _schema(folder: Path) -> int:
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from composer.app.main import schema_command  # noqa: PLC0415

    with contextlib.redirect_stdout(io.StringIO()):
        return schema_command(["schema", "--config-dir", str(folder)])


def _conf_dir(change: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A ``--config-dir`` whose ``model/`` holds what ``change`` puts there."""

    def make(tmp: Path) -> Path:
        (tmp / "conf" / "model").mkdir(parents=True)
        change(tmp / "conf" / "model")
        return tmp / "conf"

    return make


def _escapes(model: Path) -> None:
    text = (
        'blocks:\n  "t\\e[2J":\n    args: ["c\\e]0;x\\a"]\n'
        "    body: {type: Linear, in_features: $c, out_features: 2}\nmodel: {type: ReLU}\n"
    )
    (model / "esc.yaml").write_text(text)


def _fifo_model(model: Path) -> None:
    os.mkfifo(model / "pipe.yaml")


def _linked_model(model: Path) -> None:
    (model / "passwd.yaml").symlink_to("/etc/passwd")


def _alias_bomb_args(model: Path) -> None:
    lines = "\n".join(f"  {line}" for line in ALIAS_BOMB.splitlines())
    text = f"vars:\n{lines}\nblocks:\n  t:\n    args: *i\n    body: {{type: ReLU}}\nmodel: {{type: ReLU}}\n"
    (model / "bomb.yaml").write_text(text)


def _twenty_mb_model(model: Path) -> None:
    (model / "big.yaml").write_text("model: {type: ReLU}\nvars:\n  x: [" + "1, " * 7_000_000 + "1]\n")


# ``list`` passes over a model file it cannot read within the budgets (listed by name only, or
# not at all): each of these ends at once, with no error and no escape byte in its output.
FILE_ATTACKS += [
    Attack("list: escape bytes in a template's names", _conf_dir(_escapes), _list, None),
    Attack("list: a FIFO as a model file", _conf_dir(_fifo_model), _list, None),
    Attack("list: a model file linked out of the folder", _conf_dir(_linked_model), _list, None),
    Attack("list: an alias bomb as a template's args", _conf_dir(_alias_bomb_args), _list, None),
    Attack("list: a 20 MB model file", _conf_dir(_twenty_mb_model), _list, None),
    Attack("schema: a hostile --config-dir", _conf_dir(_fifo_model), _schema, None),
]  # fmt: skip


def _sharded_model_and_php_folder(tmp: Path) -> tuple[Any, Path]:
    """A one-rank process group (this process is the bench's own), a model sharded over it, and
    a PHP project's folder, which holds a ``composer.json`` of its own."""
    import torch.distributed as dist  # noqa: PLC0415
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415

    dist.init_process_group("gloo", init_method=f"file://{tmp / 'store'}", rank=0, world_size=1)
    model = _build(SMALL, mesh=init_device_mesh("cpu", (1,)))
    php = tmp / "php"
    php.mkdir()
    (php / "composer.json").write_text('{"name": "acme/site", "require": {"php": ">=8.1"}}')
    (php / "index.php").write_text("<?php echo 1;")
    return model, php


def _save_over(argument: tuple[Any, Path]) -> None:
    from composer import save_checkpoint  # noqa: PLC0415

    model, path = argument
    save_checkpoint(model, path)


# In a fresh process only (it starts a process group): ``python -m bench.attacks --files``.
FILE_ATTACKS += [
    Attack("sharded save over a folder with its own composer.json", _sharded_model_and_php_folder, _save_over,
           CheckpointError, "not a composer checkpoint directory"),
]  # fmt: skip
