"""Reduction template (sum / mean / softmax / layer_norm / pooling, with fused
elementwise prologue and epilogue).

Inline the elementwise blocks; then for each output block find the "row"
loops: the leading loops whose variables index the intermediate reduction
buffers (for softmax over the last axis, every axis but the last). The
reductions are computed per row (``compute_at`` the output's row loop), so the
row stays in L1 between the passes, the rows run in parallel (TVM hands each
thread one contiguous group of rows), and the rest of the row is vectorized.

Each reduction block is one of three shapes, told apart by what indexes the
innermost axis of the buffer it reads (``reduction_shape``):

- ``row``: the reduction axes are the contiguous ones (softmax, layer_norm,
  sum over the last axes). LLVM never vectorizes the serial accumulation (no
  fast-math reassociation), so the reduction loop is split and ``rfactor``-ed
  into ``vectorize * accumulators`` lane partials, accumulated with vector
  instructions, then reduced horizontally once per row.
- ``column``: the contiguous axis is a kept one (sum over axis 0, or over the
  channels of NCHW). The kept axis is tiled innermost and vectorized, the
  reduction loops run outside it, so every load is a contiguous vector.
- ``window``: both (pooling): rows in parallel, the window stays serial.

A block named ``*_rowbuf`` (softmax's exp) is not inlined but computed once
per row into a row-sized buffer that the later passes read from L1.

Knobs: ``vectorize`` (lanes), ``unroll``, ``parallel``, ``fuse_rows``
(compute the reductions per row, or each as its own parallel loop nest),
``accumulators`` (at most this many partial vectors per row reduction; short
rows use fewer since each partial costs a serial add in the per-row horizontal
reduce; ``vectorize`` 1 leaves a serial scalar reduction).
"""

from __future__ import annotations

import logging
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op

