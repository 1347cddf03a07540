"""Matmul loop structure of the contraction template (see ``contraction.py``).

Loops ``[batch, i, j, k]`` become

    batch i0 j0 (parallel) | j1 i1 | k0 k1 (unrolled) | i2 (unrolled) j2 (vector)

``reg_m`` x ``reg_n`` (``i2`` x ``j2``) is the register tile: its accumulators
live in a ``local`` buffer written back (with the fused epilogue) once per
``(i1, j1)``. The whole K loop runs inside the register tile (no K cache
blocking: ``tile_k`` is inert), and the ``K x reg_n`` panel of B stays in
L2 while ``i1`` walks the ``tile_m`` rows.

``pack_b`` copies B to ``[..., N / reg_n, K, reg_n]`` first, so the panel is
one contiguous stream. Measured on znver4 (1 thread): for a row-major B it
gains nothing (512^3, 1024^3) or loses (64x1024x4096: 10.7 -> 19.6 ms, the
copy is a third of the work), so it is off by default; for a B transposed
inside the kernel (``q @ k.T``), whose unpacked vectors gather, it wins
(8x256x64x256: 3.1 -> 0.66 ms) and is on. Constant weights are better
packed once at compile time by a graph pass than here on every call.
"""

from __future__ import annotations

import math
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


def space(anchor: Op | None, target: Target, body: Any = None) -> dict[str, list[Any]]:
    lanes = target.vector_lanes(4)
    bn = prepacked_b(anchor, body)
    # tile_k is kept for the tuner's sake but has one value: the K loop runs whole
    # inside the register tile (see the module docstring), so it is not blocked
    if bn:  # B was packed at compile time (passes/packing.py): its panel width is the register tile
        return {"tile_m": [16, 32, 64, 128], "tile_n": [bn * 2, bn * 4, bn * 8], "tile_k": [0],
                "reg_m": [2, 4, 6, 8], "reg_n": [bn], "unroll_k": [1, 2, 4, 8], "pack_b": [False],
                "parallel": [True, False]}
    return {"tile_m": [16, 32, 64, 128], "tile_n": [lanes * 2, lanes * 4, lanes * 8],
            "tile_k": [0], "reg_m": [2, 4, 6, 8], "reg_n": [lanes, lanes * 2], "unroll_k": [1, 2, 4, 8],
            "pack_b": [True, False], "parallel": [True, False]}


def _transposed_b(anchor: Op | None, body: Any) -> bool:
    """B is a permute inside the kernel (``q @ k.T``): unpacked, each vector gathers."""
    if anchor is None or body is None:
        return False
    return any(op.name == "permute" and op.results[0] == anchor.inputs[1] for op in body.ops)


def prepacked_b(anchor: Op | None, body: Any) -> int:
    """The panel width ``bn`` if B is a weight packed at compile time, read through
    ``reshape(permute(Wp[N/bn, K, bn], [1, 0, 2]), [K, N])`` (``passes/packing.py``), else 0."""
    if anchor is None or body is None:
        return 0
    producers = body.producers()
    reshape = producers.get(anchor.inputs[1].name)
    perm = producers.get(reshape.inputs[0].name) if reshape is not None and reshape.name == "reshape" \
        else None
    if perm is None or perm.name != "permute" or tuple(perm.attr("dims")) != (1, 0, 2):
        return 0
    return int(perm.inputs[0].type.shape[2])


def default_schedule(anchor: Op | None, target: Target, body: Any = None) -> Schedule:
    lanes = target.vector_lanes(4)
    # 8 x 32 fp32 accumulators = 16 of AVX-512's 32 registers, leaving room for
    # the B vectors and A broadcasts; with 16-byte vectors 8 x 8 is the same share
    reg_m = 8 if lanes >= 16 else 4
    reg_n = prepacked_b(anchor, body) or 2 * lanes  # a packed weight's panel is the register tile
    return Schedule.of(tile_m=64, tile_n=4 * reg_n, tile_k=0, reg_m=reg_m, reg_n=reg_n, unroll_k=4,
                       pack_b=_transposed_b(anchor, body), parallel=target.cores > 1)


def register_n(n: int, schedule: Schedule, target: Target) -> int:
    """The register tile width ``apply`` uses for an ``N``-wide output: what a packing
    pass must use as its panel width so the kernel reads whole panels."""
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM

    lanes = target.vector_lanes(4)
    reg_n = c.pow2_divisor(n, schedule.get("reg_n", 2 * lanes))
    return reg_n if reg_n >= 4 else c.divisor_near(n, schedule.get("reg_n", 2 * lanes))


