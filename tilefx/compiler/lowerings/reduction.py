"""Lowerings of ATen reductions (sum, mean, amax, amin, prod, any, all).

ATen spells "all dims" three ways (``.default`` overloads, ``dim=None`` and
``dim=[]`` for amax/amin); the IR spells it ``dims=()``. Sums of bool/int
tensors accumulate in int64 as in torch: the input is cast to the result dtype
first.
"""

from __future__ import annotations

import torch

from tilefx.compiler.lowerings.nn import only_first_result_used
from tilefx.compiler.lowerings.registry import Unsupported, lowers
from tilefx.ir.ops.shapes import normalize_axis
from tilefx.ir.types import DType

aten = torch.ops.aten

_REDUCE = {
    aten.sum.dim_IntList: "sum", aten.sum.default: "sum",
    aten.mean.dim: "mean", aten.mean.default: "mean",
    aten.amax.default: "amax", aten.amin.default: "amin",
    aten.prod.dim_int: "prod", aten.prod.default: "prod",
    aten.any.dim: "any", aten.any.dims: "any", aten.any.default: "any",
    aten.all.dim: "all", aten.all.dims: "all", aten.all.default: "all",
}

_ALL_DIMS = {aten.sum.default, aten.mean.default, aten.prod.default, aten.any.default, aten.all.default}


def _reduce(ctx, node, args, kwargs):
    name = _REDUCE[node.target]
    x = args[0]
    if node.target in _ALL_DIMS:
        dims, keepdim = (), False
    else:
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None:
        dims = ()
    elif isinstance(dims, int):
        dims = (dims,)
    rank = x.type.rank
    dims = tuple(sorted({normalize_axis(d, rank) for d in dims})) if rank else ()
    if rank == 0:  # reducing a scalar is the identity (up to dtype)
        return ctx.cast(x, ctx.out_type(node).dtype)
    out = ctx.out_type(node).dtype
    x = ctx.cast(x, DType.bool if name in ("any", "all") else out)
    return ctx.cast(ctx.b.op(name, x, dims=dims, keepdim=bool(keepdim)), out)


lowers(*_REDUCE)(_reduce)


@lowers(aten.max.dim, aten.min.dim)
def _max_min_dim(ctx, node, args, kwargs):
    """``x.max(dim)`` when only ``.values`` is read: an amax/amin."""
    if not only_first_result_used(node):
        raise Unsupported("the indices of max/min along a dim are used")
    x, dim = args[0], args[1]
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    name = "amax" if node.target == aten.max.dim else "amin"
    return [ctx.b.op(name, x, dims=(normalize_axis(dim, x.type.rank),), keepdim=bool(keepdim)), None]
