"""GPU half of ``benchmarks/sparsity.py`` (``--target cuda``): sparse Linear layers on an H100/H200.

    python -m benchmarks.sparsity --target cuda            # the full table, < 4 min
    python -m benchmarks.sparsity --target cuda --quick    # batch 1 and 128, 90% only, no sweep
    python -m benchmarks.sparsity_gpu --only-2to4          # the 2:4 rows alone (fp16 and bf16), < 1 min

Linear 4096 -> 4096, fp16, batch 1 / 16 / 128, 50..95% zeros, three patterns:
unstructured (random single zeros), 16x16 and 32x32 blocks; plus a 2:4 weight (50%).
Per case, CUDA-event medians with a cold L2 (``codegen.timing.cuda_median``:
a 256 MB buffer is zeroed before each call, so the 32 MB dense weight is read
from HBM, as in a model too big for L2):

- ``cublas``: ``F.linear(x, W^T)`` (the dense baseline);
- ``tilefx``: the Triton ``bsr_matmul`` kernel (``codegen/triton/sparse.py``) with its
  default schedule, and at 90% the best of a small schedule sweep (``tuned``);
  for unstructured weights the kernel runs on 16x16 blocks (nearly all nonzero);
- ``torch bsr`` / ``torch csr``: ``torch.sparse.mm`` on ``W^T`` (cuSPARSE; "n/a" where
  torch has no kernel for fp16 or the layout);
- ``2:4``: tilefx's semi-structured candidate (``impl="semi24"``: cuSPARSELt/CUTLASS)
  on the 2:4 weight, compute capability >= 8.0, three numbers: ``2:4`` the timed call
  (the weight was compressed by an untimed first call and is cached by its tensor, so this
  is the per-call cost: torch's dispatch and, with cuSPARSELt, its per-call matmul-plan
  setup, ~0.5 ms on an H100 with torch 2.11), ``2:4 first`` the first call's wall time
  (densify + compress + cuSPARSELt/library init + the call) and ``2:4 graph`` the call
  replayed from a CUDA graph (host work gone: what the GPU itself spends).

Every tilefx result is checked against cuBLAS before it is timed. Prints one line
per case, the break-even sparsity per (batch, pattern) and writes a markdown table
(``--markdown``, default ``$OUT/sparsity_gpu.md`` when ``$OUT`` is set).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
PATTERNS = {"unstructured": (1, 1), "16x16": (16, 16), "32x32": (32, 32)}
BATCHES = (1, 16, 128)
K = N = 4096
# at 90%: 18 schedules per (batch, block), x2 row heights at batch 128 (compiles dominate)
DEVICE = "cuda"  # "cpu" + TRITON_INTERPRET=1 + small K, N: a smoke run of this script's logic
SWEEP = [dict(STEP_BLOCKS=s, num_warps=w, num_stages=st)
         for s in (2, 4, 8) for w in (2, 4, 8) for st in (3, 4)]


def _ms(fn: Callable, args: list) -> float:
    from tilefx.codegen import timing

    if DEVICE == "cpu":
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1e3
    return timing.cuda_median(fn, args, repeats=20, rep_seconds=0.05, max_repeats=100) * 1e3


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def sparse_kernel(batch: int, w: np.ndarray, block: tuple[int, int], dtype: Any = None) -> tuple[Any, list]:
    """The tilefx ``sparse_contraction`` kernel op of ``x[batch, K] @ w`` (fp16 unless
    ``dtype`` says bf16) and its BSR operands on the GPU."""
    import torch

    from tilefx.ir.builder import kernel_op
    from tilefx.ir.types import DType, TensorType
    from tilefx.passes.sparsity import to_bsr

    dtype = dtype or DType.float16
    tdt = torch.bfloat16 if dtype == DType.bfloat16 else torch.float16
    data, idx, ptr = to_bsr(w, block)
    types = [TensorType(dtype, (batch, w.shape[0])), TensorType(dtype, data.shape),
             TensorType(DType.int32, idx.shape), TensorType(DType.int32, ptr.shape)]
    op = kernel_op("sparse_contraction", types,
                   lambda b, x, d, i, p: b.op("bsr_matmul", x, d, i, p, axis=-1), name="bsr")
    ops = [torch.from_numpy(data).to(DEVICE, tdt), torch.from_numpy(idx).to(DEVICE), torch.from_numpy(ptr).to(DEVICE)]
    return op, ops


def _tilefx(op: Any, operands: list, x: Any, want: Any, schedule: Any = None) -> tuple[float, Any]:
    import torch

    from tilefx.codegen.triton import build_kernel

    built = build_kernel(op, None, schedule)
    out = torch.empty_like(want)
    args = [x, *operands, out]
    built(*args)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    err = float((out.float() - want.float()).abs().max() / want.float().abs().max())
    if not err < 2e-2:  # a wrong kernel must not post a number
        raise AssertionError(f"tilefx sparse kernel differs from cuBLAS (max rel err {err:.3g}) "
                             f"at {op.inputs[0].type} {schedule}")
    return _ms(built, args), built.schedule


def _torch_sparse(wt: Any, xt: Any, layout: str, block: tuple[int, int]) -> float | None:
    import torch

    try:
        sp = wt.to_sparse_csr() if layout == "csr" else wt.to_sparse_bsr(block)
        torch.sparse.mm(sp, xt)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return _ms(torch.sparse.mm, [sp, xt])


def sweep(op: Any, operands: list, x: Any, want: Any, batch: int) -> tuple[float, Any]:
    """Best (ms, schedule) over ``SWEEP`` (and taller row tiles for big batches)."""
    from tilefx.codegen.schedule import Schedule

    heights = (16,) if batch <= 16 else (32, 64)
    best: tuple[float, Any] = (float("inf"), None)
    seen = set()
    for bm in heights:
        for knobs in SWEEP:
            s = Schedule.of(impl="triton", BLOCK_M=bm, **knobs)
            try:
                ms, clamped = _tilefx(op, operands, x, want, s)
            except Exception as e:  # noqa: BLE001 - e.g. too much shared memory: skip it
                print(f"  sweep {s}: {type(e).__name__}: {str(e)[:120]}")
                continue
            if str(clamped) in seen:
                continue
            seen.add(str(clamped))
            best = min(best, (ms, clamped), key=lambda b: b[0])
    return best


def bench(quick: bool = False, do_sweep: bool = True, only_2to4: bool = False) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from benchmarks.sparsity import sparse_weight

    rng = np.random.default_rng(0)
    rows = []
    batches = (1, 128) if quick else BATCHES
    sparsities = (0.9,) if quick else SPARSITIES
    for batch in batches:
        x = torch.randn(batch, K, device=DEVICE, dtype=torch.float16)
        dense_w = torch.randn(N, K, device=DEVICE, dtype=torch.float16)
        cublas = _ms(F.linear, [x, dense_w])
        for pattern, block in ({} if only_2to4 else PATTERNS).items():
            for s in sparsities:
                w = sparse_weight(rng, K, N, block, s)
                wt = torch.from_numpy(np.ascontiguousarray(w.T)).half().to(DEVICE)  # nn.Linear layout
                want = F.linear(x, wt)
                kb = (16, 16) if block == (1, 1) else block
                op, operands = sparse_kernel(batch, w, kb)
                density = operands[1].numel() / ((K // kb[0]) * (N // kb[1]))
                ms, sched = _tilefx(op, operands, x, want)
                row = dict(batch=batch, pattern=pattern, sparsity=s, cublas=cublas, tilefx=ms,
                           schedule=str(sched), block_density=density,
                           torch_csr=_torch_sparse(wt, x.T, "csr", block),
                           torch_bsr=None if block == (1, 1) else _torch_sparse(wt, x.T, "bsr", block),
                           semi24=None, semi24_first=None, semi24_graph=None, tuned=None,
                           tuned_schedule="")
                if do_sweep and s == 0.9 and block != (1, 1):
                    # the default is a candidate too: tuned is never worse than it
                    row["tuned"], tuned = min((ms, sched), sweep(op, operands, x, want, batch),
                                              key=lambda b: b[0])
                    row["tuned_schedule"] = str(tuned)
                rows.append(row)
                print(line(row), flush=True)
        rows.append(two_four(rng, batch, x, cublas))
        print(line(rows[-1]), flush=True)
        if DEVICE == "cuda":  # (Triton's CPU interpreter computes bf16 dots wrongly)
            xb, wb = x.bfloat16(), dense_w.bfloat16()
            rows.append(two_four(rng, batch, xb, _ms(F.linear, [xb, wb])))
            print(line(rows[-1]), flush=True)
    return rows


def two_four(rng: np.random.Generator, batch: int, x: Any, cublas: float) -> dict:
    """A 2:4 weight (2 zeros in every 4 along K): tilefx's semi24 candidate vs the block kernel."""
    import torch
    import torch.nn.functional as F

    from tilefx.codegen.triton import semi24
    from tilefx.ir.types import DType

    w = rng.standard_normal((K, N)).astype(np.float32)
    for g in range(0, K, 4):  # keep 2 random positions of each group of 4
        drop = rng.permuted(np.tile([0, 0, 1, 1], (N, 1)), axis=1).T.astype(bool)
        w[g:g + 4][drop] = 0
    tdt = x.dtype
    wt = torch.from_numpy(np.ascontiguousarray(w.T)).to(DEVICE, tdt)
    want = F.linear(x, wt)
    op, operands = sparse_kernel(batch, w, (16, 16), DType.bfloat16 if tdt == torch.bfloat16 else DType.float16)
    ms, sched = _tilefx(op, operands, x, want)
    row = dict(batch=batch, pattern="2:4" if tdt == torch.float16 else "2:4 bf16", sparsity=0.5,
               cublas=cublas, tilefx=ms, schedule=str(sched), block_density=1.0, torch_csr=None,
               torch_bsr=None, semi24=None, semi24_first=None, semi24_graph=None, tuned=None,
               tuned_schedule="")
    if semi24.available(DType.float16, K, N):
        try:
            row.update(_semi24_times(op, operands, x, want))
        except Exception as e:  # noqa: BLE001 - library/GPU dependent
            print(f"  2:4 candidate failed: {type(e).__name__}: {str(e)[:200]}")
    return row


