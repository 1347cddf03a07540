"""Lowerings of tensor factories (full, zeros, ones, *_like, scalar_tensor, arange).

With static sizes a factory has no tensor inputs, so the frontend's constant
evaluation handles it before any rule runs. These rules cover the rest: sizes
that depend on a symbolic batch, and ``*_like`` of a runtime tensor. A filled
tensor is a rank-0 ``const`` broadcast to the result shape (no large constant).
"""

from __future__ import annotations

import torch

from tilefx.compiler.lowerings.registry import Unsupported, lowers

aten = torch.ops.aten


def _splat(ctx, node, value):
    out = ctx.out_type(node)
    s = ctx.scalar(value, out.dtype)
    return s if out.rank == 0 else ctx.b.op("broadcast_to", s, shape=out.shape)


@lowers(aten.full.default, aten.full_like.default)
def _full(ctx, node, args, kwargs):
    return _splat(ctx, node, args[1] if len(args) > 1 else kwargs["fill_value"])


@lowers(aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default)
def _zeros(ctx, node, args, kwargs):
    return _splat(ctx, node, 0)


@lowers(aten.ones.default, aten.ones_like.default, aten.new_ones.default)
def _ones(ctx, node, args, kwargs):
    return _splat(ctx, node, 1)


@lowers(aten.scalar_tensor.default)
def _scalar_tensor(ctx, node, args, kwargs):
    return _splat(ctx, node, args[0])


@lowers(aten.arange.start_step, aten.arange.default, aten.arange.start)
def _arange(ctx, node, args, kwargs):
    if node.target == aten.arange.default:
        start, step = 0, 1
    else:
        start = args[0]
        step = args[2] if len(args) > 2 else kwargs.get("step", 1)
    if not isinstance(start, (int, float)) or not isinstance(step, (int, float)):
        raise Unsupported("arange with a symbolic start or step")
    out = ctx.out_type(node)
    idx = ctx.b.op("iota", shape=out.shape, axis=0, dtype=out.dtype)
    if step != 1:
        idx = ctx.b.op("mul", idx, ctx.scalar(step, out.dtype))
    if start != 0:
        idx = ctx.b.op("add", idx, ctx.scalar(start, out.dtype))
    return idx
