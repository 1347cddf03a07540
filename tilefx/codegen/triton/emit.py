"""Shared Triton source emission: the value of any body op at an index, as text.

Every template (pointwise, reduction, matmul, attention) works the same way:
it lays out an iteration domain (block index expressions, one per output
dim, and a mask), then asks the ``Emitter`` for the value of a body output at
that index. The emitter walks the kernel body backwards, inlining each op
(after Inductor's loop bodies):

- elementwise / broadcast ops compute on their operands at the same index
  (a broadcast operand gets ``0`` for its stretched dims);
- injective ops rewrite the *index*, never the data: ``permute`` permutes it,
  ``reshape`` re-linearizes it, ``slice`` scales and shifts it, ``pad`` and
  ``concat`` add a range condition to the mask and select, ``take`` loads the
  index tensor first, ``iota`` *is* the index;
- a body input is a ``tl.load`` at the row-major offset of the index.

Values are memoized per (value, index, mask), so a diamond computes once.
Floating values are computed in fp32 (fp64 stays fp64) and rounded to the
storage dtype only on ``store`` or on an explicit ``cast``: fp16/bf16 kernels
accumulate in fp32. Sizes are concrete (bodies are specialized to their
bindings first), so every size is a literal in the source.

Only long-stable ``tl.*`` functions are used (no ``libdevice``), so the same
source runs on Triton 3.6 on a GPU and under ``TRITON_INTERPRET=1`` here.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Collection, Iterator, Mapping, Sequence


from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.types import DType

Index = tuple[str, ...]

TL_TYPES: dict[DType, str] = {
    DType.float32: "tl.float32", DType.float16: "tl.float16", DType.bfloat16: "tl.bfloat16",
    DType.float64: "tl.float64", DType.int64: "tl.int64", DType.int32: "tl.int32",
    DType.int16: "tl.int16", DType.int8: "tl.int8", DType.uint8: "tl.uint8", DType.bool: "tl.int1",
}


def tl_type(dtype: DType) -> str:
    if dtype not in TL_TYPES:
        raise NotImplementedError(f"dtype {dtype.short} has no Triton type (complex values "
                                  f"run in PyTorch)")
    return TL_TYPES[dtype]


def compute_type(dtype: DType) -> str:
    """The type a value is computed in: fp16/bf16 widen to fp32."""
    return "tl.float32" if dtype in (DType.float16, DType.bfloat16) else tl_type(dtype)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_of(v: Value) -> tuple[int, ...]:
    shape = v.type.shape
    if not v.type.is_static:
        raise NotImplementedError(f"value %{v.name} has symbolic shape {v.type}: specialize "
                                  f"the kernel to concrete sizes first")
    return tuple(int(d) for d in shape)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def program_id(body: Graph, axis: int) -> str:
    """``tl.program_id(axis)``, widened to int64 when some tensor of the body has 2^31
    elements or more (offsets computed from it would overflow int32)."""
    vals = [*body.inputs, *(r for op in body.ops for r in op.results)]
    big = any(v.type.is_static and numel(shape_of(v)) >= 2 ** 31 for v in vals)
    return f"tl.program_id({axis}).to(tl.int64)" if big else f"tl.program_id({axis})"


def literal(value: object) -> str:
    """A Python literal for a scalar constant, as Triton's frontend reads it."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


def broadcast_index(idx: Index, operand: tuple[int, ...], result: tuple[int, ...]) -> Index:
    """The operand's index for a numpy-broadcast op whose result is at ``idx``."""
    lead = len(result) - len(operand)
    return tuple("0" if d == 1 and result[lead + i] != 1 else idx[lead + i]
                 for i, d in enumerate(operand))


@dataclass(frozen=True)
class Var:
    """An emitted value: an expression (a variable name or a literal) and its types."""

    expr: str
    dtype: DType         # the IR dtype
    held: str            # the tl type the expression has now
    literal: bool = False


