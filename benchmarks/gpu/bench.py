"""GPU benchmark: eager vs torch.compile vs tilefx (with and without CUDA graphs, default
and tuned schedules), plus two kernel micro-benchmarks, in one process. Markdown tables
go to stdout and, when ``$OUT`` is set, to ``$OUT/bench.md``; progress goes to stderr.

    python benchmarks/gpu/bench.py                       # zoo (fp16) + matmul + attention, < 8 min
    python benchmarks/gpu/bench.py --models mlp,gpt2_block --dtype fp32 --repeats 100
    python benchmarks/gpu/bench.py --max-autotune        # adds inductor max-autotune (minutes a model)
    python benchmarks/gpu/bench.py --skip-zoo            # only the kernel benchmarks

Zoo: each model at its ``bench_batch`` with benchmark-size inputs. Columns are
milliseconds (median of ``--repeats`` calls, each timed with CUDA events after
warm-up): PyTorch eager; ``torch.compile`` default (inductor); optionally
``mode="max-autotune"`` (its autotune tables silenced); tilefx with default
schedules launched eagerly from Python ("no graph") and replayed from a CUDA
graph ("graph", the default for static shapes); tilefx with every kernel tuned
by the real tuner (``tilefx.compile(..., tune=--tune)``: ``--tune`` candidates per
kernel, default and library included, or a time budget per kernel like ``2s``; one
tuning database in a temp dir for the whole run), replayed from a CUDA graph.
The speedups are against inductor; the last row is their geometric mean.

Kernels: matmul 4096^3 fp16 (tilefx's default schedule and a few other configs
vs cuBLAS via torch.matmul) and attention batch 4 x 16 heads, seq 2048, head
dim 64, fp16, causal and not (tilefx's default and a few configs vs torch SDPA
with the flash backend), with TFLOP/s and % of the library.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from common import (DTYPES, Report, cuda_time_ms, environment, first, kernel_op, progress,
                    quiet, zoo_model)

import torch


def _inductor_quiet() -> None:
    """max-autotune prints a table of choices per matmul; keep the log readable."""
    import logging

    cfg = torch._inductor.config
    for name, value in (("autotune_num_choices_displayed", 0), ("max_autotune_report_choices_stats", False)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)


def _tilefx(model: Any, cuda_graphs: bool, tune: str = "0", tune_db: str | None = None) -> Any:
    """tilefx for cuda; with ``tune`` every kernel is tuned (on the first call) into ``tune_db``."""
    import tilefx
    from tilefx.autotune.tuner import parse_budget
    from tilefx.compiler.options import CompileOptions

    trials, seconds = parse_budget(tune)
    return tilefx.compile(model, options=CompileOptions(
        target="cuda", cuda_graphs=cuda_graphs, tune_trials=tune if seconds else trials,
        tune_db=tune_db))


def _graph_note(fn: Any) -> str:
    from tilefx.compiler.cuda_graph import status

    lines = status(fn)
    return "graph" if lines and all(line.startswith("cuda graph") for line in lines) else \
        (lines[0] if lines else "?")


def bench_zoo(report: Report, models: list[str], dtype_name: str, repeats: int, max_autotune: bool,
              tune: str) -> None:
    import tempfile

    tune_db = str(Path(tempfile.mkdtemp(prefix="tilefx-bench-tune-")) / "tuning.db")
    dtype = DTYPES[dtype_name]
    # reduce-overhead is inductor with CUDA graphs: the fair peer of "tilefx graph"
    cols = ["eager", "inductor", "reduce-overhead"] + (["max-autotune"] if max_autotune else []) + \
        ["tilefx no graph", "tilefx graph", "tilefx tuned graph"]
    report(f"\n## zoo ({dtype_name}), ms per call (median of {repeats})\n")
    report("| model | batch | " + " | ".join(cols) + " | tilefx graph vs inductor | tuned vs inductor "
           "| tuned vs reduce-overhead | max err tuned | notes |")
    report("|---|---|" + "---|" * len(cols) + "---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"graph": [], "tuned": [], "tuned_ro": []}
    for name in models:
        t_model = time.perf_counter()
        model, inputs = zoo_model(name, dtype, bench=True)
        runners: dict[str, Callable[[], Any]] = {
            "eager": lambda m=model: m,
            "inductor": lambda m=model: torch.compile(m),
            "reduce-overhead": lambda m=model: torch.compile(m, mode="reduce-overhead"),
            "max-autotune": lambda m=model: torch.compile(m, mode="max-autotune"),
            "tilefx no graph": lambda m=model: _tilefx(m, False),
            "tilefx graph": lambda m=model: _tilefx(m, True),
            "tilefx tuned graph": lambda m=model: _tilefx(m, True, tune=tune, tune_db=tune_db),
        }
        ms: dict[str, str] = {}
        err, notes = "-", []
        with torch.no_grad():
            ref = first(model(*inputs)).float()
            for col in cols:
                t0 = time.perf_counter()
                try:
                    if col == "max-autotune":
                        with quiet():
                            fn = runners[col]()
                            fn(*inputs)  # compiles and autotunes here, silenced
                    else:
                        fn = runners[col]()
                    out = first(fn(*inputs)).float()
                    if col == "tilefx tuned graph":
                        err = f"{(out - ref).abs().max().item():.1e}"
                        progress(f"{name} tuning check: {fn.records[-1].tuning_check}")
                    ms[col] = f"{cuda_time_ms(lambda f=fn, x=inputs: f(*x), warmup=10, repeats=repeats):.3f}"
                    if col in ("tilefx graph", "tilefx tuned graph"):
                        note = _graph_note(fn)
                        if note != "graph":
                            notes.append(f"{col}: {note}")
                except Exception as e:  # noqa: BLE001 - one failing runner never stops the table
                    traceback.print_exc()
                    ms[col] = f"error: {type(e).__name__}"
                torch._dynamo.reset()
                progress(f"{name} {col}: {ms[col]} ms ({time.perf_counter() - t0:.0f} s)")
        cells = []
        for key, base, col in (("graph", "inductor", "tilefx graph"), ("tuned", "inductor", "tilefx tuned graph"),
                               ("tuned_ro", "reduce-overhead", "tilefx tuned graph")):
            try:
                r = float(ms[base]) / float(ms[col])
                ratios[key].append(r)
                cells.append(f"{r:.2f}x")
            except (ValueError, KeyError):
                cells.append("-")
        batch = inputs[0].shape[0]
        report(f"| {name} | {batch} | " + " | ".join(ms.get(c, "-") for c in cols) +
               f" | {cells[0]} | {cells[1]} | {cells[2]} | {err} | {'; '.join(notes)[:120]} |")
        progress(f"{name} done in {time.perf_counter() - t_model:.0f} s")
    geo = [f"{math.exp(sum(map(math.log, r)) / len(r)):.2f}x" if r else "-" for r in ratios.values()]
    report("| geomean | | " + " | ".join("" for _ in cols) + f" | {geo[0]} | {geo[1]} | {geo[2]} | | |")


def _best(rows: list[tuple[str, float]]) -> tuple[str, float]:
    ok = [r for r in rows if r[1] == r[1]]  # not NaN
    return min(ok, key=lambda r: r[1]) if ok else ("-", float("nan"))


def bench_matmul(report: Report, repeats: int) -> None:
    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.triton import build_kernel, default_schedule
    from tilefx.ir import DType, TensorType

    n = 4096
    ty = TensorType(DType.float16, (n, n))
    op = kernel_op("contraction", [ty, ty], lambda b, x, w: b.op("matmul", x, w), name="mm4096")
    a, b = torch.randn(n, n, device="cuda", dtype=torch.float16), torch.randn(n, n, device="cuda", dtype=torch.float16)
    out = torch.empty(n, n, device="cuda", dtype=torch.float16)
    flops = 2 * n ** 3
    lib = cuda_time_ms(lambda: torch.matmul(a, b, out=out), repeats=repeats)
    ref = a @ b
    default = default_schedule(op)
    configs = [("default " + " ".join(f"{k}={v}" for k, v in default.as_dict().items()), default)]
    for bm, bn, bk, w, s in [(128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4),
                             (128, 128, 64, 4, 4), (128, 128, 32, 4, 4)]:
        configs.append((f"{bm}x{bn}x{bk} w{w} s{s}", Schedule.of(
            impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s, GROUP_M=8)))
    rows: list[tuple[str, float]] = []
    report(f"\n## matmul {n}x{n}x{n} fp16\n\n| kernel | ms | TFLOP/s | % of cuBLAS | max err |\n|---|---|---|---|---|")
    report(f"| cuBLAS (torch.matmul) | {lib:.3f} | {flops / lib / 1e9:.0f} | 100% | - |")
    for label, sched in configs:
        try:
            k = build_kernel(op, None, sched)
            k(a, b, out)
            err = (out.float() - ref.float()).abs().max().item()
            t = cuda_time_ms(lambda k=k: k(a, b, out), repeats=repeats)
            rows.append((label, t))
            report(f"| tilefx {label} | {t:.3f} | {flops / t / 1e9:.0f} | {100 * lib / t:.0f}% | {err:.1e} |")
        except Exception as e:  # noqa: BLE001
            report(f"| tilefx {label} | {type(e).__name__}: {str(e)[:60]} | - | - | - |")
    label, t = _best(rows)
    report(f"\nbest tilefx: {label}, {100 * lib / t:.0f}% of cuBLAS (goal >= 85%)")


def bench_attention(report: Report, repeats: int) -> None:
    import torch.nn.functional as F

    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.triton import build_kernel, default_schedule
    from tilefx.ir import DType, TensorType

    B, H, L, E = 4, 16, 2048, 64
    ty = TensorType(DType.float16, (B, H, L, E))
    q, k, v = (torch.randn(B, H, L, E, device="cuda", dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    report(f"\n## attention B={B} H={H} L={L} E={E} fp16\n")
    report("| causal | kernel | ms | TFLOP/s | % of flash | max err |\n|---|---|---|---|---|---|")
    for causal in (False, True):
        flops = 4 * B * H * L * L * E / (2 if causal else 1)

        def flash(causal: bool = causal) -> torch.Tensor:
            try:
                from torch.nn.attention import SDPBackend, sdpa_kernel
            except ImportError:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref = flash()
        lib = cuda_time_ms(flash, repeats=repeats)
        report(f"| {causal} | torch SDPA (flash) | {lib:.3f} | {flops / lib / 1e9:.0f} | 100% | - |")
        op = kernel_op("contraction", [ty, ty, ty], lambda b, q_, k_, v_, c=causal: b.op(
            "attention", q_, k_, v_, causal=c), name="attn")
        default = default_schedule(op)
        configs = [(f"default {default['BLOCK_M']}x{default['BLOCK_N']} w{default['num_warps']} "
                    f"s{default['num_stages']}", default)]
        for bm, bn, w, s in [(128, 64, 4, 2), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3)]:
            configs.append((f"{bm}x{bn} w{w} s{s}", Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn,
                                                                num_warps=w, num_stages=s)))
        rows = []
        for label, sched in configs:
            try:
                kern = build_kernel(op, None, sched)
                kern(q, k, v, out)
                err = (out.float() - ref.float()).abs().max().item()
                t = cuda_time_ms(lambda kern=kern: kern(q, k, v, out), repeats=repeats)
                rows.append((label, t))
                report(f"| {causal} | tilefx {label} | {t:.3f} | {flops / t / 1e9:.0f} | {100 * lib / t:.0f}% "
                       f"| {err:.1e} |")
            except Exception as e:  # noqa: BLE001
                report(f"| {causal} | tilefx {label} | {type(e).__name__}: {str(e)[:60]} | - | - | - |")
        label, t = _best(rows)
        report(f"\nbest tilefx (causal={causal}): {label}, {100 * lib / t:.0f}% of flash (goal >= 70%)\n")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.models import ZOO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--max-autotune", action="store_true", help="also time torch.compile max-autotune (slow)")
    p.add_argument("--tune", default="4", help="tilefx tuned: candidates per kernel (4), or a time "
                   "budget per kernel (2s)")
    p.add_argument("--tune-seconds", type=float, help=argparse.SUPPRESS)  # replaced by --tune
    p.add_argument("--skip-zoo", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    args = p.parse_args(argv)
    if args.tune_seconds is not None:
        progress("--tune-seconds is replaced by --tune (candidates or a time budget per kernel); "
                 f"ignoring it, tuning with --tune {args.tune}")
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    _inductor_quiet()
    start = time.perf_counter()
    report = Report("bench.md")
    report(f"# tilefx GPU benchmark\n\n{environment()}")
    if not args.skip_kernels:  # first: short, and the numbers the issue asks for
        bench_matmul(report, args.repeats)
        bench_attention(report, args.repeats)
        progress(f"kernels done at {time.perf_counter() - start:.0f} s")
    if not args.skip_zoo:
        bench_zoo(report, args.models.split(","), args.dtype, args.repeats, args.max_autotune, args.tune)
    report(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
