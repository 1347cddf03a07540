"""What a lowering rule sees: the ``GraphBuilder`` plus torch <-> IR conversions.

``LoweringContext`` converts torch dtypes and (symbolic) sizes to IR types,
turns constant tensors into ``const`` ops on first use, and implements torch's
type promotion for mixed operands (a Python number or a lower-precision tensor
is cast to the common dtype with explicit ``cast`` / rank-0 ``const`` ops, since
IR binary ops take equal dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import sympy
import torch

from tilefx.compiler.lowerings.registry import Unsupported
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Value
from tilefx.ir.types import Dim, DType, TensorType, normalize_dim, symbol

_TORCH_TO_IR = {
    torch.float32: DType.float32, torch.float16: DType.float16, torch.bfloat16: DType.bfloat16,
    torch.float64: DType.float64, torch.int64: DType.int64, torch.int32: DType.int32,
    torch.int16: DType.int16, torch.int8: DType.int8, torch.uint8: DType.uint8,
    torch.bool: DType.bool,
}
# complex dtypes map once the IR has them (fft outputs are complex)
for _name in ("complex64", "complex128"):
    if hasattr(DType, _name):
        _TORCH_TO_IR[getattr(torch, _name)] = getattr(DType, _name)
_IR_TO_TORCH = {v: k for k, v in _TORCH_TO_IR.items()}

Number = (bool, int, float)


def ir_dtype(dtype: torch.dtype) -> DType:
    try:
        return _TORCH_TO_IR[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype} has no IR equivalent") from None


def torch_dtype(dtype: DType) -> torch.dtype:
    return _IR_TO_TORCH[dtype]


@dataclass(eq=False)
class ConstTensor:
    """A tensor known at compile time (a weight or a folded value); becomes a
    ``const`` op only when a lowered op actually reads it."""

    tensor: torch.Tensor
    hint: str


class LoweringContext:
    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder
        self._symbols: dict[sympy.Symbol, sympy.Symbol] = {}
        self._materialized: dict[int, Value] = {}

    # ---- sizes and types -------------------------------------------------
    def dim(self, d: Any) -> Dim:
        """A torch size as an IR dim. A ``SymInt`` is renamed onto symbols s0, s1, ...
        in order of first appearance; a sympy expr is taken to be an IR dim already
        (lowered symbolic-int nodes hold IR dims)."""
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            return int(d)
        if isinstance(d, torch.SymInt):
            expr = _plain_sympy(d.node.expr)
            for s in sorted(expr.free_symbols, key=lambda s: s.name):
                if s not in self._symbols:
                    self._symbols[s] = symbol(f"s{len(self._symbols)}")
            return normalize_dim(expr.xreplace(self._symbols))
        if isinstance(d, sympy.Basic):
            return normalize_dim(d)
        raise Unsupported(f"cannot read {d!r} as a size")

    def shape(self, sizes: Sequence[Any]) -> tuple[Dim, ...]:
        return tuple(self.dim(d) for d in sizes)

    def type_of(self, val: Any) -> TensorType:
        if not isinstance(val, torch.Tensor):
            raise Unsupported(f"expected a tensor, got {type(val).__name__}")
        return TensorType(ir_dtype(val.dtype), self.shape(val.shape))

    def out_type(self, node: torch.fx.Node, index: int = 0) -> TensorType:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[index]
        return self.type_of(val)

    @property
    def symbol_map(self) -> dict[str, str]:
        """torch's symbol names -> IR symbol names (``s17`` -> ``s0``)."""
        return {k.name: v.name for k, v in self._symbols.items()}

    # ---- constants -------------------------------------------------------
    def materialize(self, c: ConstTensor) -> Value:
        key = id(c)
        if key not in self._materialized:
            self._materialized[key] = self._emit_const(c.tensor, c.hint)
        return self._materialized[key]

    def forget_after(self, n_ops: int) -> None:
        """Drop cached const values whose op was rolled back (see frontend)."""
        alive = {r.name for op in self.b.ops[:n_ops] for r in op.results}
        self._materialized = {k: v for k, v in self._materialized.items() if v.name in alive}

    def _emit_const(self, t: torch.Tensor, hint: str) -> Value:
        t = t.detach().cpu()  # weights of a model on the GPU become numpy constants too
        dtype = ir_dtype(t.dtype)
        if t.dim() == 0:
            return self.b.scalar(t.item(), dtype, name=hint)
        if dtype == DType.bfloat16:
            # numpy has no bfloat16: store exactly as f32 and cast back in the IR
            return self.cast(self.b.const(t.float().contiguous().numpy(), hint), DType.bfloat16)
        return self.b.const(t.contiguous().numpy().copy(), hint)

    # ---- dtypes ----------------------------------------------------------
    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.type.dtype == dtype else self.b.op("cast", v, dtype=dtype)

    def scalar(self, value: Any, dtype: DType) -> Value:
        if not isinstance(value, Number):
            raise Unsupported(f"scalar operand {value!r} is not a Python number")
        return self.b.scalar(value, dtype)

    def as_value(self, x: Any, dtype: DType) -> Value:
        """A tensor operand cast to ``dtype``, or a Python number as a rank-0 const."""
        return self.cast(x, dtype) if isinstance(x, Value) else self.scalar(x, dtype)

    def promoted_dtype(self, a: Any, b: Any) -> DType:
        """torch.result_type of two operands (IR values or Python numbers)."""
        return ir_dtype(torch.result_type(_proxy(a), _proxy(b)))

    def promote(self, *operands: Any, dtype: DType | None = None) -> list[Value]:
        """Cast all operands to ``dtype`` (default: torch's promoted dtype of the first two)."""
        if dtype is None:
            dtype = self.promoted_dtype(operands[0], operands[1])
        return [self.as_value(x, dtype) for x in operands]


def _proxy(x: Any) -> Any:
    """A stand-in with the same promotion category (dtype, zero-dim or not) as ``x``."""
    if isinstance(x, Value):
        return torch.empty([1] * x.type.rank, dtype=torch_dtype(x.type.dtype))
    if isinstance(x, Number):
        return x
    raise Unsupported(f"operand {x!r} is neither a tensor nor a Python number")


def _plain_sympy(expr: sympy.Basic) -> sympy.Expr:
    """Rewrite torch's sympy helpers (FloorDiv, CeilDiv...) into plain sympy."""
    def floor_div(a, b):
        return sympy.floor(a / b)

    replacements = {"FloorDiv": floor_div, "CleanDiv": lambda a, b: a / b,
                    "CeilDiv": lambda a, b: sympy.ceiling(a / b), "IntTrueDiv": lambda a, b: a / b,
                    "ModularIndexing": lambda a, b, c: sympy.Mod(sympy.floor(a / b), c),
                    "PythonMod": sympy.Mod, "Mod": sympy.Mod}
    for fn in list(expr.atoms(sympy.Function)):
        name = type(fn).__name__
        if name in replacements:
            expr = expr.xreplace({fn: replacements[name](*[_plain_sympy(a) for a in fn.args])})
        elif name not in ("floor", "ceiling", "Max", "Min"):
            raise Unsupported(f"symbolic size {expr} uses {name}")
    # Symbols from torch carry other assumptions; ours are positive integers.
    return expr.xreplace({s: symbol(s.name) for s in expr.free_symbols
                          if s != symbol(s.name)})
