"""Sparsity: rewrite contractions with mostly-zero constant weights to ``bsr_matmul``.

Weights are constants, so their zeros are known at compile time. For each
``matmul(x, W)`` with a constant 2-D ``W[K, N]`` and each 1x1 ``conv2d`` (stride
1, no padding, one group) with a constant weight, the pass

1. measures the weight's density per block size (``BLOCKS``: the fraction of
   ``bk x bn`` blocks that hold a nonzero) — exact zeros only, never a threshold;
2. asks a ``SparseChooser`` whether the layer runs faster dense or block-sparse,
   and with which block (``choose(layer) -> SparseDecision``);
3. if sparse, replaces the contraction with ``bsr_matmul`` on new constants
   (``ir/ops/sparse.py``). The result is exact up to float summation order.

The pass fires only on weights at least ``MIN_ZEROS`` zero, so dense models are
untouched. ``mark_sparse_kernels`` (after fusion) gives kernels anchored on a
``bsr_matmul`` the kind ``sparse_contraction``, which selects their template.

Choosers (the seam for the learned cost model of ``tilefx/cost_model``):

- ``AnalyticalChooser``: nonzero blocks x block FLOPs at a per-block-width
  efficiency vs dense FLOPs; equivalently a break-even density per block,
  measured by ``benchmarks/sparsity.py`` (``BREAK_EVEN``).
- ``MeasuredChooser``: the estimate's pick of block (a ``BlockEstimate``:
  analytical or learned), then both kernels built and timed (the ``measure``
  callable the compiler supplies, ``compiler/pass_setup.py``, so this module
  never touches a backend). Decisions are keyed by (weight digest, input shape,
  dtype, target): a chooser decides a key once, and, given a ``store``
  (``passes.decisions.DecisionStore``; the compiler's is the tuning database's
  ``pass_decisions`` table, ``storage.decisions.DatabaseDecisionStore``), keeps
  measured ones there as JSON (``SparseDecision.to_json``), so a later compile,
  in a new process too, measures nothing it measured before. A stored row that
  is not JSON or not made for this layer is reported and measured again.

2:4 semi-structured weights (at most 2 nonzeros in every 4 consecutive along
K: ``holds_2to4``) have a second sparse candidate on GPUs, a library kernel
(``codegen/triton/semi24.py``). When the chooser is told which layers it can
run (``semi24``), it estimates it at ``dense / SEMI24_SPEEDUP`` and, given a
``measure_2to4``, times it against dense; it is never chosen on an estimate
alone. A 2:4 pick becomes a ``bsr_matmul {impl = "semi24"}``, which the backend
builds with that candidate without tuning.

bf16 weights are held as ``cast(const f32 -> bf16)`` (numpy has no bf16; every
bf16 value is an f32 value): the pass reads the f32 array, converts it in f32
and casts the new block constants back to bf16, exactly.

Every decision is kept (``chooser.decisions``) and reported per layer by the
compile record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.types import DType
from tilefx.passes.decisions import DecisionStore
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
# The 2:4 library candidate's estimated speedup over dense: the sparse tensor cores' nominal
# 2x less overheads. Only an estimate: it decides what to time, never the pick itself. (On an
# H100 with torch 2.11, cuSPARSELt at 4096x4096 and <= 128 rows was 0.03-0.04x of cuBLAS
# eagerly, ~0.5 ms of host setup a call: benchmarks/sparsity_gpu.py; the timing says no.)
SEMI24_SPEEDUP = 1.6
SEMI24_BLOCK: Block = (16, 16)  # the BSR block a 2:4 weight is stored with (all blocks nonzero)
DECISION_VERSION = 1  # of the stored decision JSON; other versions are ignored


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


def holds_2to4(w_kn: Any) -> bool:
    """Whether ``W[K, N]`` (numpy or torch) has at most 2 nonzeros in every 4 consecutive
    elements along K, i.e. ``W^T`` is 2:4 row-wise."""
    k, n = w_kn.shape
    if k % 4:
        return False
    nz = (w_kn != 0).reshape(k // 4, 4, n).sum(1)
    return bool((nz <= 2).all())


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
    weight: np.ndarray = field(repr=False, compare=False)  # [K, N] (bf16: its exact f32 values)
    densities: tuple[tuple[Block, float], ...] = ()
    dtype: DType = DType.float32    # of the contraction (a bf16 weight's array is f32)
    two_four: bool = False          # the weight holds the 2:4 pattern along K

    @property
    def rows(self) -> int:
        return math.prod(self.x_shape) // self.x_shape[self.axis]

    @property
    def kn(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    @property
    def digest(self) -> str:
        return hashlib.sha1(np.ascontiguousarray(self.weight).tobytes()).hexdigest()[:16]

    def key(self, target: str = "") -> str:
        """What a decision depends on: the weight's bytes, the shapes, the dtype and the target."""
        k, n = self.kn
        return (f"{self.digest}:{self.kind}:{k}x{n}:x{list(self.x_shape)}:axis{self.axis}:"
                f"{self.dtype.short}:{target}")


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
    sparse_ms: float | None = None  # measured, of the block-sparse kernel or (impl semi24) the 2:4 one
    reason: str = ""
    impl: str = "auto"              # the bsr_matmul's impl: "semi24" for the 2:4 library kernel
    semi24_ms: float | None = None  # measured 2:4 candidate, when it was timed and lost

    def line(self) -> str:
        if self.sparse and self.impl == "semi24":
            pick = "sparse 2:4 (semi24)"
        elif self.sparse and self.block:
            pick = f"sparse {self.block[0]}x{self.block[1]}"
        else:
            pick = "dense"
        blk = f"{self.block[0]}x{self.block[1]}" if self.block else "-"
        meas = (f"; measured dense {self.dense_ms:.3f} ms, sparse {self.sparse_ms:.3f} ms"
                if self.dense_ms is not None and self.sparse_ms is not None else
                f"; measured dense {self.dense_ms:.3f} ms" if self.dense_ms is not None else "")
        if self.semi24_ms is not None:
            meas += f", 2:4 {self.semi24_ms:.3f} ms"
        return (f"{self.layer} {self.shape}: {pick} (block {blk} density {self.density:.3f}; "
                f"estimate dense {self.est_dense_ms:.3f} ms, sparse {self.est_sparse_ms:.3f} ms"
                f"{meas}){' ' + self.reason if self.reason else ''}")

    def to_json(self, layer: SparseLayer, target: str) -> str:
        """The stored form: the decision and what it was made for (weight digest, shapes,
        densities, target), for ``from_json`` to check."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ("layer", "shape")}
        d.update(version=DECISION_VERSION, digest=layer.digest, kn=list(layer.kn),
                 x_shape=list(layer.x_shape), dtype=layer.dtype.short, target=target,
                 densities=[[b[0], b[1], dens] for b, dens in layer.densities])
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(payload: dict[str, Any], layer: SparseLayer, target: str) -> SparseDecision:
        """The stored decision for ``layer``; ``ValueError`` when the row is not one (another
        version, another weight or shape, a block that does not fit, missing fields)."""
        version = payload.get("version") if isinstance(payload, dict) else None
        if version != DECISION_VERSION:
            raise ValueError(f"decision version {version!r}, want {DECISION_VERSION}")
        made_for = (payload.get("digest"), payload.get("kn"), payload.get("x_shape"),
                    payload.get("dtype"), payload.get("target"))
        want = (layer.digest, list(layer.kn), list(layer.x_shape), layer.dtype.short, target)
        if made_for != want:
            raise ValueError(f"made for {made_for}, not for this layer {want}")
        try:
            block = payload["block"]
            block = None if block is None else (int(block[0]), int(block[1]))
            opt = lambda v: None if v is None else float(v)  # noqa: E731
            d = SparseDecision(layer.name, describe(layer), bool(payload["sparse"]), block,
                               float(payload["density"]), float(payload["est_dense_ms"]),
                               float(payload["est_sparse_ms"]), opt(payload["dense_ms"]),
                               opt(payload["sparse_ms"]), str(payload["reason"]),
                               str(payload["impl"]), opt(payload["semi24_ms"]))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed decision ({type(e).__name__}: {e})") from None
        if d.impl not in ("auto", "triton", "semi24") or (block is not None and not fits(layer.kn, block)) \
                or (d.sparse and block is None) or (d.impl == "semi24" and not layer.two_four):
            raise ValueError(f"decision {d.impl} block {block} does not fit W {layer.kn}")
        return d


class SparseChooser(Protocol):
    """What ``sparsify`` asks of each candidate layer (``PassOptions.sparse_chooser``).

    ``decisions`` is an output of the run: every decision made, in order, for the
    compile record. The pass also reads, when present, the blocks and dtypes the
    chooser can price (``break_even``, ``dtypes``; of ``.estimate`` when that is an
    ``AnalyticalChooser``), and only looks at layers of those."""

    decisions: list[SparseDecision]

    def choose(self, layer: SparseLayer) -> SparseDecision: ...


DENSE_GFLOPS = 100.0  # the default dense kernel on the 2-core test machine, roughly


@dataclass
class AnalyticalChooser:
    """Cost = nonzero blocks x block FLOPs at the block's efficiency vs dense FLOPs."""

    break_even: dict[Block, float] = field(default_factory=lambda: dict(BREAK_EVEN))
    decisions: list[SparseDecision] = field(default_factory=list)
    dtypes: tuple[DType, ...] = (DType.float32,)  # weight dtypes worth looking at
    semi24: Callable[[SparseLayer], bool] | None = None  # which 2:4 layers the library kernel runs

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

    def estimate_2to4(self, layer: SparseLayer, dense_ms: float) -> float | None:
        """The 2:4 library kernel's estimated ms, or None when it cannot run ``layer``."""
        if not layer.two_four or self.semi24 is None or not fits(layer.kn, SEMI24_BLOCK) \
                or not self.semi24(layer):
            return None
        return dense_ms / SEMI24_SPEEDUP

    def choose(self, layer: SparseLayer) -> SparseDecision:
        block, density, dense_ms, sparse_ms = self.estimate(layer)
        reason = "(estimate only)"
        est24 = self.estimate_2to4(layer, dense_ms)
        if est24 is not None:  # a library kernel's speed is not modelled: only a timing may pick it
            reason = (f"(estimate only; 2:4 candidate estimated {est24:.3f} ms, not picked without "
                      "a GPU measurement)")
        d = SparseDecision(layer.name, describe(layer), block is not None and sparse_ms < dense_ms,
                           block, density, dense_ms, sparse_ms, reason=reason)
        self.decisions.append(d)
        return d


