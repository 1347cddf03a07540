"""TE computes of the reduction, normalization, pooling and contraction ops.

Written directly in TE (not ``topi``) where PyTorch's semantics differ from
topi's or where the schedule templates need to recognize the blocks: pooling
follows PyTorch's ``ceil_mode`` / ``count_include_pad`` rules exactly, the
contraction computes are named ``matmul`` / ``conv2d`` (with a separate
``conv2d_pad`` block), and softmax-like ops are plain max / sum / map blocks.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from tvm import te, tirx, topi

from tilefx.codegen.tvm.te_ops import (TeContext, dt, from_order_key, isfinite, lowest,
                                        nan_max_reducer, order_key, out_dtype, shape_of, te_op)
from tilefx.ir.graph import Op


def _axes(op: Op, rank: int) -> list[int]:
    dims = op.attr("dims")
    return sorted({d % rank for d in dims}) if dims else list(range(rank))


@te_op("sum", "mean", "amax", "amin", "prod", "any", "all")
def _reduce(ctx: TeContext, op: Op, ins: list[te.Tensor]) -> list[te.Tensor]:
    (x,) = ins
    axes, keep = _axes(op, len(x.shape)), bool(op.attr("keepdim"))
    if op.name in ("amax", "amin"):  # topi's max / min drop NaN (LLVM maxnum): reduce keys
        wins = op.name[1:]
        red = _reduce_axes(x, axes, keep, te.max if wins == "max" else te.min,
                           lambda v: order_key(v, wins), f"{ctx.name(op)}_red")
        dtype = out_dtype(op)
        return [te.compute(shape_of(op), lambda *i: from_order_key(red[i], dtype), name=ctx.name(op))]
    fn = {"sum": topi.sum, "mean": topi.sum, "prod": topi.prod, "any": topi.any,
          "all": topi.all}[op.name]
    red = fn(x, axis=axes, keepdims=keep)
    if op.name != "mean":
        return [te.compute(shape_of(op), lambda *i: red[i], name=ctx.name(op))]
    count = math.prod(int(x.shape[a]) for a in axes)
    dt = out_dtype(op)
    return [te.compute(shape_of(op), lambda *i: red[i] / tirx.const(count, dt), name=ctx.name(op))]


def _reduce_axes(x: te.Tensor, axes: list[int], keep: bool, reducer: Any,
                 value: Callable[[tirx.PrimExpr], tirx.PrimExpr], name: str) -> te.Tensor:
    """``reducer`` of ``value(x)`` over ``axes`` (kept as size 1 when ``keep``), like topi's."""
    rank = len(x.shape)
    ks = {a: te.reduce_axis((0, int(x.shape[a])), name=f"{name}_k{a}") for a in axes}
    shape = [1 if a in ks else int(d) for a, d in enumerate(x.shape) if keep or a not in ks]

    def body(*idx):
        it, src = iter(idx), []
        for a in range(rank):
            if a in ks:
                src.append(ks[a])
                if keep:
                    next(it)
            else:
                src.append(next(it))
        return reducer(value(x[tuple(src)]), axis=list(ks.values()))
    return te.compute(shape, body, name=name)


def _row_reduce(x: te.Tensor, axis: int, kind: str, name: str, value=None) -> te.Tensor:
    """Reduce ``value(idx)`` (default ``x[idx]``) along ``axis``, keeping it as size 1."""
    shape = [int(d) for d in x.shape]
    k = te.reduce_axis((0, shape[axis]), name=f"{name}_k")
    value = value or (lambda idx: x[idx])
    row = [d if i != axis else 1 for i, d in enumerate(shape)]

    def body(*idx):
        src = list(idx)
        src[axis] = k
        if kind == "max":  # of the order keys: a row with a NaN has a NaN max (te_ops)
            return te.max(order_key(value(tuple(src)), "max"), axis=k)
        return te.sum(value(tuple(src)), axis=k)
    red = te.compute(row, body, name=name)
    if kind != "max":
        return red
    return te.compute(row, lambda *i: from_order_key(red[i], str(x.dtype)), name=f"{name}_value")


def _at_row(t: te.Tensor, idx: tuple, axis: int):
    src = list(idx)
    src[axis] = 0
    return t[tuple(src)]


