"""The vectorized reduction and pointwise schedules (``schedules/reduction.py``,
``pointwise.py``) and the reduction computes of ``te_nn.py`` vs PyTorch: row
reductions that rfactor into lane partials (and odd ones that cannot), column
reductions over non-last axes, softmax / log_softmax with fused mask and scale,
layer_norm with residual prologue and GELU epilogue, pooling, transposes, at
odd sizes (7, 13, 33) and at points of the schedule space."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import f32, kernel_op, run_kernel

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir import DType

TOL = dict(rtol=1e-4, atol=1e-5)
RED = dict(vectorize=16, unroll=1, parallel=True, fuse_rows=True, accumulators=2)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 7 * sum(shape)))


SHAPES = [(7, 13), (3, 33, 16), (4, 64), (2, 5, 768), (1, 512)]
KNOBS = [None, Schedule.of(**{**RED, "accumulators": 4}), Schedule.of(**{**RED, "accumulators": 1}),
         Schedule.of(**{**RED, "fuse_rows": False}), Schedule.of(**{**RED, "vectorize": 8, "unroll": 2})]


@pytest.mark.parametrize("name", ["sum", "mean", "amax", "amin"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reduce_every_axis(name, shape):
    x = _rand(*shape)
    ref_fn = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}[name]
    for axis, keep in itertools.product(range(len(shape)), (True, False)):
        op = kernel_op("reduction", [f32(*shape)],
                       lambda b, v, a=axis, k=keep: b.op(name, v, dims=(a,), keepdim=k))
        (y,) = run_kernel(op, [x])
        torch.testing.assert_close(y, ref_fn(x, dim=axis, keepdim=keep), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", KNOBS, ids=str)
def test_row_and_column_sums_under_knobs(schedule):
    for shape, dims in [((33, 64), (1,)), ((13, 48), (0,)), ((4, 16, 7, 7), (2, 3)),
                        ((2, 32, 8, 8), (1,)), ((64, 128), ())]:
        x = _rand(*shape)
        op = kernel_op("reduction", [f32(*shape)], lambda b, v, d=dims: b.op("sum", v, dims=d, keepdim=True))
        (y,) = run_kernel(op, [x], schedule)
        torch.testing.assert_close(y, x.sum(dim=dims or None, keepdim=True) if dims else
                                   x.sum().reshape(1, 1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(7, 13), (3, 33, 16), (2, 4, 64, 64), (5, 1000)])
def test_softmax_every_axis(kind, shape):
    x = _rand(*shape) * 4
    fn = torch.softmax if kind == "softmax" else F.log_softmax
    for axis in range(len(shape)):
        op = kernel_op("reduction", [f32(*shape)], lambda b, v, a=axis: b.op(kind, v, dim=a))
        (y,) = run_kernel(op, [x])
        torch.testing.assert_close(y, fn(x, axis), **TOL)


@pytest.mark.parametrize("schedule", KNOBS, ids=str)
def test_masked_scaled_softmax(schedule):
    # the attention-score pattern: scale, causal -inf mask (exp must give exactly 0), softmax
    L = 48
    mask = torch.triu(torch.full((L, L), float("-inf")), 1)
    op = kernel_op("reduction", [f32(2, 3, L, L), f32(L, L)], lambda b, x, m: b.op(
        "softmax", b.op("add", b.op("mul", x, b.scalar(0.125, DType.float32)), m), dim=-1))
    x = _rand(2, 3, L, L) * 8
    (y,) = run_kernel(op, [x, mask], schedule)
    ref = torch.softmax(x * 0.125 + mask, -1)
    torch.testing.assert_close(y, ref, **TOL)
    assert (y[..., 0, 1:] == 0).all()


def test_softmax_extreme_inputs():
    # large spreads: exp underflows to 0 for most entries, rows still sum to 1
    x = torch.tensor([[0.0, -100.0, -87.5, -50.0, 30.0, 29.0, -1e30, 1.0] * 4])
    op = kernel_op("reduction", [f32(1, 32)], lambda b, v: b.op("softmax", v, dim=-1))
    (y,) = run_kernel(op, [x])
    torch.testing.assert_close(y, torch.softmax(x, -1), **TOL)


@pytest.mark.parametrize("schedule", KNOBS, ids=str)
@pytest.mark.parametrize("rows,d", [(7, 13), (33, 256), (16, 768)])
def test_residual_layer_norm_gelu(schedule, rows, d):
    op = kernel_op("reduction", [f32(rows, d), f32(rows, d), f32(d), f32(d)], lambda b, r, x, w, c: b.op(
        "gelu", b.op("layer_norm", b.op("add", r, x), w, c, normalized_ndim=1, eps=1e-5)))
    r, x, w, c = _rand(rows, d), _rand(rows, d, seed=1) + 3, _rand(d, seed=2), _rand(d, seed=3)
    (y,) = run_kernel(op, [r, x, w, c], schedule)
    torch.testing.assert_close(y, F.gelu(F.layer_norm(r + x, (d,), w, c)), rtol=1e-4, atol=2e-5)


def test_layer_norm_two_normalized_axes():
    op = kernel_op("reduction", [f32(5, 4, 16), f32(4, 16), f32(4, 16)],
                   lambda b, x, w, c: b.op("layer_norm", x, w, c, normalized_ndim=2, eps=1e-5))
    x, w, c = _rand(5, 4, 16), _rand(4, 16, seed=1), _rand(4, 16, seed=2)
    (y,) = run_kernel(op, [x, w, c])
    torch.testing.assert_close(y, F.layer_norm(x, (4, 16), w, c), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("hw", [7, 13, 56])
def test_pooling(hw):
    x = _rand(2, 8, hw, hw)
    cases = [("max_pool2d", dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1)), lambda t: F.max_pool2d(t, 3, 2, 1)),
             ("avg_pool2d", dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1)), lambda t: F.avg_pool2d(t, 3, 2, 1)),
             ("adaptive_avg_pool2d", dict(output_size=(1, 1)), lambda t: F.adaptive_avg_pool2d(t, 1))]
    for name, attrs, ref in cases:
        op = kernel_op("reduction", [f32(2, 8, hw, hw)], lambda b, v, n=name, a=attrs: b.op(n, v, **a))
        (y,) = run_kernel(op, [x])
        torch.testing.assert_close(y, ref(x), **TOL)


@pytest.mark.parametrize("tile", [0, 8, 16])
@pytest.mark.parametrize("shape,dims", [((16, 33, 64), (0, 2, 1)), ((4, 32, 4, 16), (0, 2, 1, 3)),
                                        ((13, 7), (1, 0)), ((2, 48, 32), (0, 2, 1))])
def test_transposes(tile, shape, dims):
    op = kernel_op("pointwise", [f32(*shape)], lambda b, v: b.op("permute", v, dims=dims))
    x = _rand(*shape)
    (y,) = run_kernel(op, [x], Schedule.of(vectorize=16, unroll=1, parallel=True, tile=tile))
    torch.testing.assert_close(y, x.permute(*dims).contiguous(), rtol=0, atol=0)


def test_bias_gelu_pointwise():
    op = kernel_op("pointwise", [f32(33, 48), f32(48)], lambda b, x, c: b.op("gelu", b.op("add", x, c)))
    x, c = _rand(33, 48), _rand(48, seed=1)
    (y,) = run_kernel(op, [x, c])
    torch.testing.assert_close(y, F.gelu(x + c), **TOL)


def test_default_schedule_vectorizes_row_reductions_without_libm_exp():
    # the speed comes from these: lane partials (rfactor) accumulated as vectors,
    # and softmax's exp as a polynomial instead of one libm call per lane
    from tilefx.codegen.tvm import build_kernel

    op = kernel_op("reduction", [f32(64, 128)], lambda b, v: b.op("softmax", v, dim=-1))
    built = build_kernel(op, Target.host_cpu(), use_cache=False)
    assert "_rf_update" in built.lowered and "T.vectorized" in built.lowered
    assert "T.parallel" in built.lowered
    assert "llvm.exp" not in built.source and "@expf" not in built.source


@pytest.mark.parametrize("name,ref", [("exp", torch.exp), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
                                      ("silu", F.silu)])
def test_polynomial_exp_family_accuracy_and_edges(name, ref):
    # fast_exp and what is built on it, over the whole float32 range of exp and
    # at the edges libm defines: under/overflow, +-inf, NaN
    x = torch.cat([torch.linspace(-100, 100, 4001), torch.tensor(
        [0.0, -0.0, 1e-7, -1e-7, 88.5, 88.8, -87.2, -103.0, float("inf"), float("-inf"), float("nan")])])
    n = x.numel()
    op = kernel_op("pointwise", [f32(n)], lambda b, v: b.op(name, v))
    (y,) = run_kernel(op, [x])
    torch.testing.assert_close(y, ref(x), rtol=3e-6, atol=1e-6, equal_nan=True)


def test_gelu_tanh_epilogue_has_no_libm_calls():
    from tilefx.codegen.tvm import build_kernel

    op = kernel_op("pointwise", [f32(8, 64)], lambda b, v: b.op("gelu", v, approximate="tanh"))
    built = build_kernel(op, Target.host_cpu(), use_cache=False)
    assert "llvm.exp" not in built.source and "@tanhf" not in built.source
    x = _rand(8, 64) * 3
    (y,) = run_kernel(op, [x])
    torch.testing.assert_close(y, F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
