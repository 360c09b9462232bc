"""Unit tests of the graph parts on real modules and tensors: graph.py, ops.py, templates.py."""

from __future__ import annotations

import ast
import copy
import io
import re
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from composer import ConfigError, build_from_config
from composer.modules.graph import RESERVED_NAMES, CallEntry, Graph, GraphSpec, ModuleEntry, OpEntry, graph_problems
from composer.modules.ops import OPS, Op, check_op, lookup_op, make_op, op_problems, register_op
from composer.recipe.read import parse_yaml
from composer.recipe.templates import REQUIRED, expand, is_template, parse_template, parse_templates, substitute_index
from tests import references as R
from tests.cli import command, run_together

op = OPS._entries.__getitem__


# --- graphs equal to handwritten modules ----------------------------------------------------------


def basic_block_graph(block: R.BasicBlock) -> Graph:
    """torchvision's BasicBlock as a Graph holding the block's own modules."""
    entries = [
        ModuleEntry("conv1", block.conv1), ModuleEntry("bn1", block.bn1), ModuleEntry("relu", block.relu),
        ModuleEntry("conv2", block.conv2), ModuleEntry("bn2", block.bn2),
    ]  # fmt: skip
    shortcut = "x"
    if block.downsample is not None:
        entries.append(ModuleEntry("downsample", block.downsample, ["x"]))
        shortcut = "downsample"
    entries += [OpEntry("sum", op("add"), inputs=["bn2", shortcut]), CallEntry("out", "relu")]
    return Graph(GraphSpec(entries), "model")


def vit_block_graph(block: R.ViTBlock) -> Graph:
    """timm's Block as a Graph of Graphs, wired with the built-in ops."""
    a = block.attn
    attn = Graph(GraphSpec([
        ModuleEntry("qkv", a.qkv),
        OpEntry("split", op("unflatten"), {"dim": -1, "sizes": [3, a.num_heads, a.head_dim]}),
        OpEntry("by_head", op("permute"), {"dims": [2, 0, 3, 1, 4]}),
        OpEntry("q", op("getitem"), {"index": 0}, ["by_head"]),
        OpEntry("k", op("getitem"), {"index": 1}, ["by_head"]),
        OpEntry("v", op("getitem"), {"index": 2}, ["by_head"]),
        OpEntry("mixed", op("attention"), inputs=["q", "k", "v"]),
        OpEntry("merged", op("transpose"), {"dim0": 1, "dim1": 2}),
        OpEntry("flat", op("flatten"), {"start_dim": 2}),
        ModuleEntry("proj", a.proj),
    ]))  # fmt: skip
    mlp = Graph(
        GraphSpec(
            [ModuleEntry("fc1", block.mlp.fc1), ModuleEntry("act", block.mlp.act), ModuleEntry("fc2", block.mlp.fc2)]
        )
    )
    return Graph(GraphSpec([
        ModuleEntry("norm1", block.norm1), ModuleEntry("attn", attn), OpEntry("res1", op("add"), inputs=["x", "attn"]),
        ModuleEntry("norm2", block.norm2), ModuleEntry("mlp", mlp), OpEntry("res2", op("add"), inputs=["res1", "mlp"]),
    ]))  # fmt: skip


