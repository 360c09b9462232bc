"""Section 7.12: the recipes that real users write, in YAML alone, against references no one here wrote.

Each reference is built from its own config (``transformers``' ``LlamaConfig``, ``MixtralConfig``,
``BertConfig``; ``nn.Transformer``'s arguments; torchvision's ConvNeXt as ``tests/references.py``
writes it), the recipe by name with ``vars`` named as that config's fields. The recipe's
``state_dict`` has the reference's keys with its shapes (in the order of the forward: HF's decoder
layers register their norms last); the reference's weights load
strictly; both are called with the reference's argument names, and the first outputs are equal:
bit for bit where the kernels are the same (Mixtral's default ``grouped_mm`` experts are HF's
default path), within 1e-5 for Mixtral's ``dense`` experts (every expert weighs every token).
"""

from __future__ import annotations

import pytest
import torch

from composer import build_from_config
from tests import references as R

EXACT = ["llama", "bert", "convnext", "seq2seq"]


def loaded(name: str, fields: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(recipe, reference): the recipe ``name`` built with ``vars=fields`` and the reference's
    weights loaded strictly, after checking the keys and shapes are the reference's."""
    torch.manual_seed(0)
    reference = R.architecture(name, fields)
    if name == "convnext":  # layer scale and norms away from their 1e-6, ones and zeros
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    model = build_from_config(name, vars=fields)
    expected, got = reference.state_dict(), model.state_dict()
    assert sorted(got) == sorted(expected)  # HF registers a layer's norms after its attention and MLP
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}
    model.load_state_dict(expected, strict=True)
    return model.eval(), reference


def first(out):
    return out[0] if isinstance(out, tuple) else out


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first output of ``model`` called with the reference's argument names (a Sequential,
    convnext's top, takes its one input by position)."""
    sequential = isinstance(getattr(model, "_orig_mod", model), torch.nn.Sequential)
    return first(model(*inputs.values()) if sequential else model(**inputs))


@pytest.mark.parametrize("name", EXACT)
def test_recipe_gives_the_references_first_output_bit_for_bit(name):
    model, reference = loaded(name, R.SMALL[name])
    inputs = R.architecture_inputs(name, R.SMALL[name])
    with torch.no_grad():
        assert torch.equal(run(model, inputs), R.architecture_output(name, reference, inputs))


@pytest.mark.parametrize("implementation, tolerance", [("grouped_mm", 0.0), ("dense", 1e-5)])
def test_mixtral_gives_mixtral_for_causal_lms_logits(implementation, tolerance):
    """HF's reference runs its default experts_implementation, grouped_mm ("dense" is the recipe's own)."""
    _, reference = loaded("mixtral", R.SMALL["mixtral"])
    model = build_from_config("mixtral", vars={**R.SMALL["mixtral"], "experts_implementation": implementation}).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 2 * 96, 64)
    inputs = R.architecture_inputs("mixtral", R.SMALL["mixtral"])
    with torch.no_grad():
        difference = (model(**inputs) - R.architecture_output("mixtral", reference, inputs)).abs().max()
    assert difference <= tolerance


def test_llama_vars_reach_biases_head_dim_and_plain_multi_head_attention():
    fields = {**R.SMALL["llama"], "attention_bias": True, "mlp_bias": True, "head_dim": 32, "num_key_value_heads": 4}
    model, reference = loaded("llama", fields)
    assert model.model.layers[1].self_attn.q_proj.weight.shape == (4 * 32, 64)
    inputs = R.architecture_inputs("llama", fields)
    with torch.no_grad():
        assert torch.equal(model(**inputs), R.architecture_output("llama", reference, inputs))


def test_llama_ties_lm_head_as_tie_word_embeddings_says():
    fields = {**R.SMALL["llama"], "tie_word_embeddings": True}
    model, reference = loaded("llama", fields)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inputs = R.architecture_inputs("llama", fields)
    with torch.no_grad():
        assert torch.equal(model(**inputs), R.architecture_output("llama", reference, inputs))
    untied = build_from_config("llama", vars=R.SMALL["llama"])
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_bert_pooler_and_padding():
    model, reference = loaded("bert", R.SMALL["bert"])
    inputs = R.architecture_inputs("bert", R.SMALL["bert"])
    with torch.no_grad():
        got, want = model(**inputs), reference(**inputs)
        assert torch.equal(got[1], want.pooler_output)
        changed = inputs["input_ids"].clone()
        changed[-1, -1] = (changed[-1, -1] + 1) % 100  # a padded position: nothing else sees it
        again = model(**{**inputs, "input_ids": changed})[0]
    assert torch.equal(again[:, :-1], got[0][:, :-1])


