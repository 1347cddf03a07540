"""Long full reductions split in two stages (exact: ``any``, ``all``, ``amax``, ``amin``).

A reduction to one value is one row for the reduction templates: one program (Triton) or
one thread (TVM) walks every element. T5 in fp16 asks ``isinf(h).any()`` of each layer's
2M activations: on an H200 that one-program kernel took 114 us a layer, 69% of T5-small's
GPU time (``benchmarks/results/gpu-models-h200-2026-12-03c.md``). Here such a reduction of
``R >= MIN_ELEMENTS`` elements reads its input as ``[S, R / S]`` (a free reshape of the
row-major input), reduces each of the ``S`` rows (a parallel reduction) and then the ``S``
partial results. ``S`` is the largest divisor of ``R`` up to ``MAX_ROWS`` that leaves rows of
at least ``MIN_ROW`` elements; an ``R`` without one (a large prime) stays whole.

Only reductions whose result does not depend on the order of combination are split, so
the pass is exact: ``sum``/``mean``/``prod`` in fp16 would round the partial results once
more (and the models seen so far do not need them).
"""

from __future__ import annotations

import logging
import math

from tilefx.ir.graph import Graph, Op
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter

log = logging.getLogger("tilefx.passes.split_reduction")

EXACT = ("any", "all", "amax", "amin")
MIN_ELEMENTS = 1 << 16   # shorter rows are quick in one program
MAX_ROWS = 1024          # partial results: enough programs for every SM several times
MIN_ROW = 1024           # elements a partial row reduces at least


def rows_for(r: int) -> int:
    """The number of partial rows ``S`` for ``r`` elements (1: no split)."""
    if r < MIN_ELEMENTS:
        return 1
    best = 1
    for s in range(2, math.isqrt(r) + 1):
        for d in (s, r // s):
            if r % s == 0 and d <= MAX_ROWS and r // d >= MIN_ROW:
                best = max(best, d)
    return best


def _split(rw: Rewriter, op: Op) -> bool:
    if op.name not in EXACT:
        return False
    x = op.inputs[0]
    shape = x.type.shape
    if not all(isinstance(d, int) for d in shape):
        return False
    r = math.prod(shape)
    out = op.results[0].type.shape
    if math.prod(out) != 1:  # only reductions to one value: others have rows to spread
        return False
    s = rows_for(r)
    if s == 1:
        return False
    rows = rw.op("reshape", x, shape=(s, r // s), hint=f"{x.name}_rows")
    partial = rw.op(op.name, rows, dims=(1,), keepdim=False, hint=f"{op.results[0].name}_part")
    whole = rw.op(op.name, partial, dims=(0,), keepdim=False, hint=op.results[0].name)
    result = whole if out == () else rw.op("reshape", whole, shape=tuple(out), hint=op.results[0].name)
    rw.replace(op.results[0], result)
    log.debug("split_reduction: %s of %d elements as %d rows of %d", op.name, r, s, r // s)
    return True


@graph_pass("split_reduction")
def split_reduction(graph: Graph) -> Graph:
    rw = Rewriter(graph)
    changed = False
    for op in graph.ops:
        if _split(rw, op):
            changed = True
        else:
            rw.emit(op)
    return rw.finish() if changed else graph
