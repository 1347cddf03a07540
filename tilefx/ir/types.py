"""Types of the tilefx IR: element dtypes and tensor types with symbolic shapes.

A dimension is either a Python ``int`` or a ``sympy.Expr`` over positive integer
symbols (``s0``, ``batch``...). Shape inference works on both, so a symbolic
batch dimension flows through a whole graph; code generation specializes the
symbols to the concrete sizes seen at call time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import reduce
from typing import Union

import sympy

Dim = Union[int, sympy.Expr]


class DType(enum.Enum):
    """Element types, each with its short name in IR text (``f32``) and its numpy name."""

    float32 = ("f32", "float32")
    float16 = ("f16", "float16")
    bfloat16 = ("bf16", "bfloat16")
    float64 = ("f64", "float64")
    int64 = ("i64", "int64")
    int32 = ("i32", "int32")
    int16 = ("i16", "int16")
    int8 = ("i8", "int8")
    uint8 = ("u8", "uint8")
    bool = ("bool", "bool")
    # complex values only flow between fallback ops (torch.fft...); no kernel computes on them
    complex64 = ("c64", "complex64")
    complex128 = ("c128", "complex128")

    @property
    def short(self) -> str:
        return self.value[0]

    @property
    def numpy_name(self) -> str:
        """The numpy dtype that holds values of this type. numpy has no bfloat16, so bf16
        numbers are held as float32 (exact: every bf16 value is a float32 value)."""
        return "float32" if self is DType.bfloat16 else self.value[1]

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float16, DType.bfloat16, DType.float64)

    @property
    def is_int(self) -> bool:
        return self in (DType.int64, DType.int32, DType.int16, DType.int8, DType.uint8)

    @property
    def itemsize(self) -> int:
        return {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i32": 4,
                "i16": 2, "i8": 1, "u8": 1, "bool": 1, "c64": 8, "c128": 16}[self.short]

    @staticmethod
    def from_short(name: str) -> DType:
        for dt in DType:
            if dt.short == name or dt.name == name:
                return dt
        raise ValueError(f"unknown dtype {name!r}")

    def __repr__(self) -> str:
        return self.short


def symbol(name: str) -> sympy.Symbol:
    """A symbolic dimension. All tilefx symbols are positive integers."""
    return sympy.Symbol(name, integer=True, positive=True)


def normalize_dim(d: Dim) -> Dim:
    """Collapse a sympy integer to ``int`` so static shapes are plain tuples of ints."""
    if isinstance(d, bool):
        raise TypeError("a dimension cannot be a bool")
    if isinstance(d, int):
        return d
    d = sympy.simplify(sympy.sympify(d))
    if d.is_Integer:
        return int(d)
    return d


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


@dataclass(frozen=True, slots=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(normalize_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> Dim:
        return normalize_dim(reduce(lambda a, b: a * b, self.shape, 1))

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    def free_symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if not isinstance(d, int):
                out |= d.free_symbols
        return out

    def specialize(self, bindings: dict[sympy.Symbol, int]) -> TensorType:
        """Substitute concrete sizes for symbols (used by codegen)."""
        return TensorType(self.dtype, tuple(
            d if isinstance(d, int) else d.subs(bindings) for d in self.shape))

    def __str__(self) -> str:
        return f"{self.dtype.short}[{', '.join(format_dim(d) for d in self.shape)}]"


def format_dim(d: Dim) -> str:
    """IR text of a dimension: ``64``, ``s0`` or ``{2*s0 + 1}`` for an expression."""
    if isinstance(d, int):
        return str(d)
    if isinstance(d, sympy.Symbol):
        return d.name
    return "{" + str(d) + "}"


def parse_dim(text: str) -> Dim:
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.lstrip("-").isdigit():
        return int(text)
    # our own grammar, never sympify: dim text comes from IR files and artifacts, and
    # sympify evaluates Python (dim_expr.py builds tilefx symbols, positive integers)
    from tilefx.ir.dim_expr import parse_dim_expr  # cycle: dim_expr imports this module

    return normalize_dim(parse_dim_expr(text))
