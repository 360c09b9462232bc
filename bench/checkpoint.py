"""Goal 5: checkpoints of a 403 MB model (6 x Linear(4096, 4096)) against safetensors and torch.

Interleaved in one run, files in a temporary folder, page cache warm (the files were just written):
- save: ``composer.save_checkpoint`` vs safetensors ``save_file`` followed by ``fsync`` (and, for
  context, ``torch.save`` + ``fsync``);
- load with verification (the checksum reads every byte) vs safetensors ``load_file`` followed by
  reading every byte (the fair peer: both touch every byte), and for context ``torch.load``;
- load with ``verify=False`` vs safetensors ``load_file``, both followed by reading every byte
  (a sum over each tensor): safetensors maps the file lazily, so a load that reads nothing
  measures nothing.

Training state (issue 21), a model half as deep (3 x Linear(4096, 4096), 201 MB) with its AdamW
state (twice that again): ``save_checkpoint(model, path, optimizer=opt, state=...)`` vs
``save_file`` of the same tensors + ``fsync``, and ``load_checkpoint(path, optimizer=opt)``
(verified) + reading every byte vs ``load_file`` + reading every byte; the disk here is bimodal
(about 0.3 s or 1.2 s for 400 MB, whoever writes), so the goals compare minimums over rounds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from bench.common import Result, interleave, not_available

LAYERS, WIDTH = 6, 4096


def read_all(tensors: Mapping[str, torch.Tensor] | torch.nn.Module) -> float:
    """Touch every byte: a sum over each tensor."""
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    return float(sum(t.sum() for t in tensors.values()))


def fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (no root needed: they are clean after the fsync),
    so the next read comes from the disk: a cold load."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _training(rounds: int) -> list[Result]:
    """Model + AdamW state: save and verified load against safetensors on the same tensors."""
    from safetensors.torch import load_file, save_file

    import composer

    recipe = {"model": {"type": "Repeat", "times": LAYERS // 2, "body": {"type": "Linear", "in_features": WIDTH,
                                                                          "out_features": WIDTH}}}  # fmt: skip
    model = composer.build_from_config(recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    for index, values in optimizer.state_dict()["state"].items():
        tensors.update({f"{index}.{name}": value for name, value in values.items()})
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    fresh = torch.optim.AdamW(composer.build_from_config(recipe, device="meta").parameters(), lr=1e-3)

    def read_resumed() -> float:
        loaded = composer.load_checkpoint(ours, optimizer=fresh)
        return read_all(loaded) + sum(read_all(v) for v in fresh.state_dict()["state"].values())

    with tempfile.TemporaryDirectory(prefix="composer-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        ours, st = Path(tmp) / "run.safetensors", Path(tmp) / "plain.safetensors"

        def save_st() -> None:
            save_file(tensors, st)
            fsync(st)

        saves = interleave({
            "composer save_checkpoint(optimizer=)": lambda: composer.save_checkpoint(
                model, ours, optimizer=optimizer, state={"step": 1}),
            "safetensors save_file + fsync (same tensors)": save_st,
        }, rounds=rounds)  # fmt: skip
        loads = interleave({
            "composer load_checkpoint(optimizer=) (verify) + read": read_resumed,
            "safetensors load_file + read (same tensors)": lambda: read_all(load_file(st)),
        }, rounds=rounds, prepare={  # a resume starts from an empty optimizer: the last round's state freed untimed
            "composer load_checkpoint(optimizer=) (verify) + read": fresh.state.clear,
        })  # fmt: skip
    save_pair = ("composer save_checkpoint(optimizer=)", "safetensors save_file + fsync (same tensors)")
    load_pair = ("composer load_checkpoint(optimizer=) (verify) + read", "safetensors load_file + read (same tensors)")
    return [
        Result("21", f"save_checkpoint model + AdamW ({size_mb:.0f} MB) / save_file + fsync, fastest/fastest",
               "<=", 1.2, saves.min_ratio(*save_pair),
               detail=saves.describe() + f"; median of per-round ratios {saves.paired_ratio(*save_pair):.2f}x"),
        Result("21", "load_checkpoint(optimizer=) (verify) + read / load_file + read, fastest/fastest", "<=", 1.6,
               loads.min_ratio(*load_pair),
               detail=loads.describe() + f"; ratio of medians {loads.ratio(*load_pair):.2f}x"),
    ]  # fmt: skip


def run(quick: bool = False) -> list[Result]:
    from safetensors.torch import load_file, save_file

    import composer

    rounds = 3 if quick else 9
    model = composer.build_from_config(
        {
            "model": {
                "type": "Repeat",
                "times": LAYERS,
                "body": {"type": "Linear", "in_features": WIDTH, "out_features": WIDTH},
            }
        }
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    size_mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    with tempfile.TemporaryDirectory(prefix="composer-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        ours, st, pt = Path(tmp) / "model.safetensors", Path(tmp) / "plain.safetensors", Path(tmp) / "model.pt"

        def save_st() -> None:
            save_file(state, st)
            fsync(st)

        def save_pt() -> None:
            torch.save(state, pt)
            fsync(pt)

        saves = interleave({
            "composer save_checkpoint": lambda: composer.save_checkpoint(model, ours),
            "safetensors save_file + fsync": save_st,
            "torch.save + fsync": save_pt,
        }, rounds=rounds)  # fmt: skip

        for check in (composer.load_checkpoint(ours).state_dict(), load_file(st), torch.load(pt, weights_only=True)):
            if check.keys() != state.keys() or not all(torch.equal(check[k], state[k]) for k in state):
                raise AssertionError("a loaded checkpoint differs from the saved model")

        loads = interleave({
            "composer load (verify)": lambda: composer.load_checkpoint(ours),
            "composer load (verify) + read": lambda: read_all(composer.load_checkpoint(ours)),
            "torch.load(weights_only=True)": lambda: torch.load(pt, weights_only=True),
            "composer load (verify=False) + read": lambda: read_all(composer.load_checkpoint(ours, verify=False)),
            "safetensors load_file + read": lambda: read_all(load_file(st)),
        }, rounds=rounds)  # fmt: skip
        cold = {}
        if hasattr(os, "posix_fadvise"):
            cold = interleave({
                "composer load (verify) + read, cold": lambda: read_all(composer.load_checkpoint(ours)),
                "safetensors load_file + read, cold": lambda: read_all(load_file(st)),
            }, rounds=rounds, prepare={
                "composer load (verify) + read, cold": lambda: evict(ours),
                "safetensors load_file + read, cold": lambda: evict(st),
            })  # fmt: skip

    return [
        Result("5", f"save_checkpoint ({size_mb:.0f} MB) / safetensors save_file + fsync (median of per-round ratios)",
               "<=", 1.2, saves.paired_ratio("composer save_checkpoint", "safetensors save_file + fsync"),
               detail=saves.describe() + "; ratio of medians "
               f"{saves.ratio('composer save_checkpoint', 'safetensors save_file + fsync'):.2f}x, fastest/fastest "
               f"{saves.min_ratio('composer save_checkpoint', 'safetensors save_file + fsync'):.2f}x"),
        Result("5", "save_checkpoint / torch.save + fsync (peer)", "info", None,
               saves.ratio("composer save_checkpoint", "torch.save + fsync")),
        Result("5", "load_checkpoint (verify) + read / load_file + read, warm", "<=", 1.5,
               loads.ratio("composer load (verify) + read", "safetensors load_file + read"), detail=loads.describe()),
        Result("5", "load_checkpoint (verify) / torch.load(weights_only=True) (peer)", "info", None,
               loads.ratio("composer load (verify)", "torch.load(weights_only=True)")),
        Result("5", "load_checkpoint(verify=False) + read / load_file + read", "<=", 1.3,
               loads.ratio("composer load (verify=False) + read", "safetensors load_file + read")),
        Result("5", "load_checkpoint (verify) + read / load_file + read, cold (page cache dropped)", "<=", 1.15,
               cold.ratio("composer load (verify) + read, cold", "safetensors load_file + read, cold"),
               detail=cold.describe() + "; CPU-time ratio "
               f"{cold.cpu_ratio('composer load (verify) + read, cold', 'safetensors load_file + read, cold'):.2f}x")
        if cold else not_available("5", "load_checkpoint (verify) + read / load_file + read, cold",
                                   "no posix_fadvise here: the page cache cannot be dropped", "<=", 1.15),
        *_training(rounds),
    ]  # fmt: skip
