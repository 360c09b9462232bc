"""The open op set (CONTRACT 7.2): torch's own functions under their names, with torch's argument
names, built into real graphs and compared with torch called by hand."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from composer import ConfigError, build_from_config, limits
from composer.describe.listing import list_text
from composer.modules import torch_ops
from composer.modules.graph import Graph, GraphSpec, OpEntry
from composer.modules.ops import lookup_op, op_callable, op_problems

torch.manual_seed(0)
X = torch.randn(2, 3, 4)
IDX = torch.tensor([[[0], [2], [1]], [[3], [3], [0]]])
MASK = X > 0


def run(node: dict, *tensors: torch.Tensor, train: bool = False) -> torch.Tensor:
    """``node`` as the one entry of a built Graph over ``tensors`` (inputs a, b, c)."""
    names = ["a", "b", "c"][: len(tensors)]
    recipe = {"type": "Graph", "inputs": names, "nodes": {"out": {"in": names, **node}}}
    if not tensors:
        recipe = {"type": "Graph", "nodes": {"out": node}}
    graph = build_from_config(recipe).train(train)
    return graph(*tensors) if tensors else graph(torch.zeros(1))


CASES = [
    ({"op": "cos"}, (X,), torch.cos(X)),
    ({"op": "sin"}, (X,), torch.sin(X)),
    ({"op": "rsqrt"}, (X.abs(),), torch.rsqrt(X.abs())),
    ({"op": "reciprocal"}, (X,), torch.reciprocal(X)),
    ({"op": "pow", "exponent": 2}, (X,), X**2),
    ({"op": "pow", "self": 10000.0}, (X,), torch.pow(10000.0, X)),  # in: fills exponent
    ({"op": "sum", "dim": [1, 2], "keepdim": True}, (X,), X.sum((1, 2), keepdim=True)),
    ({"op": "amax", "dim": -1}, (X,), X.amax(-1)),
    ({"op": "cumsum", "dim": 1}, (X,), X.cumsum(1)),
    ({"op": "argmax", "dim": -1}, (X,), X.argmax(-1)),
    ({"op": "gather", "dim": 2}, (X, IDX.clamp(max=3)), X.gather(2, IDX.clamp(max=3))),
    ({"op": "take_along_dim", "dim": 2}, (X, IDX), torch.take_along_dim(X, IDX, 2)),
    ({"op": "index_select", "dim": 1}, (X, torch.tensor([2, 0])), X.index_select(1, torch.tensor([2, 0]))),
    ({"op": "scatter_add", "dim": 2}, (X, IDX, X[..., :1]), X.scatter_add(2, IDX, X[..., :1])),
    ({"op": "where"}, (MASK, X, -X), torch.where(MASK, X, -X)),
    ({"op": "masked_fill", "value": -1e9}, (X, MASK), X.masked_fill(MASK, -1e9)),
    ({"op": "tril", "diagonal": -1}, (X,), X.tril(-1)),
    ({"op": "triu"}, (X,), X.triu()),
    ({"op": "outer"}, (X[0, 0], X[1, 1]), torch.outer(X[0, 0], X[1, 1])),
    ({"op": "einsum", "equation": "bij,bkj->bik"}, (X, X), torch.einsum("bij,bkj->bik", X, X)),
    ({"op": "bmm"}, (X, X.transpose(1, 2)), torch.bmm(X, X.transpose(1, 2))),
    ({"op": "repeat_interleave", "repeats": 2, "dim": 1}, (X,), X.repeat_interleave(2, dim=1)),
    ({"op": "expand", "size": [5, 2, 3, 4]}, (X,), X.expand(5, 2, 3, 4)),
    ({"op": "repeat", "repeats": [1, 2, 1]}, (X,), X.repeat(1, 2, 1)),
    ({"op": "roll", "shifts": 1, "dims": 2}, (X,), X.roll(1, 2)),
    ({"op": "pad", "pad": [1, 2]}, (X,), F.pad(X, [1, 2])),
    ({"op": "one_hot", "num_classes": 5}, (IDX,), F.one_hot(IDX, 5)),
    ({"op": "interpolate", "scale_factor": 2.0}, (X,), F.interpolate(X, scale_factor=2.0)),
    ({"op": "log_softmax", "dim": -1}, (X,), X.log_softmax(-1)),
    ({"op": "layer_norm", "normalized_shape": [4]}, (X, X[0, 0]), F.layer_norm(X, [4], X[0, 0])),  # in: weight
    ({"op": "rms_norm", "normalized_shape": [4], "eps": 1e-6}, (X,), F.rms_norm(X, [4], eps=1e-6)),
    ({"op": "ones_like"}, (X,), torch.ones_like(X)),
    ({"op": "zeros_like", "dtype": "int64"}, (X,), torch.zeros_like(X, dtype=torch.int64)),
    ({"op": "full_like", "fill_value": 3.5}, (X,), torch.full_like(X, 3.5)),
    ({"op": "to", "dtype": "float64"}, (X,), X.double()),
    ({"op": "unsqueeze", "dim": 1}, (X,), X.unsqueeze(1)),
    ({"op": "view", "size": [6, 4]}, (X,), X.view(6, 4)),
    ({"op": "contiguous"}, (X.transpose(1, 2),), X.transpose(1, 2).contiguous()),
    ({"op": "silu"}, (X,), F.silu(X)),
    ({"op": "sort", "dim": -1, "descending": True}, (X,), X.sort(-1, descending=True)),
    ({"op": "topk", "k": 2}, (X,), X.topk(2)),
    ({"op": "block_diag"}, (X[0], X[1]), torch.block_diag(X[0], X[1])),
]


@pytest.mark.parametrize(("node", "tensors", "expected"), CASES, ids=[f"{c[0]['op']}-{i}" for i, c in enumerate(CASES)])
def test_a_derived_op_is_torchs_function(node, tensors, expected):
    result = run(node, *tensors)
    if isinstance(expected, tuple):  # sort, topk: torch's named tuple
        assert all(torch.equal(r, e) for r, e in zip(result, expected, strict=True))
    else:
        assert result.dtype == expected.dtype and torch.equal(result, expected)


def test_a_creation_op_without_inputs():
    """``arange`` takes no tensor: called with its keys alone (a buffer's value, 7.4)."""
    keys = {"start": 0, "end": 8, "step": 2, "dtype": torch.int64}
    arange = lookup_op("arange", "p")
    assert op_problems("arange", arange, keys, 0, "p") == []
    assert op_callable(arange, keys, 0) is torch.arange
    assert torch.equal(op_callable(arange, keys, 0)(**keys), torch.arange(0, 8, 2))


def test_attention_with_a_mask_and_grouped_heads():
    q, kv = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    node = {"op": "scaled_dot_product_attention", "enable_gqa": True}
    expected = F.scaled_dot_product_attention(q, kv, kv, attn_mask=causal, enable_gqa=True)
    graph = build_from_config(
        {
            "type": "Graph",
            "inputs": ["q", "kv", "causal"],
            "nodes": {"out": {**node, "in": ["q", "kv", "kv", "causal"]}},  # attn_mask: the 4th tensor
        }
    )
    assert torch.equal(graph(q, kv, causal), expected)


def test_a_derived_op_is_torchs_function_itself_in_the_forward():
    """No wrapper where the inputs are the leading arguments: the forward calls torch.cos."""
    graph = build_from_config({"type": "Graph", "nodes": {"c": {"op": "cos"}, "t": {"op": "topk", "k": 2}}})
    assert [w.fn for w in graph._wiring.wires] == [torch.cos, torch.topk]
    assert "_f0(x)" in graph.code and "_f1(v0, **_k1)" in graph.code


def test_dropout_follows_train_and_eval():
    x = torch.ones(1000)
    assert torch.equal(run({"op": "dropout", "p": 0.5}, x, train=False), x)
    assert not torch.equal(run({"op": "dropout", "p": 0.5}, x, train=True), x)
    with pytest.raises(ConfigError, match=r"out.training: op 'dropout' takes no 'training': dropout follows"):
        run({"op": "dropout", "training": True}, x)


def test_derived_ops_in_a_sequential():
    net = build_from_config({"type": "Sequential", "layers": [{"op": "cos"}, {"op": "to", "dtype": "float64"}]})
    assert repr(net[0]) == "Op(cos)" and net[0].fn is torch.cos and repr(net[1]) == "Op(to, dtype=torch.float64)"
    assert torch.equal(net(X), X.cos().double())


def test_only_dropout_takes_training_from_the_module():
    """batch_norm's ``training`` stays a key with torch's default (it would update the buffers
    given to it); dropout's is the module's."""
    norm = lookup_op("batch_norm", "p")
    assert op_problems("batch_norm", norm, {"training": True}, 3, "p") == []
    assert op_callable(norm, {}, 3) is F.batch_norm
    assert getattr(op_callable(lookup_op("dropout", "p"), {}, 1), "takes_training", False)


def test_keyword_inputs_by_torchs_names():
    """``in:`` as a mapping: each tensor named as torch names it, checked and passed by keyword
    (a Tensor method's ``self`` first)."""
    scores, causal = torch.randn(2, 3, 3), torch.ones(3, 3, dtype=torch.bool).triu(1)
    fill = lookup_op("masked_fill", "p")
    keys = {"value": float("-inf")}
    assert op_problems("masked_fill", fill, keys, ["input", "mask"], "p") == []
    call = op_callable(fill, keys, ["input", "mask"])
    assert call is torch.masked_fill
    assert torch.equal(call(input=scores, mask=causal, **keys), scores.masked_fill(causal, float("-inf")))
    expand = lookup_op("expand", "p")
    call = op_callable(expand, {"size": [4, 2, 3, 3]}, ["self"])
    assert torch.equal(call(self=scores, size=[4, 2, 3, 3]), scores.expand(4, 2, 3, 3))
    problems = op_problems("masked_fill", fill, keys, ["input", "maks"], "p")
    assert problems == [
        ("p", "op 'masked_fill': no argument 'maks'; missing 'mask' (takes masked_fill(input, mask, value))")
    ]
    twice = op_problems("masked_fill", fill, {"mask": causal, **keys}, ["input", "mask"], "p")
    assert "'mask' both as an input and as an argument" in twice[0][1]


def test_an_op_entry_of_a_derived_op_by_hand():
    """The op side of a Graph without the builder: a bound ``pow`` whose input fills ``exponent``."""
    power = lookup_op("pow", "p")
    fn = op_callable(power, {"self": 2.0}, 1)
    graph = Graph(GraphSpec([OpEntry("p", fn, {"self": 2.0}, label="pow")]))
    assert torch.equal(graph(X), torch.pow(2.0, X))
    buffer = io.BytesIO()
    torch.save(graph, buffer)  # the placed call pickles by op name
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(X), torch.pow(2.0, X))


