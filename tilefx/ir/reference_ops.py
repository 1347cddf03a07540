"""Reference semantics of every IR op, one ``@reference`` function per op.

Imported by ``interpreter.run_graph`` (not by ``import tilefx``, so torch
loads only when a graph is run). Each function reads like the op's
definition: the plain PyTorch call, plus the small adaptations where the IR
and torch disagree (IR pads list dims first, ``clamp`` allows no bounds,
reductions take ``dims=()`` to mean every axis, integer ``div`` truncates).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tilefx.ir.interpreter import RefContext, reference, run_fallback, run_graph, torch_dtype

# ----------------------------------------------------------------- elementwise

_UNARY = {
    "neg": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "abs": torch.abs, "relu": torch.relu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
    "erf": torch.erf, "reciprocal": torch.reciprocal, "sin": torch.sin, "cos": torch.cos,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "sign": torch.sign,
    "logical_not": torch.logical_not, "identity": lambda x: x,
}


def _unary(fn):  # noqa: ANN001, ANN202  (closure per op)
    return lambda ctx, x: fn(x)


for _name, _fn in _UNARY.items():
    reference(_name)(_unary(_fn))


@reference("gelu")
def _gelu(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=ctx.attrs["approximate"])


@reference("leaky_relu")
def _leaky_relu(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, ctx.attrs["negative_slope"])


@reference("clamp")
def _clamp(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    if lo is None and hi is None:  # torch.clamp refuses two missing bounds
        return x
    return torch.clamp(x, lo, hi)


@reference("cast")
def _cast(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(ctx.attrs["dtype"]))


_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "eq": torch.eq, "ne": torch.ne,
    "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or,
}


def _binary(fn):  # noqa: ANN001, ANN202
    return lambda ctx, a, b: fn(a, b)


for _name, _fn in _BINARY.items():
    reference(_name)(_binary(_fn))


@reference("div")
def _div(ctx: RefContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


@reference("where")
def _where(ctx: RefContext, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, a, b)


# ------------------------------------------------------------------- injective

@reference("reshape")
def _reshape(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(ctx.attrs["shape"])


@reference("permute")
def _permute(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return x.permute(ctx.attrs["dims"])


@reference("broadcast_to")
def _broadcast_to(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return x.expand(ctx.attrs["shape"])


@reference("concat")
def _concat(ctx: RefContext, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=ctx.attrs["axis"])


@reference("slice")
def _slice(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    a = ctx.attrs
    index = [slice(None)] * x.dim()
    index[a["axis"]] = slice(a["start"], a["end"], a["step"])
    return x[tuple(index)]


@reference("pad")
def _pad(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    # Written out (not F.pad) so every dtype works, bool included, and negative
    # pads crop: crop first, then copy into a tensor filled with the value.
    pads = ctx.attrs["pads"]
    before, after = pads[0::2], pads[1::2]
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(before, after)))
    x = x[crop]
    shape = [x.shape[i] + max(b, 0) + max(e, 0) for i, (b, e) in enumerate(zip(before, after))]
    out = x.new_full(shape, ctx.attrs["value"])
    out[tuple(slice(max(b, 0), max(b, 0) + x.shape[i]) for i, b in enumerate(before))] = x
    return out


def check_take_indices(idx: torch.Tensor, size: int, axis: int = 0, wrap: bool = True) -> torch.Tensor:
    """``idx`` with negative entries wrapped (``x[i]`` in torch); raises torch's
    IndexError for an entry outside ``[-size, size)`` (``[0, size)`` when not ``wrap``:
    embedding and index_select). One pass (aminmax) when all are in range."""
    if idx.numel():
        lo, hi = torch.aminmax(idx)
        low = -size if wrap else 0
        if int(lo) < low or int(hi) >= size:
            if not wrap:
                raise IndexError("index out of range in self")  # embedding's own words
            flat = idx.reshape(-1)
            bad = flat[(flat < -size) | (flat >= size)][0]
            raise IndexError(f"index {int(bad)} is out of bounds for dimension {axis} with size {size}")
        if int(lo) < 0:
            idx = torch.where(idx < 0, idx + size, idx)
    return idx


@reference("take")
def _take(ctx: RefContext, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = ctx.attrs["axis"] % table.dim()
    idx = check_take_indices(idx, table.shape[axis], axis, ctx.attrs.get("wrap", True))
    flat = table.index_select(axis, idx.reshape(-1).long())
    return flat.reshape(table.shape[:axis] + idx.shape + table.shape[axis + 1:])


@reference("iota")
def _iota(ctx: RefContext) -> torch.Tensor:
    shape, axis = ctx.attrs["shape"], ctx.attrs["axis"] % max(len(ctx.attrs["shape"]), 1)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return torch.arange(shape[axis], dtype=torch_dtype(ctx.attrs["dtype"])).reshape(view).expand(shape)


# ------------------------------------------------------------------ reductions

def _reduce_dims(ctx: RefContext, x: torch.Tensor) -> tuple[int, ...]:
    dims = ctx.attrs["dims"]
    return tuple(d % x.dim() for d in dims) if dims else tuple(range(x.dim()))


def _reduction(fn):  # noqa: ANN001, ANN202
    def run(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
        dims = _reduce_dims(ctx, x)
        return fn(x, dims, ctx.attrs["keepdim"]) if dims else x
    return run


reference("sum")(_reduction(lambda x, d, k: torch.sum(x, d, keepdim=k)))
reference("amax")(_reduction(lambda x, d, k: torch.amax(x, d, keepdim=k)))
reference("amin")(_reduction(lambda x, d, k: torch.amin(x, d, keepdim=k)))
reference("any")(_reduction(lambda x, d, k: torch.any(x, d, keepdim=k)))
reference("all")(_reduction(lambda x, d, k: torch.all(x, d, keepdim=k)))
# mean of an integer tensor: computed in float64 and cast back (to the IR dtype).
reference("mean")(_reduction(lambda x, d, k: torch.mean(
    x if x.is_floating_point() else x.double(), d, keepdim=k)))


@reference("prod")
def _prod(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    # torch.prod takes one dim at a time; reduce the highest first so indices stay valid.
    for d in sorted(_reduce_dims(ctx, x), reverse=True):
        x = torch.prod(x, d, keepdim=ctx.attrs["keepdim"])
    return x


@reference("softmax")
def _softmax(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    if ctx.attrs.get("safe"):
        return safe_softmax(x, ctx.attrs["dim"])
    return torch.softmax(x, ctx.attrs["dim"])


def safe_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax, except that a row of only -inf gives 0 (torch._safe_softmax; NaN stays NaN)."""
    masked = (x == float("-inf")).all(dim, keepdim=True)
    return torch.softmax(x, dim).masked_fill(masked, 0.0)


