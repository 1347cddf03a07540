"""Constant attention masks said plainly: causal, no mask, or one copy for the batch (exact).

Models hand ``scaled_dot_product_attention`` the masks they build, and once
captured and folded those are constants of the full batch shape:

- transformers' Llama and GPT-2 build their causal mask as a bool tensor
  ``[B, 1, L, S]`` and pass it as ``attn_mask`` (not ``is_causal``): every
  attention then reads a mask element per score and computes every key block,
  the half above the diagonal only to throw it away;
- BERT without an ``attention_mask`` builds an all-True one;
- T5 adds its relative position bias to a zero mask, materialized for every
  batch row (``[16, 8, 256, 256]`` in fp16: 16.8 MB read per layer, where one
  row of it is 1 MB).

This pass reads each constant mask of an ``attention`` op:

- a mask that keeps every score (bool True, or an additive 0.0) is dropped;
- a mask that keeps exactly ``j <= i`` in each ``[L, S]`` slice (top-left
  aligned, as ``is_causal`` means it) and removes the rest (bool False, or an
  additive ``-inf`` / the dtype's lowest value, which softmax turns into the
  same 0) becomes ``causal=True``: the Triton template stops at the diagonal
  block and reads no mask, and the library candidate is SDPA with
  ``is_causal`` (its flash kernels);
- any other mask keeps its values, but leading axes along which it repeats
  become size 1 (T5's batch axis): the templates broadcast a mask.

Only constants are read, and the result computes the same scores, so it runs
for every target (on the CPU, attention is decomposed earlier and nothing here
applies).
"""

from __future__ import annotations

import logging

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter

log = logging.getLogger("tilefx.passes.attention_masks")

# an additive mask entry that removes a score: -inf or the lowest finite value of its dtype
# (transformers fills masks with torch.finfo(dtype).min), which no score can outweigh
LOWEST = {DType.float16: -65504.0, DType.bfloat16: -3.3895313892515355e38,
          DType.float32: float(np.finfo(np.float32).min), DType.float64: float(np.finfo(np.float64).min)}


def keep_of(data: np.ndarray, dtype: DType) -> np.ndarray | None:
    """Which scores the mask leaves as they are, when it removes all the others outright (a
    bool mask; an additive one of 0 and -inf or the lowest value); None for a real bias."""
    if dtype == DType.bool:
        return data.astype(bool)
    if dtype not in LOWEST:
        return None
    keep = data == 0
    removed = np.isneginf(data) | (data <= LOWEST[dtype])
    return keep if bool(np.all(keep | removed)) else None


def is_causal(keep: np.ndarray, length: int, source: int) -> bool:
    """Whether every ``[L, S]`` slice of ``keep`` is ``j <= i`` (torch's ``is_causal``)."""
    if keep.ndim < 2:
        return False
    full = np.broadcast_to(keep, keep.shape[:-2] + (length, source))
    return bool(np.all(full == np.tril(np.ones((length, source), dtype=bool))))


def repeated_axes_dropped(data: np.ndarray) -> np.ndarray:
    """``data`` with each leading axis (all but the last two) along which it repeats cut to size 1."""
    for axis in range(data.ndim - 2):
        if data.shape[axis] > 1:
            first = np.take(data, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, data.shape), data, equal_nan=True):
                data = first
    return data


def _simplified(rw: Rewriter, op: Op, mask: Value, data: np.ndarray) -> Value | None:
    q, k, v = op.inputs[:3]
    length, source = q.type.shape[-2], k.type.shape[-2]
    attrs = dict(op.attrs)
    keep = keep_of(data, mask.type.dtype)
    if keep is not None and keep.all():
        return rw.op("attention", q, k, v, hint=op.result.name, **attrs)
    if keep is not None and isinstance(length, int) and isinstance(source, int) and is_causal(keep, length, source):
        return rw.op("attention", q, k, v, hint=op.result.name, **{**attrs, "causal": True})
    small = repeated_axes_dropped(data)
    if small.shape == data.shape:
        return None
    held = rw.typed_const(np.ascontiguousarray(small), mask.type.dtype, f"{mask.name}_rows")
    return rw.op("attention", q, k, v, held, hint=op.result.name, **attrs)


@graph_pass("attention_masks")
def attention_masks(graph: Graph) -> Graph:
    rw = Rewriter(graph)
    changed: list[str] = []
    for op in graph.ops:
        if op.name == "attention" and len(op.inputs) == 4 and not op.attr("causal"):
            mask = op.inputs[3]
            data = rw.held_array(mask)
            new = _simplified(rw, op, mask, data) if data is not None else None
            if new is not None:
                rw.replace(op.result, new)
                changed.append(new.name)
                continue
        rw.emit(op)
    if not changed:
        return graph
    log.debug("attention_masks: %d attention masks simplified", len(changed))
    return rw.finish()
