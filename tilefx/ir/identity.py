"""Kernel identity: what every floor above the IR needs to name, specialize and key a kernel.

- ``kernel_key``: a hash of a kernel's computation, blind to value and kernel
  names. Two kernels with one key compute the same function on the same types,
  so one built kernel serves both (the compile session's memo, the cost model's caches,
  the fusion advisor's decisions, the collected workloads).
- ``kernel_symbols`` / ``symbol_bindings``: the symbolic dims a kernel mentions,
  and bindings keyed by name turned into the sympy symbols the IR uses.
- ``specialize``: a body with concrete sizes for its symbolic dims, in value
  types *and* attributes (a reshape's target shape). The one copy every backend
  uses, so what TVM and Triton build for a binding is the same body.
- ``fused_op_names``: the compute ops a kernel fuses, for reports.

The functional hash (``functional_hash``) is the other identity: of what a
kernel computes, from its outputs on seeded inputs; it keys tuning records.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import sympy

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.interpreter import substitute
from tilefx.ir.types import symbol


def fused_op_names(kernel: Op) -> tuple[str, ...]:
    """The compute ops a kernel fuses, in order (scalar constants left out)."""
    assert kernel.body is not None, kernel
    return tuple(op.name for op in kernel.body.ops if op.name != "const")


def kernel_key(kernel: Op) -> str:
    """A hash of a kernel's computation, blind to value and kernel names.

    Two kernels with the same key compute the same function on the same types,
    so one built kernel serves both.
    """
    body = kernel.body
    assert body is not None
    index: dict[str, int] = {v.name: i for i, v in enumerate(body.inputs)}
    parts = [kernel.attr("kind"), ";".join(str(v.type) for v in body.inputs)]

    def describe(op: Op) -> str:
        for r in op.results:
            index.setdefault(r.name, len(index))
        attrs = dict(op.attrs)
        if op.name == "const" and attrs.get("name") is not None:
            data = body.const_data(op)
            attrs["name"] = hashlib.sha1(data.tobytes()).hexdigest() + str(data.dtype)
        inner = kernel_key(op) if op.name == "kernel" else ""
        return (f"{op.name}({','.join(str(index[v.name]) for v in op.inputs)})"
                f"{sorted(attrs.items(), key=lambda kv: kv[0])!r}"
                f"{[str(r.type) for r in op.results]}{inner}")

    parts += [describe(op) for op in body.ops]
    parts.append(",".join(str(index[v.name]) for v in body.outputs))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def kernel_symbols(kernel: Op) -> set[sympy.Symbol]:
    """The symbolic dims a kernel's types mention (a static kernel has none)."""
    out: set[sympy.Symbol] = set()
    for v in (*kernel.inputs, *kernel.results):
        out |= v.type.free_symbols()
    for op in kernel.body.ops if kernel.body is not None else ():
        for r in op.results:
            out |= r.type.free_symbols()
    return out


def symbol_bindings(bindings: Mapping[Any, int] | None) -> dict[sympy.Symbol, int] | None:
    """Bindings keyed by symbol name (the tuner's, the database's) or by symbol, as symbols."""
    if not bindings:
        return None
    return {symbol(k) if isinstance(k, str) else k: int(v) for k, v in bindings.items()}


def specialize(graph: Graph, bindings: Mapping[Any, int] | None) -> Graph:
    """``graph`` with concrete sizes for its symbolic dims, in types and attributes."""
    subs = symbol_bindings(bindings)
    if not subs:
        return graph

    def fix(v: Value) -> Value:
        return Value(v.name, v.type.specialize(subs))

    ops = tuple(Op(op.name, tuple(map(fix, op.inputs)), tuple(map(fix, op.results)),
                   tuple((k, substitute(a, subs)) for k, a in op.attrs), op.body)
                for op in graph.ops)
    return graph.replace(inputs=tuple(map(fix, graph.inputs)), ops=ops,
                         outputs=tuple(map(fix, graph.outputs)))
