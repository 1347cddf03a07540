"""Constant attention masks (passes/attention_masks.py): a causal mask becomes ``causal=True``,
a mask that keeps everything goes, a mask repeated over the batch keeps one row; everything
else is left as it is, and every rewrite computes the same attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tests.passes.passes_testing import assert_same, property_budget
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, optimize
from tilefx.passes.attention_masks import attention_masks

F16, F32, BOOL = DType.float16, DType.float32, DType.bool


def _graph(mask: np.ndarray | None, mask_dtype: DType, b=2, h=3, length=7, source=7, e=5, dtype=F32,
           mask_input=False) -> Graph:
    bld = GraphBuilder("attn")
    q = bld.input(TensorType(dtype, (b, h, length, e)), "q")
    k = bld.input(TensorType(dtype, (b, h, source, e)), "k")
    v = bld.input(TensorType(dtype, (b, h, source, e)), "v")
    if mask_input:
        m = bld.input(TensorType(mask_dtype, mask.shape), "mask")
    else:
        m = bld.const(mask.astype(mask_dtype.numpy_name))
    return bld.finish([bld.op("attention", q, k, v, m, scale=0.4)])


def _attention(out: Graph):
    (op,) = [o for o in out.ops if o.name == "attention"]
    return op


def _tril(b, length, source, heads=1):
    return np.broadcast_to(np.tril(np.ones((length, source), dtype=bool)), (b, heads, length, source)).copy()


@pytest.mark.parametrize("kind", ["bool", "-inf", "lowest fp32", "lowest fp16"])
def test_a_constant_causal_mask_becomes_causal(kind):
    keep = _tril(2, 7, 7)
    if kind == "bool":
        g = _graph(keep, BOOL)
    else:
        low = {"-inf": -np.inf, "lowest fp32": np.finfo(np.float32).min, "lowest fp16": -65504.0}[kind]
        dtype = F16 if kind == "lowest fp16" else F32
        g = _graph(np.where(keep, 0.0, low), dtype, dtype=dtype)
    out = attention_masks(g)
    op = _attention(out)
    assert op.attr("causal") is True and len(op.inputs) == 3
    assert_same(g, out, atol=2e-3, rtol=2e-3)


def test_more_query_rows_than_keys_is_still_top_left_causal():
    g = _graph(_tril(1, 9, 4), BOOL, b=1, length=9, source=4)
    out = attention_masks(g)
    assert _attention(out).attr("causal") is True
    assert_same(g, out)


@pytest.mark.parametrize("mask, dtype", [(np.ones((2, 1, 7, 7), bool), BOOL), (np.zeros((2, 3, 7, 7)), F32)])
def test_a_mask_that_keeps_everything_goes(mask, dtype):
    g = _graph(mask, dtype)
    out = attention_masks(g)
    op = _attention(out)
    assert len(op.inputs) == 3 and op.attr("causal") is False
    assert_same(g, out)


def test_a_bias_repeated_over_the_batch_keeps_one_row():
    """T5's position bias, materialized for every batch row."""
    rng = np.random.default_rng(0)
    bias = np.broadcast_to(rng.standard_normal((1, 3, 7, 7)), (4, 3, 7, 7)).astype(np.float32)
    g = _graph(bias, F32, b=4)
    out = attention_masks(g)
    mask = _attention(out).inputs[3]
    assert tuple(mask.type.shape) == (1, 3, 7, 7)
    assert_same(g, out)


def test_other_masks_are_left_alone():
    rng = np.random.default_rng(1)
    padding = rng.random((2, 1, 7, 7)) > 0.3
    padding[..., 0] = True
    shifted = np.tril(np.ones((3, 5), bool), k=2)[None, None]  # bottom-right aligned: not is_causal
    almost = np.where(_tril(1, 7, 7), 0.0, -1000.0)  # a finite bias: softmax keeps a trace of it
    cases = [(_graph(padding, BOOL), 4), (_graph(shifted, BOOL, b=1, h=1, length=3, source=5), 4),
             (_graph(almost, F32), 4), (_graph(_tril(2, 7, 7), BOOL, mask_input=True), 4)]
    for g, inputs in cases:
        out = attention_masks(g)
        assert out is g and len(_attention(out).inputs) == inputs


class _GPTBlock(nn.Module):
    """Attention as transformers' GPT-2/Llama sdpa path calls it: a causal bool mask built from
    aranges, passed as ``attn_mask``."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        i = torch.arange(s, device=x.device)
        mask = (i[None, :] <= i[:, None])[None, None].expand(b, 1, s, s)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(a.transpose(1, 2).reshape(b, s, d))


def test_the_cuda_pipeline_makes_a_traced_causal_mask_causal():
    from tilefx.compiler.capture import capture
    from tilefx.compiler.frontend import lower_to_ir

    torch.manual_seed(0)
    with torch.no_grad():
        graph = lower_to_ir(capture(_GPTBlock().eval(), (torch.randn(2, 11, 16),))).graph
    opts = PassOptions(decompose_attention=False, fuse=False)
    out = optimize(graph, opts)
    assert _attention(out).attr("causal") is True and len(_attention(out).inputs) == 3
    assert_same(graph, out, atol=1e-5, rtol=1e-5)


@st.composite
def masked_attentions(draw):
    """An attention with a constant mask of a random kind (causal, all-keep, random keep, a
    bias), form (bool, additive with -inf / the dtype's lowest / a finite value), shape
    (batch and head axes of 1 or full, repeated or not) and sizes (1 query or key, L != S)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b, h, length, source = (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                            draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kind = draw(st.sampled_from(["causal", "keep all", "random", "bias"]))
    lead = (draw(st.sampled_from([1, b])), draw(st.sampled_from([1, h])))
    if kind == "causal":
        keep = np.broadcast_to(np.tril(np.ones((length, source), bool)), lead + (length, source))
    elif kind == "keep all":
        keep = np.ones(lead + (length, source), bool)
    else:
        keep = rng.random(lead + (length, source)) > 0.3
        keep[..., 0] = True  # no query row masked from every key
        if draw(st.booleans()):  # the same for every batch row
            keep = np.broadcast_to(keep[:1], keep.shape)
    form = draw(st.sampled_from(["bool", "-inf", "lowest", "finite"]))
    if kind == "bias":
        mask, dtype = rng.standard_normal(keep.shape).astype(np.float32), F32
    elif form == "bool":
        mask, dtype = keep, BOOL
    else:
        low = {"-inf": -np.inf, "lowest": np.finfo(np.float32).min, "finite": -30.0}[form]
        mask, dtype = np.where(keep, 0.0, low).astype(np.float32), F32
    removes_outright = kind != "bias" and form != "finite"
    full = np.broadcast_to(keep, (b, h, length, source))
    expect = ("none" if kind != "bias" and full.all() else  # nothing removed: all True / all 0.0
              "causal" if removes_outright and np.array_equal(full[0, 0], np.tril(np.ones((length, source), bool)))
              and (full == full[:1, :1]).all() else "mask")
    return _graph(np.ascontiguousarray(mask), dtype, b=b, h=h, length=length, source=source), expect


@property_budget(40)
@given(masked_attentions())
def test_any_constant_mask_computes_the_same(case):
    g, expect = case
    out = attention_masks(g)
    assert_same(g, out, atol=1e-5, rtol=1e-5)
    op = _attention(out)
    got = "causal" if op.attr("causal") else "none" if len(op.inputs) == 3 else "mask"
    assert got == expect
