"""Injective ops: each output element is a copy of one input element.

They move data without arithmetic, so fusion inlines them into their consumers
(or, for ``reshape`` of a contiguous tensor, the runtime makes them free views).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilefx.ir.ops.registry import REQUIRED, VARIADIC, Category, register_op
from tilefx.ir.ops.shapes import broadcast_shapes, normalize_axis, resolve_reshape
from tilefx.ir.types import DType, TensorType, dims_equal, normalize_dim

if TYPE_CHECKING:
    from tilefx.ir.graph import Op


@register_op("reshape", Category.injective, attrs={"shape": REQUIRED},
             doc="row-major reshape; one dim may be -1")
def _reshape(types, attrs):
    return [types[0].with_shape(resolve_reshape(types[0].shape, attrs["shape"]))]


@register_op("permute", Category.injective, attrs={"dims": REQUIRED})
def _permute(types, attrs):
    (x,) = types
    dims = tuple(normalize_axis(d, x.rank) for d in attrs["dims"])
    if sorted(dims) != list(range(x.rank)):
        raise ValueError(f"permute: {attrs['dims']} is not a permutation of rank {x.rank}")
    return [x.with_shape(tuple(x.shape[d] for d in dims))]


@register_op("broadcast_to", Category.broadcast, attrs={"shape": REQUIRED})
def _broadcast_to(types, attrs):
    (x,) = types
    shape = tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape) != tuple(normalize_dim(d) for d in shape):
        raise ValueError(f"broadcast_to: {x.shape} does not broadcast to {shape}")
    return [x.with_shape(shape)]


@register_op("concat", Category.injective, inputs=VARIADIC, attrs={"axis": REQUIRED})
def _concat(types, attrs):
    first = types[0]
    axis = normalize_axis(attrs["axis"], first.rank)
    total = 0
    for t in types:
        if t.dtype != first.dtype or t.rank != first.rank:
            raise TypeError("concat: inputs differ in dtype or rank")
        for i, (a, b) in enumerate(zip(t.shape, first.shape)):
            if i != axis and not dims_equal(a, b):
                raise ValueError(f"concat: shapes {first.shape} and {t.shape} differ off axis {axis}")
        total = total + t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return [first.with_shape(tuple(shape))]


@register_op("slice", Category.injective,
             attrs={"axis": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1},
             doc="start/end already clamped to [0, dim] by the frontend")
def _slice(types, attrs):
    (x,) = types
    axis = normalize_axis(attrs["axis"], x.rank)
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if step < 1:
        raise ValueError("slice: step must be >= 1")
    length = normalize_dim((end - start + step - 1) // step) if isinstance(end - start, int) \
        else normalize_dim(-((start - end) // step))
    shape = list(x.shape)
    shape[axis] = length
    return [x.with_shape(tuple(shape))]


def is_narrow(op: Op) -> bool:
    """A step-1 ``slice`` with a literal start: ``x.narrow(axis, start, length)``, a view of
    its input (fusion leaves one the graph returns at the top level; the runtime views it)."""
    start = op.attr("start")
    return op.name == "slice" and op.attr("step") == 1 and isinstance(start, int) and start >= 0


@register_op("pad", Category.injective, attrs={"pads": REQUIRED, "value": 0.0},
             doc="pads = (before_0, after_0, before_1, after_1, ...) for every dim")
def _pad(types, attrs):
    (x,) = types
    pads = attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise ValueError("pad: need a (before, after) pair per dim")
    return [x.with_shape(tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(x.shape)))]


@register_op("take", Category.injective, inputs=2, attrs={"axis": 0, "wrap": True},
             doc="take(table, indices): gather along axis (embedding is take on axis 0); "
                 "wrap: a negative index counts from the end (w[i]), else it is out of "
                 "range (embedding, index_select)")
def _take(types, attrs):
    table, idx = types
    if not idx.dtype.is_int:
        raise TypeError("take: indices must be integers")
    axis = normalize_axis(attrs["axis"], table.rank)
    return [table.with_shape(table.shape[:axis] + idx.shape + table.shape[axis + 1:])]


@register_op("iota", Category.injective, inputs=0,
             attrs={"shape": REQUIRED, "axis": REQUIRED, "dtype": DType.int64},
             doc="out[..., i, ...] = i along axis")
def _iota(types, attrs):
    return [TensorType(attrs["dtype"], tuple(attrs["shape"]))]

