"""The real tuner on the GPU: one matmul, one layernorm, one attention kernel, a few minutes.

    python benchmarks/gpu/tune_check.py                  # fp16, ~1-3 min on an H100
    python benchmarks/gpu/tune_check.py --trials 24      # more candidates per kernel
    TRITON_INTERPRET=1 python benchmarks/gpu/tune_check.py --small   # dry run on CPU

Each kernel goes through ``tilefx.autotune.Tuner`` on target cuda exactly as
``tilefx.compile(model, target="cuda", tune=N)`` would tune it: Triton candidates
built in process, checked against the reference outputs, timed with CUDA events
(L2 flushed, warm-up, median), deduplicated by fingerprint, stored in a tuning
database in a temp dir. Per kernel it prints the default schedule's, the best
and the library candidate's (cuBLAS / torch SDPA plus the fused epilogue) time,
the torch call timed the same way, duplicates skipped and failed candidates;
then the tuner's own summary, and a second pass over the same database, which
must measure nothing. Tables go to stdout and to ``$OUT/tune_check.md`` when
``$OUT`` is set. Exit status 1 if a kernel found nothing, or the best is slower
than the default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common import Report, environment, kernel_op, progress

import torch
import torch.nn.functional as F


def kernels(small: bool) -> list[tuple[Any, int, Callable[[list], Any]]]:
    """(kernel op, trials, the torch call on the op's inputs) for each kernel to tune."""
    from tilefx.ir import DType, TensorType

    f16 = DType.float16
    n, (rows, cols), (B, H, L, E) = (32, (8, 64), (1, 2, 32, 16)) if small else \
        (1024, (4096, 1024), (4, 16, 1024, 64))
    mm = kernel_op("contraction", [TensorType(f16, (n, n)), TensorType(f16, (n, n)),
                                   TensorType(f16, (n,))],
                   lambda b, x, w, c: b.op("relu", b.op("add", b.op("matmul", x, w), c)),
                   name=f"mm{n}_bias_relu")
    ln = kernel_op("reduction", [TensorType(f16, (rows, cols)), TensorType(f16, (cols,)),
                                 TensorType(f16, (cols,))],
                   lambda b, x, w, c: b.op("layer_norm", x, w, c, normalized_ndim=1),
                   name=f"layernorm{rows}x{cols}")
    qkv = TensorType(f16, (B, H, L, E))
    attn = kernel_op("contraction", [qkv, qkv, qkv],
                     lambda b, q, k, v: b.op("attention", q, k, v, causal=True),
                     name=f"attention_b{B}h{H}l{L}e{E}_causal")
    return [
        (mm, 16, lambda t: torch.relu(torch.addmm(t[2], t[0], t[1]))),
        (ln, 8, lambda t: F.layer_norm(t[0], (cols,), t[1], t[2])),
        (attn, 12, lambda t: F.scaled_dot_product_attention(t[0], t[1], t[2], is_causal=True)),
    ]


def torch_ms(op: Any, call: Callable[[list], Any]) -> float | None:
    """The torch call on the kernel's reference inputs, timed like the candidates."""
    from tilefx.ir.functional_hash import reference_inputs
    from tilefx.codegen import timing
    from tilefx.codegen.triton.measure import interpreting

    if interpreting():
        return None
    inputs = [t.cuda() for t in reference_inputs(op)]
    samples = sorted(timing.cuda_samples(lambda: call(inputs), repeats=20))
    return samples[len(samples) // 2] * 1e3


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4f}" if seconds else "-"


def main(argv: list[str] | None = None) -> int:
    from tilefx.autotune.tuner import TuneOptions, Tuner, format_summary
    from tilefx.codegen.target import Target

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, help="candidates per kernel (default 16/8/12)")
    p.add_argument("--strategy", default="evolutionary", choices=["evolutionary", "random", "grid"])
    p.add_argument("--small", action="store_true", help="tiny shapes (for a dry run)")
    args = p.parse_args(argv)
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not torch.cuda.is_available() and not interpret:
        print("no CUDA device (TRITON_INTERPRET=1 ... --small runs a dry run on CPU)")
        return 1
    report = Report("tune_check.md")
    report(f"# tilefx tuner on cuda\n\n{environment()}" + (" (Triton interpreter: CPU timings)"
                                                          if interpret else ""))
    db_path = str(Path(tempfile.mkdtemp(prefix="tilefx-tune-check-")) / "tuning.db")
    target = Target.parse("cuda")
    report(f"\ntarget {target.key()}, database {db_path}, strategy {args.strategy}\n")
    report("| kernel | trials | default ms | best ms | library ms | torch ms | best vs default "
           "| dup skipped | failed | tune s | best schedule |")
    report("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    start = time.perf_counter()
    ok, results = True, []
    work = kernels(args.small)
    for op, trials, call in work:
        tuner = Tuner(target, TuneOptions(trials=args.trials or trials, strategy=args.strategy,
                                          progress=False, db_path=db_path))
        try:
            r = tuner.tune_kernel(op)
        finally:
            tuner.close()
        results.append(r)
        failed = sum(n for s, n in r.statuses.items() if s != "ok")
        t_ms = torch_ms(op, call)
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        report(f"| {r.name} | {r.trials} | {_ms(r.default_seconds)} | {_ms(r.best_seconds)} | "
               f"{_ms(r.library_seconds)} | {f'{t_ms:.4f}' if t_ms else '-'} | {speed} | "
               f"{r.dup_skipped} | {failed} | {r.seconds:.1f} | {r.best} |")
        if r.best is None or (r.default_seconds and r.best_seconds > r.default_seconds):
            ok = False
        if r.statuses:
            progress(f"{r.name}: statuses {r.statuses}" + (f", wrong: {r.wrong_results}"
                                                          if r.wrong_results else ""))
    report("\n" + format_summary(results))
    # the same kernels again: the database answers, nothing is measured
    again = Tuner(target, TuneOptions(trials=1, progress=False, db_path=db_path))
    try:
        warm = [again.tune_kernel(op) for op, _, _ in work]
    finally:
        again.close()
    measured = again.measurements
    report(f"\nsecond pass over the same database: {measured} candidates measured, "
           f"{sum(w.from_db for w in warm)}/{len(warm)} kernels from the database")
    report(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if ok and measured == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
