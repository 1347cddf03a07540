"""Every lowerable IR op has a TE compute, and single-op kernels match PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f32, kernel_op, run_kernel

from tilefx.ir import OPS, DType, TensorType

UNARY_REF = {
    "neg": torch.neg, "exp": torch.exp, "log": lambda x: torch.log(x.abs() + 0.1),
    "sqrt": lambda x: torch.sqrt(x.abs()), "rsqrt": lambda x: torch.rsqrt(x.abs() + 0.1),
    "abs": torch.abs, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "erf": torch.erf,
    "reciprocal": lambda x: torch.reciprocal(x.abs() + 0.5), "sin": torch.sin, "cos": torch.cos,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "sign": torch.sign,
    "identity": lambda x: x,
}
# ops whose domain needs a positive input: the kernel gets the same transformed input
POSITIVE = {"log": 0.1, "sqrt": 0.0, "rsqrt": 0.1, "reciprocal": 0.5}


def test_every_ir_op_has_a_te_compute():
    from tilefx.codegen.tvm import te_nn  # noqa: F401
    from tilefx.codegen.tvm.te_ops import NOT_LOWERED, TE_OPS

    missing = sorted(set(OPS) - set(TE_OPS) - NOT_LOWERED)
    assert not missing, f"no TE compute for {missing}"


@pytest.mark.parametrize("name", sorted(UNARY_REF))
def test_unary(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 37, generator=g) * 2
    if name in POSITIVE:
        x = x.abs() + POSITIVE[name]
    (y,) = run_kernel(kernel_op("pointwise", [f32(3, 37)], lambda b, a: b.op(name, a)), [x])
    ref = UNARY_REF[name](x) if name not in POSITIVE else {
        "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal}[name](x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name,attrs,ref", [
    ("gelu", {"approximate": "none"}, lambda x: F.gelu(x)),
    ("gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("leaky_relu", {"negative_slope": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    ("clamp", {"min": -0.5, "max": None}, lambda x: x.clamp(min=-0.5)),
    ("clamp", {"min": -0.5, "max": 0.7}, lambda x: x.clamp(-0.5, 0.7)),
    ("cast", {"dtype": DType.int32}, lambda x: x.to(torch.int32)),
    ("softmax", {"dim": 1}, lambda x: x.softmax(1)),
    ("log_softmax", {"dim": -1}, lambda x: x.log_softmax(-1)),
    ("sum", {"dims": (1,), "keepdim": True}, lambda x: x.sum(1, keepdim=True)),
    ("mean", {"dims": (), "keepdim": False}, lambda x: x.mean()),
    ("amax", {"dims": (0, 2), "keepdim": False}, lambda x: x.amax((0, 2))),
    ("amin", {"dims": (2,), "keepdim": False}, lambda x: x.amin(2)),
    ("prod", {"dims": (2,), "keepdim": False}, lambda x: x.prod(2)),
    ("permute", {"dims": (2, 0, 1)}, lambda x: x.permute(2, 0, 1)),
    ("reshape", {"shape": (6, -1)}, lambda x: x.reshape(6, -1)),
    ("broadcast_to", {"shape": (2, 4, 6, 5)}, lambda x: x.broadcast_to(2, 4, 6, 5)),
    ("slice", {"axis": 2, "start": 1, "end": 5, "step": 2}, lambda x: x[:, :, 1:5:2]),
    ("pad", {"pads": (0, 0, 1, 2, 0, 1), "value": 0.5}, lambda x: F.pad(x, (0, 1, 1, 2), value=0.5)),
])
def test_single_op(name, attrs, ref):
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2))
    (y,) = run_kernel(kernel_op("reduction", [f32(4, 6, 5)], lambda b, a: b.op(name, a, **attrs)), [x])
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                  "eq", "lt", "ge", "ne"])
def test_broadcast_binary(name):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(4, 1, 5, generator=g) + 0.5, torch.rand(3, 1, generator=g) + 0.5
    (y,) = run_kernel(kernel_op("pointwise", [f32(4, 1, 5), f32(3, 1)],
                                lambda bb, x, z: bb.op(name, x, z)), [a, b])
    ref = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
           "maximum": torch.maximum, "minimum": torch.minimum, "eq": torch.eq, "lt": torch.lt,
           "ge": torch.ge, "ne": torch.ne}[name](a, b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_where_logical_and_scalar_const():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)

    def body(bb, x, z):
        zero = bb.scalar(0.0, DType.float32)
        cond = bb.op("logical_and", bb.op("gt", x, zero), bb.op("logical_not", bb.op("gt", z, zero)))
        return bb.op("where", cond, x, bb.op("mul", z, bb.scalar(3.0, DType.float32)))
    (y,) = run_kernel(kernel_op("pointwise", [f32(5, 7), f32(5, 7)], body), [a, b])
    torch.testing.assert_close(y, torch.where((a > 0) & ~(b > 0), a, b * 3))


def test_concat_take_iota():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 3, generator=g), torch.randn(2, 4, generator=g)
    (y,) = run_kernel(kernel_op("pointwise", [f32(2, 3), f32(2, 4)],
                                lambda bb, x, z: bb.op("concat", x, z, axis=1)), [a, b])
    torch.testing.assert_close(y, torch.cat([a, b], 1))
    table, idx = torch.randn(10, 6, generator=g), torch.tensor([[1, 9, 0], [3, 3, 7]])
    (y,) = run_kernel(kernel_op("pointwise", [f32(10, 6), TensorType(DType.int64, (2, 3))],
                                lambda bb, t, i: bb.op("take", t, i, axis=0)), [table, idx])
    torch.testing.assert_close(y, F.embedding(idx, table))
    (y,) = run_kernel(kernel_op("pointwise", [f32(3, 4)], lambda bb, x: bb.op(
        "add", x, bb.op("iota", shape=(3, 4), axis=1, dtype=DType.float32))), [a[:, :1].repeat(3, 4)[:3]])
    torch.testing.assert_close(y, a[:, :1].repeat(3, 4)[:3] + torch.arange(4.0))


@pytest.mark.parametrize("name,attrs,ref", [
    ("max_pool2d", {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True},
     lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("avg_pool2d", {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True,
                    "count_include_pad": False}, lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
    ("avg_pool2d", {"kernel": (2, 2), "stride": (2, 2)}, lambda x: F.avg_pool2d(x, 2, 2)),
    ("adaptive_avg_pool2d", {"output_size": (3, 2)}, lambda x: F.adaptive_avg_pool2d(x, (3, 2))),
])
def test_pooling(name, attrs, ref):
    x = torch.randn(2, 3, 8, 7, generator=torch.Generator().manual_seed(6))
    (y,) = run_kernel(kernel_op("reduction", [f32(2, 3, 8, 7)], lambda b, a: b.op(name, a, **attrs)), [x])
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
