"""GPU benchmark: eager vs torch.compile (default, max-autotune) vs tilefx, plus two
kernel micro-benchmarks, in one process. Prints markdown tables.

    python benchmarks/gpu/bench.py                       # zoo (fp16) + matmul + attention
    python benchmarks/gpu/bench.py --models mlp,gpt2_block --dtype fp32 --repeats 100
    python benchmarks/gpu/bench.py --skip-zoo            # only the kernel benchmarks

Zoo: each model at its ``bench_batch`` with benchmark-size inputs. Columns are
milliseconds (median of ``--repeats`` calls, each timed with CUDA events after
warm-up): PyTorch eager, ``torch.compile`` default, ``mode="max-autotune"``,
tilefx with default schedules, and tilefx with every kernel tuned over a few
candidates of its Triton schedule space (library candidates included,
``common.tuned_build``). Kernels: matmul 4096^3 fp16 (tilefx Triton template,
best of a few configs, vs cuBLAS via torch.matmul); attention batch 4 x 16
heads, seq 2048, head dim 64, fp16, causal and not (tilefx template vs torch
SDPA with the flash backend).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from common import DTYPES, compile_tuned, cuda_time_ms, environment, first, kernel_op, zoo_model

import torch


def bench_zoo(models: list[str], dtype_name: str, repeats: int) -> None:
    import tilefx

    dtype = DTYPES[dtype_name]
    print(f"\n## zoo ({dtype_name}), ms per call (median of {repeats})\n")
    cols = ["eager", "inductor", "max-autotune", "tilefx", "tilefx tuned"]
    print("| model | batch | " + " | ".join(cols) + " | speedup tuned vs eager | max err tuned |")
    print("|---|---|" + "---|" * len(cols) + "---|---|")
    for name in models:
        model, inputs = zoo_model(name, dtype, bench=True)
        runners = {
            "eager": lambda m=model: m,
            "inductor": lambda m=model: torch.compile(m),
            "max-autotune": lambda m=model: torch.compile(m, mode="max-autotune"),
            "tilefx": lambda m=model: tilefx.compile(m, target="cuda"),
            "tilefx tuned": lambda m=model, x=inputs: compile_tuned(m, x),
        }
        ms: dict[str, str] = {}
        err = "-"
        with torch.no_grad():
            ref = first(model(*inputs)).float()
            for col, make in runners.items():
                try:
                    fn = make()
                    out = first(fn(*inputs)).float()
                    if col == "tilefx tuned":
                        err = f"{(out - ref).abs().max().item():.1e}"
                    ms[col] = f"{cuda_time_ms(lambda f=fn, x=inputs: f(*x), warmup=10, repeats=repeats):.3f}"
                except Exception as e:  # noqa: BLE001 - one failing runner never stops the table
                    traceback.print_exc()
                    ms[col] = f"error: {type(e).__name__}"
                torch._dynamo.reset()
        ratio = "-"
        try:
            ratio = f"{float(ms['eager']) / float(ms['tilefx tuned']):.2f}x"
        except (ValueError, KeyError):
            pass
        batch = inputs[0].shape[0]
        print(f"| {name} | {batch} | " + " | ".join(ms.get(c, "-") for c in cols) + f" | {ratio} | {err} |",
              flush=True)


def bench_matmul(repeats: int) -> None:
    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.triton import build_kernel
    from tilefx.ir import DType, TensorType

    n = 4096
    ty = TensorType(DType.float16, (n, n))
    op = kernel_op("contraction", [ty, ty], lambda b, x, w: b.op("matmul", x, w), name="mm4096")
    a, b = torch.randn(n, n, device="cuda", dtype=torch.float16), torch.randn(n, n, device="cuda", dtype=torch.float16)
    out = torch.empty(n, n, device="cuda", dtype=torch.float16)
    flops = 2 * n ** 3
    rows = [("cuBLAS (torch.matmul)", cuda_time_ms(lambda: torch.matmul(a, b, out=out), repeats=repeats))]
    ref = a @ b
    for bm, bn, bk, w, s, g in [(128, 128, 64, 8, 3, 8), (128, 256, 64, 8, 3, 8), (256, 128, 64, 8, 3, 8),
                                (128, 128, 32, 4, 4, 8), (64, 256, 32, 4, 4, 8), (128, 64, 64, 4, 4, 8)]:
        sched = Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s, GROUP_M=g)
        try:
            k = build_kernel(op, None, sched)
            k(a, b, out)
            err = (out.float() - ref.float()).abs().max().item()
            rows.append((f"tilefx {bm}x{bn}x{bk} w{w} s{s} (err {err:.1e})",
                         cuda_time_ms(lambda k=k: k(a, b, out), repeats=repeats)))
        except Exception as e:  # noqa: BLE001
            rows.append((f"tilefx {bm}x{bn}x{bk} w{w} s{s}: {type(e).__name__}: {e}"[:100], float("nan")))
    print(f"\n## matmul {n}x{n}x{n} fp16\n\n| kernel | ms | TFLOP/s |\n|---|---|---|")
    for label, t in rows:
        print(f"| {label} | {t:.3f} | {flops / t / 1e9:.0f} |")


def bench_attention(repeats: int) -> None:
    import torch.nn.functional as F

    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.triton import build_kernel
    from tilefx.ir import DType, TensorType

    B, H, L, E = 4, 16, 2048, 64
    ty = TensorType(DType.float16, (B, H, L, E))
    q, k, v = (torch.randn(B, H, L, E, device="cuda", dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    print(f"\n## attention B={B} H={H} L={L} E={E} fp16\n")
    print("| causal | kernel | ms | TFLOP/s | max err |\n|---|---|---|---|---|")
    for causal in (False, True):
        flops = 4 * B * H * L * L * E / (2 if causal else 1)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def flash(causal: bool = causal) -> torch.Tensor:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except ImportError:
            def flash(causal: bool = causal) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref = flash()
        t = cuda_time_ms(flash, repeats=repeats)
        print(f"| {causal} | torch SDPA (flash) | {t:.3f} | {flops / t / 1e9:.0f} | - |")
        op = kernel_op("contraction", [ty, ty, ty], lambda b, q_, k_, v_, c=causal: b.op(
            "attention", q_, k_, v_, causal=c), name="attn")
        for bm, bn, w, s in [(128, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 3)]:
            try:
                sched = Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
                kern = build_kernel(op, None, sched)
                kern(q, k, v, out)
                err = (out.float() - ref.float()).abs().max().item()
                t = cuda_time_ms(lambda kern=kern: kern(q, k, v, out), repeats=repeats)
                print(f"| {causal} | tilefx {bm}x{bn} w{w} s{s} | {t:.3f} | {flops / t / 1e9:.0f} | {err:.1e} |")
            except Exception as e:  # noqa: BLE001
                print(f"| {causal} | tilefx {bm}x{bn} w{w} s{s} | {type(e).__name__}: {str(e)[:60]} | - | - |")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.models import ZOO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--skip-zoo", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(f"# tilefx GPU benchmark\n\n{environment()}")
    if not args.skip_zoo:
        bench_zoo(args.models.split(","), args.dtype, args.repeats)
    if not args.skip_kernels:
        bench_matmul(args.repeats)
        bench_attention(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
