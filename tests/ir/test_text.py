"""IR text: printer golden output, exact round trip of every attribute form, parse errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilefx.ir import DType, Graph, GraphBuilder, Op, TensorType, Value, structural_equal, symbol
from tilefx.ir.graph import freeze_attrs
from tilefx.ir.parser import IRParseError, parse_graph
from tilefx.ir.printer import PrintError, print_graph

S0 = symbol("s0")
F32 = DType.float32

GOLDEN = """\
graph @mlp(%x: f32[s0, 4]) {
  %w = const {name = "w"} : f32[4, 8]
  %half = const {value = 0.5} : f32[]
  %0 = matmul(%x, %w) : f32[s0, 8]
  %1 = gelu(%0) {approximate = "tanh"} : f32[s0, 8]
  %2 = mul(%1, %half) : f32[s0, 8]
  %3, %4 = fallback(%2) {args = "{\\"args\\": [{\\"%\\": 0}, 4, 1], \\"kwargs\\": {}}", target = "aten::split.Tensor"} : f32[s0, 4], f32[s0, 4]
  %5 = kernel(%3, %4) {kind = "pointwise", name = "k0"} : f32[s0, 4] {
    graph @k0(%a: f32[s0, 4], %b: f32[s0, 4]) {
      %0 = add(%a, %b) : f32[s0, 4]
      %1 = relu(%0) : f32[s0, 4]
      return %1
    }
  }
  return %5, %2
}
"""  # noqa: E501  (IR text lines are as long as they are)


def build_mlp() -> Graph:
    b = GraphBuilder("mlp")
    x = b.input(TensorType(F32, (S0, 4)), "x")
    w = b.const(np.arange(32, dtype=np.float32).reshape(4, 8), "w")
    half = b.scalar(0.5, F32, "half")
    y = b.op("mul", b.op("gelu", b.op("matmul", x, w), approximate="tanh"), half)
    parts = b.op_typed("fallback", [y], [TensorType(F32, (S0, 4))] * 2, target="aten::split.Tensor",
                       args='{"args": [{"%": 0}, 4, 1], "kwargs": {}}')
    kb = GraphBuilder("k0")
    a, c = kb.input(parts[0].type, "a"), kb.input(parts[1].type, "b")
    body = kb.finish([kb.op("relu", kb.op("add", a, c))])
    (k,) = b.op_typed("kernel", parts, [parts[0].type], body=body, kind="pointwise", name="k0")
    return b.finish([k, y])


def test_golden_text() -> None:
    g = build_mlp()
    assert print_graph(g) == GOLDEN
    back = parse_graph(GOLDEN, g.constants)
    assert structural_equal(back, g)
    assert back.ops[-1].body is not None and back.ops[-1].body.constants == {}


def one_op_graph(**attrs: object) -> Graph:
    x = Value("x", TensorType(F32, (S0, 3)))
    y = Value("y", x.type)
    return Graph("g", (x,), (Op("identity", (x,), (y,), freeze_attrs(attrs)),), (y,))


@pytest.mark.ir_unchecked  # identity takes no attributes: these graphs only exercise the text
@pytest.mark.parametrize("value", [
    0, -7, 2**70, 1.0, -0.0, 0.1, 1e-05, 1e300, 5e-324, math.inf, -math.inf, math.nan,
    True, False, None, "", "tab\t\"quote\" \\ ünï €", "{\"%\": 0}", DType.bfloat16, DType.bool,
    S0, 2 * S0 + 1, (), (1, (2.5, (S0, None)), "s"), (-1,),
])
def test_attribute_values_round_trip_exactly(value: object) -> None:
    g = one_op_graph(v=value)
    back = parse_graph(print_graph(g))
    assert structural_equal(back, g)
    got = back.ops[0].attr("v")
    assert type(got) is type(value) or isinstance(value, (tuple,)) or not isinstance(value, (int, float))
    if isinstance(value, float):
        assert repr(got) == repr(value)  # same bits: -0.0 stays -0.0, nan stays nan


@pytest.mark.ir_unchecked
def test_odd_names_are_quoted() -> None:
    x = Value("input x", TensorType(F32, (2,)))
    y = Value("layer1.conv.out", x.type)
    g = Graph("my model", (x,), (Op("relu", (x,), (y,)),), (y,))
    text = print_graph(g)
    assert '%"input x"' in text and "%layer1.conv.out" in text and '@"my model"' in text
    assert structural_equal(parse_graph(text), g)


def test_no_inputs_no_results_and_comments() -> None:
    text = """
    # a comment line
    graph @g() {
      %i = iota {axis = 1, dtype = i32, shape = [2, 3]} : i32[2, 3]   # trailing comment
      fallback(%i) {args = "{\\"args\\": [], \\"kwargs\\": {}}", target = "aten::_assert_async.default"} : ()
      return %i
    }"""
    g = parse_graph(text)
    assert [op.name for op in g.ops] == ["iota", "fallback"] and g.ops[1].results == ()
    assert g.ops[0].attr("dtype") is DType.int32
    assert structural_equal(parse_graph(print_graph(g)), g)


def test_parser_sorts_attributes() -> None:
    g = parse_graph("graph @g(%x: f32[4]) {\n %y = leaky_relu(%x) {negative_slope = 0.2} : f32[4]\n return %y\n}")
    assert g.ops[0].attrs == (("negative_slope", 0.2),)


@pytest.mark.parametrize("text, message", [
    ("graph @g(%x: f32[4]) {\n  %y = relu(%x) : f32[4]\n  return %z\n}", "line 3, column 10: value %z"),
    ("graph @g(%x: f32[4]) {\n  %y = relu(%x) f32[4]\n  return %y\n}", "line 2, column 17: unexpected"),
    ("graph @g(%x: q7[4]) {\n  return %x\n}", "line 1, column 14: unknown dtype q7"),
    ("graph @g(%x: f32[4]) {\n  %y, %z = relu(%x) : f32[4]\n  return %y\n}", "line 2, column 12: op relu defines 2"),
    ("graph @g(%x: f32[4]) {\n  %y = relu(%x) {a = 1, a = 2} : f32[4]\n  return %y\n}", "attribute a given twice"),
    ("graph @g(%x: f32[4]) {\n  return %x\n", "line 2"),
])
def test_parse_errors_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(IRParseError, match=message.replace("[", r"\[")):
        parse_graph(text)


def test_kernel_body_is_its_own_scope() -> None:
    text = """graph @g(%x: f32[4]) {
      %k = kernel(%x) {kind = "pointwise", name = "k"} : f32[4] {
        graph @k(%a: f32[4]) {
          %r = add(%a, %x) : f32[4]
          return %r
        }
      }
      return %k
    }"""
    with pytest.raises(IRParseError, match="line 4.*%x is used but not defined"):
        parse_graph(text)


@pytest.mark.ir_unchecked
def test_unprintable_attribute_names_the_op() -> None:
    g = one_op_graph(v={"a": 1})
    with pytest.raises(PrintError, match="op identity.*dict"):
        print_graph(g)


def test_text_from_before_an_attribute_was_added_keeps_its_meaning():
    """softmax gained ``safe`` and take ``wrap`` after artifacts were written without them:
    such text still parses, verifies, and means what it meant (the defaults)."""
    from tilefx.ir.parser import parse_graph
    from tilefx.ir.verifier import verify

    g = parse_graph("""graph @old(%x: f32[4, 5], %i: i64[3]) {
  %y = softmax(%x) {dim = -1} : f32[4, 5]
  %z = take(%y, %i) {axis = 0} : f32[3, 5]
  return %z
}""")
    verify(g)
    attrs = {op.name: dict(op.attrs) for op in g.ops}
    assert attrs["softmax"]["safe"] is False and attrs["take"]["wrap"] is True
