"""Channel permutation: reorder hidden channels so sparse weights form fewer, fuller blocks.

Between two contractions with constant weights, ``y = f(x @ W1 + b) @ W2``
(``f`` any chain of channel-wise ops: elementwise activations, arithmetic with
constants broadcast along the channel), any permutation ``P`` of the hidden
channels is exact: ``f(x @ W1[:, P] + b[P]) @ W2[P, :] == y`` up to float
summation order. The same holds for conv2d (``groups == 1``): output channels
of the first weight (axis 0 of ``[O, I, kh, kw]``), input channels of the
second (axis 1), and every constant on the way along the channel axis.

The block-sparse kernel pays per nonzero block, so the pass picks ``P`` to
cluster the nonzeros of the sparse weights around each hidden axis into as
few ``bk x bn`` blocks as it can, before ``sparsify`` measures densities.

Method (for one hidden axis of ``H`` channels, the other axes fixed):

1. *Signature* of channel ``c``: which blocks of the fixed axes it touches, i.e.
   the block-row support of column ``c`` of the producer's ``W[K, H]`` (over
   ``K / bk`` row blocks) concatenated with the block-column support of row
   ``c`` of the consumer's ``W[H, N]`` (over ``N / bn`` column blocks).
2. *Exact clusters*: channels with identical signatures are placed together,
   in runs of ``g`` (the block size along the hidden axis), so a run costs the
   blocks of one channel. Rows of an original ``bk``-row block that was
   shuffled share their support exactly, so this alone recovers a shuffled
   block-sparse weight.
3. *Greedy* for the rest: seed a group with the channel touching the most
   blocks, then add the ``g - 1`` channels that add the fewest new blocks
   (ties: the largest overlap). Beyond ``GREEDY_LIMIT`` leftover channels the
   greedy (quadratic) gives way to a lexicographic sort of the signatures.

Hidden axes are visited in graph order, twice (a weight between two hidden
axes has both its rows and its columns reordered; the second round sees the
first round's choices), and a new order is kept only if it lowers the
nonzero-block count of the weights it touches (a coordinate descent that never
makes things worse). A chain is left alone unless one of its weights is a
sparsity candidate (>= ``MIN_ZEROS`` zeros, matmul or 1x1 conv); any value on
the way that has another reader or is a graph output stops the chain.

Every changed layer is recorded (``PermutationLog.decisions``: nonzero blocks
before/after) and reported by the compile record.

``permute_constants`` (reindex named constants) is shared with
``permute_heads.py`` (exact orders through attention heads) and ``outliers.py``
(orders that group outlier channels for block quantization).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.ops import Category, get_op
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import all_names, unique_name, use_counts, value_readers
from tilefx.passes.sparsity import MIN_ZEROS, Block, as_kn, block_mask

log = logging.getLogger("tilefx.passes.permute")

GREEDY_LIMIT = 2048  # leftover channels above this are sorted, not grouped greedily
ARITHMETIC = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")
DEFAULT_BLOCK: Block = (4, 4)


# ------------------------------------------------------------- channel ordering

def group_channels(sig: np.ndarray, g: int) -> np.ndarray:
    """An order of the rows of ``sig[H, B]`` (bool support per channel) that puts channels
    with equal or overlapping support together in aligned groups of ``g``."""
    h = sig.shape[0]
    packed = np.packbits(sig, axis=1) if sig.shape[1] else np.zeros((h, 1), np.uint8)
    _, inverse, counts = np.unique(packed, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order: list[int] = []
    leftover: list[int] = []
    # big clusters first: their aligned runs are exact; remainders go to the greedy
    for cluster in np.argsort(-counts, kind="stable"):
        members = np.flatnonzero(inverse == cluster)
        full = len(members) - len(members) % g
        order += members[:full].tolist()
        leftover += members[full:].tolist()
    if len(leftover) > GREEDY_LIMIT:
        rest = np.asarray(leftover)
        keys = packed[rest].T[::-1]  # np.lexsort: last key is the primary one
        order += rest[np.lexsort(keys)].tolist()
    else:
        order += _greedy(sig, leftover, g)
    return np.asarray(order, dtype=np.int64)


def _greedy(sig: np.ndarray, pool: list[int], g: int) -> list[int]:
    out: list[int] = []
    rest = np.asarray(pool, dtype=np.int64)
    sizes = sig.sum(axis=1)
    while len(rest):
        seed = int(np.argmax(sizes[rest]))
        group, cur = [int(rest[seed])], sig[rest[seed]].copy()
        rest = np.delete(rest, seed)
        while len(group) < g and len(rest):
            cand = sig[rest]
            new = (cand & ~cur).sum(axis=1)
            # fewest new blocks first, then the most shared ones
            best = int(np.lexsort((-(cand & cur).sum(axis=1), new))[0])
            group.append(int(rest[best]))
            cur |= cand[best]
            rest = np.delete(rest, best)
        out += group
    return out


# ------------------------------------------------------------- graph analysis

@dataclass(frozen=True)
class Weight:
    """A constant contraction weight and where its hidden axes are in the array."""

    const: Value                  # the const op's result
    name: str                     # the constant's name in graph.constants
    kind: str                     # "matmul" | "conv2d"

    @property
    def out_axis(self) -> int:    # the producer side: output channels
        return 1 if self.kind == "matmul" else 0

    @property
    def in_axis(self) -> int:     # the consumer side: contracted channels
        return 0 if self.kind == "matmul" else 1


@dataclass(frozen=True)
class Chain:
    """A hidden axis between a producer and a consumer contraction."""

    producer: Weight
    consumer: Weight
    channels: int
    extras: tuple[tuple[Value, str, int], ...]  # (const value, constant name, axis) on the way


@dataclass(frozen=True)
class LayerChange:
    layer: str
    shape: tuple[int, ...]
    block: Block
    before: int
    after: int
    total: int

    def line(self) -> str:
        return (f"{self.layer} {list(self.shape)}: nonzero {self.block[0]}x{self.block[1]} blocks "
                f"{self.before} -> {self.after} of {self.total}")


@dataclass
class PermutationLog:
    """What the pass did, layer by layer (the compile record reports it)."""

    decisions: list[LayerChange] = field(default_factory=list)


def _named_const(graph: Graph, producers: dict[str, Op], v: Value) -> str | None:
    op = producers.get(v.name)
    return op.attr("name") if op is not None and op.name == "const" else None


def _weight(graph: Graph, producers: dict[str, Op], op: Op) -> Weight | None:
    if op.name == "matmul" and len(op.inputs) == 2 and op.inputs[1].type.rank == 2:
        kind = "matmul"
    elif op.name == "conv2d" and op.attr("groups", 1) == 1 and len(op.inputs) == 2:
        kind = "conv2d"
    else:
        return None
    name = _named_const(graph, producers, op.inputs[1])
    if name is None or graph.constants[name].dtype.kind != "f":
        return None
    return Weight(op.inputs[1], name, kind)


def _channel_axis(op: Op) -> int:
    """The hidden axis of a contraction's result (last for matmul, 1 for NCHW conv)."""
    return op.results[0].type.rank - 1 if op.name == "matmul" else 1


