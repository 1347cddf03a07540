"""The register-tiled contraction schedules (``schedules/matmul.py``, ``conv.py``)
vs PyTorch over many shapes: odd sizes that divide no tile, batched and
broadcast matmuls, transposed weights, strided/dilated/grouped/depthwise convs,
fused epilogues (inlined, and not inlinable), and points of the schedule space."""

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import f32, kernel_op, run_kernel

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target

TOL = dict(rtol=1e-4, atol=1e-4)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 7 * sum(shape)))


@pytest.mark.parametrize("m,k,n", [(7, 13, 10), (64, 96, 80), (130, 40, 48), (256, 64, 64),
                                   (1, 32, 33), (128, 17, 16)])
def test_matmul_shapes(m, k, n):
    op = kernel_op("contraction", [f32(m, k), f32(k, n)], lambda b, x, w: b.op("matmul", x, w))
    x, w = _rand(m, k), _rand(k, n, seed=1)
    (y,) = run_kernel(op, [x, w])
    torch.testing.assert_close(y, x @ w, **TOL)


@pytest.mark.parametrize("pack", [True, False])
def test_linear_with_transposed_weight_bias_relu(pack):
    # linear = x @ w.T: the permute is inlined into the matmul, and packing must
    # find the weight by its indexing, not its argument position
    op = kernel_op("contraction", [f32(128, 48), f32(64, 48), f32(64)], lambda b, x, w, c: b.op(
        "relu", b.op("add", b.op("matmul", x, b.op("permute", w, dims=(1, 0))), c)))
    x, w, c = _rand(128, 48), _rand(64, 48, seed=2), _rand(64, seed=3)
    sched = Schedule.of(tile_m=64, tile_n=64, reg_m=8, reg_n=32, unroll_k=4, pack_b=pack,
                        parallel=True)
    (y,) = run_kernel(op, [x, w, c], sched)
    torch.testing.assert_close(y, torch.relu(x @ w.T + c), **TOL)


@pytest.mark.parametrize("a,b", [((4, 32, 16), (4, 16, 24)), ((2, 3, 9, 16), (16, 20)),
                                 ((3, 130, 8), (3, 8, 32))])
def test_batched_and_broadcast_matmul(a, b):
    op = kernel_op("contraction", [f32(*a), f32(*b)], lambda g, x, w: g.op("matmul", x, w))
    x, w = _rand(*a), _rand(*b, seed=4)
    (y,) = run_kernel(op, [x, w])
    torch.testing.assert_close(y, x @ w, **TOL)


def test_matmul_result_also_output_keeps_epilogue():
    # the raw product is a kernel output too, so the epilogue cannot be inlined
    # into the write-back and runs per tile instead
    op = kernel_op("contraction", [f32(64, 32), f32(32, 48)], lambda b, x, w: (
        lambda mm: [mm, b.op("relu", mm)])(b.op("matmul", x, w)))
    x, w = _rand(64, 32), _rand(32, 48, seed=5)
    mm, r = run_kernel(op, [x, w])
    torch.testing.assert_close(mm, x @ w, **TOL)
    torch.testing.assert_close(r, torch.relu(x @ w), **TOL)


CONVS = [  # (N, C, H, OC, K, stride, pad, dilation, groups)
    (1, 8, 10, 16, 3, 1, 1, 1, 1),
    (2, 3, 17, 24, 7, 2, 3, 1, 1),
    (1, 16, 12, 40, 3, 2, 1, 1, 1),
    (1, 12, 9, 32, 1, 1, 0, 1, 1),
    (1, 5, 11, 3, 3, 1, 0, 2, 1),
    (1, 8, 10, 12, 3, 1, 1, 1, 2),
    (2, 16, 14, 16, 3, 1, 1, 1, 16),
    (1, 24, 15, 24, 3, 2, 1, 1, 24),
    (1, 32, 7, 64, 1, 1, 0, 1, 1),
]


