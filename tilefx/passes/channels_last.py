"""Channels-last regions for GPU convnets: NHWC between convolutions, NCHW at the edges (exact).

A user's model is NCHW. On a GPU, cuDNN's tensor-core convolutions work on NHWC
and transpose an NCHW input and output around every call: in ResNet-50 on an
H200 those ``nchwToNhwc``/``nhwcToNchw`` kernels were 16% of tilefx's GPU time
(benchmarks/results/gpu-models-h200-2026-12-03c.md), while inductor converts
the whole conv region to channels-last once. This pass does the same in the IR,
with explicit permutes, so every later pass and template sees the layout:

- a ``conv2d`` (``groups == 1``, fp16/bf16, 4-D) joins a region when its input is
  already NHWC, or when its output, or that of a conv reading the same input (a
  shortcut), reaches another such conv through elementwise ops only (the stem of
  a ResNet, followed by a max pool, stays NCHW). In a
  region it reads its input as ``permute(x_nhwc, (0, 3, 1, 2))`` (cuDNN takes that
  view as channels-last; the implicit GEMM gathers through it), a constant weight is
  held OHWI and read the same way (else cuDNN copies it to NHWC on every call), and
  its result is
  ``permute(conv, (0, 2, 3, 1))``, which the conv's epilogue stores NHWC. A 1x1
  conv without padding becomes the matmul it is,
  ``x_nhwc[N*H*W, C] @ W[C, O]``: the matmul template's tiles (or cuBLAS) with no
  gather at all (strided: of ``x_nhwc[:, ::s, ::s]``, ResNet's downsampling);
- elementwise ops reading a region value run on NHWC values: a per-channel
  constant ``[C, 1, 1]`` becomes ``[C]`` (a bias row of the matmul's epilogue).
  An op with a full-size NCHW operand stays NCHW: a small NHWC operand (an SE
  block's scale) goes back as a free reshape, the big one is never transposed;
- a reduction over spatial axes (the global average pool's ``mean(x, (2, 3))``)
  reduces the NHWC axes instead;
- a depthwise conv of 7x7 taps or more (ConvNeXt's) is always a region op, even
  on an NCHW input (transposed once; the copy is that value's region value for its
  other readers, the block's residual add): it reads ``permute(x_nhwc)`` and a
  weight held ``[KH, KW, 1, C]`` (one row of channels a tap) and its result is
  permuted to NHWC, which the direct template's channels-last tiling stores
  (``codegen/triton/depthwise.py``). On the NCHW tiling such a kernel ran at 6-8%
  of the memory roofline (one unaligned 2-byte load an output and tap); 3x3 and
  5x5 depthwise convs keep it (MobileNetV2: 1.4-2.1x faster than cuDNN's
  channels-last kernel), and the groups == 1 convs beside them stay NCHW;
- a user's own permutes between the layouts (torchvision's LayerNorm2d, ConvNeXt's
  ``permute(0, 2, 3, 1)`` before its MLP and back after) cost nothing: NHWC -> NCHW
  of an NHWC tensor makes a region value of that tensor, and NCHW -> NHWC of a
  region value is the region's tensor itself;
- every other reader (a pool, a 3x3 depthwise conv, a graph output) gets the value
  back as NCHW through one permute (a reshape when only size-1 axes move): the
  region's edge. Permutes nobody reads are dropped by ``dce``.

Only the compiler turns it on, for backends whose ``PassDefaults.channels_last``
says so (``compiler/pass_setup.py``): the CUDA target.
"""

from __future__ import annotations

import logging

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import Category, get_op
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter, value_readers

log = logging.getLogger("tilefx.passes.channels_last")

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
POINTWISE = (Category.elementwise, Category.broadcast)
DTYPES = (DType.float16, DType.bfloat16)
REDUCTIONS = ("mean", "sum", "amax", "amin")
LARGE_KERNEL_TAPS = 49


def _eligible_conv(op: Op) -> bool:
    return (op.name == "conv2d" and op.attr("groups") == 1 and op.inputs[0].type.rank == 4
            and op.inputs[0].type.dtype in DTYPES)


def _region_depthwise(op: Op) -> bool:
    """A depthwise conv of 7x7 or more taps (ConvNeXt's): NHWC always (see the module docstring)."""
    if op.name != "conv2d" or op.inputs[0].type.rank != 4 or op.inputs[0].type.dtype not in DTYPES:
        return False
    c, kh, kw = op.inputs[0].type.shape[1], *op.inputs[1].type.shape[2:]
    return op.attr("groups") == c > 1 and op.inputs[1].type.shape[1] == 1 and kh * kw >= LARGE_KERNEL_TAPS


def _pointwise(op: Op) -> bool:
    return len(op.results) == 1 and op.result.type.rank == 4 and get_op(op.name).category in POINTWISE


