"""RMSNorm written out -> one ``rms_norm`` row op: exact, only the whole float32 chain, cuda only."""

from __future__ import annotations

import numpy as np
import pytest

from tests.passes.passes_testing import assert_same
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.rms_norm import fuse_rms_norm

F16, F32 = DType.float16, DType.float32


def hf_rms_norm(shape=(2, 5, 33), square="pow", extra_reader=False, dims=(-1,), dtype=F32):
    """Llama's ``LlamaRMSNorm`` as the frontend lowers it (``square="mul"``: ``h * h``)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("rms")
    x = b.input(TensorType(F16, shape), "x")
    h = b.op("cast", x, dtype=dtype)
    sq = b.op("pow", h, b.scalar(2.0, dtype)) if square == "pow" else b.op("mul", h, h)
    var = b.op("mean", sq, dims=dims, keepdim=True)
    y = b.op("mul", h, b.op("rsqrt", b.op("add", var, b.scalar(1e-6, dtype))))
    w = b.const(rng.standard_normal(shape[-1]).astype(np.float16), "weight")
    out = b.op("mul", w, b.op("cast", y, dtype=F16))
    return b.finish([out, var] if extra_reader else [out])


def _names(g):
    return [op.name for op in g.ops if op.name != "const"]


@pytest.mark.parametrize("square", ["pow", "mul"])
def test_chain_becomes_one_row_op(square):
    g = hf_rms_norm(square=square)
    out = fuse_rms_norm(g)
    assert _names(out) == ["cast", "rms_norm", "cast", "mul"]
    assert_same(g, out, atol=1e-3, rtol=1e-3)
    fused = optimize(g, PassOptions(rms_norm=True, decompose_attention=False))
    assert [[o.name for o in k.body.ops if o.name != "const"] for k in kernels(fused)] == \
        [["cast", "rms_norm", "cast", "mul"]]  # one kernel: the hidden state read once
    assert_same(g, fused, atol=1e-3, rtol=1e-3)


def test_two_last_axes_and_not_others():
    g = hf_rms_norm(shape=(3, 4, 7), dims=(1, 2))
    out = fuse_rms_norm(g)
    assert "rms_norm" in _names(out)
    assert_same(g, out, atol=1e-3, rtol=1e-3)
    g = hf_rms_norm(shape=(3, 4, 7), dims=(1,))  # not the trailing axes: left alone
    assert fuse_rms_norm(g) is g


def test_left_alone_when_an_intermediate_is_read_elsewhere_or_not_float32():
    g = hf_rms_norm(extra_reader=True)  # the mean square is also a graph output
    assert fuse_rms_norm(g) is g
    g = hf_rms_norm(dtype=F16)  # computed in fp16: not the op's float32 computation
    assert fuse_rms_norm(g) is g


def test_only_the_cuda_backend_turns_it_on():
    from tilefx.codegen.triton.backend import TritonBackend
    from tilefx.codegen.tvm.backend import TVMBackend

    assert TritonBackend.pass_defaults(None).rms_norm
    assert not TVMBackend.pass_defaults(None).rms_norm
    assert "rms_norm" not in _names(optimize(hf_rms_norm(), PassOptions()))