log = logging.getLogger("tilefx.codegen.tvm")


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    return {"vectorize": [1, lanes // 2, lanes], "unroll": [1, 2], "parallel": [False, True],
            "fuse_rows": [True, False], "accumulators": [1, 2, 4]}


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    return Schedule.of(vectorize=target.vector_lanes(4), unroll=1, parallel=target.cores > 1,
                       fuse_rows=True, accumulators=2)


def _row_depth(sch: Any, block: Any, producers: set[Any]) -> int:
    """How many leading loops of ``block`` index the producer buffers (0: do not fuse).

    Only a prefix qualifies: then each row iteration owns its own producer
    elements, so computing them inside a parallel row loop is race-free and
    computes each reduction exactly once.
    """
    from tilefx.codegen.tvm.schedules.common import vars_in  # imports TVM

    names = [iv.var.name for iv in sch.get(block).iter_vars]
    used: set[str] = set()
    for region in sch.get(block).reads:
        if region.source in producers:
            for rng in region.region:
                used |= vars_in(rng.min)
    positions = [i for i, n in enumerate(names) if n in used]
    return len(positions) if positions == list(range(len(positions))) else 0


def reduction_shape(sch: Any, block: Any) -> str:
    """``row``, ``column`` or ``window``: what indexes the innermost read axis (module doc)."""
    from tilefx.codegen.tvm.schedules.common import vars_in  # imports TVM

    from tvm import tirx  # heavy: loaded on first use

    node = sch.get(block)
    reduce = {iv.var.name for iv in node.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    spatial = {iv.var.name for iv in node.iter_vars} - reduce
    shapes = set()
    for region in node.reads:
        if not region.region:
            continue
        used = vars_in(region.region[-1].min)
        if used & reduce and used & spatial:
            shapes.add("window")
        elif used & reduce:
            shapes.add("row")
        elif used & spatial:
            shapes.add("column")
    if len(shapes) == 1:
        return shapes.pop()
    # a broadcast operand indexed by neither (or by the other kind) must not decide
    return "row" if "row" in shapes and "window" not in shapes else "window"


def rfactor_row(sch: Any, block: Any, *, lanes: int, accumulators: int) -> Any:
    """Split the reduction of an unscheduled ``block`` into lane partials (``rfactor``).

    Returns the rf block (it accumulates ``lanes * accumulators`` partials per
    row; ``block`` becomes the horizontal reduce of them), or None, leaving the
    block as it was, when the reduction has no power-of-two factor of at least
    4 lanes or is too short to gain.
    """
    from tilefx.codegen.tvm.schedules.common import (attempt, loop_extent, loop_kinds,  # imports TVM
                                                     pow2_divisor)

    loops, kinds = list(sch.get_loops(block)), loop_kinds(sch, block)
    n = len(kinds) - len([k for k in kinds if k != "reduce"])
    if n == 0 or kinds[-n:] != ["reduce"] * n or "reduce" in kinds[:-n]:
        return None
    tail = loops[-n:]
    total = _prod([loop_extent(sch, lp) for lp in tail])
    # each partial costs a serial add in the horizontal reduce, once per row: short
    # rows take one vector of partials, long rows up to ``accumulators`` (measured:
    # 128-long softmax rows 1.2x slower with 2 vectors, 768-long layer_norm 1.15x faster)
    accumulators = min(accumulators, max(1, total // (lanes * 24)))
    width = pow2_divisor(total, lanes * max(accumulators, 1))
    if accumulators < 1 or pow2_divisor(width, lanes) < 4 or total <= lanes:
        return None
    fused = sch.fuse(*tail) if len(tail) > 1 else tail[0]
    _, ki = sch.split(fused, [None, width])
    return attempt("rfactor", lambda: sch.rfactor(ki, factor_axis=0))


def vectorize_rf(sch: Any, rf: Any, *, lanes: int) -> None:
    """Vectorize an rf block over its lane axis, with the reduction loop outside it."""
    from tilefx.codegen.tvm.schedules.common import (attempt, vectorize_loop, loop_extent, loop_kinds,  # imports TVM
                                                     pow2_divisor)

    loops, kinds = list(sch.get_loops(rf)), loop_kinds(sch, rf)
    if len(loops) < 2 or "reduce" not in kinds:
        return
    ko = loops[kinds.index("reduce")]
    lane = loops[-1] if kinds[-1] != "reduce" else loops[-2]
    if kinds[-1] == "reduce":  # after compute_at the lane loop comes first
        sch.reorder(ko, lane)
    vec = pow2_divisor(loop_extent(sch, lane), lanes)
    # [width / vec unrolled vectors] x [vec lanes]: independent add chains
    outer, inner = sch.split(lane, [None, vec])
    vectorize_loop(sch, inner)
    if loop_extent(sch, outer) > 1:
        sch.unroll(outer)
    # after vectorize: TVM refuses to vectorize an update block without its init
    init = attempt("decompose rf init", lambda: sch.decompose_reduction(rf, ko))
    if init is not None and init is not True:
        attempt("vectorize rf init", lambda: vectorize_loop(sch, sch.get_loops(init)[-1]))


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def column_reduction(sch: Any, block: Any, *, lanes: int, accumulators: int,
                     parallel: bool) -> bool:
    """Kept axes outermost-parallel and innermost-vectorized, reduction loops between."""
    from tilefx.codegen.tvm.schedules.common import (attempt, vectorize_loop, loop_extent, pow2_divisor,  # imports TVM
                                                     spatial_loops)

    spatial, reduce = spatial_loops(sch, block)
    if not spatial or not reduce:
        return False
    loops = list(sch.get_loops(block))
    if len(loops) != len(spatial) + len(reduce) or not all(
            sch.get(a).same_as(sch.get(b)) for a, b in zip(loops, spatial + reduce)):
        return False
    # vectors never cross the innermost kept axis: the loads stay contiguous
    width = pow2_divisor(loop_extent(sch, spatial[-1]), lanes * max(accumulators, 1) * 2)
    vec = pow2_divisor(width, lanes)
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    so, si = sch.split(fused, [None, width])
    sch.reorder(so, *reduce, si)
    if parallel and loop_extent(sch, so) >= 2:
        sch.parallel(so)
    if vec > 1:
        outer, inner = sch.split(si, [None, vec])
        vectorize_loop(sch, inner)
        if loop_extent(sch, outer) > 1:
            sch.unroll(outer)
    # after vectorize: TVM refuses to vectorize an update block without its init
    init = attempt("decompose init", lambda: sch.decompose_reduction(block, reduce[0]))
    if vec > 1 and init is not None and init is not True:
        attempt("vectorize init", lambda: vectorize_loop(sch, sch.get_loops(init)[-1]))
    return True


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules.common import (attempt, blocks, inline_intermediates,  # imports TVM
                                                     is_reduction, parallel_vectorize,
                                                     spatial_loops)

    vec, unroll = schedule.get("vectorize", 1), schedule.get("unroll", 1)
    parallel = bool(schedule.get("parallel", True))
    accs = schedule.get("accumulators", 1)
    fuse_rows = bool(schedule.get("fuse_rows", True))
    # a *_rowbuf block (softmax's exp) is computed once per row into a buffer
    inline_intermediates(sch, keep=lambda b: fuse_rows and sch.get(b).name_hint.endswith("_rowbuf"))
    # split the row reductions into lane partials first: rfactor on a block that
    # is already inside the row loop would copy the whole loop nest for the rf block
    rfs: dict[str, str] = {}  # rf block -> its write-back block
    # classified before rfactor, whose blocks would read as "column" / "window"
    shapes = {sch.get(b).name_hint: reduction_shape(sch, b)
              for b in blocks(sch) if is_reduction(sch, b)}
    if vec > 1:
        for block in [b for b in blocks(sch) if is_reduction(sch, b)]:
            if shapes[sch.get(block).name_hint] == "row":
                rf = rfactor_row(sch, block, lanes=vec, accumulators=accs)
                if rf is not None:
                    rfs[sch.get(rf).name_hint] = sch.get(block).name_hint
                    shapes[sch.get(rf).name_hint] = "row"
    placed: set[str] = set()
    outs = [b for b in blocks(sch) if _is_consumer_output(sch, b)]
    if fuse_rows:
        for out in outs:
            placed |= _fuse_rows(sch, out, shapes, vec=vec, unroll=unroll, parallel=parallel)
    for rf_name, wb_name in rfs.items():
        if rf_name not in placed:
            # standalone: compute the partials per row of the write-back block
            placed |= _rows_of_write_back(sch, sch.get_sblock(rf_name), sch.get_sblock(wb_name),
                                          parallel=parallel)
    for block in blocks(sch):
        if sch.get(block).name_hint in placed:
            continue
        spatial, reduce = spatial_loops(sch, block)
        if not reduce:
            attempt("pointwise loops", lambda s=spatial: parallel_vectorize(
                sch, s, vectorize=vec, unroll=unroll, parallel=parallel))
            continue
        if shapes.get(sch.get(block).name_hint) == "column" and vec > 1 and attempt(
                "column reduction", lambda b=block: column_reduction(
                    sch, b, lanes=vec, accumulators=accs, parallel=parallel)):
            continue
        if spatial and parallel:
            # rows of a standalone reduction run in parallel; the reduction stays serial
            attempt("parallel reduction", lambda b=block, s=spatial: sch.parallel(
                sch.fuse(*s) if len(s) > 1 and _adjacent(sch, b, s) else s[0]))
    for rf_name in rfs:
        attempt("vectorize partials", lambda n=rf_name: vectorize_rf(
            sch, sch.get_sblock(n), lanes=vec))
    for wb_name in rfs.values():
        # the horizontal reduce of the partials, once per row
        attempt("unroll write-back", lambda n=wb_name: sch.unroll(sch.get_loops(sch.get_sblock(n))[-1]))


def _is_consumer_output(sch: Any, block: Any) -> bool:
    from tilefx.codegen.tvm.schedules.common import is_output, is_reduction  # imports TVM

    return is_output(sch, block) and not is_reduction(sch, block)


def _rows_of_write_back(sch: Any, rf: Any, wb: Any, *, parallel: bool) -> set[str]:
    """A standalone rfactor-ed reduction: its partials computed per row of the write-back."""
    from tilefx.codegen.tvm.schedules.common import attempt, loop_kinds  # imports TVM

    loops, kinds = list(sch.get_loops(wb)), loop_kinds(sch, wb)
    n = len(kinds) - kinds[::-1].index("spatial") if "spatial" in kinds else 0
    if n == 0 or any(k != "spatial" for k in kinds[:n]):
        return set()
    if attempt("compute_at write-back row", lambda: sch.compute_at(rf, loops[n - 1])) is None:
        return set()
    row = sch.fuse(*loops[:n]) if n > 1 else loops[0]
    if parallel:
        attempt("parallel rows", lambda: sch.parallel(row))
    return {sch.get(rf).name_hint, sch.get(wb).name_hint}


def _fuse_rows(sch: Any, out: Any, shapes: dict[str, str], *, vec: int, unroll: int,
               parallel: bool) -> set[str]:
    """Compute the blocks ``out`` depends on per row of ``out``; the names placed."""
    from tilefx.codegen.tvm.schedules.common import (attempt, is_reduction, loop_kinds,  # imports TVM
                                                     parallel_vectorize)

    producers = _producers(sch, out)
    if not producers:
        return set()
    if any(shapes.get(sch.get(p).name_hint) == "column" for p in producers):
        return set()  # a per-row column reduction would read with a stride: schedule it alone
    # the rows are what the reductions keep; an elementwise producer (a *_rowbuf)
    # is computed per row like them
    buffers = {w.source for b in producers if is_reduction(sch, b) for w in sch.get(b).writes}
    depth = _row_depth(sch, out, buffers)
    loops = list(sch.get_loops(out))
    kinds = loop_kinds(sch, out)
    if depth == 0 or any(k != "spatial" for k in kinds[:depth]):
        return set()
    row_loop = loops[depth - 1]
    for p in reversed(producers):
        if attempt("compute_at row", lambda p=p: sch.compute_at(p, row_loop)) is None:
            return set()
    placed = {sch.get(out).name_hint} | {sch.get(p).name_hint for p in producers}
    row_loop = sch.fuse(*loops[:depth]) if depth > 1 else loops[0]
    if parallel:
        attempt("parallel rows", lambda: sch.parallel(row_loop))
    attempt("vectorize row", lambda: parallel_vectorize(
        sch, loops[depth:], vectorize=vec, unroll=unroll, parallel=False))
    for p in list(sch.get_child_blocks(row_loop)):
        if sch.get(p).name_hint not in placed - {sch.get(out).name_hint} or is_reduction(sch, p):
            continue
        attempt("vectorize producer", lambda p=p: parallel_vectorize(
            sch, list(sch.get_loops(p)[1:]), vectorize=vec, unroll=1, parallel=False))
    return placed


def _producers(sch: Any, block: Any) -> list[Any]:
    """Every non-output block ``block`` transitively reads, in program order."""
    from tilefx.codegen.tvm.schedules.common import blocks, is_output  # imports TVM

    order = [b for b in blocks(sch) if not is_output(sch, b)]
    writer = {w.source: b for b in order for w in sch.get(b).writes}
    seen: set[str] = set()
    stack = [block]
    while stack:
        for r in sch.get(stack.pop()).reads:
            p = writer.get(r.source)
            if p is not None and sch.get(p).name_hint not in seen:
                seen.add(sch.get(p).name_hint)
                stack.append(p)
    return [b for b in order if sch.get(b).name_hint in seen]


def _adjacent(sch: Any, block: Any, spatial: list[Any]) -> bool:
    loops = list(sch.get_loops(block))
    return loops[:len(spatial)] == list(spatial)