def _semi24_times(op: Any, operands: list, x: Any, want: Any) -> dict:
    """The 2:4 candidate's first call (wall ms: compression and library setup included), its
    per-call time (CUDA events, compressed weight cached) and its CUDA-graph replay time."""
    import torch

    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.triton import build_kernel

    built = build_kernel(op, None, Schedule.of(impl="semi24"))
    out = torch.empty_like(want)
    args = [x, *operands, out]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    built(*args)  # densify, check, compress (cached by the data tensor), then the matmul
    torch.cuda.synchronize()
    first = (time.perf_counter() - t0) * 1e3
    err = float((out.float() - want.float()).abs().max() / want.float().abs().max())
    if not err < 2e-2:
        raise AssertionError(f"2:4 candidate differs from cuBLAS (max rel err {err:.3g})")
    return dict(semi24_first=first, semi24=_ms(built, args), semi24_graph=_graph_ms(built, args))


def _graph_ms(fn: Callable, args: list) -> float | None:
    """``fn(*args)`` captured once in a CUDA graph, the replay timed (None if it cannot be captured)."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # torch's recipe: warm up on a side stream
            for _ in range(3):
                fn(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
    except Exception as e:  # noqa: BLE001 - e.g. a library call that syncs
        print(f"  CUDA-graph capture failed: {type(e).__name__}: {str(e)[:160]}")
        return None
    return _ms(graph.replay, [])


def line(r: dict) -> str:
    extra = f" tuned {r['tuned']:.4f} ms ({r['cublas'] / r['tuned']:.2f}x) {r['tuned_schedule']}" \
        if r["tuned"] is not None else ""
    return (f"batch {r['batch']:3d} {r['pattern']:12s} {r['sparsity']:4.0%}: cublas {r['cublas']:.4f} ms  "
            f"tilefx {r['tilefx']:.4f} ms ({r['cublas'] / r['tilefx']:.2f}x, 16x16-block density "
            f"{r['block_density']:.2f})  torch csr {_fmt(r['torch_csr'])}  bsr {_fmt(r['torch_bsr'])}  "
            f"2:4 {_fmt(r['semi24'])} (first call {_fmt(r['semi24_first'])}, CUDA graph "
            f"{_fmt(r['semi24_graph'])}){extra}")


def break_even(rows: list[dict]) -> list[str]:
    out = []
    for batch, pattern in dict.fromkeys((r["batch"], r["pattern"]) for r in rows
                                        if not r["pattern"].startswith("2:4")):
        rs = sorted((r for r in rows if (r["batch"], r["pattern"]) == (batch, pattern)),
                    key=lambda r: r["sparsity"])
        wins = [min(r["tilefx"], r["tuned"] or np.inf) < r["cublas"] for r in rs]
        first = next((i for i in range(len(rs)) if all(wins[i:])), None)
        where = f">= {rs[first]['sparsity']:.0%} zeros" if first is not None else "never (in 50-95%)"
        out.append(f"break-even batch {batch} {pattern}: tilefx sparse beats cuBLAS at {where}")
    return out


def markdown(rows: list[dict], notes: list[str], device: str) -> str:
    lines = [f"# Sparse Linear 4096->4096 fp16 on {device}", "",
             "CUDA-event medians, cold L2 (`timing.cuda_median`), ms. tilefx = Triton bsr_matmul, "
             "default schedule; tuned = best of a small sweep at 90%. 2:4 = the semi24 candidate per call "
             "(weight compressed once, before timing); 2:4 first = its first call, wall clock "
             "(compression and library setup); 2:4 graph = replayed from a CUDA graph (no host "
             "work). \"2:4 bf16\" rows: bf16 throughout, cuBLAS bf16 as the baseline.", "",
             "| batch | pattern | sparsity | cuBLAS | tilefx | speedup | tuned | tuned speedup | "
             "torch csr | torch bsr | 2:4 | 2:4 first | 2:4 graph | 16x16 density |", "|" + "---|" * 14]
    for r in rows:
        tuned = (f"{r['tuned']:.4f} | {r['cublas'] / r['tuned']:.2f}x" if r["tuned"] is not None else "- | -")
        semi = _fmt(r["semi24"]) + (f" ({r['cublas'] / r['semi24']:.2f}x)" if r["semi24"] else "")
        graph = _fmt(r["semi24_graph"]) + (f" ({r['cublas'] / r['semi24_graph']:.2f}x)"
                                           if r["semi24_graph"] else "")
        lines.append(f"| {r['batch']} | {r['pattern']} | {r['sparsity']:.0%} | {r['cublas']:.4f} | "
                     f"{r['tilefx']:.4f} | {r['cublas'] / r['tilefx']:.2f}x | {tuned} | "
                     f"{_fmt(r['torch_csr'])} | {_fmt(r['torch_bsr'])} | {semi} | "
                     f"{_fmt(r['semi24_first'])} | {graph} | {r['block_density']:.2f} |")
    lines += [""] + [f"- {n}" for n in notes]
    tuned = [f"batch {r['batch']} {r['pattern']}: {r['tuned_schedule']}" for r in rows if r["tuned_schedule"]]
    lines += ["- tuned schedules: " + "; ".join(tuned)] if tuned else []
    return "\n".join(lines) + "\n"


def main(quick: bool = False, markdown_path: str | None = None, do_sweep: bool = True,
         only_2to4: bool = False) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--target cuda needs a CUDA GPU")
    os.environ["TRITON_INTERPRET"] = "0"
    t0 = time.perf_counter()
    rows = bench(quick, do_sweep and not quick, only_2to4)
    notes = break_even(rows)
    print("\n".join(notes))
    print(f"total {time.perf_counter() - t0:.0f} s")
    path = markdown_path or (os.path.join(os.environ["OUT"], "sparsity_gpu.md") if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            f.write(markdown(rows, notes, torch.cuda.get_device_name()))
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 and 128, 90%% only, no sweep")
    ap.add_argument("--only-2to4", action="store_true", help="only the 2:4 rows (fp16 and bf16)")
    ap.add_argument("--markdown", default=None, help="table path (default $OUT/sparsity_gpu.md)")
    a = ap.parse_args()
    main(a.quick, a.markdown, only_2to4=a.only_2to4)
