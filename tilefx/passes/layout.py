"""Blocked conv layout: weights ``OIHW{i}i{o}o`` and activations ``NCHW{c}c`` between convs.

The conv template (``codegen/tvm/schedules/conv.py``) puts ``reg_oc`` output
channels on the vector lanes. On PyTorch's NCHW tensors that costs, per call,
a copy of the weight into ``[OC/reg_oc, IC, KH, KW, reg_oc]`` panels and a
transposed write-back of the accumulators (channels are the vector, NCHW
stores columns contiguously). Storing tensors the way the loops read them
removes both, as oneDNN's ``nChw16c`` does:

- a conv's constant weight ``W[O, I, KH, KW]`` becomes, once at compile
  time, ``Wp[O/oc, I/ic, KH, KW, ic, oc]`` with ``oc`` the kernel's register
  width (``reg_oc``: the block factor the compiler reads from the schedule the
  kernel gets, tuned or default) and ``ic`` the block of its input (1 if the
  input stays NCHW);
- an activation between convs is stored ``[N, C/c, H, W, c]`` with ``c`` the
  producer's ``oc``: the producer's body ends with ``reshape`` + ``permute``
  into the blocked layout, and every kernel that reads it starts with
  ``permute`` + ``reshape`` back to NCHW.

As in ``packing.py`` these are index maps inside kernel bodies, never new
kernels: the TVM backend inlines them into the reads and writes, so a conv
reading a blocked input sees ``X[n, ic // c, h, w, ic % c]`` (the template
splits its reduction channel as ``(ic0, ic1)``, ``ic1`` contiguous) and one
writing a blocked output stores whole channel vectors. Any other reader is
still correct: it pays a strided read (a *layout transform*, counted by
``count_transforms``).

The blocked region grows through pointwise kernels (residual add/relu kernels
left unfused) and depthwise convs (whose block must equal their input's: the
vector is then over channels, the input load contiguous). It stops at graph
inputs and outputs, non-kernel ops (fallbacks, free reshapes), reductions
(pooling, flatten), and grouped convs: a value is blocked only if it is not
a graph output, every reader is a kernel, and at least one reader keeps the
layout (a blocked conv or a blocked pointwise kernel). So the transforms
that remain are the region's entry (a conv reading NCHW, writing blocked)
and exit (a conv writing NCHW, or a non-conv reader of a blocked value).

The result is the same computation (same loops, same summation order): the
pass is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.types import DType, TensorType
from tilefx.passes.manager import graph_pass
from tilefx.passes.packing import PackingLog
from tilefx.passes.rewrite import all_names, unique_name, use_counts

log = logging.getLogger("tilefx.passes.layout")

BlockFactor = Callable[[Op], int | None]  # dense conv kernel -> its reg_oc (None: leave it)

# index maps between the plain and the blocked layouts (see the module docstring)
TO_BLOCKED = (0, 1, 3, 4, 2)      # [N, C/c, c, H, W] -> [N, C/c, H, W, c]
FROM_BLOCKED = (0, 1, 4, 2, 3)    # [N, C/c, H, W, c] -> [N, C/c, c, H, W]
WEIGHT_UNPACK = (0, 5, 1, 4, 2, 3)  # [O/oc, I/ic, KH, KW, ic, oc] -> [O/oc, oc, I/ic, ic, KH, KW]


def block_activation(x: np.ndarray, c: int) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, C/c, H, W, c]``."""
    n, ch, h, w = x.shape
    if ch % c:
        raise ValueError(f"channel block {c} does not divide the {ch} channels")
    return np.ascontiguousarray(x.reshape(n, ch // c, c, h, w).transpose(TO_BLOCKED))


def unblock_activation(xb: np.ndarray) -> np.ndarray:
    n, cb, h, w, c = xb.shape
    return np.ascontiguousarray(xb.transpose(FROM_BLOCKED).reshape(n, cb * c, h, w))


def pack_conv_weight(w: np.ndarray, ic: int, oc: int) -> np.ndarray:
    """``W[O, I, KH, KW]`` -> ``[O/oc, I/ic, KH, KW, ic, oc]`` (``OIHW{ic}i{oc}o``)."""
    o, i, kh, kw = w.shape
    if o % oc or i % ic:
        raise ValueError(f"blocks ({ic}i, {oc}o) do not divide the weight's {list(w.shape)}")
    return np.ascontiguousarray(w.reshape(o // oc, oc, i // ic, ic, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def unpack_conv_weight(wp: np.ndarray) -> np.ndarray:
    ob, ib, kh, kw, ic, oc = wp.shape
    return np.ascontiguousarray(wp.transpose(WEIGHT_UNPACK).reshape(ob * oc, ib * ic, kh, kw))


@dataclass(frozen=True)
class Transforms:
    """Per-call layout work of a graph's conv kernels (see ``count_transforms``)."""

    weight_repacks: int      # dense convs whose weight the kernel copies into panels per call
    transposed_writes: int   # dense convs writing NCHW (channel vectors scattered along W)
    strided_reads: int       # activations read in another layout than the reader writes

    @property
    def total(self) -> int:
        return self.weight_repacks + self.transposed_writes + self.strided_reads

    def line(self) -> str:
        return (f"{self.total} layout transforms ({self.weight_repacks} weight repacks per call, "
                f"{self.transposed_writes} transposed conv writes, {self.strided_reads} activations read "
                f"in another layout)")


@dataclass
class LayoutLog(PackingLog):
    """What the pass did: its lines and the layout transforms counted before and after.

    An output of the run (the passes append, the compile record reads it). ``block_layout``
    takes any ``PackingLog`` (the compiler hands it the packing pass's log, so both passes'
    lines are reported together); only a ``LayoutLog`` gets ``before`` and ``after``."""

    before: Transforms | None = None
    after: Transforms | None = None


@dataclass(frozen=True)
class _Conv:
    """A conv kernel the pass can rewrite: where its input and weight enter the body."""

    x: int              # kernel input index of the activation read by the conv
    w: int              # kernel input index of the weight
    weight: str         # the weight constant's name
    depthwise: bool


def _anchor(body: Graph) -> Op | None:
    for op in body.ops:
        if op.name in ("matmul", "conv2d"):
            return op
    return None


def _conv_kernel(op: Op) -> Op | None:
    """The conv2d anchor of a single-result conv kernel, or None."""
    if op.name != "kernel" or op.attr("kind") != "contraction" or op.body is None or len(op.results) != 1:
        return None
    anchor = _anchor(op.body)
    if anchor is None or anchor.name != "conv2d":
        return None
    return anchor


def _conv_site(graph: Graph, producers: dict[str, Op], uses: dict[str, int], op: Op) -> _Conv | None:
    anchor = _conv_kernel(op)
    if anchor is None:
        return None
    out, res = anchor.result.type, op.result.type
    if out.dtype != DType.float32 or res.shape != out.shape or res.dtype != out.dtype:
        return None  # the kernel's result is not the conv's elementwise epilogue
    if not all(_static(v.type.shape) for v in (anchor.inputs[0], anchor.result)):
        return None  # a symbolic size (dynamic batch): blocks are compile-time shapes
    params = [v.name for v in op.body.inputs]
    x, w = anchor.inputs
    if x.name not in params or w.name not in params or x == w:
        return None
    # the body must read W only in the conv (else another op would see the packed layout)
    if sum(w in o.inputs for o in op.body.ops) != 1 or w in op.body.outputs:
        return None
    wi = params.index(w.name)
    src = producers.get(op.inputs[wi].name)
    name = src.attr("name") if src is not None and src.name == "const" else None
    if name is None or uses.get(op.inputs[wi].name, 0) != 1 or graph.constants[name].ndim != 4:
        return None
    groups = int(anchor.attr("groups", 1))
    channels = int(x.type.shape[1])
    depthwise = groups > 1 and groups == channels and int(w.type.shape[0]) == channels
    if groups > 1 and not depthwise:
        return None  # grouped: its template reads the input per group, a channel vector would gather
    return _Conv(params.index(x.name), wi, name, depthwise)


def _static(shape: tuple) -> bool:
    try:
        return all(int(d) == d for d in shape)
    except TypeError:
        return False


def _activations(op: Op) -> list[Value]:
    """The rank-4 inputs of a pointwise kernel shaped like its result (not broadcast)."""
    shape = op.results[0].type.shape
    return [v for v in op.inputs if v.type.rank == 4 and v.type.shape == shape]


def _pointwise(op: Op) -> bool:
    return (op.name == "kernel" and op.attr("kind") == "pointwise" and op.body is not None
            and len(op.results) == 1 and op.result.type.rank == 4 and bool(_activations(op)))


def _choose_blocks(graph: Graph, convs: dict[int, _Conv], factors: dict[int, int]) -> dict[str, int]:
    """value name -> channel block, for the values stored blocked (see the module docstring)."""
    blocked: dict[str, int] = {}
    # optimistic, in program order: every conv and pointwise kernel that can keep a block does
    for i, op in enumerate(graph.ops):
        if i in convs:
            c = blocked.get(op.inputs[convs[i].x].name) if convs[i].depthwise else factors.get(i)
            if c and c > 1:
                blocked[op.result.name] = c
        elif _pointwise(op):
            cs = {blocked.get(v.name) for v in _activations(op)}
            if len(cs) == 1 and None not in cs:
                blocked[op.result.name] = cs.pop()
    outputs = {v.name for v in graph.outputs}
    users = graph.users()
    index = {id(op): i for i, op in enumerate(graph.ops)}

    def keeps(reader: Op, v: str) -> bool:
        i = index[id(reader)]
        if i in convs and reader.inputs[convs[i].x].name == v:
            return True  # a blocked input is what a conv reads best, whatever it writes
        # any other read (a residual, a pointwise operand) is contiguous if the reader
        # writes the same block
        return (i in convs or _pointwise(reader)) and blocked.get(reader.results[0].name) == blocked[v]

    def ok(v: str, producer: Op) -> bool:
        if v in outputs or any(u.name != "kernel" for u in users.get(v, [])):
            return False
        i = index[id(producer)]
        if (i in convs and convs[i].depthwise) or i not in convs:  # a block inherited from inputs
            ins = [producer.inputs[convs[i].x]] if i in convs else _activations(producer)
            if any(blocked.get(x.name) != blocked[v] for x in ins):
                return False
        return any(keeps(u, v) for u in users.get(v, []))

    producers = graph.producers()
    changed = True
    while changed:  # drop values until every blocked one has a reader that keeps its layout
        changed = False
        for v in list(blocked):
            if not ok(v, producers[v]):
                del blocked[v]
                changed = True
    return blocked


@graph_pass("block_layout")
def block_layout(graph: Graph, block_factor: BlockFactor | None = None,
                 report: PackingLog | None = None) -> Graph:
    if block_factor is None:
        return graph
    producers, uses = graph.producers(), use_counts(graph)
    convs: dict[int, _Conv] = {}
    factors: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        site = _conv_site(graph, producers, uses, op)
        if site is None:
            continue
        if not site.depthwise:
            oc = block_factor(op)
            if not oc or oc <= 1 or int(op.result.type.shape[1]) % oc:
                continue
            factors[i] = int(oc)
        convs[i] = site
    if not factors:  # a depthwise conv keeps a block, it never starts one
        return graph
    blocked = _choose_blocks(graph, convs, factors)
    before = count_transforms(graph)

    taken = all_names(graph) | {v.name for op in graph.ops if op.body is not None for v in _values(op.body)}
    constants = dict(graph.constants)
    renamed: dict[str, Value] = {}  # blocked value name -> its 5-D value
    ops: list[Op] = []
    gone: set[str] = set()
    for i, op in enumerate(graph.ops):
        if op.name == "const" and op.result.name in gone:
            continue
        op = op.with_inputs(tuple(renamed.get(v.name, v) for v in op.inputs))
        if op.body is None:
            ops.append(op)
            continue
        body, inputs = op.body, list(op.inputs)
        for k, v in enumerate(op.inputs):
            if v.name in blocked:
                body = _unblock_input(body, k, v, taken)
        site = convs.get(i)
        c_in = blocked.get(op.inputs[site.x].name, 1) if site is not None else 1
        if site is not None and (not site.depthwise or c_in > 1):
            # a depthwise conv keeps its input's block (channel vectors); on NCHW it stays as is
            oc = c_in if site.depthwise else factors[i]
            w = graph.constants[site.weight]
            ic = 1 if site.depthwise else c_in
            packed_name = unique_name(f"{site.weight}_oihw{ic}i{oc}o", taken)
            constants[packed_name] = pack_conv_weight(w, ic, oc)
            pv = Value(packed_name, TensorType(op.inputs[site.w].type.dtype, constants[packed_name].shape))
            ops.append(Op("const", (), (pv,), freeze_attrs({"name": packed_name})))
            body = _unpack_weight(body, site.w, pv, taken)
            gone.add(op.inputs[site.w].name)
            inputs[site.w] = pv
            if report is not None:
                report.lines.append(f"{op.attr('name')}: {site.weight} {list(w.shape)} as "
                                    f"OIHW{ic}i{oc}o, input {'NCHW' if c_in == 1 else f'NCHW{c_in}c'}, "
                                    f"output {'NCHW%dc' % oc if op.result.name in blocked else 'NCHW'}")
        results = op.results
        if op.result.name in blocked if len(op.results) == 1 else False:
            c = blocked[op.result.name]
            body = _block_output(body, c, taken)
            r = op.result
            renamed[r.name] = Value(r.name, body.outputs[0].type)
            results = (renamed[r.name],)
        ops.append(Op(op.name, tuple(inputs), results, op.attrs, body))
    # the plain weights are read by their packed kernel only: drop them
    dropped = {producers[v].attr("name") for v in gone}
    ops = [o for o in ops if not (o.name == "const" and o.result.name in gone)]
    still = {o.attr("name") for o in ops if o.name == "const"}
    constants = {k: v for k, v in constants.items() if k not in dropped or k in still}
    out = graph.replace(ops=tuple(ops), constants=constants)
    if report is not None:
        after = count_transforms(out)
        if isinstance(report, LayoutLog):
            report.before, report.after = before, after
        report.lines.append(f"layout: {len(blocked)} activations blocked; before {before.line()}; "
                            f"after {after.line()}")
    log.info("layout: %d conv weights packed, %d activations blocked", len(convs), len(blocked))
    return out


def _unblock_input(body: Graph, index: int, outer: Value, taken: set[str]) -> Graph:
    """Body param ``index`` read from the blocked ``outer`` through permute + reshape."""
    old = body.inputs[index]
    n, ch, h, w = old.type.shape
    c = int(outer.type.shape[4]) if outer.type.rank == 5 else 1
    new_in = Value(unique_name(f"{old.name}_nchw{c}c", taken), TensorType(old.type.dtype, (n, ch // c, h, w, c))
                   if outer.type.rank != 5 else outer.type)
    t = Value(unique_name(f"{old.name}_cblocks", taken), TensorType(old.type.dtype, (n, ch // c, c, h, w)))
    permute = Op("permute", (new_in,), (t,), freeze_attrs({"dims": list(FROM_BLOCKED)}))
    reshape = Op("reshape", (t,), (old,), freeze_attrs({"shape": [int(d) for d in old.type.shape]}))
    inputs = body.inputs[:index] + (new_in,) + body.inputs[index + 1:]
    return body.replace(inputs=inputs, ops=(permute, reshape) + tuple(body.ops))


def _unpack_weight(body: Graph, index: int, packed: Value, taken: set[str]) -> Graph:
    old = body.inputs[index]
    ob, ib, kh, kw, ic, oc = packed.type.shape
    new_in = Value(packed.name, packed.type)
    t = Value(unique_name(f"{old.name}_blocks", taken), TensorType(old.type.dtype, (ob, oc, ib, ic, kh, kw)))
    permute = Op("permute", (new_in,), (t,), freeze_attrs({"dims": list(WEIGHT_UNPACK)}))
    reshape = Op("reshape", (t,), (old,), freeze_attrs({"shape": [int(d) for d in old.type.shape]}))
    inputs = body.inputs[:index] + (new_in,) + body.inputs[index + 1:]
    return body.replace(inputs=inputs, ops=(permute, reshape) + tuple(body.ops))


def _block_output(body: Graph, c: int, taken: set[str]) -> Graph:
    (old,) = body.outputs
    n, ch, h, w = old.type.shape
    dt = old.type.dtype
    t = Value(unique_name(f"{old.name}_cblocks", taken), TensorType(dt, (n, ch // c, c, h, w)))
    out = Value(unique_name(f"{old.name}_nchw{c}c", taken), TensorType(dt, (n, ch // c, h, w, c)))
    reshape = Op("reshape", (old,), (t,), freeze_attrs({"shape": [int(d) for d in t.type.shape]}))
    permute = Op("permute", (t,), (out,), freeze_attrs({"dims": list(TO_BLOCKED)}))
    return body.replace(ops=tuple(body.ops) + (reshape, permute), outputs=(out,))


def _values(body: Graph) -> list[Value]:
    return list(body.inputs) + [r for o in body.ops for r in o.results]


def _weight_prepacked(op: Op, anchor: Op) -> bool:
    producers = op.body.producers()
    reshape = producers.get(anchor.inputs[1].name)
    return reshape is not None and reshape.name == "reshape" and reshape.inputs[0].type.rank == 6


def _conv_input_param(op: Op, anchor: Op) -> str | None:
    """The body input the conv reads as its activation (through the unblocking maps or not)."""
    names = {v.name for v in op.body.inputs}
    if anchor.inputs[0].name in names:
        return anchor.inputs[0].name
    producers = op.body.producers()
    reshape = producers.get(anchor.inputs[0].name)
    perm = producers.get(reshape.inputs[0].name) if reshape is not None and reshape.name == "reshape" \
        else None
    return perm.inputs[0].name if perm is not None and perm.name == "permute" else None


def _plain_shape(v: Value) -> tuple:
    """The NCHW shape of an activation, blocked or not."""
    if v.type.rank == 5:
        n, cb, h, w, c = v.type.shape
        return (n, cb * c, h, w)
    return tuple(v.type.shape)


def count_transforms(graph: Graph) -> Transforms:
    """The layout work left per call: weights repacked by dense conv kernels, dense convs
    writing NCHW, and activations read in another layout than their reader writes (through
    the index maps: a strided read), except a conv's own input (read best blocked)."""
    repacks = transposed = strided = 0
    for op in graph.ops:
        if op.name != "kernel" or op.body is None or len(op.results) != 1:
            continue
        anchor = _conv_kernel(op)
        if anchor is not None and int(anchor.attr("groups", 1)) == 1:
            repacks += not _weight_prepacked(op, anchor)
            transposed += op.result.type.rank == 4
        conv_input = _conv_input_param(op, anchor) if anchor is not None else None
        out = op.result
        block = int(out.type.shape[4]) if out.type.rank == 5 else 1
        for k, v in enumerate(op.inputs):
            if v.type.rank not in (4, 5) or _plain_shape(v) != _plain_shape(out) or \
                    op.body.inputs[k].name == conv_input:
                continue  # not an activation shaped like the result, or the conv's input
            strided += (int(v.type.shape[4]) if v.type.rank == 5 else 1) != block
    for v in graph.outputs:
        strided += v.type.rank == 5
    return Transforms(repacks, transposed, strided)
