"""bf16 constants through the passes: folded like fp16 ones, never a kernel of their own.

numpy has no bfloat16, so a bf16 weight is held as ``cast(const f32 -> bf16)``
(the frontend's form, and ``Rewriter.typed_const``'s). Constant folding and
batch-norm folding see through that cast (``held_array``) and fold bf16 values
as they fold fp16 ones; fusion leaves the remaining casts at the top level,
where the runtime casts them once. So a bf16 graph has the kernels of its fp16
twin: before, every weight cast was a kernel and BN parameters a kernel each.
"""

from __future__ import annotations

import numpy as np
import torch
from passes_testing import assert_fused_top_level, assert_same, kernel_summary, weights

from tilefx.ir import DType, GraphBuilder, TensorType
from tilefx.ir.graph import Graph
from tilefx.ir.interpreter import run_graph
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.fold import fold_constants
from tilefx.passes.rewrite import round_to_bf16

BF16, F16 = DType.bfloat16, DType.float16


def param(b: GraphBuilder, array: np.ndarray, name: str, dtype: DType):
    """A weight as the frontend emits it: a plain const, or for bf16 the f32 array cast."""
    if dtype == BF16:
        return b.op("cast", b.const(round_to_bf16(array), name), dtype=BF16)
    return b.const(array.astype(dtype.numpy_name), name)


def top_level_casts(graph: Graph) -> int:
    return sum(op.name == "cast" for op in graph.ops)


def inputs_of(graph: Graph, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(v.type.shape), generator=g).to(getattr(torch, v.type.dtype.name))
            for v in graph.inputs]


def linear_graph(dtype: DType) -> Graph:
    """x @ W^T + b, then gelu, then a second linear: what a traced nn.Linear gives."""
    b = GraphBuilder("mlp")
    x = b.input(TensorType(dtype, (4, 8)), "x")
    w1 = b.op("permute", param(b, weights(16, 8), "fc1.weight", dtype), dims=(1, 0))
    h = b.op("gelu", b.op("add", b.op("matmul", x, w1), param(b, weights(16, seed=1), "fc1.bias", dtype)))
    w2 = b.op("permute", param(b, weights(8, 16, seed=2), "fc2.weight", dtype), dims=(1, 0))
    return b.finish([b.op("add", b.op("matmul", h, w2), param(b, weights(8, seed=3), "fc2.bias", dtype))])


def conv_bn_graph(dtype: DType) -> Graph:
    b = GraphBuilder("block")
    x = b.input(TensorType(dtype, (2, 4, 6, 6)), "x")
    y = b.op("conv2d", x, param(b, weights(4, 4, 3, 3), "conv1.weight", dtype), padding=(1, 1))
    bn = [param(b, weights(4, seed=s, positive=(s == 2)), f"bn1.p{s}", dtype) for s in range(1, 5)]
    return b.finish([b.op("relu", b.op("batch_norm", y, *bn))])


def test_fold_sees_through_a_bf16_weight_cast() -> None:
    """permute(cast(W)) folds to cast(W^T): the transpose is done once, at compile time."""
    g = linear_graph(BF16)
    out = fold_constants(g)
    assert [op.name for op in out.ops if op.name not in ("const", "cast")] == ["matmul", "add", "gelu",
                                                                            "matmul", "add"]
    for op in out.ops:
        if op.name == "cast":  # every bf16 weight is held, f32 values exactly bf16
            held = out.constants[out.producers()[op.inputs[0].name].attr("name")]
            assert held.dtype == np.float32 and not (held.view(np.uint32) & 0xFFFF).any()
    assert_same(g, out, atol=0, rtol=0)  # a transpose and exact casts: bit for bit


def test_bf16_graphs_fuse_like_fp16_ones() -> None:
    for make in (linear_graph, conv_bn_graph):
        half, bf16 = (optimize(make(d), PassOptions(verify=True)) for d in (F16, BF16))
        assert_fused_top_level(bf16)
        assert kernel_summary(bf16) == kernel_summary(half), make.__name__
        assert len(kernels(bf16)) == len(kernels(half))
        # the weights are casts at the top level, read by the kernels: no kernel casts a weight
        assert top_level_casts(bf16) == sum(op.name == "const" and op.attr("name") is not None
                                            for op in bf16.ops)
        for k in kernels(bf16):
            assert "cast" not in [op.name for op in k.body.ops], k.attr("name")


def test_bf16_batch_norm_is_folded_into_the_conv_in_float64() -> None:
    """Like fp16: scale and shift computed in float64 and rounded once (here to bf16),
    the scale folded into the conv weights; close to the fp32 block."""
    g32 = conv_bn_graph(DType.float32)
    out = optimize(conv_bn_graph(BF16), PassOptions(verify=True))
    assert kernel_summary(out) == [("contraction", ["conv2d", "add", "relu"])]
    x = inputs_of(g32)[0]
    want = run_graph(g32, [x])[0]
    got = run_graph(out, [x.to(torch.bfloat16)])[0]
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)


def test_a_norm_weight_shared_by_two_layer_norms_is_no_kernel_output() -> None:
    """Fresh LayerNorms all have weight ones, so CSE shares one bf16 weight between them.
    Fused into the first norm's kernel, that [H] cast became an extra output the Triton
    reduction template refused; at the top level it is just an input of both kernels."""
    b = GraphBuilder("ln2")
    x = b.input(TensorType(BF16, (2, 7, 97)), "x")
    w = param(b, np.ones(97, np.float32), "ln.weight", BF16)
    c = param(b, np.zeros(97, np.float32), "ln.bias", BF16)
    h = b.op("layer_norm", x, w, c, normalized_ndim=1)
    y = b.op("layer_norm", b.op("add", h, x), w, c, normalized_ndim=1)
    out = optimize(b.finish([y]), PassOptions(verify=True))
    assert_fused_top_level(out)
    assert [k.attr("kind") for k in kernels(out)] == ["reduction", "reduction"]
    for k in kernels(out):
        assert all(tuple(r.type.shape) == (2, 7, 97) for r in k.results), k
