"""Sparse contraction template (GPU): ``bsr_matmul`` — a dense activation times a constant
block-sparse weight, "loaded as sparse, computed as dense".

``bsr_matmul(x, data, indices, indptr) {axis}`` (``ir/ops/sparse.py``) stores
``W[K, N]`` by block columns: block column ``j`` owns the ``bk x bn`` blocks
``data[indptr[j] : indptr[j + 1]]``, whose K-block numbers are ``indices[...]``.
The activation is viewed as rows x K (rows = every index of ``x`` but the
contracted axis, so a linear layer and a 1x1 convolution on NCHW are the same
loop). One program owns a ``BLOCK_M x bn`` output tile — ``BLOCK_M`` rows, one
block column — and walks that column's nonzero blocks:

- ``STEP_BLOCKS`` blocks per step: the blocks of one column sit next to each
  other in ``data``, so ``STEP_BLOCKS`` of them are one contiguous
  ``[STEP_BLOCKS * bk, bn]`` tile; the matching activation columns are a
  gather (``indices[e + g] * bk + r``). One ``tl.dot`` per step, fp32
  accumulation. Several blocks per step keep several loads in flight: at batch
  1 the kernel is a memory-bound GEMV and this is what feeds the SM.
- blocks narrower than 16 (``tl.dot`` wants every dim >= 16) take a
  broadcast-multiply-sum instead of ``tl.dot`` (slow; the GPU chooser does not
  pick them).
- the epilogue (bias, activation, residual) runs on the accumulator tile
  before the store, through the shared emitter, like ``matmul.py``.

Grid: (row tiles, block columns), row tiles fastest, so the programs that read
the same weight blocks run together and share them in L2.

Knobs (``SPACE``): ``impl`` (``triton``; ``semi24`` = the 2:4 semi-structured
library candidate, see ``semi24.py``), ``BLOCK_M``, ``STEP_BLOCKS``,
``num_warps``, ``num_stages``. The default schedule follows the anchor's
``impl`` attribute (set by the sparsity pass from its measurement): ``semi24``
builds the 2:4 candidate without tuning, where this machine can run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tilefx.codegen import timing
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import build_kernel, semi24
from tilefx.codegen.triton.emit import Emitter, Var, next_pow2, numel, shape_of, tl_type, the_anchor
from tilefx.codegen.triton.matmul import input_precision
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.builder import kernel_op
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType, TensorType
from tilefx.passes.sparsity import SEMI24_BLOCK, to_bsr

SPACE: dict[str, list[Any]] = {
    "impl": ["triton"], "BLOCK_M": [16, 32, 64, 128], "STEP_BLOCKS": [1, 2, 4, 8],
    "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4],
}
DOT_MIN = 16          # tl.dot wants every dim >= 16
MAX_STEP_ROWS = 256   # STEP_BLOCKS * bk at most: the weight tile of one step stays <= 256 x bn


def anchor_of(body: Graph) -> Op:
    return the_anchor(body, {"bsr_matmul"}, "sparse_contraction")


def layout(body: Graph) -> dict[str, Any]:
    """Sizes of the anchor: rows M, K, N, the block (bk, bn), the number of blocks, and
    the split of ``x``'s dims around the contracted axis."""
    op = anchor_of(body)
    x, data, _, indptr = op.inputs
    shape = shape_of(x)
    axis = int(op.attr("axis")) % len(shape)
    nnzb, bk, bn = shape_of(data)
    return {"shape": shape, "axis": axis, "rows": numel(shape) // shape[axis], "k": shape[axis],
            "bk": bk, "bn": bn, "nnzb": nnzb, "nb": shape_of(indptr)[0] - 1,
            "dtype": x.type.dtype}


def uses_dot(bk: int, bn: int, step: int = 1) -> bool:
    return next_pow2(bn) >= DOT_MIN and step * next_pow2(bk) >= DOT_MIN


