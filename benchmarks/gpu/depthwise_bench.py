"""Depthwise convolutions of real convnets: torch (cuDNN, NCHW and channels-last) against
tilefx's conv kernel (default schedule, and each schedule of the direct template's space).

    python benchmarks/gpu/depthwise_bench.py                           # MobileNetV2 + ConvNeXt-T, fp16, batch 32
    python benchmarks/gpu/depthwise_bench.py --models efficientnet,resnext --detail
    python benchmarks/gpu/depthwise_bench.py --all-warps               # every point of the space (slow: compiles)
    python benchmarks/gpu/depthwise_bench.py --models convnext --layout both  # NCHW and channels-last kernels
    python benchmarks/gpu/depthwise_bench.py --dry-run                 # CPU, Triton interpreter, tiny shapes

Each shape is one fused kernel as the zoo's models make it: the depthwise conv, its
folded batch norm as a bias, and the block's activation (ReLU6 in MobileNetV2, SiLU in
EfficientNet, none in ConvNeXt, whose LayerNorm follows). The torch rows run the same
computation eagerly (conv with bias, then the activation: two kernels). ``--layout nhwc`` times
the kernel as a channels-last region makes it (``passes/channels_last.py``: the input read as
``permute(x_nhwc)``, the weight held ``[KH, KW, 1, C]``, the result stored NHWC), which the
direct template runs with its channels-last tiling; ``both`` puts the two layouts side by side
(rows ``... nchw`` / ``... nhwc``; the torch columns are the same computation either way). Times are CUDA-event
medians after warm-up, of a CUDA graph of ``--calls`` back-to-back calls (a single launch
timed from Python measures the launch latency of a 10 us kernel); inputs stay in L2 between
calls where they fit, for every row alike. Every tilefx schedule is checked against torch
first; a mismatch is reported, not timed.

Schedules: the direct template's tiles of both pixel tilings (after clamping, distinct code
only) at 4 warps: flat ``BLOCK_HW x BLOCK_C`` (``BLOCK_W=0``) and rows x columns
``BLOCK_W x BLOCK_HW x BLOCK_C`` (``BLOCK_HW // BLOCK_W`` rows of ``BLOCK_W`` columns, the
tiling for large kernels: by default on kernels of 5x5 and up only, ``--rows-columns all``
on the 3x3s too, about 110 more schedules on a 56x56 plane); then every ``num_warps`` (and
``num_stages`` for grouped convs) around the best tile and around the default (a rows x
columns tile's speed depends on its warps: pixels a thread); ``--all-warps`` times every
distinct point of the space instead. ``--max-schedules`` keeps both tilings, taking turns.
Markdown to stdout and ``$OUT/depthwise_bench.md``, every timing to
``$OUT/depthwise_bench.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from common import DTYPES, Report, environment, kernel_op, progress

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    model: str
    c: int          # input channels
    hw: int         # input height = width
    k: int          # kernel size (square, padding k // 2)
    stride: int = 1
    mult: int = 1   # channel multiplier: O = c * mult
    groups: int = 0  # 0: depthwise (groups = c)
    act: str = "none"

    @property
    def g(self) -> int:
        return self.groups or self.c

    @property
    def name(self) -> str:
        kind = "dw" if not self.groups else f"g{self.groups}"
        return f"{self.model} {kind} {self.k}x{self.k}/s{self.stride} c{self.c} {self.hw}x{self.hw}"


# (channels, input size, kernel, stride) of each depthwise conv at 224x224 input
SHAPES: tuple[Shape, ...] = (
    *(Shape("mobilenet_v2", c, hw, 3, s, act="relu6") for c, hw, s in (
        (32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
        (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1))),
    *(Shape("convnext", c, hw, 7) for c, hw in ((96, 56), (192, 28), (384, 14), (768, 7))),
    *(Shape("efficientnet", c, hw, k, s, act="silu") for c, hw, k, s in (
        (144, 56, 5, 2), (240, 28, 5, 1), (672, 14, 5, 1), (1152, 7, 5, 1))),
    Shape("resnext", 128, 56, 3, groups=32, act="relu"),  # ResNeXt50 32x4d's first grouped conv
)
ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda y: y, "relu": torch.relu, "relu6": lambda y: F.hardtanh(y, 0.0, 6.0), "silu": F.silu}


TO_NHWC, TO_NCHW, FROM_HWIO = (0, 2, 3, 1), (0, 3, 1, 2), (3, 2, 0, 1)


def kernel_for(shape: Shape, batch: int, dtype: Any, nhwc: bool = False) -> Any:
    """The fused kernel op: conv2d + bias + the block's activation; ``nhwc``: as a channels-last
    region holds it (inputs ``x [N, H, W, C]``, ``w [KH, KW, Cg, O]``, bias ``[O]``; NHWC result)."""
    from tilefx.ir import TensorType

    o, conv = shape.c * shape.mult, dict(stride=(shape.stride,) * 2, padding=(shape.k // 2,) * 2, groups=shape.g)

    def body(b, x, w, c):
        if nhwc:
            y = b.op("conv2d", b.op("permute", x, dims=TO_NCHW), b.op("permute", w, dims=FROM_HWIO), **conv)
            y = b.op("add", b.op("permute", y, dims=TO_NHWC), c)
        else:
            y = b.op("add", b.op("conv2d", x, w, **conv), c)
        if shape.act == "relu6":
            return b.op("clamp", y, min=0.0, max=6.0)
        return y if shape.act == "none" else b.op(shape.act, y)
    if nhwc:
        types = [TensorType(dtype, (batch, shape.hw, shape.hw, shape.c)),
                 TensorType(dtype, (shape.k, shape.k, shape.c // shape.g, o)), TensorType(dtype, (o,))]
    else:
        types = [TensorType(dtype, (batch, shape.c, shape.hw, shape.hw)),
                 TensorType(dtype, (o, shape.c // shape.g, shape.k, shape.k)), TensorType(dtype, (o, 1, 1))]
    return kernel_op("contraction", types, body,
                     name=f"dw_{shape.c}_{shape.hw}_{shape.k}_{shape.stride}" + ("_nhwc" if nhwc else ""))


def distinct(op: Any, points: Any, seen: dict[str, Any] | None = None) -> list[Any]:
    """The clamped schedules of ``points`` whose code is not in ``seen`` (fingerprint -> schedule)."""
    from tilefx.codegen.triton.source import fingerprint
    from tilefx.codegen.triton.templates import emit_source

    seen = {} if seen is None else seen
    new = []
    for s in points:
        source, _ = emit_source(op, s)
        if fingerprint(source) not in seen:
            seen[fingerprint(source)] = source.schedule
            new.append(source.schedule)
    return new


def space_points(op: Any, all_warps: bool, rows_columns: bool = True) -> list[Any]:
    """The direct template's points of ``op``'s space; without ``all_warps`` only 4 warps and
    2 stages (the warps sweep comes after, around the best tile); without ``rows_columns`` the
    flat tiling only."""
    from tilefx.codegen.space import SearchSpace
    from tilefx.codegen.triton.templates import space

    knobs = space(op)
    assert "depthwise" in knobs["impl"], knobs
    knobs["impl"] = ["depthwise"]
    if not rows_columns:
        knobs["BLOCK_W"] = [0]
    if not all_warps:
        knobs["num_warps"], knobs["num_stages"] = [4], [2]
    return list(SearchSpace.of(knobs).enumerate())


def capped(schedules: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``schedules`` (0: all), the flat and the rows x columns tilings taking
    turns, so that a short run (``--dry-run``) still covers both."""
    if not n:
        return schedules
    flat = [s for s in schedules if not s.get("BLOCK_W")]
    tiled = [s for s in schedules if s.get("BLOCK_W")]
    return [s for pair in itertools.zip_longest(flat, tiled) for s in pair if s is not None][:n]


