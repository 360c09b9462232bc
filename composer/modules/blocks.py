"""The tutorial's blocks, as real trainable modules registered under their class names.

Argument names and defaults are the tutorial's. ``composer.modules.registry`` registers ``TUTORIAL``
before any user code can take these names. Each block that holds tensors of its own also
has ``reset_parameters``, so it can be built on the ``meta`` device and initialized once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """``hidden`` Linear 20-256, ReLU, ``out`` Linear 256-10."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(20, 256)
        self.out = nn.Linear(256, 10)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(X)))


class MySequential(nn.Module):
    """Children ``0, 1, ...`` applied in order; given positionally, as in the tutorial, or as ``layers``."""

    def __init__(self, *args: nn.Module, layers: list[nn.Module] = ()) -> None:
        super().__init__()
        for idx, module in enumerate([*args, *layers]):
            self.add_module(str(idx), module)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            X = module(X)
        return X


class FixedHiddenMLP(nn.Module):
    """A constant random weight (a persistent buffer, so checkpoints reproduce outputs), one Linear
    used twice, and Python control flow; returns a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rand_weight", torch.rand((20, 20)))
        self.linear = nn.Linear(20, 20)

    def reset_parameters(self) -> None:
        """Draw the constant weight again from U[0, 1), as the constructor does."""
        with torch.no_grad():
            self.rand_weight.uniform_()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.linear(X)
        X = F.relu(X @ self.rand_weight + 1)
        X = self.linear(X)
        while X.abs().sum() > 1:
            X /= 2
        return X.sum()


class NestMLP(nn.Module):
    """``net`` (Linear 20-64, ReLU, Linear 64-32, ReLU), then ``linear`` Linear 32-16."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.linear = nn.Linear(32, 16)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(self.net(X))


class CenteredLayer(nn.Module):
    """Subtracts the mean: a layer without parameters."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X - X.mean()


class MyLinear(nn.Module):
    """A fully connected layer with ReLU, written out: ``relu(X @ weight + bias)``."""

    def __init__(self, in_units: int, units: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_units, units))
        self.bias = nn.Parameter(torch.randn(units))

    def reset_parameters(self) -> None:
        """Standard normal draws, as the constructor makes."""
        with torch.no_grad():
            self.weight.normal_()
            self.bias.normal_()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return F.relu(X @ self.weight + self.bias)


TUTORIAL = (MLP, MySequential, FixedHiddenMLP, NestMLP, CenteredLayer, MyLinear)