@reference("log_softmax")
def _log_softmax(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, ctx.attrs["dim"])


@reference("layer_norm")
def _layer_norm(ctx: RefContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = ctx.attrs["normalized_ndim"]
    return F.layer_norm(x, x.shape[x.dim() - n:], w, b, ctx.attrs["eps"])


@reference("rms_norm")
def _rms_norm(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(x.dim() - ctx.attrs["normalized_ndim"], x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + ctx.attrs["eps"])


@reference("batch_norm")
def _batch_norm(ctx: RefContext, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, mean, var, w, b, training=False, eps=ctx.attrs["eps"])


@reference("max_pool2d")
def _max_pool2d(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    a = ctx.attrs
    return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])


@reference("avg_pool2d")
def _avg_pool2d(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    a = ctx.attrs
    return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                        a["count_include_pad"], a["divisor_override"])


@reference("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(ctx: RefContext, x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, ctx.attrs["output_size"])


# ---------------------------------------------------------------- contractions

@reference("matmul")
def _matmul(ctx: RefContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@reference("bsr_matmul")
def _bsr_matmul(ctx: RefContext, x: torch.Tensor, data: torch.Tensor, indices: torch.Tensor,
                indptr: torch.Tensor) -> torch.Tensor:
    # densify W[K, N] from its block columns (see ir/ops/sparse.py), then contract
    nnzb, bk, bn = data.shape
    axis = ctx.attrs["axis"] % x.dim()
    kb, nb = x.shape[axis] // bk, indptr.numel() - 1
    col = torch.repeat_interleave(torch.arange(nb, device=x.device), torch.diff(indptr.long()))
    blocks = torch.zeros(kb, nb, bk, bn, dtype=x.dtype, device=x.device)
    blocks[indices.long(), col] = data
    w = blocks.permute(0, 2, 1, 3).reshape(kb * bk, nb * bn)
    return torch.movedim(torch.matmul(torch.movedim(x, axis, -1), w), -1, axis)


@reference("conv2d")
def _conv2d(ctx: RefContext, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = ctx.attrs
    return F.conv2d(x, w, None, a["stride"], a["padding"], a["dilation"], a["groups"])


@reference("attention")
def _attention(ctx: RefContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    # Spelled out (the math of F.scaled_dot_product_attention) because sdpa
    # refuses a mask together with is_causal; the causal mask is top-left aligned.
    scale = ctx.attrs["scale"]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if ctx.attrs["causal"]:
        L, S = q.shape[-2], k.shape[-2]
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(safe_softmax(scores, -1), v)


# ------------------------------------------------------------------ structural

@reference("const")
def _const(ctx: RefContext) -> torch.Tensor:
    array = ctx.graph.const_data(ctx.op)
    if str(array.dtype) == "bfloat16":  # numpy has no bf16; go through its bits
        return torch.from_numpy(np.array(array).view(np.uint16)).view(torch.bfloat16)
    # A copy: a reference run must never write into (or alias) the graph's weights.
    return torch.from_numpy(np.array(array, copy=True))


@reference("kernel")
def _kernel(ctx: RefContext, *inputs: torch.Tensor) -> list[torch.Tensor]:
    assert ctx.op.body is not None
    return run_graph(ctx.op.body, inputs, bindings=ctx.bindings)


@reference("fallback")
def _fallback(ctx: RefContext, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return run_fallback(ctx.op, inputs)
