"""Depthwise and grouped conv2d (NCHW, OIHW) as a direct convolution with a fused epilogue.

The implicit GEMM (``conv.implicit_gemm``) needs ``groups == 1`` and a deep
``K = C*KH*KW`` to feed ``tl.dot``; a depthwise conv (``groups == C``) has
``K = KH*KW`` per output channel, and a grouped one with a few channels per
group little more. Those are memory-bound stencils, so this template skips
the tensor cores:

- one program computes a ``BLOCK_C x BLOCK_HW`` tile of the output of one
  image: ``BLOCK_C`` output channels by ``BLOCK_HW`` output pixels of the
  flattened ``OH*OW`` plane. In NCHW a channel's pixels are contiguous, so
  the pixel axis is the tile's fast axis: loads and stores along it coalesce
  (stride-1 convs read contiguous runs of the input too);
- output channel ``o`` reads input channels ``(o // Og) * Cg + ci`` for
  ``ci < Cg`` (``Cg = C / groups`` input, ``Og = O / groups`` output
  channels per group: depthwise is ``Cg == 1``, a channel multiplier is
  ``Og > 1``). A channel block may span groups: the group is per row;
- the ``KH x KW`` taps are unrolled (``tl.static_range``); each tap loads
  one input tile at ``(oh*stride - pad + kh*dilation, ...)`` under a bounds
  mask, which is the zero padding (a prologue computed on the input is
  zeroed there explicitly), and one ``BLOCK_C`` column of weights; a grouped
  conv loops over ``ci`` around the taps (the only runtime loop, which
  ``num_stages`` pipelines);
- products accumulate in fp32; the accumulator then goes through the
  kernel's epilogue (bias, folded batch norm, residual, activation) by the
  shared emitter, like the matmul and implicit-GEMM templates, and is
  stored in the output dtype.

Programs are ordered pixel tile fastest, then channel block, then image:
neighbouring programs read overlapping input rows (the halo) and the same
weights while they are in L1/L2.

Knobs (``SPACE``): ``BLOCK_HW``, ``BLOCK_C``, ``num_warps``, ``num_stages``.
``clamp`` fits them to the problem (no block larger than its axis, at most
``MAX_TILE`` outputs per program, no more warps than 32-lane rows of the
tile, ``num_stages=1`` without a runtime loop), so schedules that make the
same code share one fingerprint.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import Emitter, Var, next_pow2, program_id, shape_of
from tilefx.codegen.triton.matmul import _all
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType

SPACE: dict[str, list[Any]] = {
    "BLOCK_HW": [32, 64, 128, 256, 512, 1024], "BLOCK_C": [1, 2, 4, 8, 16, 32],
    "num_warps": [1, 2, 4, 8], "num_stages": [1, 2, 3],
}
# outputs per program: 4096 fp32 accumulators are 32 registers a thread at 4 warps;
# larger tiles spill whatever the warps
MAX_TILE = 4096
DTYPES = (DType.float32, DType.float16, DType.bfloat16)


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes and attributes of one conv2d, as the template reads them."""

    N: int
    C: int
    H: int
    W: int
    CO: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @staticmethod
    def of(op: Op) -> ConvGeometry:
        x, w = op.inputs
        N, C, H, W = shape_of(x)
        CO, _, KH, KW = shape_of(w)
        OH, OW = shape_of(op.result)[2:]
        return ConvGeometry(N, C, H, W, CO, KH, KW, OH, OW, tuple(op.attr("stride")),
                            tuple(op.attr("padding")), tuple(op.attr("dilation")), int(op.attr("groups")))

    @property
    def cg(self) -> int:  # input channels per group
        return self.C // self.groups

    @property
    def og(self) -> int:  # output channels per group (the channel multiplier when depthwise)
        return self.CO // self.groups

    @property
    def pixels(self) -> int:
        return self.OH * self.OW


