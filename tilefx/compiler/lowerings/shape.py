"""Lowerings of ATen ops that only move data: views, permutes, slicing, concat, casts.

Ops that are copies or aliases in PyTorch (``clone``, ``alias``, ``detach``,
same-dtype ``_to_copy``) emit nothing: the IR has value semantics, so the
node simply maps to its input value. ``split`` and friends return a list of
values that ``operator.getitem`` nodes index.
"""

from __future__ import annotations

import torch

from tilefx.compiler.lowerings.context import ir_dtype
from tilefx.compiler.lowerings.registry import Unsupported, lowers
from tilefx.ir.ops.shapes import normalize_axis
from tilefx.ir.types import Dim, DType, dims_equal

aten = torch.ops.aten

_INT64_MAX = 2**63 - 1


@lowers(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
        aten.contiguous.default)
def _identity(ctx, node, args, kwargs):
    return args[0]


@lowers(aten._to_copy.default)
def _to_copy(ctx, node, args, kwargs):
    dtype = kwargs.get("dtype")
    x = args[0]
    return x if dtype is None else ctx.cast(x, ir_dtype(dtype))


@lowers(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(ctx, node, args, kwargs):
    x, shape = args[0], ctx.shape(args[1])
    if tuple(shape) == tuple(x.type.shape):
        return x
    return ctx.b.op("reshape", x, shape=shape)


@lowers(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
        aten.flatten.using_ints, aten.unflatten.int)
def _reshape_to_result(ctx, node, args, kwargs):
    shape = ctx.out_type(node).shape
    if tuple(shape) == tuple(args[0].type.shape):
        return args[0]
    return ctx.b.op("reshape", args[0], shape=shape)


@lowers(aten.permute.default)
def _permute(ctx, node, args, kwargs):
    x = args[0]
    dims = tuple(normalize_axis(d, x.type.rank) for d in args[1])
    return x if dims == tuple(range(x.type.rank)) else ctx.b.op("permute", x, dims=dims)


@lowers(aten.transpose.int)
def _transpose(ctx, node, args, kwargs):
    x = args[0]
    rank = x.type.rank
    d0, d1 = normalize_axis(args[1], rank), normalize_axis(args[2], rank)
    dims = list(range(rank))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return x if d0 == d1 else ctx.b.op("permute", x, dims=tuple(dims))


@lowers(aten.t.default)
def _t(ctx, node, args, kwargs):
    x = args[0]
    return x if x.type.rank < 2 else ctx.b.op("permute", x, dims=(1, 0))


@lowers(aten.expand.default)
def _expand(ctx, node, args, kwargs):
    x, sizes = args[0], list(args[1])
    offset = len(sizes) - x.type.rank
    shape = tuple(x.type.shape[i - offset] if isinstance(s, int) and s == -1 else ctx.dim(s)
                  for i, s in enumerate(sizes))
    if shape == tuple(x.type.shape):
        return x
    return ctx.b.op("broadcast_to", x, shape=shape)


@lowers(aten.cat.default)
def _cat(ctx, node, args, kwargs):
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    out = ctx.out_type(node)
    # torch skips legacy empty 1-D tensors in cat
    if out.rank != 1:
        tensors = [t for t in tensors if not (t.type.rank == 1 and t.type.shape[0] == 0)]
    tensors = [ctx.cast(t, out.dtype) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    return ctx.b.op("concat", *tensors, axis=normalize_axis(dim, out.rank))


def clamp_slice(start: int | None, end: int | None, size: Dim) -> tuple[Dim, Dim]:
    """torch's slice bounds clamped into [0, size] (works for a symbolic size)."""
    def clamp(i: int | None, default: Dim) -> Dim:
        if i is None:
            return default
        if not isinstance(i, int):
            return i  # a symbolic bound: trust export's guards
        if isinstance(size, int):
            if i < 0:
                i += size
            return min(max(i, 0), size)
        if i >= _INT64_MAX // 2:
            return size
        return size + i if i < 0 else i
    return clamp(start, 0), clamp(end, size)


def slice_value(ctx, x, axis: int, start, end, step: int = 1):
    size = x.type.shape[axis]
    lo, hi = clamp_slice(start, end, size)
    if isinstance(lo, int) and isinstance(hi, int) and hi < lo:
        hi = lo
    if step == 1 and dims_equal(lo, 0) and dims_equal(hi, size):
        return x
    return ctx.b.op("slice", x, axis=axis, start=lo, end=hi, step=step)


@lowers(aten.slice.Tensor)
def _slice(ctx, node, args, kwargs):
    x = args[0]
    params = list(args[1:]) + [None] * (4 - len(args[1:]))
    dim = kwargs.get("dim", params[0] if params[0] is not None else 0)
    start = kwargs.get("start", params[1])
    end = kwargs.get("end", params[2])
    step = kwargs.get("step", params[3] if params[3] is not None else 1)
    if not isinstance(step, int):
        raise Unsupported("slice with a symbolic step")
    return slice_value(ctx, x, normalize_axis(dim, x.type.rank), start, end, step)


@lowers(aten.select.int)
def _select(ctx, node, args, kwargs):
    x, dim, index = args
    axis = normalize_axis(dim, x.type.rank)
    size = x.type.shape[axis]
    if isinstance(index, int) and index < 0:
        index = index + size
    y = ctx.b.op("slice", x, axis=axis, start=index, end=index + 1, step=1)
    return ctx.b.op("reshape", y, shape=ctx.out_type(node).shape)


def _split_at(ctx, x, sizes, dim):
    axis = normalize_axis(dim, x.type.rank)
    out, start = [], 0
    for s in sizes:
        out.append(slice_value(ctx, x, axis, start, start + s))
        start = start + s
    return out


@lowers(aten.split.Tensor)
def _split(ctx, node, args, kwargs):
    x, size = args[0], args[1]
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    total = x.type.shape[normalize_axis(dim, x.type.rank)]
    if not isinstance(total, int) or not isinstance(size, int):
        raise Unsupported("split of a symbolic dimension")
    sizes = [min(size, total - i) for i in range(0, total, size)] or [0]
    return _split_at(ctx, x, sizes, dim)


@lowers(aten.split_with_sizes.default)
def _split_with_sizes(ctx, node, args, kwargs):
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    return _split_at(ctx, args[0], args[1], dim)


@lowers(aten.chunk.default)
def _chunk(ctx, node, args, kwargs):
    x, chunks = args[0], args[1]
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    total = x.type.shape[normalize_axis(dim, x.type.rank)]
    if not isinstance(total, int):
        raise Unsupported("chunk of a symbolic dimension")
    size = -(-total // chunks)
    return _split_at(ctx, x, [min(size, total - i) for i in range(0, total, size)], dim)


@lowers(aten.unbind.int)
def _unbind(ctx, node, args, kwargs):
    x = args[0]
    dim = normalize_axis(args[1] if len(args) > 1 else kwargs.get("dim", 0), x.type.rank)
    n = x.type.shape[dim]
    if not isinstance(n, int):
        raise Unsupported("unbind of a symbolic dimension")
    shape = tuple(d for i, d in enumerate(x.type.shape) if i != dim)
    return [ctx.b.op("reshape", ctx.b.op("slice", x, axis=dim, start=i, end=i + 1), shape=shape)
            for i in range(n)]


@lowers(aten.constant_pad_nd.default)
def _constant_pad(ctx, node, args, kwargs):
    x, pad = args[0], list(args[1])
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    rank = x.type.rank
    pads = [0] * (2 * rank)
    for i in range(len(pad) // 2):  # torch lists pads from the last dim backwards
        d = rank - 1 - i
        pads[2 * d], pads[2 * d + 1] = pad[2 * i], pad[2 * i + 1]
    if any(not isinstance(p, int) or p < 0 for p in pads):
        raise Unsupported("negative or symbolic padding")
    if not any(pads):
        return x
    return ctx.b.op("pad", x, pads=tuple(pads), value=float(value))


@lowers(aten.embedding.default)
def _embedding(ctx, node, args, kwargs):
    # padding_idx / scale_grad_by_freq only matter for the backward pass
    # torch's embedding and index_select refuse negative indices; w[i] wraps them
    return ctx.b.op("take", args[0], args[1], axis=0, wrap=False)


@lowers(aten.index_select.default)
def _index_select(ctx, node, args, kwargs):
    x, dim, index = args
    return ctx.b.op("take", x, index, axis=normalize_axis(dim, x.type.rank), wrap=False)


@lowers(aten.index.Tensor)
def _index(ctx, node, args, kwargs):
    x, indices = args
    used = [(i, t) for i, t in enumerate(indices) if t is not None]
    if len(used) != 1 or not used[0][1].type.dtype.is_int:
        raise Unsupported("advanced indexing with several or boolean index tensors")
    axis, index = used[0]
    return ctx.b.op("take", x, index, axis=axis)


@lowers(aten.copy.default)
def _copy(ctx, node, args, kwargs):
    """``dst.copy_(src)`` made functional: ``src`` broadcast to ``dst``'s shape in its dtype
    (Swin's window mask is built by slice assignments, each a copy into a slice)."""
    dst, src = args[0], args[1]
    out = ctx.out_type(node)
    if not isinstance(src, type(dst)):  # a Python number
        src = ctx.scalar(src, out.dtype)
    if tuple(src.type.shape) != tuple(out.shape):
        src = ctx.b.op("broadcast_to", src, shape=tuple(out.shape))
    return ctx.cast(src, out.dtype)


@lowers(aten.slice_scatter.default)
def _slice_scatter(ctx, node, args, kwargs):
    """``input`` with ``src`` written into ``input[start:end]`` along ``dim`` (step 1):
    ``where(start <= i < end, pad(src), input)``, a pointwise select (and, when both are
    constants, a constant after folding)."""
    params = list(args[2:]) + [None] * (4 - len(args[2:]))
    x, src = args[0], args[1]
    dim = kwargs.get("dim", params[0] if params[0] is not None else 0)
    start, end = kwargs.get("start", params[1]), kwargs.get("end", params[2])
    step = kwargs.get("step", params[3] if params[3] is not None else 1)
    axis = normalize_axis(dim, x.type.rank)
    size = x.type.shape[axis]
    lo, hi = clamp_slice(start, end, size)
    if step != 1 or not all(isinstance(d, int) for d in (lo, hi, size)):
        raise Unsupported("slice_scatter with a step or a symbolic bound")
    if hi <= lo:
        return x
    pads = [0] * (2 * x.type.rank)
    pads[2 * axis], pads[2 * axis + 1] = lo, size - hi
    src = ctx.cast(src, x.type.dtype)
    placed = ctx.b.op("pad", src, pads=tuple(pads), value=0.0) if lo or hi != size else src
    shape = tuple(size if i == axis else 1 for i in range(x.type.rank))
    i = ctx.b.op("iota", shape=shape, axis=axis, dtype=DType.int64)
    inside = ctx.b.op("logical_and", ctx.b.op("ge", i, ctx.scalar(lo, DType.int64)),
                      ctx.b.op("lt", i, ctx.scalar(hi, DType.int64)))
    return ctx.b.op("where", inside, placed, x)
