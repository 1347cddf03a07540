"""Core data structures of the tilefx IR: ``Value``, ``Op`` and ``Graph``.

A ``Graph`` is a straight-line SSA program over tensors: typed inputs, a tuple
of ops in execution order, and outputs. Everything is immutable; a pass builds a
new graph (``Graph.replace``) instead of mutating one, so a graph can be shared
and compared freely.

- ``Value``: a named, typed tensor. Names are unique within a graph.
- ``Op``: an op name from the registry (``ir/ops``), its input values, its
  result values, attributes (a sorted tuple of ``(key, value)`` pairs, so ops
  hash and compare structurally) and, for ``kernel`` ops, a ``body`` subgraph.
- Constants (weights) are ``const`` ops: either ``{name = "w0"}`` referring to
  the array in ``Graph.constants`` or ``{value = 0.5}`` for a scalar, whose
  result is a rank-0 tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import numpy as np

from tilefx.ir.types import TensorType

AttrValue = Any  # int | float | bool | str | None | DType | sympy.Expr | tuple[AttrValue, ...]


@dataclass(frozen=True, slots=True)
class Value:
    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"%{self.name}"


def freeze_attrs(attrs: Mapping[str, AttrValue]) -> tuple[tuple[str, AttrValue], ...]:
    def freeze(v: AttrValue) -> AttrValue:
        return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v
    return tuple(sorted((k, freeze(v)) for k, v in attrs.items()))


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    inputs: tuple[Value, ...]
    results: tuple[Value, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    body: Graph | None = None

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"op {self.name} has {len(self.results)} results")
        return self.results[0]

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def attr(self, key: str, default: AttrValue = None) -> AttrValue:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def with_inputs(self, inputs: tuple[Value, ...]) -> Op:
        return self if inputs == self.inputs else replace(self, inputs=tuple(inputs))


@dataclass(frozen=True, eq=False)
class Graph:
    name: str
    inputs: tuple[Value, ...]
    ops: tuple[Op, ...]
    outputs: tuple[Value, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)  # name -> numpy array

    def replace(self, **changes: Any) -> Graph:
        return replace(self, **changes) if changes else self

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def producers(self) -> dict[str, Op]:
        """Map value name -> the op that defines it."""
        return {r.name: op for op in self.ops for r in op.results}

    def users(self) -> dict[str, list[Op]]:
        """Map value name -> ops that read it (in order, with repeats collapsed)."""
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            for v in dict.fromkeys(op.inputs):
                out.setdefault(v.name, []).append(op)
        return out

    def const_data(self, op: Op) -> Any:
        """The numpy array of a ``const`` op (a 0-d array for a scalar)."""
        assert op.name == "const", op
        name = op.attr("name")
        if name is not None:
            return self.constants[name]
        return np.asarray(op.attr("value"), dtype=op.result.type.dtype.numpy_name)

    def __str__(self) -> str:
        from tilefx.ir.printer import print_graph  # cycle: the printer imports this module

        return print_graph(self)


def attrs_equal(a: AttrValue, b: AttrValue) -> bool:
    """``==`` on attribute values, except that NaN equals NaN and -0.0 differs from 0.0
    (so a graph equals its own printed-and-parsed copy, bit for bit)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(attrs_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def structural_equal(a: Graph, b: Graph) -> bool:
    """Same ops, types, attributes, bodies and constant data (names included)."""
    if (a.name, a.inputs, a.outputs) != (b.name, b.inputs, b.outputs):
        return False
    if len(a.ops) != len(b.ops):
        return False
    for x, y in zip(a.ops, b.ops):
        if (x.name, x.inputs, x.results) != (y.name, y.inputs, y.results):
            return False
        if not attrs_equal(x.attrs, y.attrs):
            return False
        if (x.body is None) != (y.body is None):
            return False
        if x.body is not None and not structural_equal(x.body, y.body):
            return False
    if set(a.constants) != set(b.constants):
        return False
    return all(
        a.constants[k].dtype == b.constants[k].dtype
        and a.constants[k].shape == b.constants[k].shape
        and np.array_equal(a.constants[k], b.constants[k], equal_nan=True)
        for k in a.constants)
