"""Features of a Triton (cuda) candidate: what the learned cost model sees on a GPU.

A Triton kernel has no loop nest to walk before Triton compiles it; what
decides its speed is how the template tiles the problem over the GPU. So the
vector is computed from the kernel body and the template's own clamped
schedule (``codegen/triton``), without building anything:

- the problem: template, dtype, float ops, bytes in and out, arithmetic
  intensity, the contraction's M x N x K (implicit GEMM for conv2d; pixels x
  channels x taps for the direct depthwise/grouped conv, Q x K
  blocks for attention, rows x nonzero blocks for ``bsr_matmul``), a
  reduction's rows x row length;
- the launch: programs (grid size), waves over the SMs and how full the last
  one is, the share of each tile that is padding (masked lanes);
- one program: elements and accumulators per thread, serial steps of its
  main loop, shared memory of its software pipeline
  (``num_stages x (BLOCK_M x BLOCK_K + BLOCK_K x BLOCK_N)``), the tile's
  arithmetic intensity, the operand bytes all tiles read together (A is
  re-read once per column of tiles, B once per row);
- an occupancy estimate: programs resident per SM, limited by warps (64),
  shared memory and registers (accumulators plus operand fragments per
  thread), and the resulting share of warp slots filled;
- the target: SMs, shared memory per block, L2 size, compute capability;
- the knobs themselves (log2; -1 where the template has none) and
  ``impl`` (Triton, the library call, the 2:4 kernel);
- a roofline estimate (max of compute and DRAM time at H100-class rates):
  as ``analytical`` does on CPU, the trees learn where it is wrong.

``GPU_FEATURE_VERSION`` names the layout (a model of another version is
refused). ``GPU_FEATURES`` documents each entry in one line.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from tilefx.codegen.space import is_extern
from tilefx.codegen.triton import depthwise
from tilefx.codegen.triton.emit import shape_of
from tilefx.codegen.triton.measure import resolve
from tilefx.codegen.triton.templates import body_of, template_for
from tilefx.ir.identity import symbol_bindings

log = logging.getLogger("tilefx.cost_model")

GPU_FEATURE_VERSION = 1

TEMPLATES = ("matmul", "conv", "attention", "sparse", "pointwise", "reduction", "pool")
GPU_KNOBS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "BLOCK",
             "XBLOCK", "RBLOCK", "persistent", "STEP_BLOCKS", "EPILOGUE_BLOCK")
MAX_WARPS_PER_SM = 64
MAX_PROGRAMS_PER_SM = 32
REGISTERS_PER_SM = 65536
# rates for the roofline entry only (H100 SXM): tensor-core fp16/bf16, TF32/IEEE fp32, HBM3
PEAK_FLOPS = {2: 700e12, 4: 50e12}
DRAM_BYTES_PER_S = 3.0e12
LAUNCH_S = 3e-6

GPU_FEATURES: tuple[tuple[str, str], ...] = tuple(
    (f"tpl_{t}", f"1 for the {t} template") for t in TEMPLATES) + (
    ("impl_library", "1 when the candidate calls the library (cuBLAS/cuDNN/SDPA) plus an epilogue"),
    ("impl_semi24", "1 for the 2:4 semi-structured sparse kernel"),
    ("itemsize", "bytes per element of the anchor's input"),
    ("flops", "log2 float operations (2 x M x N x K for contractions, elements x ops otherwise)"),
    ("bytes", "log2 bytes of every input and output once (compulsory DRAM traffic)"),
    ("intensity", "log2 flops per compulsory byte"),
    ("m", "log2 rows of the output tile space (M; rows X for reductions; elements for pointwise, "
          "Y x other dims for tiled pointwise)"),
    ("n", "log2 columns of the output tile space (N; 1 for reductions and pointwise, X for tiled "
          "pointwise)"),
    ("k", "log2 length of the serial dimension (K; row length R for reductions)"),
    ("batch", "log2 independent problems along the grid's second axis (batch x heads, block columns)"),
    ("programs", "log2 programs launched (grid size)"),
    ("waves", "log2 programs / SMs"),
    ("wave_fill", "programs / (full waves x SMs): 1 = the last wave fills the GPU"),
    ("sm_fill", "min(1, programs / SMs): share of SMs with work"),
    ("pad_share", "share of each tile's lanes that are masked padding"),
    ("tile_elems", "log2 output elements per program"),
    ("elems_per_thread", "log2 output elements per thread"),
    ("acc_per_thread", "fp32 accumulators per thread (contractions)"),
    ("steps", "log2 serial steps of a program's main loop (K / BLOCK_K, row passes)"),
    ("smem", "log2 bytes of shared memory of the software pipeline"),
    ("smem_share", "pipeline shared memory / shared memory per block (> 1 fails to build)"),
    ("tile_intensity", "log2 flops per operand byte loaded by one step of a program"),
    ("operand_traffic", "log2 operand bytes read by all programs (A per tile column, B per tile row)"),
    ("traffic_l2", "operand traffic / L2 size"),
    ("regs_per_thread", "estimated registers per thread (accumulators + operand fragments + 32)"),
    ("resident", "programs resident per SM (warp, shared memory and register limits)"),
    ("occupancy", "resident warps / 64"),
    ("limit_smem", "1 when shared memory is what limits the resident programs"),
    ("limit_regs", "1 when registers are what limit the resident programs"),
    ("roofline", "log2 microseconds: max(compute, DRAM) at H100-class rates + launch"),
    ("sms", "target SMs"),
    ("smem_per_block", "log2 target shared memory per block"),
    ("l2", "log2 target L2 bytes"),
    ("arch", "target compute capability (90 for sm_90)"),
) + tuple((f"knob_{k}", f"log2 schedule knob {k} (-1: not in this template)") for k in GPU_KNOBS)

GPU_NAMES = tuple(n for n, _ in GPU_FEATURES)
GPU_INDEX = {n: i for i, n in enumerate(GPU_NAMES)}


def _l2(x: float) -> float:
    return math.log2(1.0 + max(0.0, float(x)))


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // max(1, int(b)))


def _numel(shape: Any) -> int:
    return int(math.prod(int(d) for d in shape))


def gpu_features(kernel_op: Any, schedule: Any, target: Any,
                 bindings: Mapping[Any, int] | None = None) -> dict[str, float]:
    """Features of one cuda candidate by name (absent: 0; knobs the template lacks: -1)."""
    f: dict[str, float] = {f"knob_{k}": -1.0 for k in GPU_KNOBS}
    f.update({"sms": float(max(1, int(target.cores))), "smem_per_block": _l2(target.l1_bytes),
              "l2": _l2(target.l2_bytes),
              "arch": float("".join(c for c in (target.arch or "sm_80") if c.isdigit()) or 80)})
    try:
        module = template_for(kernel_op)
        body = body_of(kernel_op, symbol_bindings(bindings))
        sched = resolve(schedule) if is_extern(schedule) else schedule
        tile = _tile(module.__name__.rsplit(".", 1)[-1], module, body, sched)
    except Exception as e:  # noqa: BLE001 - a body no template takes: target facts only
        log.debug("no GPU features for %s %s: %s", kernel_op.attr("name"), schedule, e)
        return f
    f[f"tpl_{tile['template']}"] = 1.0
    f["impl_library"], f["impl_semi24"] = float(tile["impl"] == "library"), float(tile["impl"] == "semi24")
    for k in GPU_KNOBS:
        v = tile["schedule"].get(k)
        if v is not None:
            f[f"knob_{k}"] = _l2(float(v))
    f.update(_launch(tile, target))
    return f


def _body_bytes(body: Any) -> int:
    return sum(_numel(shape_of(v)) * v.type.dtype.itemsize for v in (*body.inputs, *body.outputs))


def _tile(template: str, module: Any, body: Any, schedule: Any) -> dict[str, Any]:
    """The template's problem and tiling: sizes, tile, pipeline depth, loop steps."""
    s = module.clamp(body, schedule) if hasattr(module, "clamp") and template not in (
        "reduction", "conv") else schedule
    out: dict[str, Any] = {"template": template, "schedule": s, "bytes": _body_bytes(body),
                           "warps": int(s.get("num_warps", 4)), "stages": int(s.get("num_stages", 1)),
                           "batch": 1, "n": 1, "bn": 1, "bk": 0, "contraction": False,
                           # as asked (clamping may rewrite it); conv's default is the library
                           "impl": schedule.get("impl", "library" if template == "conv" else "triton")}
    if template == "conv" and out["impl"] == "depthwise":
        out.update(_direct_conv(module.anchor_of(body), body, schedule))
        return out
    if template in ("matmul", "conv", "attention", "sparse"):
        out.update(_contraction(template, module, body, s))
        return out
    out["itemsize"] = body.inputs[0].type.dtype.itemsize if body.inputs else 4
    out["flops"] = float(sum(_numel(shape_of(r)) for op in body.ops for r in op.results))
    if template == "reduction":
        plan = module.Plan(body)
        s = module.clamp(plan, schedule)
        xb, rb = int(s["XBLOCK"]), int(s["RBLOCK"])
        # looped rows take a pass per statistic (softmax: max/sum + write; layer_norm: 3)
        looped = {"layer_norm": 3, "softmax": 2, "log_softmax": 2, "rms_norm": 2}
        # (a sum-like reduction with a row epilogue: the reduction, then a write pass)
        passes = 1 if s.get("persistent") else looped.get(plan.anchor.name, 1) + bool(plan.row_out)
        out.update(schedule=s, warps=int(s.get("num_warps", 4)), m=plan.X, k=plan.R, bm=xb, bn=rb,
                   programs=_cdiv(plan.X, xb), steps=passes * _cdiv(plan.R, rb),
                   pad_share=_pad(plan.X, xb, plan.R, rb))
        return out
    if template == "pointwise":  # flat, or [TILE_Y, BLOCK // TILE_Y] tiles of a transposing body
        g = module.grid(body, s)
        out.update(m=g.rows, n=g.cols, k=1, bm=g.block_rows, bn=g.block_cols, programs=g.programs,
                   steps=1, pad_share=g.pad_share)
        return out
    largest = max((_numel(shape_of(v)) for v in body.outputs), default=1)
    block = int(s.get("BLOCK", 1024))
    out.update(m=largest, k=1, bm=block, programs=_cdiv(largest, block), steps=1,
               pad_share=_pad(largest, block))
    return out


