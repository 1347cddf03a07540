"""Constant folding and batch-norm folding: work done once at compile time.

``fold_constants``: an op whose inputs are all ``const`` is evaluated with the
reference interpreter (so folding means exactly what the op means) and
replaced by a new constant named after its source (``fc1_weight`` ->
``fc1_weight_folded``). This folds the transposed weight of a linear layer,
reshaped biases, and the ops ``canonicalize`` emits on constant parameters.
A fold that would *grow* the weights (``broadcast_to`` a bias to a full
activation, a big ``iota``) is skipped: that costs memory and bandwidth for no
work saved. numpy has no bfloat16, so a bf16 constant is held as
``cast(const f32 -> bf16)``; both passes read through that cast
(``Rewriter.held_array``) and write bf16 results in the same form
(``Rewriter.typed_const``), so bf16 weights fold as fp16 ones do.

``fold_batch_norm``: ``canonicalize`` has already turned ``batch_norm`` into
``x * s + t`` (per-channel constants), so this pass folds a per-output-channel
``mul`` into the ``conv2d`` before it, in that order:

    conv2d(x, W) [+ b] * s  ->  conv2d(x, W * s[:, None, None, None]) [+ b * s]
    (y + b1) + b2            ->  y + (b1 + b2)            (both constants)

The arithmetic is done in float64 and cast back, so the result matches the
unfolded graph to float rounding. The old conv stays until ``dce``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.interpreter import run_graph, torch_dtype
from tilefx.ir.ops import GIVEN_TYPE_OPS
from tilefx.ir.ops.shapes import broadcast_shapes
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import PatternRewriter, rewrite_graph

log = logging.getLogger("tilefx.passes.fold")

SMALL_CONST = 4096  # elements: a folded result this small is always kept
NOT_FOLDABLE = GIVEN_TYPE_OPS | {"attention"}


def _source_name(rw: PatternRewriter, inputs: tuple[Value, ...]) -> str:
    """The name a folded constant inherits: the largest named constant among the inputs."""
    best, best_size = None, -1
    for v in inputs:
        op = rw.producer(v)
        if op is not None and op.name == "cast":  # a bf16 constant is held as cast(const f32)
            op = rw.producer(op.inputs[0])
        if op is not None and op.name == "const" and op.attr("name") is not None:
            size = rw.constants[op.attr("name")].size
            if size > best_size:
                best, best_size = op.attr("name"), size
    if best is None:
        return "folded"
    return best if best.endswith("_folded") else f"{best}_folded"


def evaluate(op: Op, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run one op on numpy inputs through the reference interpreter. bf16 values come and
    go held as float32 (numpy has no bfloat16), so the op itself computes in bf16."""
    graph = Graph("fold", op.inputs, (op,), op.results, {})
    tensors = [torch.from_numpy(np.array(a, copy=True)).to(torch_dtype(v.type.dtype))
               for a, v in zip(arrays, op.inputs)]
    outs = run_graph(graph, tensors)
    return [(t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy() for t in outs]


def _holds_bf16(rw: PatternRewriter, op: Op) -> bool:
    """``cast(const f32 -> bf16)``: how a bf16 array is held, nothing left to fold (a
    rank-0 one folds: a scalar ``const`` holds a bf16 value as it is)."""
    return (op.name == "cast" and op.result.type.dtype == DType.bfloat16 and op.result.type.rank > 0
            and op.inputs[0].type.dtype == DType.float32 and rw.const_array(op.inputs[0]) is not None)


def fold_all_const(rw: PatternRewriter, op: Op) -> list[Value] | None:
    if op.name in NOT_FOLDABLE or not op.results or _holds_bf16(rw, op):
        return None
    arrays = [rw.held_array(v) for v in op.inputs]  # bf16 constants too (held as f32)
    if any(a is None for a in arrays):
        return None
    if any(not r.type.is_static for r in op.results):
        return None  # a symbolic size is not known yet
    in_size = sum(int(a.size) for a in arrays)  # type: ignore[union-attr]
    out_size = sum(int(r.type.numel()) for r in op.results)
    if out_size > max(in_size, SMALL_CONST):
        return None
    try:
        outs = evaluate(op, arrays)  # type: ignore[arg-type]
    except Exception as e:  # never fail a compile over an optimization
        log.debug("not folding %s: %s", op.name, e)
        return None
    hint = _source_name(rw, op.inputs)
    new = []
    for r, a in zip(op.results, outs):
        a = a.reshape(r.type.shape)
        new.append(rw.typed_const(a, r.type.dtype, hint) if a.ndim
                   else rw.scalar_const(a.item(), r.type.dtype, hint))
    return new


@graph_pass("fold_constants")
def fold_constants(graph: Graph) -> Graph:
    return rewrite_graph(graph, {"*": [fold_all_const]})


# --- batch-norm folding ---------------------------------------------------

def _channel_vector(array: np.ndarray, channels: int) -> np.ndarray | None:
    """``array`` as a [C] vector if it only varies along axis 1 of an NCHW tensor, else None."""
    if array.ndim > 4:
        return None
    full = array.reshape((1,) * (4 - array.ndim) + array.shape)
    if full.shape[0] != 1 or full.shape[2] != 1 or full.shape[3] != 1 or full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full[0, :, 0, 0], (channels,))


