"""Lowerings of elementwise ATen ops: activations, arithmetic, comparisons, where.

Dtypes follow torch: the operands of an arithmetic op are cast to the result
dtype torch computes (``node.meta["val"]``, which covers ``int / int -> float``
and ``exp(int) -> float``); comparisons compare in the promoted dtype of their
operands. Python numbers become rank-0 ``const`` values in that dtype.
"""

from __future__ import annotations

import torch

from tilefx.compiler.lowerings.registry import Unsupported, lowers
from tilefx.ir.types import DType

aten = torch.ops.aten

_UNARY = {
    aten.neg.default: "neg", aten.exp.default: "exp", aten.log.default: "log",
    aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt", aten.abs.default: "abs",
    aten.relu.default: "relu", aten.sigmoid.default: "sigmoid", aten.tanh.default: "tanh",
    aten.silu.default: "silu", aten.hardswish.default: "hardswish",
    aten.hardsigmoid.default: "hardsigmoid", aten.erf.default: "erf",
    aten.reciprocal.default: "reciprocal", aten.sin.default: "sin", aten.cos.default: "cos",
    aten.floor.default: "floor", aten.ceil.default: "ceil", aten.round.default: "round",
    aten.sign.default: "sign", aten.logical_not.default: "logical_not",
}


def _unary(ctx, node, args, kwargs):
    name = _UNARY[node.target]
    out = ctx.out_type(node).dtype
    return ctx.b.op(name, ctx.cast(args[0], out))


lowers(*_UNARY)(_unary)


@lowers(aten.bitwise_not.default)
def _bitwise_not(ctx, node, args, kwargs):
    if args[0].type.dtype != DType.bool:
        raise Unsupported("bitwise_not on integers")
    return ctx.b.op("logical_not", args[0])


@lowers(aten.gelu.default)
def _gelu(ctx, node, args, kwargs):
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    return ctx.b.op("gelu", args[0], approximate=approximate)


