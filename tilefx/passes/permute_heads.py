"""Channel permutations through attention heads: where the exact ones are, and applying them.

Multi-head attention ``softmax(Q_h K_hᵀ * s + mask) V_h`` then ``concat_h(O_h) @ Wo``,
with ``Q = x @ Wq + bq`` (likewise K, V) reshaped ``[B, L, H*D] -> [B, H, L, D]``,
is unchanged by three kinds of channel permutation (float summation order aside):

(i)   within each head, one order of the head dimension applied to the output
      columns of BOTH Wq (and bq) and Wk (and bk): ``Q_h K_hᵀ`` sums over d;
(ii)  within each head, one order of V's channels applied to Wv's columns (and bv)
      and to the matching input rows of Wo: ``O_h @ Wo_h`` sums over them;
(iii) an order of whole heads, applied to Q, K, V and Wo's row groups alike.

``find_heads`` finds such sites without knowing how the model spelled the
head split. From each projection's output it tracks, for every array position,
*which projection column lands there* (a label array, size 1 on axes the
channels do not reach) through ``reshape``/``permute``/``slice`` and channel-wise
ops, up to the attention inputs (decomposed ``matmul``/``softmax``/``matmul``, or a
whole ``attention`` op), and from the attention output on to the output
projection. So separate q/k/v projections, a fused qkv projection split by
slices (GPT-2), and PyTorch's ``MultiheadAttention`` reshapes all come out as
label tables ``[H, D] -> column``. A site is only taken when every value on the
way is read by the site alone, the scores see no per-head constant (masks
broadcast over heads), and each weight is read once.

``apply_head_orders`` turns a choice (head order, per-head dim order for Q/K,
per-head dim order for V/O) into reindexed constants. What the orders are for
(grouping outlier channels for block quantization) lives in ``outliers.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import Category, get_op
from tilefx.passes.permute import ARITHMETIC, permute_constants
from tilefx.passes.rewrite import use_counts, value_readers

log = logging.getLogger("tilefx.passes.permute")

SHAPE_OPS = ("reshape", "permute", "slice")


@dataclass(frozen=True)
class Projection:
    """``x @ W [+ b]`` with constant ``W[K, N]`` (and bias ``b[N]``): the channels' source."""

    weight: Value                 # the const op result of W
    bias: Value | None            # the const op result of b
    ops: tuple[Op, ...]           # the matmul (and the bias add)
    out: Value                    # the projection's result (after the bias)


@dataclass(frozen=True)
class HeadView:
    """Where one projection's columns land in one attention operand."""

    proj: Projection
    labels: np.ndarray            # [H, D]: projection column at head h, channel d
    ops: tuple[Op, ...]           # ops between the projection and the operand
    head_axis: int | None         # the operand's batch axis holding the heads (None: one head)

    def __eq__(self, other: object) -> bool:  # arrays: compare by identity of the source
        return self is other

    __hash__ = object.__hash__


@dataclass(frozen=True)
class HeadSite:
    """One attention: Q/K/V views, and the output projection's rows per (head, channel)."""

    q: HeadView
    k: HeadView
    v: HeadView
    out_weight: Value             # the const op result of Wo [H*D, N]
    out_rows: np.ndarray          # [H, D]: row of Wo read by head h, channel d of O
    ops: tuple[Op, ...]           # the attention itself and O's way to Wo

    @property
    def heads(self) -> int:
        return int(self.q.labels.shape[0])

    @property
    def qk_dim(self) -> int:
        return int(self.q.labels.shape[1])

    @property
    def v_dim(self) -> int:
        return int(self.v.labels.shape[1])

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


# ------------------------------------------------------------- label tracking

def _reshape_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Contiguous axis groups of equal size that a row-major reshape maps onto each other."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi.append(i); pi *= src[i]; i += 1  # noqa: E702
        if j < len(dst):
            gj.append(j); pj *= dst[j]; j += 1  # noqa: E702
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i); pi *= src[i]; i += 1  # noqa: E702
            elif pj < pi and j < len(dst):
                gj.append(j); pj *= dst[j]; j += 1  # noqa: E702
            else:
                return None
        groups.append((gi, gj))
    return groups


