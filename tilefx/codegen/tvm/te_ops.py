"""IR op -> TVM tensor-expression (TE) compute: the registry of the TVM backend.

``@te_op("add")`` registers a function ``(ctx, op, inputs) -> list[te.Tensor]``
that builds the TE compute of one IR op from the TE tensors of its inputs.
Every IR op except the structural ones (``const`` is handled by the kernel
builder, ``kernel``/``fallback`` never reach codegen) and the composites that
passes rewrite away (``attention``, ``batch_norm``) has an entry; a test checks
that. This file holds the elementwise, broadcast and injective ops;
``te_nn.py`` holds reductions, normalizations, pooling and contractions.

Computes are named after the IR op (``ctx.name(op)``), so the blocks of the
PrimFunc can be recognized by the schedule templates (``conv2d``, ``matmul``).
This module imports TVM: import it only from code that is building a kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import tvm_ffi
from tvm import ir, sym, te, tirx

from tilefx.ir.graph import Op
from tilefx.ir.types import DType

TeFn = Callable[["TeContext", Op, list[te.Tensor]], list[te.Tensor]]
TE_OPS: dict[str, TeFn] = {}
# Ops with no TE compute: they are structural or rewritten by passes before codegen.
# attention and batch_norm are decomposed before TVM sees them; rms_norm is made only for cuda
NOT_LOWERED = frozenset({"const", "kernel", "fallback", "attention", "batch_norm", "rms_norm"})


def te_op(*names: str) -> Callable[[TeFn], TeFn]:
    def wrap(fn: TeFn) -> TeFn:
        for name in names:
            if name in TE_OPS:
                raise ValueError(f"TE compute for {name!r} registered twice")
            TE_OPS[name] = fn
        return fn
    return wrap


def tvm_dtype(dtype: DType) -> str:
    return dtype.name  # DType member names are TVM's dtype strings (float32, bool, ...)


@dataclass
class TeContext:
    """Per-kernel state while building TE: unique compute names."""

    counts: dict[str, int] = field(default_factory=dict)

    def name(self, op: Op | str) -> str:
        base = op if isinstance(op, str) else op.name
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


def shape_of(op: Op, i: int = 0) -> tuple[int, ...]:
    shape = op.results[i].type.shape
    if not all(isinstance(d, int) for d in shape):
        raise ValueError(f"op {op.name} -> %{op.results[i].name} has symbolic shape {shape}: "
                         "pass bindings to build_kernel to specialize it")
    return tuple(shape)


def out_dtype(op: Op, i: int = 0) -> str:
    return tvm_dtype(op.results[i].type.dtype)


def broadcast_index(t: te.Tensor, idx: Sequence[tirx.PrimExpr]) -> list[tirx.PrimExpr]:
    """Numpy broadcasting: align ``t``'s dims to the right of ``idx``; size-1 dims read 0."""
    rank = len(t.shape)
    lead = len(idx) - rank
    return [0 if int(t.shape[d]) == 1 else idx[lead + d] for d in range(rank)]


def elementwise(ctx: TeContext, op: Op, inputs: list[te.Tensor],
                fn: Callable[..., tirx.PrimExpr]) -> list[te.Tensor]:
    shape = shape_of(op)

    def body(*idx: tirx.PrimExpr) -> tirx.PrimExpr:
        return fn(*(t[tuple(broadcast_index(t, idx))] for t in inputs))
    return [te.compute(shape, body, name=ctx.name(op))]


def dt(x: tirx.PrimExpr) -> str:
    """The dtype string of an expression (TVM 0.27 keeps it in ``.ty`` on most nodes)."""
    return str(x.dtype) if hasattr(x, "dtype") else str(x.ty)


def const(value: float | int | bool, dtype: str) -> tirx.PrimExpr:
    return tirx.const(value, dtype)


# ---------------------------------------------------------------- NaN as torch has it
# tirx.max / tirx.min become LLVM maxnum / minnum, which return the other operand
# when one is NaN; torch's max, min, relu, clamp and reductions return NaN. Against a
# constant (relu, clamp) the helpers are one compare and one blend per vector:
# 512x1024 relu / clamp / softmax measured within noise of maxnum.

def _is_float(x: tirx.PrimExpr) -> bool:
    return "float" in dt(x)


def _is_const(x: tirx.PrimExpr) -> bool:
    return isinstance(x, (tirx.FloatImm, tirx.IntImm))