class Emitter:
    """Writes the lines of one ``@triton.jit`` function body.

    ``args`` maps body input names to their pointer argument; ``overrides``
    maps value names a template computed itself (a matmul accumulator, a
    reduction result) to ``(index, Var)``: the value is known at that index only.
    """

    def __init__(self, body: Graph, args: Mapping[str, str], indent: int = 1) -> None:
        self.body = body
        self.args = dict(args)
        self.producer = body.producers()
        self.lines: list[str] = []
        self.indent = indent
        self.overrides: dict[str, tuple[Index, Var]] = {}
        # (index, shape, flat offset) of a row-major domain: a load at exactly that index
        # of a tensor of that shape reads at the flat offset (no index arithmetic)
        self.flat: tuple[Index, tuple[int, ...], str] | None = None
        # a tile mask -> (condition or None, index variable) for each of the tile's index
        # variables, for templates whose epilogue only stores (``narrow_mask``): a load
        # keeps the conditions on the variables its offset uses
        self.mask_parts: dict[str, tuple[tuple[str | None, str], ...]] = {}
        self._cache: dict[tuple, Var] = {}
        self._index_cache: dict[str, str] = {}
        self._n = 0
        # names holding one value per program (not a block): program ids, their
        # decompositions, loop counters. A load at a scalar offset gives a scalar.
        self.scalars: set[str] = {"pid", "bid", "pid_m", "pid_n", "group", "rows", "k0", "r0", "n0"}

    # -------------------------------------------------------------- plumbing
    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def tmp(self, expr: str, prefix: str = "t") -> str:
        name = f"{prefix}{self._n}"
        self._n += 1
        self.line(f"{name} = {expr}")
        return name

    def index_var(self, expr: str) -> str:
        """Name an index expression (memoized) unless it is already a name or literal."""
        if expr.isidentifier() or expr.lstrip("-").isdigit():
            return expr
        if expr not in self._index_cache:
            name = self._index_cache[expr] = self.tmp(expr, "j")
            if self.is_scalar(expr):
                self.scalars.add(name)
        return self._index_cache[expr]

    def is_scalar(self, expr: str) -> bool:
        return all(n in self.scalars or n == "tl" for n in re.findall(r"[A-Za-z_]\w*", expr))

    @contextmanager
    def block(self) -> Iterator[None]:
        """An indented block (a loop body): values computed inside stay inside."""
        saved = dict(self._cache), dict(self._index_cache)
        self.indent += 1
        try:
            yield
        finally:
            self.indent -= 1
            self._cache, self._index_cache = saved

    def compute(self, v: Var) -> str:
        """``v`` widened to its compute type (fp16/bf16 -> fp32)."""
        want = compute_type(v.dtype)
        if v.literal or v.held == want:
            return v.expr
        return f"{v.expr}.to({want})"

    def as_type(self, v: Var, tl: str) -> str:
        return v.expr if v.literal or v.held == tl else f"{v.expr}.to({tl})"

    def tile(self, v: Var, tl: str, block: str, full: bool, mask: str | None) -> str:
        """``v`` as a ``tl.dot`` operand of type ``tl``; broadcast to ``block`` (e.g.
        ``[BLOCK_M, BLOCK_K]``) unless ``full`` says its index spans the whole block
        (a size-1 dim drops out of the index, which would leave a smaller tile whose
        loads were not masked), and then zero where ``mask`` is off."""
        expr = self.as_type(v, tl)
        if full:
            return expr
        expr = f"tl.broadcast_to({expr}, {block})"
        return expr if mask is None else f"tl.where({mask}, {expr}, 0)"

    def offset(self, idx: Index, shape: tuple[int, ...]) -> str:
        terms = [f"{i} * {s}" if s != 1 else i
                 for i, s, d in zip(idx, strides(shape), shape) if d != 1 and i != "0"]
        return " + ".join(terms) if terms else "0"

    # -------------------------------------------------------------- values
    def value_at(self, v: Value, idx: Index, mask: str | None) -> Var:
        if v.name in self.overrides:
            where, var = self.overrides[v.name]
            if tuple(where) != tuple(idx):
                raise NotImplementedError(f"%{v.name} (computed by the template) is read at "
                                          f"another index {idx} than its own {where}")
            return var
        key = (v.name, tuple(idx), mask)
        if key not in self._cache:
            op = self.producer.get(v.name)
            self._cache[key] = self.load(v, idx, mask) if op is None else self.op_at(op, v, idx, mask)
        return self._cache[key]

    def load(self, v: Value, idx: Index, mask: str | None) -> Var:
        if v.name not in self.args:
            raise NotImplementedError(f"%{v.name} is neither computed in the kernel nor an argument")
        shape = shape_of(v)
        if self.flat is not None and self.flat[:2] == (tuple(idx), shape):
            off = self.flat[2]
        else:
            off = self.offset(idx, shape)
        mask = self.narrow_mask(mask, off)
        ptr = self.args[v.name] if off == "0" else f"{self.args[v.name]} + {off}"
        if off != "0" and mask is not None and self.is_scalar(off):
            # Triton refuses a block mask on a scalar pointer: give the pointer the mask's shape
            ptr += f" + ({mask}).to(tl.int32) * 0"
        # An offset-0 load is always in bounds: no mask, and a scalar that broadcasts.
        text = f"tl.load({ptr})" if off == "0" or mask is None else \
            f"tl.load({ptr}, mask={mask}, other=0)"
        return Var(self.tmp(text), v.type.dtype, tl_type(v.type.dtype))

    def uses(self, expr: str) -> set[str]:
        """The names ``expr`` depends on, through the index variables it names."""
        by_name = {name: e for e, name in self._index_cache.items()}
        out: set[str] = set()
        todo = re.findall(r"[A-Za-z_]\w*", expr)
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += re.findall(r"[A-Za-z_]\w*", by_name.get(n, ""))
        return out

    def narrow_mask(self, mask: str | None, offset: str) -> str | None:
        """``mask`` without the parts on index variables ``offset`` does not use (a bias
        ``[N]`` read in a ``[BLOCK_M, BLOCK_N]`` epilogue needs the column condition only:
        one load per column, not one per element). Only masks a template registered in
        ``mask_parts``: there, a lane the dropped part turns off is never stored, so its
        value does not matter."""
        parts = self.mask_parts.get(mask or "")
        if not parts:
            return mask
        used = self.uses(offset)
        by_name = set(self._index_cache.values())
        if any(n not in by_name and n not in self.scalars and n != "tl" and all(n != v for _, v in parts)
               for n in used):
            return mask  # a name not traced to the tile's index variables: keep every part
        kept = [cond for cond, var in parts if cond and var in used]
        if len(kept) == sum(1 for cond, _ in parts if cond):
            return mask
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else self.tmp(" & ".join(f"({c})" for c in kept), "m")

    def store(self, ptr: str, v: Value, idx: Index, mask: str | None, zero: str | None = None,
              offset: str | None = None) -> None:
        """Store body value ``v`` computed at ``idx`` to the row-major output ``ptr``
        (at ``offset`` when the template knows the flat offset already)."""
        var = self.value_at(v, idx, mask)
        off = offset or self.offset(idx, shape_of(v))
        if zero is not None:  # the pointer must have the full block shape
            off = zero if off == "0" else f"{off} + {zero}"
        val = self.as_type(var, tl_type(v.type.dtype))
        self.line(f"tl.store({ptr} + {off}, {val}" + (f", mask={mask})" if mask else ")"))

    def op_at(self, op: Op, v: Value, idx: Index, mask: str | None) -> Var:
        from tilefx.codegen.triton import ops as ops_mod  # cycle: ops imports this module

        rule = ops_mod.RULES.get(op.name)
        if rule is None:
            raise NotImplementedError(f"op {op.name!r} has no Triton emission rule (the kernel "
                                      f"runs in the interpreter)")
        return rule(self, op, idx, mask)