def clamp(g: ConvGeometry, schedule: Schedule) -> Schedule:
    """``schedule`` fitted to the problem (see the module docstring): equal code, equal schedule."""
    bhw = max(1, min(int(schedule.get("BLOCK_HW", 256)), next_pow2(g.pixels)))
    bc = max(1, min(int(schedule.get("BLOCK_C", 4)), next_pow2(g.CO)))
    while bc * bhw > MAX_TILE and bc > 1:  # keep the pixel block: it is what coalesces
        bc //= 2
    while bc * bhw > MAX_TILE:
        bhw //= 2
    warps = max(1, min(int(schedule.get("num_warps", 4)), bc * bhw // 32))
    stages = int(schedule.get("num_stages", 2)) if g.cg > 1 else 1
    return Schedule.of(impl="depthwise", BLOCK_HW=bhw, BLOCK_C=bc, num_warps=warps, num_stages=stages)


def default_schedule(g: ConvGeometry) -> Schedule | None:
    """The default for a depthwise conv (one input channel per group), None otherwise.

    From the H200 sweep of MobileNetV2's ten depthwise convs at batch 32, fp16
    (``benchmarks/results/gpu-depthwise-h200-2026-12-03.md``): 4 channels x 128 pixels a
    program at 4 warps is the best or within 1.3x of it on planes of 28x28 and up, 256 pixels
    on 14x14, and every such default beat cuDNN's channels-last kernel by 1.4-2.1x (the NCHW
    one by more). Grouped convs with several channels a group were not measured: library."""
    if g.cg != 1:
        return None
    bhw = 128 if g.pixels >= 784 else 256
    return clamp(g, Schedule.of(BLOCK_HW=bhw, BLOCK_C=4, num_warps=4, num_stages=1))


def programs(g: ConvGeometry, schedule: Schedule) -> int:
    """Grid size of the clamped ``schedule`` (also what the cost model's features count)."""
    s = clamp(g, schedule)
    return g.N * -(-g.CO // int(s["BLOCK_C"])) * -(-g.pixels // int(s["BLOCK_HW"]))


def _affine(var: str, mul: int, add: int) -> str:
    """``var * mul + add`` without the no-op parts."""
    expr = var if mul == 1 else f"{var} * {mul}"
    return expr if add == 0 else f"{expr} + {add}" if add > 0 else f"{expr} - {-add}"


def _bounds(i: str, first_offset: int, last: int, size: int) -> str | None:
    """``0 <= i < size`` for an input coordinate whose smallest value is ``first_offset``
    (``-pad``) and largest ``last``; only the halves that can fail."""
    conds = ([f"({i} >= 0)"] if first_offset < 0 else []) + ([f"({i} < {size})"] if last >= size else [])
    return " & ".join(conds) or None


def emit(body: Graph, name: str, op: Op, schedule: Schedule) -> KernelSource:
    x, w = op.inputs
    if x.type.dtype not in DTYPES or w.type.dtype != x.type.dtype:
        raise NotImplementedError(f"conv2d on {x.type.dtype.short} has no direct Triton template "
                                  f"(it runs as the library candidate)")
    g = ConvGeometry.of(op)
    s = clamp(g, schedule)
    bc, bhw, warps, stages = (int(s[k]) for k in ("BLOCK_C", "BLOCK_HW", "num_warps", "num_stages"))
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    P, tiles_hw, tiles_c = g.pixels, -(-g.pixels // bhw), -(-g.CO // bc)
    out_shape = shape_of(op.result)
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    e.scalars |= {"thw", "tc", "n", "ci", "kh", "kw"}
    e.line(f"pid = {program_id(body, 0)}")
    e.line(f"thw = pid % {tiles_hw}  # pixel tiles side by side share input rows in L1/L2")
    e.line(f"tc = (pid // {tiles_hw}) % {tiles_c}" if g.N > 1 else f"tc = pid // {tiles_hw}")
    n = "n" if g.N > 1 else "0"
    if g.N > 1:
        e.line(f"n = pid // {tiles_hw * tiles_c}")
    e.line("oc = (tc * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # output channels")
    e.line("pix = (thw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]  # output pixels, oh * OW + ow")
    e.line(f"oh = pix // {g.OW}")
    e.line(f"ow = pix % {g.OW}")
    e.line(f"ih0 = {_affine('oh', sh, -ph)}")
    e.line(f"iw0 = {_affine('ow', sw, -pw)}")
    # the first input channel of each row's group
    group = "oc" if g.og == 1 else f"(oc // {g.og})"
    e.line(f"cin0 = {group}" if g.cg == 1 else f"cin0 = {group} * {g.cg}")
    cmask = f"oc < {g.CO}" if g.CO % bc else None
    pmask = f"pix < {P}" if P % bhw else None
    inside = _all(e, cmask, pmask)  # the output lanes that exist
    hcond = _bounds("ih", -ph, (g.OH - 1) * sh - ph + (g.KH - 1) * dh, g.H)
    wcond = _bounds("iw", -pw, (g.OW - 1) * sw - pw + (g.KW - 1) * dw, g.W)
    acc = e.tmp("tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)", "acc")
    loop = g.cg > 1  # the input channels of a group: a runtime loop around the taps
    if loop:
        e.line(f"for ci in range({g.cg}):")
    with e.block() if loop else nullcontext():
        cin = "cin" if loop else "cin0"
        if loop:
            e.line("cin = cin0 + ci")
        e.line(f"for kh in tl.static_range({g.KH}):")
        with e.block():
            e.line(f"ih = {_affine('kh', dh, 0)} + ih0")
            row = _all(e, inside, hcond)
            e.line(f"for kw in tl.static_range({g.KW}):")
            with e.block():
                e.line(f"iw = {_affine('kw', dw, 0)} + iw0")
                m = _all(e, row, wcond)
                xv = e.value_at(x, (n, cin, "ih", "iw"), m)
                xs = e.compute(xv)
                if m is not None and x.name in e.producer:  # padding is zero, not prologue(0)
                    xs = f"tl.where({m}, {xs}, 0.0)"
                wv = e.value_at(w, ("oc", "ci" if loop else "0", "kh", "kw"), cmask)
                e.line(f"{acc} += {xs} * {e.compute(wv)}")
    idx = (n, "oc", "oh", "ow")
    # both the channel and the pixel term: the store pointer has the tile's full shape
    e.line(f"off = {n} * {g.CO * P} + oc * {P} + pix" if g.N > 1 else f"off = oc * {P} + pix")
    e.overrides[op.result.name] = (idx, Var(acc, op.result.type.dtype, "tl.float32"))
    e.flat = (idx, out_shape, "off")  # a residual of the output's shape reads at the same offset
    for j, v in enumerate(body.outputs):
        if shape_of(v) != out_shape:
            raise NotImplementedError(f"conv kernel output %{v.name} is not on the conv's result")
        e.store(f"out{j}", v, idx, inside, offset="off")
    text = one_kernel_module(name, ins + outs, e.lines, f"({g.N * tiles_c * tiles_hw},)",
                             {"BLOCK_C": bc, "BLOCK_HW": bhw}, {"num_warps": warps, "num_stages": stages})
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)), s)
