"""Projections of one input as one matmul: q, k and v in a single GEMM (exact; GPU targets).

BERT, T5 and Llama project the same hidden state three times (separate ``nn.Linear``
layers for q, k and v); GPT-2 and ViT hold one packed weight instead. Apart, each GEMM
leaves the GPU part-filled in its last wave: BERT's ``4096 x 768`` outputs are 192
tiles of 128 x 128 on an H200's 132 SMs (1.45 waves, run as 2: 6 for q, k, v), Llama's
GQA k and v (``2048 x 512``) are 64 tiles each (half the SMs idle). Packed,
``4096 x 2304`` is 576 tiles (4.4 waves: 5), the input is read once instead of three
times and it is one launch. The results come back as column slices of the packed
output, which their readers (the attention's head split, RoPE) read in place, as they
read GPT-2's packed projection.

Merged are matmuls that

- share their left operand ``x`` and read constant 2-D weights ``[K, N_i]`` of one
  dtype (concatenated here once: ``[K, sum N_i]``);
- are projections: the result, after an optional constant bias add (merged too: all
  members have one, or none does), is read only by data movement or an attention
  (reshape, permute, slice, broadcast_to, attention), and neither it nor such a
  reader's result is a graph output. An
  elementwise reader would be that matmul's fused epilogue: SwiGLU's
  ``silu(x @ W_gate) * (x @ W_up)`` stays two matmuls (packed, the product would be
  a kernel of its own reading both halves back).

Only the compiler turns it on, for backends whose ``PassDefaults.merge_projections``
says so (``compiler/pass_setup.py``): the Triton backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter, value_readers

log = logging.getLogger("tilefx.passes.merge_projections")

IN_PLACE_READERS = frozenset({"reshape", "permute", "slice", "broadcast_to", "attention"})


@dataclass(frozen=True)
class _Member:
    matmul: Op
    weight: np.ndarray
    bias_add: Op | None       # add(matmul, bias) read in its place
    bias: np.ndarray | None

    @property
    def result(self) -> Value:
        return (self.bias_add or self.matmul).result


def _bias(reader: Rewriter, op: Op, n: int) -> tuple[Op, np.ndarray] | None:
    """``(add, bias)`` when ``op`` adds a constant of ``n`` values to the matmul's result."""
    if op.name != "add":
        return None
    for mine, other in ((0, 1), (1, 0)):
        data = reader.held_array(op.inputs[other])
        if data is not None and data.size == n and data.ndim >= 1 and data.shape[-1] == n \
                and tuple(op.result.type.shape) == tuple(op.inputs[mine].type.shape):
            return op, data.reshape(n)
    return None


def _member(reader: Rewriter, readers: dict[str, list[Op]], outputs: set[str], op: Op) -> _Member | None:
    x, w = op.inputs
    weight = reader.held_array(w)
    if weight is None or w.type.rank != 2:
        return None
    n = w.type.shape[1]
    found = _bias(reader, readers[op.result.name][0], n) if len(readers.get(op.result.name, ())) == 1 else None
    member = _Member(op, weight, *found) if found else _Member(op, weight, None, None)
    end = member.result
    users = readers.get(end.name, [])
    if end.name in outputs or not users or any(r.name not in IN_PLACE_READERS for r in users) \
            or any(v.name in outputs for r in users for v in r.results):
        return None  # a returned view of the packed output would not be the caller's own tensor
    return member


def _groups(graph: Graph) -> list[list[_Member]]:
    """The sets of projections to pack, each in graph order."""
    reader = Rewriter(graph)  # only read: it knows every constant once all ops are in
    for op in graph.ops:
        reader.emit(op)
    readers, outputs = value_readers(graph), {v.name for v in graph.outputs}
    by_input: dict[tuple, list[_Member]] = {}
    for op in graph.ops:
        if op.name == "matmul":
            m = _member(reader, readers, outputs, op)
            if m is not None:
                key = (op.inputs[0].name, op.inputs[1].type.dtype, op.inputs[1].type.shape[0], m.bias is not None)
                by_input.setdefault(key, []).append(m)
    return [g for g in by_input.values() if len(g) >= 2]


@graph_pass("merge_projections")
def merge_projections(graph: Graph) -> Graph:
    groups = _groups(graph)
    if not groups:
        return graph
    first = {g[0].matmul.result.name: g for g in groups}
    skipped = {o.result.name for g in groups for m in g for o in (m.matmul, m.bias_add) if o is not None}
    rw = Rewriter(graph)
    for op in graph.ops:
        group = first.get(op.result.name) if op.results else None
        if group is not None:
            _pack(rw, group)
        elif not (op.results and op.result.name in skipped):
            rw.emit(op)
    log.debug("merge_projections: %d groups of %s matmuls packed", len(groups), [len(g) for g in groups])
    return rw.finish()


def _pack(rw: Rewriter, group: list[_Member]) -> None:
    """One matmul (+ bias) for the group; each member's result is a column slice of it."""
    lead = group[0].matmul
    x, w = lead.inputs
    names = "_".join(m.matmul.inputs[1].name for m in group)[:80]
    weight = rw.typed_const(np.concatenate([m.weight for m in group], axis=1), w.type.dtype, f"{names}_packed")
    y = rw.op("matmul", x, weight, hint=lead.result.name)
    if group[0].bias is not None:
        bias = np.concatenate([m.bias for m in group])
        y = rw.op("add", y, rw.typed_const(bias, group[0].bias_add.result.type.dtype, f"{names}_packed_bias"))
    axis, start = y.type.rank - 1, 0
    for m in group:
        n = m.matmul.inputs[1].type.shape[1]
        rw.replace(m.result, rw.op("slice", y, axis=axis, start=start, end=start + n, step=1))
        start += n
