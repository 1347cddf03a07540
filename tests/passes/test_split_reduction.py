"""Long full reductions in two stages (passes/split_reduction.py): exact, and parallel."""

import numpy as np
import pytest
import torch

from tilefx.ir import DType, TensorType
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.interpreter import run_graph
from tilefx.passes.split_reduction import MAX_ROWS, MIN_ROW, rows_for, split_reduction


def _graph(op, shape, dtype=DType.float32, keepdim=False, prologue=None):
    b = GraphBuilder("g")
    x = b.input(TensorType(dtype, shape), "x")
    y = b.op(prologue, x) if prologue else x
    if prologue == "abs":
        y = b.op("gt", y, b.scalar(2.5, dtype))
    return b.finish([b.op(op, y, dims=(), keepdim=keepdim)])


def test_rows_divide_the_elements():
    assert rows_for(1 << 21) == MAX_ROWS  # T5's 16 x 256 x 512
    assert rows_for(1000) == 1  # short: one program is quick
    r = 16 * 197 * 768  # ViT's activations: not a power of two
    s = rows_for(r)
    assert r % s == 0 and s <= MAX_ROWS and r // s >= MIN_ROW and s > 512
    assert rows_for(1_000_003) == 1  # a prime: no rows


@pytest.mark.parametrize("op", ["any", "all", "amax", "amin"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_split_is_exact(op, keepdim):
    shape = (4, 129, 256)  # 132096 elements = 1032 x 128 ... rows of >= 1024
    bool_op = op in ("any", "all")
    g = _graph(op, shape, keepdim=keepdim, prologue="abs" if bool_op else None)
    out = split_reduction(g)
    names = [o.name for o in out.ops]
    assert names.count(op) == 2 and "reshape" in names
    rng = np.random.default_rng(0)
    for trial in range(3):
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        if trial == 1:
            x[3, 128, 255] = 9.0  # the only element past the threshold sits in the last row
        (want,) = run_graph(g, [x])
        (got,) = run_graph(out, [x])
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, want)


def test_sums_short_and_partial_reductions_stay_whole():
    for g in (_graph("sum", (4, 129, 256)), _graph("amax", (3, 50))):
        assert split_reduction(g) is g
    b = GraphBuilder("rows")
    x = b.input(TensorType(DType.float32, (64, 4096)), "x")
    g = b.finish([b.op("amax", x, dims=(1,))])  # 64 rows: already parallel
    assert split_reduction(g) is g


def test_t5_fp16_isinf_any_compiles_to_a_parallel_partial_reduction():
    import tilefx
    from tilefx.compiler.options import CompileOptions

    def fn(h):
        big = torch.finfo(torch.float16).max
        limit = torch.where(torch.isinf(h).any(), big - 1000, big)
        return torch.clamp(h, min=-limit, max=limit)

    h = torch.randn(2, 256, 128).half()
    cm = tilefx.compile(fn, options=CompileOptions(target="cpu"))
    torch.testing.assert_close(cm(h), fn(h))
    h[1, 7, 3] = float("inf")
    torch.testing.assert_close(cm(h), fn(h))


def test_the_partial_any_is_its_own_kernel_on_cuda():
    """For a cuda target the partial ``any`` (1024 rows) and the final one (1 row) are two
    kernels: the first spreads over the SMs."""
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    def fn(h):
        return torch.where(torch.isinf(h).any(), h, h * 2)

    with torch.no_grad():
        mk = model_kernels(fn, (torch.randn(8, 256, 512).half(),),
                           CompileOptions(target="cuda", cuda_graphs=False), CompileSession())
    anys = [op for op in mk.graph.ops if op.name == "kernel" and any(o.name == "any" for o in op.body.ops)]
    shapes = sorted(o.inputs[0].type.shape for k in anys for o in k.body.ops if o.name == "any")
    assert shapes == [(MAX_ROWS,), (MAX_ROWS, 1024)], shapes
