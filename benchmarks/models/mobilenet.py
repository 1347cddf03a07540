"""``mobilenetv2_block``: one MobileNetV2 inverted residual block (stride 1, expansion 6).

1x1 expand conv-bn-relu6, 3x3 depthwise conv-bn-relu6, 1x1 project conv-bn (no
activation: the "linear bottleneck"), plus the identity residual. 24 channels
at 56x56 is the block's place in the real network; tests use 16x16.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models.zoo import ZooModel, randn, randomize_norms, seeded

CHANNELS = 24


class InvertedResidual(nn.Module):
    def __init__(self, channels: int = CHANNELS, expansion: int = 6) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                    nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


def build() -> nn.Module:
    with seeded(0):
        model = InvertedResidual()
    return randomize_norms(model, seed=1).eval()


def make_inputs(batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]:
    size = 56 if bench else 16
    return (randn((batch, CHANNELS, size, size), seed),)


MODEL = ZooModel("mobilenetv2_block", build, make_inputs, batches=(1, 3), bench_batch=1,
                 description="inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; 24 ch")
