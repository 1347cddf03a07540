"""The loop-nest walk behind ``features``: a scheduled TIR PrimFunc -> named numbers.

Every buffer store is collected with its enclosing loops (extent, kind:
serial / parallel / vectorized / unrolled), the float operations of the
stored expression and its buffer accesses. ``nest_features`` aggregates them
(weighted by how often each store runs) and describes the hottest store (the
one with the most float work) in detail, the way Ansor's per-store features
do:

- each of its accesses (the write and the three largest reads) by innermost
  stride, footprint per register block and per parallel task, cache lines
  touched, reuse, and 4 KiB-aliasing strides;
- its six innermost loops, innermost first (extent, kind, whether it moves
  the output): a fixed-length signature of the loop structure;
- the second busiest store (packing, epilogue).

A vectorized loop whose lanes cross a ``floordiv``/``floormod`` boundary
(``vectorize=16`` over a fused ``1024x1000`` loop: rows of 1000 are not a
multiple of 16) is a gather/scatter, not a vector load: such stores count
as scalar in ``vec_frac``/``vec_width`` and in ``vec_gather``.

Index arithmetic is evaluated in Python (``_ev``); nothing is compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

SLOTS = ("w", "r0", "r1", "r2")       # the hottest store's write and its three largest reads
LEVELS = 6                            # innermost loops in the loop signature
_KIND_CODE = {"serial": 0.0, "parallel": 1.0, "vectorized": 2.0, "unrolled": 3.0}


def _l2(x: float) -> float:
    return math.log2(1.0 + max(0.0, float(x)))

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




def _misaligned(e: Any, env: Mapping[Any, Any], v: Any, lanes: int, loops: list[_Loop],
                depth: int = 0) -> bool:
    """True when a ``floordiv``/``floormod`` in index ``e`` splits the ``lanes`` of the
    vectorized loop var ``v``: the vector then straddles a row and is a gather/scatter."""
    if depth > 24:
        return False
    n = type(e).__name__
    if n == "Var":
        bound = env.get(e)
        return False if bound is None else _misaligned(bound, env, v, lanes, loops, depth + 1)
    if n in ("FloorDiv", "FloorMod", "Div", "Mod"):
        x, c = e.a, _int(e.b, 0)
        base = _ev(x, env, {})
        cv = _ev(x, env, {v: 1}) - base
        if cv and c:
            block = abs(cv) * lanes   # the numerator's span over one vector
            if c % block or base % block:
                return True
            # an outer loop stepping the numerator by less than a vector shifts it off the boundary
            if any((_ev(x, env, {lp.var: 1}) - base) % block for lp in loops
                   if lp.var is not v and lp.extent > 1):
                return True
        return _misaligned(x, env, v, lanes, loops, depth + 1)
    for attr in ("a", "b", "value"):
        sub = getattr(e, attr, None)
        if sub is not None and type(sub).__module__.startswith("tvm") \
                and _misaligned(sub, env, v, lanes, loops, depth + 1):
            return True
    return False


def _lines(lstrides: list[int], loops: list[_Loop], first: int, itemsize: int,
           line: int = 64) -> float:
    """Cache lines an access touches in loops[first:]: loops with a stride under a line
    extend one dense run, the others repeat it."""
    run, repeats = 1.0, 1.0
    for lp, s in zip(loops[first:], lstrides[first:]):
        if not s:
            continue
        if s * itemsize < line:
            run *= lp.extent * s
        else:
            repeats *= lp.extent
    return repeats * math.ceil(run * itemsize / line)


def _access_features(acc: _Access, ls: list[int], loops: list[_Loop], task: int,
                     first_reg: int) -> dict[str, float]:
    isz = _itemsize(acc.buffer)
    depth = len(loops)
    fp_task = _footprint(acc, ls, loops, task)
    trip_task = math.prod(lp.extent for lp in loops[task:])
    return {"stride": _l2((ls[-1] if ls else 0) * isz),
            "reg_fp": _l2(_footprint(acc, ls, loops, first_reg)),
            "task_fp": _l2(fp_task),
            "lines3": _l2(_lines(ls, loops, max(0, depth - 3), isz)),
            "lines_task": _l2(_lines(ls, loops, task, isz)),
            "reuse": _l2(trip_task / max(1.0, fp_task / isz)),
            "outer_stride": _l2(ls[first_reg - 1] * isz) if first_reg > 0 else 0.0,
            # same-set strides: a 4 KiB multiple walked >= 8 times inside a task
            "alias4k": float(any(s * isz >= 4096 and (s * isz) % 4096 == 0 and lp.extent >= 8
                                 for lp, s in zip(loops[task:], ls[task:])))}


ACCESS_FEATURES = ("stride", "reg_fp", "task_fp", "lines3", "lines_task", "reuse", "outer_stride",
                   "alias4k")


def nest_features(mod: Any, target: Any, dynamic: int = 1) -> dict[str, float]:
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
    vec_trip = vec_w = vec_partial = inner_ext = gather = 0.0
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
            if last.kind == "vectorized" and any(
                    _misaligned(i, s.env, last.var, last.extent, s.loops)
                    for a in s.accesses for i in a.indices):
                gather += s.trip   # lanes straddle rows: per-lane code, counted as scalar
            elif last.kind == "vectorized":
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
              "vec_gather": gather / total_trip,
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
    f.update(_hot_store_detail(stores, hot, strides_of[hot], task, first_reg, target))
    f["reg_loads_per_vec"] = math.ceil(in_b / vbytes) / max(1.0, iters / lanes)
    if par is not None:
        f["par_rem"] = (hs.loops[par].extent % max(target.cores, 1)) / max(target.cores, 1)
    return f


def _hot_store_detail(stores: list[_Store], hot: int, strides: list[list[int]], task: int,
                      first_reg: int, target: Any) -> dict[str, float]:
    """Per-access slots, loop signature and the second busiest store (module docstring)."""
    hs = stores[hot]
    f: dict[str, float] = {"other_share": 1.0 - hs.trip / sum(s.trip for s in stores)}
    per = [(a.write, _footprint(a, ls, hs.loops, task),
            _access_features(a, ls, hs.loops, task, first_reg))
           for a, ls in zip(hs.accesses, strides)]
    writes = [d for w, _, d in per if w]
    reads = [d for w, _, d in sorted(per, key=lambda x: -x[1]) if not w]
    for slot, d in zip(SLOTS, writes[:1] + reads[:len(SLOTS) - 1]):
        for k, v in d.items():
            f[f"{slot}_{k}"] = v
    lines = sum(2 ** f.get(f"{s}_lines_task", 0.0) - 1 for s in SLOTS)
    f["lines_task_l1"] = lines * 64 / target.l1_bytes
    out = strides[0]   # the write: does a loop move the output (spatial) or not (reduction)
    for level in range(min(LEVELS, len(hs.loops))):
        lp = hs.loops[-1 - level]
        f[f"loop{level}_extent"] = _l2(lp.extent)
        f[f"loop{level}_kind"] = _KIND_CODE[lp.kind]
        f[f"loop{level}_spatial"] = float(out[-1 - level] != 0)
    others = [i for i in range(len(stores)) if i != hot]
    if others:
        so = stores[max(others, key=lambda i: stores[i].trip)]
        f["other_trip"] = _l2(so.trip)
        f["other_vec"] = float(bool(so.loops) and so.loops[-1].kind == "vectorized")
        f["other_par"] = float(any(lp.kind == "parallel" for lp in so.loops))
    return f


