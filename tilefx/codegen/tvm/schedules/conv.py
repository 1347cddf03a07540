"""Conv2d loop structure of the contraction template (see ``contraction.py``).

Dense conv (each output channel reads all input channels of its group): the
output channels go on the vector lanes, as in oneDNN's ``nChw16c`` kernels,
but keeping PyTorch's NCHW tensors:

    n oc0 oh0 (parallel) | ow0 | rc ry rx | oh1 (unroll) ow1 (unroll) oc1 (vector)

``reg_oc`` x (``tile_oh`` x ``vec_ow``) is the register tile: each reduction
step broadcasts ``tile_oh * vec_ow`` input pixels and loads ``reg_oc / lanes``
weight vectors from a weight copy packed per call as
``[OC / reg_oc, IC, KH, KW, reg_oc]`` (contiguous along the lanes; the
weights are small next to the work, e.g. 37K values for 115M MACs in a
ResNet 3x3). The accumulators are written back (transposed to NCHW, with the
fused epilogue) once per tile.

Depthwise and grouped conv (the input channel depends on the output channel,
so a vector over output channels would gather): the output columns go on the
lanes instead, ``vec_ow`` at a time, ``tile_oh`` rows per register tile, and
the weight is a broadcast scalar:

    n oc oh0 (parallel) | ow0 | rc ry rx | oh1 (unroll) ow1 (vector)
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


def _grouped(anchor: Op | None) -> bool:
    return anchor is not None and anchor.attr("groups", 1) > 1


def space(anchor: Op | None, target: Target) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    return {"reg_oc": [lanes // 2, lanes, 2 * lanes, 4 * lanes], "tile_oh": [1, 2, 4],
            "vec_ow": [2, 4, 6, 8, 16, 32], "pack_w": [True, False], "parallel": [True, False]}


def default_schedule(anchor: Op | None, target: Target) -> Schedule:
    lanes = target.vector_lanes(4)
    parallel = target.cores > 1
    if _grouped(anchor):
        return Schedule.of(reg_oc=1, tile_oh=4, vec_ow=2 * lanes, pack_w=False, parallel=parallel)
    # 2 weight vectors x 8 columns = 16 accumulators on AVX-512 (32 registers)
    return Schedule.of(reg_oc=2 * lanes, tile_oh=1, vec_ow=8 if lanes >= 16 else 4, pack_w=True,
                       parallel=parallel)


def apply(sch: Any, anchor: Any, schedule: Schedule, target: Target) -> list[Any]:
    from tilefx.codegen.tvm.schedules import common as c

    lanes = target.vector_lanes(4)
    block = sch.get(anchor)
    oc_var = str(block.iter_vars[1].var)
    weight = _weight_read(block, oc_var)
    # grouped/depthwise: some other read (the input) is indexed by the output channel
    grouped = any(oc_var in c.vars_in(r.region[1].min) for i, r in enumerate(block.reads)
                  if i != weight and len(r.region) == 4)
    if grouped:
        return _ow_vector(sch, anchor, schedule, lanes, c)
    return _oc_vector(sch, anchor, weight, schedule, lanes, c)


def _weight_read(block: Any, oc_var: str) -> int | None:
    for index, region in enumerate(block.reads):
        if len(region.region) == 4 and str(region.region[0].min) == oc_var:
            return index
    return None


def _oc_vector(sch: Any, anchor: Any, weight: int | None, schedule: Schedule, lanes: int,
               c: Any) -> list[Any]:
    from tilefx.codegen.tvm.schedules.contraction import (
        epilogue_at, local_accumulator, pack_operand, vectorize_inner)

    n, oc, oh, ow, rc, ry, rx = sch.get_loops(anchor)
    OC, OH, OW = (c.loop_extent(sch, lp) for lp in (oc, oh, ow))
    reg_oc = c.pow2_divisor(OC, schedule.get("reg_oc", 2 * lanes))
    if reg_oc < min(4, OC):
        reg_oc = c.divisor_near(OC, schedule.get("reg_oc", 2 * lanes))
    tile_oh = c.divisor_near(OH, schedule.get("tile_oh", 1))
    reg_ow = c.divisor_near(OW, schedule.get("vec_ow", 8))

    packed = None
    if schedule.get("pack_w", True) and weight is not None and reg_oc > 1:
        packed = pack_operand(sch, anchor, weight, lambda o, i, h, w: (
            o // reg_oc, i, h, w, o % reg_oc), c)
    writeback, epilogue = local_accumulator(sch, anchor, c)
    # channels innermost in the accumulator too: its vectors are then contiguous
    # at constant offsets and LLVM keeps them in registers (NCHW order gathers)
    c.attempt("accumulator layout", lambda: sch.transform_layout(
        anchor, ("write", 0), lambda n_, o, h, w: (n_, h, w, o)))

    oc0, oc1 = sch.split(oc, [OC // reg_oc, reg_oc])
    oh0, oh1 = sch.split(oh, [OH // tile_oh, tile_oh])
    ow0, ow1 = sch.split(ow, [OW // reg_ow, reg_ow])
    sch.reorder(n, oc0, oh0, ow0, rc, ry, rx, oh1, ow1, oc1)
    outer = sch.fuse(n, oc0, oh0)
    if schedule.get("parallel", True) and c.loop_extent(sch, outer) > 1:
        sch.parallel(outer)
    sch.reverse_compute_at(writeback, ow0)
    c.attempt("writeback vectorize", lambda: vectorize_inner(sch, writeback, 2 * lanes, c))
    sch.unroll(oh1)
    sch.unroll(ow1)
    if reg_oc > lanes and reg_oc % lanes == 0:
        oc1a, oc1b = sch.split(oc1, [reg_oc // lanes, lanes])
        sch.unroll(oc1a)
        sch.vectorize(oc1b)
    else:
        sch.vectorize(oc1)
    init = sch.decompose_reduction(anchor, rc)  # after vectorize: see matmul.py
    c.attempt("init vectorize", lambda: vectorize_inner(sch, init, 2 * lanes, c))
    epilogue_at(sch, epilogue, outer, lanes, c)
    handled = [anchor, init, writeback, *epilogue]
    if packed is not None:
        handled.append(packed)
        loops = sch.get_loops(packed)
        c.attempt("pack parallel", lambda: sch.parallel(loops[0]))
    return handled


def _ow_vector(sch: Any, anchor: Any, schedule: Schedule, lanes: int, c: Any) -> list[Any]:
    from tilefx.codegen.tvm.schedules.contraction import epilogue_at, local_accumulator

    writeback, epilogue = local_accumulator(sch, anchor, c)
    n, oc, oh, ow, rc, ry, rx = sch.get_loops(anchor)
    OH, OW = (c.loop_extent(sch, lp) for lp in (oh, ow))
    tile_oh = c.divisor_near(OH, schedule.get("tile_oh", 4))
    vec_ow = c.divisor_near(OW, schedule.get("vec_ow", 2 * lanes))
    oh0, oh1 = sch.split(oh, [OH // tile_oh, tile_oh])
    ow0, ow1 = sch.split(ow, [OW // vec_ow, vec_ow])
    sch.reorder(n, oc, oh0, ow0, rc, ry, rx, oh1, ow1)
    outer = sch.fuse(n, oc, oh0)
    if schedule.get("parallel", True) and c.loop_extent(sch, outer) > 1:
        sch.parallel(outer)
    sch.reverse_compute_at(writeback, ow0)
    c.attempt("writeback vectorize", lambda: sch.vectorize(sch.get_loops(writeback)[-1]))
    sch.unroll(oh1)
    sch.vectorize(ow1)
    init = sch.decompose_reduction(anchor, rc)
    c.attempt("init vectorize", lambda: sch.vectorize(sch.get_loops(init)[-1]))
    epilogue_at(sch, epilogue, outer, lanes, c)
    handled = [anchor, init, writeback, *epilogue]
    # little work per input element: pad per task, into a buffer that stays in L1,
    # instead of a whole padded copy of the input going through memory
    pad = [b for b in sch.get_producers(anchor) if c.block_name(sch, b).endswith("_pad")]
    stride = _column_stride(sch.get(anchor))
    if pad and stride > 1:
        # columns of a strided conv split by phase (j % s, j // s): the vector
        # over output columns then reads contiguous inputs instead of gathering
        c.attempt("pad phases", lambda: sch.transform_layout(
            pad[0], ("write", 0), lambda n_, ch, i, j: (n_, ch, i, j % stride, j // stride)))
    if pad and c.attempt("pad at tile", lambda: sch.compute_at(pad[0], outer)) is not None:
        c.attempt("pad vectorize", lambda: sch.vectorize(sch.get_loops(pad[0])[-1]))
        handled.append(pad[0])
    return handled


def _column_stride(block: Any) -> int:
    """The stride of the output column in the input's last index (1 if not plain)."""
    from tvm import tirx

    ow = block.iter_vars[3].var
    for region in block.reads:
        if len(region.region) != 4:
            continue
        col = region.region[3].min
        # ow * s + rx (dilation folded into rx's coefficient)
        if isinstance(col, tirx.Add) and isinstance(col.a, tirx.Mul) and col.a.a.same_as(ow) \
                and isinstance(col.a.b, tirx.IntImm):
            return int(col.a.b.value)
    return 1