def space(body: Graph) -> dict[str, list[Any]]:
    out = {k: list(v) for k, v in SPACE.items()}
    lay = layout(body)
    if semi24.available(lay["dtype"], lay["k"], lay["nb"] * lay["bn"]):
        out["impl"] = ["triton", "semi24"]
    if lay["bk"] != next_pow2(lay["bk"]):
        out["STEP_BLOCKS"] = [1]  # padded blocks are not contiguous steps
    return out


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    """Skinny inputs (a GEMV): 16 rows, steps of ~64 weight rows, 4 warps, 3 stages —
    memory bound, so what matters is the number of loads in flight. Taller inputs: up
    to 64 rows per tile (each weight block is then reused by 64 rows)."""
    lay = layout(body)
    if requested_semi24(body):
        return Schedule.of(impl="semi24", EPILOGUE_BLOCK=1024)
    bm = max(16, min(64, next_pow2(lay["rows"])))
    step = 1 if lay["bk"] != next_pow2(lay["bk"]) else max(1, min(8, 64 // lay["bk"]))
    return clamp(body, Schedule.of(impl="triton", BLOCK_M=bm, STEP_BLOCKS=step, num_warps=4,
                                   num_stages=3))


def requested_semi24(body: Graph) -> bool:
    """The pass picked the 2:4 kernel for this layer (``impl = "semi24"``) and it can run here."""
    lay = layout(body)
    return anchor_of(body).attr("impl") == "semi24" and \
        semi24.available(lay["dtype"], lay["k"], lay["nb"] * lay["bn"])


def clamp(body: Graph, schedule: Schedule) -> Schedule:
    """Knobs no larger than the problem: equal code, equal fingerprint."""
    lay = layout(body)
    bm = max(16, min(int(schedule.get("BLOCK_M", 64)), next_pow2(lay["rows"])))
    bk = next_pow2(lay["bk"])
    step = int(schedule.get("STEP_BLOCKS", 1))
    if bk != lay["bk"]:
        step = 1
    # no step longer than a full block column (K / bk blocks), nor than MAX_STEP_ROWS rows
    step = max(1, min(step, next_pow2(lay["k"] // lay["bk"]), max(1, MAX_STEP_ROWS // bk)))
    return Schedule.of(impl="triton", BLOCK_M=bm, STEP_BLOCKS=step,
                       num_warps=int(schedule.get("num_warps", 4)),
                       num_stages=int(schedule.get("num_stages", 3)))


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    if schedule.get("impl", "triton") == "semi24":
        return semi24.emit(body, name, anchor_of(body), schedule)
    anchor = anchor_of(body)
    lay = layout(body)
    if lay["dtype"] not in (DType.float32, DType.float16, DType.bfloat16):
        raise NotImplementedError(f"bsr_matmul on {lay['dtype'].short} has no Triton template")
    x, data, indices, indptr = anchor.inputs
    args, ins, outs = arg_names(body)
    for v, what in ((data, "data"), (indices, "indices"), (indptr, "indptr")):
        if v.name not in args:
            raise NotImplementedError(f"bsr_matmul {what} %{v.name} is computed in the kernel; "
                                      f"the template reads it as a kernel input (a constant)")
    s = clamp(body, schedule)
    bm, step = int(s["BLOCK_M"]), int(s["STEP_BLOCKS"])
    m, bk, bn, nb = lay["rows"], lay["bk"], lay["bn"], lay["nb"]
    BK, BN = next_pow2(bk), next_pow2(bn)  # noqa: N806 - the constexprs' names
    shape, axis = lay["shape"], lay["axis"]
    out_shape = shape_of(anchor.result)
    big = numel(shape_of(data)) >= 2 ** 31 or max(numel(shape), numel(out_shape)) >= 2 ** 31

    e = Emitter(body, args)
    e.scalars.update({"pid_m", "pid_n", "start", "end", "e0"})
    e.line(f"pid_m = tl.program_id(0){'.to(tl.int64)' if big else ''}")
    e.line(f"pid_n = tl.program_id(1){'.to(tl.int64)' if big else ''}  # one block column of W")
    e.line("offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]")
    e.line("cols = tl.arange(0, BN)[None, :]")
    e.line(f"offs_n = pid_n * {bn} + cols")
    # the rows' index in x (and the output): every dim but the contracted one
    lead = delinearize(e, "offs_m", shape[:axis] + shape[axis + 1:])
    mmask = f"offs_m < {m}" if m % bm else None
    nmask = f"cols < {bn}" if BN != bn else None
    p = args[indptr.name]
    e.line(f"start = tl.load({p} + pid_n)")
    e.line(f"end = tl.load({p} + pid_n + 1)")
    if big:
        e.line("start = start.to(tl.int64)")
    acc = e.tmp("tl.zeros([BLOCK_M, BN], dtype=tl.float32)", "acc")
    e.line("kr = tl.arange(0, STEP)  # weight rows of one step: STEP_BLOCKS blocks of BK rows")
    e.line(f"for e0 in range(start, end, {step}):")
    with e.block():
        # the block of each weight row of the step, and the row within the block
        blk, row = ("e0", "kr") if step == 1 else ("(e0 + kr // BK)", "kr % BK")
        valid = [f"{blk} < end" if step > 1 else None, f"{row} < {bk}" if BK != bk else None]
        live = " & ".join(f"({c})" for c in valid if c) or None
        if step == 1:  # one K-block number for the whole step
            kb = e.tmp(f"tl.load({args[indices.name]} + e0)", "kb")
            e.scalars.add(kb)
        else:  # one per weight row (STEP_BLOCKS distinct values, from L1)
            kb = e.tmp(f"tl.load({args[indices.name]} + {blk}, mask={blk} < end, other=0)", "kb")
        kk = e.tmp(f"({kb} * {bk} + {row})[None, :]", "kk")
        xmask = " & ".join(f"({c})" for c in (mmask, f"({live})[None, :]" if live else None) if c) or None
        xv = e.value_at(x, lead[:axis] + (kk,) + lead[axis:], xmask)
        if BK == bk and BN == bn:  # contiguous: the step is one [STEP, bn] tile of data
            woff = f"e0 * {bk * bn} + kr[:, None] * {bn} + cols"
        else:
            first = f"{blk}[:, None]" if step > 1 else blk
            woff = f"{first} * {bk * bn} + ({row})[:, None] * {bn} + cols"
        wmask = " & ".join(f"({c})" for c in (f"({live})[:, None]" if live else None, nmask) if c) or None
        wv = e.tmp(f"tl.load({args[data.name]} + {woff}"
                   + (f", mask={wmask}, other=0)" if wmask else ")"), "w")
        op_t = tl_type(lay["dtype"])
        xt = e.tile(xv, op_t, "[BLOCK_M, STEP]", m > 1, xmask)
        if uses_dot(bk, bn, step):
            e.line(f"{acc} += tl.dot({xt}, {wv}{input_precision(lay['dtype'])})")
        else:  # blocks too narrow for tl.dot: multiply and sum (fp32)
            e.line(f"{acc} += tl.sum({xt}.to(tl.float32)[:, :, None] * "
                   f"{wv}.to(tl.float32)[None, :, :], axis=1)")
    idx = lead[:axis] + ("offs_n",) + lead[axis:]
    mask = " & ".join(f"({c})" for c in (mmask, nmask) if c) or None
    if mask and mmask and nmask:
        mask = e.tmp(mask, "mask")
    e.overrides[anchor.result.name] = (idx, Var(acc, anchor.result.type.dtype, "tl.float32"))
    for j, v in enumerate(body.outputs):
        if shape_of(v) != out_shape:
            raise NotImplementedError(f"sparse contraction output %{v.name} {shape_of(v)} is not "
                                      f"on the bsr_matmul's result {out_shape}")
        e.store(f"out{j}", v, idx, mask, zero=None if m > 1 else "(offs_m * 0 + cols * 0)")
    warps, stages = int(s["num_warps"]), int(s["num_stages"])
    grid = f"({-(-m // bm)}, {nb})"
    text = one_kernel_module(name, ins + outs, e.lines, grid,
                             {"BLOCK_M": bm, "BK": BK, "BN": BN, "STEP": step * BK},
                             {"num_warps": warps, "num_stages": stages})
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)), s)


# --------------------------------------------------------------- measurement

def _layer_kernels(layer: Any, block: tuple[int, int], impl: str = "auto") -> tuple[Any, Any, list, list]:
    """The dense and the ``bsr_matmul`` kernel ops of ``layer`` (a ``passes.sparsity.SparseLayer``,
    viewed as rows x K) and their GPU arguments (fresh random ``x``, the weight, outputs)."""
    dtype = layer.dtype
    tdt = {DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}.get(dtype, torch.float32)
    k, n = layer.kn
    rows = layer.rows
    ty = lambda *shape: TensorType(dtype, shape)  # noqa: E731
    dense = kernel_op("contraction", [ty(rows, k), ty(k, n)], lambda b, x, w: b.op("matmul", x, w),
                      name="dense")
    data, idx, ptr = to_bsr(layer.weight, block)
    i32 = lambda a: TensorType(DType.int32, a.shape)  # noqa: E731
    sparse = kernel_op("sparse_contraction", [ty(rows, k), ty(*data.shape), i32(idx), i32(ptr)],
                       lambda b, x, d, i, p: b.op("bsr_matmul", x, d, i, p, axis=-1, impl=impl),
                       name="sparse")
    x = torch.randn(rows, k, device="cuda", dtype=tdt)
    out = torch.empty(rows, n, device="cuda", dtype=tdt)
    # bf16 weights arrive as their exact f32 values: the conversion back is exact
    d_args = [x, torch.from_numpy(np.ascontiguousarray(layer.weight)).to("cuda", tdt), out]
    s_args = [x, torch.from_numpy(data).to("cuda", tdt),
              *(torch.from_numpy(a).cuda() for a in (idx, ptr)), torch.empty_like(out)]
    return dense, sparse, d_args, s_args


def _time(op: Any, args: list, target: Any, schedule: Any = None) -> float:
    """Median seconds of ``op``'s kernel: built and called once first, so one-time work
    (Triton compile, the 2:4 weight's compression and cuSPARSELt setup) is not timed."""
    fn = build_kernel(op, target, schedule)
    fn(*args)
    torch.cuda.synchronize()
    return timing.cuda_median(fn, args, repeats=10, rep_seconds=0.02)


def measure_layer(layer: Any, block: tuple[int, int], target: Any = None) -> tuple[float, float]:
    """Seconds of the default dense kernel (Triton or cuBLAS, ``matmul.py``'s choice) and of
    this template's default kernel for ``layer`` (a ``passes.sparsity.SparseLayer``) on the
    GPU, CUDA-event medians with a cold L2: the GPU ``MeasuredChooser``'s ``measure``."""
    dense, sparse, d_args, s_args = _layer_kernels(layer, block)
    return _time(dense, d_args, target), _time(sparse, s_args, target)


def measure_2to4(layer: Any, target: Any = None) -> tuple[float, float]:
    """Seconds of the default dense kernel and of the 2:4 library candidate (``semi24``) for a
    2:4 ``layer``, as ``measure_layer``: the GPU ``MeasuredChooser``'s ``measure_2to4``."""
    dense, sparse, d_args, s_args = _layer_kernels(layer, SEMI24_BLOCK, impl="semi24")
    return (_time(dense, d_args, target),
            _time(sparse, s_args, target, Schedule.of(impl="semi24", EPILOGUE_BLOCK=1024)))