def find_chains(graph: Graph) -> list[Chain]:
    producers = graph.producers()
    uses = use_counts(graph)
    readers = value_readers(graph)
    outputs = {v.name for v in graph.outputs}
    chains = []
    for op in graph.ops:
        first = _weight(graph, producers, op)
        if first is None:
            continue
        axis, value, extras = _channel_axis(op), op.results[0], []
        channels = value.type.shape[axis]
        while True:
            if uses.get(value.name, 0) != 1 or value.name in outputs:
                break
            nxt = readers[value.name][0]
            second = _weight(graph, producers, nxt)
            if second is not None and nxt.inputs[0] == value and nxt.inputs[1] != value and \
                    axis == (value.type.rank - 1 if nxt.name == "matmul" else 1):
                chains.append(Chain(first, second, int(channels), tuple(extras)))
                break
            step = _commutes(graph, producers, nxt, value, axis)
            if step is None:
                break
            extras += step
            value = nxt.results[0]
        # a weight read twice would be permuted for one reader only: drop such chains
    return [c for c in chains if all(uses.get(w.const.name, 0) == 1 for w in (c.producer, c.consumer))
            and all(uses.get(v.name, 0) == 1 for v, _, _ in c.extras)]


def _commutes(graph: Graph, producers: dict[str, Op], op: Op, value: Value,
              axis: int) -> list[tuple[Value, str, int]] | None:
    """The constants to permute if ``op`` commutes with a permutation of ``value``'s
    channel ``axis`` (its result keeps ``value``'s shape), else None."""
    if op.results[0].type.shape != value.type.shape or len(op.results) != 1:
        return None
    category = get_op(op.name).category
    if category == Category.elementwise and len(op.inputs) == 1:
        return []
    if op.name not in ARITHMETIC or len(op.inputs) != 2:
        return None
    other = op.inputs[1] if op.inputs[0] == value else op.inputs[0]
    if other == value:
        return None
    prod = producers.get(other.name)
    if prod is None or prod.name != "const":
        return None
    name = prod.attr("name")
    rank = other.type.rank
    caxis = axis - (value.type.rank - rank)  # numpy broadcasting aligns from the right
    if name is None or caxis < 0 or other.type.shape[caxis] == 1:
        return []  # a scalar, or constant along the channel: nothing to permute
    return [(other, name, caxis)]


# ------------------------------------------------------------- the pass

def _kn(arr: np.ndarray, kind: str) -> np.ndarray | None:
    """The ``[K, N]`` view the sparse kernel would see, or None if not a sparsity candidate."""
    if arr.ndim == 4 and arr.shape[2:] != (1, 1):
        return None
    kn = as_kn(arr)
    if kn.size == 0 or 1.0 - np.count_nonzero(kn) / kn.size < MIN_ZEROS:
        return None
    return kn


def _blocks(kn: np.ndarray | None, block: Block) -> int:
    if kn is None or kn.shape[0] % block[0] or kn.shape[1] % block[1]:
        return 0
    return int(block_mask(kn, block).sum())


