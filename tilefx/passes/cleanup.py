"""Cleanup passes: dead-code elimination and common-subexpression elimination.

- ``dce``: drops ops none of whose results reach a graph output, and the arrays
  of ``graph.constants`` no ``const`` op refers to any more. Every IR op is
  pure, ``fallback`` included (the frontend only emits functional aten ops), so
  an unused result means an unused op.
- ``cse``: two ops with the same name, inputs, attributes and result types
  compute the same thing; later ones are replaced by the first. Constants are
  compared by value: equal arrays (dtype, shape, bytes) are one constant, so
  a weight captured twice is stored once. ``kernel`` ops are left alone (their
  bodies would need a structural hash; fusion never makes duplicates).
"""

from __future__ import annotations

import hashlib
from typing import Any, Hashable

import numpy as np

from tilefx.ir.graph import Graph, Op
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter


@graph_pass("dce")
def dce(graph: Graph) -> Graph:
    live = {v.name for v in graph.outputs}
    kept: list[Op] = []
    for op in reversed(graph.ops):
        if any(r.name in live for r in op.results):
            kept.append(op)
            live.update(v.name for v in op.inputs)
    kept.reverse()
    used = {op.attr("name") for op in kept if op.name == "const" and op.attr("name") is not None}
    constants = {k: v for k, v in graph.constants.items() if k in used}
    if len(kept) == len(graph.ops) and len(constants) == len(graph.constants):
        return graph
    return graph.replace(ops=tuple(kept), constants=constants)


def _array_key(array: np.ndarray) -> Hashable:
    digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()
    return ("array", str(array.dtype), array.shape, digest)


def _op_key(graph: Graph, op: Op) -> Hashable | None:
    if op.name == "kernel":
        return None
    if op.name == "const":
        if op.attr("name") is not None:
            return _array_key(graph.constants[op.attr("name")])
        value: Any = op.attr("value")
        # repr tells 0.0 from -0.0 and 1 from True, which == would merge
        return ("scalar", op.result.type, type(value).__name__, repr(value))
    return (op.name, tuple(v.name for v in op.inputs), op.attrs, tuple(r.type for r in op.results))


@graph_pass("cse")
def cse(graph: Graph) -> Graph:
    rw = Rewriter(graph)
    seen: dict[Hashable, Op] = {}
    changed = False
    for op in graph.ops:
        op = op.with_inputs(tuple(rw.get(v) for v in op.inputs))
        key = _op_key(graph, op)
        first = seen.get(key) if key is not None else None
        if first is not None and key[0] == "array":
            # a hash collision must not merge different weights
            first = first if np.array_equal(graph.constants[first.attr("name")],
                                             graph.constants[op.attr("name")]) else None
        if first is None:
            if key is not None:
                seen.setdefault(key, op)
            rw.emit(op)
            continue
        for old, new in zip(op.results, first.results):
            rw.replace(old, new)
        changed = True
    if not changed:
        return graph
    return dce(rw.finish())
