"""A matmul whose N is not a multiple of 8 (GPT-2's tied LM head: N = 50257): the Triton
template's default vs the library candidate (cuBLAS + epilogue) vs torch.matmul, and the same
problems with N rounded up to a multiple of 8, fp16. Every kernel is checked against torch
before it is timed (CUDA-event median after warm-up).

    python benchmarks/gpu/unaligned_matmul.py

Why: in GPT-2 (fp16, 8x512 tokens) the LM head ran at 17% of roofline while every other
matmul of the model ran at 73-94% (benchmarks/results/gpu-models-h200-2026-12-03.md). A row
of B with an odd length starts at an address that is not 16-byte aligned, so no row can be
loaded with wide vector loads.
"""

from __future__ import annotations

import sys

import torch

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.timing import cuda_median
from tilefx.codegen.triton import build_kernel, default_schedule
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op

SHAPES = [(4096, 768, 50257), (4096, 768, 50264), (4096, 768, 3073), (4096, 768, 3072)]


def main() -> int:
    print(f"# unaligned N matmul, fp16, {torch.cuda.get_device_name()}\n")
    print("| M x K x N | N % 8 | default schedule | default ms | library ms | torch ms | default / library |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for m, k, n in SHAPES:
        f16 = DType.float16
        op = kernel_op("contraction", [TensorType(f16, (m, k)), TensorType(f16, (k, n))],
                       lambda b, x, w: b.op("matmul", x, w))
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=g)
        w = torch.randn(k, n, device="cuda", dtype=torch.float16, generator=g) / k ** 0.5
        ref = a @ w
        out = torch.empty_like(ref)
        times = {}
        default = default_schedule(op)
        for name, sched in (("default", default), ("library", Schedule.of(impl="library", EPILOGUE_BLOCK=1024))):
            fn = build_kernel(op, None, sched)
            fn(a, w, out)
            torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
            times[name] = cuda_median(fn, (a, w, out))
        times["torch"] = cuda_median(torch.matmul, (a, w))
        print(f"| {m}x{k}x{n} | {n % 8} | {default} | {times['default'] * 1e3:.3f} | "
              f"{times['library'] * 1e3:.3f} | {times['torch'] * 1e3:.3f} | "
              f"{times['default'] / times['library']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
