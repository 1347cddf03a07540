"""How each inlinable IR op becomes Triton text: a table ``RULES[op name] -> rule``.

A rule gets the emitter, the op, the index its result is wanted at and the
mask, and returns a ``Var``. Elementwise rules are one-line formulas over the
operands' compute-type expressions (``UNARY``/``BINARY`` tables); injective
rules rewrite the index (see ``emit.py``). Reductions, contractions and
attention are not here: their templates compute them and hand the result to
the emitter as an override.
"""

from __future__ import annotations

from typing import Callable

from tilefx.codegen.triton.emit import (
    Emitter,
    Index,
    Var,
    broadcast_index,
    compute_type,
    literal,
    shape_of,
    strides,
    tl_type,
)
from tilefx.ir.graph import Op
from tilefx.ir.types import DType

Rule = Callable[[Emitter, Op, Index, "str | None"], Var]
RULES: dict[str, Rule] = {}

# "{x}" is the operand in its compute type. tanh is spelled with exp (no libdevice):
# sign(x) * (1 - e^-2|x|) / (1 + e^-2|x|) never overflows.
# tl.maximum / tl.minimum default to maxnum / minnum, which drop a NaN; torch keeps it
NAN = "tl.PropagateNan.ALL"
_TANH = "tl.where({x} < 0, -1.0, 1.0) * (1.0 - tl.exp(-2.0 * tl.abs({x}))) / (1.0 + tl.exp(-2.0 * tl.abs({x})))"
UNARY: dict[str, str] = {
    "neg": "-{x}", "exp": "tl.exp({x})", "log": "tl.log({x})", "sqrt": "tl.sqrt({x})",
    "rsqrt": "tl.rsqrt({x})", "abs": "tl.abs({x})", "relu": "tl.maximum({x}, 0, " + NAN + ")",
    "sigmoid": "tl.sigmoid({x})", "tanh": _TANH, "silu": "{x} * tl.sigmoid({x})",
    "hardswish": "{x} * tl.minimum(tl.maximum({x} + 3.0, 0.0, " + NAN + "), 6.0, " + NAN + ") / 6.0",
    "hardsigmoid": "tl.minimum(tl.maximum({x} + 3.0, 0.0, " + NAN + "), 6.0, " + NAN + ") / 6.0",
    "erf": "tl.erf({x})", "reciprocal": "1.0 / {x}", "sin": "tl.sin({x})", "cos": "tl.cos({x})",
    "floor": "tl.floor({x})", "ceil": "tl.ceil({x})",
    # round half to even, like torch.round
    "round": "tl.where((tl.floor({x} + 0.5) - {x} == 0.5) & (tl.floor({x} + 0.5) - "
             "2.0 * tl.floor(tl.floor({x} + 0.5) * 0.5) != 0), tl.floor({x} + 0.5) - 1.0, tl.floor({x} + 0.5))",
    "sign": "tl.where({x} > 0, 1.0, 0.0) - tl.where({x} < 0, 1.0, 0.0)",
    "logical_not": "{x} == 0", "identity": "{x}",
}
BINARY: dict[str, str] = {
    "add": "{a} + {b}", "sub": "{a} - {b}", "mul": "{a} * {b}",
    "maximum": "tl.maximum({a}, {b}, " + NAN + ")", "minimum": "tl.minimum({a}, {b}, " + NAN + ")",
    "eq": "{a} == {b}", "ne": "{a} != {b}", "lt": "{a} < {b}", "le": "{a} <= {b}",
    "gt": "{a} > {b}", "ge": "{a} >= {b}",
    "logical_and": "({a} != 0) & ({b} != 0)", "logical_or": "({a} != 0) | ({b} != 0)",
}
_INT_SAFE_UNARY = {"neg", "abs", "relu", "sign", "logical_not", "identity"}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def wrap(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn
    return wrap


def _result(e: Emitter, op: Op, expr: str) -> Var:
    dtype = op.result.type.dtype
    held = compute_type(dtype)
    if dtype == DType.bool:
        return Var(e.tmp(expr), dtype, "tl.int1")
    return Var(e.tmp(f"({expr}).to({held})" if held != "tl.float32" or not dtype.is_float else expr),
               dtype, held)


def _operands(e: Emitter, op: Op, idx: Index, mask: str | None) -> list[Var]:
    out_shape = shape_of(op.result)
    return [e.value_at(v, broadcast_index(idx, shape_of(v), out_shape), mask) for v in op.inputs]


@rule(*UNARY)
def _unary(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    (x,) = _operands(e, op, idx, mask)
    if op.name == "identity":
        return x
    if not x.dtype.is_float and op.name not in _INT_SAFE_UNARY and x.dtype != DType.bool:
        raise NotImplementedError(f"{op.name} on {x.dtype.short} is not emitted for Triton")
    return _result(e, op, UNARY[op.name].format(x=e.compute(x)))


COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")


def _as_stored(e: Emitter, v: Var) -> str:
    """``v`` in its compute type, rounded to its storage dtype first where that is narrower:
    a comparison sees the value eager sees (an fp16 ``x @ w + r`` past 65504 is inf there,
    which T5's ``isinf(h).any()`` is asked about, but finite in the fp32 accumulator)."""
    if v.literal or v.dtype not in (DType.float16, DType.bfloat16) or v.held != "tl.float32":
        return e.compute(v)
    return f"{v.expr}.to({tl_type(v.dtype)}).to(tl.float32)"


@rule(*BINARY)
def _binary(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    a, b = _operands(e, op, idx, mask)
    if op.name in COMPARISONS:
        return _result(e, op, BINARY[op.name].format(a=_as_stored(e, a), b=_as_stored(e, b)))
    return _result(e, op, BINARY[op.name].format(a=e.compute(a), b=e.compute(b)))


@rule("div")
def _div(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    a, b = _operands(e, op, idx, mask)
    if a.dtype.is_float:
        return _result(e, op, f"{e.compute(a)} / {e.compute(b)}")
    # Triton's integer // truncates toward zero (C semantics), like the IR's integer div
    return _result(e, op, f"{e.compute(a)} // {e.compute(b)}")


@rule("pow")
def _pow(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    a, b = _operands(e, op, idx, mask)
    x = e.compute(a)
    if b.literal and float(eval(b.expr, {"float": float})) in (0.5, 1.0, 2.0, 3.0, -1.0, -2.0):
        k = float(eval(b.expr, {"float": float}))
        expr = {0.5: f"tl.sqrt({x})", 1.0: f"{x}", 2.0: f"{x} * {x}", 3.0: f"{x} * {x} * {x}",
                -1.0: f"1.0 / {x}", -2.0: f"1.0 / ({x} * {x})"}[k]
        return _result(e, op, expr)
    if not a.dtype.is_float:
        raise NotImplementedError("pow on integers is not emitted for Triton")
    # exp2(b * log2|a|) with the sign of an odd integer exponent; NaN for a < 0, b fractional
    y = e.compute(b)
    mag = f"tl.exp2({y} * tl.log2(tl.abs({x})))"
    odd = f"(tl.floor({y}) == {y}) & (tl.floor({y} * 0.5) * 2.0 != {y})"
    frac = f"tl.floor({y}) != {y}"
    return _result(e, op, f"tl.where({x} < 0, tl.where({frac}, float(\"nan\"), "
                          f"tl.where({odd}, -{mag}, {mag})), {mag})")


@rule("gelu")
def _gelu(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    (x,) = _operands(e, op, idx, mask)
    v = e.compute(x)
    if op.attr("approximate", "none") == "tanh":
        inner = e.tmp(f"0.7978845608028654 * ({v} + 0.044715 * {v} * {v} * {v})")
        return _result(e, op, f"0.5 * {v} * (1.0 + {_TANH.format(x=inner)})")
    return _result(e, op, f"0.5 * {v} * (1.0 + tl.erf({v} * 0.7071067811865476))")


@rule("leaky_relu")
def _leaky_relu(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    (x,) = _operands(e, op, idx, mask)
    v = e.compute(x)
    return _result(e, op, f"tl.where({v} > 0, {v}, {v} * {literal(float(op.attr('negative_slope')))})")


@rule("clamp")
def _clamp(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    (x,) = _operands(e, op, idx, mask)
    expr = e.compute(x)
    lo, hi = op.attr("min"), op.attr("max")
    conv = float if x.dtype.is_float else int
    if lo is not None:
        expr = f"tl.maximum({expr}, {literal(conv(lo))}, {NAN})"
    if hi is not None:
        expr = f"tl.minimum({expr}, {literal(conv(hi))}, {NAN})"
    return _result(e, op, expr)


@rule("cast")
def _cast(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    (x,) = _operands(e, op, idx, mask)
    to: DType = op.attr("dtype")
    if x.literal:
        value = eval(x.expr, {"float": float})
        return Var(literal(bool(value) if to == DType.bool else float(value) if to.is_float
                           else int(value)), to, tl_type(to), literal=True)
    if to == DType.bool:
        return Var(e.tmp(f"{x.expr} != 0"), to, "tl.int1")
    if to in (DType.float16, DType.bfloat16):
        # round to the narrow type (the IR's semantics), keep computing in fp32
        return Var(e.tmp(f"{e.as_type(x, tl_type(to))}.to(tl.float32)"), to, "tl.float32")
    return Var(e.tmp(e.as_type(x, tl_type(to))), to, tl_type(to))


@rule("where")
def _where(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    c, a, b = _operands(e, op, idx, mask)
    return _result(e, op, f"tl.where({c.expr}, {e.compute(a)}, {e.compute(b)})")


@rule("const")
def _const(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    value = op.attr("value")
    if value is None:
        raise NotImplementedError(f"named constant %{op.result.name} inside a kernel body: "
                                  f"it must be a kernel input")
    dtype = op.result.type.dtype
    value = bool(value) if dtype == DType.bool else float(value) if dtype.is_float else int(value)
    return Var(literal(value), dtype, compute_type(dtype), literal=True)


# ------------------------------------------------------------- injective ops

def _same(e: Emitter, op: Op, src_idx: Index, mask: str | None) -> Var:
    return e.value_at(op.inputs[0], tuple(e.index_var(i) for i in src_idx), mask)


@rule("permute")
def _permute(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    dims = [d % len(idx) for d in op.attr("dims")]
    src = ["0"] * len(idx)
    for out_axis, in_axis in enumerate(dims):
        src[in_axis] = idx[out_axis]
    return _same(e, op, tuple(src), mask)


def linearize(idx: Index, shape: tuple[int, ...]) -> str:
    terms = [i if s == 1 else f"{i} * {s}" if i.isidentifier() else f"({i}) * {s}"
             for i, s, d in zip(idx, strides(shape), shape) if d != 1 and i != "0"]
    return " + ".join(terms) if terms else "0"


def delinearize(e: Emitter, lin: str, shape: tuple[int, ...]) -> Index:
    lin = e.index_var(lin)
    out = []
    for s, d in zip(strides(shape), shape):
        if d == 1:
            out.append("0")
            continue
        div = lin if s == 1 else f"{lin} // {s}"
        wrapped = f"({div}) % {d}" if " " in div else f"{div} % {d}"
        out.append(e.index_var(div if s * d == numel_of(shape) else wrapped))
    return tuple(out)


def numel_of(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def reshape_groups(src: tuple[int, ...], out: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of source and result dims with equal products ((64, 256) -> (64, 4, 64):
    [0]<->[0], [1]<->[1, 2]), so each run is re-linearized on its own, not the whole tensor."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(out):
        gi, gj, pi, pj = [], [], 1, 1
        while True:
            if pi <= pj and i < len(src) and (pi < pj or not gi):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(out) and (pj < pi or not gj):
                gj.append(j)
                pj *= out[j]
                j += 1
            else:
                break
            if pi == pj and gi and gj:
                break
        if pi != pj:
            return None
        # unit dims at the end of either shape join the last group
        while i < len(src) and src[i] == 1:
            gi.append(i)
            i += 1
        while j < len(out) and out[j] == 1:
            gj.append(j)
            j += 1
        groups.append((gi, gj))
    return groups


@rule("reshape")
def _reshape(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    src_shape, out_shape = shape_of(op.inputs[0]), shape_of(op.result)
    groups = reshape_groups(src_shape, out_shape)
    if groups is None:
        return _same(e, op, delinearize(e, linearize(idx, out_shape), src_shape), mask)
    src = ["0"] * len(src_shape)
    for gi, gj in groups:
        s_shape = tuple(src_shape[i] for i in gi)
        o_shape = tuple(out_shape[j] for j in gj)
        o_idx = tuple(idx[j] for j in gj)
        if [d for d in s_shape if d != 1] == [d for d in o_shape if d != 1]:
            it = iter(i for i, d in zip(o_idx, o_shape) if d != 1)  # only unit dims move
            part = tuple("0" if d == 1 else next(it) for d in s_shape)
        else:
            part = delinearize(e, linearize(o_idx, o_shape), s_shape)
        for i, v in zip(gi, part):
            src[i] = v
    return _same(e, op, tuple(src), mask)


@rule("broadcast_to")
def _broadcast_to(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    return _same(e, op, broadcast_index(idx, shape_of(op.inputs[0]), shape_of(op.result)), mask)


@rule("slice")
def _slice(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    axis = op.attr("axis") % len(idx)
    start, step = int(op.attr("start")), int(op.attr("step"))
    i = idx[axis]
    new = i if (start, step) == (0, 1) else f"{start} + {i}" if step == 1 else f"{start} + {i} * {step}"
    return _same(e, op, idx[:axis] + (new,) + idx[axis + 1:], mask)


def _and(mask: str | None, cond: str) -> str:
    return cond if mask is None else f"{mask} & ({cond})"


@rule("pad")
def _pad(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    pads = op.attr("pads")
    src_shape = shape_of(op.inputs[0])
    src, conds = [], []
    for d, i in enumerate(idx):
        before, after = int(pads[2 * d]), int(pads[2 * d + 1])
        # a negative pad crops: then that side needs no bounds check
        src.append(e.index_var(i if before == 0 else f"{i} - {before}" if before > 0 else f"{i} + {-before}"))
        if before > 0:
            conds.append(f"({src[-1]} >= 0)")
        if after > 0:
            conds.append(f"({src[-1]} < {src_shape[d]})")
    if not conds:
        return _same(e, op, tuple(src), mask)
    inside = e.tmp(" & ".join(conds), "m")
    x = e.value_at(op.inputs[0], tuple(src), _and(mask, inside))
    fill = op.attr("value")
    dtype = op.result.type.dtype
    fill = literal(bool(fill) if dtype == DType.bool else float(fill) if dtype.is_float else int(fill))
    return Var(e.tmp(f"tl.where({inside}, {e.compute(x)}, {fill})"), dtype,
               "tl.int1" if dtype == DType.bool else compute_type(dtype))


@rule("concat")
def _concat(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    axis = op.attr("axis") % len(idx)
    dtype = op.result.type.dtype
    parts, begin = [], 0
    for v in op.inputs:
        size = shape_of(v)[axis]
        local = e.index_var(idx[axis] if begin == 0 else f"{idx[axis]} - {begin}")
        inside = e.tmp(f"({local} >= 0) & ({local} < {size})", "m")
        x = e.value_at(v, idx[:axis] + (local,) + idx[axis + 1:], _and(mask, inside))
        parts.append((inside, e.compute(x)))
        begin += size
    expr = parts[-1][1]
    for inside, x in reversed(parts[:-1]):
        expr = f"tl.where({inside}, {x}, {expr})"
    return Var(e.tmp(expr), dtype, "tl.int1" if dtype == DType.bool else compute_type(dtype))


@rule("take")
def _take(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    table, ind = op.inputs
    tshape, ishape = shape_of(table), shape_of(ind)
    axis = op.attr("axis") % len(tshape)
    k = len(ishape)
    where = e.value_at(ind, idx[axis:axis + k], mask)
    n = tshape[axis]
    i = e.tmp(f"{where.expr}.to(tl.int64)", "j")
    i = e.tmp(f"tl.where({i} < 0, {i} + {n}, {i})", "j")  # negative indices wrap, like torch
    # never read outside the table even if the runtime's bounds check was bypassed
    i = e.tmp(f"tl.minimum(tl.maximum({i}, 0), {n - 1})", "j")
    return e.value_at(table, idx[:axis] + (i,) + idx[axis + k:], mask)


@rule("iota")
def _iota(e: Emitter, op: Op, idx: Index, mask: str | None) -> Var:
    axis = op.attr("axis") % max(len(idx), 1)
    dtype = op.attr("dtype")
    i = idx[axis] if idx else "0"
    if i == "0":
        return Var("0", dtype, compute_type(dtype), literal=True)
    return Var(e.tmp(f"({i}).to({tl_type(dtype)})"), dtype, compute_type(dtype))
