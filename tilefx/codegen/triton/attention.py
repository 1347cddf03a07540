"""Fused attention template (FlashAttention-2 style) for the ``attention`` IR op.

``softmax(q @ k^T * scale + mask) @ v`` without materializing the scores:
one program owns ``BLOCK_M`` query rows of one batch entry, streams keys and
values in ``BLOCK_N`` blocks and keeps a running row max ``m``, row sum
``l`` and output accumulator in fp32 (online softmax, in base 2: scores are
pre-multiplied by ``scale * log2(e)`` so ``exp2`` is used). Causal masking is
top-left aligned like the reference (key ``j`` is visible to query ``i``
when ``j <= i``): the key blocks wholly before a tile's first query run
without the mask, the ones from there to the diagonal with it, and the loop
stops after the tile's last query. An optional
4th input is a bool keep-mask or an additive float mask, broadcast over the
batch dims. The head dim is padded to a power of two >= 16 (64 and 128 are
exact).

Knobs (``space``): ``impl`` (``triton`` | ``library`` = torch SDPA, i.e. flash
attention when torch can), ``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``.
"""

from __future__ import annotations

import math
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import library
from tilefx.codegen.triton.emit import (
    Emitter,
    Var,
    broadcast_index,
    literal,
    next_pow2,
    numel,
    program_id,
    shape_of,
    tl_type,
    the_anchor,
)
from tilefx.codegen.triton.matmul import input_precision, sm_count
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType

SPACE: dict[str, list[Any]] = {"impl": ["triton", "library"], "BLOCK_M": [16, 32, 64, 128],
                               "BLOCK_N": [16, 32, 64, 128], "num_warps": [2, 4, 8], "num_stages": [1, 2, 3]}
LOG2E = 1.4426950408889634
GRID_Y_MAX = 65535  # CUDA's limit on a grid's second axis
EIGHT_WARP_TILE = 128 * 128  # the smallest query x key tile that runs on 8 warps (see clamp)


def anchor_of(body: Graph) -> Op:
    return the_anchor(body, {"attention"}, "attention")


def space(body: Graph) -> dict[str, list[Any]]:
    out = {k: list(v) for k, v in SPACE.items()}
    try:
        library_call(anchor_of(body), ["q", "k", "v", "m"][:len(anchor_of(body).inputs)])
        args = {v.name: f"in{i}" for i, v in enumerate(body.inputs)}
        for v in anchor_of(body).inputs:
            library.operand_expr(body, v, args)
    except NotImplementedError:
        out["impl"] = ["triton"]
    return out


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    """FlashAttention-2's Hopper choice for head dim <= 64: 128 query rows, 64 keys per
    step, 4 warps, 3 stages; for wider heads its choice at head dim 256 (64 x 64, 4 warps),
    with 2 stages for the larger K and V tiles (at head dim 256: 160 KB of shared memory,
    254 registers a thread and no spills by ptxas for sm_90); 64 query rows when the
    sequence is short or 128 would starve the SMs."""
    op = anchor_of(body)
    L, e = shape_of(op.inputs[0])[-2:]
    batch = numel(shape_of(op.result)[:-2])
    bm = 128 if e <= 64 else 64
    if L <= 64 or -(-L // bm) * batch < sm_count(target):
        bm = 64
    return Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=64, num_warps=4, num_stages=3 if e <= 64 else 2)


def scale_of(op: Op) -> float:
    s = op.attr("scale")
    return 1.0 / math.sqrt(shape_of(op.inputs[0])[-1]) if s is None else float(s)


def library_call(op: Op, xs: list[str]) -> str:
    if op.attr("causal") and len(xs) == 4:
        raise NotImplementedError("torch SDPA refuses a mask together with is_causal")
    out_batch = shape_of(op.result)[:-2]
    full = []
    for v, x in zip(op.inputs, xs):
        s = shape_of(v)
        want = out_batch + s[-2:]
        full.append(x if s == want else f"{x}.expand{want}")
    mask = f", attn_mask={full[3]}" if len(full) == 4 else ""
    return (f"torch.nn.functional.scaled_dot_product_attention({full[0]}, {full[1]}, {full[2]}{mask}, "
            f"is_causal={bool(op.attr('causal'))}, scale={literal(scale_of(op))})")


