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

Blocked layouts (``passes/layout.py``): a weight packed at compile time as
``[OC/oc, IC/ic, KH, KW, ic, oc]`` (read through ``reshape(permute(..))`` in
the body) pins ``reg_oc = oc`` and turns ``pack_w`` off, like ``prepacked_b``
in ``matmul.py``. An input stored ``[N, C/ic, H, W, ic]`` splits the reduction
channel as ``rc0 ry rx rc1`` with ``rc1 = ic`` innermost, so the weight is one
contiguous stream and each input pixel a broadcast from one cache line; its
padded copy keeps the blocked layout. An output stored ``[N, OC/oc, OH, OW,
oc]`` is written from the register tile as whole channel vectors. A depthwise
conv on a blocked input takes the dense loop structure above with
``reg_oc`` = the input's block: input, weight and output are then all
contiguous channel vectors (oneDNN's depthwise ``nChw16c`` kernel), where
the NCHW depthwise loop vectorizes over output columns.
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


def _grouped(anchor: Op | None) -> bool:
    return anchor is not None and anchor.attr("groups", 1) > 1


def _through_maps(body: Any, value: Any, rank: int) -> Any:
    """The body input read as ``value`` through ``reshape(permute(input))`` if that input
    has ``rank`` dims (a blocked layout, ``passes/layout.py``), else None."""
    if body is None:
        return None
    producers = body.producers()
    reshape = producers.get(value.name)
    perm = producers.get(reshape.inputs[0].name) if reshape is not None and reshape.name == "reshape" \
        else None
    if perm is None or perm.name != "permute" or perm.inputs[0] not in body.inputs:
        return None
    return perm.inputs[0] if perm.inputs[0].type.rank == rank else None


def prepacked_w(anchor: Op | None, body: Any) -> tuple[int, int] | None:
    """``(ic, oc)`` if the weight was packed at compile time as ``[OC/oc, IC/ic, KH, KW, ic, oc]``."""
    packed = _through_maps(body, anchor.inputs[1], 6) if anchor is not None else None
    return None if packed is None else (int(packed.type.shape[4]), int(packed.type.shape[5]))


def blocked_input(anchor: Op | None, body: Any) -> int:
    """The channel block ``c`` of an input stored ``[N, C/c, H, W, c]``, else 0."""
    blocked = _through_maps(body, anchor.inputs[0], 5) if anchor is not None else None
    return 0 if blocked is None else int(blocked.type.shape[4])


def space(anchor: Op | None, target: Target, body: Any = None) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    packed = prepacked_w(anchor, body)
    if packed:  # the weight's block is the register tile (passes/layout.py)
        return {"reg_oc": [packed[1]], "tile_oh": [1, 2, 4], "vec_ow": [2, 4, 6, 8, 16, 32],
                "pack_w": [False], "parallel": [True, False]}
    if _grouped(anchor):  # the column-vector loop reads neither reg_oc nor pack_w: no dead knobs
        return {"reg_oc": [1], "tile_oh": [1, 2, 4], "vec_ow": [2, 4, 6, 8, 16, 32],
                "pack_w": [False], "parallel": [True, False]}
    return {"reg_oc": [lanes // 2, lanes, 2 * lanes, 4 * lanes], "tile_oh": [1, 2, 4],
            "vec_ow": [2, 4, 6, 8, 16, 32], "pack_w": [True, False], "parallel": [True, False]}


def default_schedule(anchor: Op | None, target: Target, body: Any = None) -> Schedule:
    lanes = target.vector_lanes(4)
    parallel = target.cores > 1
    packed = prepacked_w(anchor, body)
    if packed:
        # channel vectors; a depthwise one has 1 weight vector per step: more columns
        vec_ow = 8 if lanes >= 16 else 4
        return Schedule.of(reg_oc=packed[1], tile_oh=1, vec_ow=vec_ow, pack_w=False, parallel=parallel)
    if _grouped(anchor):
        return Schedule.of(reg_oc=1, tile_oh=4, vec_ow=2 * lanes, pack_w=False, parallel=parallel)
    # 2 weight vectors x 8 columns = 16 accumulators on AVX-512 (32 registers)
    return Schedule.of(reg_oc=2 * lanes, tile_oh=1, vec_ow=8 if lanes >= 16 else 4, pack_w=True,
                       parallel=parallel)


def register_oc(oc: int, schedule: Schedule, target: Target) -> int:
    """The register tile height ``apply`` uses for ``oc`` output channels: what the layout
    pass must use as the weight's and the output's channel block."""
    return _reg_oc(oc, schedule, target.vector_lanes(4))


def _reg_oc(oc: int, schedule: Schedule, lanes: int) -> int:
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM

    reg_oc = c.pow2_divisor(oc, schedule.get("reg_oc", 2 * lanes))
    return reg_oc if reg_oc >= min(4, oc) else c.divisor_near(oc, schedule.get("reg_oc", 2 * lanes))


def apply(sch: Any, anchor: Any, schedule: Schedule, target: Target) -> list[Any]:
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM

    lanes = target.vector_lanes(4)
    block = sch.get(anchor)
    oc_var = str(block.iter_vars[1].var)
    weight = _weight_read(block, oc_var)
    packed = _packed_read(block)
    # grouped/depthwise: some other read (the input) is indexed by the output channel
    grouped = any(oc_var in c.vars_in(r.region[1].min) for i, r in enumerate(block.reads)
                  if i not in (weight, packed) and len(r.region) in (4, 5))
    pad = [b for b in sch.get_producers(anchor) if c.block_name(sch, b).endswith("_pad")]
    c_in = _blocked_source(sch, pad[0] if pad else anchor)
    if grouped and not (packed is not None and c_in):
        return _ow_vector(sch, anchor, schedule, lanes, c)
    handled = []
    if pad and c_in:
        handled += _blocked_pad(sch, pad[0], c_in, lanes, c)
    blocks = None if packed is None else [int(d) for d in block.reads[packed].source.shape[4:]]
    return handled + _oc_vector(sch, anchor, weight, schedule, lanes, c, blocks)


def _weight_read(block: Any, oc_var: str) -> int | None:
    for index, region in enumerate(block.reads):
        if len(region.region) == 4 and str(region.region[0].min) == oc_var:
            return index
    return None


def _packed_read(block: Any) -> int | None:
    """The read of a weight packed at compile time (6-D ``[OC/oc, IC/ic, KH, KW, ic, oc]``)."""
    for index, region in enumerate(block.reads):
        if len(region.region) == 6:
            return index
    return None


def _blocked_source(sch: Any, block: Any) -> int:
    """The channel block of a blocked (5-D) activation that ``block`` reads, else 0."""
    reads = [r for r in sch.get(block).reads if len(r.region) == 5]
    return int(reads[0].source.shape[4]) if reads else 0


def _blocked_pad(sch: Any, pad: Any, cb: int, lanes: int, c: Any) -> list[Any]:
    """The padded copy of a blocked input stays blocked: copied as channel vectors."""
    if c.attempt("pad blocked", lambda: sch.transform_layout(
            pad, ("write", 0), lambda n, ch, i, j: (n, ch // cb, i, j, ch % cb))) is None:
        return []
    n, ch, i, j = sch.get_loops(pad)
    c0, c1 = sch.split(ch, [None, cb])
    sch.reorder(n, c0, i, j, c1)
    outer = sch.fuse(n, c0, i)
    c.attempt("pad parallel", lambda: sch.parallel(outer))
    c.attempt("pad vectorize", lambda: c.vectorize_loop(sch, c1) if cb <= 4 * lanes else None)
    return [pad]


def _oc_vector(sch: Any, anchor: Any, weight: int | None, schedule: Schedule, lanes: int,
               c: Any, blocks: list[int] | None = None) -> list[Any]:
    """``blocks``: ``[ic, oc]`` of a weight packed at compile time (None: plain OIHW)."""
    from tilefx.codegen.tvm.schedules.contraction import (  # cycle: contraction imports this module
        epilogue_at, local_accumulator, pack_operand, vectorize_inner)

    n, oc, oh, ow, rc, ry, rx = sch.get_loops(anchor)
    OC, OH, OW, IC = (c.loop_extent(sch, lp) for lp in (oc, oh, ow, rc))
    reg_oc = _reg_oc(OC, schedule, lanes) if blocks is None else blocks[1]
    ic = blocks[0] if blocks is not None and IC % blocks[0] == 0 else 1
    tile_oh = c.divisor_near(OH, schedule.get("tile_oh", 1))
    reg_ow = c.divisor_near(OW, schedule.get("vec_ow", 8))

    packed = None
    if blocks is None and schedule.get("pack_w", True) and weight is not None and reg_oc > 1:
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
    # a blocked input: its channel block innermost in the reduction, read as one stream
    if ic > 1:
        rc0, rc1 = sch.split(rc, [IC // ic, ic])
        reduce = [rc0, ry, rx, rc1]
    else:
        reduce = [rc, ry, rx]
    sch.reorder(n, oc0, oh0, ow0, *reduce, oh1, ow1, oc1)
    outer = sch.fuse(n, oc0, oh0)
    if schedule.get("parallel", True) and c.loop_extent(sch, outer) > 1:
        sch.parallel(outer)
    sch.reverse_compute_at(writeback, ow0)
    if _writes_blocked(sch, writeback):
        c.attempt("writeback channel vectors", lambda: _channels_inner(sch, writeback, c))
    c.attempt("writeback vectorize", lambda: vectorize_inner(sch, writeback, 2 * lanes, c))
    sch.unroll(oh1)
    sch.unroll(ow1)
    if reg_oc > lanes and reg_oc % lanes == 0:
        oc1a, oc1b = sch.split(oc1, [reg_oc // lanes, lanes])
        sch.unroll(oc1a)
        c.vectorize_loop(sch, oc1b)
    else:
        c.vectorize_loop(sch, oc1)
    init = sch.decompose_reduction(anchor, reduce[0])  # after vectorize: see matmul.py
    c.attempt("init vectorize", lambda: vectorize_inner(sch, init, 2 * lanes, c))
    epilogue_at(sch, epilogue, outer, lanes, c)
    handled = [anchor, init, writeback, *epilogue]
    if packed is not None:
        handled.append(packed)
        loops = sch.get_loops(packed)
        c.attempt("pack parallel", lambda: sch.parallel(loops[0]))
    return handled


def _writes_blocked(sch: Any, block: Any) -> bool:
    return any(len(w.region) == 5 for w in sch.get(block).writes)


def _channels_inner(sch: Any, writeback: Any, c: Any) -> None:
    """Reorder the write-back's tile loops so the output channel is innermost: a blocked
    output (``[N, OC/oc, OH, OW, oc]``) is then stored as whole vectors."""
    from tvm import s_tir  # heavy: loaded on first use

    loops = list(sch.get_loops(writeback))
    realize = sch.get(loops[-1]).body
    if not isinstance(realize, s_tir.SBlockRealize):
        return
    # the tile loop that indexes the output channel only
    channel = c.vars_in(realize.iter_values[1])
    others = set().union(*(c.vars_in(v) for i, v in enumerate(realize.iter_values) if i != 1))
    names = [sch.get(lp).loop_var.name for lp in loops]
    inner = [i for i, name in enumerate(names) if name in channel and name not in others]
    if len(inner) != 1 or inner[0] == len(loops) - 1:
        return
    k = inner[0]
    sch.reorder(*loops[k + 1:], loops[k])


def _ow_vector(sch: Any, anchor: Any, schedule: Schedule, lanes: int, c: Any) -> list[Any]:
    from tilefx.codegen.tvm.schedules.contraction import epilogue_at, local_accumulator  # cycle, as above

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
    c.attempt("writeback vectorize", lambda: c.vectorize_loop(sch, sch.get_loops(writeback)[-1]))
    sch.unroll(oh1)
    c.vectorize_loop(sch, ow1)
    init = sch.decompose_reduction(anchor, rc)
    c.attempt("init vectorize", lambda: c.vectorize_loop(sch, sch.get_loops(init)[-1]))
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
        c.attempt("pad vectorize", lambda: c.vectorize_loop(sch, sch.get_loops(pad[0])[-1]))
        handled.append(pad[0])
    return handled


def _column_stride(block: Any) -> int:
    """The stride of the output column in the input's last index (1 if not plain)."""
    from tvm import tirx  # heavy: loaded on first use

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
