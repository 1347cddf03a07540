"""Conv2d (NCHW): two candidates with a fused epilogue (bias, folded batch norm,
residual add, activation).

- ``impl="library"``: ``torch.nn.functional.conv2d`` (cuDNN) for the
  convolution, then one generated Triton kernel for the epilogue
  (``library.py``); it covers every conv and dtype;
- ``impl="depthwise"``: a direct convolution for ``groups > 1`` (depthwise,
  channel multipliers, grouped convs with few channels per group), fused with
  the epilogue (``depthwise.py``);
- ``impl="triton"``: an *implicit GEMM* for ``groups == 1``: the output is a
  ``[N*OH*OW, O]`` matrix, the reduction runs over ``K = C*KH*KW``; each A tile
  is gathered from the input at ``(n, c, oh*stride - pad + kh*dilation, ...)``
  under a bounds mask (zero padding for free), each B tile from the weight
  seen as ``[K, O]``. Tiling, grouped launch order and the epilogue are the
  matmul template's.

Knobs (``space``): ``impl``, and for ``triton`` ``BLOCK_M/N/K``, ``GROUP_M``,
``num_warps``, ``num_stages``; ``EPILOGUE_BLOCK`` for ``library``. A grouped
conv's space is ``library`` and ``depthwise`` with the direct template's knobs
(``depthwise.SPACE``).

Defaults, from GPU measurements (``gemm_wins``): depthwise convs take the
direct template, fp16/bf16 1x1, patchify and stem convs the implicit GEMM,
the rest (3x3 over many channels, fp32) cuDNN.
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import depthwise, library
from tilefx.codegen.triton.emit import Emitter, Var, next_pow2, shape_of, tl_type, the_anchor
from tilefx.codegen.triton.matmul import _all, grouped_tiles, input_precision
from tilefx.codegen.triton.ops import delinearize
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType

SPACE: dict[str, list[Any]] = {
    "impl": ["library", "triton"], "EPILOGUE_BLOCK": [256, 512, 1024, 2048],
    "BLOCK_M": [32, 64, 128], "BLOCK_N": [16, 32, 64, 128], "BLOCK_K": [16, 32, 64],
    "GROUP_M": [1, 8], "num_warps": [4, 8], "num_stages": [2, 3, 4],
}


def anchor_of(body: Graph) -> Op:
    return the_anchor(body, {"conv2d"}, "contraction")


def space(body: Graph) -> dict[str, list[Any]]:
    op = anchor_of(body)
    floating = op.inputs[0].type.dtype in depthwise.DTYPES
    if op.attr("groups") != 1:
        # the implicit GEMM's knobs mean nothing here: only the direct template's
        if not floating:
            return {"impl": ["library"], "EPILOGUE_BLOCK": list(SPACE["EPILOGUE_BLOCK"])}
        return {"impl": ["library", "depthwise"], **{k: list(v) for k, v in depthwise.SPACE.items()}}
    out = {k: list(v) for k, v in SPACE.items()}
    if not floating:
        out["impl"] = ["library"]
    return out


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    op = anchor_of(body)
    if op.attr("groups") != 1 and op.inputs[0].type.dtype in depthwise.DTYPES:
        direct = depthwise.default_schedule(depthwise.ConvGeometry.of(op, body))
        if direct is not None:  # depthwise: the direct template beats cuDNN (measured)
            return direct
    if gemm_wins(body):
        return implicit_gemm_default(op, target)
    return Schedule.of(impl="library", EPILOGUE_BLOCK=1024)


# Where the implicit GEMM beat cuDNN + its epilogue kernel on the H200 (fp16, NCHW, batch 32;
# benchmarks/results/gpu-schedule-sweep-h200-2026-12-03.md): every 1x1 conv (2-4x: no
# NCHW<->NHWC transposes, the epilogue fused), non-overlapping patchify convs (ViT's 16x16/16:
# 13x) and stems with few input channels (ResNet's 7x7 on 3 channels: 2x). cuDNN kept the
# 3x3 convs over many channels (ResNet-50's 256-channel 3x3: 2x faster than the best tile),
# and convs whose input arrives through a permute (ConvNeXt's downsampling convs read its
# channels-last LayerNorm output: cuDNN takes that view as NHWC, 30-70 us; the gather through
# the permute took 180-190 us).
STEM_K = 256  # C*KH*KW up to this: a stem, gathered cheaply


def gemm_wins(body: Graph) -> bool:
    op = anchor_of(body)
    x, w = op.inputs
    if op.attr("groups") != 1 or x.type.dtype not in (DType.float16, DType.bfloat16):
        return False  # fp32: cuDNN (an IEEE tl.dot is slow); grouped: the direct template
    if x.name in body.producers():
        return False  # read through a permute (or any prologue): cuDNN takes the view as is
    _, c, kh, kw = shape_of(w)
    stride, padding, dilation = (tuple(op.attr(k)) for k in ("stride", "padding", "dilation"))
    patchify = stride == (kh, kw) and padding == (0, 0) and dilation == (1, 1)
    return (kh, kw) == (1, 1) or patchify or c * kh * kw <= STEM_K


def implicit_gemm_default(op: Op, target: Any = None) -> Schedule:
    """The measured best tiles of the sweep, as a rule: 128-row tiles, the output channels
    up to 128 a tile, deep K in 64-steps on 8 warps when both sides are wide."""
    from tilefx.codegen.triton.matmul import sm_count

    _, c, kh, kw = shape_of(op.inputs[1])
    n, o, oh, ow = shape_of(op.result)
    m, k = n * oh * ow, c * kh * kw
    bn = max(16, min(128, next_pow2(o)))
    if k >= 256 and o >= 128:
        bm, bk, warps, stages = 128, 64, 8, 3
    else:
        bm, bk, warps, stages = 128, 32 if k >= 32 else 16, 4, 4
    if -(-m // bm) * -(-o // bn) < sm_count(target) // 2:
        bm = 64
    return Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                       num_warps=warps, num_stages=stages)


def conv_call(op: Op, xs: list[str]) -> str:
    a = op.attr_dict
    return (f"torch.nn.functional.conv2d({xs[0]}, {xs[1]}, None, {tuple(a['stride'])}, "
            f"{tuple(a['padding'])}, {tuple(a['dilation'])}, {a['groups']})")


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    op = anchor_of(body)
    impl = schedule.get("impl", "library")
    if impl == "library":
        return library.emit(body, name, op, conv_call, schedule)
    if impl == "depthwise":
        return depthwise.emit(body, name, op, schedule)
    if "triton" not in space(body)["impl"]:
        raise NotImplementedError(f"conv2d with groups={op.attr('groups')} on {op.inputs[0].type.dtype.short} "
                                  f"has only the library candidate (torch conv2d + epilogue)")
    return implicit_gemm(body, name, op, schedule)


def _window(o: str, stride: int, pad: int, kk: str, dilation: int) -> str:
    """The input coordinate ``o * stride - pad + kk * dilation``, written without no-op terms."""
    terms = [t for t in ((o if stride == 1 else f"{o} * {stride}") if o != "0" else "",
                         kk if dilation == 1 else f"{kk} * {dilation}") if t]
    expr = " + ".join(terms) or "0"
    return f"{expr} - {pad}" if pad else expr


def _literal_or_tmp(e: Emitter, expr: str, prefix: str) -> str:
    return expr if expr.lstrip("-").isdigit() else e.tmp(expr, prefix)


def _bounds(coords: tuple[tuple[str, int], ...]) -> str | None:
    """The in-bounds mask of input coordinates. A coordinate that is a literal (a 1x1 kernel on
    a 1-pixel output) is decided here: a Python bool in a mask breaks Triton's type rules."""
    terms = []
    for c, size in coords:
        try:
            value = int(c)
        except ValueError:
            terms.append(f"({c} >= 0) & ({c} < {size})")
            continue
        if not 0 <= value < size:
            return "(ak < 0)"  # never in bounds: all padding
    return " & ".join(terms) or None


