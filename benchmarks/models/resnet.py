"""``resnet18``: a ResNet-18-style CNN written here (torchvision is not a dependency).

conv7x7/2-bn-relu stem, maxpool 3x3/2, four stages of two BasicBlocks (64, 128,
256, 512 channels; stages 2-4 downsample with a stride-2 conv and a 1x1 conv-bn
shortcut), adaptive average pool and a 1000-way fc. Tests use 64x64 images so
the last stage still has a 2x2 map; the benchmark uses 224x224.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models.zoo import ZooModel, randn, randomize_norms, seeded


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or cin != cout
        self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        widths = [64, 128, 256, 512]
        stages, cin = [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def build() -> nn.Module:
    with seeded(0):
        model = ResNet18()
    return randomize_norms(model, seed=1).eval()


def make_inputs(batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]:
    size = 224 if bench else 64
    return (randn((batch, 3, size, size), seed),)


MODEL = ZooModel("resnet18", build, make_inputs, batches=(1, 2), bench_batch=1,
                 description="ResNet-18 (BasicBlocks, BN, 1x1 downsample); test 64x64, bench 224x224")
