"""The op registry: every IR op declares its attributes, its shape/dtype
inference and its fusion category in one place.

The category is what fusion and the schedule spaces look at (after TVM's
``OpPatternKind``):

- ``elementwise``: out[i] = f(in[i]) over equal shapes,
- ``broadcast``: elementwise with numpy broadcasting of inputs,
- ``injective``: each output element reads one input element (reshape,
  permute, slice, concat, take...),
- ``reduction``: reduces one or more axes (sum, softmax, layer_norm, pooling),
- ``contraction``: matmul / conv, the anchors of a fused kernel,
- ``opaque``: nothing fuses across it (const, kernel, fallback, attention).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tilefx.ir.types import TensorType


class Category(enum.IntEnum):
    elementwise = 0
    broadcast = 1
    injective = 2
    reduction = 3
    contraction = 4
    opaque = 8


REQUIRED = object()  # marks an attribute without a default
VARIADIC = -1

InferFn = Callable[[Sequence[TensorType], dict[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    name: str
    category: Category
    attrs: dict[str, Any]  # attribute -> default (or REQUIRED)
    num_inputs: int | tuple[int, int]  # exact count, (min, max), or VARIADIC
    infer: InferFn
    doc: str = ""

    def complete_attrs(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = set(given) - set(self.attrs)
        if unknown:
            raise TypeError(f"op {self.name!r} has no attribute(s) {sorted(unknown)}")
        out = {}
        for key, default in self.attrs.items():
            if key in given:
                out[key] = given[key]
            elif default is REQUIRED:
                raise TypeError(f"op {self.name!r} needs attribute {key!r}")
            else:
                out[key] = default
        return out

    def check_arity(self, n: int) -> None:
        if self.num_inputs == VARIADIC:
            ok = n >= 1
        elif isinstance(self.num_inputs, tuple):
            ok = self.num_inputs[0] <= n <= self.num_inputs[1]
        else:
            ok = n == self.num_inputs
        if not ok:
            raise TypeError(f"op {self.name!r} takes {self.num_inputs} inputs, got {n}")


OPS: dict[str, OpDef] = {}


def register_op(name: str, category: Category, *, inputs: int | tuple[int, int] = 1,
                attrs: dict[str, Any] | None = None, doc: str = "") -> Callable[[InferFn], InferFn]:
    """Decorator: ``@register_op("add", Category.broadcast, inputs=2)`` on the inference fn."""
    def wrap(fn: InferFn) -> InferFn:
        if name in OPS:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = OpDef(name, category, dict(attrs or {}), inputs, fn, doc or (fn.__doc__ or ""))
        return fn
    return wrap


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}") from None


def infer_types(name: str, input_types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    opdef = get_op(name)
    opdef.check_arity(len(input_types))
    return opdef.infer(list(input_types), opdef.complete_attrs(attrs))