def _pad(rows: int, block_rows: int, cols: int = 1, block_cols: int = 1) -> float:
    """Share of a grid of ``block_rows x block_cols`` tiles over ``rows x cols`` that is masked."""
    return 1.0 - rows * cols / (_cdiv(rows, block_rows) * block_rows * _cdiv(cols, block_cols) * block_cols)


def _direct_conv(anchor: Any, body: Any, schedule: Any) -> dict[str, Any]:
    """A depthwise/grouped conv as the direct template runs it: ``BLOCK_C x BLOCK_HW`` output
    tiles (channels x pixels of one image, flat or rows x columns; channels-last: pixels of all
    images x channels), ``Cg x KH x KW`` taps each
    on the CUDA cores (no tensor cores, no shared memory: described like a pointwise tile), the
    ``Cg`` loop the serial steps."""
    g = depthwise.ConvGeometry.of(anchor, body)
    s = depthwise.clamp(g, schedule)
    bc, bhw, taps = int(s["BLOCK_C"]), int(s["BLOCK_HW"]), g.cg * g.KH * g.KW
    programs = depthwise.programs(g, s)
    # the lanes of all tiles, masked ones included: a rows x columns tile pads both axes
    pad_share = 1.0 - g.N * g.pixels * g.CO / (programs * bc * bhw)
    return {"schedule": s, "warps": int(s["num_warps"]), "stages": int(s["num_stages"]),
            "itemsize": anchor.inputs[0].type.dtype.itemsize, "m": g.N * g.pixels, "n": g.CO,
            "k": taps, "bm": bhw, "bn": bc, "flops": 2.0 * g.N * g.pixels * g.CO * taps,
            "programs": programs, "steps": g.cg, "pad_share": pad_share}


