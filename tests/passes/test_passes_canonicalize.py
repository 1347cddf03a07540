"""canonicalize: batch_norm -> affine, attention -> matmul/softmax, algebraic no-ops removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from passes_testing import F32, assert_same, compute_ops, weights

from tilefx.ir import DType, GraphBuilder, TensorType, structural_equal, symbol
from tilefx.ir.interpreter import run_graph
from tilefx.ir.parser import parse_graph
from tilefx.passes.canonicalize import canonicalize
from tilefx.passes.cleanup import dce


def canon(graph, **kw):
    return dce(canonicalize.bind(**kw)(graph))


@pytest.mark.parametrize("const_params", [True, False])
def test_batch_norm_becomes_mul_add(const_params: bool) -> None:
    b = GraphBuilder("bn")
    x = b.input(TensorType(F32, (2, 3, 4, 5)), "x")
    arrays = [weights(3, seed=1), weights(3, seed=2, positive=True), weights(3, seed=3), weights(3, seed=4)]
    names = ["bn.running_mean", "bn.running_var", "bn.weight", "bn.bias"]
    if const_params:
        params = [b.const(a, n) for a, n in zip(arrays, names)]
    else:
        params = [b.input(TensorType(F32, (3,)), n) for n in names]
    g = b.finish([b.op("batch_norm", x, *params, eps=1e-3)])
    out = canon(g)
    assert "batch_norm" not in compute_ops(out)
    assert compute_ops(out)[-2:] == ["mul", "add"]
    if const_params:
        assert compute_ops(out) == ["mul", "add"]
        assert set(out.constants) == {"bn_scale", "bn_shift"}
        assert out.constants["bn_scale"].shape == (3, 1, 1)
        xt = torch.randn(2, 3, 4, 5)
        want = F.batch_norm(xt, *(torch.from_numpy(a) for a in arrays), training=False, eps=1e-3)
        torch.testing.assert_close(run_graph(out, [xt])[0], want, atol=1e-5, rtol=1e-5)
    else:
        inputs = [torch.randn(2, 3, 4, 5), torch.randn(3), torch.rand(3) + 0.5, torch.randn(3), torch.randn(3)]
        assert_same(g, out, inputs)


def _attention_graph(L: int, S: int, E: int, mask_dtype: DType | None, causal: bool, scale=None):
    b = GraphBuilder("attn")
    q = b.input(TensorType(F32, (2, 3, L, E)), "q")
    k = b.input(TensorType(F32, (2, 3, S, E)), "k")
    v = b.input(TensorType(F32, (2, 3, S, 6)), "v")
    args = [q, k, v]
    if mask_dtype is not None:
        args.append(b.input(TensorType(mask_dtype, (L, S)), "mask"))
    return b.finish([b.op("attention", *args, causal=causal, scale=scale)])


@pytest.mark.parametrize("mask,causal,scale", [
    (None, False, None), (None, True, None), (DType.bool, False, None), (F32, False, 0.3), (None, True, 0.5)])
def test_attention_decomposition_matches_sdpa(mask, causal, scale) -> None:
    L, S, E = 5, 7, 8
    g = _attention_graph(L, S, E, mask, causal, scale)
    out = canon(g)
    assert "attention" not in compute_ops(out)
    assert compute_ops(out).count("matmul") == 2 and "softmax" in compute_ops(out)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 3, n, e, generator=gen) for n, e in ((L, E), (S, E), (S, 6)))
    inputs = [q, k, v]
    m = None
    if mask == DType.bool:
        m = torch.rand(L, S, generator=gen) > 0.3
        m[:, 0] = True  # no fully masked row (NaN in both, but nothing to compare)
        inputs.append(m)
    elif mask is not None:
        m = torch.randn(L, S, generator=gen)
        inputs.append(m)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=scale)
    torch.testing.assert_close(run_graph(out, inputs)[0], want, atol=1e-5, rtol=1e-5)
    if causal:
        assert "causal_mask" in out.constants and out.constants["causal_mask"].dtype == np.bool_


def test_causal_attention_with_symbolic_length_uses_iota() -> None:
    s = symbol("s0")
    b = GraphBuilder("attn")
    q = b.input(TensorType(F32, (1, s, 4)), "q")
    k = b.input(TensorType(F32, (1, s, 4)), "k")
    v = b.input(TensorType(F32, (1, s, 4)), "v")
    g = b.finish([b.op("attention", q, k, v, causal=True)])
    out = canon(g)
    assert compute_ops(out).count("iota") == 2 and "attention" not in compute_ops(out)
    q, k, v = (torch.randn(1, 6, 4) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(run_graph(out, [q, k, v])[0], want, atol=1e-5, rtol=1e-5)


def test_attention_kept_when_not_decomposing() -> None:
    g = _attention_graph(4, 4, 8, None, False)
    assert compute_ops(canon(g, decompose_attention=False)) == ["attention"]


def test_algebraic_noops_ir_text() -> None:
    before = parse_graph("""
graph @g(%x: f32[2, 3, 4]) {
  %one = const {value = 1.0} : f32[]
  %zero = const {value = 0.0} : f32[]
  %a = identity(%x) : f32[2, 3, 4]
  %b = mul(%a, %one) : f32[2, 3, 4]
  %c = add(%zero, %b) : f32[2, 3, 4]
  %d = clamp(%c) {max = none, min = 0} : f32[2, 3, 4]
  %e = permute(%d) {dims = [2, 0, 1]} : f32[4, 2, 3]
  %f = permute(%e) {dims = [1, 2, 0]} : f32[2, 3, 4]
  %g = reshape(%f) {shape = [6, 4]} : f32[6, 4]
  %h = reshape(%g) {shape = [2, 12]} : f32[2, 12]
  %i = cast(%h) {dtype = f32} : f32[2, 12]
  return %i
}
""")
    expected = parse_graph("""
graph @g(%x: f32[2, 3, 4]) {
  %d = relu(%x) : f32[2, 3, 4]
  %h = reshape(%d) {shape = [2, 12]} : f32[2, 12]
  return %h
}
""")
    out = canon(before)
    assert structural_equal(out, expected), str(out)
    assert_same(before, out)


def test_mul_by_one_that_broadcasts_is_kept() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (3,)), "x")
    ones = b.const(np.ones((2, 3), np.float32), "ones")
    g = b.finish([b.op("mul", x, ones)])
    assert compute_ops(canon(g)) == ["mul"]  # the result is [2, 3], not x's [3]
