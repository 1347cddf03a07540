"""Matmul template: ``[..., M, K] x [..., K, N]`` with a fused epilogue, grouped launch order.

One program computes a ``BLOCK_M x BLOCK_N`` output tile, looping over K in
``BLOCK_K`` steps with ``tl.dot`` into an fp32 accumulator (fp16/bf16
operands stay narrow for the tensor cores; fp32 uses IEEE unless
``torch.backends.cuda.matmul.allow_tf32`` is set). Program ids are swizzled
in groups of ``GROUP_M`` tile rows so neighbouring programs share operand
tiles in L2. Batch dims (broadcast like ``torch.matmul``) are the second
grid axis. Operands are read through the shared emitter, so a ``permute``
or ``reshape`` in front of the matmul (a transposed weight) is index
arithmetic; the epilogue (bias, activation, residual) is computed on the
accumulator tile before the store.

Knobs (``space``): ``impl`` (``triton`` | ``library`` = cuBLAS + epilogue
kernel), ``BLOCK_M/N/K``, ``GROUP_M``, ``num_warps``, ``num_stages``.

Defaults (``default_schedule``): the library for fp32 without TF32, for
deep-K problems on few tiles (cuBLAS splits K) and for bare matmuls (nothing to
fuse); otherwise the largest Hopper tile of ``HOPPER_CONFIGS`` that still gives
half the SMs a tile (``BIG_TILE`` on outputs of many waves).
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import library
from tilefx.codegen.triton.emit import (
    Emitter,
    Var,
    broadcast_index,
    flag_input,
    next_pow2,
    numel,
    program_id,
    shape_of,
    store_flag,
    tl_type,
    the_anchor,
    workspace_source,
)
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.types import DType

SPACE: dict[str, list[Any]] = {
    "impl": ["triton", "library"], "BLOCK_M": [16, 32, 64, 128, 256], "BLOCK_N": [16, 32, 64, 128, 256],
    "BLOCK_K": [16, 32, 64, 128], "GROUP_M": [1, 4, 8], "num_warps": [2, 4, 8], "num_stages": [2, 3, 4, 5],
}


def anchor_of(body: Graph) -> Op:
    return the_anchor(body, {"matmul"}, "contraction")


def space(body: Graph) -> dict[str, list[Any]]:
    out = {k: list(v) for k, v in SPACE.items()}
    try:  # the library candidate needs view-only operands
        _check_library(body)
    except NotImplementedError:
        out["impl"] = ["triton"]
    return out


def _check_library(body: Graph) -> None:
    anchor = anchor_of(body)
    args = {v.name: f"in{i}" for i, v in enumerate(body.inputs)}
    for v in anchor.inputs:
        library.operand_expr(body, v, args)


def folds_batch(body: Graph) -> bool:
    """Whether the batch dims are tiled as rows of M: B is one matrix for every batch
    (``[B, S, D] @ W``, a Linear on a sequence or an NHWC image), so the batch is one tall
    GEMM, not ``B`` short ones (a ViT's ``[197, 16, 768] @ W`` had M = 16 per batch and took
    the GEMV tile at 19% of roofline)."""
    anchor = anchor_of(body)
    return len(shape_of(anchor.result)) > 2 and all(d == 1 for d in shape_of(anchor.inputs[1])[:-2])


def dims(body: Graph) -> tuple[int, int, int]:
    """(M, N, K) as the kernel tiles them: folded batch dims count in M."""
    a, b = anchor_of(body).inputs
    (m, k), n = shape_of(a)[-2:], shape_of(b)[-1]
    if folds_batch(body):
        m *= numel(shape_of(anchor_of(body).result)[:-2])
    return m, n, k


# Default tiles for Hopper (H100/H200), largest first: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
# for fp16/bf16 operands. fp32 (TF32) tiles take half the BLOCK_K: twice the bytes per element.
# The first config with tiles for at least half the SMs wins; a skinny M skips tiles taller than M.
# From the H200 sweep of real models' contractions (benchmarks/results/gpu-schedule-sweep-h200-
# 2026-12-03b.md): 128x128 at 8 warps and 3 stages was within 5% of the best tile on every
# transformer/ConvNeXt MLP and projection (ViT fc1 40 us vs 50 with 128x256, ConvNeXt's K = 96
# MLP 83 vs 122); 128x256 pays only on outputs of many waves.
HOPPER_CONFIGS: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 64, 8, 3),
    (64, 128, 32, 4, 5),
    (64, 64, 64, 4, 4),
    (32, 64, 64, 4, 4),
    (16, 64, 128, 4, 3),    # a GEMV-like M: long K steps, few warps
)
BIG_TILE = (128, 256, 64, 8, 3)  # Triton's tutorial best on H100 at 4096^3 (147 KB of shared memory)
BIG_TILE_WAVES = 8               # 128x128 tiles for this many waves, K >= 1024, N % 256 == 0: reuse pays
DEEP_K = 2048                    # K this deep with waves of 128x128 tiles under 3/4 full: cuBLAS splits K
SPLIT_K_DEPTH = 1024  # a K this deep on too few tiles is where cuBLAS's split-K wins
DEFAULT_SMS = 132     # H100/H200 SXM, when the target does not know its device


def sm_count(target: Any) -> int:
    cores = getattr(target, "cores", 0) if getattr(target, "kind", "") == "cuda" else 0
    return cores if cores > 1 else DEFAULT_SMS


def batch_of(body: Graph) -> int:
    """The GEMMs along the grid's second axis (1 when the batch folds into M)."""
    return 1 if folds_batch(body) else numel(shape_of(anchor_of(body).result)[:-2])