MeasureFn = Callable[[SparseLayer, Block], tuple[float, float]]  # -> (dense s, sparse s)
Measure24Fn = Callable[[SparseLayer], tuple[float, float]]       # -> (dense s, 2:4 s)


class BlockEstimate(Protocol):
    """What ``MeasuredChooser`` asks before timing anything: ``AnalyticalChooser`` or the
    learned ``cost_model.advisor.SparseEstimate``. It may also have ``estimate_2to4(layer,
    dense_ms) -> ms | None`` and ``rank_blocks(layer) -> ([(block, density, ms)], dense ms)``."""

    def estimate(self, layer: SparseLayer) -> tuple[Block | None, float, float, float]:
        """(best block, its density, dense ms, sparse ms)."""
        ...


@dataclass
class MeasuredChooser:
    """The estimate picks the block; a measurement of both kernels decides. With
    ``measure_2to4``, a 2:4 weight's library kernel is timed too, and the fastest wins."""

    measure: MeasureFn
    target: str = "cpu"
    estimate: BlockEstimate = field(default_factory=AnalyticalChooser)  # analytical or learned
    decisions: list[SparseDecision] = field(default_factory=list)
    margin: float = 0.5  # measure only when the estimate says sparse is < 1/margin x dense
    # blocks timed per layer: the estimate's best and runner-up (a learned estimate orders
    # blocks less well than it separates sparse from dense), when it can rank them
    timed_blocks: int = 2
    measure_2to4: Measure24Fn | None = None
    store: DecisionStore | None = None  # measured decisions, across compiles (the caller's)
    # this chooser's decisions by key: a weight met again (under another name) is not re-decided
    _seen: dict[str, SparseDecision] = field(default_factory=dict, init=False, repr=False)

    def choose(self, layer: SparseLayer) -> SparseDecision:
        key = layer.key(self.target) + (":2to4" if self._est24(layer, 1.0) is not None else "")
        d = self._seen.get(key)
        if d is None and self.store is not None:
            d = self._stored(key, layer)
        if d is None:
            d = self._decide(layer)
            if self.store is not None and d.dense_ms is not None:  # estimates are cheap to redo
                self.store.put(key, d.to_json(layer, self.target))
        else:  # the same weight may sit under another name in this model
            d = replace(d, layer=layer.name, shape=describe(layer))
        self._seen[key] = d
        self.decisions.append(d)
        return d

    def _stored(self, key: str, layer: SparseLayer) -> SparseDecision | None:
        text = self.store.get(key) if self.store is not None else None
        if text is None:
            return None
        try:
            payload = json.loads(text)
        except ValueError:
            log.warning("sparsity: ignoring a stored decision for %s that is not JSON; measuring "
                        "again", layer.name)
            return None
        try:
            d = SparseDecision.from_json(payload, layer, self.target)
        except ValueError as e:
            log.warning("sparsity: ignoring the stored decision for %s (%s); measuring again",
                        layer.name, e)
            return None
        return replace(d, reason=(d.reason + " " if d.reason else "") + "(from the tuning database)")

    def _est24(self, layer: SparseLayer, dense_ms: float) -> float | None:
        est = getattr(self.estimate, "estimate_2to4", None)
        return est(layer, dense_ms) if self.measure_2to4 is not None and est is not None else None

    def _decide(self, layer: SparseLayer) -> SparseDecision:
        block, density, est_d, est_s = self.estimate.estimate(layer)
        est24 = self._est24(layer, est_d)
        worth = block is not None and est_s <= est_d / self.margin
        if not worth and est24 is None:
            return SparseDecision(layer.name, describe(layer), False, block, density, est_d, est_s,
                                  reason="(estimate: far from break-even, not measured)")
        dense_s = sparse_s = semi_s = None
        if worth:
            for other, other_density in self._blocks_to_time(layer, block, est_d):
                dense_t, sparse_t = self.measure(layer, other)
                dense_s = dense_t if dense_s is None else min(dense_s, dense_t)
                if sparse_s is None or sparse_t < sparse_s:
                    sparse_s, block, density = sparse_t, other, other_density
        if est24 is not None and self.measure_2to4 is not None:
            dense24, semi_s = self.measure_2to4(layer)
            dense_s = dense24 if dense_s is None else min(dense_s, dense24)
        ms = lambda s: None if s is None else s * 1e3  # noqa: E731
        timed = [(t, name) for t, name in ((sparse_s, "block"), (semi_s, "2:4")) if t is not None]
        best_s, best = min(timed)
        if best_s >= dense_s:  # dense wins ties: a sparse pick must be measured faster
            return SparseDecision(layer.name, describe(layer), False, block, density, est_d, est_s,
                                  ms(dense_s), ms(sparse_s), semi24_ms=ms(semi_s))
        if best == "2:4":
            return SparseDecision(layer.name, describe(layer), True, SEMI24_BLOCK,
                                  dict(layer.densities).get(SEMI24_BLOCK, 1.0), est_d, est24 or 0.0,
                                  ms(dense_s), ms(semi_s), impl="semi24")
        return SparseDecision(layer.name, describe(layer), True, block, density, est_d, est_s,
                              ms(dense_s), ms(sparse_s), semi24_ms=ms(semi_s))


    def _blocks_to_time(self, layer: SparseLayer, best: Block, est_dense: float
                        ) -> list[tuple[Block, float]]:
        """The estimate's best block, then its runners-up worth a look (up to ``timed_blocks``)."""
        rank = getattr(self.estimate, "rank_blocks", None)
        if rank is None or self.timed_blocks <= 1:
            return [(best, dict(layer.densities).get(best, 1.0))]
        ranked, _ = rank(layer)
        picks = [(b, d) for b, d, ms in ranked if ms <= est_dense / self.margin]
        return picks[:self.timed_blocks] or [(best, dict(layer.densities).get(best, 1.0))]


