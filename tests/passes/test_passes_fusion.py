"""fusion: which ops end up in which kernel, and the fused graph computes the same thing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from passes_testing import F32, assert_fused_top_level, assert_same, kernel_summary, weights

from tilefx.ir import DType, GraphBuilder, TensorType
from tilefx.ir.interpreter import run_graph
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.fusion import fuse


def fused(graph, atol: float = 1e-5):
    out = optimize(graph, PassOptions(verify=True))
    assert_fused_top_level(out)
    assert_same(graph, out, atol=atol, rtol=1e-4)
    return out


def mlp_graph():
    b = GraphBuilder("mlp")
    x = b.input(TensorType(F32, (4, 8)), "x")
    h = b.op("matmul", x, b.const(weights(8, 16), "fc1.weight"))
    h = b.op("gelu", b.op("add", h, b.const(weights(16, seed=1), "fc1.bias")), approximate="tanh")
    y = b.op("add", b.op("matmul", h, b.const(weights(16, 8, seed=2), "fc2.weight")),
             b.const(weights(8, seed=3), "fc2.bias"))
    return b.finish([y])


def test_mlp_matmul_bias_gelu_in_one_kernel() -> None:
    out = fused(mlp_graph())
    assert kernel_summary(out) == [("contraction", ["matmul", "add", "gelu"]),
                                   ("contraction", ["matmul", "add"])]
    names = [k.attr("name") for k in kernels(out)]
    assert names[0].startswith("fused_matmul_add_gelu") and len(set(names)) == 2


def test_conv_bn_relu_residual() -> None:
    b = GraphBuilder("block")
    x = b.input(TensorType(F32, (2, 4, 6, 6)), "x")
    y = b.op("conv2d", x, b.const(weights(4, 4, 3, 3), "conv1.weight"), padding=(1, 1))
    bn = [b.const(weights(4, seed=s, positive=(s == 2)), f"bn1.p{s}") for s in range(1, 5)]
    y = b.op("relu", b.op("batch_norm", y, *bn))
    y = b.op("conv2d", y, b.const(weights(4, 4, 3, 3, seed=5), "conv2.weight"), padding=(1, 1))
    y = b.op("relu", b.op("add", b.op("add", y, b.const(weights(4, 1, 1, seed=6), "conv2.bias")), x))
    out = fused(b.finish([y]), atol=1e-4)  # batch norm folded into the weights: rounding
    assert kernel_summary(out) == [("contraction", ["conv2d", "add", "relu"]),
                                   ("contraction", ["conv2d", "add", "add", "relu"])]


def test_softmax_with_prologue_and_epilogue() -> None:
    b = GraphBuilder("sm")
    x = b.input(TensorType(F32, (3, 10)), "x")
    s = b.op("softmax", b.op("mul", x, b.scalar(0.5, F32)), dim=-1)
    out = fused(b.finish([b.op("mul", s, b.const(weights(10), "gain"))]))
    assert kernel_summary(out) == [("reduction", ["mul", "softmax", "mul"])]
    body = kernels(out)[0].body
    assert [v.name for v in body.inputs] == ["x", "gain"]  # the scalar is copied in, not passed


def test_layer_norm_gelu_and_residual_stream_is_an_extra_output() -> None:
    b = GraphBuilder("ln")
    x = b.input(TensorType(F32, (2, 5, 8)), "x")
    r = b.input(TensorType(F32, (2, 5, 8)), "r")
    h = b.op("add", x, r)
    ln = b.op("layer_norm", h, b.const(weights(8), "ln.weight"), b.const(weights(8, seed=1), "ln.bias"),
              normalized_ndim=1)
    y = b.op("matmul", b.op("gelu", ln), b.const(weights(8, 8, seed=2), "proj"))
    out = fused(b.finish([b.op("add", y, h)]))
    assert kernel_summary(out) == [("reduction", ["add", "layer_norm", "gelu"]),
                                   ("contraction", ["matmul", "add"])]
    first = kernels(out)[0]
    assert len(first.results) == 2  # h (read again by the residual add) and gelu(ln)


def test_reduction_then_broadcast_consumer_starts_a_new_kernel() -> None:
    b = GraphBuilder("norm")
    x = b.input(TensorType(F32, (4, 6)), "x")
    e = b.op("exp", x)
    s = b.op("sum", e, dims=(1,), keepdim=True)
    out = fused(b.finish([b.op("div", e, s)]))
    assert kernel_summary(out) == [("reduction", ["exp", "sum"]), ("pointwise", ["div"])]
    assert len(kernels(out)[0].results) == 2  # exp is read again by the div


def test_fallback_in_the_middle_splits_kernels() -> None:
    b = GraphBuilder("fb")
    x = b.input(TensorType(F32, (3, 5)), "x")
    y = b.op("exp", x)
    (c,) = b.op_typed("fallback", [y], [y.type], target="aten::cumsum.default",
                      args=json.dumps({"args": [{"%": 0}, 1], "kwargs": {}}))
    z = b.op("add", b.op("sigmoid", c), y)  # y: two users, one across the fallback
    out = fused(b.finish([z]))
    assert [op.name for op in out.ops if op.name != "const"] == ["kernel", "fallback", "kernel"]
    assert kernel_summary(out) == [("pointwise", ["exp"]), ("pointwise", ["sigmoid", "add"])]


def test_value_with_two_users_becomes_extra_output_no_cycle() -> None:
    # a -> exp -> (tanh, fallback) ; add(tanh, fallback out): the add cannot join exp's
    # kernel together with the fallback's result without a cycle; it joins tanh's side.
    b = GraphBuilder("two")
    x = b.input(TensorType(F32, (8,)), "x")
    e = b.op("exp", x)
    t = b.op("tanh", e)
    (f,) = b.op_typed("fallback", [e], [e.type], target="aten::cumsum.default",
                      args=json.dumps({"args": [{"%": 0}, 0], "kwargs": {}}))
    out = fused(b.finish([b.op("add", t, f), e]))
    summary = kernel_summary(out)
    assert summary[0] == ("pointwise", ["exp", "tanh"]) and summary[1] == ("pointwise", ["add"])
    assert len(kernels(out)[0].results) == 2


def test_standalone_permute_is_a_kernel_and_reshape_a_view() -> None:
    b = GraphBuilder("views")
    x = b.input(TensorType(F32, (2, 3, 4)), "x")
    p = b.op("permute", x, dims=(2, 0, 1))
    r = b.op("reshape", x, shape=(6, 4))
    q = b.op("reshape", b.op("relu", x), shape=(24,))  # trailing reshape peeled off the kernel
    out = fused(b.finish([p, r, q]))
    assert kernel_summary(out) == [("pointwise", ["permute"]), ("pointwise", ["relu"])]
    assert [op.name for op in out.ops].count("reshape") == 2


def test_injective_prologue_fuses_into_contraction_and_attention_kernels() -> None:
    b = GraphBuilder("attn")
    q, k, v = (b.input(TensorType(F32, (2, 5, 8)), n) for n in "qkv")
    out = fused(b.finish([b.op("attention", q, k, v, causal=True)]))
    assert kernel_summary(out) == [("contraction", ["permute", "matmul", "mul", "where"]),
                                   ("reduction", ["softmax"]), ("contraction", ["matmul"])]
    args = rand = [torch.randn(2, 5, 8) for _ in range(3)]
    torch.testing.assert_close(run_graph(out, args)[0], F.scaled_dot_product_attention(*rand, is_causal=True),
                               atol=1e-5, rtol=1e-5)


def test_attention_kept_whole_is_its_own_kernel() -> None:
    b = GraphBuilder("attn")
    q, k, v = (b.input(TensorType(F32, (2, 5, 8)), n) for n in "qkv")
    g = b.finish([b.op("relu", b.op("attention", q, k, v))])
    out = optimize(g, PassOptions(decompose_attention=False, verify=True))
    assert kernel_summary(out) == [("contraction", ["attention"]), ("pointwise", ["relu"])]
    assert_same(g, out)


def test_two_contractions_never_share_a_kernel() -> None:
    b = GraphBuilder("mm")
    x = b.input(TensorType(F32, (3, 4)), "x")
    a = b.op("matmul", x, b.const(weights(4, 4), "w1"))
    c = b.op("matmul", x, b.const(weights(4, 4, seed=1), "w2"))
    out = fused(b.finish([b.op("add", a, c)]))
    assert kernel_summary(out) == [("contraction", ["matmul"]), ("contraction", ["matmul", "add"])]


def test_pointwise_diamond_and_embedding_take() -> None:
    b = GraphBuilder("emb")
    idx = b.input(TensorType(DType.int64, (2, 3)), "idx")
    e = b.op("take", b.const(weights(10, 4), "emb.weight"), idx)
    y = b.op("mul", b.op("sin", e), b.op("cos", e))
    out = fused(b.finish([b.op("cast", y, dtype=DType.float64)]))
    assert kernel_summary(out) == [("pointwise", ["take", "sin", "cos", "mul", "cast"])]


def test_fusion_is_idempotent_on_a_fused_graph() -> None:
    once = fused(mlp_graph())
    twice = fuse(once)
    assert [k.attr("name") for k in kernels(twice)] == [k.attr("name") for k in kernels(once)]


@pytest.mark.parametrize("seed", [0, 1])
def test_pipeline_keeps_numerics_on_a_small_transformer_block(seed: int) -> None:
    b = GraphBuilder("block")
    x = b.input(TensorType(F32, (2, 6, 8)), "x")
    ln = b.op("layer_norm", x, b.const(weights(8, seed=seed), "ln1.weight"),
              b.const(weights(8, seed=seed + 1), "ln1.bias"), normalized_ndim=1)
    qkv = [b.op("matmul", ln, b.op("permute", b.const(weights(8, 8, seed=seed + i), f"w{n}"), dims=(1, 0)))
           for i, n in enumerate("qkv")]
    heads = [b.op("permute", b.op("reshape", t, shape=(2, 6, 2, 4)), dims=(0, 2, 1, 3)) for t in qkv]
    a = b.op("attention", *heads, causal=True)
    a = b.op("reshape", b.op("permute", a, dims=(0, 2, 1, 3)), shape=(2, 6, 8))
    h = b.op("add", x, b.op("matmul", a, b.const(weights(8, 8, seed=9), "wo")))
    out = fused(b.finish([h]))
    assert all(k.attr("kind") in ("pointwise", "reduction", "contraction") for k in kernels(out))
    assert not any(op.name == "permute" and op.inputs[0].name.startswith("w") for k in kernels(out)
                   for op in k.body.ops)  # weight transposes were folded at compile time
    assert np.all([len(k.body.ops) >= 1 for k in kernels(out)])


def test_sliced_mask_joins_the_matmul_epilogue() -> None:
    b = GraphBuilder("mask")
    x = b.input(TensorType(F32, (4, 8)), "x")
    mask = b.input(TensorType(DType.bool, (6, 6)), "mask")
    s = b.op("matmul", x, b.op("permute", x, dims=(1, 0)))
    keep = b.op("slice", b.op("slice", mask, axis=0, start=0, end=4), axis=1, start=0, end=4)
    out = fused(b.finish([b.op("where", keep, s, b.scalar(-1e4, F32))]))
    assert kernel_summary(out) == [("contraction", ["permute", "matmul", "slice", "slice", "where"])]


def _kept_whole(graph):
    out = optimize(graph, PassOptions(decompose_attention=False, verify=True))
    assert_fused_top_level(out)
    assert_same(graph, out, atol=1e-4, rtol=1e-4)
    return out


def test_attention_kept_whole_reads_the_qkv_head_split_in_place() -> None:
    """GPT-2: q, k, v are column slices of one projection, split into heads. The attention
    kernel reads them through the slices (no three copies), and the GELU after a flattened
    matmul's reshape joins the matmul (reshapes sink below elementwise ops)."""
    b = GraphBuilder("gpt")
    x = b.input(TensorType(F32, (2, 5, 16)), "x")
    qkv = b.op("reshape", b.op("add", b.op("matmul", b.op("reshape", x, shape=(10, 16)),
                                           b.const(weights(16, 48), "c_attn.weight")),
                               b.const(weights(48, seed=1), "c_attn.bias")), shape=(2, 5, 48))
    heads = [b.op("permute", b.op("reshape", b.op("slice", qkv, axis=2, start=16 * p, end=16 * p + 16, step=1),
                                  shape=(2, 5, 2, 8)), dims=(0, 2, 1, 3)) for p in range(3)]
    a = b.op("reshape", b.op("permute", b.op("attention", *heads, causal=True), dims=(0, 2, 1, 3)), shape=(10, 16))
    h = b.op("reshape", b.op("matmul", a, b.const(weights(16, 32, seed=2), "fc.weight")), shape=(2, 5, 32))
    g = b.op("mul", b.op("tanh", h), b.scalar(0.5, F32))
    out = _kept_whole(b.finish([g]))
    assert kernel_summary(out) == [("contraction", ["matmul", "add"]),
                                   ("contraction", ["slice", "reshape", "permute"] * 3 + ["attention"]),
                                   ("contraction", ["permute", "reshape", "matmul", "tanh", "mul"])]


