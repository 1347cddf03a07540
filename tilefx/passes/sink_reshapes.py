"""Reshapes moved below the elementwise ops that read them, so epilogues stay with their matmul.

``x2 = addmm(b, x, W).view(B, L, N); gelu(x2)`` (GPT-2's ``Conv1D``, any
``nn.Linear`` on a flattened batch) puts a ``reshape`` between a matmul and its
activation. Fusion joins an elementwise op to a matmul's group only when it
has the matmul's result shape, and a reshape after a contraction stays at the
top level as a free view, so the activation became a kernel of its own: on an
H200, GPT-2's tanh-GELU read and wrote 2 x 25 MB per layer (13 us, 5% of the
model) that the matmul's epilogue does for free.

The rule, for an elementwise op whose every input is either a ``reshape`` of a
value of one shape ``S`` to the op's result shape, or a one-element value (a
scalar) of rank <= len(S), or a vector along the last axis that ``S`` shares (a
bias row): compute the op on the ``S``-shaped values and reshape its result
instead. It is exact (elementwise ops do not care about
shape) and composes: a diamond such as tanh-GELU (``x`` read by three ops)
sinks op by op, and the reshape that follows it merges with the one below.
Inputs of any other shape (a residual ``[B, L, N]``) leave the op alone: the
reshape then stays where the user wrote it.
"""

from __future__ import annotations

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import Category, get_op
from tilefx.passes.canonicalize import merge_reshapes
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import PatternRewriter, rewrite_graph


POINTWISE = (Category.elementwise, Category.broadcast)  # unary; binary and where


def _row(v: Value, shape: tuple) -> bool:
    """A vector along the last axis of ``shape`` (a bias row): it broadcasts the same way in
    any shape with that last axis."""
    return v.type.rank == 1 and len(shape) > 0 and v.type.shape[0] == shape[-1] and v.type.numel() != 1


def sink_reshape(rw: PatternRewriter, op: Op) -> Value | None:
    if op.name == "reshape" or len(op.results) != 1 or get_op(op.name).category not in POINTWISE:
        return None
    out_shape = op.result.type.shape
    source_shape = None
    inputs = []
    for v in op.inputs:
        producer = rw.producer(v)
        if producer is not None and producer.name == "reshape" and v.type.shape == out_shape:
            src = producer.inputs[0]
            if source_shape is not None and src.type.shape != source_shape:
                return None
            source_shape = src.type.shape
            inputs.append(src)
        elif v.type.numel() == 1 or _row(v, out_shape):
            inputs.append(v)
        else:
            return None
    if source_shape is None or source_shape == out_shape or any(
            v.type.rank > len(source_shape) for v in inputs) or any(
            _row(v, out_shape) and not _row(v, source_shape) for v in inputs):
        return None
    # every input is S-shaped or a scalar of rank <= len(S), so the result is S-shaped
    moved = rw.op(op.name, *inputs, hint=op.result.name, **dict(op.attrs))
    return rw.op("reshape", moved, shape=out_shape)


def sink_rules() -> dict:
    # the reshape left below a chain meets the one the chain's reader had: one view, or none
    return {"*": [sink_reshape], "reshape": [merge_reshapes]}


@graph_pass("sink_reshapes")
def sink_reshapes(graph: Graph) -> Graph:
    return rewrite_graph(graph, sink_rules())
