"""Features of a (Kernel, Schedule, Target): what the learned cost model sees.

A candidate is scheduled exactly as ``codegen/tvm`` builds it
(``codegen.tvm.fingerprint.scheduled_module``: 3-8 ms, no LLVM) and its loop
nest is walked in Python (``loopnest``): every buffer store with its
enclosing loops, the float operations of the stored expression, and for
every buffer access its strides and footprints at several tile levels.
These are aggregated over the stores, weighted by how often each store
runs, into one fixed-length vector, together with a detailed view of the
hottest store (per-access slots, a signature of its innermost loops), the
schedule's knobs (a fixed vocabulary over all templates), the kernel's kind,
the target's hardware facts and the hand-written ``AnalyticalModel``'s
estimate (the model learns where that one is wrong).

The last block repeats the schedule-dependent entries as differences from
the same kernel's **default schedule** (``d_<name>``). Trees split on fixed
thresholds; a workload's absolute sizes move those thresholds from kernel to
kernel, while "more parallel tasks / a larger register tile than the
default" means the same thing everywhere. ``FEATURES`` documents each entry
in one line.

``FEATURE_VERSION`` names the layout: a model is refused when its version
differs (``model.py``). Bump it whenever ``FEATURES`` or their meaning change.
Which layout a target's candidates get is its backend's ``FeatureSet``:
``LOOP_NEST`` (TVM) is this module's vector, ``TILING`` (Triton) is
``gpu_features``'s (its own names and version); ``layout_of(feature_set)``
gives (version, names).

Sizes and counts enter as ``log2(1 + x)``: latencies span orders of
magnitude and trees split better on logs. A ``FeatureCache`` (held by whoever
ranks: a ``LearnedModel`` has one per kernel search) keeps computed vectors
per (kernel structure, bindings, target, schedule) and each kernel's
default-schedule features, so the evolutionary search can rank thousands of
candidates and revisit them for free, and the differences cost one extra
scheduling per kernel, not per candidate. There is no process-wide cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

import numpy as np

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.space import is_extern
from tilefx.codegen.tvm.fingerprint import scheduled_module
from tilefx.cost_model.analytical import AnalyticalModel
from tilefx.cost_model.gpu_features import GPU_FEATURE_VERSION, GPU_INDEX, GPU_NAMES, gpu_features
from tilefx.cost_model.loopnest import (ACCESS_FEATURES, LEVELS, SLOTS, _dynamic_extent, _l2,
                                        nest_features)
from tilefx.ir.identity import kernel_key
from tilefx.ir.ops import OPS
from tilefx.ir.ops.registry import Category

log = logging.getLogger("tilefx.cost_model")

# 2: data-dependent loops (bsr_matmul's nonzero blocks) get their mean extent
# 3: gathers, per-access slots, loop signature, differences from the default schedule
FEATURE_VERSION = 3

# every knob of every CPU template (codegen/tvm/schedules/*.space): -1 where a template has none
KNOBS = ("accumulators", "fuse_rows", "pack_b", "pack_w", "parallel", "reg_m", "reg_n", "reg_oc",
         "tile", "tile_k", "tile_m", "tile_n", "tile_oh", "unroll", "unroll_k", "vec_ow",
         "vectorize")

_SLOT_DOC = {"w": "write", "r0": "largest read (per-task footprint)", "r1": "second largest read",
             "r2": "third largest read"}
_ACCESS_DOC = {"stride": "log2 innermost stride in bytes",
               "reg_fp": "log2 bytes touched by the register block",
               "task_fp": "log2 bytes touched by one parallel task",
               "lines3": "log2 cache lines touched by the three innermost loops",
               "lines_task": "log2 cache lines touched by one parallel task",
               "reuse": "log2 task iterations per distinct element (temporal reuse)",
               "outer_stride": "log2 byte stride of the loop just outside the register block",
               "alias4k": "1 if a loop in the task strides by a multiple of 4 KiB >= 8 times"}
_LOOP_DOC = (("extent", "log2 extent"), ("kind", "0 serial, 1 parallel, 2 vectorized, 3 unrolled"),
             ("spatial", "1 if it moves the output (0: a reduction loop)"))
_ORDINAL = ("1st", "2nd", "3rd", "4th", "5th", "6th")

# (name, one-line meaning); the order is the vector's
FEATURES: tuple[tuple[str, str], ...] = (
    ("kind_pointwise", "1 for a pointwise kernel"),
    ("kind_reduction", "1 for a reduction kernel (softmax, layernorm, pooling, sums)"),
    ("kind_contraction", "1 for a contraction kernel (matmul, conv2d + epilogue)"),
    ("flops", "log2 float operations of all stores x their trip counts"),
    ("f_add", "log2 additions/subtractions executed"),
    ("f_mul", "log2 multiplications executed"),
    ("f_div", "log2 divisions executed"),
    ("f_minmax", "log2 min/max executed"),
    ("f_call", "log2 intrinsic calls executed (exp, erf, tanh, sqrt ...)"),
    ("f_cmp", "log2 comparisons / selects executed"),
    ("global_read", "log2 distinct bytes read from kernel arguments (footprint of the nest)"),
    ("global_write", "log2 distinct bytes written to kernel arguments"),
    ("local_bytes", "log2 bytes of intermediate buffers (accumulators, packed panels)"),
    ("loads", "log2 load instructions executed before vectorization"),
    ("intensity", "log2 flops per global byte (arithmetic intensity)"),
    ("n_stores", "buffer stores (blocks) in the nest"),
    ("n_loops", "loops in the nest"),
    ("max_depth", "deepest loop nesting"),
    ("par_extent", "log2 iterations of the outermost parallel loop (0: serial)"),
    ("par_launches", "log2 times a parallel region starts (trip of the loops above it)"),
    ("par_balance", "parallel iterations / (rounds x cores): 1 = no idle core"),
    ("par_work", "log2 flops per parallel iteration (work per task)"),
    ("vec_frac", "share of executed stores whose innermost loop is vectorized (gathers excluded)"),
    ("vec_width", "extent of the vectorized loop (weighted) / target vector lanes"),
    ("vec_partial", "share of vectorized work whose extent is not a multiple of the lanes"),
    ("unroll", "log2 product of unrolled extents around the hottest store"),
    ("inner_extent", "log2 innermost loop extent (weighted by trip)"),
    ("acc_contig", "share of executed accesses with innermost stride 1"),
    ("acc_bcast", "share of executed accesses with innermost stride 0 (register reuse)"),
    ("acc_strided", "share of executed accesses with innermost stride > 1"),
    ("max_stride", "log2 largest innermost stride in bytes (power-of-two strides alias)"),
    ("fp_inner", "log2 bytes touched by the hottest store's innermost loop"),
    ("fp_inner2", "log2 bytes touched by its two innermost loops"),
    ("fp_inner3", "log2 bytes touched by its three innermost loops"),
    ("fp_task", "log2 bytes touched by one parallel iteration (per-core tile)"),
    ("fp_task_l1", "per-core tile footprint / L1 size"),
    ("fp_task_l2", "per-core tile footprint / L2 size"),
    ("fp_inner3_l1", "three-loop footprint / L1 size"),
    ("reuse_task", "log2 accesses per distinct byte in one parallel iteration"),
    ("hot_share", "share of executed flops in the hottest store"),
    ("reg_iters", "log2 iterations of the hottest store's register block (trailing unrolled/vectorized loops)"),
    ("reg_out_vecs", "vector registers the register block writes (accumulators)"),
    ("reg_pressure", "accumulator vectors / target vector registers (> ~0.8 spills)"),
    ("reg_in_vecs", "log2 vectors the register block reads"),
    ("reg_ops_per_load", "log2 register-block iterations per vector read (compute per load)"),
    ("reduce_inner", "1 when the loop just outside the register block is a serial reduction loop"),
    ("vec_gather", "share of executed stores whose vectorized lanes straddle a floordiv/floormod row"),
    ("other_share", "share of executed stores outside the hottest store (packing, epilogues)"),
    ("other_trip", "log2 trip count of the second busiest store"),
    ("other_vec", "1 when the second busiest store is vectorized"),
    ("other_par", "1 when the second busiest store is inside a parallel loop"),
    ("par_rem", "outermost parallel extent mod cores / cores (0: every core gets equal rounds)"),
    ("reg_loads_per_vec", "vector loads of the register block per output vector computed"),
    ("lines_task_l1", "cache lines the hottest store's slots touch per task x 64 / L1 size"),
    ("cores", "target cores"),
    ("lanes", "target fp32 vector lanes"),
    ("l1", "log2 target L1 bytes"),
    ("l2", "log2 target L2 bytes"),
    ("l3", "log2 target L3 bytes"),
    ("analytical", "log2 microseconds estimated by the hand-written AnalyticalModel"),
) + tuple((f"{s}_{a}", f"hottest store's {_SLOT_DOC[s]}: {_ACCESS_DOC[a]}")
          for s in SLOTS for a in ACCESS_FEATURES
          ) + tuple((f"loop{i}_{a}", f"{_ORDINAL[i]} innermost loop of the hottest store: {doc}")
                    for i in range(LEVELS) for a, doc in _LOOP_DOC
                    ) + tuple((f"knob_{k}", f"schedule knob {k} (bools 0/1; -1: not in this template)")
                              for k in KNOBS)

# what does not depend on the schedule (kind, target) has no difference from the default
_FIXED = ("kind_pointwise", "kind_reduction", "kind_contraction", "cores", "lanes", "l1", "l2", "l3")
DELTA_OF = tuple(n for n, _ in FEATURES if n not in _FIXED and not n.startswith("loop"))
FEATURES = FEATURES + tuple((f"d_{n}", f"{n} minus {n} of the kernel's default schedule")
                            for n in DELTA_OF)

NAMES = tuple(n for n, _ in FEATURES)
INDEX = {n: i for i, n in enumerate(NAMES)}

# subsets for the ablation in benchmarks/cost_model.py
SHAPE_AND_KNOBS = tuple(i for i, n in enumerate(NAMES) if n.startswith(("kind_", "knob_"))
                        or n in ("flops", "global_read", "global_write", "cores", "lanes", "l1",
                                 "l2", "l3"))
NO_ANALYTICAL = tuple(i for i, n in enumerate(NAMES) if n != "analytical")
# without the differences from the default schedule: what the regression (latency) model uses
NO_DELTA = tuple(i for i, n in enumerate(NAMES) if not n.startswith("d_"))


# ------------------------------------------------------------------ public entry points

def kernel_kind(body: Any) -> str:
    """The template kind of a kernel body (for kernels rebuilt from database IR text)."""
    names = {op.name for op in body.ops}
    if names & {"matmul", "conv2d"}:
        return "contraction"
    if any(OPS[n].category == Category.reduction for n in names if n in OPS):
        return "reduction"
    return "pointwise"


def _knob_value(v: Any) -> float:
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return -1.0


V = TypeVar("V")


class FeatureCache:
    """Feature vectors already computed, and each kernel's default-schedule features.

    Owned by whoever ranks candidates and passed explicitly: a ``LearnedModel``
    holds one (a fresh one per ``with_bindings``, i.e. per kernel search);
    ``feature_matrix`` makes one per call when given none, so its rows share the
    kernel's default-schedule features. Keys are (kernel structure, bindings,
    target key, nest[, schedule]), so one cache may serve any kernels and
    targets. Both maps are LRU-bounded: ``limit`` vectors, ``kernels`` defaults.
    """

    def __init__(self, limit: int = 50_000, kernels: int = 2_000) -> None:
        self.limit, self.kernels = limit, kernels
        self._vectors: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._defaults: OrderedDict[tuple, tuple[str, dict[str, float]] | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def clear(self) -> None:
        self._vectors.clear()
        self._defaults.clear()

    def vector(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        return _memo(self._vectors, self.limit, key, compute)

    def default(self, key: tuple, compute: Callable[[], tuple[str, dict[str, float]] | None]
                ) -> tuple[str, dict[str, float]] | None:
        return _memo(self._defaults, self.kernels, key, compute)


def _memo(store: OrderedDict[Hashable, V], limit: int, key: Hashable, compute: Callable[[], V]) -> V:
    if key in store:  # a stored None (no default schedule) is a hit too
        store.move_to_end(key)
        return store[key]
    value = compute()
    if len(store) >= limit:
        store.popitem(last=False)
    store[key] = value
    return value


def _own_features(kernel_op: Any, schedule: Any, target: Any, bindings: Mapping[Any, int] | None,
                  nest: bool) -> dict[str, float]:
    """Every feature but the ``d_`` differences, by name (absent: 0)."""
    f: dict[str, float] = {}
    kind = kernel_op.attr("kind") or kernel_kind(kernel_op.body)
    f[f"kind_{kind}"] = 1.0
    if nest and not is_extern(schedule):
        try:
            f.update(nest_features(scheduled_module(kernel_op, target, schedule, bindings), target,
                                   _dynamic_extent(kernel_op)))
        except Exception as e:  # noqa: BLE001 - a candidate that cannot be scheduled: knobs only
            log.debug("no loop-nest features for %s %s: %s", kernel_op.attr("name"), schedule, e)
    f.update({"cores": target.cores, "lanes": target.vector_lanes(4), "l1": _l2(target.l1_bytes),
              "l2": _l2(target.l2_bytes), "l3": _l2(target.l3_bytes)})
    try:
        score = AnalyticalModel(bindings).predict(kernel_op, [schedule], target)[0]
        f["analytical"] = _l2(1e6 / score)
    except Exception as e:  # noqa: BLE001 - the hand model does not know every body
        log.debug("no analytical estimate for %s: %s", kernel_op.attr("name"), e)
    for k in KNOBS:
        f[f"knob_{k}"] = _knob_value(schedule.get(k)) if schedule.get(k) is not None else -1.0
    return f


def _default_features(kernel_op: Any, target: Any, bindings: Mapping[Any, int] | None,
                      nest: bool) -> tuple[str, dict[str, float]] | None:
    """(schedule JSON, ``_own_features``) of the kernel's default schedule; None if it has none."""
    try:
        default = target.backend().default_schedule(kernel_op, bindings)
        return default.to_json(), _own_features(kernel_op, default, target, bindings, nest)
    except Exception as e:  # noqa: BLE001 - no default schedule: the differences stay 0
        log.debug("no default schedule for %s: %s", kernel_op.attr("name"), e)
        return None


