"""How many kernels and fallbacks each real model compiles to for the GPU, per dtype: no GPU needed.

    python benchmarks/gpu/kernel_counts.py                       # models.py's ten, fp16 and bf16
    python benchmarks/gpu/kernel_counts.py --models gpt2,t5_small_encoder --dtype fp16,bf16,fp32

Issue 17 asks for the same kernel count in bf16 as in fp16 (casts once split bf16 fusions:
ResNet-18 had 65 kernels in bf16 against 23) and zero fallbacks. Both are decided before any
kernel runs: capture, lowering and the passes for a cuda target. This script runs exactly that
(``compiler.pipeline.model_kernels``, what ``tilefx.compile`` does before its builds) on the
host, on models.py's models (random init, on the CPU), and tables the counts; a model whose
counts differ between dtypes is flagged. Where a model's own code differs by dtype (T5 clamps
its activations in fp16 only), the fp16 graph has more ops and may have more kernels: the
``ops`` column shows it. Needs torchvision/transformers (the bench extra), not a GPU.

Markdown to stdout and, with ``$OUT`` set, ``$OUT/kernel_counts.md``.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import DTYPES, Report, progress

import torch


def counts(name: str, dtype: str) -> dict:
    import models_zoo
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    notes: list[str] = []
    model, inputs = models_zoo.build(models_zoo.SPECS[name], "cpu", DTYPES[dtype], notes)
    t0 = time.perf_counter()
    with torch.no_grad():
        mk = model_kernels(model, inputs, CompileOptions(target="cuda", cuda_graphs=False), CompileSession())
    kernels = [op for op in mk.graph.ops if op.name == "kernel"]
    fallbacks = [op for op in mk.graph.ops if op.name == "fallback"]
    fused = sum(len(op.body.ops) for op in kernels)
    return dict(kernels=len(kernels), distinct=len(mk.kernels), fallbacks=len(fallbacks), ops=fused,
                seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from models_zoo import SPECS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(n for n, s in SPECS.items() if s.default))
    p.add_argument("--dtype", default="fp16,bf16")
    args = p.parse_args(argv)
    dtypes = args.dtype.split(",")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        print(f"--dtype: unknown {', '.join(bad)}; choose from {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    report = Report("kernel_counts.md")
    report(f"torch {torch.__version__}; host compile for a cuda target (no GPU); "
           f"`python benchmarks/gpu/kernel_counts.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    report()
    report("| model | " + " | ".join(f"{d} kernels (distinct) | {d} fallbacks | {d} ops" for d in dtypes)
           + " | same kernel count |")
    report("|---|" + "---:|---:|---:|" * len(dtypes) + "---|")
    differ = 0
    for name in args.models.split(","):
        cells, seen = [], set()
        for d in dtypes:
            progress(f"{name} {d}")
            try:
                c = counts(name, d)
            except Exception as e:  # noqa: BLE001 - one model's failure is a row, not the end
                cells.append(f"error: {type(e).__name__}: {str(e)[:80]} | - | -")
                continue
            seen.add(c["kernels"])
            cells.append(f"{c['kernels']} ({c['distinct']}) | {c['fallbacks']} | {c['ops']}")
        same = "yes" if len(seen) == 1 else "NO" if seen else "-"
        differ += same == "NO"
        report(f"| {name} | " + " | ".join(cells) + f" | {same} |")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
