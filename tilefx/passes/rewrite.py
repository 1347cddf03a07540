"""Rebuilding a graph op by op: the shared machinery of the rewriting passes.

Graphs are immutable, so a pass walks the old ops in order and emits ops into
a ``Rewriter``, which keeps

- a substitution map (old value name -> new value): when a rule replaces a
  value, every later reader is rewired, graph outputs included,
- the producer of every emitted value, so rules can look upstream,
- fresh names that never clash with a name of the old graph.

``PatternRewriter`` adds local rewrite rules as data (after tinygrad's
``PatternMatcher``): a table ``{op name: [rule, ...]}`` (``"*"`` matches any
op). A rule gets the rewriter and the op (inputs already substituted) and
returns the replacement value(s), or ``None`` to decline. Ops a rule creates
with ``rw.op(...)`` go through the rules too, so rewrites compose in one walk.
Rules must make progress (never re-emit the op they were given unchanged).
A single replacement value the rule just created takes the name of the value
it replaces, so ``%h = reshape(...)`` stays ``%h`` in the IR text.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from tilefx.ir.builder import GraphBuilder, dtype_of_array
from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.ops import get_op, infer_types
from tilefx.ir.types import DType, TensorType

Rule = Callable[["PatternRewriter", Op], "Value | Sequence[Value] | None"]


def all_names(graph: Graph) -> set[str]:
    names = {v.name for v in graph.inputs} | set(graph.constants)
    names |= {r.name for op in graph.ops for r in op.results}
    return names


def use_counts(graph: Graph) -> dict[str, int]:
    """How many ops read each value (an op reading it twice counts once), plus graph outputs."""
    counts: dict[str, int] = {}
    for op in graph.ops:
        for v in dict.fromkeys(op.inputs):
            counts[v.name] = counts.get(v.name, 0) + 1
    for v in graph.outputs:
        counts[v.name] = counts.get(v.name, 0) + 1
    return counts


class Rewriter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._old_names = all_names(graph)
        self._names = GraphBuilder(graph.name, names_taken=sorted(self._old_names))
        self.ops: list[Op] = []
        self.constants: dict[str, Any] = dict(graph.constants)
        self.subst: dict[str, Value] = {}
        self.producers: dict[str, Op] = {}
        self._uses = use_counts(graph)

    # --- reading -------------------------------------------------------
    def get(self, v: Value) -> Value:
        while v.name in self.subst:
            v = self.subst[v.name]
        return v

    def producer(self, v: Value) -> Op | None:
        return self.producers.get(self.get(v).name)

    def const_array(self, v: Value) -> np.ndarray | None:
        """The data of ``v`` if a ``const`` op defines it (a 0-d array for a scalar), else None."""
        op = self.producer(v)
        if op is None or op.name != "const":
            return None
        if op.attr("name") is not None:
            return self.constants[op.attr("name")]
        return np.asarray(op.attr("value"), dtype=op.result.type.dtype.numpy_name)

    def held_array(self, v: Value) -> np.ndarray | None:
        """Like ``const_array``, and also the values of a bf16 constant. numpy has no
        bfloat16, so a bf16 constant is held as ``cast(const f32 -> bf16)``
        (``typed_const``); its values are the f32 array rounded to bf16, held as f32."""
        data = self.const_array(v)
        if data is not None or v.type.dtype != DType.bfloat16:
            return data
        op = self.producer(v)
        if op is None or op.name != "cast" or op.inputs[0].type.dtype != DType.float32:
            return None
        data = self.const_array(op.inputs[0])
        return None if data is None else round_to_bf16(data)

    def scalar(self, v: Value) -> float | int | bool | None:
        """The number behind a rank-0 const (a one-element const counts too)."""
        data = self.const_array(v)
        if data is None or data.size != 1:
            return None
        return data.reshape(()).item()

    def uses(self, v: Value) -> int:
        """Readers of ``v`` in the old graph (new values made by a rule: 1)."""
        return self._uses.get(self.get(v).name, 1)

    def fresh_name(self, hint: str | None = None) -> str:
        return self._names.fresh_name(hint)

    # --- writing -------------------------------------------------------
    def replace(self, old: Value, new: Value) -> None:
        if old.type != new.type:
            raise TypeError(f"rewrite of %{old.name} changes its type {old.type} -> {new.type}")
        if old.name != new.name:
            self.subst[old.name] = new
            # overcounts by the reader being replaced: conservative for single-use checks
            self._uses[new.name] = self._uses.get(new.name, 0) + self._uses.get(old.name, 1)

    def emit(self, op: Op) -> list[Value]:
        """Append ``op`` (its inputs substituted) as is."""
        op = op.with_inputs(tuple(self.get(v) for v in op.inputs))
        self.ops.append(op)
        for r in op.results:
            self.producers[r.name] = op
        return list(op.results)

    def make_op(self, name: str, inputs: Sequence[Value], attrs: Mapping[str, Any],
                hint: str | None = None) -> Op:
        """A new op with inferred result types and fresh result names (not yet emitted)."""
        inputs = [self.get(v) for v in inputs]
        types = infer_types(name, [v.type for v in inputs], dict(attrs))
        full = get_op(name).complete_attrs(dict(attrs))
        results = tuple(Value(self.fresh_name(hint), t) for t in types)
        return Op(name, tuple(inputs), results, freeze_attrs(full))

    def op(self, name: str, *inputs: Value, hint: str | None = None, **attrs: Any) -> Value:
        results = self.emit_new(self.make_op(name, inputs, attrs, hint))
        return results[0]

    def emit_new(self, op: Op) -> list[Value]:
        return self.emit(op)

    def const(self, array: np.ndarray, hint: str) -> Value:
        """A named array constant (rank >= 1) or, for a 0-d array, a scalar ``const {value}``."""
        array = np.ascontiguousarray(array)
        dtype = dtype_of_array(array)
        if array.ndim == 0:
            return self.scalar_const(array.item(), dtype, hint)
        key = self.fresh_name(hint)
        self.constants[key] = array
        value = Value(key, TensorType(dtype, tuple(int(d) for d in array.shape)))
        return self.emit(Op("const", (), (value,), freeze_attrs({"name": key})))[0]

    def typed_const(self, array: np.ndarray, dtype: DType, hint: str) -> Value:
        """A constant of IR type ``dtype`` from ``array`` (rounded once to ``dtype``): a
        plain ``const``, but for bf16 arrays of rank >= 1 the ``cast(const f32 -> bf16)``
        that holds them (``held_array`` reads it back; the runtime casts it once)."""
        array = np.asarray(array)
        if dtype != DType.bfloat16 or array.ndim == 0:
            return self.const(array.astype(dtype.numpy_name), hint)
        return self.op("cast", self.const(round_to_bf16(array), hint), dtype=DType.bfloat16)

    def scalar_const(self, value: bool | int | float, dtype: DType, hint: str = "c") -> Value:
        py = bool(value) if dtype == DType.bool else int(value) if dtype.is_int else float(value)
        v = Value(self.fresh_name(hint), TensorType(dtype, ()))
        return self.emit(Op("const", (), (v,), freeze_attrs({"value": py})))[0]

    def finish(self, outputs: Iterable[Value] | None = None) -> Graph:
        outs = tuple(self.get(v) for v in (self.graph.outputs if outputs is None else outputs))
        return Graph(self.graph.name, self.graph.inputs, tuple(self.ops), outs, self.constants)


class PatternRewriter(Rewriter):
    """A ``Rewriter`` that tries a table of local rules on every op it emits."""

    def __init__(self, graph: Graph, rules: Mapping[str, Sequence[Rule]], max_depth: int = 64) -> None:
        super().__init__(graph)
        self.rules = rules
        self._depth = 0
        self._max_depth = max_depth
        self.changed = False

    def emit_new(self, op: Op) -> list[Value]:
        return self.rewrite(op)

    def rewrite(self, op: Op) -> list[Value]:
        op = op.with_inputs(tuple(self.get(v) for v in op.inputs))
        if self._depth < self._max_depth:
            for rule in (*self.rules.get(op.name, ()), *self.rules.get("*", ())):
                self._depth += 1
                try:
                    out = rule(self, op)
                finally:
                    self._depth -= 1
                if out is None:
                    continue
                new = [out] if isinstance(out, Value) else list(out)
                if len(new) == 1:
                    new = [self._take_name(new[0], op.results[0])]
                for old, v in zip(op.results, new, strict=True):
                    self.replace(old, v)
                self.changed = True
                return new
        return self.emit(op)

    def _take_name(self, new: Value, old: Value) -> Value:
        """Give a replacement the name of the value it replaces, so IR text stays recognizable.

        Only for a value the rule just created as the last op emitted: nothing
        can have read it yet, so renaming it is safe."""
        last = self.ops[-1] if self.ops else None
        if (last is None or new.name in self._old_names or len(last.results) != 1
                or last.results[0] != new or new.type != old.type):
            return new
        renamed = Value(old.name, new.type)
        self.ops[-1] = Op(last.name, last.inputs, (renamed,), last.attrs, last.body)
        del self.producers[new.name]
        self.producers[old.name] = self.ops[-1]
        self.subst[new.name] = renamed
        return renamed


def round_to_bf16(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to bfloat16 (to nearest even, as torch casts), held as float32."""
    held = np.ascontiguousarray(array, dtype=np.float32)
    if not (held.view(np.uint32) & 0xFFFF).any():
        return held  # already bf16 values (a weight the frontend held): no copy
    return torch.from_numpy(held.copy()).to(torch.bfloat16).float().numpy()


def rewrite_graph(graph: Graph, rules: Mapping[str, Sequence[Rule]]) -> Graph:
    """One walk of ``graph`` applying ``rules``; returns ``graph`` itself when nothing matched."""
    rw = PatternRewriter(graph, rules)
    for op in graph.ops:
        rw.rewrite(op)
    return rw.finish() if rw.changed else graph


def unique_name(hint: str, taken: set[str]) -> str:
    """``hint``, or ``hint1``, ``hint2``... : the first not in ``taken`` (which it joins)."""
    name, i = hint, 0
    while name in taken:
        i += 1
        name = f"{hint}{i}"
    taken.add(name)
    return name


def value_readers(graph: Graph) -> dict[str, list[Op]]:
    """Value name -> the ops of ``graph`` that read it (an op once, however many times it reads)."""
    out: dict[str, list[Op]] = {}
    for op in graph.ops:
        for v in dict.fromkeys(op.inputs):
            out.setdefault(v.name, []).append(op)
    return out