def describe(layer: SparseLayer) -> str:
    k, n = layer.kn
    dt = "" if layer.dtype == DType.float32 else f" {layer.dtype.short}"
    return f"x [{', '.join(map(str, layer.x_shape))}]{dt} {'conv1x1' if layer.kind == 'conv1x1' else '@'} W [{k}, {n}]"


# ------------------------------------------------------------- the passes

def _concrete(dims: tuple) -> tuple[int, ...]:
    return tuple(int(d) if getattr(d, "is_number", True) else REPRESENTATIVE_ROWS for d in dims)


def constant_weight(rw: Rewriter, v: Value) -> tuple[np.ndarray, DType] | None:
    """The array behind a constant weight and its IR dtype: a ``const``, or a bf16 weight
    held as ``cast(const f32 -> bf16)`` (maybe ``permute``d: an nn.Linear weight's transpose,
    which constant folding leaves alone in bf16) whose values are bf16 already, so the cast
    is exact and the array is the weight."""
    w = rw.const_array(v)
    if w is not None:
        return w, v.type.dtype
    if v.type.dtype != DType.bfloat16:
        return None
    perms = []
    op = rw.producer(v)
    while op is not None and op.name == "permute":
        perms.append(tuple(op.attr("dims")))
        op = rw.producer(op.inputs[0])
    if op is None or op.name != "cast":
        return None
    w = rw.const_array(op.inputs[0])
    if w is None or w.dtype != np.float32 or (np.ascontiguousarray(w).view(np.uint32) & 0xFFFF).any():
        return None  # not bf16 values: the cast rounds, and the blocks would have to round alike
    for dims in reversed(perms):
        w = np.transpose(w, dims)
    return np.ascontiguousarray(w), DType.bfloat16


