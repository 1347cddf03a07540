"""Depthwise and grouped conv2d as a direct convolution with a fused epilogue, NCHW or NHWC.

The implicit GEMM (``conv.implicit_gemm``) needs ``groups == 1`` and a deep
``K = C*KH*KW`` to feed ``tl.dot``; a depthwise conv (``groups == C``) has
``K = KH*KW`` per output channel, and a grouped one with a few channels per
group little more. Those are memory-bound stencils, so this template skips
the tensor cores:

- one program computes ``BLOCK_C`` output channels by ``BLOCK_HW`` output
  pixels of one image. In NCHW a channel's pixels are contiguous, so the
  pixel axis is the tile's fast axis: loads and stores along it coalesce
  (stride-1 convs read contiguous runs of the input too). The pixels are
  tiled one of two ways (``BLOCK_W``, below);
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

The pixel tilings of NCHW:

- flat (``BLOCK_W`` 0 or absent): ``BLOCK_HW`` consecutive pixels of the
  flattened ``OH*OW`` plane, a ``[BLOCK_C, BLOCK_HW]`` block, with
  ``oh = pix // OW``, ``ow = pix % OW``; each tap recomputes the input
  coordinates, their bounds and the address of every element. Right for
  3x3s (MobileNetV2 on the H200: 1.4-2.1x faster than cuDNN), slow on 7x7s
  (ConvNeXt: 49 taps, 6-7% of the memory roofline);
- rows x columns (``BLOCK_W > 0``), for large kernels: ``BLOCK_HW // BLOCK_W``
  output rows by ``BLOCK_W`` output columns, a ``[BLOCK_C, BLOCK_H, BLOCK_W]``
  block; programs tile ``OH`` and ``OW`` separately. An output row is a
  ``[1, BLOCK_H, 1]`` vector and a column a ``[1, 1, BLOCK_W]`` one, so the
  input offset of tap ``(0, 0)`` is computed once per program and tap
  ``(kh, kw)`` adds the compile-time constant ``kh*dh*W + kw*dw`` (an
  immediate in the load); its mask is the AND of a row mask (channel tail,
  row bounds: per ``kh``) and a column mask (column bounds: per ``kw``), both
  computed on vectors. Bounds are those of the padded tile: a lane past
  ``OH``/``OW`` reads inside the input or nothing, and the store drops it.
  Compiled for sm_90, each output and tap is then one predicated load, a
  convert and an FMA; what is left is the number of loads (one per output
  and tap, plus one weight per tap for each channel a thread holds), which
  the tile shape and warps decide (``default_schedule``).

and, for a channels-last region's conv (passes/channels_last.py: the body reads its
input through ``permute(x_nhwc)`` and stores ``permute(conv, (0, 2, 3, 1))``), a third:

- channels-last (``ConvGeometry.channels_last``): ``BLOCK_HW`` pixels of the
  flattened ``N*OH*OW`` by ``BLOCK_C`` channels, a ``[BLOCK_HW, BLOCK_C]`` block
  with the channels the fast axis. In NHWC an input pixel's channels are
  contiguous and aligned, so each tap is one 16-byte load of 8 fp16 channels a
  thread (the NCHW tilings load one element an output and tap, unaligned: the
  taps shift by a column), the weight held ``[KH, KW, 1, C]`` one more, and the
  store is NHWC; ``BLOCK_W`` means nothing there and is dropped.

Programs are ordered pixel tile fastest (columns, then rows), then channel
block, then image: neighbouring programs read overlapping input rows (the
halo) and the same weights while they are in L1/L2.

Knobs (``SPACE``): ``BLOCK_HW``, ``BLOCK_W``, ``BLOCK_C``, ``num_warps``,
``num_stages``. ``clamp`` fits them to the problem (no block larger than its
axis, at most ``MAX_TILE`` outputs per program, no more warps than 32-lane
rows of the tile, ``num_stages=1`` without a runtime loop; the flat tiling
drops ``BLOCK_W``), so schedules that make the same code share one
fingerprint.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import Emitter, Var, next_pow2, program_id, shape_of
from tilefx.codegen.triton.library import VIEW_OPS
from tilefx.codegen.triton.matmul import _all
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.types import DType
from tilefx.passes.channels_last import TO_NHWC

SPACE: dict[str, list[Any]] = {
    "BLOCK_HW": [32, 64, 128, 256, 512, 1024], "BLOCK_C": [1, 2, 4, 8, 16, 32, 64],
    "BLOCK_W": [0, 8, 16, 32, 64],  # 0: the flat tiling; else output columns a program
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
    channels_last: bool = False  # the kernel stores the result NHWC: the channels-last tiling

    @staticmethod
    def of(op: Op, body: Graph | None = None) -> ConvGeometry:
        """The geometry of conv ``op``; with its kernel ``body``, also whether it stores NHWC."""
        x, w = op.inputs
        N, C, H, W = shape_of(x)
        CO, _, KH, KW = shape_of(w)
        OH, OW = shape_of(op.result)[2:]
        nhwc = body is not None and any(v.name in channels_last_values(body, op) for v in body.outputs)
        return ConvGeometry(N, C, H, W, CO, KH, KW, OH, OW, tuple(op.attr("stride")),
                            tuple(op.attr("padding")), tuple(op.attr("dilation")), int(op.attr("groups")),
                            nhwc)

    @property
    def cg(self) -> int:  # input channels per group
        return self.C // self.groups

    @property
    def og(self) -> int:  # output channels per group (the channel multiplier when depthwise)
        return self.CO // self.groups

    @property
    def pixels(self) -> int:
        return self.OH * self.OW


@dataclass(frozen=True)
class Tile:
    """The output block of one program, as a clamped schedule gives it."""

    c: int   # output channels
    hw: int  # output pixels
    w: int   # output columns (rows x columns); 0: flat pixels of the OH*OW plane

    @staticmethod
    def of(s: Schedule) -> Tile:
        return Tile(int(s["BLOCK_C"]), int(s["BLOCK_HW"]), int(s.get("BLOCK_W", 0)))

    @property
    def h(self) -> int:  # output rows (rows x columns)
        return self.hw // self.w

    def pixel_tiles(self, g: ConvGeometry) -> tuple[int, int]:
        """Programs along the output rows and columns (flat: ``(tiles, 1)``; channels-last: the
        tiles of all images' pixels, ``(tiles, 1)``)."""
        if g.channels_last:
            return -(-g.N * g.pixels // self.hw), 1
        if not self.w:
            return -(-g.pixels // self.hw), 1
        return -(-g.OH // self.h), -(-g.OW // self.w)


def clamp(g: ConvGeometry, schedule: Schedule) -> Schedule:
    """``schedule`` fitted to the problem (see the module docstring): equal code, equal schedule."""
    bc = max(1, min(int(schedule.get("BLOCK_C", 4)), next_pow2(g.CO)))
    want = max(1, int(schedule.get("BLOCK_HW", 256)))
    bw = int(schedule.get("BLOCK_W", 0))
    if g.channels_last:  # [pixels, channels]: keep the channel block, it is what coalesces
        bhw = min(want, next_pow2(g.N * g.pixels))
        while bc * bhw > MAX_TILE and bhw > 1:
            bhw //= 2
        bc = min(bc, MAX_TILE // bhw)
        dims = [bhw]
    elif bw > 0:  # the columns first (they coalesce), then the rows that fill BLOCK_HW
        bw = min(bw, next_pow2(g.OW), want)
        dims = [min(want // bw, next_pow2(g.OH)), bw]
    else:
        dims = [min(want, next_pow2(g.pixels))]
    while bc * math.prod(dims) > MAX_TILE and bc > 1:  # keep the pixel block: it is what coalesces
        bc //= 2
    while bc * math.prod(dims) > MAX_TILE:  # rows before columns
        dims[0 if dims[0] > 1 else 1] //= 2
    bhw = math.prod(dims)
    warps = max(1, min(int(schedule.get("num_warps", 4)), bc * bhw // 32))
    stages = int(schedule.get("num_stages", 2)) if g.cg > 1 else 1
    cols = {"BLOCK_W": dims[1]} if len(dims) == 2 else {}
    return Schedule.of(impl="depthwise", BLOCK_HW=bhw, BLOCK_C=bc, num_warps=warps, num_stages=stages,
                       **cols)


def default_schedule(g: ConvGeometry) -> Schedule | None:
    """The default for a depthwise conv (one input channel per group), None otherwise.

    From the H200 sweep of MobileNetV2's ten depthwise convs at batch 32, fp16
    (``benchmarks/results/gpu-depthwise-h200-2026-12-03.md``): 4 channels x 128 pixels a
    program at 4 warps is the best or within 1.3x of it on planes of 28x28 and up, 256 pixels
    on 14x14, and every such default beat cuDNN's channels-last kernel by 1.4-2.1x (the NCHW
    one by more). Grouped convs with several channels a group were not measured: library.

    Kernels of 5x5 and up: one channel x 64 pixels at one warp, flat. On the H200 sweep of
    ConvNeXt-T's 7x7 convs (``benchmarks/results/gpu-schedule-sweep-h200-2026-12-03b.md``) that
    was the best point on all three planes sampled (117 / 40 / 66 us against 131 / 42 / 71 at
    4 x 128); the rows x columns default first chosen here from offline instruction counts
    (1 x 8 x 64 at 2 warps) measured 2x slower inside the model (269 us against 131 on 56x56,
    ``gpu-models-h200-2026-12-03c.md``), so rows x columns stays in the space for the tuner only."""
    if g.cg != 1:
        return None
    if g.channels_last:
        return channels_last_default(g)
    if g.KH * g.KW >= 25:
        return clamp(g, Schedule.of(BLOCK_HW=64, BLOCK_C=1, num_warps=1, num_stages=1))
    bhw = 128 if g.pixels >= 784 else 256
    return clamp(g, Schedule.of(BLOCK_HW=bhw, BLOCK_C=4, num_warps=4, num_stages=1))


def channels_last_default(g: ConvGeometry) -> Schedule:
    """A channel block of up to 64 that divides C (ConvNeXt's 96 channels: 32, no masked
    lanes) by 2048 // BLOCK_C pixels at 4 warps: 16 outputs a thread, i.e. two 8-channel
    (16-byte) input loads and one weight load a tap. The flat NCHW tiling loads one element per
    output and tap, unaligned (the taps shift by one column), so a 7x7 issues 8x the load
    instructions and half-filled L1 wavefronts. Measured in ConvNeXt-T on an H200 (batch 32,
    fp16, gpu-models-h200-2026-12-03e.md): stage 1's 7x7 at 70 us a call against 117 us for
    the best NCHW schedule of the sweep; the model 1.11 -> 0.83 of reduce-overhead. Only this
    point was timed: the rest of the space is the tuner's."""
    bc = 64
    while bc > 8 and g.CO % bc:
        bc //= 2
    return clamp(g, Schedule.of(BLOCK_HW=2048 // bc, BLOCK_C=bc, num_warps=4, num_stages=1))


def programs(g: ConvGeometry, schedule: Schedule) -> int:
    """Grid size of the clamped ``schedule`` (also what the cost model's features count)."""
    tile = Tile.of(clamp(g, schedule))
    th, tw = tile.pixel_tiles(g)
    return (1 if g.channels_last else g.N) * -(-g.CO // tile.c) * th * tw


def channels_last_values(body: Graph, op: Op) -> set[str]:
    """Values of a conv kernel's body computed from ``permute(conv, (0, 2, 3, 1))``: a
    channels-last region's conv (passes/channels_last.py), whose outputs are stored NHWC."""
    out: set[str] = set()
    for b in body.ops:
        if b.name == "permute" and tuple(b.attr("dims")) == TO_NHWC and b.inputs[0].name == op.result.name:
            out.add(b.result.name)
        elif any(v.name in out for v in b.inputs):
            out.update(r.name for r in b.results)
    return out


def _affine(var: str, mul: int, add: int) -> str:
    """``var * mul + add`` without the no-op parts."""
    expr = var if mul == 1 else f"{var} * {mul}"
    return expr if add == 0 else f"{expr} + {add}" if add > 0 else f"{expr} - {-add}"


def _bounds(i: str, first_offset: int, last: int, size: int) -> str | None:
    """``0 <= i < size`` for an input coordinate whose smallest value is ``first_offset``
    (``-pad``) and largest ``last``; only the halves that can fail."""
    conds = ([f"({i} >= 0)"] if first_offset < 0 else []) + ([f"({i} < {size})"] if last >= size else [])
    return " & ".join(conds) or None


def _sum(*terms: str) -> str:
    """``a + b + ...`` of the terms that are not ``0``."""
    return " + ".join(t for t in terms if t != "0") or "0"


def _scaled(var: str, mul: int) -> str:
    return _affine(var, mul, 0) if var != "0" else "0"


@dataclass(frozen=True)
class _Pixels:
    """What the taps and the epilogue need from a pixel tiling (emitted names and masks)."""

    cmask: str | None    # the channel tail (weights)
    lead: str | None     # the part of each tap's mask that is not the input bounds
    store: tuple[str | None, ...]  # the output lanes that exist: the store's mask, ANDed
    hcond: str | None    # the input row bounds of ``ih``
    wcond: str | None    # the input column bounds of ``iw``
    xoff: str | None     # the input offset of tap (0, 0) (rows x columns), else None
    out_index: tuple[str, ...]
    out_offset: str      # the flat output offset, with the tile's full shape
    n: str               # the image of each output ("0" for one image)
    nhwc_offset: str | None = None  # channels-last: the flat offset of the NHWC output


def _first_channel(e: Emitter, g: ConvGeometry) -> None:
    """``cin0``: the first input channel of each output channel's group."""
    group = "oc" if g.og == 1 else f"(oc // {g.og})"
    e.line(f"cin0 = {group}" if g.cg == 1 else f"cin0 = {group} * {g.cg}")


def _flat(e: Emitter, body: Graph, g: ConvGeometry, tile: Tile) -> _Pixels:
    """``[BLOCK_C, BLOCK_HW]``: flat pixels, ``oh``/``ow`` by division (the 3x3 tiling)."""
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    n = "n" if g.N > 1 else "0"
    P, tiles_hw, tiles_c = g.pixels, -(-g.pixels // tile.hw), -(-g.CO // tile.c)
    e.line(f"pid = {program_id(body, 0)}")
    e.line(f"thw = pid % {tiles_hw}  # pixel tiles side by side share input rows in L1/L2")
    e.line(f"tc = (pid // {tiles_hw}) % {tiles_c}" if g.N > 1 else f"tc = pid // {tiles_hw}")
    if g.N > 1:
        e.line(f"n = pid // {tiles_hw * tiles_c}")
    e.line("oc = (tc * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # output channels")
    e.line("pix = (thw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]  # output pixels, oh * OW + ow")
    e.line(f"oh = pix // {g.OW}")
    e.line(f"ow = pix % {g.OW}")
    e.line(f"ih0 = {_affine('oh', sh, -ph)}")
    e.line(f"iw0 = {_affine('ow', sw, -pw)}")
    _first_channel(e, g)
    cmask = f"oc < {g.CO}" if g.CO % tile.c else None
    pmask = f"pix < {P}" if P % tile.hw else None
    inside = _all(e, cmask, pmask)
    hcond = _bounds("ih", -ph, (g.OH - 1) * sh - ph + (g.KH - 1) * dh, g.H)
    wcond = _bounds("iw", -pw, (g.OW - 1) * sw - pw + (g.KW - 1) * dw, g.W)
    # both the channel and the pixel term: the store pointer has the tile's full shape
    off = f"{n} * {g.CO * P} + oc * {P} + pix" if g.N > 1 else f"oc * {P} + pix"
    return _Pixels(cmask, inside, (inside,), hcond, wcond, None, (n, "oc", "oh", "ow"), off, n)


def _rows_by_columns(e: Emitter, body: Graph, g: ConvGeometry, tile: Tile) -> _Pixels:
    """``[BLOCK_C, BLOCK_H, BLOCK_W]``: rows x columns, per-tap work on row and column vectors."""
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    n = "n" if g.N > 1 else "0"
    (tiles_h, tiles_w), tiles_c = tile.pixel_tiles(g), -(-g.CO // tile.c)
    e.line(f"pid = {program_id(body, 0)}")
    # pid in mixed radix, column tiles fastest: neighbours share input rows in L1/L2
    digits, div = {}, 1
    axes = [("tw", tiles_w), ("th", tiles_h), ("tc", tiles_c), ("n", g.N)]
    last = max((i for i, (_, size) in enumerate(axes) if size > 1), default=-1)
    for i, (name, size) in enumerate(axes):
        digits[name] = name if size > 1 else "0"  # one tile along the axis: its index is 0
        if size > 1:
            q = "pid" if div == 1 else f"pid // {div}" if i == last else f"(pid // {div})"
            e.line(f"{name} = {q}" if i == last else f"{name} = {q} % {size}")
            div *= size

    def arange(digit: str, block: str, where: str) -> str:
        lanes = f"tl.arange(0, {block})"
        return f"{lanes}[{where}]" if digits[digit] == "0" else f"({digit} * {block} + {lanes})[{where}]"
    e.line(f"oc = {arange('tc', 'BLOCK_C', ':, None, None')}  # output channels")
    e.line(f"oh = {arange('th', 'BLOCK_H', 'None, :, None')}  # output rows")
    e.line(f"ow = {arange('tw', 'BLOCK_W', 'None, None, :')}  # output columns")
    e.line(f"ih0 = {_affine('oh', sh, -ph)}")
    e.line(f"iw0 = {_affine('ow', sw, -pw)}")
    _first_channel(e, g)
    # tap (kh, kw) reads at xoff + kh*dh*W + kw*dw: one address per element and program
    HW = g.H * g.W
    e.line(f"xoff = {_sum(_scaled(n, g.C * HW), _scaled('cin0', HW), _scaled('ih0', g.W), 'iw0')}")
    cmask = f"oc < {g.CO}" if g.CO % tile.c else None
    # bounds over the padded tile: a lane past OH/OW reads inside the input or nothing
    hcond = _bounds("ih", -ph, (tiles_h * tile.h - 1) * sh - ph + (g.KH - 1) * dh, g.H)
    wcond = _bounds("iw", -pw, (tiles_w * tile.w - 1) * sw - pw + (g.KW - 1) * dw, g.W)
    rows = f"oh < {g.OH}" if g.OH % tile.h else None
    cols = f"ow < {g.OW}" if g.OW % tile.w else None
    off = _sum(_scaled(n, g.CO * g.pixels), _scaled("oc", g.pixels), _scaled("oh", g.OW), "ow")
    return _Pixels(cmask, cmask, (cmask, rows, cols), hcond, wcond, "xoff", (n, "oc", "oh", "ow"), off, n)


def _pixels_by_channels(e: Emitter, body: Graph, g: ConvGeometry, tile: Tile) -> _Pixels:
    """``[BLOCK_HW, BLOCK_C]``, channels-last: ``BLOCK_HW`` pixels of the flattened
    ``N*OH*OW`` by ``BLOCK_C`` channels, channels the fast axis. An NHWC input (read through
    the region's permute) and the NHWC output are contiguous along it: 16-byte loads and
    stores of 8 fp16 channels, and a weight held ``[KH, KW, 1, C]`` is one more per tap."""
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    m, tiles_m, tiles_c = g.N * g.pixels, -(-g.N * g.pixels // tile.hw), -(-g.CO // tile.c)
    e.line(f"pid = {program_id(body, 0)}")
    e.line(f"tm = pid % {tiles_m}  # pixel tiles side by side share input rows in L1/L2" if tiles_c > 1
           else "tm = pid")
    e.line(f"tc = pid // {tiles_m}" if tiles_c > 1 else "tc = 0")
    e.line("pix = (tm * BLOCK_HW + tl.arange(0, BLOCK_HW))[:, None]  # output pixels, (n * OH + oh) * OW + ow")
    e.line("oc = (tc * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]  # output channels: the fast axis")
    # vectors even for a 1-pixel plane: a Python int coordinate would make a Python bool mask
    n = e.tmp(f"pix // {g.pixels}", "img") if g.N > 1 else "0"
    e.line(f"oh = (pix // {g.OW}) % {g.OH}")
    e.line(f"ow = pix % {g.OW}")
    e.line(f"ih0 = {_affine('oh', sh, -ph)}")
    e.line(f"iw0 = {_affine('ow', sw, -pw)}")
    _first_channel(e, g)
    cmask = f"oc < {g.CO}" if g.CO % tile.c else None
    pmask = f"pix < {m}" if m % tile.hw else None  # a lane past the last image reads nothing
    inside = _all(e, cmask, pmask)
    if inside:  # the epilogue only stores: a bias row needs the channel mask only
        e.mask_parts[inside] = ((cmask, "oc"), (pmask, "pix"))
    hcond = _bounds("ih", -ph, (g.OH - 1) * sh - ph + (g.KH - 1) * dh, g.H)
    wcond = _bounds("iw", -pw, (g.OW - 1) * sw - pw + (g.KW - 1) * dw, g.W)
    off = f"{n} * {g.CO * g.pixels} + oc * {g.pixels} + {_sum(_scaled('oh', g.OW), 'ow')}"
    return _Pixels(cmask, inside, (inside,), hcond, wcond, None, (n, "oc", "oh", "ow"), off, n,
                   f"pix * {g.CO} + oc")


def _computed(e: Emitter, x: Value) -> bool:
    """Whether the input is computed in the kernel (a prologue), not a view of a kernel input
    (the region's permute), whose masked load is already 0 in the padding."""
    while (p := e.producer.get(x.name)) is not None:
        if p.name not in VIEW_OPS:
            return True
        x = p.inputs[0]
    return False


def emit(body: Graph, name: str, op: Op, schedule: Schedule) -> KernelSource:
    x, w = op.inputs
    if x.type.dtype not in DTYPES or w.type.dtype != x.type.dtype:
        raise NotImplementedError(f"conv2d on {x.type.dtype.short} has no direct Triton template "
                                  f"(it runs as the library candidate)")
    g = ConvGeometry.of(op, body)
    s = clamp(g, schedule)
    tile, warps, stages = Tile.of(s), int(s["num_warps"]), int(s["num_stages"])
    dh, dw = g.dilation
    out_shape = shape_of(op.result)
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    e.scalars |= {"thw", "th", "tw", "tm", "tc", "ci", "kh", "kw", "tap"} | ({"n"} if not g.channels_last else set())
    tiling = _pixels_by_channels if g.channels_last else _rows_by_columns if tile.w else _flat
    px = tiling(e, body, g, tile)
    n = px.n
    block = "[BLOCK_HW, BLOCK_C]" if g.channels_last else "[BLOCK_C, BLOCK_H, BLOCK_W]" if tile.w else \
        "[BLOCK_C, BLOCK_HW]"
    acc = e.tmp(f"tl.zeros({block}, dtype=tl.float32)", "acc")
    loop = g.cg > 1  # the input channels of a group: a runtime loop around the taps
    if loop:
        e.line(f"for ci in range({g.cg}):")
    with e.block() if loop else nullcontext():
        cin, xbase = ("cin", "xc") if loop else ("cin0", px.xoff)
        if loop:
            e.line("cin = cin0 + ci")
            if px.xoff:
                e.line(f"xc = {px.xoff} + ci * {g.H * g.W}")
        e.line(f"for kh in tl.static_range({g.KH}):")
        with e.block():
            e.line(f"ih = {_affine('kh', dh, 0)} + ih0")
            row = _all(e, px.lead, px.hcond)
            if px.xoff and row and not row.isidentifier():  # a [BLOCK_C, BLOCK_H, 1] mask per kh
                row = e.tmp(row, "m")
            e.line(f"for kw in tl.static_range({g.KW}):")
            with e.block():
                e.line(f"iw = {_affine('kw', dw, 0)} + iw0")
                m = _all(e, row, px.wcond)
                at, saved = (n, cin, "ih", "iw"), e.flat
                if px.xoff:  # the input (and a prologue's operands of its shape) at xoff + tap
                    e.line(f"tap = {_sum(_scaled('kh', dh * g.W), _scaled('kw', dw))}  # a constant")
                    e.flat = (at, shape_of(x), f"{xbase} + tap")
                xv = e.value_at(x, at, m)
                e.flat = saved
                xs = e.compute(xv)
                if m is not None and _computed(e, x):  # padding is zero, not prologue(0)
                    xs = f"tl.where({m}, {xs}, 0.0)"
                wv = e.value_at(w, ("oc", "ci" if loop else "0", "kh", "kw"), px.cmask)
                e.line(f"{acc} += {xs} * {e.compute(wv)}")
    idx = px.out_index
    nhwc = channels_last_values(body, op)
    nhwc_idx = (n, idx[2], idx[3], "oc")
    if px.nhwc_offset:  # channels-last: the region's values are NHWC, so are its residuals
        e.line(f"off = {px.nhwc_offset}")
        e.flat = (nhwc_idx, (g.N, g.OH, g.OW, g.CO), "off")
    else:
        e.line(f"off = {px.out_offset}")
        e.flat = (idx, out_shape, "off")  # a residual of the output's shape reads at the same offset
    inside = _all(e, *px.store)
    e.overrides[op.result.name] = (idx, Var(acc, op.result.type.dtype, "tl.float32"))
    for j, v in enumerate(body.outputs):
        if v.name in nhwc:
            at = nhwc_idx
        elif shape_of(v) == out_shape:
            at = idx
        else:
            raise NotImplementedError(f"conv kernel output %{v.name} is not on the conv's result")
        e.store(f"out{j}", v, at, inside, offset="off" if at == e.flat[0] else None)
    consts = {"BLOCK_C": tile.c, "BLOCK_H": tile.h, "BLOCK_W": tile.w} if tile.w else \
        {"BLOCK_C": tile.c, "BLOCK_HW": tile.hw}
    text = one_kernel_module(name, ins + outs, e.lines, f"({programs(g, s)},)", consts,
                             {"num_warps": warps, "num_stages": stages})
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)), s)