def _contraction(template: str, module: Any, body: Any, s: Any) -> dict[str, Any]:
    """A contraction as a GEMM: M x N outputs in BLOCK_M x BLOCK_N tiles, K in BLOCK_K steps
    (conv2d: implicit GEMM; attention: a program's queries against all keys, BLOCK_N keys
    a step; bsr_matmul: a program's rows against one block column's nonzero blocks)."""
    anchor = module.anchor_of(body)
    out: dict[str, Any] = {"contraction": True, "itemsize": anchor.inputs[0].type.dtype.itemsize}
    bm, batch, gemms = int(s.get("BLOCK_M", 64)), 1, 1
    if template == "matmul":
        m, n, k = module.dims(body)
        batch = module.batch_of(body)
        out.update(bn=int(s.get("BLOCK_N", 64)), bk=int(s.get("BLOCK_K", 32)))
    elif template == "conv":
        w = shape_of(anchor.inputs[1])
        no, o, oh, ow = shape_of(anchor.result)
        m, n, k = no * oh * ow, o, w[1] * w[2] * w[3]
        out.update(bn=int(s.get("BLOCK_N", 64)), bk=int(s.get("BLOCK_K", 32)))
    elif template == "attention":   # Q K^T and P V: two GEMMs
        q, kk = shape_of(anchor.inputs[0]), shape_of(anchor.inputs[1])
        m, n, k, batch, gemms = q[-2], q[-1], kk[-2], _numel(q[:-2]), 2
        out.update(bn=n, bk=int(s.get("BLOCK_N", 64)))
    else:
        lay = module.layout(body)
        density = lay["nnzb"] * lay["bk"] / max(1, lay["k"] * lay["nb"])  # stored share of K
        m, n, k = lay["rows"], lay["nb"] * lay["bn"], lay["k"] * density
        out.update(bn=lay["bn"], bk=lay["bk"] * int(s.get("STEP_BLOCKS", 1)))
    grid_n = _cdiv(n, out["bn"]) if template != "attention" else 1
    out.update(m=m, n=n, k=k, batch=batch, bm=bm, grid_n=grid_n,
               flops=2.0 * gemms * m * n * k * batch, programs=_cdiv(m, bm) * grid_n * batch,
               steps=_cdiv(k, out["bk"]), pad_share=_pad(m, bm, n, out["bn"]))
    return out


