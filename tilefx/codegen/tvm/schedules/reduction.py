"""Reduction template (sum / mean / softmax / layer_norm / pooling, with fused
elementwise prologue and epilogue).

Inline the elementwise blocks; then for each output block find the "row"
loops: the leading loops whose variables index the intermediate reduction
buffers (for softmax over the last axis, every axis but the last). The
reductions are computed per row (``compute_at`` the output's row loop), the
rows run in parallel, and the rest of the row is vectorized. Knobs:
``vectorize``, ``unroll``, ``parallel``, ``fuse_rows`` (compute the
reductions per row, or each as its own parallel loop nest).
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    return {"vectorize": [1, lanes // 2, lanes], "unroll": [1, 2], "parallel": [False, True],
            "fuse_rows": [True, False]}


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    return Schedule.of(vectorize=target.vector_lanes(4), unroll=1, parallel=target.cores > 1,
                       fuse_rows=True)


def _row_depth(sch: Any, block: Any, producers: set[Any]) -> int:
    """How many leading loops of ``block`` index the producer buffers (0: do not fuse).

    Only a prefix qualifies: then each row iteration owns its own producer
    elements, so computing them inside a parallel row loop is race-free and
    computes each reduction exactly once.
    """
    from tilefx.codegen.tvm.schedules.common import vars_in

    names = [iv.var.name for iv in sch.get(block).iter_vars]
    used: set[str] = set()
    for region in sch.get(block).reads:
        if region.source in producers:
            for rng in region.region:
                used |= vars_in(rng.min)
    positions = [i for i, n in enumerate(names) if n in used]
    return len(positions) if positions == list(range(len(positions))) else 0


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules.common import (attempt, blocks, inline_intermediates,
                                                     is_output, is_reduction, parallel_vectorize,
                                                     spatial_loops)

    vec, unroll = schedule.get("vectorize", 1), schedule.get("unroll", 1)
    parallel = bool(schedule.get("parallel", True))
    inline_intermediates(sch)
    placed: set[str] = set()
    if schedule.get("fuse_rows", True):
        for out in [b for b in blocks(sch) if is_output(sch, b) and not is_reduction(sch, b)]:
            producers = [b for b in blocks(sch) if not is_output(sch, b)]
            buffers = {w.source for b in producers for w in sch.get(b).writes}
            depth = _row_depth(sch, out, buffers)
            loops = sch.get_loops(out)
            if depth == 0 or len(loops) != len(sch.get(out).iter_vars):
                continue
            row_loop = loops[depth - 1]
            ok = True
            for p in reversed(producers):
                ok = ok and attempt("compute_at row", lambda: sch.compute_at(p, row_loop)) is not None
            if not ok:
                continue
            placed.add(sch.get(out).name_hint)
            placed.update(sch.get(p).name_hint for p in producers)
            row_loop = sch.fuse(*loops[:depth]) if depth > 1 else loops[0]
            if parallel:
                attempt("parallel rows", lambda: sch.parallel(row_loop))
            attempt("vectorize row", lambda: parallel_vectorize(
                sch, list(loops[depth:]), vectorize=vec, unroll=unroll, parallel=False))
            for p in sch.get_child_blocks(row_loop):
                if sch.get(p).name_hint != sch.get(out).name_hint and not is_reduction(sch, p):
                    attempt("vectorize producer", lambda: parallel_vectorize(
                        sch, list(sch.get_loops(p)[1:]), vectorize=vec, unroll=1,
                        parallel=False))
    for block in blocks(sch):
        if sch.get(block).name_hint in placed:
            continue
        spatial, reduce = spatial_loops(sch, block)
        if not reduce:
            attempt("pointwise loops", lambda: parallel_vectorize(
                sch, spatial, vectorize=vec, unroll=unroll, parallel=parallel))
        elif spatial and parallel:
            # rows of a standalone reduction run in parallel; the reduction stays serial
            attempt("parallel reduction", lambda: sch.parallel(
                sch.fuse(*spatial) if len(spatial) > 1 and _adjacent(sch, block, spatial)
                else spatial[0]))


def _adjacent(sch: Any, block: Any, spatial: list[Any]) -> bool:
    loops = list(sch.get_loops(block))
    return loops[:len(spatial)] == list(spatial)
