"""What a zoo model is, and the helpers every model file shares.

A ``ZooModel`` is a recipe, not a module: ``build()`` makes a fresh ``nn.Module``
in eval mode with weights drawn from a fixed seed, and ``make_inputs(batch,
seed)`` makes fresh random inputs. Tests compile each model at its small
``batches``; ``benchmarks/run.py`` times it at ``bench_batch`` with
``make_inputs(..., bench=True)``, which may also use a larger image or sequence.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import nn


class MakeInputs(Protocol):
    def __call__(self, batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]: ...


@dataclass(frozen=True, slots=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    make_inputs: MakeInputs
    batches: tuple[int, ...]
    bench_batch: int
    description: str = ""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for module construction without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def randomize_norms(module: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm/LayerNorm non-trivial statistics and affine parameters.

    Fresh norms are identities (mean 0, var 1, weight 1, bias 0), so a compiler
    that folded them wrongly would still pass; random values make BN folding and
    the LayerNorm affine part really tested.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return module