def _feeds_conv(readers: dict[str, list[Op]], op: Op, convs_ok: set[str]) -> bool:
    """Whether ``op``'s result reaches a region-able conv, or the user's own transpose to NHWC
    (ConvNeXt's and Swin's patchify stems before their LayerNorm), through elementwise ops only."""
    stack, seen = [op.result], set()
    while stack:
        v = stack.pop()
        for r in readers.get(v.name, ()):
            if r.name == "conv2d" and r.result.name in convs_ok and r.inputs[0].name == v.name:
                return True
            if r.name == "permute" and tuple(r.attr("dims")) == TO_NHWC:
                return True
            if _pointwise(r) and r.result.name not in seen:
                seen.add(r.result.name)
                stack.append(r.result)
    return False


def _beside_grouped(graph: Graph, readers: dict[str, list[Op]], op: Op) -> bool:
    """Whether a grouped conv that stays NCHW (a depthwise 3x3 or 5x5) reads this conv's output
    or makes its input, through elementwise ops: the direct template's NCHW tiling beat cuDNN's
    channels-last kernel 1.4-2.1x on MobileNetV2's 3x3s, so an NHWC region there would only
    add a transpose at each of its edges."""
    producers = graph.producers()
    stack, seen = [op.inputs[0]], set()
    while stack:  # upstream
        v = stack.pop()
        p = producers.get(v.name)
        if p is None or v.name in seen:
            continue
        seen.add(v.name)
        if p.name == "conv2d" and p.attr("groups") != 1 and not _region_depthwise(p):
            return True
        if _pointwise(p):
            stack.extend(p.inputs)
    stack = [op.result]
    while stack:  # downstream
        v = stack.pop()
        for r in readers.get(v.name, ()):
            if r.name == "conv2d" and r.attr("groups") != 1 and not _region_depthwise(r):
                return True
            if _pointwise(r) and r.result.name not in seen:
                seen.add(r.result.name)
                stack.append(r.result)
    return False


def _joins(readers: dict[str, list[Op]], op: Op, convs_ok: set[str]) -> bool:
    """A conv on an NCHW input starts (or joins) a region when its output feeds a conv (or is
    transposed to NHWC by the model), or a conv reading the same input does (ResNet's
    downsampling shortcut beside the block's first conv: both outputs meet in the residual add)."""
    return any(r.name == "conv2d" and r.result.name in convs_ok and r.inputs[0].name == op.inputs[0].name
               and _feeds_conv(readers, r, convs_ok) for r in readers.get(op.inputs[0].name, ()))


@graph_pass("channels_last")
def channels_last(graph: Graph) -> Graph:
    rw = Rewriter(graph)
    nhwc: dict[str, Value] = {}  # old value name -> the same data, NHWC
    convs = 0
    readers = value_readers(graph)
    convs_ok = {op.result.name for op in graph.ops
                if (_eligible_conv(op) and not _beside_grouped(graph, readers, op)) or _region_depthwise(op)}
    for op in graph.ops:
        new = None
        if op.name == "conv2d" and op.result.name in convs_ok and (
                op.inputs[0].name in nhwc or _region_depthwise(op) or _joins(readers, op, convs_ok)):
            new = _conv(rw, op, nhwc)
            convs += 1
        elif op.name == "permute" and tuple(op.attr("dims")) == TO_NHWC and op.inputs[0].name in nhwc:
            rw.replace(op.result, nhwc[op.inputs[0].name])  # the region holds exactly this tensor
            continue
        elif op.name == "permute" and tuple(op.attr("dims")) == TO_NCHW and op.result.type.dtype in DTYPES:
            new = rw.get(op.inputs[0])  # an NHWC tensor seen as NCHW: the region holds the tensor
        elif _pointwise(op) and any(v.name in nhwc for v in op.inputs):
            new = _elementwise(rw, op, nhwc)
        elif op.name in REDUCTIONS and op.inputs[0].name in nhwc:
            new = _reduction(rw, op, nhwc)
        if new is None:
            rw.emit(op)
            continue
        nhwc[op.result.name] = new
        rw.replace(op.result, _to_nchw(rw, new, op.result))
    if not convs:
        return graph
    log.debug("channels_last: %d convs in NHWC regions", convs)
    return rw.finish()


def _to_nchw(rw: Rewriter, v: Value, like: Value) -> Value:
    """``v`` (NHWC) as the NCHW value ``like``: a free reshape when only size-1 axes move
    (the axes of size > 1 keep their order: sizes alone can coincide, C = W = 3)."""
    big = [a for a in TO_NCHW if not (isinstance(v.type.shape[a], int) and v.type.shape[a] == 1)]
    if big == sorted(big):
        return rw.op("reshape", v, shape=like.type.shape)
    return rw.op("permute", v, dims=TO_NCHW)


