"""Fusion: group the compute ops of a graph into ``kernel`` ops (after TVM FuseOps).

Ops are visited in order; each one either joins the group(s) of the ops that
produce its inputs or starts a group of its own. What may join what is the
table ``JOIN_RULES`` (by op category; ``JOIN_BY_NAME`` for reshape), read as
"an op of this category may join a producer group of these kinds":

====================  ==========================================================
op category           joins
====================  ==========================================================
elementwise,          the one anchored (contraction/reduction) producer group
broadcast             whose anchor result has the op's result shape (an
                      *epilogue*: matmul+add+gelu, conv+add+relu, softmax*x),
                      bringing along producer groups of injective ops only that
                      nothing else reads (a sliced mask); otherwise every
                      pointwise producer group (chains, diamonds)
injective             every pointwise producer group (never an epilogue)
reshape               its producer's group if that group is pointwise; else it
                      stays at the top level as a free view of its input
reduction             pointwise producer groups, as a *prologue* (exp -> sum,
                      x + residual -> layer_norm)
contraction           producer groups of injective ops only, read by nothing
                      else (permute(k) -> matmul)
====================  ==========================================================

So a kernel holds at most one contraction or one reduction, never both.
A value used outside its group becomes an extra output of the kernel
(multi-output kernels) rather than stopping the fusion: the residual stream of
a transformer is written once by the kernel that also normalizes it.
A merge that would create a cycle (a group reading, through an op outside it,
a value it produces) is refused. A ``reshape`` left at the end of a group is
peeled off to the top level, where the runtime makes it a free view.

A step-1 ``slice`` that only the graph returns stays at the top level too: the
runtime hands out a strided view of its input, as eager does.

A ``cast`` of a named constant stays at the top level, fused into nothing: it is
how a bf16 weight is held (numpy has no bfloat16, so the frontend and constant
folding keep ``cast(const f32 -> bf16)``), and the runtime casts it once when it
loads the graph. Fused into its readers it would make bf16 graphs differ from
fp16 ones (a kernel per weight cast, or a reduction exporting a cast parameter),
and kernels would read f32 weights on every call.

After fusion the top level holds only ``const``, ``kernel``, ``fallback``,
standalone ``reshape``, output ``slice`` and constant ``cast`` ops. A kernel's ``body`` is the
subgraph: its inputs bind to the kernel's inputs (outside values, constants
included), its outputs are the kernel's results; value names are kept from the graph. Rank-0 scalar
constants are copied into the body rather than passed in. ``kind`` is
``contraction`` if the group has a matmul/conv2d, else ``reduction`` if it has a
reduction-category op, else ``pointwise``. An ``attention`` op that was not
decomposed becomes a kernel of its own, kind ``contraction``, with the
injective-only producer groups nothing else reads as its prologue (the head
split of a QKV projection): nothing joins it after.

With ``flags`` (``PassOptions.epilogue_flags``: cuda) an ``any``/``all`` of a whole value a
matmul's epilogue computes joins that matmul's group as a *flag* (each program reduces its
tile, the last one stores the result: ``codegen/triton/emit.py``), and seals it: a flag is
final only when every tile is in, so nothing may read it in the same kernel. T5's fp16
``clamp(h, where(isinf(h).any(), ...))`` then costs no kernels of its own: the bounds are
computed by the kernel that reads them (the RMSNorm after), as in bf16.

With ``row_epilogues`` (``PassOptions.row_epilogues``: cuda) an elementwise op on the *input*
shape of a ``keepdim`` sum-like reduction (sum, mean, amax, amin, prod, any, all) joins that
reduction's group too: ``h * rsqrt(mean(h^2) + eps)`` written another way than the RMSNorm
pass knows, ``x - x.amax(-1, keepdim=True)``. The reduction template computes such a *row
epilogue* on the row after its reduction (in registers when the row is one tile, else a second
pass over it), where it was a kernel of its own reading the row back.

An optional *advisor* (``fuse.bind(advisor=...)``, ``PassOptions.fusion_advisor``)
is asked at each merge that puts an epilogue or prologue into a contraction or
reduction group: ``advisor.should_fuse(fused_kernel, separate_kernels)`` gets the
would-be fused ``kernel`` op and the kernels it would replace and returns
whether to merge; on "no" the op is grouped as if the anchor were not there.
The pass itself never builds or times code: the advisor (``cost_model.advisor``,
handed in by the compiler) does. Without one the rules above decide alone.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.ops import Category, get_op
from tilefx.ir.ops.nn import REDUCTIONS
from tilefx.ir.ops.shape_ops import is_narrow
from tilefx.ir.types import Dim, dims_equal
from tilefx.passes.channels_last import TO_NCHW, TO_NHWC
from tilefx.passes.cleanup import dce
from tilefx.passes.manager import graph_pass
from tilefx.passes.split_reduction import FLAGS

log = logging.getLogger("tilefx.passes.fusion")

TOP_LEVEL_OPS = frozenset({"const", "kernel", "fallback"})


class FusionAdvisor(Protocol):
    """What fusion asks at a merge into an anchored group (``PassOptions.fusion_advisor``;
    the compiler's is ``cost_model.advisor.FusionAdvisor``)."""

    def should_fuse(self, fused: Op, separate: Sequence[Op]) -> bool:
        """Whether the would-be ``fused`` kernel op beats the ``separate`` kernels it replaces."""
        ...


# How an op joins the groups of its producers: op category -> rule (a ``join_*``
# method below). Other opaque compute is "alone".
JOIN_RULES: dict[Category, str] = {
    Category.elementwise: "epilogue_or_pointwise",
    Category.broadcast: "epilogue_or_pointwise",
    Category.injective: "pointwise",
    Category.reduction: "prologue",
    Category.contraction: "injective_prologue",
}
JOIN_BY_NAME: dict[str, str] = {"reshape": "view", "attention": "attention"}
CHANNELS_LAST = (TO_NHWC, TO_NCHW)  # a channels-last region's permutes
DATA_MOVEMENT = frozenset({"broadcast_to"})  # not injective, but moves data only: a prologue may read it
ANCHORS: dict[Category, str] = {Category.reduction: "reduction", Category.contraction: "contraction"}


@dataclass
class _Group:
    gid: int
    members: list[int] = field(default_factory=list)
    fusible: bool = True  # False for top-level ops (const, fallback, views)
    anchor: str | None = None  # "contraction" | "reduction" once the group has one
    anchor_shape: tuple[Dim, ...] | None = None  # the epilogue's iteration domain
    injective_only: bool = True
    sealed: bool = False
    row_shape: tuple[Dim, ...] | None = None  # a keepdim reduction's input shape (row epilogues)


def _same_shape(a: tuple[Dim, ...], b: tuple[Dim, ...] | None) -> bool:
    return b is not None and len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


class _Fuser:
    def __init__(self, graph: Graph, advisor: FusionAdvisor | None = None, flags: bool = False,
                 row_epilogues: bool = False) -> None:
        self.graph = graph
        self.advisor = advisor
        self.flags = flags
        self.row_epilogues = row_epilogues
        self.ops = graph.ops
        self.producer: dict[str, int] = {r.name: i for i, op in enumerate(self.ops) for r in op.results}
        self.users: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for v in dict.fromkeys(op.inputs):
                self.users.setdefault(v.name, []).append(i)
        self.outputs = {v.name for v in graph.outputs}
        self.group_of: list[int] = []
        self.groups: dict[int, _Group] = {}
        self._next_gid = 0

    # --- group bookkeeping ---------------------------------------------
    def new_group(self, i: int, **flags: object) -> _Group:
        g = _Group(-1, [i], **flags)  # type: ignore[arg-type]
        self.group_of.append(self.new_group_id(g))
        return g

    def new_group_id(self, g: _Group) -> int:
        g.gid = self._next_gid
        self._next_gid += 1
        self.groups[g.gid] = g
        return g.gid

    def input_groups(self, i: int) -> list[int]:
        """Fusible, unsealed groups producing op ``i``'s inputs, in input order."""
        out: list[int] = []
        for v in self.ops[i].inputs:
            j = self.producer.get(v.name)
            if j is None:
                continue
            g = self.groups[self.group_of[j]]
            if g.fusible and not g.sealed and g.gid not in out:
                out.append(g.gid)
        return out

    def successors(self, gid: int) -> set[int]:
        out: set[int] = set()
        for m in self.groups[gid].members:
            for r in self.ops[m].results:
                for u in self.users.get(r.name, ()):
                    if u < len(self.group_of):
                        out.add(self.group_of[u])
        out.discard(gid)
        return out

    def creates_cycle(self, i: int, merged: list[int]) -> bool:
        """Would groups ``merged`` plus op ``i`` read, through an outside group, their own output?"""
        inside = set(merged)
        members = [m for g in merged for m in self.groups[g].members] + [i]
        outside_producers = {self.group_of[self.producer[v.name]] for m in members
                             for v in self.ops[m].inputs if v.name in self.producer} - inside
        outside_producers.discard(self.group_of[i] if i < len(self.group_of) else -1)
        if not outside_producers:
            return False
        frontier = [s for g in merged for s in self.successors(g) if s not in inside]
        seen: set[int] = set()
        while frontier:
            g = frontier.pop()
            if g in seen or g in inside:
                continue
            if g in outside_producers:
                return True
            seen.add(g)
            frontier.extend(self.successors(g))
        return False

    def merge(self, i: int, candidates: list[int]) -> _Group | None:
        """Greedily merge op ``i`` into as many of ``candidates`` as stay acyclic."""
        chosen: list[int] = []
        for g in candidates:
            if not self.creates_cycle(i, chosen + [g]):
                chosen.append(g)
        if not chosen:
            return None
        target = self.groups[chosen[0]]
        for gid in chosen[1:]:
            other = self.groups.pop(gid)
            for m in other.members:
                self.group_of[m] = target.gid
            target.members.extend(other.members)
            target.injective_only &= other.injective_only
            if other.anchor:  # at most one anchored group is ever chosen
                target.anchor, target.anchor_shape = other.anchor, other.anchor_shape
                target.row_shape = other.row_shape
        target.members.append(i)
        target.members.sort()
        self.group_of.append(target.gid)
        return target

    def acyclic(self, i: int, candidates: list[int]) -> list[int]:
        """The groups of ``candidates`` that ``merge`` would take (it picks the same ones)."""
        chosen: list[int] = []
        for g in candidates:
            if not self.creates_cycle(i, chosen + [g]):
                chosen.append(g)
        return chosen

    def advised(self, i: int, groups: Sequence[int]) -> bool:
        """The advisor's word on merging op ``i`` with ``groups`` (asked only where an anchor is involved)."""
        anchored = any(self.groups[g].anchor for g in groups) or \
            get_op(self.ops[i].name).category in ANCHORS
        if self.advisor is None or not groups or not anchored:
            return True
        fused = self.kernel_op(_Group(-1, sorted([m for g in groups for m in self.groups[g].members] + [i])),
                               "advice_fused")
        separate = [self.kernel_op(self.groups[g], f"advice_part{n}") for n, g in enumerate(groups)]
        separate.append(self.kernel_op(_Group(-1, [i]), f"advice_part{len(groups)}"))
        return bool(self.advisor.should_fuse(fused, separate))

    def exported_only_to(self, gid: int, i: int) -> bool:
        """Every value of group ``gid`` that leaves it is read by op ``i`` alone."""
        members = set(self.groups[gid].members)
        for m in members:
            for r in self.ops[m].results:
                readers = set(self.users.get(r.name, ())) - members
                if r.name in self.outputs or readers - {i}:
                    return False
        return True

    # --- the join rules (JOIN_RULES names one of these per op category) ----
    def constant_cast(self, op: Op) -> bool:
        """A ``cast`` of a named constant (a bf16 weight): the runtime casts it once."""
        if op.name != "cast":
            return False
        j = self.producer.get(op.inputs[0].name)
        return j is not None and self.ops[j].name == "const" and self.ops[j].attr("name") is not None

    def output_slice(self, op: Op) -> bool:
        """A step-1 ``slice`` that only the graph returns: the runtime hands out a strided view of
        its input (as eager's ``x[..., :n]`` does) instead of a kernel copying it (GPT-2's logits
        sliced back from their padded columns: a 216 us copy on an H200)."""
        return is_narrow(op) and op.result.name in self.outputs and not self.users.get(op.result.name)

    def visit(self, i: int) -> None:
        op = self.ops[i]
        if op.name in TOP_LEVEL_OPS or self.constant_cast(op) or self.output_slice(op):
            self.new_group(i, fusible=False)
            return
        category = get_op(op.name).category
        flagged = self.join_flag(i) if self.flags else None
        if flagged is not None:
            flagged.injective_only = False
            return
        rule = JOIN_BY_NAME.get(op.name) or JOIN_RULES.get(category, "alone")
        if op.name == "permute" and tuple(op.attr("dims")) in CHANNELS_LAST:
            rule = "channels_last"
        if op.name == "broadcast_to" and self.only_attention_reads(op.result.name):
            # GQA's repeated KV heads: the attention reads them in place, and through the data
            # movement that made them (Llama's V head permute), not a kernel writing them out
            rule = "injective_prologue"
        group = getattr(self, f"join_{rule}")(i)
        if category in ANCHORS:
            group.anchor, group.anchor_shape = ANCHORS[category], op.results[0].type.shape
            if self.row_epilogues and op.name in REDUCTIONS and op.attr("keepdim"):  # sum-like ones
                group.row_shape = op.inputs[0].type.shape
        if category != Category.injective and op.name not in DATA_MOVEMENT:
            group.injective_only = False

    def join_flag(self, i: int) -> _Group | None:
        """An ``any``/``all`` of a whole matmul epilogue value joins that matmul's group as a
        flag (and seals it); None when op ``i`` is not one."""
        op = self.ops[i]
        out = op.results[0].type
        if op.name not in FLAGS or not out.is_static or math.prod(int(d) for d in out.shape) != 1:
            return None
        j = self.producer.get(op.inputs[0].name)
        g = self.groups[self.group_of[j]] if j is not None else None
        if g is None or not g.fusible or g.sealed or g.anchor != "contraction" or \
                not _same_shape(op.inputs[0].type.shape, g.anchor_shape) or \
                not any(self.ops[m].name == "matmul" for m in g.members) or self.creates_cycle(i, [g.gid]):
            return None
        merged = self.merge(i, [g.gid])
        if merged is not None:
            merged.sealed = True
        return merged

    def pointwise_inputs(self, i: int) -> list[int]:
        return [g for g in self.input_groups(i) if self.groups[g].anchor is None]

    def join_view(self, i: int) -> _Group:
        return self.merge(i, self.pointwise_inputs(i)[:1]) or self.new_group(i, fusible=False)

    def widening_cast_for_reductions(self, i: int) -> bool:
        """A cast to a wider type that only reductions read (Llama's ``float(h)`` into its
        RMSNorm): in a matmul's epilogue it would be written out at twice the bytes of the
        matmul's own result; the reduction's prologue casts what it reads instead."""
        op = self.ops[i]
        if op.name != "cast" or op.result.type.dtype.itemsize <= op.inputs[0].type.dtype.itemsize:
            return False
        return self.only_reductions_read(i)

    def only_reductions_read(self, i: int) -> bool:
        """Op ``i``'s result is read by reductions alone (their prologue is where it belongs)."""
        name = self.ops[i].results[0].name
        readers = self.users.get(name, [])
        return bool(readers) and name not in self.outputs and all(
            get_op(self.ops[u].name).category == Category.reduction for u in readers)

    def join_epilogue_or_pointwise(self, i: int) -> _Group:
        shape = self.ops[i].results[0].type.shape
        if self.widening_cast_for_reductions(i):
            return self.join_pointwise(i)
        for g in self.input_groups(i):
            group = self.groups[g]
            # a row epilogue only reductions read is computed as their prologue instead: timm's
            # LayerNorm2d's (x - u)^2 would else be written out for the variance's kernel to read
            on_anchor = _same_shape(shape, group.anchor_shape) or (
                _same_shape(shape, group.row_shape) and not self.only_reductions_read(i))
            if group.anchor and on_anchor and not self.creates_cycle(i, [g]):
                chosen = self.acyclic(i, [g] + self.injective_inputs(i))
                if not self.advised(i, chosen):
                    break  # the advisor says the epilogue runs faster on its own
                return self.merge(i, chosen) or group  # g goes first: never None
        return self.join_pointwise(i)

    def injective_inputs(self, i: int) -> list[int]:
        """Producer groups of data movement only (permute, slice...) that nothing but op ``i`` reads."""
        return [g for g in self.pointwise_inputs(i)
                if self.groups[g].injective_only and self.exported_only_to(g, i)]

    def join_pointwise(self, i: int) -> _Group:
        return self.merge(i, self.pointwise_inputs(i)) or self.new_group(i)

    def join_prologue(self, i: int) -> _Group:
        """A reduction takes its pointwise producers in (unless the advisor says no)."""
        chosen = self.acyclic(i, self.pointwise_inputs(i))
        return (self.merge(i, chosen) if self.advised(i, chosen) else None) or self.new_group(i)

    def join_injective_prologue(self, i: int) -> _Group:
        chosen = self.acyclic(i, self.injective_inputs(i))
        return (self.merge(i, chosen) if self.advised(i, chosen) else None) or self.new_group(i)

    def join_channels_last(self, i: int) -> _Group:
        """The permutes of a channels-last region (passes/channels_last.py) stay with their conv:
        NCHW -> NHWC of a conv's result is its epilogue (stored NHWC; the epilogue's shape is NHWC
        from there), NHWC -> NCHW of a conv's input its prologue (cuDNN reads the view as
        channels-last), never a transposing store of the pointwise kernel before it."""
        op = self.ops[i]
        readers = self.users.get(op.result.name, [])
        if op.attr("dims") == CHANNELS_LAST[1]:
            if len(readers) == 1 and self.ops[readers[0]].name == "conv2d" \
                    and op.result.name not in self.outputs:
                return self.new_group(i)  # the conv takes it in as its prologue
            return self.join_pointwise(i)
        j = self.producer.get(op.inputs[0].name)
        # every conv template stores NHWC (the library through a view of cuDNN's NHWC result); the
        # direct template's channels-last tiling is for NHWC inputs (a region's), not NCHW ones
        if j is not None and self.ops[j].name == "conv2d" and (
                self.ops[j].attr("groups") == 1 or self.reads_nhwc(self.ops[j])):
            g = self.groups[self.group_of[j]]
            if g.fusible and not g.sealed and _same_shape(op.inputs[0].type.shape, g.anchor_shape):
                merged = self.merge(i, [g.gid])
                if merged is not None:
                    merged.anchor_shape = op.result.type.shape
                    return merged
        return self.join_pointwise(i)

    def reads_nhwc(self, conv: Op) -> bool:
        k = self.producer.get(conv.inputs[0].name)
        return k is not None and self.ops[k].name == "permute" and tuple(self.ops[k].attr("dims")) == TO_NCHW

    def only_attention_reads(self, name: str) -> bool:
        """Whether every reader of ``name`` is an ``attention`` (through reshapes)."""
        readers = [self.ops[u] for u in self.users.get(name, ())]
        return bool(readers) and name not in self.outputs and all(
            r.name == "attention" or (r.name == "reshape" and self.only_attention_reads(r.result.name))
            for r in readers)

    def join_attention(self, i: int) -> _Group:
        """An ``attention`` left whole reads its q, k, v through the data movement that made
        them (GPT-2's head split ``slice+reshape+permute`` of the QKV projection, Llama's KV
        heads repeated for GQA): no copy of each. Nothing joins it after."""
        group = self.join_injective_prologue(i)
        group.anchor, group.sealed = "contraction", True
        return group

    def join_alone(self, i: int) -> _Group:
        return self.new_group(i, anchor="contraction", sealed=True)

    def peel_trailing_reshapes(self) -> None:
        """A reshape nothing in its group reads leaves the group: the runtime views it for free."""
        for g in list(self.groups.values()):
            if not g.fusible:
                continue
            for m in reversed(list(g.members)):  # reversed: a peeled reshape may expose another
                op = self.ops[m]
                if op.name == "reshape" and len(g.members) > 1 \
                        and not set(self.users.get(op.result.name, ())) & set(g.members):
                    g.members.remove(m)
                    self.group_of[m] = self.new_group_id(_Group(-1, [m], fusible=False))

    # --- building the fused graph ----------------------------------------
    def order(self) -> list[_Group]:
        """Groups in a topological order, stable by their first op."""
        deps: dict[int, set[int]] = {gid: set() for gid in self.groups}
        for gid, g in self.groups.items():
            for m in g.members:
                for v in self.ops[m].inputs:
                    j = self.producer.get(v.name)
                    if j is not None and self.group_of[j] != gid:
                        deps[gid].add(self.group_of[j])
        readers: dict[int, list[int]] = {gid: [] for gid in self.groups}
        for gid, ds in deps.items():
            for d in ds:
                readers[d].append(gid)
        ready = [(g.members[0], gid) for gid, g in self.groups.items() if not deps[gid]]
        heapq.heapify(ready)
        out: list[_Group] = []
        while ready:
            _, gid = heapq.heappop(ready)
            out.append(self.groups[gid])
            for r in readers[gid]:
                deps[r].discard(gid)
                if not deps[r]:
                    heapq.heappush(ready, (self.groups[r].members[0], r))
        if len(out) != len(self.groups):
            stuck = [self.ops[self.groups[g].members[0]].name for g in deps if deps[g]]
            raise RuntimeError(f"fusion produced a cycle among groups starting at {stuck}")
        return out

    def kernel_op(self, g: _Group, name: str) -> Op:
        members = set(g.members)
        body_consts: dict[str, Op] = {}
        inputs: dict[str, Value] = {}
        for m in g.members:
            for v in self.ops[m].inputs:
                j = self.producer.get(v.name)
                if j is not None and j in members:
                    continue
                src = self.ops[j] if j is not None else None
                if src is not None and src.name == "const" and src.attr("value") is not None:
                    body_consts.setdefault(v.name, src)
                else:
                    inputs.setdefault(v.name, v)
        exports = [r for m in g.members for r in self.ops[m].results
                   if r.name in self.outputs or set(self.users.get(r.name, ())) - members]
        body = Graph(name, tuple(inputs.values()), tuple(body_consts.values()) +
                     tuple(self.ops[m] for m in g.members), tuple(exports), {})
        has = {get_op(self.ops[m].name).category for m in g.members}
        kind = ("contraction" if Category.contraction in has or g.sealed
                else "reduction" if Category.reduction in has else "pointwise")
        return Op("kernel", tuple(inputs.values()), tuple(exports),
                  freeze_attrs({"kind": kind, "name": name}), body)

    def run(self) -> Graph:
        for i in range(len(self.ops)):
            self.visit(i)
        self.peel_trailing_reshapes()
        taken = {op.attr("name") for op in self.ops if op.name == "kernel"}
        new_ops: list[Op] = []
        for g in self.order():
            if not g.fusible:
                new_ops.extend(self.ops[m] for m in g.members)
                continue
            names = list(dict.fromkeys(self.ops[m].name for m in g.members))
            stem = "_".join(names[:4]) if len(names) == 1 else "fused_" + "_".join(names[:4])
            name, n = f"{stem}_{len(taken)}", len(taken)
            while name in taken:
                n += 1
                name = f"{stem}_{n}"
            taken.add(name)
            new_ops.append(self.kernel_op(g, name))
        return self.graph.replace(ops=tuple(new_ops))


@graph_pass("fusion")
def fuse(graph: Graph, advisor: FusionAdvisor | None = None, flags: bool = False,
         row_epilogues: bool = False) -> Graph:
    fused = dce(_Fuser(graph, advisor, flags, row_epilogues).run())
    log.debug("fusion: %d ops -> %d kernels", len(graph.ops), len(kernels(fused)))
    return fused


def kernels(graph: Graph) -> list[Op]:
    """The ``kernel`` ops of a fused graph, in execution order."""
    return [op for op in graph.ops if op.name == "kernel"]
