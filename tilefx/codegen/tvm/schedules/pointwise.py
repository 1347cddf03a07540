"""Pointwise template (elementwise / broadcast / injective kernels).

Inline every block but the outputs, then per output: fuse all loops, split
into [parallel outer, unroll, vector], vectorize the innermost by the SIMD
width. Knobs: ``vectorize`` (lanes), ``unroll`` (vectors per iteration),
``parallel`` (use all cores when the kernel is large enough).
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op

PARALLEL_MIN_ELEMENTS = 1 << 14  # below this, waking threads costs more than it saves


def _numel(kernel_op: Op) -> int:
    import math

    return max(math.prod(int(d) for d in r.type.shape) if r.type.is_static else 1 << 20
               for r in kernel_op.results)


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    return {"vectorize": [1, lanes // 4, lanes // 2, lanes, 2 * lanes],
            "unroll": [1, 2, 4], "parallel": [False, True]}


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    return Schedule.of(vectorize=target.vector_lanes(4), unroll=1,
                       parallel=target.cores > 1 and _numel(kernel_op) >= PARALLEL_MIN_ELEMENTS)


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules.common import (attempt, blocks, inline_intermediates,
                                                     is_output, parallel_vectorize, spatial_loops)

    inline_intermediates(sch)
    for block in blocks(sch):
        spatial, reduce = spatial_loops(sch, block)
        if reduce:  # a reduction left in a pointwise kernel: parallel rows only
            attempt("parallel", lambda: sch.parallel(spatial[0]) if spatial else None)
            continue
        attempt("pointwise loops", lambda: parallel_vectorize(
            sch, spatial, vectorize=schedule.get("vectorize", 1), unroll=schedule.get("unroll", 1),
            parallel=bool(schedule.get("parallel", False)) and is_output(sch, block)))
