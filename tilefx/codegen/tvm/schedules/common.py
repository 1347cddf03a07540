"""Helpers shared by the schedule templates: finding blocks, inlining, and the
"fuse, split, parallel outer, vectorize inner" loop recipe.

Every transformation that may be illegal for some fused graph is attempted and
skipped on failure (TVM checks legality), so a template degrades to a slower
but correct schedule instead of failing the build.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from tvm import s_tir, tirx
from tvm.tirx.analysis import undefined_vars

log = logging.getLogger("tilefx.codegen.tvm")


def blocks(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_name(sch: s_tir.Schedule, block: Any) -> str:
    return sch.get(block).name_hint


def is_output(sch: s_tir.Schedule, block: Any) -> bool:
    # kernels are destination-passing: a block writing a buffer that the function
    # does not allocate itself writes a parameter, i.e. an output
    local = set(sch.get(sch.get_sblock("root")).alloc_buffers)
    return any(w.source not in local for w in sch.get(block).writes)


def is_reduction(sch: s_tir.Schedule, block: Any) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def attempt(what: str, fn: Callable[[], Any]) -> Any:
    """Run one schedule primitive; on a legality error log it and return None.

    Success returns the primitive's result, or True for primitives that return None.
    """
    try:
        result = fn()
        return True if result is None else result
    except Exception as e:  # noqa: BLE001 - tvm raises its own error types
        log.debug("schedule step skipped (%s): %s", what, str(e).splitlines()[0] if str(e) else e)
        log.log(5, "%s", e)
        return None


def inline_intermediates(sch: s_tir.Schedule, keep: Callable[[Any], bool] = lambda b: False) -> None:
    """Inline every non-output, non-reduction block not kept, consumers first."""
    changed = True
    while changed:
        changed = False
        for block in reversed(blocks(sch)):
            if is_output(sch, block) or is_reduction(sch, block) or keep(block):
                continue
            if attempt("compute_inline", lambda b=block: sch.compute_inline(b)) is not None or \
                    _gone(sch, block):
                changed = True
                break


def _gone(sch: s_tir.Schedule, block: Any) -> bool:
    try:
        sch.get(block)
        return False
    except Exception:  # noqa: BLE001
        return True


def pow2_divisor(extent: int, limit: int) -> int:
    """The largest power of two <= limit dividing extent (1 if none)."""
    f = 1
    while f * 2 <= limit and extent % (f * 2) == 0:
        f *= 2
    return f


def divisor_near(extent: int, target: int) -> int:
    """The divisor of ``extent`` closest to ``target`` from below (at least 1)."""
    for f in range(min(target, extent), 0, -1):
        if extent % f == 0:
            return f
    return 1


def loop_extent(sch: s_tir.Schedule, loop: Any) -> int:
    return int(sch.get(loop).extent)


def vectorize_loop(sch: s_tir.Schedule, loop: Any) -> bool:
    """Vectorize ``loop`` if its body is one block and nothing else; else leave it serial.

    A block moved under another block's loops (``reverse_compute_at``) whose own loops all
    have extent 1 has no loops of its own: its innermost loop is the shared one, around a
    whole reduction. TVM accepts ``vectorize`` there and LLVM then computes wrong numbers
    (a 6x37x64 ``q @ k.T`` with a 1x1 register tile was off by 150%), so every template
    vectorizes through this check.
    """
    if not isinstance(sch.get(loop).body, s_tir.SBlockRealize):
        log.debug("not vectorized: loop %s holds more than one block", sch.get(loop).loop_var)
        return False
    sch.vectorize(loop)
    return True


def parallel_vectorize(sch: s_tir.Schedule, loops: list[Any], *, vectorize: int, unroll: int,
                       parallel: bool, min_parallel: int = 2) -> None:
    """Fuse ``loops``, split as [outer, unroll, vector] and annotate each part."""
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = loop_extent(sch, fused)
    vec = pow2_divisor(extent, vectorize) if vectorize > 1 else 1
    unr = pow2_divisor(extent // vec, unroll) if unroll > 1 else 1
    outer, mid, inner = sch.split(fused, [None, unr, vec])
    if vec > 1:
        vectorize_loop(sch, inner)
    if unr > 1:
        sch.unroll(mid)
    if parallel and loop_extent(sch, outer) >= min_parallel:
        sch.parallel(outer)


def spatial_loops(sch: s_tir.Schedule, block: Any) -> tuple[list[Any], list[Any]]:
    """(spatial loops, reduction loops) of an unscheduled block, in loop order."""
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if len(kinds) != len(loops):
        return list(loops), []
    spatial = [lp for lp, k in zip(loops, kinds) if k != tirx.IterVar.CommReduce]
    reduce = [lp for lp, k in zip(loops, kinds) if k == tirx.IterVar.CommReduce]
    return spatial, reduce


def vars_in(expr: Any) -> set[str]:
    return {v.name for v in undefined_vars(expr)}


def loop_kinds(sch: s_tir.Schedule, block: Any) -> list[str]:
    """For each loop around ``block``: "spatial", "reduce", "mixed" or "unused", by the
    kinds of the block iterators whose bindings use the loop's variable."""
    loops = sch.get_loops(block)
    if not loops:
        return []
    realize = sch.get(loops[-1]).body
    if not isinstance(realize, s_tir.SBlockRealize):
        return ["mixed"] * len(loops)
    used: dict[str, set[str]] = {}
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        kind = "reduce" if iv.iter_type == tirx.IterVar.CommReduce else "spatial"
        for name in vars_in(value):
            used.setdefault(name, set()).add(kind)
    out = []
    for lp in loops:
        kinds = used.get(sch.get(lp).loop_var.name, set())
        out.append(kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "unused")
    return out
