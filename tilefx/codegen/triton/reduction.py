"""Reduction template: row reductions, softmax, log_softmax, layer_norm and rms_norm with fused
prologue and epilogue, over a 2-D ``[XBLOCK, RBLOCK]`` tile.

The reduction op's input is seen as ``X`` rows of ``R`` elements: the kept
dims, flattened, index the rows and the reduced dims the columns, so any set
of reduced axes works (index arithmetic, not a transpose). The prologue (the
pointwise ops feeding the reduction) is computed on the tile by the shared
emitter; the epilogue (ops after it, on the reduction's result shape) is
computed where the result is known. A sum-like reduction's epilogue may also be on the
input's shape (a *row epilogue*: ``h * rsqrt(mean(h^2) + eps)`` as the model wrote it,
``x - amax(x)``): it is computed on the tile still held when the row is one tile, else in a
second pass over the row (``passes/fusion.py`` joins it on cuda).

- *persistent*: the whole row is one tile (``RBLOCK >= R``), read once;
- *looped*: ``for r0 in range(0, R, RBLOCK)``, with one pass per statistic
  (sum-like: 1; softmax: an online max/sum pass and a write pass;
  layer_norm: mean, variance, write; rms_norm: mean square, write), recomputing the
  prologue per pass.

A prologue value the kernel also exports on another shape than the reduced
input (a ``[768]`` parameter computed once and read by a later kernel too) does
not depend on the reduction: it gets a flat pointwise function of its own
(``pointwise.emit_flat_kernel``), launched after the reduction.

Knobs (``SPACE``): ``XBLOCK`` rows per program, ``RBLOCK``, ``persistent``,
``num_warps``. Pooling has its own template (``pool.py``).
"""

from __future__ import annotations

from typing import Any

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.emit import Emitter, Var, compute_type, literal, next_pow2, numel, program_id, shape_of
from tilefx.codegen.triton.matmul import sm_count
from tilefx.codegen.triton.ops import NAN, delinearize
from tilefx.codegen.triton.pointwise import arg_names, emit_flat_kernel
from tilefx.codegen.triton.source import HEADER, KernelSource
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType

SPACE: dict[str, list[Any]] = {"XBLOCK": [1, 2, 4, 8, 16, 32, 64], "RBLOCK": [64, 128, 256, 512, 1024, 2048],
                               "persistent": [True, False], "num_warps": [1, 2, 4, 8, 16]}
ROW_OPS = ("softmax", "log_softmax", "layer_norm", "rms_norm")  # result has the input's shape
SUM_LIKE = ("sum", "mean", "amax", "amin", "any", "all", "prod")  # result has the reduced shape
# tl.reduce needs a jit-compiled combine function for a product
PROD_COMBINE = "@triton.jit\ndef _mul(a, b):\n    return a * b\n"
# tl.max / tl.min reduce with maxnum / minnum, which drop NaN; torch's amax, amin and
# softmax's row max return NaN when the row has one
NAN_COMBINE = ("@triton.jit\ndef _nan_max(a, b):\n    return tl.maximum(a, b, tl.PropagateNan.ALL)\n\n\n"
               "@triton.jit\ndef _nan_min(a, b):\n    return tl.minimum(a, b, tl.PropagateNan.ALL)\n")
NEG_INF = 'float("-inf")'
PERSISTENT_LIMIT = 4096  # widest row kept whole in one tile by default


