"""Contraction template: matmul (batched) and conv2d (NCHW, grouped/depthwise),
each with its fused prologue (inlined) and epilogue (bias, activation,
residual: computed per output tile with ``reverse_compute_at``).

matmul: loops ``[batch, i, j, k]`` tiled as
``batch i0 j0 | k0 i1 j1 | k1 i2 j2`` — (i2 x j2) is the register tile
(``reg_m`` rows, ``reg_n`` vector lanes), (tile_m x tile_n x tile_k) the cache
tile; ``batch i0 j0`` run in parallel; the epilogue runs once per (i0, j0)
tile while the accumulator is hot.

conv2d: loops ``n oc oh ow | rc ry rx`` tiled as
``n oc0 oh0 ow0 | rc ry rx | oh1 oc1 ow1``: a register tile of ``reg_oc``
output channels x ``tile_oh`` rows x ``vec_ow`` columns (vectorized along the
contiguous output width); the padding is a separate block computed up front
so the inner loop has no bounds checks. Depthwise conv is the same nest with
a reduction of extent 1 over channels.
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


def _anchor(kernel_op: Op) -> Op | None:
    for op in kernel_op.body.ops:
        if op.name in ("matmul", "conv2d"):
            return op
    return None


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    anchor = _anchor(kernel_op)
    if anchor is not None and anchor.name == "conv2d":
        return {"reg_oc": [1, 2, 4, 8], "tile_oh": [1, 2, 4], "vec_ow": [8, 16, 32, 64],
                "parallel": [True, False]}
    return {"tile_m": [16, 32, 64, 128], "tile_n": [lanes * 2, lanes * 4, lanes * 8],
            "tile_k": [64, 128, 256, 512], "reg_m": [2, 4, 6, 8], "reg_n": [lanes, lanes * 2],
            "parallel": [True, False]}


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    lanes = target.vector_lanes(4)
    anchor = _anchor(kernel_op)
    if anchor is not None and anchor.name == "conv2d":
        return Schedule.of(reg_oc=4, tile_oh=2, vec_ow=2 * lanes, parallel=target.cores > 1)
    return Schedule.of(tile_m=64, tile_n=8 * lanes, tile_k=128, reg_m=4, reg_n=2 * lanes,
                       parallel=target.cores > 1)


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules import common as c

    def is_pad(b: Any) -> bool:
        return c.block_name(sch, b).endswith("_pad")

    c.inline_intermediates(sch, keep=is_pad)
    anchors = [b for b in c.blocks(sch) if c.block_name(sch, b).split("_")[0] in ("matmul", "conv2d")
               and c.is_reduction(sch, b)]
    if not anchors:
        from tilefx.codegen.tvm.schedules import reduction

        return reduction.apply(sch, schedule, target)
    anchor = anchors[0]
    if c.is_output(sch, anchor):
        c.attempt("cache_write", lambda: sch.cache_write(anchor, 0, "global"))
    consumers = [b for b in sch.get_consumers(anchor)]
    if c.block_name(sch, anchor).startswith("conv2d"):
        outer = _conv_loops(sch, anchor, schedule, c)
    else:
        outer = _matmul_loops(sch, anchor, schedule, c)
    for consumer in consumers:
        if c.attempt("epilogue at tile", lambda: sch.reverse_compute_at(consumer, outer)) is None:
            continue
        _vectorize_tail(sch, consumer, outer, c, target)
    for b in c.blocks(sch):  # leftovers (pad, unrelated outputs): plain parallel loops
        if b != anchor and c.block_name(sch, b) not in [c.block_name(sch, x) for x in consumers]:
            spatial, reduce = c.spatial_loops(sch, b)
            if not reduce:
                c.attempt("leftover loops", lambda: c.parallel_vectorize(
                    sch, spatial[1:] if len(spatial) > 2 else spatial,
                    vectorize=target.vector_lanes(4), unroll=1, parallel=False))
                if len(spatial) > 2:
                    c.attempt("leftover parallel", lambda: sch.parallel(spatial[0]))


def _vectorize_tail(sch: Any, block: Any, outer: Any, c: Any, target: Target) -> None:
    loops = list(sch.get_loops(block))
    names = [str(sch.get(lp).loop_var) for lp in loops]
    pos = [str(sch.get(lp).loop_var) for lp in loops].index(str(sch.get(outer).loop_var)) \
        if str(sch.get(outer).loop_var) in names else -1
    tail = loops[pos + 1:]
    if tail:
        c.attempt("epilogue vectorize", lambda: c.parallel_vectorize(
            sch, tail, vectorize=target.vector_lanes(4), unroll=1, parallel=False))


def _matmul_loops(sch: Any, block: Any, schedule: Schedule, c: Any) -> Any:
    *batch, i, j, k = sch.get_loops(block)
    M, N, K = (c.loop_extent(sch, lp) for lp in (i, j, k))
    reg_m = c.divisor_near(M, schedule.get("reg_m", 4))
    tile_m = c.divisor_near(M // reg_m, max(1, schedule.get("tile_m", 64) // reg_m)) * reg_m
    reg_n = c.pow2_divisor(N, schedule.get("reg_n", 32))
    if reg_n < 4:
        reg_n = c.divisor_near(N, schedule.get("reg_n", 32))
    tile_n = c.divisor_near(N // reg_n, max(1, schedule.get("tile_n", 128) // reg_n)) * reg_n
    tile_k = c.divisor_near(K, schedule.get("tile_k", 128))
    i0, i1, i2 = sch.split(i, [M // tile_m, tile_m // reg_m, reg_m])
    j0, j1, j2 = sch.split(j, [N // tile_n, tile_n // reg_n, reg_n])
    k0, k1 = sch.split(k, [K // tile_k, tile_k])
    sch.reorder(*batch, i0, j0, k0, i1, j1, k1, i2, j2)
    outer = sch.fuse(*batch, i0, j0)
    if schedule.get("parallel", True):
        sch.parallel(outer)
    sch.unroll(i2)
    sch.vectorize(j2)
    init = sch.decompose_reduction(block, k0)
    c.attempt("init vectorize", lambda: sch.vectorize(sch.get_loops(init)[-1]))
    return outer


def _conv_loops(sch: Any, block: Any, schedule: Schedule, c: Any) -> Any:
    n, oc, oh, ow, rc, ry, rx = sch.get_loops(block)
    OC, OH, OW = (c.loop_extent(sch, lp) for lp in (oc, oh, ow))
    reg_oc = c.divisor_near(OC, schedule.get("reg_oc", 4))
    tile_oh = c.divisor_near(OH, schedule.get("tile_oh", 2))
    vec_ow = c.divisor_near(OW, schedule.get("vec_ow", 32))
    oc0, oc1 = sch.split(oc, [OC // reg_oc, reg_oc])
    oh0, oh1 = sch.split(oh, [OH // tile_oh, tile_oh])
    ow0, ow1 = sch.split(ow, [OW // vec_ow, vec_ow])
    sch.reorder(n, oc0, oh0, ow0, rc, ry, rx, oh1, oc1, ow1)
    outer = sch.fuse(n, oc0, oh0, ow0)
    if schedule.get("parallel", True):
        sch.parallel(outer)
    sch.unroll(oc1)
    sch.unroll(oh1)
    sch.vectorize(ow1)
    init = sch.decompose_reduction(block, rc)
    c.attempt("init vectorize", lambda: sch.vectorize(sch.get_loops(init)[-1]))
    return outer
