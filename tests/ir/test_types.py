"""Types and symbolic shape inference: a symbolic batch dim flows through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from tilefx.ir import DType, GraphBuilder, TensorType, symbol
from tilefx.ir.ops import infer_types
from tilefx.ir.types import format_dim, parse_dim
from tilefx.ir.verifier import verify

S0, S1 = symbol("s0"), symbol("s1")
F32 = DType.float32


def t(*shape: object, dtype: DType = F32) -> TensorType:
    return TensorType(dtype, tuple(shape))


def test_symbolic_batch_through_matmul_reshape_sum_conv_concat() -> None:
    b = GraphBuilder("sym")
    x = b.input(t(S0, 3, 8, 8), "x")
    w = b.const(np.ones((4, 3, 3, 3), np.float32), "w")
    y = b.op("conv2d", x, w, stride=(2, 2), padding=(1, 1))
    assert y.type.shape == (S0, 4, 4, 4)
    flat = b.op("reshape", y, shape=(S0, -1))
    assert flat.type.shape == (S0, 64)
    whole = b.op("reshape", y, shape=(-1,))
    assert whole.type.shape == (64 * S0,)
    m = b.op("matmul", flat, b.const(np.ones((64, 10), np.float32), "fc"))
    assert m.type.shape == (S0, 10)
    cat = b.op("concat", m, m, axis=0)
    assert cat.type.shape == (2 * S0, 10)
    total = b.op("sum", cat, dims=(1,), keepdim=True)
    assert total.type.shape == (2 * S0, 1)
    everything = b.op("sum", cat, dims=())
    assert everything.type.shape == ()
    verify(b.finish([total, everything, whole]))


def test_symbolic_conv_output_dim_is_an_expression_that_round_trips() -> None:
    (y,) = infer_types("conv2d", [t(1, 3, S1, 16), t(8, 3, 3, 3)], {"stride": (2, 2)})
    assert y.shape[3] == 7 and not isinstance(y.shape[2], int)
    assert y.shape[2].subs(S1, 17) == 8  # floor((17 - 3) / 2) + 1
    assert parse_dim(format_dim(y.shape[2])) == y.shape[2]


def test_matmul_broadcasts_batch_dims_and_checks_inner() -> None:
    (y,) = infer_types("matmul", [t(S0, 1, 5, 6), t(3, 6, 2)], {})
    assert y.shape == (S0, 3, 5, 2)
    with pytest.raises(ValueError, match="inner dims"):
        infer_types("matmul", [t(S0, 5), t(4, 2)], {})


def test_reshape_with_symbolic_target_and_bad_count() -> None:
    (y,) = infer_types("reshape", [t(S0, 4, 6)], {"shape": (S0 * 4, -1)})
    assert y.shape == (4 * S0, 6)
    with pytest.raises(ValueError):
        infer_types("reshape", [t(S0, 4)], {"shape": (S0, 5)})


def test_dim_text_forms() -> None:
    assert format_dim(7) == "7" and format_dim(S0) == "s0"
    assert format_dim(2 * S0 + 1) == "{2*s0 + 1}"
    e = parse_dim("{2*s0 + 1}")
    assert e == 2 * S0 + 1 and all(s.is_positive and s.is_integer for s in e.free_symbols)
    assert parse_dim("12") == 12
    assert isinstance(parse_dim("{floor(s0/2)}"), sympy.Expr)


def test_dtype_short_names_and_binary_dtype_rule() -> None:
    assert DType.from_short("bf16") is DType.bfloat16 and str(t(2, dtype=DType.int8)) == "i8[2]"
    with pytest.raises(TypeError, match="cast"):
        infer_types("add", [t(2), t(2, dtype=DType.float16)], {})
    (c,) = infer_types("lt", [t(S0, 1), t(1, 5)], {})
    assert c == TensorType(DType.bool, (S0, 5))
