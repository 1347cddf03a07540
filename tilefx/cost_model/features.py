"""Features of a (Kernel, Schedule, Target): what the learned cost model sees.

A candidate is scheduled exactly as ``codegen/tvm`` builds it
(``autotune.fingerprint.scheduled_module``: 3-8 ms, no LLVM) and its loop
nest is walked in Python: every buffer store with its enclosing loops
(extent, kind: serial / parallel / vectorized / unrolled), the float
operations of the stored expression, and for every buffer access its
innermost stride and its footprint at several tile levels. These are
aggregated over the stores, weighted by how often each store runs, into one
fixed-length vector, together with the schedule's knobs (a fixed vocabulary
over all templates), the kernel's kind, the target's hardware facts and the
hand-written ``AnalyticalModel``'s estimate (the model learns where that one
is wrong). ``FEATURES`` documents each entry in one line.

``FEATURE_VERSION`` names the layout: a model is refused when its version
differs (``model.py``). Bump it whenever ``FEATURES`` or their meaning change.

Sizes and counts enter as ``log2(1 + x)``: latencies span orders of
magnitude and trees split better on logs. Vectors are cached per (kernel
structure, schedule, target), so the evolutionary search can rank thousands
of candidates and revisit them for free.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger("tilefx.cost_model")

FEATURE_VERSION = 2  # 2: data-dependent loops (bsr_matmul's nonzero blocks) get their mean extent

# every knob of every CPU template (codegen/tvm/schedules/*.space): -1 where a template has none
KNOBS = ("accumulators", "fuse_rows", "pack_b", "pack_w", "parallel", "reg_m", "reg_n", "reg_oc",
         "tile", "tile_k", "tile_m", "tile_n", "tile_oh", "unroll", "unroll_k", "vec_ow",
         "vectorize")

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
    ("vec_frac", "share of executed stores whose innermost loop is vectorized"),
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
    ("cores", "target cores"),
    ("lanes", "target fp32 vector lanes"),
    ("l1", "log2 target L1 bytes"),
    ("l2", "log2 target L2 bytes"),
    ("l3", "log2 target L3 bytes"),
    ("analytical", "log2 microseconds estimated by the hand-written AnalyticalModel"),
) + tuple((f"knob_{k}", f"schedule knob {k} (bools 0/1; -1: not in this template)") for k in KNOBS)

NAMES = tuple(n for n, _ in FEATURES)
INDEX = {n: i for i, n in enumerate(NAMES)}

# subsets for the ablation in benchmarks/cost_model.py
SHAPE_AND_KNOBS = tuple(i for i, n in enumerate(NAMES) if n.startswith(("kind_", "knob_"))
                        or n in ("flops", "global_read", "global_write", "cores", "lanes", "l1",
                                 "l2", "l3"))
NO_ANALYTICAL = tuple(i for i, n in enumerate(NAMES) if n != "analytical")


def _l2(x: float) -> float:
    return math.log2(1.0 + max(0.0, float(x)))


# ------------------------------------------------------------------ the loop-nest walk

@dataclass
class _Loop:
    var: Any
    extent: int
    kind: str          # serial | parallel | vectorized | unrolled


@dataclass
class _Access:
    buffer: Any
    indices: Any
    write: bool


@dataclass
class _Store:
    loops: list[_Loop]
    env: dict[Any, Any]
    accesses: list[_Access]
    ops: dict[str, int]
    trip: int = 1


_KINDS = {0: "serial", 1: "parallel", 2: "vectorized", 3: "unrolled", 4: "parallel"}
_BIN = {"Add": "add", "Sub": "add", "Mul": "mul", "Div": "div", "FloorDiv": "div",
        "Min": "minmax", "Max": "minmax", "EQ": "cmp", "NE": "cmp", "LT": "cmp", "LE": "cmp",
        "GT": "cmp", "GE": "cmp", "And": "cmp", "Or": "cmp", "Mod": "div", "FloorMod": "div"}


def _int(e: Any, default: int = 1) -> int:
    try:
        return int(e.value)
    except (AttributeError, TypeError, ValueError):
        try:
            return int(e)
        except (TypeError, ValueError):
            return default


def _is_float(e: Any) -> bool:
    return "float" in str(getattr(e, "ty", getattr(e, "dtype", "")))


def _expr_ops(e: Any, ops: dict[str, int], loads: list[Any]) -> None:
    n = type(e).__name__
    if n in ("BufferLoad", "TensorLoad"):  # TensorLoad: TVM 0.27's name for scheduled loads
        loads.append(e)
        return  # index arithmetic is not float work
    if n in _BIN:
        if _is_float(e):
            ops[_BIN[n]] = ops.get(_BIN[n], 0) + 1
        _expr_ops(e.a, ops, loads)
        _expr_ops(e.b, ops, loads)
    elif n == "Call":
        if _is_float(e):
            ops["call"] = ops.get("call", 0) + 1
        for a in e.args:
            _expr_ops(a, ops, loads)
    elif n == "Select":
        ops["cmp"] = ops.get("cmp", 0) + 1
        for a in (e.condition, e.true_value, e.false_value):
            _expr_ops(a, ops, loads)
    elif n in ("Cast", "Broadcast"):
        _expr_ops(e.value, ops, loads)
    elif n == "Not":
        _expr_ops(e.a, ops, loads)
    elif n == "Let":
        _expr_ops(e.value, ops, loads)
        _expr_ops(e.body, ops, loads)


def _walk(stmt: Any, loops: list[_Loop], env: dict[Any, Any], out: list[_Store],
          dynamic: int = 1) -> None:
    """``dynamic``: the extent assumed for a loop whose extent is data (not a constant)."""
    n = type(stmt).__name__
    if n == "For":
        loops.append(_Loop(stmt.loop_var, _int(stmt.extent, dynamic), _KINDS.get(int(stmt.kind), "serial")))
        _walk(stmt.body, loops, env, out, dynamic)
        loops.pop()
    elif n == "SeqStmt":
        for s in stmt.seq:
            _walk(s, loops, env, out, dynamic)
    elif n == "SBlockRealize":
        inner = dict(env)
        for iv, value in zip(stmt.block.iter_vars, stmt.iter_values):
            inner[iv.var] = value
        block = stmt.block
        if block.init is not None:
            _walk(block.init, loops, inner, out, dynamic)
        _walk(block.body, loops, inner, out, dynamic)
    elif n == "BufferStore":
        ops: dict[str, int] = {}
        loads: list[Any] = []
        _expr_ops(stmt.value, ops, loads)
        accesses = [_Access(stmt.buffer, stmt.indices, True)]
        # a TVM 0.27 TensorLoad names its buffer ``source`` (a Var with shape and dtype)
        accesses += [_Access(getattr(ld, "buffer", None) or ld.source, ld.indices, False)
                     for ld in loads]
        out.append(_Store(list(loops), env, accesses, ops, math.prod(lp.extent for lp in loops)))
    elif n == "IfThenElse":
        _walk(stmt.then_case, loops, env, out, dynamic)
        if stmt.else_case is not None:
            _walk(stmt.else_case, loops, env, out, dynamic)
    elif hasattr(stmt, "body"):
        _walk(stmt.body, loops, env, out, dynamic)


def _ev(e: Any, env: Mapping[Any, Any], vals: Mapping[Any, int]) -> int:
    """Integer value of an index expression with loop vars from ``vals`` (others 0)."""
    n = type(e).__name__
    if n == "IntImm":
        return int(e.value)
    if n == "Var":
        if e in vals:
            return vals[e]
        bound = env.get(e)
        return 0 if bound is None else _ev(bound, env, vals)
    if n in ("Add", "Sub", "Mul", "FloorDiv", "FloorMod", "Min", "Max", "Div", "Mod"):
        a, b = _ev(e.a, env, vals), _ev(e.b, env, vals)
        if n == "Add":
            return a + b
        if n == "Sub":
            return a - b
        if n == "Mul":
            return a * b
        if n in ("FloorDiv", "Div"):
            return a // b if b else 0
        if n in ("FloorMod", "Mod"):
            return a % b if b else 0
        return min(a, b) if n == "Min" else max(a, b)
    if n == "Cast":
        return _ev(e.value, env, vals)
    if n == "Ramp":
        return _ev(e.base, env, vals)
    return 0


def _itemsize(buffer: Any) -> int:
    dtype = getattr(buffer, "dtype", None) or getattr(buffer, "ty", "float32")
    digits = "".join(c for c in str(dtype) if c.isdigit())
    return max(1, int(digits or 32) // 8)


def _strides(buffer: Any) -> list[int]:
    shape = [_int(d) for d in buffer.shape]
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(d, 1)
    return out[::-1]


def _loop_strides(acc: _Access, env: Mapping[Any, Any], loops: list[_Loop]) -> list[int]:
    """Flat element stride of ``acc`` along each loop (0: the loop does not move it)."""
    strides = _strides(acc.buffer)
    idx = list(acc.indices)

    def flat(vals: dict[Any, int]) -> int:
        return sum(_ev(i, env, vals) * s for i, s in zip(idx, strides))

    base = flat({})
    return [abs(flat({lp.var: 1}) - base) if lp.extent > 1 else 0 for lp in loops]


def _footprint(acc: _Access, lstrides: list[int], loops: list[_Loop], first: int) -> float:
    """Bytes of ``acc`` touched by loops[first:] (an upper bound, capped at the buffer)."""
    numel = math.prod(max(_int(d), 1) for d in acc.buffer.shape)
    elems = 1
    for lp, s in zip(loops[first:], lstrides[first:]):
        if s:
            elems *= lp.extent
    return min(elems, numel) * _itemsize(acc.buffer)


def _dynamic_extent(kernel_op: Any) -> int:
    """Mean nonzero blocks per block column of a ``bsr_matmul`` (its data-dependent loop), else 1."""
    for op in kernel_op.body.ops:
        if op.name == "bsr_matmul":
            nnzb, cols = _int(op.inputs[1].type.shape[0]), _int(op.inputs[3].type.shape[0]) - 1
            return max(1, round(nnzb / max(cols, 1)))
    return 1


def _nest_features(mod: Any, target: Any, dynamic: int = 1) -> dict[str, float]:
    func = next(iter(mod.functions.values()))
    stores: list[_Store] = []
    _walk(func.body, [], {}, stores, dynamic)
    f: dict[str, float] = {}
    if not stores:
        return f
    # kernel arguments (global memory) by name: TVM 0.27 PrimFuncs list buffers as params
    params = {str(getattr(p, "name", p)) for p in func.params}
    lanes = target.vector_lanes(4)
    ops_total: dict[str, float] = {}
    flops_of: list[float] = []
    read = write = local = loads = 0.0
    acc_counts = {"contig": 0.0, "bcast": 0.0, "strided": 0.0}
    max_stride = 0
    vec_trip = vec_w = vec_partial = inner_ext = 0.0
    total_trip = sum(s.trip for s in stores)
    seen_read: dict[Any, float] = {}
    seen_write: dict[Any, float] = {}
    strides_of: list[list[list[int]]] = []
    for s in stores:
        flops = sum(s.ops.values()) * s.trip
        flops_of.append(flops)
        for k, v in s.ops.items():
            ops_total[k] = ops_total.get(k, 0.0) + v * s.trip
        loads += (len(s.accesses) - 1) * s.trip
        per = []
        for a in s.accesses:
            ls = _loop_strides(a, s.env, s.loops)
            per.append(ls)
            fp = _footprint(a, ls, s.loops, 0)
            name = str(a.buffer.name)
            if name in params:
                book = seen_write if a.write else seen_read
                book[name] = max(book.get(name, 0.0), fp)
            else:
                local = max(local, fp) if a.write else local
            inner = ls[-1] if ls else 0
            kind = "bcast" if inner == 0 else "contig" if inner == 1 else "strided"
            acc_counts[kind] += s.trip
            max_stride = max(max_stride, inner * _itemsize(a.buffer))
        strides_of.append(per)
        if s.loops:
            last = s.loops[-1]
            inner_ext += _l2(last.extent) * s.trip
            if last.kind == "vectorized":
                vec_trip += s.trip
                vec_w += last.extent / lanes * s.trip
                vec_partial += (last.extent % lanes != 0) * s.trip
    read, write = sum(seen_read.values()), sum(seen_write.values())
    flops_total = sum(flops_of)
    f.update({"flops": _l2(flops_total), "global_read": _l2(read), "global_write": _l2(write),
              "local_bytes": _l2(local), "loads": _l2(loads),
              "intensity": _l2(flops_total / max(read + write, 1.0)),
              "n_stores": len(stores), "max_depth": max(len(s.loops) for s in stores),
              "vec_frac": vec_trip / total_trip, "vec_width": vec_w / total_trip,
              "vec_partial": vec_partial / max(vec_trip, 1.0),
              "inner_extent": inner_ext / total_trip, "max_stride": _l2(max_stride)})
    for k in ("add", "mul", "div", "minmax", "call", "cmp"):
        f[f"f_{k}"] = _l2(ops_total.get(k, 0.0))
    n_acc = sum(acc_counts.values()) or 1.0
    for k, v in acc_counts.items():
        f[f"acc_{k}"] = v / n_acc
    loop_vars = {id(lp.var): lp for s in stores for lp in s.loops}  # distinct For nodes
    f["n_loops"] = len({lp.var.name + str(lp.extent) for lp in loop_vars.values()})
    # the outermost parallel loop of the hottest store
    hot = max(range(len(stores)), key=lambda i: (flops_of[i], stores[i].trip))
    hs = stores[hot]
    f["hot_share"] = flops_of[hot] / max(flops_total, 1.0)
    f["unroll"] = _l2(math.prod(lp.extent for lp in hs.loops if lp.kind == "unrolled"))
    par = next((i for i, lp in enumerate(hs.loops) if lp.kind == "parallel"), None)
    if par is not None:
        ext = hs.loops[par].extent
        rounds = math.ceil(ext / max(target.cores, 1))
        f["par_extent"] = _l2(ext)
        f["par_launches"] = _l2(math.prod(lp.extent for lp in hs.loops[:par]))
        f["par_balance"] = ext / (rounds * max(target.cores, 1))
        f["par_work"] = _l2(flops_total / max(ext * math.prod(lp.extent for lp in hs.loops[:par]), 1))
    task = par + 1 if par is not None else 0
    depth = len(hs.loops)
    fps = {}
    for name, first in (("fp_inner", depth - 1), ("fp_inner2", depth - 2), ("fp_inner3", depth - 3),
                        ("fp_task", task)):
        first = max(0, min(first, depth))
        fps[name] = sum(_footprint(a, ls, hs.loops, first)
                        for a, ls in zip(hs.accesses, strides_of[hot]))
        f[name] = _l2(fps[name])
    f["fp_task_l1"] = fps["fp_task"] / target.l1_bytes
    f["fp_task_l2"] = fps["fp_task"] / target.l2_bytes
    f["fp_inner3_l1"] = fps["fp_inner3"] / target.l1_bytes
    # the register block: trailing unrolled / vectorized loops of the hottest store
    first_reg = depth
    while first_reg > 0 and hs.loops[first_reg - 1].kind in ("unrolled", "vectorized"):
        first_reg -= 1
    vbytes = max(target.vector_bytes, 4)
    out_b = sum(_footprint(a, ls, hs.loops, first_reg)
                for a, ls in zip(hs.accesses, strides_of[hot]) if a.write)
    in_b = sum(_footprint(a, ls, hs.loops, first_reg)
               for a, ls in zip(hs.accesses, strides_of[hot]) if not a.write)
    iters = math.prod(lp.extent for lp in hs.loops[first_reg:])
    out_v = math.ceil(out_b / vbytes)
    f["reg_iters"] = _l2(iters)
    f["reg_out_vecs"] = out_v
    f["reg_pressure"] = out_v / (32 if target.vector_bytes >= 64 else 16)
    f["reg_in_vecs"] = _l2(math.ceil(in_b / vbytes))
    f["reg_ops_per_load"] = _l2(iters / max(1.0, math.ceil(in_b / vbytes)))
    # a reduction loop around the register block keeps the accumulators in registers
    f["reduce_inner"] = float(first_reg > 0 and hs.loops[first_reg - 1].kind == "serial"
                              and strides_of[hot][0][first_reg - 1] == 0)
    task_trip = math.prod(lp.extent for lp in hs.loops[task:])
    f["reuse_task"] = _l2(task_trip * len(hs.accesses) * 4 / max(fps["fp_task"], 1.0))
    return f


# ------------------------------------------------------------------ public entry points

def kernel_kind(body: Any) -> str:
    """The template kind of a kernel body (for kernels rebuilt from database IR text)."""
    from tilefx.ir.ops import OPS
    from tilefx.ir.ops.registry import Category

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


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_LIMIT = 50_000


def features(kernel_op: Any, schedule: Any, target: Any,
             bindings: Mapping[Any, int] | None = None, *, nest: bool = True) -> np.ndarray:
    """The feature vector (``FEATURES`` order, float32) of one candidate.

    ``nest=False`` skips scheduling and the loop-nest walk (those entries stay
    0): the cheap knob + shape path.
    """
    from tilefx.autotune.space import is_extern
    from tilefx.compiler.driver import kernel_key

    key = (kernel_key(kernel_op), tuple(sorted((str(k), int(v)) for k, v in (bindings or {}).items())),
           schedule.to_json(), target.key(), nest)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    f: dict[str, float] = {}
    kind = kernel_op.attr("kind") or kernel_kind(kernel_op.body)
    f[f"kind_{kind}"] = 1.0
    if nest and not is_extern(schedule):
        from tilefx.autotune.fingerprint import scheduled_module

        try:
            f.update(_nest_features(scheduled_module(kernel_op, target, schedule, bindings), target,
                                    _dynamic_extent(kernel_op)))
        except Exception as e:  # noqa: BLE001 - a candidate that cannot be scheduled: knobs only
            log.debug("no loop-nest features for %s %s: %s", kernel_op.attr("name"), schedule, e)
    f.update({"cores": target.cores, "lanes": target.vector_lanes(4), "l1": _l2(target.l1_bytes),
              "l2": _l2(target.l2_bytes), "l3": _l2(target.l3_bytes)})
    try:
        from tilefx.autotune.analytical import AnalyticalModel

        score = AnalyticalModel(bindings).predict(kernel_op, [schedule], target)[0]
        f["analytical"] = _l2(1e6 / score)
    except Exception as e:  # noqa: BLE001 - the hand model does not know every body
        log.debug("no analytical estimate for %s: %s", kernel_op.attr("name"), e)
    for k in KNOBS:
        f[f"knob_{k}"] = _knob_value(schedule.get(k)) if schedule.get(k) is not None else -1.0
    vec = np.zeros(len(NAMES), dtype=np.float32)
    for name, value in f.items():
        if name in INDEX:
            vec[INDEX[name]] = value
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.popitem(last=False)
    _CACHE[key] = vec
    return vec


def feature_matrix(kernel_op: Any, schedules: Sequence[Any], target: Any,
                   bindings: Mapping[Any, int] | None = None, *, nest: bool = True) -> np.ndarray:
    """One row per schedule (``features``)."""
    if not schedules:
        return np.zeros((0, len(NAMES)), dtype=np.float32)
    return np.stack([features(kernel_op, s, target, bindings, nest=nest) for s in schedules])