def _static(shape: tuple) -> tuple[int, ...] | None:
    return tuple(int(d) for d in shape) if all(isinstance(d, int) for d in shape) else None


def _channel_wise(op: Op, value: Value, labels: np.ndarray, producers: dict[str, Op]) -> bool:
    """``op`` keeps ``value``'s shape and treats every channel alike (no per-channel operand)."""
    if len(op.results) != 1 or op.results[0].type.shape != value.type.shape:
        return False
    if get_op(op.name).category == Category.elementwise and len(op.inputs) == 1:
        return True
    if op.name not in ARITHMETIC or len(op.inputs) != 2:
        return False
    other = op.inputs[1] if op.inputs[0] == value else op.inputs[0]
    if other == value or producers.get(other.name) is None or producers[other.name].name != "const":
        return False
    lead = value.type.rank - other.type.rank  # broadcasting aligns from the right
    return all(other.type.shape[a - lead] == 1 for a in range(value.type.rank)
               if labels.shape[a] > 1 and a >= lead)


def compact(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every axis it is constant along cut to size 1 (it still broadcasts)."""
    for a in range(labels.ndim):
        if labels.shape[a] > 1 and (labels == np.take(labels, [0], axis=a)).all():
            labels = np.take(labels, [0], axis=a)
    return labels


def track(op: Op, value: Value, labels: np.ndarray) -> np.ndarray | None:
    """The labels of ``op``'s result, given ``labels`` of its input ``value`` (a compact array
    that broadcasts to ``value``'s shape); None if ``op`` is not a shape op it can follow."""
    out = op.results[0].type
    if op.name == "permute":
        return labels.transpose([d % value.type.rank for d in op.attr("dims")])
    if op.name == "slice":
        axis = op.attr("axis") % value.type.rank
        if labels.shape[axis] == 1:
            return labels  # constant along the cut axis: nothing to cut
        start, end, step = op.attr("start"), op.attr("end"), op.attr("step", 1)
        return np.take(labels, np.arange(start, end, step), axis=axis)
    if op.name == "reshape":
        src, dst = _static(value.type.shape), _static(out.shape)
        groups = None if src is None or dst is None else _reshape_groups(src, dst)
        if groups is None:
            return None
        full, shape = list(labels.shape), []
        for gi, gj in groups:
            if all(labels.shape[a] == 1 for a in gi):
                shape += [1] * len(gj)
            else:  # the group is spelled out (e.g. batch merged with heads), then cut again
                full = [src[a] if a in gi else full[a] for a in range(len(src))]
                shape += [dst[b] for b in gj]
        return compact(np.broadcast_to(labels, full).reshape(shape))
    return None


def track_both(op: Op, value: Value, cols: np.ndarray, rows: np.ndarray,
               producers: dict[str, Op]) -> tuple[np.ndarray, np.ndarray] | None:
    """Column and row labels through ``op``: shape ops move both; a channel-wise op keeps them."""
    if op.name in SHAPE_OPS:
        c, r = track(op, value, cols), track(op, value, rows)
        return None if c is None or r is None else (c, r)
    return (cols, rows) if _channel_wise(op, value, cols, producers) else None


def _start_labels(shape: tuple, channel_axes: tuple[int, ...],
                  cols: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Column labels ``cols`` on ``channel_axes``; row labels number every other position."""
    static = _static(shape)
    if static is None:
        return None
    row_shape = [1 if a in channel_axes else d for a, d in enumerate(static)]
    return cols, compact(np.arange(int(np.prod(row_shape))).reshape(row_shape))


def _rows_apart(rows: np.ndarray, axes: list[int]) -> bool:
    """The rows (tokens) an element comes from do not depend on ``axes`` (heads, channel)."""
    return all(rows.shape[a] == 1 for a in axes)


def _projection(graph: Graph, producers: dict[str, Op], v: Value) -> Projection | None:
    op = producers.get(v.name)
    bias = None
    ops: list[Op] = []
    if op is not None and op.name == "add" and len(op.inputs) == 2:
        a, b = op.inputs
        pa, pb = producers.get(a.name), producers.get(b.name)
        if pb is not None and pb.name == "const" and b.type.rank == 1 and pa is not None:
            bias, ops, op = b, [op], pa
        elif pa is not None and pa.name == "const" and a.type.rank == 1 and pb is not None:
            bias, ops, op = a, [op], pb
    if op is None or op.name != "matmul" or op.inputs[1].type.rank != 2:
        return None
    wop = producers.get(op.inputs[1].name)
    if wop is None or wop.name != "const" or wop.attr("name") is None:
        return None
    if graph.constants[wop.attr("name")].dtype.kind != "f":
        return None
    if bias is not None and bias.type.shape != (op.inputs[1].type.shape[1],):
        return None
    return Projection(op.inputs[1], bias, (op, *ops), v)


def _view(graph: Graph, producers: dict[str, Op], operand: Value, contract: int) -> HeadView | None:
    """Walk back from an attention operand to its projection; labels as ``[H, D]`` where D is
    the operand's axis ``contract`` and H one batch axis (or H = 1)."""
    path: list[tuple[Op, Value]] = []
    v = operand
    while True:
        proj = _projection(graph, producers, v)
        if proj is not None:
            break
        op = producers.get(v.name)
        if op is None or op.name == "const" or not op.inputs:
            return None
        # the one non-constant input is the channels' way back
        ins = [x for x in op.inputs if producers.get(x.name) is None or producers[x.name].name != "const"]
        if len(ins) != 1:
            return None
        path.append((op, ins[0]))
        v = ins[0]
    n, r = int(proj.weight.type.shape[1]), proj.out.type.rank
    start = _start_labels(proj.out.type.shape, (r - 1,), np.arange(n).reshape((1,) * (r - 1) + (n,)))
    if start is None:
        return None
    labels, rows = start
    for op, src in reversed(path):
        step = track_both(op, src, labels, rows, producers)
        if step is None:
            return None
        labels, rows = step
    rank = operand.type.rank
    contract %= rank
    wide = [a for a in range(rank) if labels.shape[a] > 1 and a != contract]
    if len(wide) > 1 or (wide and wide[0] >= rank - 2) or not _rows_apart(rows, wide + [contract]):
        return None
    head = wide[0] if wide else None
    if head is None:
        table = np.moveaxis(labels, contract, -1).reshape(1, -1)
    else:
        table = np.moveaxis(labels, (head, contract), (-2, -1)).reshape(labels.shape[head], -1)
    if table.shape[1] != operand.type.shape[contract]:
        return None
    return HeadView(proj, table, tuple(op for op, _ in path), head)


# ------------------------------------------------------------- finding sites

def _scores_to_probs(op: Op, readers: dict[str, list[Op]], producers: dict[str, Op], head: int | None,
                     outputs: set[str]) -> tuple[list[Op], Op] | None:
    """From ``Q @ Kᵀ`` along softmax and channel-wise ops to ``P @ V``; None if some
    operand on the way varies per head (a per-head mask would need reordering too)."""
    ops, v = [], op.results[0]
    while True:
        rs = readers.get(v.name, [])
        if len(rs) != 1 or v.name in outputs:
            return None
        nxt = rs[0]
        if nxt.name == "matmul" and nxt.inputs[0] == v and nxt.inputs[1] != v:
            return ops, nxt
        if nxt.name in ("softmax", "log_softmax"):
            if nxt.attr("dim") % v.type.rank != v.type.rank - 1:
                return None
        elif nxt.name == "where" or nxt.name in ARITHMETIC or \
                (get_op(nxt.name).category == Category.elementwise and len(nxt.inputs) == 1):
            for other in nxt.inputs:
                if other == v:
                    continue
                lead = v.type.rank - other.type.rank
                if head is not None and head >= lead and other.type.shape[head - lead] != 1:
                    return None
            if nxt.results[0].type.shape != v.type.shape:
                return None
        else:
            return None
        ops.append(nxt)
        v = nxt.results[0]


def _output_rows(graph: Graph, producers: dict[str, Op], readers: dict[str, list[Op]], out: Value,
                 head: int | None, heads: int, dim: int,
                 outputs: set[str]) -> tuple[Value, np.ndarray, list[Op]] | None:
    """Follow the attention output to the output projection: Wo's row of each (head, channel)."""
    rank = out.type.rank
    shape = [1] * rank
    if head is not None:
        shape[head] = heads
    shape[-1] = dim
    start = _start_labels(out.type.shape, (rank - 1,) if head is None else (head, rank - 1),
                          np.arange(heads * dim).reshape(shape))
    if start is None:
        return None
    labels, row_labels = start
    v, ops = out, []
    while True:
        rs = readers.get(v.name, [])
        if len(rs) != 1 or v.name in outputs:
            return None
        nxt = rs[0]
        if nxt.name == "matmul" and nxt.inputs[0] == v and nxt.inputs[1].type.rank == 2:
            wop = producers.get(nxt.inputs[1].name)
            if wop is None or wop.name != "const" or wop.attr("name") is None:
                return None
            if any(labels.shape[a] > 1 for a in range(v.type.rank - 1)) or labels.size != heads * dim \
                    or not _rows_apart(row_labels, [v.type.rank - 1]):
                return None
            rows = np.empty(heads * dim, dtype=np.int64)
            rows[labels.reshape(-1)] = np.arange(heads * dim)
            return nxt.inputs[1], rows.reshape(heads, dim), ops
        step = track_both(nxt, v, labels, row_labels, producers)
        if step is None:
            return None
        labels, row_labels = step
        ops.append(nxt)
        v = nxt.results[0]


def find_heads(graph: Graph) -> list[HeadSite]:
    """Every attention whose heads can be reordered exactly (see the module doc)."""
    producers = graph.producers()
    readers = value_readers(graph)
    outputs = {v.name for v in graph.outputs}
    sites = []
    for op in graph.ops:
        site = None
        if op.name == "attention":
            site = _site_whole(graph, producers, readers, outputs, op)
        elif op.name == "matmul" and op.inputs[1].type.rank >= 3 and op.inputs[0].type.rank == \
                op.inputs[1].type.rank and all(producers.get(x.name) is not None and
                                               producers[x.name].name != "const" for x in op.inputs):
            site = _site_decomposed(graph, producers, readers, outputs, op)
        if site is not None and _owned(site, readers, outputs):
            sites.append(site)
    # a weight reordered by two sites would be right for one of them only
    counts: dict[str, int] = {}
    for s in sites:
        for w in site_weights(s):
            counts[w] = counts.get(w, 0) + 1
    uses = use_counts(graph)
    return [s for s in sites if all(counts[w] == 1 and uses.get(w, 0) == 1 for w in site_weights(s))]


def site_weights(site: HeadSite) -> set[str]:
    """Names of the values holding the site's projection weights and biases and Wo."""
    out = {site.out_weight.name}
    for view in (site.q, site.k, site.v):
        out.add(view.proj.weight.name)
        if view.proj.bias is not None:
            out.add(view.proj.bias.name)
    return out


def _views_agree(qv: HeadView, kv: HeadView, vv: HeadView) -> bool:
    """Q and K alike (heads, dim, head axis), V with as many heads on the same axis, and no
    projection column read by two of them (each gets its own order)."""
    if qv.labels.shape != kv.labels.shape or vv.labels.shape[0] != qv.labels.shape[0] or \
            not qv.head_axis == kv.head_axis == vv.head_axis:
        return False
    by_weight: dict[str, list[np.ndarray]] = {}
    for view in (qv, kv, vv):
        by_weight.setdefault(view.proj.weight.name, []).append(view.labels.reshape(-1))
    return all(len(np.unique(np.concatenate(ls))) == sum(len(x) for x in ls) for ls in by_weight.values())


def _site_decomposed(graph: Graph, producers: dict[str, Op], readers: dict[str, list[Op]],
                     outputs: set[str], qk: Op) -> HeadSite | None:
    q, kt = qk.inputs
    rank = q.type.rank
    qv, kv = _view(graph, producers, q, rank - 1), _view(graph, producers, kt, rank - 2)
    if qv is None or kv is None:
        return None
    chain = _scores_to_probs(qk, readers, producers, qv.head_axis, outputs)
    if chain is None:
        return None
    mid, pv = chain
    v = pv.inputs[1]
    vv = _view(graph, producers, v, rank - 1)
    if vv is None or not _views_agree(qv, kv, vv):
        return None
    tail = _output_rows(graph, producers, readers, pv.results[0], qv.head_axis, *vv.labels.shape, outputs)
    if tail is None:
        return None
    wo, rows, ops = tail
    return HeadSite(qv, kv, vv, wo, rows, (qk, *mid, pv, *ops))


def _site_whole(graph: Graph, producers: dict[str, Op], readers: dict[str, list[Op]],
                outputs: set[str], att: Op) -> HeadSite | None:
    q, k, v = att.inputs[:3]
    rank = q.type.rank
    if k.type.rank != rank or v.type.rank != rank:
        return None
    views = [_view(graph, producers, x, rank - 1) for x in (q, k, v)]
    if any(x is None for x in views):
        return None
    qv, kv, vv = views
    head = qv.head_axis
    if not _views_agree(qv, kv, vv):
        return None
    if len(att.inputs) == 4 and head is not None:
        mask = att.inputs[3]  # a per-head mask would have to be reordered too
        lead = rank - mask.type.rank
        if head >= lead and mask.type.shape[head - lead] != 1:
            return None
    tail = _output_rows(graph, producers, readers, att.results[0], head, *vv.labels.shape, outputs)
    if tail is None:
        return None
    wo, rows, ops = tail
    return HeadSite(qv, kv, vv, wo, rows, (att, *ops))


def _owned(site: HeadSite, readers: dict[str, list[Op]], outputs: set[str]) -> bool:
    """Every value on the way is read only by ops of this site (and is no graph output)."""
    mine = set(site.ops)
    for view in (site.q, site.k, site.v):
        mine |= set(view.ops) | set(view.proj.ops)
    for op in mine:
        for r in op.results:
            if r.name in outputs:
                return False
            if op in site.ops[-1:]:
                continue  # the last op of the site feeds Wo's matmul: read by it alone (checked)
            if any(x not in mine for x in readers.get(r.name, [])):
                return False
    return True


# ------------------------------------------------------------- applying orders

@dataclass(frozen=True)
class HeadOrders:
    """A choice for one site. New head ``h`` takes old head ``heads[h]``; within it, new Q/K
    channel ``d`` takes old channel ``qk[h, d]`` and new V/O channel ``d`` old ``v[h, d]``
    (both numbered within the old head ``heads[h]``)."""

    heads: np.ndarray             # [H]
    qk: np.ndarray                # [H, Dqk]
    v: np.ndarray                 # [H, Dv]

    @staticmethod
    def identity(site: HeadSite) -> HeadOrders:
        h = site.heads
        return HeadOrders(np.arange(h), np.tile(np.arange(site.qk_dim), (h, 1)),
                          np.tile(np.arange(site.v_dim), (h, 1)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadOrders) and all(
            np.array_equal(a, b) for a, b in ((self.heads, other.heads), (self.qk, other.qk), (self.v, other.v)))

    __hash__ = None  # type: ignore[assignment]


def _gather(table: np.ndarray, heads: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """``table[heads[h], dims[h, d]]`` for every new (h, d)."""
    return table[heads[:, None], dims]


def apply_head_orders(graph: Graph, choices: list[tuple[HeadSite, HeadOrders]]) -> Graph:
    """Reindex the projections' columns (and biases) and Wo's rows of each site."""
    todo: dict[str, list[tuple[int, np.ndarray]]] = {}
    perms: dict[str, np.ndarray] = {}  # projection weight -> column order (shared by q/k/v)
    for site, o in choices:
        for view, dims in ((site.q, o.qk), (site.k, o.qk), (site.v, o.v)):
            n = int(view.proj.weight.type.shape[1])
            perm = perms.setdefault(view.proj.weight.name, np.arange(n))
            perm[view.labels.reshape(-1)] = _gather(view.labels, o.heads, dims).reshape(-1)
        for view in (site.q, site.k, site.v):
            if view.proj.weight.name in todo:
                continue
            perm = perms[view.proj.weight.name]
            todo[view.proj.weight.name] = [(1, perm)]
            if view.proj.bias is not None:
                todo[view.proj.bias.name] = [(0, perm)]
        rows = np.arange(int(site.out_weight.type.shape[0]))
        rows[site.out_rows.reshape(-1)] = _gather(site.out_rows, o.heads, o.v).reshape(-1)
        todo[site.out_weight.name] = [(0, rows)]
    return permute_constants(graph, todo)