def implicit_gemm(body: Graph, name: str, op: Op, schedule: Schedule) -> KernelSource:
    x, w = op.inputs
    N, C, H, W = shape_of(x)
    CO, _, KH, KW = shape_of(w)
    out_shape = shape_of(op.result)
    OH, OW = out_shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = op.attr("stride"), op.attr("padding"), op.attr("dilation")
    m, n, k = N * OH * OW, CO, C * KH * KW
    fit = lambda knob, size, default: max(16, min(int(schedule.get(knob, default)), next_pow2(size)))  # noqa: E731
    bm, bn, bk = fit("BLOCK_M", m, 64), fit("BLOCK_N", n, 64), fit("BLOCK_K", k, 32)
    gm = max(1, min(int(schedule.get("GROUP_M", 8)), -(-m // bm)))
    warps, stages = int(schedule.get("num_warps", 4)), int(schedule.get("num_stages", 3))
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    tm, tn = grouped_tiles(e, body, m, n, bm, bn, gm)
    on, oh, ow = delinearize(e, "offs_m", (N, OH, OW))  # output pixel of each row of the tile
    mmask = f"offs_m < {m}" if m % bm else None
    nmask = f"offs_n < {n}" if n % bn else None
    acc = e.tmp("tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)", "acc")
    e.line(f"for k0 in range(0, {k}, BLOCK_K):")
    with e.block():
        e.line("ak = k0 + tl.arange(0, BLOCK_K)[None, :]")
        e.line("bk = k0 + tl.arange(0, BLOCK_K)[:, None]")
        ac, akh, akw = delinearize(e, "ak", (C, KH, KW))
        bc, bkh, bkw = delinearize(e, "bk", (C, KH, KW))
        ih, iw = (_literal_or_tmp(e, _window(o, st, p, kk, d), nm) for o, st, p, kk, d, nm in
                  ((oh, sh, ph, akh, dh, "ih"), (ow, sw, pw, akw, dw, "iw")))
        kcond = [f"ak < {k}", f"bk < {k}"] if k % bk else [None, None]
        bounds = _bounds(((ih, H), (iw, W)))
        amask = _all(e, mmask, kcond[0], bounds)
        bmask = _all(e, kcond[1], nmask)
        av = e.value_at(x, (on, ac, ih, iw), amask)
        e.flat = (("offs_n", bc, bkh, bkw), shape_of(w), f"offs_n * {k} + bk")  # the weight as [O, K]
        bv = e.value_at(w, ("offs_n", bc, bkh, bkw), bmask)
        op_t = tl_type(x.type.dtype)
        at = e.tile(av, op_t, "[BLOCK_M, BLOCK_K]", m > 1 and k > 1, amask)
        bt = e.tile(bv, op_t, "[BLOCK_K, BLOCK_N]", k > 1 and n > 1, bmask)
        e.line(f"{acc} += tl.dot({at}, {bt}{input_precision(x.type.dtype)})")
    idx = (on, "offs_n", oh, ow)
    mask = _all(e, mmask, nmask)
    if mask is not None:  # the epilogue only stores: a bias column needs no pixel mask
        e.mask_parts[mask] = ((mmask, "offs_m"), (nmask, "offs_n"))
    e.overrides[op.result.name] = (idx, Var(acc, op.result.type.dtype, "tl.float32"))
    channels_last = depthwise.channels_last_values(body, op)
    for j, v in enumerate(body.outputs):
        if v.name in channels_last:  # a channels-last region (passes/channels_last.py): rows of channels
            at = (on, oh, ow, "offs_n")
        elif shape_of(v) == out_shape:
            at = idx
        else:
            raise NotImplementedError(f"conv kernel output %{v.name} is not on the conv's result")
        e.store(f"out{j}", v, at, mask, zero=None if m > 1 and n > 1 else "(offs_m * 0 + offs_n * 0)")
    text = one_kernel_module(name, ins + outs, e.lines, f"({tm * tn},)",
                             {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                             {"num_warps": warps, "num_stages": stages})
    return KernelSource(name, text, (("num_stages", stages), ("num_warps", warps)),
                        Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm,
                                    num_warps=warps, num_stages=stages))
