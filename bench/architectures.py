"""Goal 8 (real architectures): the recipes of conf/model against handwritten references.

- forward of ``resnet18``, ``vit_tiny`` and ``gpt2_small`` built from their recipes, with the
  reference's weights loaded, over the handwritten reference (``tests/references.py``), with an A/A
  control (two copies of the reference) for the noise band; one thread, eval mode;
- graph breaks of each under ``torch._dynamo.explain`` (what ``torch.compile(fullgraph=True)`` needs);
- ``gpt2_small`` built with a ``normal(0, 0.02)`` rule over the handwritten GPT built and initialized
  the same way (nanoGPT's ``_init_weights``), each in a fresh process, with peak memory over the
  parameter bytes, in float32 and with ``dtype: bfloat16``;
- a 1,000-entry Graph recipe over a 1,000-item Sequential recipe;
- the section 7.12 recipes (``llama``, ``mixtral``, ``bert``, ``convnext``, ``seq2seq``) at bench
  sizes (``BENCH_SIZES``) against their references (transformers' models with SDPA attention,
  torchvision's ConvNeXt as ``tests/references.py`` writes it, ``nn.Transformer``): forward with
  the reference's weights, and the build (``build_from_config(name, vars=...)``, initialization
  included) over the reference's construction (its own initialization included).
"""

from __future__ import annotations

import time

import torch

from bench.common import Result, interleave, ms, run_child

FORWARD_CASES = ("resnet18", "vit_tiny", "gpt2_small")


def _pair(name: str):
    from composer import build_from_config
    from tests import references as R
    from tests.recipes import recipe_with

    torch.manual_seed(0)
    make = {"resnet18": R.resnet18, "vit_tiny": R.vit_tiny, "gpt2_small": R.gpt2}[name]
    reference, control = make(), make()
    built = build_from_config(recipe_with(name))
    built.load_state_dict(reference.state_dict())
    control.load_state_dict(reference.state_dict())
    x = torch.randint(0, 50257, (1, 64)) if name == "gpt2_small" else torch.randn(1, 3, 224, 224)
    for m in (reference, control, built):
        m.eval()
    return built, reference, control, x


def forward_rows(quick: bool) -> list[Result]:
    rows = []
    rounds = 7 if quick else 21
    for name in FORWARD_CASES:
        built, reference, control, x = _pair(name)
        with torch.no_grad():
            assert torch.equal(built(x), reference(x)), name
            variants = {
                "recipe": lambda m=built, x=x: m(x),
                "handwritten": lambda m=reference, x=x: m(x),
                "control": lambda m=control, x=x: m(x),
            }
            t = interleave(variants, rounds, collect=False)  # fmt: skip
        noise = abs(t.ratio("control", "handwritten") - 1)
        ratio, control_ratio = t.ratio("recipe", "handwritten"), t.ratio("control", "handwritten")
        detail = f"A/A control {control_ratio:.3f}x; {t.describe()}"
        rows.append(Result("8", f"forward {name}: recipe / handwritten", "<=", 1.05 + noise, ratio, detail=detail))
        rows.append(
            Result("8", f"{name}: graph breaks under torch._dynamo.explain", "<=", 0, _breaks(built, x), unit="breaks")
        )
    return rows


def _breaks(model: torch.nn.Module, x: torch.Tensor) -> float:
    import torch._dynamo

    torch._dynamo.reset()
    return float(torch._dynamo.explain(model)(x).graph_break_count)


def build_rows(quick: bool) -> list[Result]:
    rounds = 1 if quick else 3
    runs: dict[str, list[dict]] = {"composer": [], "handwritten": [], "composer_bf16": []}
    for r in range(rounds):
        for variant in list(runs)[r % 3 :] + list(runs)[: r % 3]:
            runs[variant].append(run_child("gpt2", variant))

    def best(v: str, key: str) -> float:
        return min(res[key] for res in runs[v])

    params_mb = runs["composer"][0]["param_mb"]
    bf16_mb = runs["composer_bf16"][0]["param_mb"]
    detail = "; ".join(f"{v} {ms(best(v, 'seconds'))}, +{best(v, 'delta_mb'):.0f} MB" for v in runs)
    return [
        Result("8", "gpt2_small build + normal(0.02) / handwritten + same init", "<=", 1.1,
               best("composer", "seconds") / best("handwritten", "seconds"),
               detail=f"{detail} (best of {rounds} fresh processes)"),
        Result("8", "gpt2_small build: peak RSS above baseline / parameter bytes", "<=", 1.1,
               best("composer", "delta_mb") / params_mb, detail=f"parameters {params_mb:.0f} MB"),
        Result("8", "gpt2_small dtype bfloat16: peak RSS / bf16 parameter bytes", "<=", 1.1,
               best("composer_bf16", "delta_mb") / bf16_mb, detail=f"bf16 parameters {bf16_mb:.0f} MB"),
    ]  # fmt: skip


