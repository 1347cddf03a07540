"""``transformer_encoder``: PyTorch's own ``nn.TransformerEncoderLayer`` (post-norm, ReLU FFN).

d_model 256, 4 heads, FFN 1024, batch_first, eval mode. In eval PyTorch may
take its fused "fast path" (``aten._transformer_encoder_layer_fwd``); the
frontend must trace the decomposed layer for tilefx to compile it.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models.zoo import ZooModel, randn, randomize_norms, seeded

D_MODEL = 256


def build() -> nn.Module:
    with seeded(0):
        model = nn.TransformerEncoderLayer(d_model=D_MODEL, nhead=4, dim_feedforward=1024, batch_first=True)
    return randomize_norms(model, seed=1).eval()


def make_inputs(batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]:
    seq = 128 if bench else 32
    return (randn((batch, seq, D_MODEL), seed),)


MODEL = ZooModel("transformer_encoder", build, make_inputs, batches=(1, 3), bench_batch=4,
                 description="nn.TransformerEncoderLayer(256, 4 heads, ffn 1024, batch_first)")
