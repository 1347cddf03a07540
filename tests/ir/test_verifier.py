"""The verifier accepts well-formed graphs and rejects each kind of broken one, naming the culprit."""

from __future__ import annotations

import numpy as np
import pytest

from tilefx.ir import DType, Graph, GraphBuilder, Op, TensorType, Value, symbol
from tilefx.ir.graph import freeze_attrs
from tilefx.ir.parser import parse_graph
from tilefx.ir.verifier import VerificationError, verify

S0 = symbol("s0")
F32 = DType.float32
T4 = TensorType(F32, (S0, 4))


def good_graph() -> Graph:
    b = GraphBuilder("ok")
    x = b.input(T4, "x")
    w = b.const(np.ones((4, 4), np.float32), "w")
    y = b.op("relu", b.op("matmul", x, w))
    kb = GraphBuilder("k")
    a = kb.input(y.type, "a")
    (k,) = b.op_typed("kernel", [y], [y.type], body=kb.finish([kb.op("exp", a)]), kind="pointwise", name="k")
    return b.finish([k])


def test_good_graph_verifies() -> None:
    verify(good_graph())


BAD_TEXTS = {
    "use before definition": ("""graph @g(%x: f32[4]) {
        %a = relu(%b) : f32[4]
        %b = exp(%x) : f32[4]
        return %a }""", None),
    "redefinition": ("""graph @g(%x: f32[4]) {
        %x = relu(%x) : f32[4]
        return %x }""", "redefines %x"),
    "wrong result type": ("""graph @g(%x: f32[s0, 4]) {
        %y = sum(%x) {dims = [1], keepdim = false} : f32[s0, 4]
        return %y }""", "inference gives.*f32\\[s0\\]"),
    "unknown op": ("""graph @g(%x: f32[4]) {
        %y = frobnicate(%x) : f32[4]
        return %y }""", "unknown op 'frobnicate'"),
    "missing attribute": ("""graph @g(%x: f32[4]) {
        %y = softmax(%x) : f32[4]
        return %y }""", "missing \\['dim'\\]"),
    "unknown attribute": ("""graph @g(%x: f32[4]) {
        %y = relu(%x) {inplace = true} : f32[4]
        return %y }""", "unknown \\['inplace'\\]"),
    "arity": ("""graph @g(%x: f32[4]) {
        %y = add(%x) : f32[4]
        return %y }""", "takes 2 inputs, got 1"),
    "dtype mismatch in binary op": ("""graph @g(%x: f32[4], %i: i32[4]) {
        %y = add(%x, %i) : f32[4]
        return %y }""", "insert a cast"),
    "missing constant": ("""graph @g() {
        %w = const {name = "w"} : f32[4]
        return %w }""", "constant 'w' is not in graph @g"),
    "const with both name and value": ("""graph @g() {
        %w = const {name = "w", value = 1.0} : f32[]
        return %w }""", "exactly one of name"),
    "scalar const not rank 0": ("""graph @g() {
        %w = const {value = 1.0} : f32[2]
        return %w }""", "rank-0"),
    "kernel body type mismatch": ("""graph @g(%x: f32[4]) {
        %k = kernel(%x) {kind = "pointwise", name = "k"} : f32[4] {
          graph @k(%a: f32[8]) {
            %r = relu(%a) : f32[8]
            return %r } }
        return %k }""", "body inputs"),
    "bad op inside kernel body": ("""graph @g(%x: f32[4]) {
        %k = kernel(%x) {kind = "pointwise", name = "k"} : f32[4] {
          graph @k(%a: f32[4]) {
            %r = relu(%a) : f16[4]
            return %r } }
        return %k }""", "@g/kernel k: op .*relu"),
    "fallback placeholder out of range": ("""graph @g(%x: f32[4]) {
        %y = fallback(%x) {args = "{\\"args\\": [{\\"%\\": 1}], \\"kwargs\\": {}}", target = "aten::relu"} : f32[4]
        return %y }""", "placeholder"),
    "fallback target not qualified": ("""graph @g(%x: f32[4]) {
        %y = fallback(%x) {args = "{\\"args\\": [], \\"kwargs\\": {}}", target = "relu"} : f32[4]
        return %y }""", "not a qualified op name"),
    "body on a non-kernel op": ("""graph @g(%x: f32[4]) {
        %y = relu(%x) : f32[4] {
          graph @b() { return } }
        return %y }""", "only kernel ops have a body"),
}


@pytest.mark.ir_unchecked
@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_verifier_rejects(case: str) -> None:
    text, message = BAD_TEXTS[case]
    if message is None:  # the parser already refuses it (scoping)
        with pytest.raises(ValueError, match="not defined"):
            parse_graph(text)
        return
    with pytest.raises(VerificationError, match=message):
        verify(parse_graph(text))


@pytest.mark.ir_unchecked
def test_hand_built_graph_errors() -> None:
    x = Value("x", T4)
    y = Value("y", T4)
    stale = Value("x", TensorType(F32, (S0, 5)))
    with pytest.raises(VerificationError, match="uses %x as f32\\[s0, 5\\] but it was defined as f32\\[s0, 4\\]"):
        verify(Graph("g", (x,), (Op("relu", (stale,), (y,)),), (y,)))
    with pytest.raises(VerificationError, match="uses %y before"):
        verify(Graph("g", (x,), (Op("relu", (y,), (y,)),), (y,)))
    with pytest.raises(VerificationError, match="graph output uses %z"):
        verify(Graph("g", (x,), (), (Value("z", T4),)))
    unsorted = (("keepdim", False), ("dims", (1,)))
    with pytest.raises(VerificationError, match="sorted"):
        verify(Graph("g", (x,), (Op("sum", (x,), (Value("s", TensorType(F32, (S0,))),), unsorted),), (x,)))
    w = Value("w", TensorType(F32, (4, 4)))
    bad_const = Op("const", (), (w,), freeze_attrs({"name": "w"}))
    with pytest.raises(VerificationError, match="f64\\[4, 4\\] but the op says f32\\[4, 4\\]"):
        verify(Graph("g", (), (bad_const,), (w,), {"w": np.zeros((4, 4))}))