def prefers_library(body: Graph, target: Any = None) -> str:
    """Why cuBLAS (plus a fused epilogue kernel) should be the default, or "" if not:

    - fp32 without TF32: cuBLAS's SGEMM beats an IEEE ``tl.dot``;
    - a skinny problem whose tiles cannot fill the GPU while K is deep, or a deep K whose
      128x128 tiles leave the last wave mostly idle (ViT-B's MLP fc2, K = 3072, 150 tiles on
      132 SMs: 25 us with cuBLAS, 34 at the best tile): cuBLAS splits K, this template does not;
    - a bare matmul (nothing fused, so fusion saves nothing): cuBLAS's GEMMs lead the
      template's tiles on big problems (GPT-2's LM head 0.56 ms vs 0.68 at the best tile)."""
    if "library" not in space(body)["impl"]:
        return ""
    m, n, k = dims(body)
    if anchor_of(body).inputs[0].type.dtype == DType.float32 and not _tf32():
        return "fp32 without TF32"
    if _tiles(body, HOPPER_CONFIGS[-2]) < sm_count(target) // 2 and k >= SPLIT_K_DEPTH:
        return "skinny and deep: split-K"
    if k >= DEEP_K and _waves_used(_tiles(body, HOPPER_CONFIGS[0]), sm_count(target)) < 0.75:
        return "deep K on a part-filled last wave: split-K"
    if m >= 256 and n >= 256 and _bare(body):
        return "a bare matmul: cuBLAS"
    return ""


def _bare(body: Graph) -> bool:
    """Nothing but the matmul (and views of its operands) in the kernel, which is its output."""
    anchor = anchor_of(body)
    before = library.ancestors(body, anchor)
    return [v.name for v in body.outputs] == [anchor.result.name] and \
        all(op is anchor or op.results[0].name in before for op in body.ops)