def test_list_ops_shows_torchs_argument_names():
    topk = list_text("ops", "topk")
    assert "topk(input, k, dim=-1, largest=True, sorted=True)" in topk and "torch.topk" in topk
    sdpa = list_text("ops", "scaled_dot_product_attention")
    assert "attn_mask" in sdpa and "enable_gqa" in sdpa and "torch.nn.functional" in sdpa
    assert "to(self, dtype, non_blocking=False, copy=False, *, memory_format=None)" in list_text("ops", "to")
    assert "pow(self, exponent)" in list_text("ops", "pow")
    assert "einsum(equation, *operands)" in list_text("ops", "einsum")
    pad = {line.split()[0]: line.split()[1:] for line in list_text("ops", "pad").splitlines()[4:]}
    assert pad["mode"][0] == "'constant'" and pad["input"][1] == "in"
    every = list_text("ops")
    assert " cumsum " in every and " layer_norm " in every and " rand " not in every and "save" not in every.split()
    with pytest.raises(ConfigError, match="op 'randn' is excluded: randomness outside dropout"):
        list_text("ops", "randn")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("rand", "randomness outside dropout"),
        ("bernoulli", "randomness outside dropout"),
        ("multinomial", "randomness outside dropout"),
        ("manual_seed", "global state"),
        ("set_default_dtype", "global state"),
        ("use_deterministic_algorithms", "global state"),
        ("set_num_threads", "global state"),
        ("save", "files"),
        ("load", "files"),
        ("from_file", "files"),
        ("relu_", "in-place variants change their input; use 'relu'"),
        ("empty", "uninitialized memory"),
        ("new_empty", "uninitialized memory"),
    ],
)
def test_excluded_ops_say_why(name, why):
    with pytest.raises(ConfigError, match=rf"^model.nodes.a.op: op '{name}' is excluded: .*{why}"):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": name}}})