# (feature version, feature names) per backend feature set
LAYOUTS: dict[FeatureSet, tuple[int, tuple[str, ...]]] = {
    FeatureSet.LOOP_NEST: (FEATURE_VERSION, NAMES),
    FeatureSet.TILING: (GPU_FEATURE_VERSION, GPU_NAMES),
}


def layout_of(feature_set: FeatureSet) -> tuple[int, tuple[str, ...]]:
    """(feature version, feature names) of a backend's feature set
    (``target.backend().feature_set``): TVM candidates are featurized from their loop
    nest (this module), Triton ones from their tiling (``gpu_features``)."""
    return LAYOUTS[feature_set]


def features(kernel_op: Any, schedule: Any, target: Any,
             bindings: Mapping[Any, int] | None = None, *, nest: bool = True,
             cache: FeatureCache | None = None) -> np.ndarray:
    """The feature vector of one candidate, in the layout of ``target``'s backend
    (``FEATURES`` order for ``LOOP_NEST``, ``GPU_FEATURES`` for ``TILING``; float32).

    ``nest=False`` skips scheduling and the loop-nest walk (those entries stay
    0): the cheap knob + shape path. ``cache``: where computed vectors are kept
    (none: nothing is kept beyond this call).
    """
    cache = cache if cache is not None else FeatureCache()
    kernel = (kernel_key(kernel_op), tuple(sorted((str(k), int(v)) for k, v in (bindings or {}).items())),
              target.key(), nest)
    return cache.vector(kernel + (schedule.to_json(),),
                        lambda: _vector(kernel_op, schedule, target, bindings, nest, kernel, cache))


