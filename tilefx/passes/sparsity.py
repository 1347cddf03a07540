"""Sparsity: rewrite contractions with mostly-zero constant weights to ``bsr_matmul``.

Weights are constants, so their zeros are known at compile time. For each
``matmul(x, W)`` with a constant 2-D ``W[K, N]`` and each 1x1 ``conv2d`` (stride
1, no padding, one group) with a constant weight, the pass

1. measures the weight's density per block size (``BLOCKS``: the fraction of
   ``bk x bn`` blocks that hold a nonzero) — exact zeros only, never a threshold;
2. asks a ``Chooser`` whether the layer runs faster dense or block-sparse, and
   with which block (``choose(layer) -> SparseDecision``);
3. if sparse, replaces the contraction with ``bsr_matmul`` on new constants
   (``ir/ops/sparse.py``). The result is exact up to float summation order.

The pass fires only on weights at least ``MIN_ZEROS`` zero, so dense models are
untouched. ``mark_sparse_kernels`` (after fusion) gives kernels anchored on a
``bsr_matmul`` the kind ``sparse_contraction``, which selects their template.

Choosers (the seam for the learned cost model of ``tilefx/cost_model``):

- ``AnalyticalChooser``: nonzero blocks x block FLOPs at a per-block-width
  efficiency vs dense FLOPs; equivalently a break-even density per block,
  measured by ``benchmarks/sparsity.py`` (``BREAK_EVEN``).
- ``MeasuredChooser``: the analytical pick of block, then both kernels built
  and timed (the ``measure`` callable the compiler driver supplies, so this
  module never touches a backend); decisions are cached per (weight hash,
  input shape, block, target) in memory.

Every decision is kept (``chooser.decisions``) and reported per layer by the
compile record.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter

log = logging.getLogger("tilefx.passes.sparsity")

MIN_ZEROS = 0.5  # below half zeros no sparse kernel wins; the pass does not even look
Block = tuple[int, int]  # (bk, bn): rows along K, columns along N
BLOCKS: tuple[Block, ...] = ((1, 16), (4, 16), (16, 16), (4, 4), (1, 4), (1, 1))
# Density below which the block-sparse kernel beats the default dense TVM kernel,
# by block, for linear layers (row loop nest), from benchmarks/sparsity.py on
# znver4 (2 shared cores, noisy: benchmarks/results/sparsity-cpu-2026-11-26.md):
# 4x16 and 4x4 won at every tested sparsity >= 50% (batch 1..128), 1x1 only from
# 95% at batch 16. 1x1 convs (column loop nest, flat spatial vectors) broke even at
# the same densities: 50% zeros with 4x4/4x16 blocks, 70% unstructured.
BREAK_EVEN: dict[Block, float] = {(1, 16): 0.5, (4, 16): 0.5, (16, 16): 0.5, (4, 4): 0.4,
                                  (1, 4): 0.2, (1, 1): 0.05}
# On cuda (the Triton kernel, codegen/triton/sparse.py, vs cuBLAS): only blocks that
# tl.dot takes (>= 16 both ways). Measured on an H100 (benchmarks/results/
# sparsity-gpu-h100-2026-11-26.md, fp16 Linear 4096x4096, default schedule): 16x16 and
# 32x32 blocks broke even between 70% and 80% zeros (0.96-1.05x at 70%, 1.16-1.29x at 80%).
CUDA_BREAK_EVEN: dict[Block, float] = {(16, 16): 0.25, (16, 32): 0.25, (32, 16): 0.25, (32, 32): 0.25}
REPRESENTATIVE_ROWS = 16  # rows assumed for a symbolic batch when estimating/measuring


# ------------------------------------------------------------- weight helpers

def as_kn(weight: np.ndarray) -> np.ndarray:
    """The ``[K, N]`` matrix of a matmul weight or a 1x1 conv weight ``[O, I, 1, 1]``."""
    return weight if weight.ndim == 2 else weight.reshape(weight.shape[0], -1).T


def block_mask(w: np.ndarray, block: Block) -> np.ndarray:
    """``[K / bk, N / bn]`` booleans: which blocks of ``w[K, N]`` hold a nonzero."""
    bk, bn = block
    k, n = w.shape
    return (w.reshape(k // bk, bk, n // bn, bn) != 0).any(axis=(1, 3))


def block_density(w: np.ndarray, block: Block) -> float:
    return float(block_mask(w, block).mean())


def fits(shape: tuple[int, int], block: Block) -> bool:
    return shape[0] % block[0] == 0 and shape[1] % block[1] == 0


def to_bsr(w: np.ndarray, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data [nnzb, bk, bn], indices [nnzb], indptr [N/bn + 1])`` of ``w[K, N]`` by block columns."""
    bk, bn = block
    k, n = w.shape
    mask = block_mask(w, block)  # [KB, NB]
    col, kblk = np.nonzero(mask.T)  # sorted by block column, then K block
    blocks = w.reshape(k // bk, bk, n // bn, bn).transpose(2, 0, 1, 3)  # [NB, KB, bk, bn]
    data = np.ascontiguousarray(blocks[col, kblk])
    indptr = np.zeros(n // bn + 1, dtype=np.int32)
    np.cumsum(np.bincount(col, minlength=n // bn), out=indptr[1:])
    return data.astype(w.dtype), kblk.astype(np.int32), indptr


def from_bsr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, k: int) -> np.ndarray:
    """The dense ``W[K, N]`` back from ``to_bsr``'s arrays."""
    _, bk, bn = data.shape
    nb = len(indptr) - 1
    blocks = np.zeros((k // bk, nb, bk, bn), dtype=data.dtype)
    col = np.repeat(np.arange(nb), np.diff(indptr))
    blocks[indices, col] = data
    return blocks.transpose(0, 2, 1, 3).reshape(k, nb * bn)


# ------------------------------------------------------------- decisions

@dataclass(frozen=True)
class SparseLayer:
    """One candidate contraction: what a chooser sees."""

    name: str                       # the weight constant's name
    kind: str                       # "linear" | "conv1x1"
    x_shape: tuple[int, ...]        # concrete (symbolic dims replaced by REPRESENTATIVE_ROWS)
    axis: int                       # contracted axis of x
    weight: np.ndarray = field(repr=False, compare=False)  # [K, N]
    densities: tuple[tuple[Block, float], ...] = ()

    @property
    def rows(self) -> int:
        return math.prod(self.x_shape) // self.x_shape[self.axis]

    @property
    def kn(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def key(self, target: str = "") -> tuple:
        digest = hashlib.sha1(np.ascontiguousarray(self.weight).tobytes()).hexdigest()[:16]
        return (digest, self.kn, self.x_shape, self.axis, target)


@dataclass(frozen=True)
class SparseDecision:
    layer: str
    shape: str                      # "x [16, 4096] @ W [4096, 4096]"
    sparse: bool
    block: Block | None
    density: float                  # of the chosen (or best) block
    est_dense_ms: float = 0.0
    est_sparse_ms: float = 0.0
    dense_ms: float | None = None   # measured
    sparse_ms: float | None = None
    reason: str = ""

    def line(self) -> str:
        pick = f"sparse {self.block[0]}x{self.block[1]}" if self.sparse and self.block else "dense"
        blk = f"{self.block[0]}x{self.block[1]}" if self.block else "-"
        meas = (f"; measured dense {self.dense_ms:.3f} ms, sparse {self.sparse_ms:.3f} ms"
                if self.dense_ms is not None and self.sparse_ms is not None else "")
        return (f"{self.layer} {self.shape}: {pick} (block {blk} density {self.density:.3f}; "
                f"estimate dense {self.est_dense_ms:.3f} ms, sparse {self.est_sparse_ms:.3f} ms"
                f"{meas}){' ' + self.reason if self.reason else ''}")


class Chooser(Protocol):
    decisions: list[SparseDecision]

    def choose(self, layer: SparseLayer) -> SparseDecision: ...


DENSE_GFLOPS = 100.0  # the default dense kernel on the 2-core test machine, roughly


@dataclass
class AnalyticalChooser:
    """Cost = nonzero blocks x block FLOPs at the block's efficiency vs dense FLOPs."""

    break_even: dict[Block, float] = field(default_factory=lambda: dict(BREAK_EVEN))
    decisions: list[SparseDecision] = field(default_factory=list)
    dtypes: tuple[DType, ...] = (DType.float32,)  # weight dtypes worth looking at

    def estimate(self, layer: SparseLayer) -> tuple[Block | None, float, float, float]:
        """(best block, its density, dense ms, sparse ms) by the FLOP model."""
        k, n = layer.kn
        dense_ms = 2.0 * layer.rows * k * n / (DENSE_GFLOPS * 1e6)
        best: tuple[Block | None, float, float] = (None, 1.0, math.inf)
        for block, density in layer.densities:
            # at the break-even density sparse time == dense time
            even = self.break_even.get(block, 0.01)
            sparse_ms = dense_ms * density / even
            if sparse_ms < best[2]:
                best = (block, density, sparse_ms)
        return best[0], best[1], dense_ms, best[2]

    def choose(self, layer: SparseLayer) -> SparseDecision:
        block, density, dense_ms, sparse_ms = self.estimate(layer)
        d = SparseDecision(layer.name, describe(layer), block is not None and sparse_ms < dense_ms,
                           block, density, dense_ms, sparse_ms, reason="(estimate only)")
        self.decisions.append(d)
        return d


MeasureFn = Callable[[SparseLayer, Block], tuple[float, float]]  # -> (dense s, sparse s)
_DECISION_CACHE: dict[tuple, SparseDecision] = {}


@dataclass
class MeasuredChooser:
    """The estimate picks the block; a measurement of both kernels decides."""

    measure: MeasureFn
    target: str = "cpu"
    estimate: Any = field(default_factory=AnalyticalChooser)  # .estimate(layer): analytical or learned
    decisions: list[SparseDecision] = field(default_factory=list)
    margin: float = 0.5  # measure only when the estimate says sparse is < 1/margin x dense

    def choose(self, layer: SparseLayer) -> SparseDecision:
        key = layer.key(self.target)
        if key in _DECISION_CACHE:
            d = _DECISION_CACHE[key]
        else:
            block, density, est_d, est_s = self.estimate.estimate(layer)
            if block is None or est_s > est_d / self.margin:
                d = SparseDecision(layer.name, describe(layer), False, block, density, est_d, est_s,
                                   reason="(estimate: far from break-even, not measured)")
            else:
                dense_s, sparse_s = self.measure(layer, block)
                d = SparseDecision(layer.name, describe(layer), sparse_s < dense_s, block, density,
                                   est_d, est_s, dense_s * 1e3, sparse_s * 1e3)
            _DECISION_CACHE[key] = d
        self.decisions.append(d)
        return d


def describe(layer: SparseLayer) -> str:
    k, n = layer.kn
    return f"x {list(layer.x_shape)} {'conv1x1' if layer.kind == 'conv1x1' else '@'} W [{k}, {n}]"


# ------------------------------------------------------------- the passes

def _concrete(dims: tuple) -> tuple[int, ...]:
    return tuple(int(d) if getattr(d, "is_number", True) else REPRESENTATIVE_ROWS for d in dims)


def candidate(rw: Rewriter, op: Op, blocks: tuple[Block, ...] = BLOCKS,
              dtypes: tuple[DType, ...] = (DType.float32,)) -> SparseLayer | None:
    """The layer behind ``op`` if it is a contraction on a sparse enough constant weight."""
    if op.name == "matmul":
        w = rw.const_array(op.inputs[1])
        if w is None or w.ndim != 2:
            return None
        kind, axis = "linear", op.inputs[0].type.rank - 1
    elif op.name == "conv2d":
        w = rw.const_array(op.inputs[1])
        a = op.attr_dict
        if (w is None or w.shape[2:] != (1, 1) or tuple(a["stride"]) != (1, 1)
                or tuple(a["padding"]) != (0, 0) or a["groups"] != 1):
            return None
        kind, axis = "conv1x1", 1
    else:
        return None
    if op.inputs[0].type.dtype not in dtypes or w.dtype.kind != "f" or w.size == 0:
        return None
    kn = as_kn(w)
    if 1.0 - np.count_nonzero(kn) / kn.size < MIN_ZEROS:
        return None
    densities = tuple((b, block_density(kn, b)) for b in blocks if fits(kn.shape, b))
    name = rw.producer(op.inputs[1]).attr("name") or op.results[0].name
    return SparseLayer(name, kind, _concrete(op.inputs[0].type.shape), axis, kn, densities)


@graph_pass("sparsify")
def sparsify(graph: Graph, chooser: Chooser | None = None) -> Graph:
    chooser = chooser if chooser is not None else AnalyticalChooser()
    rw = Rewriter(graph)
    changed = False
    # the blocks and dtypes the chooser can price (its break-even table; cuda: >= 16x16, fp16)
    est = chooser.estimate if isinstance(getattr(chooser, "estimate", None), AnalyticalChooser) else chooser
    blocks = tuple(getattr(est, "break_even", None) or BLOCKS)
    dtypes = tuple(getattr(est, "dtypes", (DType.float32,)))
    for op in graph.ops:
        op = op.with_inputs(tuple(rw.get(v) for v in op.inputs))
        layer = candidate(rw, op, blocks, dtypes)
        decision = chooser.choose(layer) if layer is not None else None
        if decision is None or not decision.sparse or decision.block is None:
            rw.emit(op)
            continue
        log.info("sparsity: %s", decision.line())
        data, indices, indptr = to_bsr(layer.weight, decision.block)
        ins = [rw.const(data, f"{layer.name}_bsr_data"), rw.const(indices, f"{layer.name}_bsr_indices"),
               rw.const(indptr, f"{layer.name}_bsr_indptr")]
        new = rw.make_op("bsr_matmul", [op.inputs[0], *ins], {"axis": layer.axis})
        new = Op(new.name, new.inputs, op.results, new.attrs)  # keep the result's name
        rw.emit(new)
        changed = True
    return rw.finish() if changed else graph


@graph_pass("mark_sparse_kernels")
def mark_sparse_kernels(graph: Graph) -> Graph:
    """After fusion: a kernel anchored on ``bsr_matmul`` gets kind ``sparse_contraction``."""
    ops, changed = [], False
    for op in graph.ops:
        if op.name == "kernel" and op.body is not None and op.attr("kind") == "contraction" and \
                any(o.name == "bsr_matmul" for o in op.body.ops):
            attrs = {**op.attr_dict, "kind": "sparse_contraction"}
            op = Op(op.name, op.inputs, op.results, freeze_attrs(attrs), op.body)
            changed = True
        ops.append(op)
    return graph.replace(ops=tuple(ops)) if changed else graph


def sparse_layers(graph: Graph) -> list[Value]:
    """The results of the ``bsr_matmul`` ops of ``graph`` (kernel bodies included)."""
    out = []
    for op in graph.ops:
        if op.name == "bsr_matmul":
            out.append(op.result)
        if op.body is not None:
            out += sparse_layers(op.body)
    return out