def nan_max(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``max(a, b)`` that is NaN when either is (torch.maximum); plain max for integers."""
    if not _is_float(a):
        return tirx.max(a, b)
    if _is_const(b):  # b is never NaN: "a < b ? b : a" keeps a NaN a
        return tirx.Select(a < b, b, a)
    return tirx.Select(tirx.any(a > b, isnan(a)), a, b)


def nan_min(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``min(a, b)`` that is NaN when either is (torch.minimum); plain min for integers."""
    if not _is_float(a):
        return tirx.min(a, b)
    if _is_const(b):
        return tirx.Select(a > b, b, a)
    return tirx.Select(tirx.any(a < b, isnan(a)), a, b)


def lowest(dtype: Any) -> tirx.PrimExpr:
    """The identity of max: -inf (not the lowest finite value: the max of -infs is -inf)."""
    return tirx.const(-math.inf, str(dtype)) if "float" in str(dtype) else tirx.min_value(str(dtype))


# Reductions (amax / amin / max pooling / softmax's row max) reduce an integer *key*
# of each float instead of the float: the key orders as the floats do, and every NaN
# gets the key that wins (the largest for max, the smallest for min). A NaN-aware
# float combiner is a compare, an or and a blend on the accumulator's dependency
# chain (amax of 512x1024 measured 2x slower), and rfactor does not know it, so
# those rows stayed serial; an integer max is one 1-cycle op on the chain, and the
# few integer ops of the key are off it.

def _key_dtype(dtype: str) -> str:
    return {"float32": "int32", "float64": "int64", "float16": "int16", "bfloat16": "int16"}[dtype]


_INF_BITS = {"float32": 0x7F800000, "float64": 0x7FF0000000000000, "float16": 0x7C00,
             "bfloat16": 0x7F80}


def _magnitude_bits(x: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    kdt = _key_dtype(dt(x))
    width = int(kdt[3:])
    bits = tirx.reinterpret(kdt, x) & tirx.const((1 << (width - 1)) - 1, kdt)
    return bits, tirx.const(_INF_BITS[dt(x)], kdt)


def isnan(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``x`` is NaN, tested on its bits. TVM's vectorizer scalarizes a loop holding
    ``tirx.isnan`` (measured: gathers and scatters), and simplifies ``x != x`` to
    false; integer ops on the bits vectorize."""
    if not _is_float(x):
        return tirx.const(False, "bool")
    bits, inf = _magnitude_bits(x)
    return bits > inf


def isfinite(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """Neither NaN nor an infinity, tested on the bits (see ``isnan``)."""
    if not _is_float(x):
        return tirx.const(True, "bool")
    bits, inf = _magnitude_bits(x)
    return bits < inf


def _flip(bits: tirx.PrimExpr, kdt: str) -> tirx.PrimExpr:
    # negative floats order backwards as integers: flip their magnitude bits (an involution)
    width = int(kdt[3:])
    sign = tirx.shift_right(bits, tirx.const(width - 1, kdt))  # 0 or -1 (arithmetic)
    return bits ^ (sign & tirx.const((1 << (width - 1)) - 1, kdt))


def order_key(x: tirx.PrimExpr, nan_wins: str) -> tirx.PrimExpr:
    """An integer that orders as ``x`` (-0 just below +0); NaN is the largest key when
    ``nan_wins == "max"`` and the smallest for ``"min"``. Integers are their own key."""
    if not _is_float(x):
        return x
    kdt = _key_dtype(dt(x))
    nan = tirx.max_value(kdt) if nan_wins == "max" else tirx.min_value(kdt)
    return tirx.Select(isnan(x), nan, _flip(tirx.reinterpret(kdt, x), kdt))


# A float reducer for windows (max pooling), which stay serial: no rfactor to know it,
# and no second block to turn keys back into floats (that one broke the pool's schedule)
nan_max_reducer = te.comm_reducer(lambda a, b: nan_max(a, b), lowest, name="nan_max")


def from_order_key(k: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """The float of a key (either NaN key gives a NaN)."""
    if "float" not in dtype:
        return k
    return tirx.reinterpret(dtype, _flip(k, _key_dtype(dtype)))


# ---------------------------------------------------------------- unary

def _erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    # TVM lowers erf to a scalar libm call; the fast_erf polynomial vectorizes
    # (max error ~1e-7 in float32). Float64 keeps libm for accuracy.
    if dt(x) in ("float32", "float16"):
        return _fast_erf(x)
    return te.erf(x)


def _fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    # The float32 rational approximation of Eigen / XLA (the one topi.fast_erf uses).
    dtype = dt(x)
    c = lambda v: tirx.const(v, dtype)  # noqa: E731
    x = nan_max(nan_min(x, c(4.0)), c(-4.0))  # erf(NaN) is NaN
    x2 = x * x
    alpha = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
             -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
             -1.60960333262415e-02)
    beta = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
            -7.37332916720468e-03, -1.42647390514189e-02)
    p = c(alpha[0])
    for a in alpha[1:]:
        p = p * x2 + c(a)
    q = c(beta[0])
    for b in beta[1:]:
        q = q * x2 + c(b)
    return x * p / q


def _gelu(approximate: str) -> Callable[[tirx.PrimExpr], tirx.PrimExpr]:
    def fn(x: tirx.PrimExpr) -> tirx.PrimExpr:
        c = lambda v: tirx.const(v, dt(x))  # noqa: E731
        if approximate == "tanh":
            inner = c(math.sqrt(2.0 / math.pi)) * (x + c(0.044715) * x * x * x)
            return c(0.5) * x * (c(1.0) + _fast("fast_tanh")(inner))
        return c(0.5) * x * (c(1.0) + _erf(x * c(1.0 / math.sqrt(2.0))))
    return fn


def _unary(fn: Callable[[tirx.PrimExpr], tirx.PrimExpr]) -> TeFn:
    return lambda ctx, op, ins: elementwise(ctx, op, ins, fn)


def _zero(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.const(0, dt(x))


def _sign(x: tirx.PrimExpr) -> tirx.PrimExpr:
    one, zero = tirx.const(1, dt(x)), _zero(x)
    return tirx.Select(x > zero, one, tirx.Select(x < zero, -one, zero))


def _hardsigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    c = lambda v: tirx.const(v, dt(x))  # noqa: E731
    return nan_min(nan_max(x + c(3.0), c(0.0)), c(6.0)) / c(6.0)


def _logical_not(x: tirx.PrimExpr) -> tirx.PrimExpr:
    if dt(x) == "bool":
        return tirx.Not(x)
    return tirx.Cast(dt(x), x == _zero(x))


def _fast(name: str) -> Callable[[tirx.PrimExpr], tirx.PrimExpr]:
    # exp / tanh / sigmoid as vectorizable polynomials (te_nn.fast_exp explains why)
    def fn(x: tirx.PrimExpr) -> tirx.PrimExpr:
        from tilefx.codegen.tvm import te_nn  # cycle: te_nn imports this module

        return getattr(te_nn, name)(x)
    return fn


UNARY_FNS: dict[str, Callable[[tirx.PrimExpr], tirx.PrimExpr]] = {
    "neg": lambda x: -x,
    "exp": _fast("fast_exp"), "log": te.log, "sqrt": te.sqrt, "rsqrt": te.rsqrt, "abs": te.abs,
    "relu": lambda x: nan_max(x, _zero(x)),
    "sigmoid": _fast("fast_sigmoid"), "tanh": _fast("fast_tanh"),
    "silu": lambda x: x * _fast("fast_sigmoid")(x),
    "hardswish": lambda x: x * _hardsigmoid(x),
    "hardsigmoid": _hardsigmoid,
    "erf": _erf,
    "reciprocal": lambda x: tirx.const(1, dt(x)) / x,
    "sin": te.sin, "cos": te.cos, "floor": te.floor, "ceil": te.ceil,
    "round": tirx.nearbyint,  # half to even, like torch.round
    "sign": _sign, "logical_not": _logical_not, "identity": lambda x: x,
}
for _name, _fn in UNARY_FNS.items():
    te_op(_name)(_unary(_fn))


@te_op("gelu")
def _gelu_op(ctx, op, ins):
    return elementwise(ctx, op, ins, _gelu(op.attr("approximate", "none")))


@te_op("leaky_relu")
def _leaky_relu(ctx, op, ins):
    slope = op.attr("negative_slope", 0.01)
    return elementwise(ctx, op, ins, lambda x: tirx.Select(
        x > _zero(x), x, x * tirx.const(slope, dt(x))))


@te_op("clamp")
def _clamp(ctx, op, ins):
    lo, hi = op.attr("min"), op.attr("max")

    def fn(x):
        if lo is not None:
            x = nan_max(x, tirx.const(lo, dt(x)))
        if hi is not None:
            x = nan_min(x, tirx.const(hi, dt(x)))
        return x
    return elementwise(ctx, op, ins, fn)


@te_op("cast")
def _cast(ctx, op, ins):
    dt = out_dtype(op)
    if dt == "bool":
        return elementwise(ctx, op, ins, lambda x: x != _zero(x))
    return elementwise(ctx, op, ins, lambda x: tirx.Cast(dt, x))


# ---------------------------------------------------------------- binary

def _div(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.floordiv(a, b) if "int" in dt(a) else a / b


def _pow(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """LLVM's pow is float-only: integers go through float64 and back, exact while the
    result fits in 53 bits (what an integer tensor raised to a small power gives)."""
    if "int" not in dt(a):
        return te.power(a, b)
    wide = te.power(tirx.Cast("float64", a), tirx.Cast("float64", b))
    return tirx.Cast(dt(a), tirx.round(wide))


def _scalar_constant(x: tirx.PrimExpr) -> float | None:
    """The value of ``x`` if it reads a scalar ``const`` of the kernel body, else None."""
    parts = _load_parts(x)
    if parts is None:
        return None
    body = getattr(getattr(parts[0], "op", None), "body", None)
    return float(body[0].value) if body and isinstance(body[0], tirx.FloatImm) else None


def _ieee_mul(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``a * b``; against a float constant 0 it says what IEEE says: NaN for an infinite
    or NaN ``a``. TVM's simplifier folds ``x * 0.0`` to 0 once the constant is inlined
    (``x * 0`` of inf was 0 where torch has NaN)."""
    for x, other in ((a, b), (b, a)):
        if _is_float(x) and _scalar_constant(other) == 0.0:
            return _zero_unless_finite(x)
    return a * b


def _ieee_sub(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``a - b``; ``x - x`` is NaN for an infinite or NaN ``x`` (TVM folds it to 0)."""
    if _is_float(a) and _same_load(a, b):
        return _zero_unless_finite(a)
    return a - b


def _load_parts(x: tirx.PrimExpr) -> tuple[Any, tuple] | None:
    """(tensor, indices) of a tensor read, or None: ``t[i]`` is a ``TensorSlice`` until
    arithmetic turns it into a ``te.tensor_load`` call."""
    if isinstance(x, te.TensorSlice):
        return x.tensor, tuple(x.indices)
    if getattr(getattr(x, "op", None), "name", "") == "te.tensor_load" and x.args:
        return x.args[0], tuple(x.args[1:])
    return None


def _same_load(a: tirx.PrimExpr, b: tirx.PrimExpr) -> bool:
    """Both read the same element of the same tensor."""
    pa, pb = _load_parts(a), _load_parts(b)
    if pa is None or pb is None or not pa[0].same_as(pb[0]) or len(pa[1]) != len(pb[1]):
        return False
    return all(tvm_ffi.structural_equal(i, j) for i, j in zip(pa[1], pb[1]))


def _zero_unless_finite(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.Select(isfinite(x), tirx.const(0.0, dt(x)), tirx.const(math.nan, dt(x)))


def _bool_or_arith(on_bool: Callable[[tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr],
                   arith: Callable[[tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr]) -> Callable:
    """torch's arithmetic on bool tensors is logic (``True + True`` is True); LLVM has no
    bool add or max, and TVM's float-only checks reject it."""
    return lambda a, b: on_bool(a, b) if dt(a) == "bool" else arith(a, b)


_or = lambda a, b: tirx.any(_as_bool(a), _as_bool(b))  # noqa: E731
_and = lambda a, b: tirx.all(_as_bool(a), _as_bool(b))  # noqa: E731

BINARY_FNS: dict[str, Callable[[tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr]] = {
    "add": _bool_or_arith(_or, lambda a, b: a + b), "sub": _ieee_sub,
    "mul": _bool_or_arith(_and, lambda a, b: _ieee_mul(a, b)),
    "div": _div, "pow": _pow, "maximum": _bool_or_arith(_or, nan_max),
    "minimum": _bool_or_arith(_and, nan_min),
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "logical_and": _and, "logical_or": _or,
}


def _as_bool(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x if dt(x) == "bool" else x != _zero(x)


for _name, _fn in BINARY_FNS.items():
    te_op(_name)(lambda ctx, op, ins, _fn=_fn: elementwise(ctx, op, ins, _fn))


@te_op("where")
def _where(ctx, op, ins):
    return elementwise(ctx, op, ins, lambda c, a, b: tirx.Select(c, a, b))


@te_op("broadcast_to")
def _broadcast_to(ctx, op, ins):
    return elementwise(ctx, op, ins, lambda x: x)


# ---------------------------------------------------------------- injective

def _bounded(idx: Sequence[tirx.Var], shape: Sequence[int]) -> Any:
    analyzer = sym.Analyzer()
    for v, d in zip(idx, shape):
        analyzer.bind(v, ir.Range(0, d))
    return analyzer


@te_op("reshape")
def _reshape(ctx, op, ins):
    (x,) = ins
    out_shape, in_shape = shape_of(op), [int(d) for d in x.shape]

    def body(*idx):
        flat = 0
        for i, d in zip(idx, out_shape):
            flat = flat * d + i
        src = []
        for d in reversed(in_shape):
            src.append(tirx.floormod(flat, d))
            flat = tirx.floordiv(flat, d)
        # simplified under the index bounds, so a blocked layout's reshape reads as
        # plain div/mod (``x[c // 16, ..., c % 16]``) that templates can recognize
        analyzer = _bounded(idx, out_shape)
        return x[tuple(analyzer.simplify(s) for s in reversed(src))]
    return [te.compute(out_shape, body, name=ctx.name(op))]


@te_op("permute")
def _permute(ctx, op, ins):
    (x,) = ins
    rank = len(x.shape)
    dims = [d % rank for d in op.attr("dims")]
    inverse = [dims.index(i) for i in range(rank)]
    return [te.compute(shape_of(op), lambda *idx: x[tuple(idx[inverse[i]] for i in range(rank))],
                       name=ctx.name(op))]


@te_op("concat")
def _concat(ctx, op, ins):
    shape = shape_of(op)
    axis = op.attr("axis") % len(shape)
    offsets, off = [], 0
    for t in ins:
        offsets.append(off)
        off += int(t.shape[axis])

    def body(*idx):
        # if_then_else (not Select) so no branch reads out of bounds
        expr = None
        for t, start in reversed(list(zip(ins, offsets))):
            src = list(idx)
            src[axis] = idx[axis] - start
            value = t[tuple(src)]
            end = start + int(t.shape[axis])
            expr = value if expr is None else tirx.if_then_else(idx[axis] < end, value, expr)
        return expr
    return [te.compute(shape, body, name=ctx.name(op))]


@te_op("slice")
def _slice(ctx, op, ins):
    (x,) = ins
    axis = op.attr("axis") % len(x.shape)
    start, step = op.attr("start"), op.attr("step", 1)

    def body(*idx):
        src = list(idx)
        src[axis] = start + idx[axis] * step
        return x[tuple(src)]
    return [te.compute(shape_of(op), body, name=ctx.name(op))]


@te_op("pad")
def _pad(ctx, op, ins):
    (x,) = ins
    pads = op.attr("pads")
    dt = out_dtype(op)
    value = tirx.const(op.attr("value", 0.0), dt)

    def body(*idx):
        src, inside = [], []
        for d, i in enumerate(idx):
            before, size = pads[2 * d], int(x.shape[d])
            src.append(i - before)
            if pads[2 * d] or pads[2 * d + 1]:
                inside.append(tirx.all(i >= before, i < before + size))
        if not inside:
            return x[tuple(src)]
        return tirx.if_then_else(tirx.all(*inside), x[tuple(src)], value)
    return [te.compute(shape_of(op), body, name=ctx.name(op))]


@te_op("take")
def _take(ctx, op, ins):
    table, indices = ins
    axis = op.attr("axis", 0) % len(table.shape)
    nidx, size = len(indices.shape), int(table.shape[axis])

    def body(*idx):
        i = indices[tuple(idx[axis:axis + nidx])]
        i = tirx.Cast("int64", i)
        i = tirx.Select(i < 0, i + size, i)  # negative indices count from the end
        # never read outside the table, even if the runtime's bounds check (which
        # raises IndexError as torch does) was bypassed: an index out of range reads
        # the nearest row
        i = tirx.max(tirx.min(i, tirx.const(size - 1, "int64")), tirx.const(0, "int64"))
        src = list(idx[:axis]) + [i] + list(idx[axis + nidx:])
        return table[tuple(src)]
    return [te.compute(shape_of(op), body, name=ctx.name(op))]


@te_op("iota")
def _iota(ctx, op, ins):
    axis, dt = op.attr("axis"), out_dtype(op)
    shape = shape_of(op)
    axis %= len(shape)
    return [te.compute(shape, lambda *idx: tirx.Cast(dt, idx[axis]), name=ctx.name(op))]