def _vector(kernel_op: Any, schedule: Any, target: Any, bindings: Mapping[Any, int] | None,
            nest: bool, kernel: tuple, cache: FeatureCache) -> np.ndarray:
    if target.backend().feature_set is FeatureSet.TILING:
        f, index = gpu_features(kernel_op, schedule, target, bindings), GPU_INDEX
    else:
        base = cache.default(kernel, lambda: _default_features(kernel_op, target, bindings, nest))
        if base is not None and base[0] == schedule.to_json():  # the default itself: no differences
            f, index = dict(base[1]), INDEX
        else:
            f, index = _own_features(kernel_op, schedule, target, bindings, nest), INDEX
            if base is not None:
                for name in DELTA_OF:
                    f[f"d_{name}"] = f.get(name, 0.0) - base[1].get(name, 0.0)
    vec = np.zeros(len(index), dtype=np.float32)
    for name, value in f.items():
        if name in index:
            vec[index[name]] = value
    return vec


def feature_matrix(kernel_op: Any, schedules: Sequence[Any], target: Any,
                   bindings: Mapping[Any, int] | None = None, *, nest: bool = True,
                   cache: FeatureCache | None = None) -> np.ndarray:
    """One row per schedule (``features``); without a ``cache``, one for this call."""
    if not schedules:
        return np.zeros((0, len(layout_of(target.backend().feature_set)[1])), dtype=np.float32)
    cache = cache if cache is not None else FeatureCache()
    return np.stack([features(kernel_op, s, target, bindings, nest=nest, cache=cache)
                     for s in schedules])