def test_refused_keys_private_names_and_unknown_ops():
    with pytest.raises(ConfigError) as info:
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "cos", "out": 1, "device": "cuda"}}})
    assert [p for p, _ in info.value.problems] == ["model.nodes.a.out", "model.nodes.a.device"]
    assert "out= is not an argument" in str(info.value) and "runs on its inputs' device" in str(info.value)
    with pytest.raises(ConfigError, match=r"takes no 'inplace': ops never work in place"):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "relu", "inplace": True}}})
    with pytest.raises(ConfigError, match=r"unknown op '_foreach_add'.*register one with @composer.register_op"):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "_foreach_add"}}})
    with pytest.raises(ConfigError, match=r"^model.nodes.a.op: unknown op 'cumsun' \(did you mean 'cumsum'"):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "cumsun"}}})
    with pytest.raises(
        ConfigError, match=r"model.nodes.a.dimm: op 'sum' takes no argument 'dimm' \(did you mean 'dim'"
    ):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "sum", "dimm": 1}}})
    with pytest.raises(ConfigError, match=r"^model.nodes.a.in: op 'cos': at most 1 input beside its keys, got 2"):
        build_from_config({"type": "Graph", "inputs": ["x", "y"], "nodes": {"a": {"op": "cos", "in": ["x", "y"]}}})
    with pytest.raises(ConfigError, match=r"model.nodes.a: op 'topk': missing 'k' \(takes topk\(input, k, dim=-1"):
        build_from_config({"type": "Graph", "nodes": {"a": {"op": "topk"}}})


