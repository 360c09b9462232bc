"""Train a small ResNet from the packaged recipe on CIFAR-sized random data, save, resume bit for bit.

    python examples/train_resnet_cifar_like.py                              # width 16, 32x32, 10 classes
    python examples/train_resnet_cifar_like.py vars.width=8 --steps 6       # smaller still

A recipe by name with its ``vars`` (``build_from_config("resnet18", vars=...)``), the recipe's
parameter groups (``optim.groups``: weight decay on weights, none on biases and BatchNorm) for
AdamW, a few steps on a fixed random batch (so the loss falls), a checkpoint with the optimizer's
state halfway, and a resume from it that ends equal, bit for bit, to the run that never stopped.
CPU only; well under a minute.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from composer import build_from_config, load_checkpoint, param_groups, save_checkpoint

VARS = {"num_classes": 10, "width": 16, "image_size": 32}
LR = 1e-3


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the recipe's parameter groups: the same groups, in the same order, every time."""
    return torch.optim.AdamW(param_groups(model, lr=LR), lr=LR)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list, first: int, last: int) -> None:
    """Steps ``first`` to ``last`` (1-based, inclusive) over the batches."""
    model.train()
    for step in range(first, last + 1):
        images, labels = batches[(step - 1) % len(batches)]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")


def random_batches(vars_: dict, count: int, size: int) -> list:
    """CIFAR-sized random images with random labels, from a fixed seed: the same data on every run."""
    gen = torch.Generator().manual_seed(0)
    side = vars_["image_size"]
    return [
        (
            torch.randn(size, 3, side, side, generator=gen),
            torch.randint(0, vars_["num_classes"], (size,), generator=gen),
        )
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="vars of the recipe, e.g. vars.width=8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="folder for the checkpoint (default: a temporary one)")
    args = parser.parse_args()
    vars_ = dict(VARS)
    for override in args.overrides:
        key, _, value = override.partition("=")
        vars_[key.removeprefix("vars.")] = int(value)

    torch.manual_seed(0)
    model = build_from_config("resnet18", vars=vars_)
    optimizer = make_optimizer(model)
    groups = [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups]
    print(f"resnet18 {vars_}: {sum(p.numel() for p in model.parameters()):,} parameters; groups {groups}")
    batches = random_batches(vars_, count=2, size=16)
    half = args.steps // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.out or Path(tmp)) / "resnet.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        train(model, optimizer, batches, 1, half)
        save_checkpoint(model, path, optimizer=optimizer, state={"step": half})
        train(model, optimizer, batches, half + 1, args.steps)  # the run that never stops

        # Resume: the same recipe and groups, then the weights, the optimizer's state and the RNG
        # states from the file; the optimizer steps the model it returns.
        fresh = build_from_config("resnet18", vars=vars_)
        resumed_optimizer = make_optimizer(fresh)
        resumed = load_checkpoint(path, optimizer=resumed_optimizer)
        stepped = {id(p) for g in resumed_optimizer.param_groups for p in g["params"]}
        assert stepped == {id(p) for p in resumed.parameters() if p.requires_grad}
        train(resumed, resumed_optimizer, batches, half + 1, args.steps)
    equal = all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    print(f"resumed from step {half}: outputs equal" if equal else "resumed run differs from the uninterrupted one")
    if not equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
