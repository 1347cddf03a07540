"""The IR verifier: what every well-formed ``Graph`` satisfies, written as code.

Passes run it after every step under pytest (and ``tests/conftest.py`` runs it
on every graph a test builds), so a pass that breaks an invariant fails at the
pass, not three stages later in codegen. ``verify(graph)`` returns ``None`` or
raises ``VerificationError`` naming the graph, the op and the value at fault.

Checked, per graph (kernel bodies recursively, each its own scope):

- SSA: every value is defined once (inputs and op results), every use comes
  after its definition, with the same type; outputs are defined values.
- Ops: the name is registered, attributes are sorted, unique, known and
  complete, the input count fits, no body except on ``kernel``.
- Types: result types equal the registry's inference from the input types
  and attributes. Ops with given types are checked by their own rules:
  ``const`` has exactly one of ``name`` (an array in ``Graph.constants``
  with the result's dtype and shape) or ``value`` (a scalar, rank-0 result);
  ``kernel`` has a body whose inputs and outputs match the op's inputs and
  results; ``fallback`` has a ``target`` like ``aten::name.overload`` and
  JSON ``args`` whose ``{"%": i}`` placeholders are in range.
"""

from __future__ import annotations

import json
import numbers
from typing import Any

from tilefx.ir.builder import dtype_of_array
from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import GIVEN_TYPE_OPS, OPS
from tilefx.ir.printer import print_op
from tilefx.ir.types import TensorType, dims_equal


class VerificationError(ValueError):
    """A graph breaks an IR invariant; the message names the graph, op and value."""


def verify(graph: Graph) -> None:
    """Raise ``VerificationError`` if ``graph`` (or a kernel body in it) is malformed."""
    _verify_graph(graph, path=f"@{graph.name}")


def types_equal(a: TensorType, b: TensorType) -> bool:
    if a == b:  # the common case, without sympy
        return True
    return a.dtype == b.dtype and a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _where(op: Op | str) -> str:
    if isinstance(op, str):
        return op

    try:
        return f"op `{print_op(op)}`"
    except Exception:  # an unprintable attr must not hide the real error
        return f"op {op.name} -> {[r.name for r in op.results]}"


def _verify_graph(graph: Graph, path: str) -> None:
    defined: dict[str, Value] = {}

    # ``where`` is an Op (described lazily: printing every op would dominate the cost) or a str
    def define(v: Value, where: Op | str) -> None:
        where = _where(where)
        if not isinstance(v, Value) or not isinstance(v.type, TensorType):
            raise VerificationError(f"{path}: {where} defines {v!r}, which is not a typed Value")
        if v.name in defined:
            raise VerificationError(f"{path}: {where} redefines %{v.name} (values are SSA)")
        defined[v.name] = v

    def use(v: Value, where: Op | str) -> None:
        if v.name not in defined:
            raise VerificationError(f"{path}: {_where(where)} uses %{v.name} before it is defined")
        if defined[v.name] != v:
            raise VerificationError(f"{path}: {_where(where)} uses %{v.name} as {v.type} "
                                    f"but it was defined as {defined[v.name].type}")

    for v in graph.inputs:
        define(v, "graph input")
    for index, op in enumerate(graph.ops):
        for v in op.inputs:
            use(v, op)
        try:
            _verify_op(op, graph, path)
        except VerificationError:
            raise
        except Exception as e:  # inference errors from the registry
            raise VerificationError(f"{path}: op #{index} {_where(op)}: {type(e).__name__}: {e}") from e
        for r in op.results:
            define(r, op)
    for v in graph.outputs:
        use(v, "graph output")


