"""Kernel identity: one ``specialize`` for every backend, and ``kernel_key`` blind to names."""

from __future__ import annotations

import sympy

from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tilefx.ir.graph import structural_equal
from tilefx.ir.identity import kernel_key, kernel_symbols, specialize, symbol_bindings
from tilefx.ir.types import symbol

B = symbol("B")


def _reshape_kernel(name: str = "k"):
    # [B, 6] -> relu -> reshape to [B, 2, 3]: the reshape's target shape holds the symbol
    return kernel_op("pointwise", [TensorType(DType.float32, (B, 6))],
                     lambda b, x: b.op("reshape", b.op("relu", x), shape=(B, 2, 3)), name=name)


def test_specialize_substitutes_types_and_attributes():
    op = _reshape_kernel()
    assert kernel_symbols(op) == {B}
    body = specialize(op.body, {"B": 4})  # names or symbols both bind
    assert structural_equal(specialize(op.body, {B: 4}), body)
    assert all(v.type.is_static for v in (*body.inputs, *body.outputs))
    (reshape,) = [o for o in body.ops if o.name == "reshape"]
    assert reshape.attr("shape") == (4, 2, 3) and all(isinstance(d, int) for d in reshape.attr("shape"))
    assert not any(isinstance(d, sympy.Expr) for o in body.ops for _, a in o.attrs
                   for d in (a if isinstance(a, tuple) else (a,)))
    assert specialize(op.body, None) is op.body


def test_symbol_bindings_accepts_names_and_symbols():
    assert symbol_bindings({"B": 3}) == {B: 3} == symbol_bindings({B: 3})
    assert symbol_bindings(None) is None and symbol_bindings({}) is None


def test_kernel_key_is_blind_to_names():
    assert kernel_key(_reshape_kernel("a")) == kernel_key(_reshape_kernel("b"))
    other = kernel_op("pointwise", [TensorType(DType.float32, (B, 6))],
                      lambda b, x: b.op("reshape", b.op("sigmoid", x), shape=(B, 2, 3)))
    assert kernel_key(other) != kernel_key(_reshape_kernel())
