"""``mlp``: Linear(1024 -> 4096) - GELU - Linear(4096 -> 1024) - LayerNorm, the transformer FFN shape."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models.zoo import ZooModel, randn, randomize_norms, seeded


class MLP(nn.Module):
    def __init__(self, dim: int = 1024, hidden: int = 4096) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))


def build() -> nn.Module:
    with seeded(0):
        model = MLP()
    return randomize_norms(model, seed=1).eval()


def make_inputs(batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]:
    return (randn((batch, 1024), seed),)


MODEL = ZooModel("mlp", build, make_inputs, batches=(2, 5), bench_batch=64,
                 description="Linear-GELU-Linear-LayerNorm, 1024 -> 4096 -> 1024")
