"""Pointwise template: a fused elementwise/broadcast/injective chain over a flat 1-D grid.

Each program handles ``BLOCK`` consecutive elements of the output, row-major;
the flat index is split into one index per output dim and every body output
is computed there by the shared emitter (``emit.py``) and stored. Outputs of
different shapes (a multi-output kernel may export a smaller intermediate)
get one ``@triton.jit`` function each, launched one after the other.

A body that reads an input transposed (a ``permute`` moving its contiguous dim)
can run in 2-D tiles instead (``pointwise_tiled.py``), so that both the
transposed loads and the stores coalesce.

Knobs (``space``): ``BLOCK`` elements per program, ``num_warps``, and for a body
with a transposed read ``TILE_Y``: 0 (or absent) is the flat mode; else the tile
has ``TILE_Y`` rows of ``BLOCK // TILE_Y`` columns (``BLOCK_Y x BLOCK_X``).
``clamp`` fits both to the problem and drops ``TILE_Y`` where the flat mode
runs, so schedules that make the same code are one schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import (Emitter, flag_input, next_pow2, numel, program_id, shape_of,
                                        store_flag, workspace_source)
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.pointwise_tiled import emit_tiled_kernel, find_tiling
from tilefx.codegen.triton.source import HEADER, KernelSource
from tilefx.ir.graph import Graph, Value

SPACE: dict[str, list[Any]] = {"BLOCK": [128, 256, 512, 1024, 2048, 4096], "num_warps": [1, 2, 4, 8]}
TILE_Y = [0, 16, 32, 64]  # offered only to bodies with a transposed read
# a tile's rows are stored in runs of BLOCK_X elements: fewer than 16 would leave most of
# each 32-byte sector unwritten
MIN_TILE_X = 16


def space(body: Graph) -> dict[str, list[Any]]:
    out = {k: list(v) for k, v in SPACE.items()}
    if find_tiling(body) is not None:
        out["TILE_Y"] = list(TILE_Y)
    return out


def largest(body: Graph) -> int:
    return max((numel(shape_of(v)) for v in body.outputs), default=1)


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    """Flat: 1024 elements and 4 warps per program for large tensors (8 per thread,
    16-byte accesses); smaller blocks for small tensors, so their programs still spread
    over the SMs instead of queueing on a few.

    Tiled, when the body reads an input transposed and both tile axes have 16 elements
    or more: 32 or 64 rows by 32 or 64 columns, on each axis whichever pads it less
    (64 on a tie: ConvNeXt's 96 channels take three 32-row tiles, not two 64-row ones a
    quarter empty; its 56 x 56 pixels 49 tiles of 64), at 4 warps: 8-32 elements a
    thread, 128-byte rows of fp16 at 64 (two lines of fp32). Compiled for sm_90 (Triton
    3.9, no GPU run), ConvNeXt's fp16 32 x 64 tile reads the NHWC input and writes the
    output in 16-byte vectors, the layout change going through 4 KiB of shared memory.
    32 x 32 when the larger tiles would not give every SM a program. Not measured on a
    GPU yet: the tuner's ``TILE_Y`` and ``BLOCK`` say more."""
    from tilefx.codegen.triton.matmul import sm_count  # cycle: matmul imports this module

    tiling = find_tiling(body)
    if tiling is not None and min(tiling.ysize, tiling.xsize) >= 16:
        by, bx = _less_padded(tiling.ysize), _less_padded(tiling.xsize)
        if tiling.programs(by, bx) < sm_count(target):
            by = bx = 32
        return clamp(body, Schedule.of(BLOCK=by * bx, TILE_Y=by, num_warps=4))
    n = largest(body)
    block = max(128, min(1024, next_pow2(-(-n // sm_count(target)))))
    block = min(block, next_pow2(n))
    return Schedule.of(BLOCK=block, num_warps=4 if block >= 1024 else 2 if block >= 256 else 1)


def _less_padded(n: int) -> int:
    """32 or 64, whichever block pads ``n`` less (64 on a tie)."""
    return 32 if -(-n // 32) * 32 < -(-n // 64) * 64 else 64


def clamp(body: Graph, schedule: Schedule) -> Schedule:
    """Block sizes no larger than the problem: equal code, equal fingerprint. ``TILE_Y``
    is dropped where the flat mode runs (0, or a body without a transposed read); a
    tile keeps at least ``MIN_TILE_X`` columns where the problem has them."""
    tile_y = int(schedule.get("TILE_Y", 0))
    tiling = find_tiling(body) if tile_y else None
    warps = int(schedule.get("num_warps", 4))
    if tiling is None:
        block = min(int(schedule.get("BLOCK", 1024)), next_pow2(largest(body)))
        return Schedule.of(BLOCK=block, num_warps=min(warps, max(1, block // 32)))
    by = min(tile_y, next_pow2(tiling.ysize))
    bx = min(max(MIN_TILE_X, int(schedule.get("BLOCK", 1024)) // tile_y), next_pow2(tiling.xsize))
    return Schedule.of(BLOCK=by * bx, TILE_Y=by, num_warps=min(warps, max(1, by * bx // 32)))


@dataclass(frozen=True)
class Grid:
    """The output as a clamped schedule tiles it (what the cost model's features count):
    flat, one row of the largest output in ``BLOCK`` pieces; tiled, ``rows`` (the Y axis
    times the other dims) by ``cols`` (X) in ``block_rows x block_cols`` tiles."""

    rows: int
    cols: int
    block_rows: int
    block_cols: int
    programs: int

    @property
    def pad_share(self) -> float:
        """Share of the launched lanes that are masked off."""
        return 1.0 - self.rows * self.cols / (self.programs * self.block_rows * self.block_cols)


def grid(body: Graph, schedule: Schedule) -> Grid:
    s = clamp(body, schedule)
    tiling = find_tiling(body) if "TILE_Y" in s else None
    if tiling is None:
        n, block = largest(body), int(s["BLOCK"])
        return Grid(n, 1, block, 1, -(-n // block))
    by = int(s["TILE_Y"])
    bx = int(s["BLOCK"]) // by
    return Grid(tiling.zsize * tiling.ysize, tiling.xsize, by, bx, tiling.programs(by, bx))


def output_groups(body: Graph) -> list[tuple[tuple[int, ...], list[int]]]:
    """Body output positions grouped by output shape, in first-seen order; a flag (``any``/``all``
    of a whole value: a library matmul's epilogue) goes with the value it reduces."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, v in enumerate(body.outputs):
        x = flag_input(body, v)
        groups.setdefault(shape_of(v if x is None else x), []).append(j)
    return list(groups.items())


def flag_names(body: Graph) -> dict[str, int]:
    """Each flag output's value name -> its place in the module's workspace."""
    names = [v.name for v in body.outputs if flag_input(body, v) is not None]
    return {name: k for k, name in enumerate(dict.fromkeys(names))}


def arg_names(body: Graph) -> tuple[dict[str, str], list[str], list[str]]:
    ins = [f"in{i}" for i in range(len(body.inputs))]
    outs = [f"out{j}" for j in range(len(body.outputs))]
    return {v.name: a for v, a in zip(body.inputs, ins)}, ins, outs


def emit_flat_kernel(body: Graph, fn: str, shape: tuple[int, ...], outputs: list[tuple[str, Value]],
                     block: int, args: dict[str, str], params: list[str],
                     flags: dict[str, int] | None = None) -> list[str]:
    """One jit function computing ``outputs`` (pointer name, body value) over ``shape``; those
    named in ``flags`` (value name -> workspace place) are flags of values over ``shape``."""
    n = numel(shape)
    e = Emitter(body, args)
    pid = program_id(body, 0)
    e.line(f"xindex = {pid} * BLOCK + tl.arange(0, BLOCK)")
    mask = None
    if n % block:
        e.line(f"xmask = xindex < {n}")
        mask = "xmask"
    idx = delinearize(e, "xindex", shape) if shape else ()
    e.flat = (idx, shape, "xindex")
    flags = flags or {}
    for ptr, v in outputs:
        if v.name not in flags:
            e.store(ptr, v, idx, mask, offset="xindex")  # the output is the domain, row-major
    for ptr, v in outputs:
        if v.name in flags:
            store_flag(e, ptr, v, idx, mask, "ws", flags[v.name], str(-(-n // block)))
    return ["@triton.jit", f"def {fn}({', '.join(params)}, BLOCK: tl.constexpr):", *e.lines]


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    schedule = clamp(body, schedule)
    block, warps = int(schedule["BLOCK"]), int(schedule["num_warps"])
    args, ins, outs = arg_names(body)
    lines = [HEADER]
    launch = [f"def launch({', '.join(ins + outs)}):"]
    flags = flag_names(body)
    tiling = find_tiling(body) if "TILE_Y" in schedule and not flags else None
    if flags:
        lines += workspace_source(body, list(flags))
        launch.append(f"    ws = _workspace({outs[-1]})")
    if tiling is not None:  # one output shape: one kernel
        by, bx = int(schedule["TILE_Y"]), block // int(schedule["TILE_Y"])
        params = ins + outs
        lines += emit_tiled_kernel(body, name, tiling, list(zip(outs, body.outputs)), by, bx, args,
                                   params) + [""]
        launch.append(f"    {name}[({tiling.programs(by, bx)},)]({', '.join(params)}, BLOCK_Y={by}, "
                      f"BLOCK_X={bx}, num_warps={warps})")
    else:  # one kernel for each output shape
        groups = output_groups(body)
        for g, (shape, positions) in enumerate(groups):
            fn = f"{name}_{g}" if len(groups) > 1 else name
            params = ins + [outs[j] for j in positions]
            if any(body.outputs[j].name in flags for j in positions):
                params.append("ws")
            lines += emit_flat_kernel(body, fn, shape, [(outs[j], body.outputs[j]) for j in positions],
                                      block, args, params, flags) + [""]
            n = numel(shape)
            if n:
                launch.append(f"    {fn}[({-(-n // block)},)]({', '.join(params)}, BLOCK={block}, "
                              f"num_warps={warps})")
    if len(launch) == 1:
        launch.append("    pass  # every output is empty")
    return KernelSource(name, "\n".join(lines + launch) + "\n", (("num_warps", warps),), schedule)
