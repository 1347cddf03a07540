"""``gpt2_block``: a GPT-2-style pre-norm decoder block, written here.

x + attn(ln_1(x)) then x + mlp(ln_2(x)); attention uses one fused qkv Linear,
causal ``F.scaled_dot_product_attention`` and an output projection; the MLP is
Linear(d -> 4d) - GELU(tanh) - Linear(4d -> d). d = 256, 4 heads, sequence 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.models.zoo import ZooModel, randn, randomize_norms, seeded

D_MODEL, HEADS, SEQ = 256, 4, 64


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPT2Block(nn.Module):
    def __init__(self, dim: int = D_MODEL, heads: int = HEADS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def build() -> nn.Module:
    with seeded(0):
        model = GPT2Block()
    return randomize_norms(model, seed=1).eval()


def make_inputs(batch: int, seed: int = 0, *, bench: bool = False) -> tuple[torch.Tensor, ...]:
    return (randn((batch, SEQ, D_MODEL), seed),)


MODEL = ZooModel("gpt2_block", build, make_inputs, batches=(1, 3), bench_batch=4,
                 description="GPT-2 decoder block: LN, fused qkv, causal SDPA, proj, LN, GELU-tanh MLP")
