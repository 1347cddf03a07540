"""Contraction template: matmul (batched) and conv2d (NCHW, grouped/depthwise),
each with its fused prologue (inlined) and epilogue (bias, activation, residual).

Both follow the same CPU recipe (the one oneDNN and TVM's x86 ``topi`` use):

* a **register tile** of accumulators, kept in a small ``local`` buffer that
  LLVM promotes to vector registers, with the whole reduction loop nest
  running *outside* the unrolled/vectorized register tile loops, so each
  reduction step is a few broadcasts, a few vector loads and many FMAs;
* the operand read along the vector lanes is **packed** by the kernel itself
  (a ``cache_read`` + ``transform_layout``) so the inner vector load is
  contiguous and free of cache-set conflicts; the packing runs once per call;
* the **epilogue** is inlined into the block that writes the accumulators back
  (``reverse_compute_inline``), so bias/activation/residual cost one pass over
  the register tile while it is hot; if it cannot be inlined (e.g. the
  contraction result is also a kernel output), it runs per tile instead.

The per-op loop structure lives in ``matmul.py`` and ``conv.py``; this file
holds the dispatch and the shared accumulator/epilogue steps. Knobs, per op:

* matmul: ``tile_m``, ``tile_n`` (cache tile), ``reg_m`` x ``reg_n``
  (register tile), ``unroll_k``, ``pack_b``, ``parallel`` (``tile_k`` is
  accepted but inert: the K loop is not blocked);
* conv2d: ``reg_oc`` x ``vec_ow`` (register tile: output channels on the
  vector lanes x output columns; for depthwise, columns on the lanes),
  ``tile_oh`` (output rows per tile), ``pack_w``, ``parallel``.
"""

from __future__ import annotations

from typing import Any, Callable

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.codegen.tvm.schedules import conv, matmul, reduction
from tilefx.ir.graph import Op


def _anchor(kernel_op: Op) -> Op | None:
    for op in kernel_op.body.ops:
        if op.name in ("matmul", "conv2d"):
            return op
    return None


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    anchor = _anchor(kernel_op)
    if anchor is not None and anchor.name == "conv2d":
        return conv.space(anchor, target, kernel_op.body)
    return matmul.space(anchor, target, kernel_op.body)


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    anchor = _anchor(kernel_op)
    if anchor is not None and anchor.name == "conv2d":
        return conv.default_schedule(anchor, target, kernel_op.body)
    return matmul.default_schedule(anchor, target, kernel_op.body)


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM

    def is_pad(b: Any) -> bool:
        return c.block_name(sch, b).endswith("_pad")

    c.inline_intermediates(sch, keep=is_pad)
    anchors = [b for b in c.blocks(sch) if c.block_name(sch, b).split("_")[0] in ("matmul", "conv2d")
               and c.is_reduction(sch, b)]
    if not anchors:
        return reduction.apply(sch, schedule, target)
    anchor = anchors[0]
    op = conv if c.block_name(sch, anchor).startswith("conv2d") else matmul
    handled = op.apply(sch, anchor, schedule, target)
    names = {c.block_name(sch, b) for b in handled}
    schedule_leftovers(sch, lambda b: c.block_name(sch, b) in names, target, c)


def local_accumulator(sch: Any, anchor: Any, c: Any) -> tuple[Any, list[Any]]:
    """Accumulate ``anchor`` in a ``local`` buffer; fold the epilogue into its write-back.

    Returns (write-back block, epilogue blocks that could not be inlined).
    """
    writeback = sch.cache_write(anchor, 0, "local")
    leftover = []
    for consumer in list(sch.get_consumers(writeback)):
        if c.attempt("epilogue inline", lambda consumer=consumer: sch.reverse_compute_inline(consumer)) is None:
            leftover.append(consumer)
    return writeback, leftover


def epilogue_at(sch: Any, blocks: list[Any], loop: Any, lanes: int, c: Any) -> None:
    """Run epilogue blocks that were not inlined once per tile at ``loop``, vectorized."""
    outer_var = str(sch.get(loop).loop_var)
    for block in blocks:
        if c.attempt("epilogue at tile", lambda block=block: sch.reverse_compute_at(block, loop)) is None:
            continue
        loops = list(sch.get_loops(block))
        names = [str(sch.get(lp).loop_var) for lp in loops]
        tail = loops[names.index(outer_var) + 1:] if outer_var in names else []
        if tail:
            c.attempt("epilogue vectorize", lambda tail=tail: c.parallel_vectorize(
                sch, tail, vectorize=lanes, unroll=1, parallel=False))


def vectorize_inner(sch: Any, block: Any, lanes: int, c: Any) -> None:
    """Vectorize the innermost loop of ``block`` in chunks of at most ``lanes``."""
    inner = sch.get_loops(block)[-1]
    extent = c.loop_extent(sch, inner)
    vec = c.pow2_divisor(extent, lanes)
    if vec == extent or vec < 4:
        # an odd extent: one wide vector (LLVM splits it into registers), unless huge
        if extent <= 4 * lanes:
            c.attempt("vectorize", lambda: c.vectorize_loop(sch, inner))
        return
    outer, inner = sch.split(inner, [None, vec])
    c.vectorize_loop(sch, inner)
    if extent // vec <= 8:
        c.attempt("unroll", lambda: sch.unroll(outer))


def pack_operand(sch: Any, block: Any, index: int, index_map: Any, c: Any) -> Any:
    """Copy read buffer ``index`` of ``block`` into a new layout; the copy runs up front."""
    cache = c.attempt("pack operand", lambda: sch.cache_read(block, index, "global"))
    if cache is None:
        return None
    if c.attempt("pack layout", lambda: sch.transform_layout(cache, ("write", 0), index_map)) is None:
        sch.compute_inline(cache)  # a plain copy would only cost time
        return None
    return cache


def schedule_leftovers(sch: Any, skip: Callable[[Any], bool], target: Target, c: Any,
                       parallel: bool = True) -> None:
    """Blocks the op schedule did not place (pad, packing, an epilogue, unrelated outputs),
    except those ``skip`` names: the outer loops fused and parallel, the last one vectorized."""
    lanes = target.vector_lanes(4)
    for b in c.blocks(sch):
        if skip(b):
            continue
        spatial, reduce = c.spatial_loops(sch, b)
        if reduce or not spatial:
            continue
        if len(spatial) > 1:
            outer = sch.fuse(*spatial[:-1])
            if parallel and c.loop_extent(sch, outer) > 1:
                c.attempt("leftover parallel", lambda outer=outer: sch.parallel(outer))
        c.attempt("leftover vectorize", lambda b=b: vectorize_inner(sch, b, lanes, c))