@lowers(aten.leaky_relu.default)
def _leaky_relu(ctx, node, args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return ctx.b.op("leaky_relu", args[0], negative_slope=float(slope))


def _clamp_op(ctx, node, x, lo, hi):
    x = ctx.cast(x, ctx.out_type(node).dtype)
    if lo is None and hi is None:
        return x
    return ctx.b.op("clamp", x, min=lo, max=hi)


@lowers(aten.hardtanh.default)
def _hardtanh(ctx, node, args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return _clamp_op(ctx, node, args[0], lo, hi)


@lowers(aten.clamp.default)
def _clamp(ctx, node, args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    return _clamp_op(ctx, node, args[0], lo, hi)


@lowers(aten.clamp_min.default)
def _clamp_min(ctx, node, args, kwargs):
    return _clamp_op(ctx, node, args[0], args[1], None)


@lowers(aten.clamp_max.default)
def _clamp_max(ctx, node, args, kwargs):
    return _clamp_op(ctx, node, args[0], None, args[1])


@lowers(aten.clamp.Tensor)
def _clamp_tensor(ctx, node, args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    dtype = ctx.out_type(node).dtype
    out = ctx.cast(args[0], dtype)
    if lo is not None:
        out = ctx.b.op("maximum", out, ctx.as_value(lo, dtype))
    if hi is not None:
        out = ctx.b.op("minimum", out, ctx.as_value(hi, dtype))
    return out


# ---- binary arithmetic ------------------------------------------------------------

_ARITH = {
    aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
    aten.div.Tensor: "div", aten.div.Scalar: "div",
    aten.pow.Tensor_Tensor: "pow", aten.pow.Tensor_Scalar: "pow", aten.pow.Scalar: "pow",
    aten.maximum.default: "maximum", aten.minimum.default: "minimum",
}


def _arith(ctx, node, args, kwargs):
    a, b = ctx.promote(args[0], args[1], dtype=ctx.out_type(node).dtype)
    return ctx.b.op(_ARITH[node.target], a, b)


lowers(*_ARITH)(_arith)


@lowers(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(ctx, node, args, kwargs):
    mode = kwargs.get("rounding_mode", args[2] if len(args) > 2 else None)
    if mode is not None:
        raise Unsupported(f"div with rounding_mode={mode!r}")
    a, b = ctx.promote(args[0], args[1], dtype=ctx.out_type(node).dtype)
    return ctx.b.op("div", a, b)


def _add_sub(ctx, node, lhs, rhs, alpha, op):
    dtype = ctx.out_type(node).dtype
    a, b = ctx.promote(lhs, rhs, dtype=dtype)
    if alpha != 1:
        b = ctx.b.op("mul", b, ctx.scalar(alpha, dtype))
    return ctx.b.op(op, a, b)


@lowers(aten.add.Tensor, aten.add.Scalar)
def _add(ctx, node, args, kwargs):
    return _add_sub(ctx, node, args[0], args[1], kwargs.get("alpha", 1), "add")


@lowers(aten.sub.Tensor, aten.sub.Scalar)
def _sub(ctx, node, args, kwargs):
    return _add_sub(ctx, node, args[0], args[1], kwargs.get("alpha", 1), "sub")


@lowers(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(ctx, node, args, kwargs):
    # rsub(a, b, alpha) = b - alpha * a
    dtype = ctx.out_type(node).dtype
    a, b = ctx.promote(args[0], args[1], dtype=dtype)
    alpha = kwargs.get("alpha", 1)
    if alpha != 1:
        a = ctx.b.op("mul", a, ctx.scalar(alpha, dtype))
    return ctx.b.op("sub", b, a)


# ---- comparisons and logic -----------------------------------------------------------

_COMPARE = {}
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    _packet = getattr(aten, _name)
    _COMPARE[_packet.Tensor] = _name
    _COMPARE[_packet.Scalar] = _name


def _compare(ctx, node, args, kwargs):
    a, b = ctx.promote(args[0], args[1])
    return ctx.b.op(_COMPARE[node.target], a, b)


lowers(*_COMPARE)(_compare)

_LOGICAL = {aten.logical_and.default: "logical_and", aten.logical_or.default: "logical_or",
            aten.bitwise_and.Tensor: "logical_and", aten.bitwise_or.Tensor: "logical_or"}


def _logical(ctx, node, args, kwargs):
    if node.target in (aten.bitwise_and.Tensor, aten.bitwise_or.Tensor) and \
            ctx.out_type(node).dtype != DType.bool:
        raise Unsupported("bitwise ops on integers")
    a, b = ctx.promote(args[0], args[1], dtype=DType.bool)
    return ctx.b.op(_LOGICAL[node.target], a, b)


lowers(*_LOGICAL)(_logical)


@lowers(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(ctx, node, args, kwargs):
    cond = ctx.cast(args[0], DType.bool)
    a, b = ctx.promote(args[1], args[2], dtype=ctx.out_type(node).dtype)
    return ctx.b.op("where", cond, a, b)


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(ctx, node, args, kwargs):
    x, mask, value = args
    dtype = ctx.out_type(node).dtype
    return ctx.b.op("where", ctx.cast(mask, DType.bool), ctx.as_value(value, dtype), ctx.cast(x, dtype))


@lowers(aten.isinf.default)
def _isinf(ctx, node, args, kwargs):
    """``|x| == inf`` (T5 in fp16 clamps its activations when one is infinite: twelve
    fallbacks without it). ``isnan`` as ``x != x`` is not lowered: TVM's simplifier folds
    that to false."""
    x = args[0]
    if not x.type.dtype.is_float:
        raise Unsupported(f"isinf on {x.type.dtype.short}")
    return ctx.b.op("eq", ctx.b.op("abs", x), ctx.scalar(float("inf"), x.type.dtype))