def _squeeze_leading(array: np.ndarray, ndim: int) -> np.ndarray:
    """Drop leading size-1 axes down to ``ndim`` (broadcasting is unchanged): [1, C, 1, 1] -> [C, 1, 1]."""
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    return array


def _split_const(rw: PatternRewriter, op: Op) -> tuple[Value, np.ndarray, Value] | None:
    """``(y, c, const value)`` for a binary op with exactly one constant operand."""
    a, b = op.inputs
    ca, cb = rw.held_array(a), rw.held_array(b)
    if (ca is None) == (cb is None):
        return None
    return (b, ca, a) if ca is not None else (a, cb, b)  # type: ignore[return-value]


def _scaled_conv(rw: PatternRewriter, conv: Op, scale: np.ndarray) -> Value | None:
    weight = rw.held_array(conv.inputs[1])
    if weight is None or rw.uses(conv.result) != 1 or not weight.dtype.kind == "f":
        return None
    folded = weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    w = rw.typed_const(folded, conv.inputs[1].type.dtype, _source_name(rw, (conv.inputs[1],)))
    return rw.op("conv2d", conv.inputs[0], w, **conv.attr_dict)


def fold_scale_into_conv(rw: PatternRewriter, op: Op) -> Value | None:
    split = _split_const(rw, op)
    if split is None or op.result.type != split[0].type:
        return None
    y, s, _ = split
    inner = rw.producer(y)
    if inner is None or not isinstance(op.result.type.shape[1] if op.result.type.rank == 4 else None, int):
        return None
    scale = _channel_vector(s.astype(np.float64), op.result.type.shape[1])
    if scale is None:
        return None
    if inner.name == "conv2d":
        return _scaled_conv(rw, inner, scale)
    if inner.name == "add" and rw.uses(y) == 1:
        bias_split = _split_const(rw, inner)
        if bias_split is None or bias_split[0].type != y.type:
            return None
        z, b, b_value = bias_split
        conv = rw.producer(z)
        if conv is None or conv.name != "conv2d":
            return None
        new_conv = _scaled_conv(rw, conv, scale)
        if new_conv is None:
            return None
        b4 = b.reshape((1,) * (4 - b.ndim) + b.shape).astype(np.float64)
        new_b = _squeeze_leading(b4 * scale.reshape(1, -1, 1, 1), b.ndim)
        if broadcast_shapes(new_b.shape, y.type.shape) != y.type.shape:
            return None
        return rw.op("add", new_conv, rw.typed_const(new_b, b_value.type.dtype, _source_name(rw, (b_value,))))
    return None


def merge_const_adds(rw: PatternRewriter, op: Op) -> Value | None:
    split = _split_const(rw, op)
    if split is None:
        return None
    y, b2, b2_value = split
    inner = rw.producer(y)
    if inner is None or inner.name != "add" or rw.uses(y) != 1:
        return None
    inner_split = _split_const(rw, inner)
    if inner_split is None:
        return None
    z, b1, b1_value = inner_split
    total = b1.astype(np.float64) + b2.astype(np.float64) if b1.dtype.kind == "f" else b1 + b2
    total = _squeeze_leading(total, max(b1.ndim, b2.ndim, 1))
    if broadcast_shapes(z.type.shape, total.shape) != op.result.type.shape or z.type.dtype != op.result.type.dtype:
        return None
    return rw.op("add", z, rw.typed_const(total, b1_value.type.dtype, _source_name(rw, (b1_value, b2_value))))


@graph_pass("fold_batch_norm")
def fold_batch_norm(graph: Graph) -> Graph:
    return rewrite_graph(graph, {"mul": [fold_scale_into_conv], "add": [merge_const_adds]})
