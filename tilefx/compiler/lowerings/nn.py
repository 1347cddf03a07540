"""Lowerings of neural-network ATen ops: matmul/linear, convolution, normalization,
pooling, attention and (eval-mode) dropout.

Biases are emitted as a separate broadcast ``add`` after the contraction (the IR
contract), so fusion sees them as an epilogue. ``conv1d`` is a ``conv2d`` over a
height of 1. Ops that return several tensors of which only the first is
meaningful at inference (``native_layer_norm``'s mean/rstd, max-pool indices)
are lowered only when nothing reads the others.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from tilefx.compiler.lowerings.registry import Unsupported, lowers
from tilefx.ir.types import DType

aten = torch.ops.aten


def only_first_result_used(node: torch.fx.Node) -> bool:
    return all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)


def _pair(v, n: int = 2) -> tuple[int, ...]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


def _filled(ctx, shape, dtype: DType, value: float, name: str):
    """A constant vector standing in for a missing norm weight (ones) or bias (zeros)."""
    # numpy has no bfloat16: build it in f32 and cast (exact for 0 and 1)
    np_dtype = dtype.numpy_name
    return ctx.cast(ctx.b.const(np.full(shape, value, dtype=np_dtype), name), dtype)


# ---- contractions -----------------------------------------------------------------

@lowers(aten.mm.default, aten.bmm.default)
def _mm(ctx, node, args, kwargs):
    a, b = ctx.promote(args[0], args[1], dtype=ctx.out_type(node).dtype)
    return ctx.b.op("matmul", a, b)


@lowers(aten.matmul.default)
def _matmul(ctx, node, args, kwargs):
    a, b = args
    if a.type.rank < 2 or b.type.rank < 2:
        raise Unsupported("matmul of a 1-D operand")
    a, b = ctx.promote(a, b, dtype=ctx.out_type(node).dtype)
    return ctx.b.op("matmul", a, b)


@lowers(aten.addmm.default)
def _addmm(ctx, node, args, kwargs):
    bias, a, b = args
    dtype = ctx.out_type(node).dtype
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    a, b = ctx.promote(a, b, dtype=dtype)
    out = ctx.b.op("matmul", a, b)
    if alpha != 1:
        out = ctx.b.op("mul", out, ctx.scalar(alpha, dtype))
    if beta == 0:
        return out
    bias = ctx.cast(bias, dtype)
    if beta != 1:
        bias = ctx.b.op("mul", bias, ctx.scalar(beta, dtype))
    return ctx.b.op("add", out, bias)


@lowers(aten.linear.default)
def _linear(ctx, node, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if x.type.rank < 2 or w.type.rank != 2:
        raise Unsupported("linear of a 1-D input")
    out = ctx.b.op("matmul", x, ctx.b.op("permute", w, dims=(1, 0)))
    return out if bias is None else ctx.b.op("add", out, bias)


@lowers(aten.convolution.default)
def _convolution(ctx, node, args, kwargs):
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args
    if transposed:
        raise Unsupported("transposed convolution")
    if isinstance(padding, str):
        raise Unsupported(f"padding={padding!r}")
    spatial = w.type.rank - 2
    if spatial == 1:  # conv1d: a conv2d over a height of 1
        n, c, length = x.type.shape
        x4 = ctx.b.op("reshape", x, shape=(n, c, 1, length))
        w4 = ctx.b.op("reshape", w, shape=tuple(w.type.shape[:2]) + (1, w.type.shape[2]))
        attrs = dict(stride=(1,) + _pair(stride, 1), padding=(0,) + _pair(padding, 1),
                     dilation=(1,) + _pair(dilation, 1), groups=groups)
        out = ctx.b.op("conv2d", x4, w4, **attrs)
        out = ctx.b.op("reshape", out, shape=(n, out.type.shape[1], out.type.shape[3]))
    elif spatial == 2:
        out = ctx.b.op("conv2d", x, w, stride=_pair(stride), padding=_pair(padding),
                       dilation=_pair(dilation), groups=groups)
    else:
        raise Unsupported(f"conv{spatial}d")
    if bias is None:
        return out
    bias = ctx.b.op("reshape", bias, shape=(bias.type.shape[0],) + (1,) * spatial)
    return ctx.b.op("add", out, bias)


# ---- normalization and softmax --------------------------------------------------------

@lowers(aten._softmax.default, aten._log_softmax.default, aten.softmax.int, aten.log_softmax.int)
def _softmax(ctx, node, args, kwargs):
    x, dim = args[0], args[1]
    out = ctx.out_type(node).dtype
    name = "log_softmax" if node.target in (aten._log_softmax.default, aten.log_softmax.int) else "softmax"
    # half_to_float (or softmax.int's dtype=) computes in the result dtype
    return ctx.b.op(name, ctx.cast(x, out), dim=dim)


@lowers(aten.native_layer_norm.default)
def _layer_norm(ctx, node, args, kwargs):
    x, shape, weight, bias, eps = args
    if not only_first_result_used(node):
        raise Unsupported("layer_norm mean/rstd outputs are used")
    shape = tuple(x.type.shape[x.type.rank - len(shape):])
    weight = weight if weight is not None else _filled(ctx, shape, x.type.dtype, 1.0, "ln_weight")
    bias = bias if bias is not None else _filled(ctx, shape, x.type.dtype, 0.0, "ln_bias")
    return [ctx.b.op("layer_norm", x, weight, bias, normalized_ndim=len(shape), eps=float(eps)),
            None, None]


@lowers(aten._native_batch_norm_legit_no_training.default)
def _batch_norm(ctx, node, args, kwargs):
    x, weight, bias, mean, var, _momentum, eps = args
    if not only_first_result_used(node):
        raise Unsupported("batch_norm saved statistics are used")
    c = (x.type.shape[1],)
    weight = weight if weight is not None else _filled(ctx, c, x.type.dtype, 1.0, "bn_weight")
    bias = bias if bias is not None else _filled(ctx, c, x.type.dtype, 0.0, "bn_bias")
    return [ctx.b.op("batch_norm", x, mean, var, weight, bias, eps=float(eps)), None, None]


# ---- pooling --------------------------------------------------------------------------

def _batched(ctx, x, fn):
    """Pooling on CHW input: add and remove the batch dim around ``fn``."""
    if x.type.rank == 4:
        return fn(x)
    if x.type.rank != 3:
        raise Unsupported(f"pooling of a rank-{x.type.rank} input")
    y = fn(ctx.b.op("reshape", x, shape=(1,) + tuple(x.type.shape)))
    return ctx.b.op("reshape", y, shape=tuple(y.type.shape[1:]))


@lowers(aten.max_pool2d.default, aten.max_pool2d_with_indices.default)
def _max_pool2d(ctx, node, args, kwargs):
    params = list(args) + [None] * (6 - len(args))
    x, kernel = params[0], _pair(params[1])
    stride = _pair(kwargs.get("stride", params[2]) or kernel)
    padding = _pair(kwargs.get("padding", params[3] if params[3] is not None else 0))
    dilation = _pair(kwargs.get("dilation", params[4] if params[4] is not None else 1))
    ceil_mode = bool(kwargs.get("ceil_mode", params[5] or False))
    out = _batched(ctx, x, lambda v: ctx.b.op("max_pool2d", v, kernel=kernel, stride=stride,
                                              padding=padding, dilation=dilation, ceil_mode=ceil_mode))
    if node.target == aten.max_pool2d_with_indices.default:
        if not only_first_result_used(node):
            raise Unsupported("max_pool2d indices are used")
        return [out, None]
    return out


@lowers(aten.avg_pool2d.default)
def _avg_pool2d(ctx, node, args, kwargs):
    params = list(args) + [None] * (7 - len(args))
    x, kernel = params[0], _pair(params[1])
    stride = _pair(kwargs.get("stride", params[2]) or kernel)
    padding = _pair(kwargs.get("padding", params[3] if params[3] is not None else 0))
    ceil_mode = bool(kwargs.get("ceil_mode", params[4] or False))
    count_include_pad = kwargs.get("count_include_pad", params[5] if params[5] is not None else True)
    divisor = kwargs.get("divisor_override", params[6])
    return _batched(ctx, x, lambda v: ctx.b.op(
        "avg_pool2d", v, kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
        count_include_pad=bool(count_include_pad), divisor_override=divisor))


@lowers(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
def _adaptive_avg_pool2d(ctx, node, args, kwargs):
    x = args[0]
    size = tuple(ctx.out_type(node).shape[-2:])
    return _batched(ctx, x, lambda v: ctx.b.op("adaptive_avg_pool2d", v, output_size=size))


# ---- attention and dropout --------------------------------------------------------------

def _attention(ctx, q, k, v, mask, causal, scale, gqa):
    if gqa and q.type.rank >= 3 and q.type.shape[-3] != k.type.shape[-3]:
        raise Unsupported("grouped-query attention with fewer key/value heads")
    if mask is not None and causal:
        raise Unsupported("attention with both a mask and is_causal")
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return ctx.b.op("attention", *inputs, causal=bool(causal),
                    scale=None if scale is None else float(scale))


@lowers(aten.scaled_dot_product_attention.default)
def _sdpa(ctx, node, args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = (None, None, None, None, 0.0, False, None, False)
    p = {n: kwargs.get(n, args[i] if i < len(args) else defaults[i]) for i, n in enumerate(names)}
    if p["dropout_p"]:
        raise Unsupported("attention with dropout")
    return _attention(ctx, p["query"], p["key"], p["value"], p["attn_mask"], p["is_causal"],
                      p["scale"], p["enable_gqa"])


@lowers(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_flash_cpu(ctx, node, args, kwargs):
    q, k, v = args[:3]
    dropout = args[3] if len(args) > 3 else kwargs.get("dropout_p", 0.0)
    causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
    if dropout or not only_first_result_used(node):
        raise Unsupported("flash attention with dropout or logsumexp output")
    out = _attention(ctx, q, k, v, kwargs.get("attn_mask"), causal, kwargs.get("scale"), False)
    return [out, None]


@lowers(aten.dropout.default, aten.native_dropout.default)
def _dropout(ctx, node, args, kwargs):
    train = args[2] if len(args) > 2 else kwargs.get("train", False)
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    if train and p > 0:
        raise Unsupported("dropout in training mode")
    if node.target == aten.native_dropout.default:
        if not only_first_result_used(node):
            raise Unsupported("dropout mask is used")
        return [args[0], None]
    return args[0]