def _waves_used(tiles: int, sms: int) -> float:
    """How full the waves of ``tiles`` on ``sms`` are (150 tiles on 132 SMs: 0.57)."""
    return tiles / (-(-tiles // sms) * sms)


def _tiles(body: Graph, config: tuple[int, ...]) -> int:
    """Output tiles of ``config``'s ``BLOCK_M x BLOCK_N`` (batches that do not fold count)."""
    m, n, _ = dims(body)
    return -(-m // config[0]) * -(-n // config[1]) * batch_of(body)


def _tf32() -> bool:
    try:
        import torch  # guarded: no torch, no TF32
    except ImportError:
        return False
    return bool(torch.backends.cuda.matmul.allow_tf32)


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    if prefers_library(body, target):
        return Schedule.of(impl="library", EPILOGUE_BLOCK=1024)
    m, n, k = dims(body)
    sms = sm_count(target)
    fp32 = anchor_of(body).inputs[0].type.dtype == DType.float32
    # no tile taller than M; the 16-row GEMV tile only for M <= 16
    fitting = [c for c in HOPPER_CONFIGS if c[0] <= max(16, next_pow2(m)) and (c[0] > 16 or m <= 16)]
    if fitting[0] == HOPPER_CONFIGS[0] and k >= 1024 and n % 256 == 0 and \
            _tiles(body, HOPPER_CONFIGS[0]) >= BIG_TILE_WAVES * sms:
        fitting.insert(0, BIG_TILE)
    # half a wave of tiles is enough: larger tiles reuse more of each operand load
    chosen = next((c for c in fitting if _tiles(body, c) >= sms // 2), fitting[-1])
    bm, bn, bk, warps, stages = chosen
    if k % bk and k % 32 == 0:  # K = 96 (ConvNeXt-T, Swin-T): three full 32-steps, no masked half step
        bk = 32
    if fp32:
        bk, stages = bk // 2, min(stages, 3)
    return Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                       num_warps=warps, num_stages=stages)


def clamp(body: Graph, schedule: Schedule) -> Schedule:
    m, n, k = dims(body)
    fit = lambda knob, size, default: max(16, min(int(schedule.get(knob, default)), next_pow2(size)))  # noqa: E731
    bm, bn = fit("BLOCK_M", m, 64), fit("BLOCK_N", n, 64)
    tiles_m = -(-m // bm)
    return Schedule.of(impl=schedule.get("impl", "triton"), BLOCK_M=bm, BLOCK_N=bn,
                       BLOCK_K=fit("BLOCK_K", k, 32),
                       GROUP_M=max(1, min(int(schedule.get("GROUP_M", 8)), tiles_m)),
                       num_warps=int(schedule.get("num_warps", 4)),
                       num_stages=int(schedule.get("num_stages", 3)))


def input_precision(dtype: DType) -> str:
    """The ``tl.dot`` precision argument: fp32 operands are IEEE unless torch allows TF32;
    fp16/bf16 operands take none (they always run on the tensor cores)."""
    if dtype != DType.float32:
        return ""
    return ', input_precision="tf32"' if _tf32() else ', input_precision="ieee"'


def _all(e: Emitter, *conds: str | None) -> str | None:
    """The conjunction of the given conditions (None when there is none)."""
    real = [c for c in conds if c]
    if len(real) < 2:
        return real[0] if real else None
    return e.tmp(" & ".join(f"({c})" for c in real), "m")


def grouped_tiles(e: Emitter, body: Graph, m: int, n: int, bm: int, bn: int, gm: int) -> tuple[int, int]:
    """Emit the swizzled tile coordinates ``offs_m`` [BLOCK_M, 1] and ``offs_n`` [1, BLOCK_N]
    of program 0's id; returns the tile counts along M and N."""
    tm, tn = -(-m // bm), -(-n // bn)
    e.line(f"pid = {program_id(body, 0)}")
    e.line(f"group = pid // {gm * tn}  # GROUP_M rows of tiles share B tiles in L2")
    e.line(f"rows = tl.minimum({tm} - group * {gm}, {gm})")
    e.line(f"pid_m = group * {gm} + (pid % {gm * tn}) % rows")
    e.line(f"pid_n = (pid % {gm * tn}) // rows")
    e.line("offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]")
    e.line("offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]")
    return tm, tn


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    anchor = anchor_of(body)
    if schedule.get("impl", "triton") == "library":
        return library.emit(body, name, anchor, lambda op, xs: f"torch.matmul({xs[0]}, {xs[1]})", schedule)
    a, b = anchor.inputs
    if a.type.dtype not in (DType.float32, DType.float16, DType.bfloat16):
        raise NotImplementedError(f"matmul on {a.type.dtype.short} has no Triton template")
    s = clamp(body, schedule)
    bm, bn, bk, gm = (int(s[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"))
    m, n, k = dims(body)
    out_shape = shape_of(anchor.result)
    batch = out_shape[:-2]
    fold = folds_batch(body)
    nbatch = 1 if fold else numel(batch)
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    tm, tn = grouped_tiles(e, body, m, n, bm, bn, gm)
    bidx: tuple[str, ...] = ()
    if fold:  # a row of M is (batch..., row): row-major, so a plain input is read flat
        rows = delinearize(e, "offs_m", (*batch, out_shape[-2]))
        bidx, row = rows[:-1], rows[-1]
    else:
        row = "offs_m"
        if batch:
            e.line(f"bid = {program_id(body, 1)}")
            bidx = delinearize(e, "bid", batch)
    mmask = f"offs_m < {m}" if m % bm else None
    nmask = f"offs_n < {n}" if n % bn else None
    acc = e.tmp("tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)", "acc")
    e.line(f"for k0 in range(0, {k}, BLOCK_K):")
    with e.block():
        e.line("ak = k0 + tl.arange(0, BLOCK_K)[None, :]")
        e.line("bk = k0 + tl.arange(0, BLOCK_K)[:, None]")
        kcond = [f"ak < {k}", f"bk < {k}"] if k % bk else [None, None]
        am = _all(e, mmask, kcond[0])
        bmask = _all(e, kcond[1], nmask)
        a_idx = broadcast_index(bidx, shape_of(a)[:-2], batch) + (row, "ak")
        if fold:
            e.flat = (a_idx, shape_of(a), f"offs_m * {k} + ak")
        av = e.value_at(a, a_idx, am)
        bv = e.value_at(b, broadcast_index(bidx, shape_of(b)[:-2], batch) + ("bk", "offs_n"), bmask)
        op_t = tl_type(a.type.dtype)
        at = e.tile(av, op_t, "[BLOCK_M, BLOCK_K]", m > 1 and k > 1, am)
        bt = e.tile(bv, op_t, "[BLOCK_K, BLOCK_N]", k > 1 and n > 1, bmask)
        e.line(f"{acc} += tl.dot({at}, {bt}{input_precision(a.type.dtype)})")
    idx = bidx + (row, "offs_n")
    e.flat = (idx, out_shape, f"offs_m * {n} + offs_n") if fold else None
    mask = _all(e, mmask, nmask)
    if mask is not None:  # the epilogue only stores: a bias row needs no row mask
        e.mask_parts[mask] = ((mmask, "offs_m"), (nmask, "offs_n"))
    e.overrides[anchor.result.name] = (idx, Var(acc, anchor.result.type.dtype, "tl.float32"))
    flags: list[tuple[int, Value]] = []
    for j, v in enumerate(body.outputs):
        if shape_of(v) != out_shape:
            x = flag_input(body, v)
            if x is None or shape_of(x) != out_shape:
                raise NotImplementedError(f"contraction output %{v.name} {shape_of(v)} is not on the "
                                          f"matmul's result {out_shape}")
            flags.append((j, v))  # after the stores: the flag's input is computed by then
            continue
        e.store(f"out{j}", v, idx, mask, zero=None if m > 1 and n > 1 else "(offs_m * 0 + offs_n * 0)",
                offset=e.flat[2] if fold else None)
    programs = f"{tm * tn * nbatch}"
    for k, (j, v) in enumerate(flags):
        store_flag(e, f"out{j}", v, idx, mask, "ws", k, programs)
    warps, stages = int(s["num_warps"]), int(s["num_stages"])
    grid = f"({tm * tn}, {nbatch})" if batch and not fold else f"({tm * tn},)"
    workspace = workspace_source(body, [v.name for _, v in flags]) if flags else None
    text = one_kernel_module(name, ins + outs, e.lines, grid,
                             {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                             {"num_warps": warps, "num_stages": stages}, workspace)
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)), s)
