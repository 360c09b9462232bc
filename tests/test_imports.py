"""No build, load, summary or check path imports torch._dynamo, sympy or matplotlib (seconds of
start-up) unless the user asked for something that needs them. Run in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.recipes import ROOT

HEAVY = ("torch._dynamo", "sympy", "matplotlib")

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile, time
    from pathlib import Path
    import torch
    from torch import nn
    import composer
    from composer import build_from_config, load_checkpoint, register_module, save_checkpoint, summary

    seen = {}

    def note(step):
        seen[step] = sorted(m for m in HEAVY if m in sys.modules)

    HEAVY = %r

    @register_module
    class Positions(nn.Module):  # a user block whose constructor computes
        def __init__(self, n: int = 8):
            super().__init__()
            self.register_buffer("table", torch.arange(n).float().sin())
            self.proj = nn.Linear(n, n)

        def forward(self, x):
            return self.proj(x + self.table)

    t0 = time.perf_counter()
    block = build_from_config(
        {"model": {"type": "Positions"}, "input_shape": [2, 8], "init": {"rules": [{"weight": "zeros"}]}}
    )
    first_build = time.perf_counter() - t0
    note("user block build")
    names = ("mlp", "lazy_mlp", "siamese", "lstm_classifier", "fixed_hidden_mlp", "unet")
    models = {name: build_from_config(ROOT / "composer" / "conf" / "model" / f"{name}.yaml") for name in names}
    note("builds")
    for model in models.values():
        summary(model)
    note("summaries")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            save_checkpoint(model, Path(tmp) / f"{name}.safetensors")
            load_checkpoint(Path(tmp) / f"{name}.safetensors")
    note("save and load")
    print(json.dumps({"seen": seen, "first_build": first_build}))
    """
)


def test_public_calls_import_nothing_heavy():
    code = f"from pathlib import Path\nROOT = Path({str(ROOT)!r})\n" + SCRIPT % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["seen"] == {step: [] for step in ("user block build", "builds", "summaries", "save and load")}
    assert result["first_build"] < 1.0