def test_attention_kept_whole_reads_repeated_kv_heads_in_place() -> None:
    """Llama's GQA repeats 1 KV head for 2 query heads (reshape + broadcast_to + reshape): the
    attention reads the repeated heads in place instead of a kernel writing them out."""
    b = GraphBuilder("gqa")
    q = b.input(TensorType(F32, (2, 2, 5, 8)), "q")
    k, v = (b.input(TensorType(F32, (2, 1, 7, 8)), n) for n in ("k", "v"))
    rep = [b.op("reshape", b.op("broadcast_to", b.op("reshape", t, shape=(2, 1, 1, 7, 8)), shape=(2, 1, 2, 7, 8)),
                shape=(2, 2, 7, 8)) for t in (b.op("relu", k), v)]
    out = _kept_whole(b.finish([b.op("attention", q, *rep)]))
    summary = kernel_summary(out)
    assert summary[-1][0] == "contraction" and summary[-1][1].count("broadcast_to") == 2, summary
    assert all("broadcast_to" not in ops for _, ops in summary[:-1]), summary


def test_repeated_kv_heads_are_read_through_their_head_permute() -> None:
    """Llama's V: a projection's columns split into KV heads (reshape + permute), then
    repeated for GQA. The attention reads V through the permute too: no kernel copying V into
    head-major order first (K, after its RoPE kernel, is read as that kernel wrote it)."""
    b = GraphBuilder("gqa_v")
    x = b.input(TensorType(F32, (2, 7, 16)), "x")
    q = b.input(TensorType(F32, (2, 4, 7, 8)), "q")

    def kv_heads(name, seed):
        proj = b.op("matmul", x, b.const(weights(16, 16, seed=seed), name))
        return b.op("permute", b.op("reshape", proj, shape=(2, 7, 2, 8)), dims=(0, 2, 1, 3))

    k, v = b.op("relu", kv_heads("k.weight", 1)), kv_heads("v.weight", 2)
    rep = [b.op("reshape", b.op("broadcast_to", b.op("reshape", t, shape=(2, 2, 1, 7, 8)), shape=(2, 2, 2, 7, 8)),
                shape=(2, 4, 7, 8)) for t in (k, v)]
    out = _kept_whole(b.finish([b.op("attention", q, *rep)]))
    summary = kernel_summary(out)
    assert len(summary) == 4, summary  # the two projections, K's relu, the attention
    assert summary[-1][0] == "contraction" and summary[-1][1][0] == "permute", summary
    assert sorted(ops.count("permute") for _, ops in summary) == [0, 0, 1, 1], summary
    assert summary[-1][1].count("permute") == 1 and "relu" not in summary[-1][1], summary


def test_widening_cast_for_a_reduction_is_its_prologue_not_the_matmul_epilogue() -> None:
    """``float(h)`` read only by a reduction: in the matmul's epilogue it would be written out
    at twice the matmul result's bytes; the reduction casts what it reads. A widening cast that
    an elementwise op reads still joins the epilogue."""
    b = GraphBuilder("cast")
    x = b.input(TensorType(DType.float16, (4, 8)), "x")
    h = b.op("matmul", x, b.const(weights(8, 16).astype(np.float16), "w"))
    s = b.op("sum", b.op("cast", h, dtype=F32), dims=(1,), keepdim=True)
    g2 = b.op("gelu", b.op("cast", b.op("add", h, h), dtype=F32))
    out = optimize(b.finish([s, g2, h]), PassOptions(verify=True))
    assert kernel_summary(out) == [("contraction", ["matmul", "add", "cast", "gelu"]),
                                   ("reduction", ["cast", "sum"])]