# Flags: ``any``/``all`` of a whole epilogue value, computed by the kernel that computes the value
# (passes/fusion.py puts them there on cuda: T5's fp16 ``isinf(h).any()`` after each residual
# add). Each program reduces its tile and combines it into a workspace word with an atomic; the
# program that counts itself last reads the word, stores the flag and resets the word and the
# counter, so the workspace is ready for the next launch (no memset, nothing to re-zero under a
# CUDA graph). Workspace: per flag [value, counter], int32, made once per module and device. One
# launch at a time per device (tilefx runs a plan on one stream).
FLAGS: dict[str, tuple[str, int]] = {"any": ("max", 0), "all": ("min", 1)}  # combine, neutral


def flag_input(body: Graph, v: Value) -> Value | None:
    """The value a flag output ``v`` reduces (``any``/``all`` of all of it to one element),
    or None when ``v`` is not a flag."""
    op = body.producers().get(v.name)
    if op is None or op.name not in FLAGS or not v.type.is_static or numel(shape_of(v)) != 1:
        return None
    return op.inputs[0]


def workspace_source(body: Graph, flags: Sequence[str]) -> list[str]:
    """Module-level lines defining ``_workspace(like)``: the [value, counter] words of the flag
    outputs named ``flags`` on ``like``'s device, at rest (neutral value, zero count)."""
    producers = body.producers()
    init = [w for name in flags for w in (FLAGS[producers[name].name][1], 0)]
    return ["_WS = {}", "", "", "def _workspace(like):",
            "    ws = _WS.get(like.device)",
            "    if ws is None:  # the first (eager) call: never during a CUDA graph capture",
            f"        ws = _WS[like.device] = torch.zeros({len(init)}, dtype=torch.int32, device=like.device)",
            *[f"        ws[{k}] = {w}" for k, w in enumerate(init) if w],
            "    return ws", ""]


def store_flag(e: "Emitter", ptr: str, v: Value, idx: Index, mask: str | None, ws: str,
               k: int, programs: str) -> None:
    """Emit flag ``v`` (``k``-th of the kernel): this program's tile of its input at ``idx``
    combined into workspace word ``2k``; the last of ``programs`` stores it and resets."""
    op = e.producer[v.name]
    combine, neutral = FLAGS[op.name]
    x = e.value_at(op.inputs[0], idx, mask)
    bits = f"({x.expr} != 0).to(tl.int32)"
    if mask is not None:
        bits = f"tl.where({mask}, {bits}, {neutral})"
    part = e.tmp(f"tl.{combine}({bits})", "flag")
    e.line(f"tl.atomic_{combine}({ws} + {2 * k}, {part})")
    done = e.tmp(f"tl.atomic_add({ws} + {2 * k + 1}, 1)", "done")
    e.line(f"if {done} == {programs} - 1:  # every tile is in: store, and rest the workspace")
    e.line(f"    total = tl.atomic_xchg({ws} + {2 * k}, {neutral})")
    e.line(f"    tl.store({ptr}, total.to({tl_type(v.type.dtype)}))")
    e.line(f"    tl.atomic_xchg({ws} + {2 * k + 1}, 0)")


def the_anchor(body: Graph, names: Collection[str], what: str) -> Op:
    """The one op of ``names`` a template is built around (a matmul, a conv2d...); a body
    with none or several is not that template's kernel."""
    found = [op for op in body.ops if op.name in names]
    if len(found) != 1:
        raise NotImplementedError(f"{what} kernel with {len(found)} {'/'.join(sorted(names))} ops")
    return found[0]
