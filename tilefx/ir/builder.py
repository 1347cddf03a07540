"""``GraphBuilder``: the one way code creates IR, with types inferred on the fly.

    b = GraphBuilder("mlp")
    x = b.input(TensorType(DType.float32, (symbol("s0"), 1024)), "x")
    w = b.const(weight_array, "fc1.weight")
    y = b.op("gelu", b.op("matmul", x, w), approximate="tanh")
    graph = b.finish([y])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.ops import get_op, infer_types
from tilefx.ir.types import DType, TensorType


def dtype_of_array(array: np.ndarray) -> DType:
    return DType.from_short({"float32": "f32", "float16": "f16", "float64": "f64", "int64": "i64",
                             "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
                             "bool": "bool", "bfloat16": "bf16",
                             "complex64": "c64", "complex128": "c128"}[str(array.dtype)])


class GraphBuilder:
    def __init__(self, name: str = "main", names_taken: Sequence[str] = ()) -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.constants: dict[str, np.ndarray] = {}
        self._taken: set[str] = set(names_taken)
        self._counter = 0

    def fresh_name(self, hint: str | None = None) -> str:
        if hint:
            base = "".join(c if c.isalnum() or c == "_" else "_" for c in hint)
            if base and base[0].isdigit():
                base = "v" + base
            name, i = base, 1
            while name in self._taken:
                name, i = f"{base}_{i}", i + 1
        else:
            while f"{self._counter}" in self._taken:
                self._counter += 1
            name = f"{self._counter}"
        self._taken.add(name)
        return name

    def input(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(self.fresh_name(name), type)
        self.inputs.append(v)
        return v

    def const(self, array: np.ndarray, name: str | None = None) -> Value:
        array = np.ascontiguousarray(array)
        key = self.fresh_name(name or "c")
        self.constants[key] = array
        t = TensorType(dtype_of_array(array), tuple(int(d) for d in array.shape))
        return self.add(Op("const", (), (Value(key, t),), freeze_attrs({"name": key})))

    def scalar(self, value: bool | int | float, dtype: DType, name: str | None = None) -> Value:
        py = bool(value) if dtype == DType.bool else int(value) if dtype.is_int else float(value)
        v = Value(self.fresh_name(name), TensorType(dtype, ()))
        return self.add(Op("const", (), (v,), freeze_attrs({"value": py})))

    def op(self, name: str, /, *inputs: Value, result_name: str | None = None, **attrs: Any) -> Value:
        results = self.op_multi(name, *inputs, result_names=[result_name] if result_name else None, **attrs)
        if len(results) != 1:
            raise ValueError(f"op {name} has {len(results)} results; use op_multi")
        return results[0]

    def op_multi(self, name: str, /, *inputs: Value, result_names: Sequence[str] | None = None,
                 **attrs: Any) -> list[Value]:
        types = infer_types(name, [v.type for v in inputs], attrs)
        return self.op_typed(name, inputs, types, result_names=result_names, **attrs)

    def op_typed(self, name: str, inputs: Sequence[Value], types: Sequence[TensorType], /, *,
                 result_names: Sequence[str] | None = None, body: Graph | None = None,
                 **attrs: Any) -> list[Value]:
        """Add an op whose result types the caller knows (const, kernel, fallback).

        ``name`` is positional-only so ``kernel``/``const`` can take a ``name`` attribute.
        """
        full = get_op(name).complete_attrs(attrs)
        names = list(result_names or [None] * len(types))
        results = tuple(Value(self.fresh_name(n), t) for n, t in zip(names, types))
        op = Op(name, tuple(inputs), results, freeze_attrs(full), body)
        self.ops.append(op)
        return list(results)

    def add(self, op: Op) -> Value:
        """Append an already-built op (its result names must be fresh)."""
        for r in op.results:
            self._taken.add(r.name)
        self.ops.append(op)
        return op.results[0] if op.results else None  # type: ignore[return-value]

    def finish(self, outputs: Sequence[Value]) -> Graph:
        return Graph(self.name, tuple(self.inputs), tuple(self.ops), tuple(outputs), dict(self.constants))


def kernel_op(kind: str, input_types: Sequence[TensorType], body_fn: Any, name: str = "k",
              input_names: Sequence[str] | None = None) -> Op:
    """A ``kernel`` op whose body ``body_fn(builder, *inputs)`` builds (returning one value
    or several): how tests, benchmarks and tools make a kernel without running fusion."""
    b = GraphBuilder(name)
    names = list(input_names or [f"a{i}" for i in range(len(input_types))])
    outs = body_fn(b, *[b.input(t, n) for t, n in zip(input_types, names)])
    outs = [outs] if isinstance(outs, Value) else list(outs)
    body = b.finish(outs)
    args = tuple(Value(f"x{i}", t) for i, t in enumerate(input_types))
    results = tuple(Value(f"y{i}", v.type) for i, v in enumerate(outs))
    return Op("kernel", args, results, freeze_attrs({"kind": kind, "name": name}), body)
