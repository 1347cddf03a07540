"""Pooling template: ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d`` (NCHW) with
fused prologue and epilogue.

Pooling windows are small and overlap, so this is a pointwise kernel over the
*output* (flat, ``BLOCK`` elements per program) with a loop over the window:
each step reads the (prologue-computed) input at ``oh * stride - pad + kh *
dilation`` under an in-bounds mask. Average pooling divides by PyTorch's
divisor (``count_include_pad``, ``ceil_mode`` windows clipped at the padded
edge, ``divisor_override``); adaptive pooling uses the windows
``[floor(i * H / OH), ceil((i + 1) * H / OH))``.

Knobs (``SPACE``): ``BLOCK``, ``num_warps``.
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import (
    Emitter,
    Var,
    literal,
    next_pow2,
    numel,
    program_id,
    shape_of,
    the_anchor,
)
from tilefx.codegen.triton.ops import NAN, delinearize
from tilefx.codegen.triton.pointwise import arg_names
from tilefx.codegen.triton.source import KernelSource, one_kernel_module
from tilefx.ir.graph import Graph, Op

POOLS = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
SPACE: dict[str, list[Any]] = {"BLOCK": [64, 128, 256, 512, 1024], "num_warps": [1, 2, 4, 8]}


def anchor_of(body: Graph) -> Op:
    return the_anchor(body, POOLS, "pooling")


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    n = numel(shape_of(anchor_of(body).result))
    block = min(256, next_pow2(n))
    return Schedule.of(BLOCK=block, num_warps=4 if block >= 256 else 1)


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    op = anchor_of(body)
    x = op.inputs[0]
    N, C, H, W = shape_of(x)
    out_shape = shape_of(op.result)
    OH, OW = out_shape[2:]
    total = numel(out_shape)
    block = min(int(schedule.get("BLOCK", 256)), next_pow2(total))
    warps = min(int(schedule.get("num_warps", 4)), max(1, block // 32))
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    e.line(f"xindex = {program_id(body, 0)} * BLOCK + tl.arange(0, BLOCK)")
    xmask = None
    if total % block:
        e.line(f"xmask = xindex < {total}")
        xmask = "xmask"
    n, c, oh, ow = delinearize(e, "xindex", out_shape)
    is_max = op.name == "max_pool2d"
    ctype = "tl.float32" if x.type.dtype.is_float else "tl.int64"
    neutral = ('float("-inf")' if x.type.dtype.is_float else literal(-(2 ** 62))) if is_max else "0.0"
    acc = e.tmp(f"tl.full([BLOCK], {neutral}, {ctype})", "acc")
    if op.name == "adaptive_avg_pool2d":
        # windows [floor(i * H / OH), ceil((i + 1) * H / OH)) always lie inside the input
        hs, he = _window(e, oh, H, OH)
        ws, we = _window(e, ow, W, OW)
        kh_n = H // OH if H % OH == 0 else -(-H // OH) + 1  # the widest window
        kw_n = W // OW if W % OW == 0 else -(-W // OW) + 1
        ih, iw = f"{hs} + kh", f"{ws} + kw"
        bounds = [c for c in (f"{ih} < {he}" if H % OH else None, f"{iw} < {we}" if W % OW else None) if c]
    else:
        (kh_n, kw_n), (sh, sw), (ph, pw) = op.attr("kernel"), op.attr("stride"), op.attr("padding")
        dh, dw = op.attr("dilation", (1, 1)) if is_max else (1, 1)
        ih, iw = f"{oh} * {sh} - {ph} + kh * {dh}", f"{ow} * {sw} - {pw} + kw * {dw}"
        bounds = ["ih >= 0", f"ih < {H}", "iw >= 0", f"iw < {W}"]
    # an index that depends on the loop only would be a scalar: give it the block's shape
    ih += " + xindex * 0" if oh == "0" else ""
    iw += " + xindex * 0" if ow == "0" else ""
    e.line(f"for kh in range({kh_n}):")
    with e.block():
        e.line(f"for kw in range({kw_n}):")
        with e.block():
            e.line(f"ih = {ih}")
            e.line(f"iw = {iw}")
            conds = ([xmask] if xmask else []) + [f"({c})" for c in bounds]
            m = e.tmp(" & ".join(conds), "m") if conds else None
            v = e.value_at(x, (n, c, "ih", "iw"), m)
            val = e.as_type(v, ctype)
            if is_max:
                val = f"tl.where({m}, {val}, {neutral})" if m else val
                e.line(f"{acc} = tl.maximum({acc}, {val}, {NAN})")  # NaN as torch
            else:
                e.line(f"{acc} = {acc} + " + (f"tl.where({m}, {val}, 0.0)" if m else val))
    if op.name == "adaptive_avg_pool2d":
        hn = str(H) if OH == 1 else f"({he} - {hs})"
        wn = str(W) if OW == 1 else f"({we} - {ws})"
        area = literal(float(H * W)) if OH == OW == 1 else f"({hn} * {wn}).to(tl.float32)"
        res = e.tmp(f"{acc} / {area}", "r")
    elif op.name == "avg_pool2d":
        res = e.tmp(f"{acc} / {_divisor(e, op, oh, ow, H, W)}", "r")
    else:
        res = acc
    e.overrides[op.result.name] = ((n, c, oh, ow), Var(res, op.result.type.dtype, ctype))
    e.flat = ((n, c, oh, ow), out_shape, "xindex")
    for j, v in enumerate(body.outputs):
        if shape_of(v) != out_shape:
            raise NotImplementedError(f"pooling kernel output %{v.name} is not on the pooled shape")
        e.store(f"out{j}", v, (n, c, oh, ow), xmask, offset="xindex")
    text = one_kernel_module(name, ins + outs, e.lines, f"({-(-total // block)},)",
                             {"BLOCK": block}, {"num_warps": warps})
    return KernelSource(name, text, (("num_warps", warps),), Schedule.of(BLOCK=block, num_warps=warps))


def _window(e: Emitter, o: str, size: int, out: int) -> tuple[str, str]:
    if out == 1:
        return "0", str(size)
    return e.tmp(f"({o} * {size}) // {out}", "j"), e.tmp(f"(({o} + 1) * {size} + {out - 1}) // {out}", "j")


def _divisor(e: Emitter, op: Op, oh: str, ow: str, H: int, W: int) -> str:
    """PyTorch's avg_pool2d divisor for the window of output (oh, ow)."""
    if op.attr("divisor_override"):
        return literal(float(op.attr("divisor_override")))
    (kh, kw), (sh, sw), (ph, pw) = op.attr("kernel"), op.attr("stride"), op.attr("padding")
    hs, ws = e.tmp(f"{oh} * {sh} - {ph}", "j"), e.tmp(f"{ow} * {sw} - {pw}", "j")
    he = e.tmp(f"tl.minimum({hs} + {kh}, {H + ph})", "j")
    we = e.tmp(f"tl.minimum({ws} + {kw}, {W + pw})", "j")
    if op.attr("count_include_pad"):
        return f"(({he} - {hs}) * ({we} - {ws})).to(tl.float32)"
    h0, w0 = f"tl.maximum({hs}, 0)", f"tl.maximum({ws}, 0)"
    h1, w1 = f"tl.minimum({he}, {H})", f"tl.minimum({we}, {W})"
    return f"(({h1} - {h0}) * ({w1} - {w0})).to(tl.float32)"