@pytest.mark.parametrize("n,c,h,oc,k,s,p,d,g", CONVS)
def test_conv_shapes_with_bias_relu(n, c, h, oc, k, s, p, d, g):
    attrs = dict(stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
    op = kernel_op("contraction", [f32(n, c, h, h), f32(oc, c // g, k, k), f32(oc, 1, 1)],
                   lambda b, x, w, bias: b.op("relu", b.op("add", b.op("conv2d", x, w, **attrs), bias)))
    x, w, bias = _rand(n, c, h, h), _rand(oc, c // g, k, k, seed=6), _rand(oc, 1, 1, seed=7)
    (y,) = run_kernel(op, [x, w, bias])
    ref = torch.relu(F.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g) + bias)
    torch.testing.assert_close(y, ref, **TOL)


def test_conv_residual_and_conv_output():
    op = kernel_op("contraction", [f32(1, 16, 8, 8), f32(32, 16, 3, 3), f32(1, 32, 8, 8)],
                   lambda b, x, w, r: (lambda y: [y, b.op("relu", b.op("add", y, r))])(
                       b.op("conv2d", x, w, padding=(1, 1))))
    x, w, r = _rand(1, 16, 8, 8), _rand(32, 16, 3, 3, seed=8), _rand(1, 32, 8, 8, seed=9)
    y, z = run_kernel(op, [x, w, r])
    ref = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(y, ref, **TOL)
    torch.testing.assert_close(z, torch.relu(ref + r), **TOL)


def _space_points(space, count, seed):
    rng = random.Random(seed)
    keys = sorted(space)
    every = list(itertools.product(*(space[k] for k in keys)))
    return [dict(zip(keys, p)) for p in rng.sample(every, min(count, len(every)))]


@pytest.mark.parametrize("which", ["matmul", "conv", "depthwise"])
def test_schedule_space_points_are_correct(which):
    from tilefx.codegen.tvm import schedule_space

    if which == "matmul":
        op = kernel_op("contraction", [f32(96, 40), f32(40, 64), f32(64)], lambda b, x, w, c: b.op(
            "add", b.op("matmul", x, w), c))
        ins = [_rand(96, 40), _rand(40, 64, seed=10), _rand(64, seed=11)]
        ref = ins[0] @ ins[1] + ins[2]
    else:
        g = 8 if which == "depthwise" else 1
        op = kernel_op("contraction", [f32(1, 8, 12, 12), f32(16 // (2 if g > 1 else 1), 8 // g, 3, 3)],
                       lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1), groups=g))
        ins = [_rand(1, 8, 12, 12), _rand(8 if g > 1 else 16, 8 // g, 3, 3, seed=12)]
        ref = F.conv2d(*ins, padding=1, groups=g)
    space = schedule_space(op, Target.host_cpu())
    for point in _space_points(space, 4, seed=len(which)):
        (y,) = run_kernel(op, ins, Schedule.of(**point))
        torch.testing.assert_close(y, ref, **TOL, msg=lambda m, p=point: f"{p}: {m}")


def test_default_conv_schedule_is_register_tiled():
    from tilefx.codegen.tvm import build_kernel

    op = kernel_op("contraction", [f32(1, 32, 14, 14), f32(64, 32, 3, 3)],
                   lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1)))
    built = build_kernel(op, Target.host_cpu())
    # packed weights and a channels-last register accumulator
    assert "in1_global" in built.lowered and 'scope="local"' in built.lowered
    assert "T.vectorized" in built.lowered and "T.parallel" in built.lowered


def test_transposed_activation_b_is_packed_by_default():
    from tilefx.codegen.tvm import default_schedule

    op = kernel_op("contraction", [f32(4, 32, 16), f32(4, 48, 16)], lambda b, q, k: b.op(
        "matmul", q, b.op("permute", k, dims=(0, 2, 1))))
    assert default_schedule(op, Target.host_cpu()).get("pack_b") is True
    q, k = _rand(4, 32, 16), _rand(4, 48, 16, seed=13)
    (y,) = run_kernel(op, [q, k])
    torch.testing.assert_close(y, q @ k.transpose(1, 2), **TOL)
    from tilefx.codegen.tvm import build_kernel

    # really packed: a [batch, N / reg_n, K, reg_n] copy, not a plain copy of k
    lowered = build_kernel(op, Target.host_cpu()).lowered
    assert "in1_global = T.sblock_alloc_buffer((4, 3, 16, 16))" in lowered, lowered[:2000]
