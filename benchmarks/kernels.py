"""Time single kernels (contraction, reduction, pointwise): tilefx's default (untuned) TVM schedule vs PyTorch.

    python benchmarks/kernels.py                       # every case
    python benchmarks/kernels.py --cases mm512,conv3x3 --repeats 30 --threads 2

Each case is one kernel op (a matmul or conv2d, optionally with an epilogue),
built with ``build_kernel`` and its default schedule, checked against PyTorch
eager on random inputs, then timed: ``--warmup`` calls, then ``--rounds``
interleaved rounds of ``--repeats`` calls each for tilefx and torch (each
block starts with a pause and two untimed calls, see ``_times``); the
reported time is the median over all calls. GFLOP/s counts 2 flops per
multiply-add; for the reduction and pointwise cases (memory-bound) it counts
input elements read, i.e. reads as Gelem/s. The machine may be shared: repeat
runs and compare medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Set before anything imports TVM: pinned TVM threads fight with torch's pool.
os.environ.setdefault("TVM_BIND_THREADS", "0")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tilefx.ir import DType, GraphBuilder, Op, TensorType, Value  # noqa: E402
from tilefx.ir.graph import freeze_attrs  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    shapes: tuple[tuple[int, ...], ...]          # input shapes, in kernel argument order
    body: Callable[..., Any]                     # (builder, *inputs) -> output Value
    torch_fn: Callable[..., torch.Tensor]        # the same computation in eager PyTorch
    flops: int
    kind: str = "contraction"                    # the kernel's template kind


def _mm(name: str, a: tuple[int, ...], b: tuple[int, ...], bias: bool = False) -> Case:
    m, k, n = a[-2], a[-1], b[-1]
    batch = a[0] if len(a) == 3 else 1
    if bias:
        return Case(name, (a, b, (n,)),
                    lambda g, x, w, c: g.op("relu", g.op("add", g.op("matmul", x, w), c)),
                    lambda x, w, c: torch.relu(x @ w + c), 2 * batch * m * n * k)
    return Case(name, (a, b), lambda g, x, w: g.op("matmul", x, w), lambda x, w: x @ w,
                2 * batch * m * n * k)


def _conv(name: str, n: int, c: int, hw: int, oc: int, k: int, stride: int, pad: int,
          groups: int = 1, relu: bool = False) -> Case:
    x, w = (n, c, hw, hw), (oc, c // groups, k, k)
    out = (hw + 2 * pad - k) // stride + 1
    flops = 2 * n * oc * out * out * (c // groups) * k * k
    attrs = dict(stride=(stride, stride), padding=(pad, pad), groups=groups)

    def body(g: Any, xv: Value, wv: Value, bv: Value | None = None) -> Value:
        y = g.op("conv2d", xv, wv, **attrs)
        return g.op("relu", g.op("add", y, bv)) if relu else y

    def ref(xt: torch.Tensor, wt: torch.Tensor, bt: torch.Tensor | None = None) -> torch.Tensor:
        y = F.conv2d(xt, wt, stride=stride, padding=pad, groups=groups)
        return torch.relu(y + bt) if relu else y
    shapes = (x, w, (oc, 1, 1)) if relu else (x, w)
    return Case(name, shapes, body, ref, flops)


CASES = {c.name: c for c in [
    _mm("mm512", (512, 512), (512, 512)),
    _mm("mm1024", (1024, 1024), (1024, 1024)),
    _mm("mlp64x1024x4096", (64, 1024), (1024, 4096), bias=True),
    _mm("bmm8x64", (8, 64, 64), (8, 64, 64)),
    _conv("conv3x3", 1, 64, 56, 64, 3, 1, 1),
    _conv("conv3x3_relu", 1, 64, 56, 64, 3, 1, 1, relu=True),
    _conv("conv7x7s2", 1, 3, 224, 64, 7, 2, 3),
    _conv("conv3x3s2", 1, 64, 56, 128, 3, 2, 1),
    _conv("conv1x1", 1, 32, 56, 192, 1, 1, 0),
    _conv("dw3x3", 1, 96, 56, 96, 3, 1, 1, groups=96),
    _conv("dw3x3s2", 1, 96, 56, 96, 3, 2, 1, groups=96),
]}


def _red(name: str, shapes: tuple[tuple[int, ...], ...], body: Callable[..., Any],
         torch_fn: Callable[..., torch.Tensor], kind: str = "reduction") -> Case:
    # memory-bound kernels: "flops" counts the elements read, so GFLOP/s reads as Gelem/s
    import math
    return Case(name, shapes, body, torch_fn, sum(math.prod(s) for s in shapes), kind)


def _erf_gelu(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t)


_LN = dict(normalized_ndim=1, eps=1e-5)
_MASK = torch.triu(torch.full((128, 128), float("-inf")), 1)

REDUCTION_CASES = [
    _red("ln768", ((512, 768), (768,), (768,)), lambda g, x, w, b: g.op("layer_norm", x, w, b, **_LN),
         lambda x, w, b: F.layer_norm(x, (768,), w, b)),
    _red("ln768_gelu", ((512, 768), (768,), (768,)),
         lambda g, x, w, b: g.op("gelu", g.op("layer_norm", x, w, b, **_LN)),
         lambda x, w, b: _erf_gelu(F.layer_norm(x, (768,), w, b))),
    _red("add_ln256", ((4, 128, 256), (4, 128, 256), (256,), (256,)),
         lambda g, r, x, w, b: g.op("layer_norm", g.op("add", r, x), w, b, **_LN),
         lambda r, x, w, b: F.layer_norm(r + x, (256,), w, b)),
    _red("softmax128", ((4, 4, 128, 128),), lambda g, x: g.op("softmax", x, dim=-1),
         lambda x: torch.softmax(x, -1)),
    _red("softmax64", ((4, 4, 64, 64),), lambda g, x: g.op("softmax", x, dim=-1),
         lambda x: torch.softmax(x, -1)),
    _red("mask_softmax128", ((4, 4, 128, 128), (128, 128)),
         lambda g, x, m: g.op("softmax", g.op("add", g.op("mul", x, g.scalar(0.125, DType.float32)), m), dim=-1),
         lambda x, m: torch.softmax(x * 0.125 + m, -1)),
    _red("log_softmax", ((512, 1000),), lambda g, x: g.op("log_softmax", x, dim=-1),
         lambda x: F.log_softmax(x, -1)),
    _red("sum_last", ((512, 768),), lambda g, x: g.op("sum", x, dims=(-1,), keepdim=True),
         lambda x: x.sum(-1, keepdim=True)),
    _red("mean_last", ((512, 768),), lambda g, x: g.op("mean", x, dims=(-1,), keepdim=True),
         lambda x: x.mean(-1, keepdim=True)),
    _red("amax_last", ((512, 768),), lambda g, x: g.op("amax", x, dims=(-1,), keepdim=True),
         lambda x: x.amax(-1, keepdim=True)),
    _red("sum_axis0", ((512, 768),), lambda g, x: g.op("sum", x, dims=(0,), keepdim=True),
         lambda x: x.sum(0, keepdim=True)),
    _red("mean_hw", ((4, 64, 28, 28),), lambda g, x: g.op("mean", x, dims=(2, 3), keepdim=True),
         lambda x: x.mean((2, 3), keepdim=True)),
    _red("maxpool3s2", ((1, 64, 112, 112),),
         lambda g, x: g.op("max_pool2d", x, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
         lambda x: F.max_pool2d(x, 3, 2, 1)),
    _red("avgpool3s2", ((1, 64, 56, 56),),
         lambda g, x: g.op("avg_pool2d", x, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
         lambda x: F.avg_pool2d(x, 3, 2, 1)),
    _red("gap7", ((4, 512, 7, 7),), lambda g, x: g.op("adaptive_avg_pool2d", x, output_size=(1, 1)),
         lambda x: F.adaptive_avg_pool2d(x, 1)),
    _red("bias_gelu", ((512, 1024), (1024,)), lambda g, x, b: g.op("gelu", g.op("add", x, b)),
         lambda x, b: F.gelu(x + b), kind="pointwise"),
    _red("permute0213", ((4, 128, 4, 64),), lambda g, x: g.op("permute", x, dims=(0, 2, 1, 3)),
         lambda x: x.permute(0, 2, 1, 3).contiguous(), kind="pointwise"),
    _red("transpose_last", ((16, 128, 64),), lambda g, x: g.op("permute", x, dims=(0, 2, 1)),
         lambda x: x.transpose(1, 2).contiguous(), kind="pointwise"),
]
CASES.update({c.name: c for c in REDUCTION_CASES})


def kernel_of(case: Case) -> Op:
    f32 = DType.float32
    g = GraphBuilder(case.name)
    ins = [g.input(TensorType(f32, s), f"a{i}") for i, s in enumerate(case.shapes)]
    out = case.body(g, *ins)
    body = g.finish([out])
    args = tuple(Value(f"x{i}", TensorType(f32, s)) for i, s in enumerate(case.shapes))
    results = (Value("y0", out.type),)
    return Op("kernel", args, results,
              freeze_attrs({"kind": case.kind, "name": case.name}), body)


def _times(fn: Callable[[], Any], repeats: int) -> list[float]:
    # Both TVM's and torch's thread pools spin-wait after a call; on a 2-core
    # machine the idle pool's spinning threads steal the cores from the other
    # library. So each block first lets the other pool go to sleep, then warms up.
    time.sleep(0.5)  # measured: TVM's workers still spin 50 ms after a call
    fn()
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_case(case: Case, *, warmup: int, repeats: int, rounds: int, schedule: Any = None) -> dict:
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel

    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=gen) for s in case.shapes]
    t0 = time.perf_counter()
    built = build_kernel(kernel_of(case), Target.host_cpu(), schedule, use_cache=False)
    build_s = time.perf_counter() - t0
    ref = case.torch_fn(*inputs)
    out = torch.empty_like(ref)
    built(*inputs, out)
    err = (out - ref).abs().max().item()
    ok = torch.allclose(out, ref, rtol=1e-3, atol=1e-3)

    def ours() -> None:
        built(*inputs, out)

    def theirs() -> None:
        case.torch_fn(*inputs)
    for _ in range(warmup):
        ours()
    for _ in range(warmup):
        theirs()
    mine, torch_t = [], []
    for _ in range(rounds):
        mine += _times(ours, repeats)
        torch_t += _times(theirs, repeats)
    ms, tms = statistics.median(mine) * 1e3, statistics.median(torch_t) * 1e3
    # on a loaded machine the minimum is the better estimate of the kernel's own speed
    return {"case": case.name, "tilefx_ms": ms, "torch_ms": tms, "ratio": ms / tms,
            "tilefx_min": min(mine) * 1e3, "torch_min": min(torch_t) * 1e3,
            "min_ratio": min(mine) / min(torch_t),
            "gflops": case.flops / ms / 1e6, "ok": ok, "max_err": err, "build_s": build_s,
            "schedule": str(built.schedule)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ",".join(CASES))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    print(f"threads={args.threads}; median (min) of {args.rounds}x{args.repeats} calls; "
          "ratio = tilefx / torch (< 1: tilefx faster); GFLOP/s of the tilefx median")
    print(f"{'case':16} {'tilefx ms':>16} {'torch ms':>16} {'ratio':>11} {'GFLOP/s':>8} "
          f"{'build s':>7}  check  schedule")
    for name in args.cases.split(","):
        if name not in CASES:
            p.error(f"unknown case {name!r}: choose from {', '.join(CASES)}")
        r = run_case(CASES[name], warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
        check = "ok" if r["ok"] else f"ERR {r['max_err']:.2e}"
        print(f"{r['case']:16} {r['tilefx_ms']:7.3f} ({r['tilefx_min']:7.3f}) "
              f"{r['torch_ms']:7.3f} ({r['torch_min']:7.3f}) {r['ratio']:5.2f} ({r['min_ratio']:4.2f})"
              f" {r['gflops']:8.1f} {r['build_s']:7.1f}  {check:5}  {r['schedule']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