def test_creation_ops_are_bounded_by_the_element_budget():
    arange = lookup_op("arange", "p")
    assert op_problems("arange", arange, {"end": 10}, 0, "p") == []
    [(path, message)] = op_problems("arange", arange, {"start": 0, "end": 10**10}, 0, "p")
    assert (
        path == "p" and "op 'arange': a tensor of 10,000,000,000 elements exceeds the limit tensor_elements" in message
    )
    assert op_problems("ones", lookup_op("ones", "p"), {"size": [1 << 13, 1 << 13]}, 0, "p")  # 2**26 > 2**25
    with limits.using(tensor_elements=1 << 27):
        assert op_problems("ones", lookup_op("ones", "p"), {"size": [1 << 13, 1 << 13]}, 0, "p") == []
    with pytest.raises(ConfigError, match=r"model.nodes.z: op 'new_zeros': a tensor of 1,000,000,000,000 elements"):
        build_from_config({"type": "Graph", "nodes": {"z": {"op": "new_zeros", "size": [10**6, 10**6]}}})
    assert torch_ops.created_elements("linspace", {"start": 0, "end": 1, "steps": 7}) == 7
    assert torch_ops.created_elements("eye", {"n": 3, "m": 5}) == 15


@pytest.mark.slow  # torch.compile's first use imports dynamo: about 8 s here
def test_compiles_without_a_graph_break():
    """cos, topk, gather and einsum in a generated forward, fullgraph=True on aot_eager."""
    graph = build_from_config(
        {
            "type": "Graph",
            "nodes": {
                "c": {"op": "cos"},
                "t": {"op": "topk", "k": 2, "dim": -1},
                "i": {"op": "getitem", "index": 1},
                "g": {"op": "gather", "dim": -1, "in": ["c", "i"]},
                "p": {"op": "pow", "self": 2.0},
                "e": {"op": "einsum", "equation": "bij,bkj->bik", "in": ["p", "p"]},
            },
        }
    )
    x = torch.randn(2, 3, 5)
    compiled = torch.compile(graph, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), graph(x))


@pytest.mark.slow
def test_nothing_is_read_before_a_lookup():
    """``import composer`` does not import torch; importing the ops reads no stub until a name is
    looked up."""
    code = (
        "import sys, composer; assert 'torch' not in sys.modules\n"
        "from composer.modules import ops, torch_ops\n"
        "assert torch_ops._stub_index.cache_info().currsize == 0\n"
        "ops.lookup_op('cos', 'p'); print(torch_ops._stub_index.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
