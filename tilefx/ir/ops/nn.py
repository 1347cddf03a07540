"""Reductions, normalizations, pooling, contractions and attention.

Contractions (``matmul``, ``conv2d``) carry no bias: the frontend emits the bias
as a broadcast ``add`` so fusion treats it like any other epilogue.
``batch_norm`` (inference) and ``attention`` are composite ops that passes
rewrite (batch-norm folding; attention decomposition for CPU).
"""

from __future__ import annotations

from tilefx.ir.ops.registry import REQUIRED, Category, register_op
from tilefx.ir.ops.shapes import broadcast_shapes, normalize_axis, pool_out_dim
from tilefx.ir.types import DType, TensorType, dims_equal

REDUCTIONS = ("sum", "mean", "amax", "amin", "prod", "any", "all")


def _reduce(types, attrs):
    (x,) = types
    dims = {normalize_axis(d, x.rank) for d in attrs["dims"]} if attrs["dims"] else set(range(x.rank))
    if attrs["keepdim"]:
        shape = tuple(1 if i in dims else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in dims)
    return [x.with_shape(shape)]


for _name in REDUCTIONS:
    register_op(_name, Category.reduction, attrs={"dims": REQUIRED, "keepdim": False},
                doc="dims=() reduces every axis")(_reduce)


def _same_type(types, attrs):
    return [types[0]]


# safe: a row whose inputs are all -inf gives 0, not NaN (torch._safe_softmax, what
# scaled_dot_product_attention uses for a query every key is masked from)
register_op("softmax", Category.reduction, attrs={"dim": REQUIRED, "safe": False})(_same_type)
register_op("log_softmax", Category.reduction, attrs={"dim": REQUIRED})(_same_type)


@register_op("layer_norm", Category.reduction, inputs=3, attrs={"normalized_ndim": REQUIRED, "eps": 1e-5},
             doc="layer_norm(x, weight, bias) over the last normalized_ndim axes")
def _layer_norm(types, attrs):
    x, w, b = types
    n = attrs["normalized_ndim"]
    if tuple(w.shape) != tuple(x.shape[x.rank - n:]) or w.shape != b.shape:
        raise ValueError(f"layer_norm: weight {w.shape} / bias {b.shape} vs input {x.shape}")
    return [x]


@register_op("rms_norm", Category.reduction, attrs={"normalized_ndim": 1, "eps": REQUIRED},
             doc="rms_norm(x): x * rsqrt(mean(x^2) + eps) over the last normalized_ndim axes, float32 "
                 "(no weight: the scale stays an elementwise epilogue, after the cast a model writes)")
def _rms_norm(types, attrs):
    (x,) = types
    if x.dtype != DType.float32 or not 1 <= attrs["normalized_ndim"] <= x.rank:
        raise ValueError(f"rms_norm: float32 input of rank >= normalized_ndim, got {x}")
    return [x]


@register_op("batch_norm", Category.broadcast, inputs=5, attrs={"eps": 1e-5},
             doc="inference batch_norm(x, mean, var, weight, bias) over axis 1")
def _batch_norm(types, attrs):
    x = types[0]
    for t in types[1:]:
        if t.rank != 1 or not dims_equal(t.shape[0], x.shape[1]):
            raise ValueError(f"batch_norm: per-channel params must be [{x.shape[1]}], got {t.shape}")
    return [x]


@register_op("matmul", Category.contraction, inputs=2,
             doc="[..., M, K] x [..., K, N] -> [..., M, N], batch dims broadcast")
def _matmul(types, attrs):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ValueError("matmul: both operands must be at least 2-D")
    if a.dtype != b.dtype:
        raise TypeError("matmul: operand dtypes differ")
    if not dims_equal(a.shape[-1], b.shape[-2]):
        raise ValueError(f"matmul: inner dims differ, {a.shape} x {b.shape}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return [a.with_shape(batch + (a.shape[-2], b.shape[-1]))]


@register_op("conv2d", Category.contraction, inputs=2,
             attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
             doc="NCHW input, OIHW weight (I = C / groups)")
def _conv2d(types, attrs):
    x, w = types
    if x.rank != 4 or w.rank != 4:
        raise ValueError("conv2d: input and weight must be 4-D (NCHW, OIHW)")
    groups = attrs["groups"]
    if not dims_equal(w.shape[1] * groups, x.shape[1]):
        raise ValueError(f"conv2d: weight {w.shape} with groups={groups} does not fit input {x.shape}")
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    oh = pool_out_dim(x.shape[2], w.shape[2], sh, ph, dh, False)
    ow = pool_out_dim(x.shape[3], w.shape[3], sw, pw, dw, False)
    return [x.with_shape((x.shape[0], w.shape[0], oh, ow))]


def _pool(types, attrs):
    (x,) = types
    if x.rank != 4:
        raise ValueError("pooling expects NCHW")
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    dh, dw = attrs.get("dilation", (1, 1))
    ceil = attrs["ceil_mode"]
    return [x.with_shape((x.shape[0], x.shape[1],
                          pool_out_dim(x.shape[2], kh, sh, ph, dh, ceil),
                          pool_out_dim(x.shape[3], kw, sw, pw, dw, ceil)))]


register_op("max_pool2d", Category.reduction,
            attrs={"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0),
                   "dilation": (1, 1), "ceil_mode": False})(_pool)
register_op("avg_pool2d", Category.reduction,
            attrs={"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0), "ceil_mode": False,
                   "count_include_pad": True, "divisor_override": None})(_pool)


@register_op("adaptive_avg_pool2d", Category.reduction, attrs={"output_size": REQUIRED})
def _adaptive_pool(types, attrs):
    (x,) = types
    oh, ow = attrs["output_size"]
    return [x.with_shape((x.shape[0], x.shape[1], oh, ow))]


@register_op("attention", Category.opaque, inputs=(3, 4), attrs={"causal": False, "scale": None},
             doc="softmax(q @ k^T * scale + mask) @ v over [..., L, E]; optional additive "
                 "float mask or bool keep-mask as 4th input; scale None = 1/sqrt(E)")
def _attention(types, attrs):
    q, k, v = types[:3]
    if not (dims_equal(q.shape[-1], k.shape[-1]) and dims_equal(k.shape[-2], v.shape[-2])):
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    if len(types) == 4 and types[3].dtype not in (DType.bool, q.dtype):
        raise TypeError("attention: mask must be bool or the query dtype")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    return [TensorType(q.dtype, batch + (q.shape[-2], v.shape[-1]))]
