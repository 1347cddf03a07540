"""Pointwise template (elementwise / broadcast / injective kernels).

Inline every block but the outputs, then per output: fuse all loops, split
into [parallel outer, unroll, vector], vectorize the innermost by the SIMD
width. An output whose innermost axis reads an input across its rows (a
transpose, e.g. the K^T copy of an attention) is tiled instead: ``tile`` x
``tile`` blocks, so each cache line read and written is used whole while it
is in L1. Knobs: ``vectorize`` (lanes), ``unroll`` (vectors per iteration),
``parallel`` (use all cores when the kernel is large enough), ``tile``
(transpose tile edge; 0 disables tiling).
"""

from __future__ import annotations

import math
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op

PARALLEL_MIN_ELEMENTS = 1 << 14  # below this, waking threads costs more than it saves


def _numel(kernel_op: Op) -> int:
    return max(math.prod(int(d) for d in r.type.shape) if r.type.is_static else 1 << 20
               for r in kernel_op.results)


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    space = {"vectorize": [1, lanes // 4, lanes // 2, lanes, 2 * lanes],
             "unroll": [1, 2, 4], "parallel": [False, True]}
    if _has_permute(kernel_op):  # the only kernels the tile knob can change
        space["tile"] = [0, 8, 16, 32]
    return space


def _has_permute(kernel_op: Op) -> bool:
    return kernel_op.body is not None and any(op.name == "permute" for op in kernel_op.body.ops)


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    knobs = dict(vectorize=target.vector_lanes(4), unroll=1,
                 parallel=target.cores > 1 and _numel(kernel_op) >= PARALLEL_MIN_ELEMENTS)
    if _has_permute(kernel_op):
        knobs["tile"] = 0  # measured no gain at the zoo's sizes (L2-resident); the tuner may
    return Schedule.of(**knobs)


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules.common import (attempt, blocks, inline_intermediates,  # imports TVM
                                                     is_output, parallel_vectorize, spatial_loops)

    inline_intermediates(sch)
    vec, unroll = schedule.get("vectorize", 1), schedule.get("unroll", 1)
    tile = schedule.get("tile", 0)
    for block in blocks(sch):
        spatial, reduce = spatial_loops(sch, block)
        if reduce:  # a reduction left in a pointwise kernel: parallel rows only
            attempt("parallel", lambda s=spatial: sch.parallel(s[0]) if s else None)
            continue
        par = bool(schedule.get("parallel", False)) and is_output(sch, block)
        axis = _transposed_axis(sch, block) if tile > 1 else None
        if axis is not None and attempt("transpose tiles", lambda b=block, s=spatial, a=axis, p=par: _tile(
                sch, b, s, a, tile=tile, vectorize=vec, parallel=p)):
            continue
        attempt("pointwise loops", lambda s=spatial, p=par: parallel_vectorize(
            sch, s, vectorize=vec, unroll=unroll, parallel=p))


def _transposed_axis(sch: Any, block: Any) -> int | None:
    """The position of the loop that walks an input's rows when the innermost loop
    does not (None: every input is read along the innermost loop, or broadcast)."""
    from tilefx.codegen.tvm.schedules.common import vars_in  # imports TVM

    names = [iv.var.name for iv in sch.get(block).iter_vars]
    if len(names) < 2:
        return None
    for region in sch.get(block).reads:
        if not region.region or len(region.region) < 2:
            continue
        used = vars_in(region.region[-1].min)
        if not used or names[-1] in used:
            continue
        pos = max(names.index(n) for n in used if n in names)
        if pos < len(names) - 1:
            return pos
    return None


def _tile(sch: Any, block: Any, spatial: list[Any], axis: int, *, tile: int, vectorize: int,
          parallel: bool) -> bool:
    from tilefx.codegen.tvm.schedules.common import loop_extent, pow2_divisor  # imports TVM
    from tilefx.codegen.tvm.schedules.common import vectorize_loop  # imports TVM

    inner = spatial[-1]
    ti = pow2_divisor(loop_extent(sch, inner), tile)
    ta = pow2_divisor(loop_extent(sch, spatial[axis]), tile)
    if ti < 4 or ta < 4:
        return False
    ao, ai = sch.split(spatial[axis], [None, ta])
    io, ii = sch.split(inner, [None, ti])
    rest = [lp for i, lp in enumerate(spatial[:-1]) if i != axis]
    # tile loops (rows of the input outer, contiguous output writes inner)
    sch.reorder(*rest, ao, io, ai, ii)
    outer = sch.fuse(*rest, ao, io) if rest else sch.fuse(ao, io)
    if parallel and loop_extent(sch, outer) >= 2:
        sch.parallel(outer)
    vec = pow2_divisor(ti, vectorize)
    if vec > 1:
        _, lanes = sch.split(ii, [None, vec])
        vectorize_loop(sch, lanes)
    return True