class Plan:
    """The reduction of one body: its anchor op, its X x R view and its outputs."""

    def __init__(self, body: Graph) -> None:
        anchors = [op for op in body.ops if op.name in ROW_OPS + SUM_LIKE + ("max_pool2d",
                   "avg_pool2d", "adaptive_avg_pool2d")]
        if len(anchors) != 1:
            raise NotImplementedError(f"reduction kernel with {len(anchors)} reduction ops")
        self.anchor: Op = anchors[0]
        if self.anchor.name not in ROW_OPS + SUM_LIKE:
            raise NotImplementedError(f"{self.anchor.name} has no Triton reduction template yet")
        self.body = body
        x = self.anchor.inputs[0]
        self.shape = shape_of(x)
        rank = len(self.shape)
        name = self.anchor.name
        if name in ("softmax", "log_softmax"):
            dims = {self.anchor.attr("dim") % max(rank, 1)}
        elif name in ("layer_norm", "rms_norm"):
            dims = set(range(rank - self.anchor.attr("normalized_ndim"), rank))
        else:
            given = self.anchor.attr("dims")
            dims = {d % max(rank, 1) for d in given} if given else set(range(rank))
        self.rdims = sorted(dims)
        self.xdims = [d for d in range(rank) if d not in dims]
        self.X = numel([self.shape[d] for d in self.xdims])
        self.R = numel([self.shape[d] for d in self.rdims])
        self.row = name in ROW_OPS
        # values that depend on the reduction's result (the epilogue) vs all others
        post: set[str] = {self.anchor.result.name}
        for op in body.ops:
            if any(v.name in post for v in op.inputs):
                post.update(r.name for r in op.results)
        self.out_shape = shape_of(self.anchor.result)
        self.in_domain: list[int] = []
        self.out_domain: list[int] = []
        self.side: list[int] = []  # prologue values on another shape: a flat function each
        self.row_out: list[int] = []  # sum-like: values on the input's shape computed from the result
        for j, v in enumerate(body.outputs):
            s = shape_of(v)
            if v.name not in post and s == self.shape:
                self.in_domain.append(j)
            elif v.name in post and s == self.out_shape:
                (self.in_domain if self.row else self.out_domain).append(j)
            elif v.name not in post:
                self.side.append(j)
            elif s == self.shape and not self.row:
                self.row_out.append(j)
            else:
                raise NotImplementedError(f"reduction kernel output %{v.name} {s} is neither on the "
                                          f"reduced input {self.shape} nor on the result {self.out_shape}")


