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

With ``epilogue_flags`` (the compiler's choice on cuda) an ``any``/``all`` of a matmul's
epilogue value stays whole: fusion makes it a *flag* of that matmul's kernel (each tile
combined with an atomic, ``codegen/triton/emit.py``), so neither the value's mask nor the
partial rows are written, and T5's fp16 ``isinf(h).any()`` costs no kernel of its own.
"""

from __future__ import annotations

import logging
import math

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import Category, get_op
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


FLAGS = ("any", "all")  # reductions a matmul's epilogue computes as flags (epilogue_flags)
EPILOGUE = (Category.elementwise, Category.broadcast)  # what a matmul's epilogue is made of


def of_matmul_epilogue(producers: dict[str, Op], v: Value, depth: int = 8) -> bool:
    """Whether ``v`` is a matmul's result or computed from one by same-shape elementwise ops
    (``abs(x @ w + r) == inf``): a value the matmul's epilogue can compute."""
    op = producers.get(v.name)
    if op is None or depth == 0:
        return False
    if op.name == "matmul":
        return op.result.type.shape == v.type.shape
    return get_op(op.name).category in EPILOGUE and any(
        x.type.shape == v.type.shape and of_matmul_epilogue(producers, x, depth - 1) for x in op.inputs)


def _split(rw: Rewriter, op: Op, producers: dict[str, Op] | None = None) -> bool:
    if op.name not in EXACT:
        return False
    if producers is not None and op.name in FLAGS and of_matmul_epilogue(producers, op.inputs[0]):
        return False  # fusion computes it in the matmul's epilogue
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
def split_reduction(graph: Graph, epilogue_flags: bool = False) -> Graph:
    rw = Rewriter(graph)
    changed = False
    producers = graph.producers() if epilogue_flags else None
    for op in graph.ops:
        if _split(rw, op, producers):
            changed = True
        else:
            rw.emit(op)
    return rw.finish() if changed else graph