@pytest.mark.parametrize("name, tolerance", [("llama", 0.0), ("mixtral", 1e-6), ("seq2seq", 0.0)])
def test_decoders_are_causal(name, tolerance):
    """Mixtral's grouped_mm experts (HF's too) multiply a token's rows together with the other tokens
    routed to the same expert, so a later token moves an earlier one's last bits, no more."""
    model = build_from_config(name, vars=R.SMALL[name]).eval()
    inputs = R.architecture_inputs(name, R.SMALL[name])
    key = "tgt" if name == "seq2seq" else "input_ids"
    changed = dict(inputs)
    changed[key] = inputs[key].clone()
    changed[key][:, 5] += 1
    with torch.no_grad():
        a, b = model(**inputs), model(**changed)
    assert (a[:, :5] - b[:, :5]).abs().max() <= tolerance and (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_llamas_rotary_table_is_a_buffer_outside_the_state_dict():
    model = build_from_config("llama", vars=R.SMALL["llama"])
    assert "model.rotary_emb.inv_freq" in dict(model.named_buffers())
    assert not any("inv_freq" in k for k in model.state_dict())


@pytest.mark.slow  # seconds: convnext_tiny's 28 M parameters on meta, its init rules checked
def test_convnext_tiny_has_torchvisions_parameter_count_and_keys():
    model = build_from_config("convnext", vars={"dims": [96, 192, 384, 768], "depths": [3, 3, 9, 3]}, device="meta")
    with torch.device("meta"):
        reference = R.convnext()
    assert R.count_parameters(model) == 28_589_128
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_seq2seq_matches_nn_transformer_in_train_mode_too():
    """Train mode with dropout 0: neither takes the encoder layer's fused fast path."""
    model, reference = loaded("seq2seq", R.SMALL["seq2seq"])
    model.train(), reference.train()
    inputs = R.architecture_inputs("seq2seq", R.SMALL["seq2seq"])
    assert torch.equal(model(**inputs), R.architecture_output("seq2seq", reference, inputs))


COMPILED = [
    *[(name, {}, None) for name in EXACT],
    ("mixtral", {}, "bfloat16"),  # torch's fake grouped_mm (for tracing) takes bfloat16 only
    ("mixtral", {"experts_implementation": "dense"}, None),
]


@pytest.mark.slow  # 5-10 s each: dynamo traces every op
@pytest.mark.parametrize("name, extra, dtype", COMPILED, ids=lambda v: str(v) if v else "-")
def test_compiles_without_graph_breaks(name, extra, dtype):
    model = build_from_config(name, vars={**R.SMALL[name], **extra}, dtype=dtype).eval()
    inputs = R.architecture_inputs(name, R.SMALL[name])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out, eager = run(compiled, inputs), run(model, inputs)
    torch._dynamo.reset()
    assert torch.allclose(out, eager, atol=1e-6)


def test_a_tie_that_a_var_turns_on_or_off():
    linear = {"type": "Linear", "in_features": 4, "out_features": 4, "bias": False}
    recipe = {
        "vars": {"tied": True},
        "model": {"type": "Sequential", "layers": {"a": linear, "b": linear}},
        "tie": {"b.weight": {"src": "a.weight", "when": "${vars.tied}"}},
    }
    tied = build_from_config(recipe)
    assert tied.b.weight is tied.a.weight
    untied = build_from_config(recipe, vars={"tied": False})
    assert untied.b.weight is not untied.a.weight
    with pytest.raises(ValueError, match=r"tie\.b\.weight\.when: expected true or false, got 'yes'"):
        build_from_config(recipe, vars={"tied": "yes"})
    with pytest.raises(ValueError, match=r"tie\.b\.weight\.wen: unknown key 'wen' \(did you mean 'when'\?\)"):
        build_from_config({**recipe, "tie": {"b.weight": {"src": "a.weight", "wen": True}}})