def default_schedule(body: Graph, target: Any = None) -> Schedule:
    """Persistent when the row fits (read once, no loop); rows per program up to a
    4096-element tile, fewer when that would leave SMs idle; looped beyond."""
    p = Plan(body)
    rb = next_pow2(p.R)
    if rb <= PERSISTENT_LIMIT:
        fill = max(1, next_pow2(p.X // sm_count(target) + 1) // 2)  # largest power of 2 <= X / SMs
        xb = max(1, min(next_pow2(p.X), 4096 // rb, 64, fill))
        return Schedule.of(XBLOCK=xb, RBLOCK=rb, persistent=True,
                           num_warps=8 if xb * rb >= 4096 else 4 if xb * rb >= 1024 else 2)
    return Schedule.of(XBLOCK=1, RBLOCK=1024, persistent=False, num_warps=8)


def clamp(p: Plan, schedule: Schedule) -> Schedule:
    persistent = bool(schedule.get("persistent", True))
    rb = next_pow2(p.R) if persistent else min(int(schedule.get("RBLOCK", 1024)), next_pow2(p.R))
    persistent = persistent or rb >= p.R
    xb = min(int(schedule.get("XBLOCK", 1)), next_pow2(p.X))
    return Schedule.of(XBLOCK=xb, RBLOCK=rb, persistent=persistent,
                       num_warps=min(int(schedule.get("num_warps", 4)), max(1, xb * rb // 32)))


class _Writer:
    def __init__(self, p: Plan, e: Emitter, xb: int, rb: int, persistent: bool) -> None:
        self.p, self.e, self.xb, self.rb, self.persistent = p, e, xb, rb, persistent
        e.line(f"xoffs = {program_id(p.body, 0)} * XBLOCK + tl.arange(0, XBLOCK)[:, None]")
        self.xmask = None
        if p.X % xb:
            e.line(f"xmask = xoffs < {p.X}")
            self.xmask = "xmask"
        e.line("rbase = tl.arange(0, RBLOCK)[None, :]")
        xshape = tuple(p.shape[d] for d in p.xdims)
        self.xidx = dict(zip(p.xdims, delinearize(e, "xoffs", xshape))) if p.xdims else {}
        self.ctype = compute_type(p.anchor.result.type.dtype if p.anchor.name not in ("any", "all")
                                  else DType.int32)

    # the tile: index and mask of one chunk of columns starting at ``start``
    def tile(self, start: str) -> tuple[tuple[str, ...], str | None]:
        e, p = self.e, self.p
        e.line("roffs = rbase" if start == "0" else f"roffs = {start} + rbase")
        rmask = None
        if p.R % self.rb or (not self.persistent):
            if p.R % self.rb:
                e.line(f"rmask = roffs < {p.R}")
                rmask = "rmask"
        rshape = tuple(p.shape[d] for d in p.rdims)
        ridx = dict(zip(p.rdims, delinearize(e, "roffs", rshape))) if p.rdims else {}
        idx = tuple(self.xidx[d] if d in self.xidx else ridx[d] for d in range(len(p.shape)))
        masks = [m for m in (self.xmask, rmask) if m]
        mask = None if not masks else masks[0] if len(masks) == 1 else e.tmp(" & ".join(masks), "m")
        return idx, mask

    def where(self, mask: str | None, expr: str, other: str) -> str:
        return expr if mask is None else f"tl.where({mask}, {expr}, {other})"

    def x_value(self, idx: tuple[str, ...], mask: str | None) -> str:
        v = self.e.value_at(self.p.anchor.inputs[0], idx, mask)
        if v.dtype == DType.bool:
            expr = f"{v.expr}.to(tl.int32)"
        else:
            expr = self.e.as_type(v, self.ctype) if not v.literal else v.expr
        if v.literal:
            return f"tl.full([XBLOCK, RBLOCK], {expr}, {self.ctype})"
        if any(numel(v.type.shape) == 1 for v in self.p.body.inputs):
            # a one-element input is loaded as a scalar: a reduced value made of such loads
            # alone (a 1x1 table gathered, a 1-element row) has no axis 1 for tl.sum
            return f"tl.broadcast_to({expr}, [XBLOCK, RBLOCK])"
        return expr

    def out_index(self) -> tuple[str, ...]:
        p = self.p
        if p.row:
            raise AssertionError
        keep = p.anchor.attr("keepdim")
        return tuple(self.xidx[d] if d in self.xidx else "0" for d in range(len(p.shape))
                     if keep or d in self.xidx)

    # --------------------------------------------------------------- sum-like
    def sum_like(self) -> Var:
        e, p = self.e, self.p
        name, ct = p.anchor.name, self.ctype
        neutral = {"sum": "0", "mean": "0", "any": "0", "all": "1", "prod": "1",
                   "amax": 'float("-inf")' if "float" in ct else literal(-(2 ** 62)),
                   "amin": 'float("inf")' if "float" in ct else literal(2 ** 62)}[name]
        if name in ("amax", "any"):
            combine, final = "tl.maximum({a}, {b}, " + NAN + ")", "tl.max"
        elif name in ("amin", "all"):
            combine, final = "tl.minimum({a}, {b}, " + NAN + ")", "tl.min"
        elif name == "prod":
            combine, final = "{a} * {b}", "tl.reduce"
        else:
            combine, final = "{a} + {b}", "tl.sum"
        if self.persistent:
            idx, mask = self.held = self.tile("0")
            self.store_inputs(idx, mask)
            acc = e.tmp(self.where(mask, self.x_value(idx, mask), neutral))
        else:
            acc = e.tmp(f"tl.full([XBLOCK, RBLOCK], {neutral}, {ct})", "acc")
            e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
            with e.block():
                idx, mask = self.tile("r0")
                self.store_inputs(idx, mask)
                x = e.tmp(self.where(mask, self.x_value(idx, mask), neutral))
                e.line(f"{acc} = {combine.format(a=acc, b=x)}")
        if name == "prod":
            res = e.tmp(f"tl.reduce({acc}, 1, _mul)[:, None]", "r")
        elif name in ("amax", "amin") and "float" in ct:
            res = e.tmp(f"tl.reduce({acc}, 1, _nan_{name[1:]})[:, None]", "r")
        else:
            res = e.tmp(f"{final}({acc}, 1)[:, None]", "r")
        if name == "mean":
            res = e.tmp(f"{res} / {p.R}", "r")
        if name in ("any", "all"):
            return Var(e.tmp(f"{res} != 0", "r"), DType.bool, "tl.int1")
        return Var(res, p.anchor.result.type.dtype, ct)

    def row_epilogue(self) -> None:
        """Store the outputs on the input's shape that read the result (which the caller has
        made readable at ``out_index``): on the held tile when persistent, else in a second
        pass over the row, its prologue recomputed."""
        if self.persistent:
            self.store_at(self.p.row_out, *self.held)
            return
        self.e.line(f"for r0 in range(0, {self.p.R}, RBLOCK):")
        with self.e.block():
            self.store_at(self.p.row_out, *self.tile("r0"))

    def store_inputs(self, idx: tuple[str, ...], mask: str | None) -> None:
        """Store the outputs that live on the reduced input (exported prologue values, and
        for row ops the result and its epilogue)."""
        self.store_at(self.p.in_domain, idx, mask)

    def store_at(self, positions: list[int], idx: tuple[str, ...], mask: str | None) -> None:
        """Store the body outputs at ``positions``, on the input's shape, at the tile ``idx``."""
        p = self.p
        zero = None if p.X > 1 and p.R > 1 else "(xoffs * 0 + rbase * 0)"
        for j in positions:
            self.e.store(f"out{j}", p.body.outputs[j], idx, mask, zero=zero)

    # --------------------------------------------------------------- row ops
    def row_op(self) -> None:
        e, p = self.e, self.p
        name = p.anchor.name
        if self.persistent:
            idx, mask = self.tile("0")
            x = e.tmp(self.x_value(idx, mask), "x")
            stats = self.row_stats_persistent(x, mask)
            self.row_result(idx, mask, x, stats)
            return
        if name == "rms_norm":
            q = e.tmp("tl.zeros([XBLOCK, RBLOCK], tl.float32)", "acc")
            e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
            with e.block():
                idx, mask = self.tile("r0")
                x = e.tmp(self.where(mask, self.x_value(idx, mask), "0.0"), "x")
                e.line(f"{q} = {q} + {x} * {x}")
            stats = ("", self.rstd(q))
        elif name == "layer_norm":
            s = e.tmp("tl.zeros([XBLOCK, RBLOCK], tl.float32)", "acc")
            e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
            with e.block():
                idx, mask = self.tile("r0")
                e.line(f"{s} = {s} + {self.where(mask, self.x_value(idx, mask), '0.0')}")
            mean = e.tmp(f"tl.sum({s}, 1)[:, None] / {p.R}", "mean")
            q = e.tmp("tl.zeros([XBLOCK, RBLOCK], tl.float32)", "acc")
            e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
            with e.block():
                idx, mask = self.tile("r0")
                d = e.tmp(self.where(mask, f"{self.x_value(idx, mask)} - {mean}", "0.0"), "d")
                e.line(f"{q} = {q} + {d} * {d}")
            stats = (mean, e.tmp(f"tl.rsqrt(tl.sum({q}, 1)[:, None] / {p.R} + "
                                 f"{literal(float(p.anchor.attr('eps')))})", "rstd"))
        else:  # softmax: online max and rescaled sum in one pass
            m = e.tmp('tl.full([XBLOCK, 1], float("-inf"), tl.float32)', "m")
            s = e.tmp("tl.zeros([XBLOCK, 1], tl.float32)", "s")
            e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
            with e.block():
                idx, mask = self.tile("r0")
                x = e.tmp(self.x_value(idx, mask), "x")
                mc = e.tmp(f"tl.maximum({m}, tl.reduce({self.where(mask, x, NEG_INF)}, 1, _nan_max)"
                           f"[:, None], {NAN})")
                # a max still -inf (a leading masked block) rescales by 1 and adds 0s, not
                # exp(-inf - -inf) = NaN; NaN and +inf pass through, as in torch
                safe = e.tmp(f'tl.where({mc} == float("-inf"), 0.0, {mc})')
                ex = self.where(mask, f"tl.exp({x} - {safe})", "0.0")
                e.line(f"{s} = {s} * tl.exp({m} - {safe}) + tl.sum({ex}, 1)[:, None]")
                e.line(f"{m} = {mc}")
            stats = (m, s)
        e.line(f"for r0 in range(0, {p.R}, RBLOCK):")
        with e.block():
            idx, mask = self.tile("r0")
            x = e.tmp(self.x_value(idx, mask), "x")
            self.row_result(idx, mask, x, stats)

    def rstd(self, squares: str) -> str:
        """``rsqrt(mean of the row's squares + eps)`` from a tile of accumulated squares."""
        eps = literal(float(self.p.anchor.attr("eps")))
        return self.e.tmp(f"tl.rsqrt(tl.sum({squares}, 1)[:, None] / {self.p.R} + {eps})", "rstd")

    def row_stats_persistent(self, x: str, mask: str | None) -> tuple[str, str]:
        e, p = self.e, self.p
        if p.anchor.name == "rms_norm":
            sq = e.tmp(self.where(mask, f"{x} * {x}", "0.0"), "sq")
            return "", self.rstd(sq)
        if p.anchor.name == "layer_norm":
            mean = e.tmp(f"tl.sum({self.where(mask, x, '0.0')}, 1)[:, None] / {p.R}", "mean")
            d = e.tmp(self.where(mask, f"{x} - {mean}", "0.0"), "d")
            rstd = e.tmp(f"tl.rsqrt(tl.sum({d} * {d}, 1)[:, None] / {p.R} + "
                         f"{literal(float(p.anchor.attr('eps')))})", "rstd")
            return mean, rstd
        m = e.tmp(f"tl.reduce({self.where(mask, x, NEG_INF)}, 1, _nan_max)[:, None]", "m")
        s = e.tmp(f"tl.sum({self.where(mask, f'tl.exp({x} - {m})', '0.0')}, 1)[:, None]", "s")
        return m, s

    def row_result(self, idx: tuple[str, ...], mask: str | None, x: str, stats: tuple[str, str]) -> None:
        e, p = self.e, self.p
        a, b = stats
        name = p.anchor.name
        if name == "softmax" and p.anchor.attr("safe", False):  # all -inf row: 0, not NaN
            y = e.tmp(f"tl.where({a} == float('-inf'), 0.0, tl.exp({x} - {a}) / {b})", "y")
        elif name == "softmax":
            y = e.tmp(f"tl.exp({x} - {a}) / {b}", "y")
        elif name == "log_softmax":
            y = e.tmp(f"{x} - {a} - tl.log({b})", "y")
        elif name == "rms_norm":
            y = e.tmp(f"{x} * {b}", "y")
        else:
            n = p.anchor.attr("normalized_ndim")
            w = e.value_at(p.anchor.inputs[1], idx[len(idx) - n:], mask)
            bias = e.value_at(p.anchor.inputs[2], idx[len(idx) - n:], mask)
            y = e.tmp(f"({x} - {a}) * {b} * {e.compute(w)} + {e.compute(bias)}", "y")
        e.overrides[p.anchor.result.name] = (idx, Var(y, p.anchor.result.type.dtype, "tl.float32"))
        self.store_inputs(idx, mask)
        del e.overrides[p.anchor.result.name]


def emit(body: Graph, name: str, schedule: Schedule) -> KernelSource:
    p = Plan(body)
    schedule = clamp(p, schedule)
    xb, rb, persistent = int(schedule["XBLOCK"]), int(schedule["RBLOCK"]), bool(schedule["persistent"])
    warps = int(schedule["num_warps"])
    args, ins, outs = arg_names(body)
    e = Emitter(body, args)
    w = _Writer(p, e, xb, rb, persistent)
    if p.row:
        w.row_op()
    else:
        res = w.sum_like()
        oidx = w.out_index()
        e.overrides[p.anchor.result.name] = (oidx, res)
        for j in p.out_domain:
            zero = None if p.X > 1 else "xoffs * 0"
            e.store(f"out{j}", body.outputs[j], oidx, w.xmask, zero=zero)
        if p.row_out:
            w.row_epilogue()
    nan = p.anchor.name in ("softmax", "log_softmax", "amax", "amin")
    side_fns, side_calls = side_outputs(p, name, args, ins, outs)
    text = "\n".join([HEADER] + ([NAN_COMBINE] if nan else []) +
                      ([PROD_COMBINE] if p.anchor.name == "prod" else []) + ["@triton.jit",
                      f"def {name}({', '.join(ins + outs)}, XBLOCK: tl.constexpr, RBLOCK: tl.constexpr):",
                      *e.lines, "", *side_fns,
                      f"def launch({', '.join(ins + outs)}):",
                      f"    {name}[({-(-p.X // xb)},)]({', '.join(ins + outs)}, XBLOCK={xb}, RBLOCK={rb}, "
                      f"num_warps={warps})", *side_calls, ""])
    return KernelSource(name, text, (("num_warps", warps),), schedule)


def side_outputs(p: Plan, name: str, args: dict[str, str], ins: list[str],
                 outs: list[str]) -> tuple[list[str], list[str]]:
    """The flat functions storing the prologue values exported on other shapes, one per
    shape, and their launch lines. They read only kernel inputs, so run in any order."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j in p.side:
        by_shape.setdefault(shape_of(p.body.outputs[j]), []).append(j)
    fns: list[str] = []
    calls: list[str] = []
    for g, (shape, positions) in enumerate(by_shape.items()):
        n = numel(shape)
        if not n:
            continue
        block = min(1024, next_pow2(n))
        warps = 4 if block >= 1024 else 2 if block >= 256 else 1
        fn, params = f"{name}_side{g}", ins + [outs[j] for j in positions]
        fns += emit_flat_kernel(p.body, fn, shape, [(outs[j], p.body.outputs[j]) for j in positions],
                                block, args, params) + [""]
        calls.append(f"    {fn}[({-(-n // block)},)]({', '.join(params)}, BLOCK={block}, num_warps={warps})")
    return fns, calls
