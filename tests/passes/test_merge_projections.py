"""q, k, v projections of one input packed into one matmul (passes/merge_projections.py):
exact, the results as column slices the attention and RoPE read in place; SwiGLU's gate and
up, results a kernel would compute on (an epilogue), graph outputs and mixed biases stay apart."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.passes.passes_testing import assert_same, nonzero_inputs, property_budget, weights
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.merge_projections import merge_projections

F32, BF16 = DType.float32, DType.bfloat16


def _linear(b, x, k, n, seed, bias=True, dtype=F32):
    w = weights(k, n, seed=seed)
    if dtype == BF16:
        h = b.op("matmul", x, b.op("cast", b.const(w, f"w{seed}"), dtype=BF16))
        return b.op("add", h, b.op("cast", b.const(weights(n, seed=seed + 100), f"b{seed}"), dtype=BF16)) if bias else h
    h = b.op("matmul", x, b.const(w, f"w{seed}"))
    return b.op("add", h, b.const(weights(n, seed=seed + 100), f"b{seed}")) if bias else h


def _heads(b, t, heads):
    bs, s, n = t.type.shape
    return b.op("permute", b.op("reshape", t, shape=(bs, s, heads, n // heads)), dims=(0, 2, 1, 3))


def attention_block(bias=True, kv_heads=2, dtype=F32, s=5) -> Graph:
    """BERT (bias, 2 heads) or Llama-GQA-like (no bias, 1 KV head repeated) self-attention."""
    b = GraphBuilder("attn")
    x = b.input(TensorType(dtype, (2, s, 16)), "x")
    q = _heads(b, _linear(b, x, 16, 16, 1, bias, dtype), 2)
    k, v = (_heads(b, _linear(b, x, 16, 8 * kv_heads, seed, bias, dtype), kv_heads) for seed in (2, 3))
    if kv_heads == 1:
        k, v = (b.op("reshape", b.op("broadcast_to", b.op("reshape", t, shape=(2, 1, 1, s, 8)),
                                     shape=(2, 1, 2, s, 8)), shape=(2, 2, s, 8)) for t in (k, v))
    a = b.op("reshape", b.op("permute", b.op("attention", q, k, v), dims=(0, 2, 1, 3)), shape=(2, s, 16))
    return b.finish([_linear(b, a, 16, 16, 4, bias, dtype)])


def _matmuls(g: Graph) -> list:
    return [op for op in g.ops if op.name == "matmul"]


@pytest.mark.parametrize("bias, kv_heads", [(True, 2), (False, 1)], ids=["bert", "gqa"])
def test_qkv_packed_into_one_matmul(bias, kv_heads):
    g = attention_block(bias, kv_heads)
    out = merge_projections(g)
    assert_same(g, out)
    packed = _matmuls(out)[0]
    assert len(_matmuls(out)) == 2 and packed.inputs[1].type.shape == (16, 16 + 2 * 8 * kv_heads)
    slices = [op for op in out.ops if op.name == "slice"]
    assert [(op.attr("start"), op.attr("end")) for op in slices] == [(0, 16), (16, 16 + 8 * kv_heads),
                                                                      (16 + 8 * kv_heads, 16 + 16 * kv_heads)]
    # through the cuda pipeline: the attention reads its q, k, v from the packed output in place
    fused = optimize(g, PassOptions(decompose_attention=False, merge_projections=True, verify=True))
    assert_same(g, fused, atol=1e-4, rtol=1e-4)
    bodies = [[o.name for o in k.body.ops] for k in kernels(fused)]
    assert len(bodies) == 3, bodies  # packed projection, attention, output projection
    assert bodies[1].count("slice") == 3 and bodies[1][-1] == "attention", bodies


def test_bf16_weights_pack_exactly():
    g = attention_block(dtype=BF16)
    out = merge_projections(g)
    assert len(_matmuls(out)) == 2
    assert_same(g, out, atol=0, rtol=0)


def test_swiglu_gate_and_up_stay_apart():
    """``silu(x @ Wg) * (x @ Wu)``: the product is the gate matmul's epilogue reading up's
    result; packed, it would be a kernel of its own."""
    b = GraphBuilder("mlp")
    x = b.input(TensorType(F32, (3, 16)), "x")
    gate, up = (_linear(b, x, 16, 24, seed, bias=False) for seed in (1, 2))
    g = b.finish([_linear(b, b.op("mul", b.op("silu", gate), up), 24, 16, 3, bias=False)])
    assert merge_projections(g) is g


def test_outputs_mixed_biases_and_variable_weights_stay_apart():
    b = GraphBuilder("misc")
    x = b.input(TensorType(F32, (3, 16)), "x")
    w = b.input(TensorType(F32, (16, 8)), "w")
    with_bias = _heads(b, b.op("reshape", _linear(b, x, 16, 8, 1), shape=(1, 3, 8)), 2)
    without = _heads(b, b.op("reshape", _linear(b, x, 16, 8, 2, bias=False), shape=(1, 3, 8)), 2)
    variable = _heads(b, b.op("reshape", b.op("matmul", x, w), shape=(1, 3, 8)), 2)
    returned = _linear(b, x, 16, 8, 3, bias=False)  # a graph output: the caller gets a tensor of its own
    viewed = b.op("reshape", _linear(b, x, 16, 8, 4, bias=False), shape=(2, 12))  # and a view of one
    g = b.finish([with_bias, without, variable, returned, viewed])
    assert merge_projections(g) is g


def test_only_the_cuda_backend_turns_it_on():
    from tilefx.codegen.triton.backend import TritonBackend
    from tilefx.codegen.tvm.backend import TVMBackend

    assert TritonBackend.pass_defaults(None).merge_projections
    assert not TVMBackend.pass_defaults(None).merge_projections


def test_three_projections_of_other_sizes_pack_in_order():
    b = GraphBuilder("sizes")
    x = b.input(TensorType(F32, (4, 7)), "x")
    outs = [b.op("permute", b.op("reshape", _linear(b, x, 7, n, seed), shape=(2, 2, n)), dims=(0, 2, 1))
            for seed, n in ((1, 3), (2, 11), (3, 5))]
    g = b.finish(outs)
    out = merge_projections(g)
    assert _matmuls(out)[0].inputs[1].type.shape == (7, 19)
    assert_same(g, out)
    np.testing.assert_array_equal(
        [op.attr("end") - op.attr("start") for op in out.ops if op.name == "slice"], [3, 11, 5])


@st.composite
def projection_graphs(draw):
    """Several matmuls of one input (awkward sizes: 1 row, 1 column, primes), each with or
    without a bias, read by a view (reshape / permute / slice), an elementwise op, a second
    projection's product, or returned: whatever the pass packs must compute the same."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder("proj")
    m, k = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    x = b.input(TensorType(F32, (m, k)), "x")
    outs = []
    bias = draw(st.booleans())
    for i in range(draw(st.integers(2, 5))):
        n = draw(st.sampled_from([1, 2, 3, 5, 8, 11]))
        h = b.op("matmul", x, b.const(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"))
        if bias if draw(st.integers(0, 3)) else not bias:  # mostly all or none, sometimes mixed
            h = b.op("add", h, b.const(rng.standard_normal(n).astype(np.float32), f"b{i}"))
        reader = draw(st.sampled_from(["reshape", "permute", "slice", "reshape", "permute", "relu", "output"]))
        if reader == "reshape":
            outs.append(b.op("relu", b.op("reshape", h, shape=(n, m))))
        elif reader == "permute":
            outs.append(b.op("permute", h, dims=(1, 0)))
        elif reader == "slice":
            outs.append(b.op("relu", b.op("slice", h, axis=1, start=0, end=max(1, n // 2), step=1)))
        elif reader == "relu":
            outs.append(b.op("relu", h))
        else:
            outs.append(h)
    if draw(st.booleans()):  # SwiGLU: the product of two more projections
        n = draw(st.sampled_from([1, 3, 8]))
        gate, up = (b.op("matmul", x, b.const(rng.standard_normal((k, n)).astype(np.float32), f"w{name}"))
                    for name in ("gate", "up"))
        outs.append(b.op("mul", b.op("silu", gate), up))
    return b.finish(outs)


@property_budget(40)
@given(projection_graphs())
def test_any_set_of_projections_computes_the_same(g):
    out = merge_projections(g)
    if any(op.name == "silu" for op in g.ops):  # SwiGLU's gate and up are never packed
        assert {"wgate", "wup"} <= {op.inputs[1].name for op in out.ops if op.name == "matmul"}
    inputs = nonzero_inputs(g)
    assert_same(g, out, inputs, atol=1e-5, rtol=1e-5)
    fused = optimize(g, PassOptions(decompose_attention=False, merge_projections=True, verify=True))
    assert_same(g, fused, inputs, atol=1e-4, rtol=1e-4)
