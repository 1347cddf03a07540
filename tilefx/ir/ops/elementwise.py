"""Elementwise and broadcast ops.

Binary ops take two tensors of the same dtype (the frontend inserts ``cast``
for type promotion and turns Python scalars into rank-0 ``const`` values) and
broadcast like numpy. Comparisons and logical ops produce ``bool``.
"""

from __future__ import annotations

from tilefx.ir.ops.registry import REQUIRED, Category, register_op
from tilefx.ir.ops.shapes import broadcast_shapes
from tilefx.ir.types import DType, TensorType

UNARY = ("neg", "exp", "log", "sqrt", "rsqrt", "abs", "relu", "sigmoid", "tanh", "silu",
         "hardswish", "hardsigmoid", "erf", "reciprocal", "sin", "cos", "floor", "ceil",
         "round", "sign", "logical_not", "identity")
ARITHMETIC = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
COMPARISON = ("eq", "ne", "lt", "le", "gt", "ge")
LOGICAL = ("logical_and", "logical_or")


def _same_type(types, attrs):
    return [types[0]]


for _name in UNARY:
    register_op(_name, Category.elementwise)(_same_type)

register_op("gelu", Category.elementwise, attrs={"approximate": "none"},
            doc="approximate is 'none' (erf) or 'tanh'")(_same_type)
register_op("leaky_relu", Category.elementwise, attrs={"negative_slope": 0.01})(_same_type)
register_op("clamp", Category.elementwise, attrs={"min": None, "max": None},
            doc="min/max are Python numbers or None")(_same_type)


@register_op("cast", Category.elementwise, attrs={"dtype": REQUIRED})
def _cast(types, attrs):
    dtype = attrs["dtype"]
    if not isinstance(dtype, DType):
        raise TypeError(f"cast: dtype must be a DType, got {dtype!r}")
    return [types[0].with_dtype(dtype)]


def _binary(result_dtype: DType | None):
    def infer(types, attrs):
        a, b = types
        if a.dtype != b.dtype:
            raise TypeError(f"binary op on {a.dtype.short} and {b.dtype.short}: insert a cast")
        return [TensorType(result_dtype or a.dtype, broadcast_shapes(a.shape, b.shape))]
    return infer


for _name in ARITHMETIC:
    register_op(_name, Category.broadcast, inputs=2)(_binary(None))
for _name in COMPARISON + LOGICAL:
    register_op(_name, Category.broadcast, inputs=2)(_binary(DType.bool))


@register_op("where", Category.broadcast, inputs=3)
def _where(types, attrs):
    cond, a, b = types
    if cond.dtype != DType.bool:
        raise TypeError("where: condition must be bool")
    if a.dtype != b.dtype:
        raise TypeError(f"where on {a.dtype.short} and {b.dtype.short}: insert a cast")
    return [TensorType(a.dtype, broadcast_shapes(cond.shape, a.shape, b.shape))]