def _signature(kn: np.ndarray | None, side: str, block: Block) -> np.ndarray | None:
    """Per hidden channel, the blocks it touches: producer = columns of kn, consumer = rows."""
    if kn is None:
        return None
    bk, bn = block
    k, n = kn.shape
    if side == "producer":
        return (kn.reshape(k // bk, bk, n) != 0).any(axis=1).T if k % bk == 0 else None
    return (kn.reshape(k, n // bn, bn) != 0).any(axis=2) if n % bn == 0 else None


@graph_pass("permute_channels")
def permute_channels(graph: Graph, block: Block = DEFAULT_BLOCK, rounds: int = 2,
                     report: PermutationLog | None = None) -> Graph:
    chains = find_chains(graph)
    if not chains:
        return graph
    arrays = {w.name: graph.constants[w.name] for c in chains for w in (c.producer, c.consumer)}
    kinds = {w.name: w.kind for c in chains for w in (c.producer, c.consumer)}
    kn = {name: _kn(a, kinds[name]) for name, a in arrays.items()}
    chains = [c for c in chains if kn[c.producer.name] is not None or kn[c.consumer.name] is not None]
    if not chains:
        return graph
    before = {name: _blocks(m, block) for name, m in kn.items()}
    perms = [np.arange(c.channels) for c in chains]
    for _ in range(rounds):
        for i, c in enumerate(chains):
            p, q = kn[c.producer.name], kn[c.consumer.name]
            sigs = [s for s in (_signature(p, "producer", block), _signature(q, "consumer", block))
                    if s is not None]
            g = max(block[1] if p is not None else 1, block[0] if q is not None else 1)
            if not sigs or c.channels % g:
                continue
            order = group_channels(np.concatenate(sigs, axis=1), g)
            new_p = p[:, order] if p is not None else None
            new_q = q[order, :] if q is not None else None
            if _blocks(new_p, block) + _blocks(new_q, block) < _blocks(p, block) + _blocks(q, block):
                kn[c.producer.name], kn[c.consumer.name] = (
                    new_p if p is not None else None, new_q if q is not None else None)
                perms[i] = perms[i][order]
    moved = [(c, pm) for c, pm in zip(chains, perms) if not np.array_equal(pm, np.arange(c.channels))]
    if not moved:
        return graph
    return _apply(graph, moved, block, before, kn, report)


def _apply(graph: Graph, moved: list[tuple[Chain, np.ndarray]], block: Block, before: dict[str, int],
           kn: dict[str, np.ndarray | None], report: PermutationLog | None) -> Graph:
    todo: dict[str, list[tuple[int, np.ndarray]]] = {}
    for c, perm in moved:
        for w, axis in ((c.producer, c.producer.out_axis), (c.consumer, c.consumer.in_axis)):
            todo.setdefault(w.const.name, []).append((axis, perm))
        for v, _, axis in c.extras:
            todo.setdefault(v.name, []).append((axis, perm))
    out = permute_constants(graph, todo)
    for c, _ in moved:
        for w in (c.producer, c.consumer):
            after = _blocks(kn[w.name], block)
            change = LayerChange(w.name, tuple(graph.constants[w.name].shape), block, before[w.name],
                                 after, _blocks(np.ones_like(kn[w.name]), block) if kn[w.name] is not None
                                 else 0)
            if kn[w.name] is not None and report is not None and change not in report.decisions:
                report.decisions.append(change)
            if kn[w.name] is not None:
                log.info("permute: %s", change.line())
    return out


def permute_constants(graph: Graph, todo: dict[str, list[tuple[int, np.ndarray]]]) -> Graph:
    """``graph`` with the named constants reindexed: ``todo`` maps a const op's result name to
    ``(axis, perm)`` steps, each ``arr = take(arr, perm, axis)`` in order. Every changed array
    gets a fresh name (``<name>_perm``), so a constant shared with another const op is kept."""
    if not todo:
        return graph
    taken = all_names(graph)
    constants = dict(graph.constants)
    ops = []
    for op in graph.ops:
        if op.name == "const" and op.result.name in todo and op.attr("name") is not None:
            arr = graph.constants[op.attr("name")]
            for axis, perm in todo[op.result.name]:
                arr = np.take(arr, perm, axis=axis)
            new_name = unique_name(f"{op.attr('name')}_perm", taken)
            constants[new_name] = np.ascontiguousarray(arr)
            op = Op("const", (), op.results, freeze_attrs({**op.attr_dict, "name": new_name}))
        ops.append(op)
    return graph.replace(ops=tuple(ops), constants=constants)




def nonzero_blocks(graph: Graph, block: Block = DEFAULT_BLOCK) -> dict[str, int]:
    """Nonzero ``block`` count of every sparsity-candidate contraction weight, by the name of
    its const value (kept by the pass; for tests and benchmarks: what the pass is judged by)."""
    producers = graph.producers()
    out = {}
    for op in graph.ops:
        w = _weight(graph, producers, op)
        if w is not None:
            m = _kn(graph.constants[w.name], w.kind)
            if m is not None:
                out[w.const.name] = _blocks(m, block)
    return out
