"""Pointwise template: a fused elementwise/broadcast/injective chain over a flat 1-D grid.

Each program handles ``BLOCK`` consecutive elements of the output, row-major;
the flat index is split into one index per output dim and every body output
is computed there by the shared emitter (``emit.py``) and stored. Outputs of
different shapes (a multi-output kernel may export a smaller intermediate)
get one ``@triton.jit`` function each, launched one after the other.

Knobs (``SPACE``): ``BLOCK`` elements per program, ``num_warps``.
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import Emitter, next_pow2, numel, program_id, shape_of
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.source import HEADER, KernelSource
from tilefx.ir.graph import Graph, Value

SPACE: dict[str, list[Any]] = {"BLOCK": [128, 256, 512, 1024, 2048, 4096], "num_warps": [1, 2, 4, 8]}


def largest(body: Graph) -> int:
    return max((numel(shape_of(v)) for v in body.outputs), default=1)


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    """1024 elements and 4 warps per program for large tensors (8 per thread, 16-byte
    accesses); smaller blocks for small tensors, so their programs still spread over
    the SMs instead of queueing on a few."""
    from tilefx.codegen.triton.matmul import sm_count  # cycle: matmul imports this module

    n = largest(body)
    block = max(128, min(1024, next_pow2(-(-n // sm_count(target)))))
    block = min(block, next_pow2(n))
    return Schedule.of(BLOCK=block, num_warps=4 if block >= 1024 else 2 if block >= 256 else 1)


def clamp(body: Graph, schedule: Schedule) -> Schedule:
    """Block sizes no larger than the problem: equal code, equal fingerprint."""
    block = min(int(schedule.get("BLOCK", 1024)), next_pow2(largest(body)))
    warps = min(int(schedule.get("num_warps", 4)), max(1, block // 32))
    return Schedule.of(BLOCK=block, num_warps=warps)


def output_groups(body: Graph) -> list[tuple[tuple[int, ...], list[int]]]:
    """Body output positions grouped by output shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, v in enumerate(body.outputs):
        groups.setdefault(shape_of(v), []).append(j)
    return list(groups.items())


def arg_names(body: Graph) -> tuple[dict[str, str], list[str], list[str]]:
    ins = [f"in{i}" for i in range(len(body.inputs))]
    outs = [f"out{j}" for j in range(len(body.outputs))]
    return {v.name: a for v, a in zip(body.inputs, ins)}, ins, outs


def emit_flat_kernel(body: Graph, fn: str, shape: tuple[int, ...], outputs: list[tuple[str, Value]],
                     block: int, args: dict[str, str], params: list[str]) -> list[str]:
    """One jit function computing ``outputs`` (pointer name, body value) over ``shape``."""
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
    for ptr, v in outputs:
        e.store(ptr, v, idx, mask, offset="xindex")  # the output is the domain, row-major
    return ["@triton.jit", f"def {fn}({', '.join(params)}, BLOCK: tl.constexpr):", *e.lines]


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    schedule = clamp(body, schedule)
    block, warps = int(schedule["BLOCK"]), int(schedule["num_warps"])
    args, ins, outs = arg_names(body)
    lines = [HEADER]
    launch = [f"def launch({', '.join(ins + outs)}):"]
    for g, (shape, positions) in enumerate(output_groups(body)):
        fn = f"{name}_{g}" if len(output_groups(body)) > 1 else name
        params = ins + [outs[j] for j in positions]
        lines += emit_flat_kernel(body, fn, shape, [(outs[j], body.outputs[j]) for j in positions],
                                  block, args, params) + [""]
        n = numel(shape)
        if n:
            launch.append(f"    {fn}[({-(-n // block)},)]({', '.join(params)}, BLOCK={block}, "
                          f"num_warps={warps})")
    if len(launch) == 1:
        launch.append("    pass  # every output is empty")
    return KernelSource(name, "\n".join(lines + launch) + "\n", (("num_warps", warps),), schedule)