def fast_exp(x: tirx.PrimExpr, *, edges: bool = True) -> tirx.PrimExpr:
    """exp(x) as a vectorizable polynomial (float32; other dtypes keep ``te.exp``).

    TVM lowers ``exp`` to ``llvm.exp``, which LLVM scalarizes into one libm call
    per lane; in softmax that call was 90% of the time. This is Cephes' expf:
    exp(x) = 2^n * p(r) with r = x - n*ln2 split in two constants, relative error
    ~1 ulp. Inputs below -87 give exactly 0 (what softmax's masked -inf entries
    need), above ln(FLT_MAX) inf, NaN gives NaN; ``edges=False`` skips the last
    two for callers whose inputs are never above 0 (softmax's x - max: 15% faster).
    """
    dtype = dt(x)
    if dtype != "float32":
        return te.exp(x)
    c = lambda v: tirx.const(v, dtype)  # noqa: E731
    # Let-bound temporaries: each is used several times, and inlining the whole
    # expression into every use would grow it exponentially
    xv, nv, rv = tirx.Var("exp_x", dtype), tirx.Var("exp_n", dtype), tirx.Var("exp_r", dtype)
    p = c(1.9875691500e-4)
    for k in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * rv + c(k)
    # 2^(n-1) * 2: n reaches 128 near FLT_MAX, whose 2^n has no float32 exponent
    scale = tirx.reinterpret(dtype, tirx.shift_left(
        tirx.Cast("int32", nv) + tirx.const(126, "int32"), tirx.const(23, "int32")))
    y = (p * rv * rv + rv + c(1.0)) * scale * c(2.0)
    # edges as libm: 0 below the range, inf above it, NaN stays NaN (min/max would drop it)
    if edges:
        y = tirx.Select(xv > c(88.7228), c(math.inf), y)
        y = tirx.Select(tirx.isnan(xv), xv, y)
    y = tirx.Select(xv < c(-87.0), c(0.0), y)
    xc = tirx.max(tirx.min(xv, c(88.72)), c(-87.0))
    y = tirx.Let(rv, xc - nv * c(0.693359375) - nv * c(-2.12194440e-4), y)
    y = tirx.Let(nv, tirx.floor(xc * c(1.44269504088896341) + c(0.5)), y)
    return tirx.Let(xv, x, y)


def fast_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """tanh through ``fast_exp``: TVM's own lowering is the same formula on ``llvm.exp``,
    scalarized per lane (it made a GELU-tanh epilogue cost more than its matmul)."""
    dtype = dt(x)
    if dtype != "float32":
        return te.tanh(x)
    # each Let-bound expression may appear once in the tree: bind what is used twice
    xv, ev = tirx.Var("tanh_x", dtype), tirx.Var("tanh_e", dtype)
    t = (tirx.const(1.0, dtype) - ev) / (tirx.const(1.0, dtype) + ev)
    t = tirx.Let(ev, fast_exp(tirx.const(-2.0, dtype) * tirx.abs(xv)), t)
    sign = tirx.Select(xv < tirx.const(0.0, dtype), tirx.const(-1.0, dtype), tirx.const(1.0, dtype))
    return tirx.Let(xv, x, t * sign)