def graph_rows(quick: bool) -> list[Result]:
    from composer import build_from_config

    n = 1000
    linear = {"type": "Linear", "in_features": 64, "out_features": 64}
    sequential = {"model": {"type": "Sequential", "layers": {f"l{i}": dict(linear) for i in range(n)}}}
    graph = {"model": {"type": "Graph", "nodes": {f"l{i}": dict(linear) for i in range(n)}}}
    t = interleave(
        {"graph": lambda: build_from_config(graph), "sequential": lambda: build_from_config(sequential)},
        5 if quick else 15,
    )
    return [
        Result(
            "8",
            f"{n}-entry Graph build / {n}-item Sequential build",
            "<=",
            1.2,
            t.ratio("graph", "sequential"),
            detail=t.describe(),
        )
    ]


def param_groups_rows(quick: bool) -> list[Result]:
    """Issue 21: ``param_groups`` of gpt2_small (built on meta: the groups read no tensor data)
    under the four groups of CONTRACT section 9, best of several calls."""
    import gc

    from composer import build_from_config, param_groups

    model = build_from_config("gpt2_small", device="meta")
    groups = [
        {"weight_decay": 0.1},
        {"kind": ["bias", "norm", "embedding"], "weight_decay": 0.0},
        {"match": "lm_head", "lr_scale": 0.5},
        {"match": "transformer.wte", "frozen": True},
    ]
    times = []
    for _ in range(5 if quick else 20):
        gc.collect()
        start = time.perf_counter()
        param_groups(model, lr=1e-3, groups=groups)
        times.append(time.perf_counter() - start)
    detail = f"best of {len(times)}; median {sorted(times)[len(times) // 2] * 1e3:.2f} ms"
    return [
        Result("8", "param_groups on gpt2_small (4 groups)", "<=", 10.0, min(times) * 1e3, unit="ms", detail=detail)
    ]


# Section 7.12 at sizes where the forward does real work: ~10-30 M parameters, 128 tokens or 64x64 images.
BENCH_SIZES: dict[str, dict] = {
    "llama": {"vocab_size": 8000, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 2},
    "mixtral": {"vocab_size": 8000, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    "bert": {"vocab_size": 8000, "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
             "intermediate_size": 2048, "max_position_embeddings": 512},
    "convnext": {"dims": [64, 128, 256, 512], "depths": [2, 2, 4, 2], "num_classes": 1000},
    "seq2seq": {"d_model": 256, "nhead": 8, "num_encoder_layers": 3, "num_decoder_layers": 3,
                "dim_feedforward": 1024, "dropout": 0.0},
}  # fmt: skip


def _architecture_inputs(name: str, fields: dict) -> dict[str, torch.Tensor]:
    from tests import references as R

    inputs = R.architecture_inputs(name, fields, batch=1, length=128)
    if name == "convnext":
        inputs = {"x": torch.randn(1, 3, 64, 64)}
    return inputs


def architecture_rows(quick: bool) -> list[Result]:
    """Section 7.12: each recipe's forward over its reference's (the reference's weights loaded,
    outputs checked), with an A/A control; then its build over the reference's construction."""
    from composer import build_from_config
    from tests import references as R

    rows = []
    rounds = 7 if quick else 21
    for name, fields in BENCH_SIZES.items():
        torch.manual_seed(0)
        reference, control = R.architecture(name, fields), R.architecture(name, fields)
        built = build_from_config(name, vars=fields).eval()
        built.load_state_dict(reference.state_dict())
        control.load_state_dict(reference.state_dict())
        inputs = _architecture_inputs(name, fields)
        call = (lambda m, x=inputs: m(x["x"])) if name == "convnext" else (lambda m, x=inputs: m(**x))
        with torch.no_grad():
            got, want = call(built), R.architecture_output(name, reference, inputs)
            got = got[0] if isinstance(got, tuple) else got
            difference = (got - want).abs().max().item()
            variants = {
                "recipe": lambda m=built, c=call: c(m),
                "reference": lambda m=reference, n=name, x=inputs: R.architecture_output(n, m, x),
                "control": lambda m=control, n=name, x=inputs: R.architecture_output(n, m, x),
            }
            t = interleave(variants, rounds, collect=False)
        noise = abs(t.ratio("control", "reference") - 1)
        detail = (
            f"max |difference| {difference:.1e}; A/A control {t.ratio('control', 'reference'):.3f}x; {t.describe()}"
        )
        rows.append(Result("8", f"forward {name}: recipe / reference", "<=", 1.05 + noise,
                           t.ratio("recipe", "reference"), detail=detail))  # fmt: skip
        builds = interleave(
            {"recipe": lambda n=name, f=fields: build_from_config(n, vars=f),
             "reference": lambda n=name, f=fields: R.architecture(n, f)},
            3 if quick else 7,
        )  # fmt: skip
        rows.append(Result("8", f"{name} build + init / reference construction", "<=", 3.0,
                           builds.ratio("recipe", "reference"), detail=builds.describe()))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Result]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine stalls multi-threaded small ops at random
    try:
        rows = [*forward_rows(quick), *graph_rows(quick), *param_groups_rows(quick), *architecture_rows(quick)]
    finally:
        torch.set_num_threads(threads)
    return [*rows, *build_rows(quick)]