@pytest.mark.parametrize("downsample", [False, True])
def test_basic_block_graph_equals_handwritten_bit_for_bit(downsample):
    torch.manual_seed(0)
    block = R.BasicBlock(8, 16 if downsample else 8, stride=2 if downsample else 1)
    reference = copy.deepcopy(block)
    graph = basic_block_graph(block)
    assert list(graph.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 8, 10, 10)
    assert torch.equal(graph(x), reference(x))  # train mode: batch statistics, running stats updated
    assert all(
        torch.equal(a, b) for a, b in zip(graph.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    graph.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(graph(x), reference(x))


def test_transformer_block_graph_equals_handwritten_bit_for_bit():
    torch.manual_seed(0)
    block = R.ViTBlock(32, 4)
    graph = vit_block_graph(block)
    assert list(graph.state_dict()) == list(block.state_dict())
    x = torch.randn(2, 9, 32, requires_grad=True)
    out, ref = graph(x), block(x)
    assert torch.equal(out, ref)
    (g_graph,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(g_graph, g_ref)


def test_forward_is_generated_code_with_no_loop_and_names_only_as_literals():
    graph = basic_block_graph(R.BasicBlock(4, 8, stride=2))
    code = graph.code
    assert code.startswith("def forward(self, x):")  # the input's name: graph(x=...) works
    assert "for " not in code and "while " not in code
    tree = ast.parse(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert all(re.fullmatch(r"self|x|_m|_p|[avp]\d+|_[fk]\d+", n) for n in names), names
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert strings == {"conv1", "bn1", "relu", "conv2", "bn2", "downsample"}
    assert type(graph).__name__ == "Graph" and type(graph) is Graph


def test_inputs_are_keyword_arguments_where_their_names_are_plain_identifiers():
    spec = GraphSpec([OpEntry("s", op("sub"), inputs=["input_ids", "v0"])], inputs=["input_ids", "v0"])
    graph = Graph(spec)
    a, b = torch.randn(3), torch.randn(3)
    assert torch.equal(graph(input_ids=a, a1=b), a - b)  # v0 could be a generated name: a1 instead
    for name in ("class", "self", "_m", "in put"):
        assert not Graph(GraphSpec([OpEntry("n", op("neg"))], inputs=[name])).code.startswith(
            f"def forward(self, {name})"
        )


def test_hostile_names_stay_string_literals():
    hostile = "a'](a0); __import__('os'); _m['b"  # no '.', so a valid module name
    spec = GraphSpec([ModuleEntry(hostile, nn.ReLU()), OpEntry("neg", op("neg"))], inputs=["in put"])
    graph = Graph(spec)
    x = torch.randn(3)
    assert torch.equal(graph(x), -torch.relu(x))
    strings = {
        n.value for n in ast.walk(ast.parse(graph.code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert strings == {hostile}  # the op's label and the entry name appear only in comments
    assert "__import__" not in {n.id for n in ast.walk(ast.parse(graph.code)) if isinstance(n, ast.Name)}


def test_state_dict_keys_follow_entry_order_and_params_come_first():
    spec = GraphSpec(
        [
            ModuleEntry("b", nn.Linear(2, 2)),
            ModuleEntry("a", nn.Linear(2, 2)),
            OpEntry("s", op("add"), inputs=["a", "scale"]),
        ],
        params={"scale": torch.ones(2)},
    )
    assert list(Graph(spec).state_dict()) == ["scale", "b.weight", "b.bias", "a.weight", "a.bias"]


def test_call_entries_share_weights_and_add_no_keys():
    torch.manual_seed(0)
    reference = R.Siamese()
    graph = Graph(GraphSpec(
        [ModuleEntry("encoder", reference.encoder), CallEntry("encoded_b", "encoder", ["b"]),
         OpEntry("diff", op("sub"), inputs=["encoder", "encoded_b"]), OpEntry("distance", op("abs")),
         ModuleEntry("head", reference.head)],
        inputs=["a", "b"],
    ))  # fmt: skip
    assert list(graph.state_dict()) == list(reference.state_dict())
    a, b = torch.randn(4, 32), torch.randn(4, 32)
    assert torch.equal(graph(a, b), reference(a, b))
    graph(a, b).sum().backward()
    grads = {n: p.grad.clone() for n, p in graph.named_parameters()}
    reference.zero_grad()
    reference(a, b).sum().backward()
    assert all(torch.equal(grads[n], p.grad) for n, p in reference.named_parameters())


def test_tuple_outputs_and_params_as_inputs():
    token = nn.Parameter(torch.randn(1, 1, 4))
    graph = Graph(GraphSpec(
        [
            OpEntry("cls", op("expand_batch"), inputs=["token", "x"]),
            OpEntry("tokens", op("cat"), {"dim": 1}, ["cls", "x"]),
        ],
        params={"token": token, "bias": torch.zeros(4)},
        output=["tokens", "cls", "bias"],
    ))  # fmt: skip
    assert graph.token is token  # an nn.Parameter is registered as it is (ties stay one object)
    assert isinstance(graph.bias, nn.Parameter)
    x = torch.randn(3, 5, 4)
    tokens, cls, bias = graph(x)
    assert tokens.shape == (3, 6, 4) and torch.equal(tokens[:, 0], token.expand(3, 1, 4)[:, 0]) and bias is graph.bias
    single = Graph(GraphSpec([OpEntry("n", op("neg"))], output=["n"]))
    assert isinstance(single(x), tuple) and len(single(x)) == 1


def test_module_taking_several_inputs_and_returning_a_tuple():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    graph = Graph(GraphSpec(
        [ModuleEntry("lstm", lstm, ["x", "state"]), OpEntry("h", op("getitem"), {"index": [1, 0, -1]})],
        inputs=["x", "state"],
    ))  # fmt: skip
    x, state = torch.randn(2, 3, 4), (torch.zeros(2, 2, 6), torch.zeros(2, 2, 6))
    assert torch.equal(graph(x, state), lstm(x, state)[1][0][-1])


def test_copy_pickle_to_and_load_state_dict_keep_working():
    torch.manual_seed(0)
    graph = basic_block_graph(R.BasicBlock(4, 4)).eval()
    x = torch.randn(1, 4, 6, 6)
    clone = copy.deepcopy(graph)
    assert clone.forward.__self__ is clone and torch.equal(clone(x), graph(x))
    with torch.no_grad():
        clone.conv1.weight.zero_()
    assert not torch.equal(clone(x), graph(x))  # the copy runs its own weights
    clone.load_state_dict(graph.state_dict())
    assert torch.equal(clone(x), graph(x))
    buffer = io.BytesIO()
    torch.save(graph, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is Graph and torch.equal(loaded(x), graph(x))
    wide = copy.deepcopy(graph).to(torch.float64)
    assert wide(x.double()).dtype == torch.float64


def test_a_forward_hook_and_a_replaced_child_are_seen():
    graph = Graph(GraphSpec([ModuleEntry("fc", nn.Linear(2, 2)), ModuleEntry("act", nn.ReLU())]))
    seen = []
    graph.fc.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    graph.act = nn.Tanh()
    x = torch.randn(3, 2)
    assert torch.equal(graph(x), torch.tanh(graph.fc(x))) and seen


def test_traceback_shows_the_generated_line():
    def explode(x):
        raise RuntimeError("boom")

    graph = Graph(GraphSpec([ModuleEntry("fc", nn.Linear(2, 2)), OpEntry("bad", explode, label="explode")]))
    with pytest.raises(RuntimeError) as info:
        graph(torch.randn(1, 2))
    text = "".join(traceback.format_exception(info.value))
    assert "<composer.Graph.forward" in text and "v1 = _f1(v0)  # op 'explode' -> 'bad'" in text


def test_repr_shows_the_wiring():
    graph = basic_block_graph(R.BasicBlock(4, 8, stride=2))
    text = str(graph)
    assert text.startswith("Graph(\n  x -> conv1 -> bn1 -> relu -> conv2 -> bn2\n  x -> downsample\n")
    assert "(bn2, downsample) -> sum=add -> out=call:relu" in text
    assert "(downsample): Sequential(" in text
    flat = Graph(
        GraphSpec([OpEntry("f", op("flatten"), {"start_dim": 1})], params={"w": torch.zeros(2, 3)}, output=["f", "w"])
    )
    assert str(flat) == "Graph(\n  params: w(2, 3)\n  x -> f=flatten(start_dim=1)\n  output: (f, w)\n)"


@pytest.mark.slow
def test_compiles_with_fullgraph_and_no_graph_breaks():
    import torch._dynamo  # noqa: PLC0415  (seconds: only for the compile test)

    torch.manual_seed(0)
    for graph, x in [
        (basic_block_graph(R.BasicBlock(4, 8, stride=2)).eval(), torch.randn(2, 4, 8, 8)),
        (vit_block_graph(R.ViTBlock(32, 4)).eval(), torch.randn(2, 9, 32)),
    ]:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(graph)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        compiled = torch.compile(graph, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), graph(x))
    torch._dynamo.reset()


@pytest.mark.slow
def test_fsdp2_fully_shard_swaps_parameters_under_the_graph(tmp_path):
    import torch.distributed as dist  # noqa: PLC0415  (only for the FSDP test)
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        graph = Graph(GraphSpec([ModuleEntry("fc", nn.Linear(4, 4)), OpEntry("s", op("add"), inputs=["fc", "bias"])],
                                params={"bias": torch.randn(4)}))  # fmt: skip
        reference = copy.deepcopy(graph)
        mesh = init_device_mesh("cpu", (1,))
        fully_shard(graph.fc, mesh=mesh)
        fully_shard(graph, mesh=mesh)
        assert type(graph._parameters["bias"]).__name__ == "DTensor"
        x = torch.randn(2, 4)
        out = graph(x)
        assert torch.equal(out, reference(x))
        out.sum().backward()
        assert graph._parameters["bias"].grad is not None
    finally:
        dist.destroy_process_group()


# --- graph validation ----------------------------------------------------------------------------


def problems_of(spec: GraphSpec, key_path: str = "model") -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        Graph(spec, key_path)
    assert info.value.problems == graph_problems(spec, key_path) or any(
        "needs its module" in m for _, m in info.value.problems
    )
    return info.value.problems


def test_unknown_input_names_the_closest_on_the_same_line():
    spec = GraphSpec([ModuleEntry("relu", nn.ReLU()), OpEntry("sum", op("add"), inputs=["relu", "rleu"])], output="sum")
    (problem,) = problems_of(spec)
    assert problem == ("model.nodes.sum.in[1]", "unknown input 'rleu' (did you mean 'relu'?); known here: x, relu")
    assert "\n" not in str(ConfigError([problem]))


def test_an_input_defined_later_is_unknown_here():
    spec = GraphSpec([OpEntry("a", op("add"), inputs=["x", "b"]), OpEntry("b", op("neg"))])
    assert ("model.nodes.a.in[1]", "unknown input 'b' is defined later or is this entry; known here: x") in problems_of(
        spec
    )


def test_an_unused_entry_is_an_error_unless_it_is_the_output():
    spec = GraphSpec(
        [ModuleEntry("a", nn.ReLU()), ModuleEntry("b", nn.ReLU(), ["x"]), OpEntry("s", op("neg"), inputs=["b"])]
    )
    assert problems_of(spec) == [("model.nodes.a", "the result of 'a' is used by no entry and is not the output")]
    Graph(GraphSpec(spec.entries, output=["s", "a"]))  # returned: fine


@pytest.mark.parametrize(
    "name", ["forward", "training", "type", "train", "eval", "state_dict", "_modules", "code", "cuda"]
)
def test_names_nn_module_uses_are_refused(name):
    assert name in RESERVED_NAMES
    (problem,) = problems_of(GraphSpec([ModuleEntry(name, nn.ReLU())]))
    assert problem == (
        f"model.nodes.{name}",
        f"entry name {name!r} is an attribute nn.Module uses; choose another name",
    )


def test_clashing_names_bad_calls_and_outputs_are_all_reported_together():
    spec = GraphSpec(
        [
            ModuleEntry("x", nn.ReLU()),  # an input's name
            ModuleEntry("w", nn.ReLU(), ["x"]),  # a param's name
            ModuleEntry("fc", nn.Linear(2, 2), ["x", "x"]),  # Linear takes one input
            OpEntry("s", op("neg"), inputs=["fc"]),
            CallEntry("again", "s", ["fc"]),  # an op, not a module
            CallEntry("later", "head", ["s"]),  # not defined before
            ModuleEntry("head", nn.ReLU(), ["again"]),
            ModuleEntry("a.b", nn.ReLU(), ["head"]),
        ],
        inputs=["x", "forward"],
        params={"w": torch.zeros(1)},
        output=["later", "a.b", "outt"],
    )
    problems = problems_of(spec)
    assert problems == [
        ("model.inputs[1]", "input name 'forward' is an attribute nn.Module uses; choose another name"),
        ("model.nodes.x", "entry name 'x' is already used by a graph input"),
        ("model.nodes.w", "entry name 'w' is already used by a graph param"),
        ("model.nodes.fc.in", "Linear takes 1 input, got 2"),
        ("model.nodes.again.call", "no earlier module entry 's'; module entries before it: fc"),
        ("model.nodes.later.call", "no earlier module entry 'head'; module entries before it: fc"),
        ("model.nodes.a.b", "entry name 'a.b' contains '.', which module paths reserve"),
        ("model.output[1]", "unknown output 'a.b'; known: x, w, fc, s, again, later, head"),
        ("model.output[2]", "unknown output 'outt'; known: x, w, fc, s, again, later, head"),
    ]


def test_empty_graph_and_missing_module_are_reported():
    assert ("g.nodes", "a Graph needs at least one node") in problems_of(GraphSpec([]), "g")
    assert problems_of(GraphSpec([ModuleEntry("fc", None)]), "") == [
        ("nodes.fc", "a module entry needs its module to build a Graph")
    ]
    assert graph_problems(GraphSpec([ModuleEntry("fc", None)]), "") == []  # wiring alone: sound


# --- ops -----------------------------------------------------------------------------------------


def test_arithmetic_ops_take_two_inputs_or_a_number():
    a, b = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    for name, fn in [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div)]:
        assert torch.equal(op(name)(a, b), fn(a, b))
        assert torch.equal(op(name)(a, other=0.5), fn(a, 0.5))
    assert torch.equal(op("add")(a, b, alpha=2), torch.add(a, b, alpha=2))
    assert torch.equal(op("div")(a, b, rounding_mode="floor"), torch.div(a, b, rounding_mode="floor"))
    assert torch.equal(op("matmul")(a, b.T), a @ b.T)


def test_elementwise_and_shape_ops_match_torch():
    x = torch.rand(2, 3, 4) + 0.1
    for name in ("abs", "neg", "exp", "log", "sqrt", "rsqrt"):
        assert torch.equal(op(name)(x), getattr(torch, name)(x))
    assert torch.equal(op("flatten")(x, start_dim=1), x.flatten(1))
    assert torch.equal(op("unflatten")(x, dim=-1, sizes=[2, 2]), x.unflatten(-1, (2, 2)))
    assert torch.equal(op("reshape")(x, shape=[6, -1]), x.reshape(6, -1))
    assert torch.equal(op("transpose")(x, dim0=0, dim1=2), x.transpose(0, 2))
    assert torch.equal(op("permute")(x, dims=[2, 0, 1]), x.permute(2, 0, 1))
    assert torch.equal(op("mean")(x), x.mean()) and torch.equal(
        op("mean")(x, dim=[1, 2], keepdim=True), x.mean((1, 2), True)
    )
    assert torch.equal(op("softmax")(x, dim=-1), x.softmax(-1))
    assert torch.equal(op("select")(x, dim=1, index=0), x[:, 0])


def test_joining_splitting_and_picking():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(op("cat")(a, b, dim=1), torch.cat([a, b], 1))
    assert torch.equal(op("stack")(a, b), torch.stack([a, b]))
    parts = op("chunk")(torch.arange(6), chunks=3)
    assert isinstance(parts, tuple) and torch.equal(op("cat")(parts), torch.arange(6))  # one tuple input: its items
    nested = (a, [b, (a, b)])
    assert op("getitem")(nested, index=[1, 1, -1]) is b
    assert torch.equal(op("getitem")(a, index=1), a[1])


def test_positions_expand_batch_and_attention():
    x = torch.randn(2, 5, 8)
    positions = op("positions")(x)
    assert torch.equal(positions, torch.arange(5)) and positions.device == x.device
    assert torch.equal(op("positions")(x, dim=2), torch.arange(8))
    token = torch.randn(1, 1, 8)
    expanded = op("expand_batch")(token, x)
    assert expanded.shape == (2, 1, 8) and expanded.data_ptr() == token.data_ptr()  # a view
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    assert torch.equal(
        op("attention")(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )
    mask = torch.rand(5, 5) > 0.3
    assert torch.equal(op("attention")(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    # dropout applies in training only, as nanoGPT and timm do
    assert torch.equal(op("attention")(q, k, v, dropout_p=0.5, training=False), op("attention")(q, k, v))
    torch.manual_seed(0)
    assert not torch.equal(op("attention")(q, k, v, dropout_p=0.5), op("attention")(q, k, v))


def test_attention_in_a_graph_follows_train_and_eval():
    graph = Graph(GraphSpec([OpEntry("a", op("attention"), {"dropout_p": 0.9}, ["x", "x", "x"])]))
    x = torch.randn(1, 1, 6, 4)
    assert "training=self.training" in graph.code
    graph.eval()
    assert torch.equal(graph(x), F.scaled_dot_product_attention(x, x, x))
    graph.train()
    assert not torch.equal(graph(x), F.scaled_dot_product_attention(x, x, x))


def test_op_kwargs_and_inputs_are_checked_against_the_signature():
    p = "model.nodes.f"
    assert op_problems("flatten", op("flatten"), {"start": 1}, 1, p) == [
        (f"{p}.start", "op 'flatten' takes no argument 'start' (did you mean 'start_dim'?); valid: start_dim, end_dim")
    ]
    assert op_problems("softmax", op("softmax"), {}, 1, p) == [(p, "op 'softmax' is missing 'dim' (an argument)")]
    assert op_problems("add", op("add"), {}, 1, p) == [(p, "op 'add' is missing 'other' (an input or an argument)")]
    assert op_problems("add", op("add"), {}, 3, p) == [(f"{p}.in", "op 'add' takes at most 2 inputs, got 3")]
    assert op_problems("add", op("add"), {"other": 1}, 2, p) == [
        (f"{p}.other", "op 'add' gets 'other' both as an input and as an argument")
    ]
    assert op_problems("matmul", op("matmul"), {}, 1, p) == [(f"{p}.in", "op 'matmul' takes 2 inputs, got 1")]
    assert op_problems("attention", op("attention"), {"training": True}, 3, p)[0][0] == f"{p}.training"
    assert op_problems("cat", op("cat"), {"dim": 1}, 5, p) == []
    assert op_problems("add", op("add"), {"alpha": 2}, None, p) == []  # inputs unknown: kwargs only
    with pytest.raises(
        ConfigError,
        match=r"^model.nodes.f.op: unknown op 'flaten' \(did you mean 'flatten', 'unflatten' or 'float'\?\); "
        r"or register one with @composer.register_op$",
    ):
        lookup_op("flaten", f"{p}.op")
    with pytest.raises(ConfigError) as info:
        check_op("flatten", op("flatten"), {"start": 1, "end": 2}, 1, p)
    assert len(info.value.problems) == 2


def test_op_module_in_a_sequential():
    flatten = make_op("flatten", {"start_dim": 1}, "model.layers[1]")
    assert repr(flatten) == "Op(flatten, start_dim=1)"
    net = nn.Sequential(nn.Conv2d(1, 2, 3), flatten, nn.Linear(8, 1))
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(net(x), net[2](net[0](x).flatten(1)))
    assert torch.equal(copy.deepcopy(net)(x), net(x))
    assert repr(Op(op("getitem"), index=[1, 0, -1])) == "Op(getitem, index=[1, 0, -1])"
    with pytest.raises(ConfigError, match="model.layers.2.start"):
        make_op("flatten", {"start": 1}, "model.layers.2")
    attention = Op(op("attention"), dropout_p=0.9).eval()
    q = torch.randn(1, 1, 6, 4)
    assert torch.equal(attention(q, q, q), F.scaled_dot_product_attention(q, q, q))


def test_register_op_adds_a_user_op_once():
    @register_op("test_graph_parts_twice")
    def twice(input, /, *, factor: int = 2):
        return input * factor

    assert lookup_op("test_graph_parts_twice", "p") is twice
    assert op_problems("twice", twice, {"factr": 3}, 1, "p")[0][1].startswith(
        "op 'twice' takes no argument 'factr' (did you mean 'factor'?)"
    )
    with pytest.raises(ValueError, match="already registered"):
        register_op("test_graph_parts_twice")(lambda x: x)


# --- templates -----------------------------------------------------------------------------------


BASIC = {
    "args": {"c": "???", "stride": 1, "act": None},
    "body": {
        "type": "Graph",
        "nodes": {
            "conv1": {
                "type": "Conv2d",
                "in_channels": "$c",
                "out_channels": "$c",
                "kernel_size": 3,
                "stride": "$stride",
            },
            "fc": {"type": "Linear", "in_features": "$c", "out_features": "$(4 * c)"},
            "act": "$act",
        },
    },
}


def test_templates_are_blocks_entries_with_args():
    assert is_template(BASIC) and not is_template({"type": "Linear"}) and not is_template({"use": "x", "args": 1})
    template = parse_template("basic", BASIC)
    assert template.args == {"c": REQUIRED, "stride": 1, "act": None} and template.required == ("c",)
    assert template.key_path == "blocks.basic"
    listed = parse_template(
        "pair", {"args": ["a", "b"], "body": {"type": "Linear", "in_features": "$a", "out_features": "$b"}}
    )
    assert listed.required == ("a", "b")


def test_expand_substitutes_any_value_and_returns_independent_copies():
    template = parse_template("basic", BASIC)
    act = {"type": "Sequential", "layers": [{"type": "ReLU"}]}
    one = expand(template, {"c": 64, "act": act}, "model.layers[0]")
    assert one["nodes"]["conv1"] == {
        "type": "Conv2d",
        "in_channels": 64,
        "out_channels": 64,
        "kernel_size": 3,
        "stride": 1,
    }
    assert one["nodes"]["fc"]["out_features"] == 256 and one["nodes"]["act"] == act
    one["nodes"]["act"]["layers"].append("changed")
    one["nodes"]["conv1"]["kernel_size"] = 5
    assert act == {"type": "Sequential", "layers": [{"type": "ReLU"}]}
    two = expand(template, {"c": 8, "stride": 2}, "model.layers[1]")
    assert (
        two["nodes"]["conv1"]["kernel_size"] == 3
        and two["nodes"]["conv1"]["stride"] == 2
        and two["nodes"]["act"] is None
    )
    assert BASIC["body"]["nodes"]["conv1"]["in_channels"] == "$c"  # the template is untouched


@pytest.mark.parametrize(
    "expression, value",
    [
        ("4 * c + 1", 33), ("(c - 2) // 3", 2), ("c % 5", 3), ("2 ** c", 256), ("-c", -8), ("c / 16", 0.5),
        ("min(c, 3, 5)", 3), ("max(c * 2, 3)", 16), ("1.5 * c", 12.0), ("c ** -1", 0.125), ("c", 8),
    ],
)  # fmt: skip
def test_expressions_evaluate_arithmetic_over_arguments(expression, value):
    template = parse_template("t", {"args": ["c"], "body": {"v": f"$({expression})"}})
    result = expand(template, {"c": 8}, "model")["v"]
    assert result == value and type(result) is type(value)


def test_strings_that_are_not_whole_references_stay():
    template = parse_template("t", {"args": ["c"], "body": {"a": "$c", "b": "cost $c", "d": "$5", "e": ["$c", "x"]}})
    assert expand(template, {"c": 1}, "m") == {"a": 1, "b": "cost $c", "d": "$5", "e": [1, "x"]}


def test_expand_errors_name_the_argument_and_the_closest_name():
    template = parse_template("basic", BASIC)
    with pytest.raises(ConfigError) as info:
        expand(template, {"strid": 2, "act": "$x"}, "model.layers[0]")
    assert info.value.problems == [
        (
            "model.layers[0].strid",
            "template 'basic' has no argument 'strid' (did you mean 'stride'?); arguments: c, stride, act",
        ),
        ("model.layers[0]", "template 'basic' needs argument 'c'"),
        ("model.layers[0].act", "'$x' refers to an argument outside any template body "
                                "(only $i, the copy's index, may stay: in a Repeat body's use: arguments)"),
    ]  # fmt: skip


def test_template_definition_errors_are_reported_together():
    entry = {
        "args": {"c": "???", "unused": 1, "in": 2},
        "body": {"type": "Linear", "in_features": "$cc", "out_features": "$(c * widht)"},
        "bdoy": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_template("lin", entry)
    assert info.value.problems == [
        ("blocks.lin.bdoy", "a template takes no key 'bdoy' (did you mean 'body'?); valid: args, body"),
        (
            "blocks.lin.args",
            "argument name 'in' must be an identifier, not a keyword nor one of use, in, forward, init, frozen",
        ),
        (
            "blocks.lin.body.in_features",
            "template 'lin' has no argument 'cc' (did you mean 'c'?); arguments: c, unused, in",
        ),
        ("blocks.lin.body.out_features", "template 'lin' has no argument 'widht'; arguments: c, unused, in"),
        ("blocks.lin.args.unused", "argument 'unused' of template 'lin' is used nowhere in its body"),
    ]


def test_parse_templates_skips_plain_blocks_and_gathers_every_problem():
    blocks = {"plain": {"type": "ReLU"}, "ok": {"args": ["c"], "body": {"x": "$c"}},
              "bad1": {"args": ["c"], "body": {}},
              "bad2": {"args": 3, "body": {}}}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_templates(blocks)
    assert [p for p, _ in info.value.problems] == ["blocks.bad1.args.c", "blocks.bad2.args"]
    assert list(parse_templates({"plain": {"type": "ReLU"}, "ok": blocks["ok"]})) == ["ok"]


def test_evaluator_runs_nothing(tmp_path):
    existed = Path("/tmp/x").exists()
    with pytest.raises(ConfigError, match="calling __import__"):
        parse_template("t", {"args": ["c"], "body": {"v": "$(__import__('os').system('touch /tmp/x'))", "w": "$c"}})
    assert Path("/tmp/x").exists() == existed
    target = tmp_path / "x"
    for expression in [
        f"__import__('os').system('touch {target}')",
        "c.__class__", "c[0]", "(lambda: 1)()", "[c for c in 1]", "'a' * c", "c if c else 1", "c < 2",
        "pow(c, 2)", "min(c, key=c)", "c << 2", "c & 1", "not c", "{}", "f'{c}'", "c := 2",
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            parse_template("t", {"args": ["c"], "body": {"v": f"$({expression})"}})
        assert info.value.problems[0][0] == "blocks.t.body.v", expression
    assert not target.exists()


def test_evaluator_refuses_absurd_and_failing_arithmetic():
    cases = {"2 ** c": 100_000, "c ** c ** c": 9, "c / (c - c)": 3, "c // 0": 3, "(-c) ** 0.5": 8, "10.0 ** c": 400}
    for expression, c in cases.items():
        template = parse_template("t", {"args": ["c"], "body": {"v": f"$({expression})"}})
        with pytest.raises(ConfigError) as info:
            expand(template, {"c": c}, "model.layers[3]")
        ((path, message),) = info.value.problems
        assert path == "model.layers[3]" and message.endswith("(in template 't' at blocks.t.body.v)"), message
    template = parse_template("t", {"args": ["c"], "body": {"v": "$(c + 1)"}})
    with pytest.raises(ConfigError, match="c is 'x', not a number"):
        expand(template, {"c": "x"}, "m")
    with pytest.raises(ConfigError, match="longer than"):
        parse_template("t", {"args": ["c"], "body": {"v": "$(" + "+".join(["c"] * 300) + ")"}})


def test_repeat_index_in_use_arguments():
    use = {"use": "stage", "width": "$(64 * 2 ** i)", "index": "$i", "name": "plain", "in": "x"}
    assert [substitute_index(use, i, "model.body") for i in range(3)] == [
        {"use": "stage", "width": 64 * 2**i, "index": i, "name": "plain", "in": "x"} for i in range(3)
    ]
    with pytest.raises(ConfigError) as info:
        substitute_index({"use": "stage", "w": "$(c * i)"}, 0, "model.body")
    assert info.value.problems == [("model.body.w", "'$(c * i)': only i, the copy's index, is available here, not c")]


def test_template_body_repeat_mixes_arguments_with_the_index():
    template = parse_template("stack", {
        "args": ["c", "n"],
        "body": {
            "type": "Repeat", "times": "$n",
            "body": {"use": "unit", "w": "$(c * 2 ** i + max(c, i))", "k": "$i", "c": "$c"},
        },
    })  # fmt: skip
    body = expand(template, {"c": 16, "n": 3}, "model")
    assert body == {
        "type": "Repeat",
        "times": 3,
        "body": {"use": "unit", "w": "$(16 * 2 ** i + max(16, i))", "k": "$i", "c": 16},
    }
    assert [substitute_index(body["body"], i, "model.body")["w"] for i in range(3)] == [32, 48, 80]
    with pytest.raises(ConfigError, match="has no argument 'i'"):  # outside a Repeat body's use: node, i is nobody's
        parse_template("t", {"args": ["c"], "body": {"type": "Linear", "in_features": "$(c * i)"}})


# --- YAML flow mappings: ??? reads, an unquoted comma says to quote ------------------------------

README_TEMPLATE = """\
blocks:
  basic:
    args: {c: ???, stride: 1}
    body:
      type: Graph
      nodes:
        conv1: {type: Conv2d, in_channels: $c, out_channels: $c, kernel_size: 3, stride: $stride, padding: 1}
        fc: {type: Linear, in_features: $c, out_features: $(4 * c)}
model: {use: basic, c: 8}
"""


def test_a_required_argument_reads_unquoted_in_a_flow_mapping(tmp_path: Path):
    """``args: {c: ???, stride: 1}``, as the README writes it: YAML 1.2 reads ``???`` as a plain
    value there; PyYAML and libyaml alone take its ``?`` for a complex key."""
    path = tmp_path / "basic.yaml"
    path.write_text(README_TEMPLATE)
    model = build_from_config(path)
    assert (model.conv1.in_channels, model.conv1.stride, model.fc.out_features) == (8, (1, 1), 32)
    assert parse_yaml("a: [???, 1, {b: ???}]\nc: ???", "w") == {"a": ["???", 1, {"b": "???"}], "c": "???"}
    assert parse_yaml("{? x : 1, y: 1e-5, d: 2001-01-01}", "w") == {"x": 1, "y": 1e-5, "d": "2001-01-01"}
    with pytest.raises(ConfigError, match=r"w:1:10: YAML syntax error: key 'c' given twice"):
        parse_yaml("{c: ???, c: 1}", "w")  # the fallback keeps composer's rules


@pytest.mark.parametrize(
    ("recipe", "path"),
    [
        (
            "blocks:\n  b:\n    args: {c: ???, bias: true}\n"
            "    body: {type: Linear, in_features: $c, out_features: $(max(1, c // 4)), bias: $bias}\n"
            "model: {use: b, c: 8}\n",
            "blocks.b.body.out_features",
        ),
        (
            "vars: {c: 8}\nmodel: {type: Linear, in_features: 8, out_features: $(max(1, vars.c // 4))}\n",
            "model.out_features",
        ),
    ],
)
def test_an_unquoted_expression_with_a_comma_says_to_quote_it(tmp_path: Path, recipe: str, path: str):
    file = tmp_path / "r.yaml"
    file.write_text(recipe)
    with pytest.raises(ConfigError) as info:
        build_from_config(file)
    assert len(info.value.problems) == 1
    assert info.value.path == path
    assert "in a YAML flow mapping ({...}) a comma ends the value: quote an expression" in info.value.problems[0][1]
    file.write_text(
        recipe.replace("$(max(1, c // 4))", '"$(max(1, c // 4))"').replace(
            "$(max(1, vars.c // 4))", '"$(max(1, vars.c // 4))"'
        )
    )
    assert build_from_config(file).out_features == 2


@pytest.mark.slow
def test_the_app_reads_required_arguments_and_says_to_quote(tmp_path: Path):
    """The same through ``python -m composer --config-dir``: its files are read by composer's
    loader too (the model file's own init rules are read again the same way)."""
    (tmp_path / "model").mkdir()
    template = "blocks:\n  b:\n    args: {c: ???, stride: 1}\n    body: {type: Linear, in_features: $c, out_features: "
    for name, out in (("quoted", '"$(max(1, c // 4 * stride))"'), ("unquoted", "$(max(1, c // 4 * stride))")):
        (tmp_path / "model" / f"{name}.yaml").write_text(
            f"# @package _global_\n{template}{out}}}\nmodel: {{use: b, c: 8}}\ninput_shape: [2, 8]\n"
        )
    settings = ["check=true", f"hydra.run.dir={tmp_path / 'out'}"]
    results = run_together(
        {
            name: (command("--config-dir", str(tmp_path), f"model={name}", *settings), None)
            for name in ("quoted", "unquoted")
        },
        tmp_path,
    )
    assert results["quoted"].returncode == 0, results["quoted"].stderr
    assert "check: the recipe is valid; 18 parameters" in results["quoted"].stdout
    assert results["unquoted"].returncode != 0
    assert results["unquoted"].stderr.strip().splitlines() == [
        "error: blocks.b.body.out_features: '$(max(1' does not close its parentheses: in a YAML flow mapping ({...}) "
        'a comma ends the value: quote an expression that holds one ("$(max(1, c // 4))")'
    ]
