"""Canonicalization: rewrite composite and redundant ops into the few forms later passes expect.

The rules are a table (``canonical_rules``), one line per pattern:

- ``batch_norm(x, mean, var, w, b)`` -> ``x * scale + shift`` with per-channel
  ``scale``/``shift`` reshaped to ``[C, 1, ...]``; computed now (float64, then
  cast) when the four parameters are constants, else emitted as ops.
  Batch-norm folding into a preceding conv (``fold.fold_batch_norm``) then works
  on this ``mul``/``add`` form, so it also covers a hand-written ``x * s + t``.
- ``attention(q, k, v[, mask])`` -> ``softmax(q @ k^T * scale [+ mask]) @ v``;
  a bool mask (keep = True) and the causal mask become ``where(mask, s, -inf)``;
  the causal mask is a constant ``[L, S]`` when L and S are static, else built
  from two ``iota`` ops. Only with ``decompose_attention`` (the default).
- ``adaptive_avg_pool2d(x, 1)`` and an ``avg_pool2d`` whose one window is the
  whole plane -> ``mean(x, dims=(2, 3), keepdim=True)``: a global pool is a row
  reduction (N*C rows of H*W), which the reduction templates read at memory
  bandwidth; the pooling templates loop over one window per output element.
  ``adaptive_avg_pool2d`` whose windows are uniform (H % OH == W % OW == 0) ->
  ``avg_pool2d`` with kernel = stride = H/OH, W/OW; to the input's own size -> ``x``.
- ``identity(x)``, ``cast(x)`` to its own dtype, identity ``permute``/``reshape``
  -> ``x``; ``clamp(min=0)`` -> ``relu``; permute∘permute and reshape∘reshape
  merged; ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` (scalars) -> ``x``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops.shapes import broadcast_shapes
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import PatternRewriter, Rule, rewrite_graph


def _param_hint(rw: PatternRewriter, v: Value, suffix: str) -> str:
    """``bn1_weight`` -> ``bn1_scale``: readable names for folded parameters."""
    op = rw.producer(v)
    if op is not None and op.name == "cast":  # a bf16 weight is held as cast(const f32)
        op = rw.producer(op.inputs[0])
    base = (op.attr("name") if op is not None and op.name == "const" else None) or v.name
    for tail in (".weight", "_weight", "weight"):
        if base.endswith(tail) and len(base) > len(tail):
            base = base[: -len(tail)]
            break
    return f"{base}_{suffix}"


def batch_norm_to_affine(rw: PatternRewriter, op: Op) -> Value | None:
    x, mean, var, weight, bias = op.inputs
    if x.type.rank < 2:
        return None
    eps = float(op.attr("eps"))
    channel_shape = (-1,) + (1,) * (x.type.rank - 2)
    arrays = [rw.held_array(v) for v in (mean, var, weight, bias)]  # bf16 ones too
    if all(a is not None for a in arrays):
        m, var_, w, b = (a.astype(np.float64) for a in arrays)
        scale = w / np.sqrt(var_ + eps)
        shift = b - m * scale
        dtype = x.type.dtype
        s = rw.typed_const(scale.reshape(channel_shape), dtype, _param_hint(rw, weight, "scale"))
        t = rw.typed_const(shift.reshape(channel_shape), dtype, _param_hint(rw, weight, "shift"))
    else:
        eps_v = rw.scalar_const(eps, var.type.dtype, "eps")
        scale = rw.op("mul", weight, rw.op("rsqrt", rw.op("add", var, eps_v)))
        shift = rw.op("sub", bias, rw.op("mul", mean, scale))
        if x.type.rank > 2:
            scale = rw.op("reshape", scale, shape=channel_shape)
            shift = rw.op("reshape", shift, shape=channel_shape)
        s, t = scale, shift
    return rw.op("add", rw.op("mul", x, s), t)


def _causal_mask(rw: PatternRewriter, length: object, source: object) -> Value:
    if isinstance(length, int) and isinstance(source, int):
        return rw.const(np.tril(np.ones((length, source), dtype=bool)), "causal_mask")
    row = rw.op("iota", shape=(length, source), axis=0)
    col = rw.op("iota", shape=(length, source), axis=1)
    return rw.op("ge", row, col)  # keep key j for query i when j <= i (torch's tril convention)


def attention_to_softmax(rw: PatternRewriter, op: Op) -> Value | None:
    q, k, v = op.inputs[:3]
    mask = op.inputs[3] if len(op.inputs) == 4 else None
    embed = q.type.shape[-1]
    scale = op.attr("scale")
    if scale is None:
        if not isinstance(embed, int):
            return None  # 1/sqrt(E) of a symbolic E: leave the op whole
        scale = 1.0 / math.sqrt(embed)
    length, source = q.type.shape[-2], k.type.shape[-2]
    scores_shape = broadcast_shapes(q.type.shape[:-2], k.type.shape[:-2]) + (length, source)
    if mask is not None and broadcast_shapes(mask.type.shape, scores_shape) != scores_shape:
        return None  # a mask with extra batch dims would change the result type
    rank = k.type.rank
    kt = rw.op("permute", k, dims=tuple(range(rank - 2)) + (rank - 1, rank - 2))
    dtype = q.type.dtype
    s = rw.op("mul", rw.op("matmul", q, kt), rw.scalar_const(scale, dtype, "scale"))
    keep_masks = [_causal_mask(rw, length, source)] if op.attr("causal") else []
    if mask is not None and mask.type.dtype == DType.bool:
        keep_masks.append(mask)
    elif mask is not None:
        s = rw.op("add", s, mask)
    for keep in keep_masks:
        s = rw.op("where", keep, s, rw.scalar_const(float("-inf"), dtype, "neg_inf"))
    # torch's attention softmax is a *safe* one (torch._safe_softmax): a row whose scores
    # are all -inf (a query every key is masked from) gives 0, where softmax gives NaN
    return rw.op("matmul", rw.op("softmax", s, dim=-1, safe=True), v)


def adaptive_pool_to_avg_pool(rw: PatternRewriter, op: Op) -> Value | None:
    x = op.inputs[0]
    (h, w), (oh, ow) = x.type.shape[2:], op.attr("output_size")
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):  # symbolic planes too
        return rw.op("mean", x, dims=(2, 3), keepdim=True)
    if not all(isinstance(d, int) and d > 0 for d in (h, w, oh, ow)) or h % oh or w % ow:
        return None
    kernel = (h // oh, w // ow)
    return rw.op("avg_pool2d", x, kernel=kernel, stride=kernel)


def global_avg_pool_to_mean(rw: PatternRewriter, op: Op) -> Value | None:
    """One unpadded window covering the plane: every divisor is H*W, as in ``mean``."""
    x = op.inputs[0]
    plane = tuple(x.type.shape[2:])
    if (tuple(op.attr("kernel")) != plane or tuple(op.attr("padding")) != (0, 0)
            or op.attr("divisor_override") is not None or tuple(op.result.type.shape[2:]) != (1, 1)):
        return None
    return rw.op("mean", x, dims=(2, 3), keepdim=True)


def drop_identity(rw: PatternRewriter, op: Op) -> Value | None:
    return op.inputs[0]


def drop_noop_cast(rw: PatternRewriter, op: Op) -> Value | None:
    return op.inputs[0] if op.attr("dtype") == op.inputs[0].type.dtype else None


def clamp_to_relu(rw: PatternRewriter, op: Op) -> Value | None:
    lo, hi = op.attr("min"), op.attr("max")
    if hi is None and lo is not None and not isinstance(lo, bool) and lo == 0:
        return rw.op("relu", op.inputs[0])
    return None


def merge_permutes(rw: PatternRewriter, op: Op) -> Value | None:
    x = op.inputs[0]
    dims = tuple(d % x.type.rank for d in op.attr("dims")) if x.type.rank else ()
    if dims == tuple(range(x.type.rank)):
        return x
    inner = rw.producer(x)
    if inner is not None and inner.name == "permute":
        inner_dims = tuple(d % x.type.rank for d in inner.attr("dims"))
        return rw.op("permute", inner.inputs[0], dims=tuple(inner_dims[d] for d in dims))
    return None


def merge_reshapes(rw: PatternRewriter, op: Op) -> Value | None:
    x = op.inputs[0]
    if x.type.shape == op.result.type.shape:
        return x
    inner = rw.producer(x)
    if inner is not None and inner.name == "reshape":
        return rw.op("reshape", inner.inputs[0], shape=op.result.type.shape)
    return None


def _neutral_operand(neutral: int, commutes: bool):
    """``x op c`` -> ``x`` when ``c`` is the scalar ``neutral`` and the result type is x's."""
    def rule(rw: PatternRewriter, op: Op) -> Value | None:
        a, b = op.inputs
        candidates = [(a, b), (b, a)] if commutes else [(a, b)]
        for x, c in candidates:
            value = rw.scalar(c)
            if value is not None and value == neutral and x.type == op.result.type:
                return x
        return None
    return rule


def canonical_rules(decompose: bool = True) -> Mapping[str, Sequence[Rule]]:
    rules: dict[str, list[Rule]] = {
        "batch_norm": [batch_norm_to_affine],
        "identity": [drop_identity],
        "cast": [drop_noop_cast],
        "clamp": [clamp_to_relu],
        "permute": [merge_permutes],
        "reshape": [merge_reshapes],
        "mul": [_neutral_operand(1, commutes=True)],
        "div": [_neutral_operand(1, commutes=False)],
        "add": [_neutral_operand(0, commutes=True)],
        "sub": [_neutral_operand(0, commutes=False)],
        "adaptive_avg_pool2d": [adaptive_pool_to_avg_pool],
        "avg_pool2d": [global_avg_pool_to_mean],
    }
    if decompose:
        rules["attention"] = [attention_to_softmax]
    return rules


@graph_pass("canonicalize")
def canonicalize(graph: Graph, decompose_attention: bool = True) -> Graph:
    return rewrite_graph(graph, canonical_rules(decompose_attention))
