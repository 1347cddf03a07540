"""The op table: one list of small programs that drives every op test.

Each ``OpCase`` is a function (or an ``nn.Module`` with seeded weights), a
maker of fresh random inputs for a seed, and tolerances. The frontend tests
run every case through capture -> lower_to_ir -> reference interpreter; the
backend tests run the same cases through the compiled path. All cases lower
without a fallback. Shapes are small and often odd (7, 13, 33) on purpose.

    from tests.ops_table import cases
    @pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

Maker = Callable[[torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class OpCase:
    name: str
    fn: Callable[..., Any]
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    rtol: float = 1e-5
    atol: float = 1e-5

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return self.make_inputs(seed)


# ---- input makers --------------------------------------------------------------------

def N(*shape: int, dtype: torch.dtype = torch.float32) -> Maker:
    """Standard normal."""
    return lambda g: torch.randn(shape, generator=g).to(dtype)


def P(*shape: int) -> Maker:
    """Positive, away from zero (log, sqrt, pow, reciprocal)."""
    return lambda g: torch.rand(shape, generator=g) * 2 + 0.25


def I(*shape: int, low: int = -5, high: int = 6, dtype: torch.dtype = torch.int64) -> Maker:  # noqa: E743
    return lambda g: torch.randint(low, high, shape, generator=g).to(dtype)


def B(*shape: int) -> Maker:
    return lambda g: torch.rand(shape, generator=g) > 0.5


def inputs(*makers: Maker) -> Callable[[int], tuple[torch.Tensor, ...]]:
    def make(seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return tuple(m(g) for m in makers)
    return make


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """A module with deterministic weights (and random BN statistics), in eval mode."""
    torch.manual_seed(seed)
    m = factory()
    for sub in m.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.running_mean.uniform_(-1, 1)
            sub.running_var.uniform_(0.5, 2)
            if sub.affine:
                sub.weight.data.uniform_(0.5, 1.5)
                sub.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


# ---- the table -------------------------------------------------------------------------

def _unary() -> list[OpCase]:
    out = []
    fns: dict[str, tuple[Callable, Callable]] = {
        "relu": (torch.relu, N), "gelu": (F.gelu, N),
        "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), N),
        "silu": (F.silu, N), "sigmoid": (torch.sigmoid, N), "tanh": (torch.tanh, N),
        "hardswish": (F.hardswish, N), "hardsigmoid": (F.hardsigmoid, N),
        "hardtanh": (F.hardtanh, N), "relu6": (F.relu6, N),
        "clamp": (lambda x: x.clamp(-0.5, 0.7), N), "clamp_min": (lambda x: x.clamp(min=0.1), N),
        "clamp_max": (lambda x: torch.clamp(x, max=-0.2), N),
        "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), N),
        "neg": (torch.neg, N), "exp": (torch.exp, N), "log": (torch.log, P),
        "sqrt": (torch.sqrt, P), "rsqrt": (torch.rsqrt, P), "abs": (torch.abs, N),
        "reciprocal": (torch.reciprocal, P), "erf": (torch.erf, N),
        "logical_not": (lambda x: torch.logical_not(x > 0), N),
    }
    shapes = [(7,), (4, 13), (2, 3, 33)]
    for name, (fn, maker) in fns.items():
        for shape in shapes:
            out.append(OpCase(f"{name}_{'x'.join(map(str, shape))}", fn, inputs(maker(*shape))))
    return out


def _binary() -> list[OpCase]:
    pairs = [((4, 7), (7,)), ((2, 1, 13), (3, 1)), ((5,), (5,)), ((3, 1), (1, 4))]
    ops: dict[str, Callable] = {"add": torch.add, "sub": torch.sub, "mul": torch.mul,
                                "maximum": torch.maximum, "minimum": torch.minimum}
    out = [OpCase(f"{name}_{i}", fn, inputs(N(*a), N(*b)))
           for name, fn in ops.items() for i, (a, b) in enumerate(pairs)]
    out += [OpCase(f"div_{i}", torch.div, inputs(N(*a), P(*b))) for i, (a, b) in enumerate(pairs)]
    out += [
        OpCase("add_alpha", lambda a, b: torch.add(a, b, alpha=2.5), inputs(N(3, 7), N(7))),
        OpCase("sub_alpha", lambda a, b: torch.sub(a, b, alpha=0.5), inputs(N(3, 7), N(3, 1))),
        OpCase("add_scalar", lambda x: x + 2, inputs(N(4, 7))),
        OpCase("rsub_scalar", lambda x: 2 - x, inputs(N(4, 7))),
        OpCase("rsub_tensor", lambda a, b: torch.rsub(a, b, alpha=3), inputs(N(4, 7), N(7))),
        OpCase("mul_scalar", lambda x: x * 0.5, inputs(N(13))),
        OpCase("div_scalar", lambda x: x / 3, inputs(N(2, 13))),
        OpCase("rdiv_scalar", lambda x: 1 / x, inputs(P(2, 13))),
        OpCase("pow_2", lambda x: x ** 2, inputs(N(3, 7))),
        OpCase("pow_half", lambda x: x ** 0.5, inputs(P(3, 7))),
        OpCase("pow_tensor", torch.pow, inputs(P(3, 7), N(7))),
        OpCase("pow_scalar_base", lambda x: 2 ** x, inputs(N(3, 7))),
        OpCase("int_plus_float_scalar", lambda x: x + 1.5, inputs(I(4, 7))),
        OpCase("int_times_float_tensor", lambda a, b: a * b, inputs(I(4, 7), N(7))),
        OpCase("int_div_int", lambda a, b: a / b, inputs(I(4, 7), I(7, low=1, high=4))),
        OpCase("f32_plus_f64", lambda a, b: a + b, inputs(N(4, 7), N(7, dtype=torch.float64))),
        OpCase("f32_plus_0d_f64", lambda a, b: a + b, inputs(N(4, 7), N(dtype=torch.float64))),
        OpCase("int_plus_int", lambda a, b: a + b * 3, inputs(I(4, 7), I(4, 1, dtype=torch.int32))),
    ]
    return out


def _compare() -> list[OpCase]:
    out = []
    for name in ("eq", "ne", "lt", "le", "gt", "ge"):
        fn = getattr(torch, name)
        out.append(OpCase(f"{name}_tensor", fn, inputs(I(4, 7, low=-2, high=3), I(7, low=-2, high=3))))
        out.append(OpCase(f"{name}_scalar", lambda x, fn=fn: fn(x, 0.25), inputs(N(3, 13))))
    out += [
        OpCase("lt_mixed_dtype", torch.lt, inputs(I(4, 7), N(7))),
        OpCase("logical_and", torch.logical_and, inputs(B(4, 7), B(7))),
        OpCase("logical_or", torch.logical_or, inputs(B(3, 1), B(1, 5))),
        OpCase("bool_and_op", lambda a, b: (a > 0) & (b < 0), inputs(N(4, 7), N(4, 7))),
        OpCase("where", torch.where, inputs(B(4, 7), N(4, 7), N(7))),
        OpCase("where_broadcast", torch.where, inputs(B(3, 1), N(1, 5), N(3, 5))),
        OpCase("where_scalar", lambda c, x: torch.where(c, x, 0.0), inputs(B(4, 7), N(4, 7))),
        OpCase("where_relu", lambda x: torch.where(x > 0, x, x * 0.1), inputs(N(2, 13))),
        OpCase("masked_fill", lambda x, m: x.masked_fill(m, -1.5), inputs(N(4, 7), B(7))),
    ]
    return out


def _reductions() -> list[OpCase]:
    out = []
    variants = [("d1", dict(dim=1)), ("dneg", dict(dim=-1, keepdim=True)), ("d02", dict(dim=(0, 2))),
                ("d0k", dict(dim=0, keepdim=True))]
    for name in ("sum", "mean", "amax", "amin"):
        fn = getattr(torch, name)
        for tag, kw in variants:
            out.append(OpCase(f"{name}_{tag}", lambda x, fn=fn, kw=kw: fn(x, **kw), inputs(N(3, 13, 5))))
    out += [
        OpCase("sum_all", torch.sum, inputs(N(4, 7))),
        OpCase("mean_all", torch.mean, inputs(N(33))),
        OpCase("amax_all", lambda x: torch.amax(x), inputs(N(4, 7))),
        OpCase("sum_bool", lambda x: (x > 0).sum(-1), inputs(N(4, 7))),
        OpCase("sum_int", lambda x: x.sum(0), inputs(I(4, 7))),
        OpCase("max_dim_values", lambda x: x.max(dim=1).values, inputs(N(4, 7))),
    ]
    for dim in (-1, 1, 0):
        out.append(OpCase(f"softmax_{dim}", lambda x, d=dim: torch.softmax(x, d), inputs(N(3, 13, 5))))
        out.append(OpCase(f"log_softmax_{dim}", lambda x, d=dim: F.log_softmax(x, d), inputs(N(3, 13, 5))))
    return out


def _nn() -> list[OpCase]:
    tol = dict(rtol=1e-4, atol=1e-4)
    out = [
        OpCase("linear", seeded(lambda: nn.Linear(13, 7)), inputs(N(4, 13)), **tol),
        OpCase("linear_nobias_3d", seeded(lambda: nn.Linear(8, 5, bias=False)), inputs(N(2, 3, 8)), **tol),
        OpCase("linear_functional", F.linear, inputs(N(3, 7), N(5, 7), N(5)), **tol),
        OpCase("mm", torch.mm, inputs(N(7, 13), N(13, 5)), **tol),
        OpCase("bmm", torch.bmm, inputs(N(2, 7, 13), N(2, 13, 5)), **tol),
        OpCase("matmul_bcast", torch.matmul, inputs(N(2, 3, 7, 8), N(8, 5)), **tol),
        OpCase("matmul_4d", torch.matmul, inputs(N(2, 3, 7, 8), N(2, 3, 8, 5)), **tol),
        OpCase("addmm", lambda b, x, w: torch.addmm(b, x, w, beta=0.5, alpha=2.0),
               inputs(N(5), N(7, 13), N(13, 5)), **tol),
        OpCase("layer_norm", seeded(lambda: nn.LayerNorm(13)), inputs(N(3, 13)), **tol),
        OpCase("layer_norm_2d_noaffine", seeded(lambda: nn.LayerNorm((4, 7), elementwise_affine=False)),
               inputs(N(2, 4, 7)), **tol),
        OpCase("layer_norm_functional", lambda x, w, b: F.layer_norm(x, (7,), w, b, eps=1e-3),
               inputs(N(3, 7), N(7), N(7)), **tol),
        OpCase("batch_norm", seeded(lambda: nn.BatchNorm2d(5)), inputs(N(2, 5, 4, 3)), **tol),
        OpCase("batch_norm_noaffine", seeded(lambda: nn.BatchNorm2d(3, affine=False)),
               inputs(N(1, 3, 5, 5)), **tol),
        OpCase("batch_norm_1d", seeded(lambda: nn.BatchNorm1d(6)), inputs(N(4, 6)), **tol),
    ]
    convs = {
        "conv2d": lambda: nn.Conv2d(3, 8, 3),
        "conv2d_stride_pad": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
        "conv2d_dilation": lambda: nn.Conv2d(2, 4, 3, dilation=2, padding=2, bias=False),
        "conv2d_groups": lambda: nn.Conv2d(4, 6, (3, 1), groups=2, padding=(1, 0)),
        "conv2d_depthwise": lambda: nn.Conv2d(6, 6, 3, groups=6, padding=1),
        "conv2d_1x1": lambda: nn.Conv2d(5, 3, 1),
        "conv2d_asym": lambda: nn.Conv2d(3, 4, (2, 3), stride=(2, 1), padding=(0, 1)),
    }
    out += [OpCase(name, seeded(f), inputs(N(2, f().in_channels, 9, 7)), **tol) for name, f in convs.items()]
    out += [
        OpCase("conv1d", seeded(lambda: nn.Conv1d(3, 5, 3, padding=1)), inputs(N(2, 3, 13)), **tol),
        OpCase("conv1d_stride_dil", seeded(lambda: nn.Conv1d(4, 4, 3, stride=2, dilation=2, groups=4)),
               inputs(N(1, 4, 33)), **tol),
        OpCase("conv2d_functional", lambda x, w: F.conv2d(x, w, stride=2),
               inputs(N(1, 3, 8, 8), N(4, 3, 3, 3)), **tol),
        OpCase("max_pool2d", lambda x: F.max_pool2d(x, 2), inputs(N(2, 3, 8, 8))),
        OpCase("max_pool2d_ceil", lambda x: F.max_pool2d(x, 3, stride=2, ceil_mode=True), inputs(N(1, 2, 7, 9))),
        OpCase("max_pool2d_pad", nn.MaxPool2d(3, stride=2, padding=1), inputs(N(1, 3, 13, 13))),
        OpCase("max_pool2d_dilation", lambda x: F.max_pool2d(x, 2, stride=1, dilation=2), inputs(N(1, 2, 7, 7))),
        OpCase("avg_pool2d", lambda x: F.avg_pool2d(x, 2), inputs(N(2, 3, 8, 8))),
        OpCase("avg_pool2d_pad_exclude", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1,
                                                                 count_include_pad=False), inputs(N(1, 2, 7, 7))),
        OpCase("avg_pool2d_ceil", lambda x: F.avg_pool2d(x, 3, stride=2, ceil_mode=True), inputs(N(1, 2, 8, 9))),
        OpCase("avg_pool2d_divisor", lambda x: F.avg_pool2d(x, 2, divisor_override=3), inputs(N(1, 2, 6, 6))),
        OpCase("adaptive_avg_pool2d_1", nn.AdaptiveAvgPool2d(1), inputs(N(2, 5, 7, 7))),
        OpCase("adaptive_avg_pool2d_3", nn.AdaptiveAvgPool2d((3, 2)), inputs(N(1, 3, 7, 9))),
        OpCase("embedding", seeded(lambda: nn.Embedding(11, 6)), inputs(I(3, 5, low=0, high=11))),
        OpCase("dropout_eval", seeded(lambda: nn.Sequential(nn.Linear(7, 7), nn.Dropout(0.5))),
               inputs(N(3, 7)), **tol),
        OpCase("dropout_functional", lambda x: F.dropout(x, 0.3, training=False) * 2, inputs(N(3, 7))),
    ]
    sdpa = F.scaled_dot_product_attention
    out += [
        OpCase("sdpa", sdpa, inputs(N(2, 3, 7, 8), N(2, 3, 5, 8), N(2, 3, 5, 4)), **tol),
        OpCase("sdpa_causal", lambda q, k, v: sdpa(q, k, v, is_causal=True),
               inputs(N(1, 2, 6, 8), N(1, 2, 6, 8), N(1, 2, 6, 8)), **tol),
        OpCase("sdpa_bool_mask", lambda q, k, v, m: sdpa(q, k, v, attn_mask=m | torch.eye(5, dtype=torch.bool)),
               inputs(N(2, 5, 8), N(2, 5, 8), N(2, 5, 8), B(5, 5)), **tol),
        OpCase("sdpa_float_mask_scale", lambda q, k, v, m: sdpa(q, k, v, attn_mask=m, scale=0.3),
               inputs(N(1, 2, 4, 8), N(1, 2, 6, 8), N(1, 2, 6, 8), N(4, 6)), **tol),
    ]
    return out


def _shapes() -> list[OpCase]:
    return [
        OpCase("view", lambda x: x.view(7, 4), inputs(N(4, 7))),
        OpCase("reshape_neg", lambda x: x.reshape(-1, 3), inputs(N(2, 3, 5))),
        OpCase("flatten", lambda x: torch.flatten(x, 1), inputs(N(2, 3, 4, 5))),
        OpCase("permute", lambda x: x.permute(2, 0, 1) + 1, inputs(N(2, 3, 5))),
        OpCase("transpose", lambda x: x.transpose(-1, 0), inputs(N(2, 3, 5))),
        OpCase("t", lambda x: x.t() * 2, inputs(N(4, 7))),
        OpCase("expand", lambda x: x.expand(3, 4, 7), inputs(N(4, 1))),
        OpCase("expand_neg", lambda x: x.expand(2, -1, 5), inputs(N(3, 1))),
        OpCase("squeeze", lambda x: x.squeeze(1), inputs(N(4, 1, 7))),
        OpCase("squeeze_all", lambda x: x.squeeze() + 1, inputs(N(1, 4, 1, 7))),
        OpCase("unsqueeze", lambda x: x.unsqueeze(-1) * x.unsqueeze(0), inputs(N(5))),
        OpCase("contiguous_clone", lambda x: x.t().contiguous().clone() + 1, inputs(N(3, 5))),
        OpCase("cat", lambda a, b: torch.cat([a, b, a], dim=-1), inputs(N(2, 3), N(2, 5))),
        OpCase("cat_dim0_promote", lambda a, b: torch.cat([a, b]), inputs(N(2, 3), I(1, 3))),
        OpCase("stack", lambda a, b: torch.stack([a, b], 1), inputs(N(2, 3), N(2, 3))),
        OpCase("split", lambda x: [t * i for i, t in enumerate(torch.split(x, 3, dim=1))], inputs(N(2, 7))),
        OpCase("split_sizes", lambda x: torch.split(x, [1, 4, 2], dim=-1)[2] + 1, inputs(N(2, 7))),
        OpCase("chunk", lambda x: torch.chunk(x, 3, dim=0)[1] * 2, inputs(N(7, 3))),
        OpCase("chunk_all", lambda x: sum(t.sum() for t in x.chunk(4, -1)), inputs(N(2, 13))),
        OpCase("slice", lambda x: x[:, 1:5] + 1, inputs(N(3, 7))),
        OpCase("slice_neg_huge", lambda x: x[-2:, 3:100] * 2, inputs(N(5, 7))),
        OpCase("slice_step", lambda x: x[::2, 1::3] - 1, inputs(N(7, 13))),
        OpCase("slice_neg_end", lambda x: x[..., :-1], inputs(N(3, 7))),
        OpCase("select", lambda x: x[:, 1] + x[-1, 0], inputs(N(4, 5, 3))),
        OpCase("unbind", lambda x: [t + 1 for t in x.unbind(1)], inputs(N(2, 3))),
        OpCase("index_select", lambda x, i: torch.index_select(x, 1, i), inputs(N(3, 7), I(4, low=0, high=7))),
        OpCase("pad", lambda x: F.pad(x, (1, 2)), inputs(N(3, 7))),
        OpCase("pad_2d_value", lambda x: F.pad(x, (1, 0, 2, 1), value=-1.5), inputs(N(2, 3, 4, 5))),
        OpCase("to_f64", lambda x: x.to(torch.float64) * 2, inputs(N(3, 7))),
        OpCase("to_int", lambda x: x.to(torch.int32), inputs(N(3, 7))),
        OpCase("float_of_int", lambda x: x.float() / 2, inputs(I(3, 7))),
        OpCase("half_roundtrip", lambda x: x.half().float(), inputs(N(3, 7))),
        OpCase("zeros_like", lambda x: torch.zeros_like(x) + x, inputs(N(3, 7))),
        OpCase("ones_like", lambda x: torch.ones_like(x) - x, inputs(N(3, 7))),
        OpCase("full_like", lambda x: torch.full_like(x, 2.5) * x, inputs(N(3, 7))),
        OpCase("full_const", lambda x: torch.full((3, 7), 2.0) + x, inputs(N(3, 7))),
        OpCase("arange", lambda x: torch.arange(7) * x, inputs(N(3, 7))),
        OpCase("arange_float", lambda x: torch.arange(0.5, 3.5, 0.5) + x, inputs(N(2, 6))),
        OpCase("scalar_tensor", lambda x: x * torch.tensor(3.0), inputs(N(5))),
    ]


def cases() -> list[OpCase]:
    table = _unary() + _binary() + _compare() + _reductions() + _nn() + _shapes()
    names = [c.name for c in table]
    assert len(names) == len(set(names)), "duplicate OpCase names"
    return table


def case_ids(table: list[OpCase] | None = None) -> list[str]:
    return [c.name for c in (table if table is not None else cases())]