def _input_nhwc(rw: Rewriter, x: Value, nhwc: dict[str, Value]) -> Value:
    """``x`` NHWC: its region value, else one permute (a free reshape for ``[N, C, 1, 1]``),
    which then is its region value: later readers (a residual add) use the same copy."""
    if x.name not in nhwc:
        n, c, h, w = x.type.shape
        nhwc[x.name] = rw.op("reshape", x, shape=(n, 1, 1, c)) if (h, w) == (1, 1) else \
            rw.op("permute", x, dims=TO_NHWC)
    return nhwc[x.name]


def _conv(rw: Rewriter, op: Op, nhwc: dict[str, Value]) -> Value:
    x, w = op.inputs[0], op.inputs[1]
    n, c, h, wd = x.type.shape
    o = w.type.shape[0]
    a = op.attr_dict
    weight = rw.held_array(w)
    pointwise = (tuple(w.type.shape[2:]) == (1, 1) and tuple(a["padding"]) == (0, 0)
                 and len(op.inputs) == 2 and weight is not None)
    if pointwise:  # a 1x1 conv is a matmul over the (strided) pixels: no gather at all
        xn = _input_nhwc(rw, x, nhwc)
        for axis, step, size in ((1, a["stride"][0], h), (2, a["stride"][1], wd)):
            if step != 1:  # ResNet's downsampling 1x1 convs: every other row and column
                xn = rw.op("slice", xn, axis=axis, start=0, end=size, step=step)
        rows = rw.op("reshape", xn, shape=(-1, c))
        wt = rw.typed_const(weight.reshape(o, c).T.copy(), w.type.dtype, f"{w.name}_ck")
        y = rw.op("matmul", rows, wt, hint=op.result.name)
        return rw.op("reshape", y, shape=(n, op.result.type.shape[2], op.result.type.shape[3], o))
    depthwise = _region_depthwise(op)
    if depthwise:  # the region reaches back to the input: one transpose, shared by its readers
        xin = rw.op("permute", _input_nhwc(rw, x, nhwc), dims=TO_NCHW)
    else:
        xin = rw.op("permute", nhwc[x.name], dims=TO_NCHW) if x.name in nhwc else rw.get(x)
    if weight is not None and depthwise:  # held [KH, KW, 1, C]: each tap's weights are one row
        held = rw.typed_const(np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), w.type.dtype, f"{w.name}_hwio")
        w = rw.op("permute", held, dims=(3, 2, 0, 1))
    elif weight is not None:  # held OHWI: cuDNN would otherwise copy an OIHW weight to NHWC every call
        held = rw.typed_const(np.ascontiguousarray(weight.transpose(TO_NHWC)), w.type.dtype, f"{w.name}_ohwi")
        w = rw.op("permute", held, dims=TO_NCHW)
    y = rw.op("conv2d", xin, w, *op.inputs[2:], hint=op.result.name, **a)
    return rw.op("permute", y, dims=TO_NHWC)


def _elementwise(rw: Rewriter, op: Op, nhwc: dict[str, Value]) -> Value | None:
    out = op.result.type.shape
    if any(tuple(v.type.shape) == tuple(out) and v.name not in nhwc for v in op.inputs):
        # a full-size NCHW operand (EfficientNet's x * SE scale, the scale NHWC): transposing x
        # into the region costs more than handing the small operand back as NCHW
        return None
    inputs = []
    for v in op.inputs:
        if v.name in nhwc:
            inputs.append(nhwc[v.name])
        elif v.type.numel() == 1:
            inputs.append(v)  # a scalar broadcasts in any layout
        elif (data := rw.held_array(v)) is not None and v.type.rank <= 4:
            full = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(TO_NHWC)
            while full.ndim > 1 and full.shape[0] == 1:  # [1, 1, 1, C] -> [C]: a bias row
                full = full[0]
            inputs.append(rw.typed_const(np.ascontiguousarray(full), v.type.dtype, f"{v.name}_nhwc"))
        else:
            return None  # a broadcast non-constant: leave the op in NCHW
    return rw.op(op.name, *inputs, hint=op.result.name, **dict(op.attrs))


def _reduction(rw: Rewriter, op: Op, nhwc: dict[str, Value]) -> Value | None:
    dims = op.attr("dims")
    if dims is None or not op.attr("keepdim"):
        return None  # keepdim=False would reorder the kept axes: the NCHW edge handles it
    moved = tuple(sorted(TO_NHWC.index(d % 4) for d in dims))
    return rw.op(op.name, nhwc[op.inputs[0].name], hint=op.result.name,
                 **{**dict(op.attrs), "dims": moved})