def _launch(t: dict[str, Any], target: Any) -> dict[str, float]:
    """Launch, per-program and occupancy entries from ``_tile``'s description."""
    isz, warps, stages = t["itemsize"], max(1, t["warps"]), max(1, t["stages"])
    threads = warps * 32
    programs = max(1, t["programs"])
    f: dict[str, float] = {"itemsize": float(isz), "flops": _l2(t["flops"]), "bytes": _l2(t["bytes"]),
                           "intensity": _l2(t["flops"] / max(1, t["bytes"])), "m": _l2(t["m"]),
                           "n": _l2(t["n"]), "k": _l2(t["k"]), "batch": _l2(t["batch"])}
    peak = PEAK_FLOPS.get(isz, PEAK_FLOPS[4]) if t["contraction"] else 60e12
    f["roofline"] = _l2(1e6 * (max(t["flops"] / peak, t["bytes"] / DRAM_BYTES_PER_S) + LAUNCH_S))
    if t["impl"] == "library":  # the library picks its own tiling: only the problem and the impl are known
        return f
    bm, bn, bk = t["bm"], t["bn"], t["bk"]
    tile_elems = bm * bn
    sms = max(1, int(target.cores))
    waves = programs / sms
    f.update(programs=_l2(programs), waves=_l2(waves), wave_fill=programs / (math.ceil(waves) * sms),
             sm_fill=min(1.0, waves), tile_elems=_l2(tile_elems),
             elems_per_thread=_l2(tile_elems / threads), steps=_l2(t["steps"]))
    f["pad_share"] = t["pad_share"]
    smem, regs = 0, 32.0
    if t["contraction"]:
        acc = tile_elems / threads
        operand = (bm * bk + bk * bn) * isz
        smem = stages * operand
        regs += acc + (bm * bk + bk * bn) * isz / 4 / threads
        f["acc_per_thread"] = acc
        f["tile_intensity"] = _l2(2.0 * bm * bn * bk / max(1, operand))
        traffic = (t["m"] * t["k"] * t["grid_n"] + t["k"] * t["n"] * _cdiv(t["m"], bm)) * isz * t["batch"]
        f["operand_traffic"] = _l2(traffic)
        f["traffic_l2"] = traffic / max(1, target.l2_bytes)
    else:
        regs += tile_elems / threads
    f["smem"], f["smem_share"] = _l2(smem), smem / max(1, target.l1_bytes)
    f["regs_per_thread"] = regs
    by_warps = MAX_WARPS_PER_SM // warps
    by_smem = (target.l1_bytes // smem) if smem else MAX_PROGRAMS_PER_SM
    by_regs = int(REGISTERS_PER_SM // (threads * min(255.0, regs)))
    resident = max(0, min(by_warps, by_smem, by_regs, MAX_PROGRAMS_PER_SM))
    f["resident"] = float(resident)
    f["occupancy"] = min(1.0, resident * warps / MAX_WARPS_PER_SM)
    f["limit_smem"] = float(by_smem < min(by_warps, by_regs))
    f["limit_regs"] = float(by_regs < min(by_warps, by_smem))
    return f