def apply(sch: Any, anchor: Any, schedule: Schedule, target: Target) -> list[Any]:
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM
    from tilefx.codegen.tvm.schedules.contraction import (  # cycle: contraction imports this module
        epilogue_at, local_accumulator, pack_operand, vectorize_inner)

    lanes = target.vector_lanes(4)
    *batch, i, j, k = sch.get_loops(anchor)
    M, N, K = (c.loop_extent(sch, lp) for lp in (i, j, k))
    reg_m = c.divisor_near(M, schedule.get("reg_m", 4))
    tile_m = c.divisor_near(M // reg_m, max(1, schedule.get("tile_m", 64) // reg_m)) * reg_m
    reg_n = register_n(N, schedule, target)
    tile_n = c.divisor_near(N // reg_n, max(1, schedule.get("tile_n", 8 * lanes) // reg_n)) * reg_n
    unroll_k = c.divisor_near(K, schedule.get("unroll_k", 4))
    if schedule.get("parallel", True):
        # small problems: shrink the cache tile until every core gets a task
        nbatch = math.prod(c.loop_extent(sch, lp) for lp in batch)
        tasks = lambda: nbatch * (M // tile_m) * (N // tile_n)  # noqa: E731
        while tasks() < 2 * target.cores and tile_m > reg_m:
            tile_m = c.divisor_near(M // reg_m, tile_m // reg_m // 2) * reg_m
        while tasks() < target.cores and tile_n > reg_n:
            tile_n = c.divisor_near(N // reg_n, tile_n // reg_n // 2) * reg_n

    packed = None
    if schedule.get("pack_b", False) and reg_n > 1:
        packed = _pack_b(sch, anchor, reg_n, c, pack_operand)
    writeback, epilogue = local_accumulator(sch, anchor, c)

    i0, i1, i2 = sch.split(i, [M // tile_m, tile_m // reg_m, reg_m])
    j0, j1, j2 = sch.split(j, [N // tile_n, tile_n // reg_n, reg_n])
    k0, k1 = sch.split(k, [K // unroll_k, unroll_k])
    sch.reorder(*batch, i0, j0, j1, i1, k0, k1, i2, j2)
    outer = sch.fuse(*batch, i0, j0)
    if schedule.get("parallel", True) and c.loop_extent(sch, outer) > 1:
        sch.parallel(outer)
    sch.reverse_compute_at(writeback, i1)
    vectorize_inner(sch, writeback, 2 * lanes, c)
    if unroll_k > 1:
        sch.unroll(k1)
    sch.unroll(i2)
    c.vectorize_loop(sch, j2)
    # last: the update block left by the decomposition no longer counts as a
    # reduction, so vectorize/unroll refuse its loops afterwards
    init = sch.decompose_reduction(anchor, k0)
    vectorize_inner(sch, init, 2 * lanes, c)
    epilogue_at(sch, epilogue, outer, lanes, c)
    handled = [anchor, init, writeback, *epilogue]
    if packed is not None:
        _schedule_pack(sch, packed, c, lanes)
        handled.append(packed)
    return handled


def _pack_b(sch: Any, anchor: Any, reg_n: int, c: Any, pack_operand: Any) -> Any:
    """Pack the read buffer indexed by ``j`` but not ``i`` (B, or a transposed weight)."""
    block = sch.get(anchor)
    # the unscheduled block's iter vars are [*batch, i, j, k], like its loops
    i_name, jv = (str(iv.var) for iv in block.iter_vars[-3:-1])
    for index, region in enumerate(block.reads):
        mins = [r.min for r in region.region]
        names = [c.vars_in(m) for m in mins]
        if any(i_name in n for n in names):
            continue
        pos = [d for d, m in enumerate(mins) if str(m) == jv]
        if len(pos) != 1 or len(mins) < 2 or region.source.shape[pos[0]] % reg_n:
            continue
        return pack_operand(sch, anchor, index, _panel_map(pos[0], len(mins), reg_n), c)
    return None


def _panel_map(pj: int, rank: int, reg_n: int) -> Any:
    """[..., K, N] (N at ``pj``) -> [..., N / reg_n, K, reg_n]. TVM reads the
    map's signature for its arity, so it gets exactly ``rank`` parameters."""
    from tvm import tirx  # heavy: loaded on first use
    from tvm.tirx import IndexMap  # heavy: loaded on first use

    def body(*x: Any) -> list[Any]:
        others = [v for d, v in enumerate(x) if d != pj]
        return [*others[:-1], x[pj] // reg_n, others[-1], x[pj] % reg_n]

    names = [tirx.Var(f"p{d}", "int32") for d in range(rank)]
    return IndexMap(names, body(*names), None)


def _schedule_pack(sch: Any, block: Any, c: Any, lanes: int) -> None:
    loops = sch.get_loops(block)
    if len(loops) >= 2:
        c.attempt("pack parallel", lambda: sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2
                                                         else loops[0]))
    c.attempt("pack vectorize", lambda: c.vectorize_loop(sch, sch.get_loops(block)[-1])
              if c.loop_extent(sch, sch.get_loops(block)[-1]) <= 64 else None)