def clamp(body: Graph, schedule: Schedule) -> Schedule:
    """The schedule as the code will run it: tiles no larger than the problem, and 4 warps
    for tiles under 128 x 128 asked to run on 8. Those computed wrong results on an H200
    (BERT's masked attention at 64 x 64 and 64 x 128: relative error 1, the interpreter
    right; gpu-schedule-sweep-h200-2026-12-03.md) and Triton's own fused-attention tutorial
    prunes exactly them; so such a point of the space builds its 4-warp twin (one
    fingerprint: built and measured once)."""
    op = anchor_of(body)
    L, S = shape_of(op.inputs[0])[-2], shape_of(op.inputs[1])[-2]
    bm = max(16, min(int(schedule.get("BLOCK_M", 64)), next_pow2(L)))
    bn = max(16, min(int(schedule.get("BLOCK_N", 64)), next_pow2(S)))
    warps = int(schedule.get("num_warps", 4))
    if warps > 4 and bm * bn < EIGHT_WARP_TILE:
        warps = 4
    return Schedule.of(impl=schedule.get("impl", "triton"), BLOCK_M=bm, BLOCK_N=bn,
                       num_warps=warps, num_stages=int(schedule.get("num_stages", 2)))


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    op = anchor_of(body)
    if schedule.get("impl", "triton") == "library":
        return library.emit(body, name, op, library_call, schedule)
    q, k, v = op.inputs[:3]
    mask_v = op.inputs[3] if len(op.inputs) == 4 else None
    if q.type.dtype not in (DType.float32, DType.float16, DType.bfloat16):
        raise NotImplementedError(f"attention on {q.type.dtype.short} has no Triton template")
    s = clamp(body, schedule)
    bm, bn = int(s["BLOCK_M"]), int(s["BLOCK_N"])
    out_shape = shape_of(op.result)
    batch = out_shape[:-2]
    L, E = shape_of(q)[-2:]
    S, EV = shape_of(v)[-2:]
    bd, bdv = max(16, next_pow2(E)), max(16, next_pow2(EV))
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    causal = bool(op.attr("causal"))
    tiles_m = -(-L // bm)
    # causal: a query tile's work grows with its index (key blocks up to its diagonal); the grid
    # puts the batch on axis 0 and hands out the heaviest tiles first, so that the last wave
    # holds the lightest ones instead of a few full rows (longest job first)
    heavy_first = causal and bool(batch) and tiles_m <= GRID_Y_MAX
    if heavy_first:
        e.line(f"pid_m = {tiles_m - 1} - {program_id(body, 1)}  # heaviest query tiles first")
    else:
        e.line(f"pid_m = {program_id(body, 0)}")
    bidx: tuple[str, ...] = ()
    if batch:
        e.line(f"bid = {program_id(body, 0 if heavy_first else 1)}")
        bidx = delinearize(e, "bid", batch)
    bat = lambda x: broadcast_index(bidx, shape_of(x)[:-2], batch)  # noqa: E731
    e.line("offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]")
    e.line("offs_d = tl.arange(0, BLOCK_D)[None, :]")
    e.line("offs_dv = tl.arange(0, BLOCK_DV)[None, :]")
    conds = [c for c in (f"offs_m < {L}" if L % bm else None, f"offs_d < {E}" if E != bd else None) if c]
    qmask = " & ".join(f"({c})" for c in conds) if conds else None
    qmask_v = e.tmp(qmask, "m") if qmask else None
    qv = e.value_at(q, bat(q) + ("offs_m", "offs_d"), qmask_v)
    op_t = tl_type(q.type.dtype)
    precision = input_precision(q.type.dtype)
    e.line(f"qk_scale = {literal(scale_of(op) * LOG2E)}  # softmax in base 2")
    e.line('m_i = tl.full([BLOCK_M, 1], float("-inf"), tl.float32)')
    e.line("l_i = tl.zeros([BLOCK_M, 1], tl.float32)")
    e.line("acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)")

    def kv_step(diagonal: bool) -> None:
        """One block of keys and values: scores, online softmax, accumulate (the body of a key
        loop). ``diagonal``: the block may hold keys after some of the tile's queries (causal)."""
        e.line("offs_n = n0 + tl.arange(0, BLOCK_N)[None, :]")
        e.line("offs_nk = n0 + tl.arange(0, BLOCK_N)[:, None]")
        e.line("offs_dk = tl.arange(0, BLOCK_D)[:, None]")
        kc = [c for c in (f"offs_n < {S}" if S % bn else None, f"offs_dk < {E}" if E != bd else None) if c]
        kmask = e.tmp(" & ".join(f"({c})" for c in kc), "m") if kc else None
        kt = e.value_at(k, bat(k) + ("offs_n", "offs_dk"), kmask)  # K^T tile [BLOCK_D, BLOCK_N]
        qt = e.tile(qv, op_t, "[BLOCK_M, BLOCK_D]", L > 1 and E > 1, qmask_v)
        ktt = e.tile(kt, op_t, "[BLOCK_D, BLOCK_N]", S > 1 and E > 1, kmask)
        e.line(f"qk = tl.dot({qt}, {ktt}{precision}) * qk_scale")
        if S % bn:
            e.line(f'qk = tl.where(offs_n < {S}, qk, float("-inf"))')
        if diagonal:
            e.line('qk = tl.where(offs_m >= offs_n, qk, float("-inf"))')
        if mask_v is not None:
            mv = e.value_at(mask_v, bat(mask_v) + ("offs_m", "offs_n"),
                            e.tmp(f"(offs_m < {L}) & (offs_n < {S})", "m"))
            if mask_v.type.dtype == DType.bool:
                e.line(f'qk = tl.where({mv.expr}, qk, float("-inf"))')
            else:
                e.line(f"qk = qk + {e.compute(mv)} * {literal(LOG2E)}")
        e.line("m_new = tl.maximum(m_i, tl.max(qk, 1)[:, None])")
        e.line("m_safe = tl.where(m_new == float(\"-inf\"), 0.0, m_new)  # a fully masked row stays 0")
        e.line("p = tl.exp2(qk - m_safe)")
        e.line("alpha = tl.exp2(m_i - m_safe)")
        e.line("l_i = l_i * alpha + tl.sum(p, 1)[:, None]")
        vc = [c for c in (f"offs_nk < {S}" if S % bn else None, f"offs_dv < {EV}" if EV != bdv else None) if c]
        vmask = e.tmp(" & ".join(f"({c})" for c in vc), "m") if vc else None
        vv = e.value_at(v, bat(v) + ("offs_nk", "offs_dv"), vmask)
        vt = e.tile(vv, op_t, "[BLOCK_N, BLOCK_DV]", S > 1 and EV > 1, vmask)
        e.line(f"acc = acc * alpha + tl.dot(p.to({op_t}), {vt}{precision})")
        e.line("m_i = m_new")

    if causal:
        # key blocks wholly before the tile's first query need no causal mask; the blocks from
        # there to the diagonal do, and the loop stops after the tile's last query
        e.line(f"diag = tl.minimum((pid_m * BLOCK_M) // BLOCK_N * BLOCK_N, {S // bn * bn})")
        e.line("for n0 in range(0, diag, BLOCK_N):  # below the diagonal: every key visible")
        with e.block():
            kv_step(diagonal=False)
        e.line(f"for n0 in range(diag, tl.minimum({S}, (pid_m + 1) * BLOCK_M), BLOCK_N):  # the diagonal")
        with e.block():
            kv_step(diagonal=True)
    else:
        e.line(f"for n0 in range(0, {S}, BLOCK_N):")
        with e.block():
            kv_step(diagonal=False)
    # a query masked from every key has l_i = 0 (and acc = 0): 0, as torch's safe softmax
    res = e.tmp("tl.where(l_i == 0.0, 0.0, acc / l_i)", "o")
    idx = bidx + ("offs_m", "offs_dv")
    oc = [c for c in (f"offs_m < {L}" if L % bm else None, f"offs_dv < {EV}" if EV != bdv else None) if c]
    omask = e.tmp(" & ".join(f"({c})" for c in oc), "m") if oc else None
    e.overrides[op.result.name] = (idx, Var(res, op.result.type.dtype, "tl.float32"))
    for j, out in enumerate(body.outputs):
        if shape_of(out) != out_shape:
            raise NotImplementedError(f"attention kernel output %{out.name} is not on the result")
        e.store(f"out{j}", out, idx, omask, zero=None if L > 1 and EV > 1 else "(offs_m * 0 + offs_dv * 0)")
    warps, stages = int(s["num_warps"]), int(s["num_stages"])
    if heavy_first:
        grid = f"({numel(batch)}, {tiles_m})"
    else:
        grid = f"({tiles_m}, {numel(batch)})" if batch else f"({tiles_m},)"
    text = one_kernel_module(name, ins + outs, e.lines, grid,
                             {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DV": bdv},
                             {"num_warps": warps, "num_stages": stages})
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)), s)
