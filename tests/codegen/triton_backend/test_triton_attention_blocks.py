"""Attention blocks as transformers writes them, compiled for cuda under TRITON_INTERPRET=1
against eager: a causal mask the model builds and passes as ``attn_mask`` (GPT-2's and
Llama's sdpa path) becomes a causal attention kernel that reads no mask, and BERT's separate
q, k, v Linears become one packed projection the attention reads in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.codegen.triton_backend.triton_testing import close
from tests.passes.test_attention_masks import _GPTBlock
from tilefx.ir import DType


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_masked_gpt_block_for_cuda(dtype):
    import tilefx
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    torch.manual_seed(0)
    model = _GPTBlock().eval().to(dtype)
    x = torch.randn(2, 13, 16).to(dtype)
    with torch.no_grad():
        mk = model_kernels(model, (x,), CompileOptions(target="cuda", cuda_graphs=False), CompileSession())
    (attn,) = [b for k in mk.graph.ops if k.name == "kernel" for b in k.body.ops if b.name == "attention"]
    assert attn.attr("causal") is True and len(attn.inputs) == 3
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model.float()(x.float())
    close(got, want, DType.float16 if dtype == torch.float16 else DType.float32)
    assert "fallbacks: 0, interpreted: 0" in cm.report()


class _BertSelfAttention(nn.Module):
    def __init__(self, d=24, heads=3):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (p(x).reshape(b, s, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, s, d)) + x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # bf16 dots: the interpreter errs
def test_bert_self_attention_packs_its_projections(dtype):
    import tilefx

    torch.manual_seed(0)
    model = _BertSelfAttention().eval().to(dtype)
    x = torch.randn(2, 7, 24).to(dtype)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model.float()(x.float())
    close(got, want, DType.float16 if dtype == torch.float16 else DType.float32)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    assert "kernels: 3 " in report, report  # packed q/k/v, attention, output projection + residual
    assert "<- slice + slice + slice + " in report, report
