"""Per-kernel time and % of roofline of a zoo model compiled for cuda, beside inductor's kernels.

    python benchmarks/gpu/roofline.py --model resnet18 --dtype fp16

For each tilefx kernel (default schedules): GPU time alone (a CUDA graph of 20 calls, CUDA
events, median), FLOPs and
bytes from its IR, achieved TFLOP/s and GB/s against *measured* peaks (cuBLAS fp16 4096^3 and
a 1 GiB device copy), and which bound it is nearer to. Then inductor's (default mode) kernels
from the profiler, top by total time, to see where the two differ. Markdown to stdout and
``$OUT/roofline-<model>.md``.
"""

from __future__ import annotations

import argparse
import sys

from common import DTYPES, Report, cuda_time_ms, environment, zoo_model

import torch


def measured_peaks() -> tuple[float, float]:
    """(FLOP/s of cuBLAS fp16 4096^3, bytes/s of a 1 GiB copy): what this card reaches."""
    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    ms = cuda_time_ms(lambda: a @ a, repeats=30)
    src = torch.empty(1 << 29, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    copy_ms = cuda_time_ms(lambda: dst.copy_(src), repeats=30)
    return 2 * n ** 3 / (ms * 1e-3), 2 * src.numel() * 2 / (copy_ms * 1e-3)


def _tensor(v, bindings: dict) -> torch.Tensor:
    from tilefx.compiler.runtime import torch_dtype

    shape = [int(d.subs(bindings)) if hasattr(d, "subs") else int(d) for d in v.type.shape]
    dtype = torch_dtype(v.type.dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, device="cuda", dtype=dtype)
    return torch.zeros(shape, device="cuda", dtype=dtype)


def graphed_ms(fn, calls: int = 20) -> float:
    """GPU time of one call, from a CUDA graph of ``calls`` back-to-back calls: timing single
    launches from Python measures the launch latency (~20-50 us), not the kernel."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return cuda_time_ms(graph.replay, warmup=3, repeats=20) / calls


def tilefx_kernels(model: torch.nn.Module, inputs: tuple) -> list[tuple[str, str, float, float, float]]:
    """(name, fused ops, ms, flops, bytes) of every kernel, in graph order."""
    from tilefx.cost_model.analytical import _contraction_flops
    from tilefx.compiler.capture import capture
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import compile_graph
    from tilefx.compiler.session import CompileSession
    from tilefx.ir.identity import fused_op_names
    from tilefx.compiler.runtime import bind_symbols

    captured = capture(model, inputs)
    compiled = compile_graph(captured, CompileOptions(target="cuda", cuda_graphs=False),
                             CompileSession(), example_inputs=inputs)
    bindings = bind_symbols(compiled.graph, list(inputs))
    rows = []
    for op in compiled.graph.ops:
        if op.name != "kernel":
            continue
        fn = compiled._build_kernel(op, bindings)
        args = [_tensor(v, bindings) for v in (*op.inputs, *op.results)]
        ms = graphed_ms(lambda f=fn, a=args: f(*a))
        flops = _contraction_flops(op.body) if op.attr("kind") == "contraction" else \
            float(sum(a.numel() for a in args[len(op.inputs):]))
        nbytes = float(sum(a.numel() * a.element_size() for a in args))
        rows.append((op.attr("name"), "+".join(fused_op_names(op)), ms, flops, nbytes))
    return rows


def inductor_kernels(model: torch.nn.Module, inputs: tuple, top: int) -> list[tuple[str, float, int]]:
    """(kernel name, ms per model call, calls per model call) of inductor default, top ``top``."""
    from torch.profiler import ProfilerActivity, profile

    fn = torch.compile(model)
    for _ in range(5):
        fn(*inputs)
    torch.cuda.synchronize()
    iters = 10
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn(*inputs)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if t > 0:
            rows.append((e.key[:70], t / 1e3 / iters, e.count // iters))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    report = Report(f"roofline-{args.model}.md")
    report(f"# Per-kernel roofline: {args.model} ({args.dtype})\n\n{environment()}")
    peak_flops, peak_bw = measured_peaks()
    report(f"\nmeasured peaks: {peak_flops / 1e12:.0f} TFLOP/s (cuBLAS fp16 4096^3), "
           f"{peak_bw / 1e9:.0f} GB/s (1 GiB device copy)\n")
    model, inputs = zoo_model(args.model, DTYPES[args.dtype], bench=True)
    with torch.no_grad():
        rows = tilefx_kernels(model, inputs)
        total = sum(r[2] for r in rows)
        report(f"## tilefx kernels (default schedules, each alone): sum {total:.3f} ms\n")
        report("| kernel | fused ops | ms | % of sum | TFLOP/s | GB/s | % of roofline |")
        report("|---|---|---:|---:|---:|---:|---:|")
        for name, ops, ms, flops, nbytes in sorted(rows, key=lambda r: -r[2])[:args.top]:
            s = ms * 1e-3
            bound = max(flops / peak_flops, nbytes / peak_bw)  # the roofline's best time
            report(f"| {name} | {ops[:50]} | {ms:.4f} | {100 * ms / total:.0f}% | "
                   f"{flops / s / 1e12:.1f} | {nbytes / s / 1e9:.0f} | {100 * bound / s:.0f}% |")
        ind = inductor_kernels(model, inputs, args.top)
        report(f"\n## inductor (default) kernels, profiler, top {args.top} by time\n")
        report("| kernel | ms per call | launches per call |\n|---|---:|---:|")
        for name, ms, count in ind:
            report(f"| {name} | {ms:.4f} | {count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