def _weight_name(rw: Rewriter, v: Value, fallback: str) -> str:
    op = rw.producer(v)
    while op is not None and op.name in ("cast", "permute"):
        op = rw.producer(op.inputs[0])
    return (op.attr("name") if op is not None and op.name == "const" else None) or fallback


def candidate(rw: Rewriter, op: Op, blocks: tuple[Block, ...] = BLOCKS,
              dtypes: tuple[DType, ...] = (DType.float32,)) -> SparseLayer | None:
    """The layer behind ``op`` if it is a contraction on a sparse enough constant weight."""
    if op.name not in ("matmul", "conv2d"):
        return None
    found = constant_weight(rw, op.inputs[1])
    if found is None:
        return None
    w, dtype = found
    if op.name == "matmul":
        if w.ndim != 2:
            return None
        kind, axis = "linear", op.inputs[0].type.rank - 1
    else:
        a = op.attr_dict
        if (w.shape[2:] != (1, 1) or tuple(a["stride"]) != (1, 1)
                or tuple(a["padding"]) != (0, 0) or a["groups"] != 1):
            return None
        kind, axis = "conv1x1", 1
    if op.inputs[0].type.dtype not in dtypes or dtype != op.inputs[0].type.dtype \
            or w.dtype.kind != "f" or w.size == 0:
        return None
    kn = as_kn(w)
    if 1.0 - np.count_nonzero(kn) / kn.size < MIN_ZEROS:
        return None
    densities = tuple((b, block_density(kn, b)) for b in blocks if fits(kn.shape, b))
    two_four = dtype in (DType.float16, DType.bfloat16) and holds_2to4(kn)
    name = _weight_name(rw, op.inputs[1], op.results[0].name)
    return SparseLayer(name, kind, _concrete(op.inputs[0].type.shape), axis, kn, densities, dtype,
                       two_four)


@graph_pass("sparsify")
def sparsify(graph: Graph, chooser: SparseChooser | None = None) -> Graph:
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
        if decision is None or not decision.sparse or decision.block is None \
                or not fits(layer.kn, decision.block):
            rw.emit(op)
            continue
        log.info("sparsity: %s", decision.line())
        data, indices, indptr = to_bsr(layer.weight, decision.block)
        data_v = rw.const(data, f"{layer.name}_bsr_data")
        if layer.dtype == DType.bfloat16:  # f32 blocks of bf16 values, cast back exactly
            data_v = rw.op("cast", data_v, dtype=DType.bfloat16)
        ins = [data_v, rw.const(indices, f"{layer.name}_bsr_indices"),
               rw.const(indptr, f"{layer.name}_bsr_indptr")]
        new = rw.make_op("bsr_matmul", [op.inputs[0], *ins], {"axis": layer.axis, "impl": decision.impl})
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