def around(best: Any) -> list[Any]:
    """Every ``num_warps`` / ``num_stages`` of the direct template at ``best``'s tile."""
    from tilefx.codegen.triton import depthwise

    return [best.with_(num_warps=w, num_stages=s) for w in depthwise.SPACE["num_warps"]
            for s in depthwise.SPACE["num_stages"]]


def make_timer(device: str, calls: int) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds of one call: CUDA events over a CUDA graph of ``calls`` calls on a GPU;
    the median of a few ``perf_counter`` calls on CPU (dry run: the logic, not the speed)."""
    if device == "cpu":
        def host(fn: Callable[[], Any]) -> float:
            fn()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        return host
    from roofline import graphed_ms

    return lambda fn: graphed_ms(fn, calls)


def bench_shape(shape: Shape, args: argparse.Namespace, device: str, dtype: torch.dtype,
                timer: Callable[[Callable[[], Any]], float], layout: str = "nchw") -> dict[str, Any]:
    from tilefx.codegen.target import Target
    from tilefx.codegen.triton import build_kernel, default_schedule
    from tilefx.codegen.triton.prewarm import prewarm_built
    from tilefx.ir import DType

    ir_dtype = {torch.float32: DType.float32, torch.float16: DType.float16,
                torch.bfloat16: DType.bfloat16}[dtype]
    nhwc = layout == "nhwc"
    op = kernel_for(shape, args.batch, ir_dtype, nhwc)
    ins = [torch.randn(tuple(v.type.shape), device=device).to(dtype) for v in op.inputs]
    # the torch rows' NCHW / OIHW views of the same data
    x, w, c = (ins[0].permute(TO_NCHW), ins[1].permute(FROM_HWIO), ins[2]) if nhwc else ins
    conv = dict(stride=shape.stride, padding=shape.k // 2, groups=shape.g)
    act = ACTS[shape.act]
    ref = act(F.conv2d(x.float(), w.float(), c.float().flatten(), **conv))
    ref = ref.permute(TO_NHWC) if nhwc else ref
    x, w = x.contiguous(), w.contiguous()
    out = torch.empty(tuple(op.results[0].type.shape), device=device, dtype=dtype)
    cl = torch.channels_last
    x_cl, w_cl = x.contiguous(memory_format=cl), w.contiguous(memory_format=cl)
    row: dict[str, Any] = {"shape": asdict(shape), "name": f"{shape.name} {layout}", "layout": layout,
                           "batch": args.batch,
                           "bytes": sum(t.numel() * t.element_size() for t in (x, w, c, out)),
                           "torch_nchw": timer(lambda: act(F.conv2d(x, w, c.flatten(), **conv))),
                           "torch_channels_last": timer(lambda: act(F.conv2d(x_cl, w_cl, c.flatten(), **conv)))}
    target = Target.parse("cuda")
    tol = 1e-4 if dtype == torch.float32 else 3e-2

    def run(schedule: Any) -> float | None:
        kernel = build_kernel(op, target, schedule)
        out.fill_(float("nan"))
        kernel(*ins, out)
        if not torch.allclose(out.float(), ref, rtol=tol, atol=tol):
            progress(f"{shape.name}: {schedule} is WRONG (max error "
                     f"{(out.float() - ref).abs().nan_to_num(1e9).max().item():.3g})")
            return None
        return timer(lambda: kernel(*ins, out))

    def compiled(schedules: list[Any]) -> list[Any]:
        """``schedules``, compiled side by side first (Triton's cache keeps them for ``run``):
        one at a time, a shape's 150 points took minutes of the device's time."""
        if device == "cuda":
            prewarm_built([(s, lambda s=s: build_kernel(op, target, s), op, None) for s in schedules])
        return schedules

    default = default_schedule(op, target)
    row["default_schedule"], row["default"] = str(default), run(default)
    seen: dict[str, Any] = {}
    rows_columns = args.rows_columns == "all" or (args.rows_columns == "auto" and shape.k >= 5)
    todo = capped(distinct(op, space_points(op, args.all_warps, rows_columns), seen), args.max_schedules)
    progress(f"{shape.name}: {len(todo)} depthwise schedules")
    timed = {s: run(s) for s in compiled(todo)}
    ok = {k: v for k, v in timed.items() if v is not None}
    if ok and not args.all_warps:  # the warps (and stages) sweep around the best tile and the default
        centres = [min(ok, key=ok.get)] + ([default] if default.get("impl") == "depthwise" else [])
        sweep = capped(distinct(op, [p for c in centres for p in around(c)], seen), args.max_schedules)
        timed.update({s: run(s) for s in compiled(sweep)})
    row["depthwise"] = {str(k): v for k, v in timed.items()}
    return row


def _ms(v: float | None) -> str:
    return "wrong" if v is None else f"{v:.4f}"


def report_rows(rows: list[dict[str, Any]], report: Report, detail: bool) -> None:
    report("| shape | torch NCHW ms | torch CL ms | tilefx default ms | best depthwise ms | "
           "best GB/s | best vs CL | best vs NCHW | schedules | best schedule |")
    report("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ok = {k: v for k, v in r["depthwise"].items() if v is not None}
        best = min(ok, key=ok.get) if ok else None
        b = ok.get(best) if best else None
        gbs = f"{r['bytes'] / (b * 1e-3) / 1e9:.0f}" if b else "-"
        vs_cl, vs_nchw = (f"{r[k] / b:.2f}x" if b else "-" for k in ("torch_channels_last", "torch_nchw"))
        report(f"| {r['name']} | {_ms(r['torch_nchw'])} | {_ms(r['torch_channels_last'])} | "
               f"{_ms(r['default'])} | {_ms(b) if b else '-'} | {gbs} | {vs_cl} | {vs_nchw} | "
               f"{len(r['depthwise'])} | {best or '-'} |")
    if not detail:
        return
    for r in rows:
        report(f"\n### {r['name']} (batch {r['batch']})\n\n| schedule | ms |\n|---|---:|")
        for k, v in sorted(r["depthwise"].items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
            report(f"| {k} | {_ms(v)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default="mobilenet_v2,convnext",
                   help="comma-separated: mobilenet_v2, convnext, efficientnet, resnext (or all)")
    p.add_argument("--calls", type=int, default=10, help="calls per CUDA graph replay")
    p.add_argument("--all-warps", action="store_true", help="every distinct point of the space")
    p.add_argument("--max-schedules", type=int, default=0, help="at most this many per shape (0: all)")
    p.add_argument("--rows-columns", default="auto", choices=("auto", "all", "none"),
                   help="sweep the rows x columns tiling (BLOCK_W > 0) on kernels of 5x5 and up "
                        "(auto), on every shape, or on none")
    p.add_argument("--layout", default="nchw", choices=("nchw", "nhwc", "both"),
                   help="the kernel as NCHW code has it, as a channels-last region has it, or both")
    p.add_argument("--detail", action="store_true", help="a table of every schedule per shape")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU under the Triton interpreter: one small shape per model, batch 1, 2 schedules")
    args = p.parse_args(argv)
    device = "cuda"
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton
        device, args.batch, args.dtype = "cpu", 1, "fp32"  # torch has no fp16 conv on CPU
        args.max_schedules = args.max_schedules or 2
    elif not torch.cuda.is_available():
        print("no CUDA device (--dry-run checks the script on CPU)")
        return 1
    wanted = set(args.models.split(","))
    shapes = [s for s in SHAPES if "all" in wanted or s.model in wanted]
    if args.dry_run:  # the first shape of each model, shrunk
        firsts = list({s.model: s for s in reversed(shapes)}.values())[::-1]
        shapes = [Shape(s.model, max(2, s.c // 16), max(s.k, s.hw // 16), s.k, s.stride, s.mult,
                        s.groups // 16 if s.groups else 0, s.act) for s in firsts]
    report = Report("depthwise_bench.md")
    report(f"# depthwise conv2d: torch vs tilefx ({args.dtype}, batch {args.batch})\n\n{environment()}"
           + (" (dry run: Triton interpreter on CPU, times mean nothing)" if args.dry_run else "") + "\n")
    timer = make_timer(device, args.calls)
    rows = []
    layouts = ("nchw", "nhwc") if args.layout == "both" else (args.layout,)
    for shape in shapes:
        for layout in layouts:
            progress(f"{shape.name} {layout} ...")
            rows.append(bench_shape(shape, args, device, DTYPES[args.dtype], timer, layout))
    report_rows(rows, report, args.detail)
    if report.path is not None:
        report.path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
