"""bsr_matmul: the TVM kernel (linear rows and 1x1-conv columns, fused epilogue) vs torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tilefx.ir.builder import GraphBuilder
from tilefx.ir.interpreter import run_graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import optimize
from tilefx.passes.sparsity import from_bsr, to_bsr

pytest.importorskip("tvm")


def sparse_weight(rng, k, n, block, density):
    bk, bn = block
    mask = rng.random((k // bk, n // bn)) < density
    mask[0, 0] = mask[-1, -1] = True  # never all zeros
    w = rng.standard_normal((k, n)).astype(np.float32)
    return w * np.repeat(np.repeat(mask, bk, 0), bn, 1)


def _run_compiled(graph, inputs):
    from tilefx.codegen.tvm import build_kernel

    out = optimize(graph)
    kernels = [op for op in out.ops if op.name == "kernel"]
    assert [k.attr("kind") for k in kernels] == ["sparse_contraction"]
    k = kernels[0]
    env = {v.name: t for v, t in zip(out.inputs, inputs)}
    args = []
    for v in k.inputs:
        if v.name in env:
            args.append(env[v.name].contiguous())
        else:
            const = next(op for op in out.ops if op.name == "const" and op.result == v)
            args.append(torch.from_numpy(out.const_data(const)).clone())
    res = torch.empty(*k.results[0].type.shape)
    build_kernel(k)(*args, res)
    return res


def test_to_bsr_round_trip():
    rng = np.random.default_rng(1)
    w = sparse_weight(rng, 24, 32, (4, 8), 0.3)
    data, indices, indptr = to_bsr(w, (4, 8))
    assert data.shape[1:] == (4, 8) and indptr[-1] == len(indices) == len(data)
    np.testing.assert_array_equal(from_bsr(data, indices, indptr, 24), w)


@pytest.mark.parametrize("m,k,n,block,density", [
    (1, 64, 48, (4, 16), 0.2), (7, 36, 40, (4, 4), 0.3), (13, 32, 33, (1, 1), 0.1),
    (16, 128, 64, (16, 16), 0.1)])
def test_linear_kernel_matches_torch(m, k, n, block, density):
    rng = np.random.default_rng(m + k)
    w = sparse_weight(rng, k, n, block, density)
    bias = rng.standard_normal(n).astype(np.float32)
    b = GraphBuilder("lin")
    x = b.input(TensorType(DType.float32, (m, k)), "x")
    y = b.op("bsr_matmul", x, *(b.const(a, nm) for a, nm in zip(to_bsr(w, block), "dip")))
    z = b.op("gelu", b.op("add", y, b.const(bias, "bias")), approximate="none")
    g = b.finish([z])
    xt = torch.randn(m, k)
    want = torch.nn.functional.gelu(xt @ torch.from_numpy(w) + torch.from_numpy(bias))
    torch.testing.assert_close(run_graph(g, [xt])[0], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_run_compiled(g, [xt]), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,block", [((2, 32, 5, 7), (4, 8)), ((1, 16, 4, 32), (16, 16))])
def test_conv1x1_kernel_matches_torch(shape, block):
    rng = np.random.default_rng(3)
    c = shape[1]
    w = sparse_weight(rng, c, 24 if block[1] == 8 else 32, block, 0.25)  # [K=C, N=O]
    b = GraphBuilder("conv")
    x = b.input(TensorType(DType.float32, shape), "x")
    y = b.op("bsr_matmul", x, *(b.const(a, nm) for a, nm in zip(to_bsr(w, block), "dip")), axis=1)
    g = b.finish([b.op("relu", y)])
    xt = torch.randn(*shape)
    wt = torch.from_numpy(np.ascontiguousarray(w.T)).reshape(w.shape[1], c, 1, 1)
    want = torch.relu(torch.nn.functional.conv2d(xt, wt))
    torch.testing.assert_close(_run_compiled(g, [xt]), want, rtol=1e-4, atol=1e-4)


def test_rank3_linear_kernel():
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, 32, 32, (4, 16), 0.3)
    b = GraphBuilder("seq")
    x = b.input(TensorType(DType.float32, (2, 3, 32)), "x")
    g = b.finish([b.op("bsr_matmul", x, *(b.const(a, nm) for a, nm in zip(to_bsr(w, (4, 16)), "dip")))])
    xt = torch.randn(2, 3, 32)
    torch.testing.assert_close(_run_compiled(g, [xt]), xt @ torch.from_numpy(w), rtol=1e-4, atol=1e-4)