def _verify_op(op: Op, graph: Graph, path: str) -> None:
    def fail(message: str) -> VerificationError:
        return VerificationError(f"{path}: {_where(op)}: {message}")

    if op.name not in OPS:
        raise fail(f"unknown op {op.name!r}")
    opdef = OPS[op.name]
    keys = [k for k, _ in op.attrs]
    if keys != sorted(set(keys)):
        raise fail(f"attributes {keys} must be sorted and unique (build them with freeze_attrs)")
    try:
        opdef.check_arity(len(op.inputs))
    except TypeError as e:
        raise fail(str(e)) from None
    if op.body is not None and op.name != "kernel":
        raise fail("only kernel ops have a body")

    if op.name == "const":
        _verify_const(op, graph, fail)
        return
    unknown = set(keys) - set(opdef.attrs)
    missing = set(opdef.attrs) - set(keys)
    if unknown or missing:
        raise fail(f"attributes: unknown {sorted(unknown)}, missing {sorted(missing)}")
    if op.name == "kernel":
        _verify_kernel(op, path, fail)
    elif op.name == "fallback":
        _verify_fallback(op, fail)
    else:
        assert op.name not in GIVEN_TYPE_OPS
        inferred = opdef.infer([v.type for v in op.inputs], op.attr_dict)
        got = [r.type for r in op.results]
        if len(inferred) != len(got) or not all(types_equal(a, b) for a, b in zip(inferred, got)):
            raise fail(f"result types {[str(t) for t in got]} but inference gives "
                       f"{[str(t) for t in inferred]}")


def _verify_const(op: Op, graph: Graph, fail: Any) -> None:
    attrs = op.attr_dict
    if set(attrs) - {"name", "value"}:
        raise fail(f"const takes only name or value, got {sorted(attrs)}")
    if len(op.results) != 1:
        raise fail("const has exactly one result")
    t = op.results[0].type
    name, value = attrs.get("name"), attrs.get("value")
    if (name is None) == (value is None):
        raise fail("const needs exactly one of name (an array) or value (a scalar)")
    if value is not None:
        if not isinstance(value, numbers.Number):
            raise fail(f"const value {value!r} is not a Python number")
        if t.rank != 0:
            raise fail(f"a scalar const has a rank-0 type, not {t}")
        return
    if not isinstance(name, str):
        raise fail(f"const name must be a string, got {name!r}")
    if name not in graph.constants:
        raise fail(f"constant {name!r} is not in graph @{graph.name}'s constants")
    array = graph.constants[name]

    try:
        dtype = dtype_of_array(array)
    except KeyError:
        raise fail(f"constant {name!r} has unsupported dtype {array.dtype}") from None
    if dtype != t.dtype or tuple(array.shape) != tuple(t.shape):
        raise fail(f"constant {name!r} is {dtype.short}{list(array.shape)} but the op says {t}")


def _verify_kernel(op: Op, path: str, fail: Any) -> None:
    kind, name = op.attr("kind"), op.attr("name")
    if not (isinstance(kind, str) and kind) or not (isinstance(name, str) and name):
        raise fail("kernel kind and name must be non-empty strings")
    body = op.body
    if body is None:
        raise fail("kernel op has no body")
    _verify_graph(body, f"{path}/kernel {name}")  # first: an error inside is the more precise one
    if len(body.inputs) != len(op.inputs) or not all(
            types_equal(p.type, v.type) for p, v in zip(body.inputs, op.inputs)):
        raise fail(f"body inputs {[str(p.type) for p in body.inputs]} do not match the op's "
                   f"inputs {[str(v.type) for v in op.inputs]}")
    if len(body.outputs) != len(op.results) or not all(
            types_equal(o.type, r.type) for o, r in zip(body.outputs, op.results)):
        raise fail(f"body outputs {[str(o.type) for o in body.outputs]} do not match the op's "
                   f"results {[str(r.type) for r in op.results]}")


def _verify_fallback(op: Op, fail: Any) -> None:
    target, args = op.attr("target"), op.attr("args")
    if not isinstance(target, str) or "::" not in target:
        raise fail(f"fallback target {target!r} is not a qualified op name like 'aten::add.Tensor'")
    try:
        decoded = json.loads(args)
    except (TypeError, json.JSONDecodeError) as e:
        raise fail(f"fallback args are not JSON: {e}") from None
    if not (isinstance(decoded, dict) and set(decoded) == {"args", "kwargs"}):
        raise fail('fallback args must be {"args": [...], "kwargs": {...}}')

    def check(x: Any) -> None:
        if isinstance(x, dict):
            if "%" in x:
                i = x["%"]
                if not (isinstance(i, int) and 0 <= i < len(op.inputs)):
                    raise fail(f"fallback placeholder {{'%': {i!r}}} but the op has {len(op.inputs)} inputs")
            for v in x.values():
                check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)

    check(decoded)
