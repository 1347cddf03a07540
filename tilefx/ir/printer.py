"""IR text: the readable, round-trip exact form of a ``Graph``.

    graph @mlp(%x: f32[s0, 1024]) {
      %w = const {name = "w"} : f32[1024, 4096]
      %1 = matmul(%x, %w) : f32[s0, 4096]
      %2 = gelu(%1) {approximate = "tanh"} : f32[s0, 4096]
      %3 = kernel(%2) {kind = "pointwise", name = "k0"} : f32[s0, 4096] {
        graph @k0(%a: f32[s0, 4096]) {
          %r = relu(%a) : f32[s0, 4096]
          return %r
        }
      }
      return %3
    }

``parser.parse_graph`` reads this back into a structurally equal graph, so
every rule here has a twin in ``grammar.lark``:

- attributes print in their stored order (the verifier insists it is sorted);
- ints print as ``3``, floats with ``repr`` (``3.0``, ``1e-05``, ``inf``, ``-0.0``,
  ``nan``) so the exact bits come back; bools and None as ``true``/``false``/``none``;
  strings JSON-quoted; dtypes by short name (``f32``); symbolic dims like shapes
  (``s0``, ``{2*s0 + 1}``); tuples as ``[a, b]``;
- names that are not ``[A-Za-z0-9_.]+`` are JSON-quoted (``%"a b"``);
- an op with no inputs prints no parentheses, one with no results prints
  ``: ()``; constant arrays are never printed, only referenced by name.
"""

from __future__ import annotations

import json
import numbers
import re

import numpy as np
import sympy

from tilefx.ir.graph import AttrValue, Graph, Op, Value
from tilefx.ir.types import DType, TensorType, format_dim

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")
_INDENT = "  "


class PrintError(ValueError):
    """An attribute value (or name) that IR text cannot represent."""


def print_graph(graph: Graph) -> str:
    """The IR text of ``graph`` (and, nested, of every kernel body)."""
    lines: list[str] = []
    _print_graph(graph, lines, 0)
    return "\n".join(lines) + "\n"


def print_op(op: Op) -> str:
    """One op on one line (a kernel's body is left out); used in error messages."""
    return _op_head(op)


def format_name(name: str) -> str:
    """A value or graph name as it appears after ``%`` / ``@``."""
    return name if _PLAIN_NAME.match(name) else json.dumps(name)


def format_type(t: TensorType) -> str:
    return f"{t.dtype.short}[{', '.join(format_dim(d) for d in t.shape)}]"


def format_attr_value(v: AttrValue) -> str:
    # bool before int: bool is a subclass of int and must stay distinguishable.
    if v is None:
        return "none"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.short
    if isinstance(v, numbers.Integral) and not isinstance(v, sympy.Basic):
        return str(int(v))
    if isinstance(v, float) or (isinstance(v, numbers.Real) and not isinstance(v, sympy.Basic)):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, sympy.Expr):
        return format_dim(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr_value(x) for x in v) + "]"
    raise PrintError(f"attribute value {v!r} of type {type(v).__name__} has no IR text form")


def _value(v: Value) -> str:
    return "%" + format_name(v.name)


def _op_head(op: Op) -> str:
    text = ""
    if op.results:
        text = ", ".join(_value(r) for r in op.results) + " = "
    text += op.name
    if op.inputs:
        text += "(" + ", ".join(_value(v) for v in op.inputs) + ")"
    if op.attrs:
        try:
            attrs = ", ".join(f"{k} = {format_attr_value(v)}" for k, v in op.attrs)
        except PrintError as e:
            raise PrintError(f"op {op.name} defining {[str(r) for r in op.results]}: {e}") from None
        text += " {" + attrs + "}"
    types = ", ".join(format_type(r.type) for r in op.results) if op.results else "()"
    return f"{text} : {types}"


def _print_graph(graph: Graph, lines: list[str], depth: int) -> None:
    pad = _INDENT * depth
    params = ", ".join(f"{_value(v)}: {format_type(v.type)}" for v in graph.inputs)
    lines.append(f"{pad}graph @{format_name(graph.name)}({params}) {{")
    for op in graph.ops:
        head = _op_head(op)
        if op.body is None:
            lines.append(f"{pad}{_INDENT}{head}")
            continue
        lines.append(f"{pad}{_INDENT}{head} {{")
        _print_graph(op.body, lines, depth + 2)
        lines.append(f"{pad}{_INDENT}}}")
    outputs = ", ".join(_value(v) for v in graph.outputs)
    lines.append(f"{pad}{_INDENT}return {outputs}".rstrip())
    lines.append(f"{pad}}}")