def fast_sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 / (1 + exp(-x)) through ``fast_exp`` (float32; other dtypes keep ``te.sigmoid``)."""
    dtype = dt(x)
    if dtype != "float32":
        return te.sigmoid(x)
    one = tirx.const(1.0, dtype)
    return one / (one + fast_exp(-x))


@te_op("softmax", "log_softmax")
def _softmax(ctx, op, ins):
    (x,) = ins
    axis = op.attr("dim") % len(x.shape)
    base = ctx.name(op)
    mx = _row_reduce(x, axis, "max", f"{base}_max")
    one, nan = tirx.const(1.0, x.dtype), tirx.const(math.nan, x.dtype)

    def per_row(i: tuple, value: tirx.PrimExpr) -> tirx.PrimExpr:
        # torch computes exp(x - max): a row with a NaN, a +inf or only -inf has a NaN
        # there, so its sum and every result are NaN. fast_exp(edges=False) does not
        # keep NaN, so say it once per row (hoisted out of the row loop with 1/sum)
        return tirx.Select(isfinite(_at_row(mx, i, axis)), value, nan)
    if op.name == "softmax":
        # exp once per element into a row buffer (the schedule keeps blocks named
        # *_rowbuf per row, in L1), then sum it and scale it; times the reciprocal:
        # LLVM hoists 1/sum out of the row loop, a divide per element would not be
        ex = te.compute(x.shape, lambda *i: fast_exp(x[i] - _at_row(mx, i, axis), edges=False),
                        name=f"{base}_rowbuf")
        sm = _row_reduce(ex, axis, "sum", f"{base}_sum")
        body = lambda *i: ex[i] * per_row(i, one / _at_row(sm, i, axis))  # noqa: E731
        if op.attr("safe", False):  # a row of only -inf (its max is -inf) gives 0, not NaN
            neg_inf, zero, plain = tirx.const(-math.inf, x.dtype), tirx.const(0.0, x.dtype), body
            body = lambda *i: tirx.Select(_at_row(mx, i, axis) == neg_inf, zero, plain(*i))  # noqa: E731
    else:
        sm = _row_reduce(x, axis, "sum", f"{base}_sum",
                         lambda idx: fast_exp(x[idx] - _at_row(mx, idx, axis), edges=False))
        body = lambda *i: x[i] - _at_row(mx, i, axis) - per_row(i, te.log(_at_row(sm, i, axis)))  # noqa: E731
    return [te.compute(shape_of(op), body, name=base)]


@te_op("layer_norm")
def _layer_norm(ctx, op, ins):
    x, w, b = ins
    rank, n = len(x.shape), op.attr("normalized_ndim")
    inner = [int(d) for d in x.shape[rank - n:]]
    count, dt, eps = math.prod(inner), out_dtype(op), op.attr("eps", 1e-5)
    base = ctx.name(op)
    rows = [int(d) for d in x.shape[:rank - n]]
    inv = tirx.const(1.0 / count, dt)

    def reduce_rows(value, name):
        ks = [te.reduce_axis((0, d), name=f"{name}_k{i}") for i, d in enumerate(inner)]
        return te.compute(rows, lambda *r: te.sum(value(tuple(r) + tuple(ks)), axis=ks), name=name)

    # two passes over the row (sum, then squared deviations): the row stays in L1
    # and this is as accurate as PyTorch's; scaling by 1/count happens per row
    total = reduce_rows(lambda i: x[i], f"{base}_mean")

    def centered(i):
        return x[i] - total[i[:rank - n]] * inv
    sq = reduce_rows(lambda i: centered(i) * centered(i), f"{base}_var")

    def body(*i):
        r, c = i[:rank - n], i[rank - n:]
        return centered(i) * te.rsqrt(sq[r] * inv + tirx.const(eps, dt)) * w[c] + b[c]
    return [te.compute(shape_of(op), body, name=base)]


# ---------------------------------------------------------------- pooling

@te_op("max_pool2d", "avg_pool2d")
def _pool(ctx, op, ins):
    (x,) = ins
    _, _, H, W = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (ph, pw) = op.attr("kernel"), op.attr("stride"), op.attr("padding")
    dh, dw = op.attr("dilation", (1, 1)) if op.name == "max_pool2d" else (1, 1)
    dt = out_dtype(op)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def pos(o, r, s, p, d):
        return o * s - p + r * d

    def inside(i, j):
        return tirx.all(i >= 0, i < H, j >= 0, j < W)

    if op.name == "max_pool2d":
        def body(n, c, oh, ow):
            i, j = pos(oh, ry, sh, ph, dh), pos(ow, rx, sw, pw, dw)
            # a window with a NaN is NaN, as in torch. if_then_else, not Select on a
            # clamped read: TVM drops the clamp under the Select's condition and the
            # padding reads fall outside the buffer
            value = tirx.if_then_else(inside(i, j), x[n, c, i, j], lowest(dt))
            return nan_max_reducer(value, axis=[ry, rx])
        return [te.compute(shape_of(op), body, name=ctx.name(op))]

    base = ctx.name(op)

    def total(n, c, oh, ow):
        i, j = pos(oh, ry, sh, ph, 1), pos(ow, rx, sw, pw, 1)
        return te.sum(tirx.if_then_else(inside(i, j), x[n, c, i, j], tirx.const(0, dt)),
                      axis=[ry, rx])
    summed = te.compute(shape_of(op), total, name=f"{base}_sum")
    override, include_pad = op.attr("divisor_override"), op.attr("count_include_pad", True)

    def divisor(oh, ow):
        # PyTorch: the window is clipped to the padded input for count_include_pad,
        # and to the real input otherwise.
        if override:
            return tirx.const(override, "int32")
        h0, w0 = oh * sh - ph, ow * sw - pw
        h1, w1 = tirx.min(h0 + kh, H + ph), tirx.min(w0 + kw, W + pw)
        if include_pad:
            return (h1 - h0) * (w1 - w0)
        h0, w0, h1, w1 = tirx.max(h0, 0), tirx.max(w0, 0), tirx.min(h1, H), tirx.min(w1, W)
        return (h1 - h0) * (w1 - w0)

    return [te.compute(shape_of(op), lambda n, c, oh, ow: summed[n, c, oh, ow]
                       / tirx.Cast(dt, divisor(oh, ow)), name=base)]


@te_op("adaptive_avg_pool2d")
def _adaptive_avg_pool(ctx, op, ins):
    (x,) = ins
    _, _, H, W = (int(d) for d in x.shape)
    OH, OW = op.attr("output_size")
    dt = out_dtype(op)
    # window o covers [floor(o*H/OH), ceil((o+1)*H/OH)); reduce over the widest one
    base = ctx.name(op)
    if (OH, OW) == (1, 1):
        # global pooling: one plain sum per (n, c), no window bounds to test
        ry, rx = te.reduce_axis((0, H), name="ry"), te.reduce_axis((0, W), name="rx")
        summed = te.compute(shape_of(op), lambda n, c, oh, ow: te.sum(x[n, c, ry, rx], axis=[ry, rx]),
                            name=f"{base}_sum")
        inv = tirx.const(1.0 / (H * W), dt)
        return [te.compute(shape_of(op), lambda *i: summed[i] * inv, name=base)]
    kh = max(-(-(o + 1) * H // OH) - (o * H // OH) for o in range(OH))
    kw = max(-(-(o + 1) * W // OW) - (o * W // OW) for o in range(OW))
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def bounds(o, size, out):
        return tirx.floordiv(o * size, out), tirx.floordiv((o + 1) * size + out - 1, out)


    def total(n, c, oh, ow):
        (h0, h1), (w0, w1) = bounds(oh, H, OH), bounds(ow, W, OW)
        ok = tirx.all(h0 + ry < h1, w0 + rx < w1)
        return te.sum(tirx.if_then_else(ok, x[n, c, h0 + ry, w0 + rx], tirx.const(0, dt)),
                      axis=[ry, rx])
    summed = te.compute(shape_of(op), total, name=f"{base}_sum")

    def body(n, c, oh, ow):
        (h0, h1), (w0, w1) = bounds(oh, H, OH), bounds(ow, W, OW)
        return summed[n, c, oh, ow] / tirx.Cast(dt, (h1 - h0) * (w1 - w0))
    return [te.compute(shape_of(op), body, name=base)]


# ---------------------------------------------------------------- contractions

@te_op("matmul")
def _matmul(ctx, op, ins):
    a, b = ins
    shape = shape_of(op)
    K = int(a.shape[-1])
    k = te.reduce_axis((0, K), name="k")
    nbatch = len(shape) - 2

    def batch_index(t, idx):
        lead = nbatch - (len(t.shape) - 2)
        return [0 if int(t.shape[d]) == 1 else idx[lead + d] for d in range(len(t.shape) - 2)]

    def body(*idx):
        i, j = idx[-2], idx[-1]
        return te.sum(a[tuple(batch_index(a, idx) + [i, k])] * b[tuple(batch_index(b, idx) + [k, j])],
                      axis=k)
    return [te.compute(shape, body, name=ctx.name(op))]


@te_op("conv2d")
def _conv2d(ctx, op, ins):
    x, w = ins
    N, C, H, W = (int(d) for d in x.shape)
    OC, ICg, KH, KW = (int(d) for d in w.shape)
    (sh, sw), (ph, pw), (dh, dw) = op.attr("stride"), op.attr("padding"), op.attr("dilation")
    groups = op.attr("groups", 1)
    dt = out_dtype(op)
    base = ctx.name(op)
    if ph or pw:
        # a separate pad block: the schedule computes it per tile or up front, so
        # the inner loop of the convolution stays free of bounds checks
        xp = te.compute((N, C, H + 2 * ph, W + 2 * pw), lambda n, c, i, j: tirx.if_then_else(
            tirx.all(i >= ph, i < H + ph, j >= pw, j < W + pw), x[n, c, i - ph, j - pw],
            tirx.const(0, dt)), name=f"{base}_pad")
    else:
        xp = x
    rc = te.reduce_axis((0, ICg), name="rc")
    ry, rx = te.reduce_axis((0, KH), name="ry"), te.reduce_axis((0, KW), name="rx")
    ocg = OC // groups

    def body(n, oc, oh, ow):
        c = rc if groups == 1 else tirx.floordiv(oc, ocg) * ICg + rc
        return te.sum(xp[n, c, oh * sh + ry * dh, ow * sw + rx * dw] * w[oc, rc, ry, rx],
                      axis=[rc, ry, rx])
    return [te.compute(shape_of(op), body, name=base)]


from tilefx.codegen.tvm.schedules import sparse as _sparse  # noqa: E402,F401  (registers bsr_matmul)
