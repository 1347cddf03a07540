"""The reference interpreter against direct PyTorch calls, on fresh random inputs."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tilefx.ir import OPS, DType, GraphBuilder, TensorType, symbol
from tilefx.ir.interpreter import REFERENCES, InterpreterError, run_fallback, run_graph
from tilefx.ir.parser import parse_graph

S0 = symbol("s0")
F32, I64, BOOL = DType.float32, DType.int64, DType.bool
TORCH = {F32: torch.float32, I64: torch.int64, BOOL: torch.bool, DType.int32: torch.int32}


def test_every_registered_op_has_a_reference() -> None:
    run_graph(GraphBuilder("empty").finish([]), [])  # loads the reference table
    assert sorted(set(OPS) - set(REFERENCES)) == []


def rand(dtype: DType, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == BOOL:
        return torch.rand(shape) > 0.5
    if dtype.is_int:
        return torch.randint(-5, 6, shape, dtype=TORCH[dtype])
    return torch.randn(shape)


# (op, [(dtype, shape)...], attrs, the same computation in torch)
CASES: list[tuple[str, list[tuple[DType, tuple[int, ...]]], dict[str, Any], Callable[..., torch.Tensor]]] = [
    ("gelu", [(F32, (3, 5))], {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("hardswish", [(F32, (7,))], {}, F.hardswish),
    ("clamp", [(F32, (4, 4))], {"min": None, "max": 0.25}, lambda x: x.clamp(max=0.25)),
    ("clamp", [(F32, (4, 4))], {"min": None, "max": None}, lambda x: x),
    ("cast", [(F32, (6,))], {"dtype": DType.int32}, lambda x: x.to(torch.int32)),
    ("sub", [(F32, (2, 1, 4)), (F32, (3, 1))], {}, torch.sub),
    ("div", [(I64, (9,)), (I64, (9,))], {}, lambda a, b: torch.div(a, b, rounding_mode="trunc")),
    ("ge", [(F32, (3, 4)), (F32, (4,))], {}, torch.ge),
    ("where", [(BOOL, (3, 1)), (F32, (3, 4)), (F32, (4,))], {}, torch.where),
    ("permute", [(F32, (2, 3, 4))], {"dims": (2, 0, 1)}, lambda x: x.permute(2, 0, 1)),
    ("broadcast_to", [(F32, (3, 1))], {"shape": (2, 3, 5)}, lambda x: x.expand(2, 3, 5)),
    ("concat", [(F32, (2, 3)), (F32, (2, 1)), (F32, (2, 2))], {"axis": -1}, lambda *xs: torch.cat(xs, -1)),
    ("slice", [(F32, (4, 10))], {"axis": 1, "start": 1, "end": 9, "step": 3}, lambda x: x[:, 1:9:3]),
    ("pad", [(F32, (2, 3))], {"pads": (1, 0, 2, -1), "value": 1.5},
     lambda x: F.pad(x, (2, -1, 1, 0), value=1.5)),
    ("take", [(F32, (5, 6, 2)), (I64, (2, 3))], {"axis": 1},
     lambda t, i: t[:, i]),
    ("sum", [(DType.int32, (3, 4))], {"dims": (0,), "keepdim": True}, lambda x: x.sum(0, keepdim=True).int()),
    ("prod", [(F32, (2, 3, 4))], {"dims": (0, 2), "keepdim": False}, lambda x: x.prod(2).prod(0)),
    ("amax", [(F32, (2, 3, 4))], {"dims": (), "keepdim": False}, torch.amax),
    ("any", [(BOOL, (3, 4))], {"dims": (-1,), "keepdim": False}, lambda x: x.any(-1)),
    ("log_softmax", [(F32, (3, 8))], {"dim": 0}, lambda x: torch.log_softmax(x, 0)),
    ("layer_norm", [(F32, (2, 3, 4)), (F32, (3, 4)), (F32, (3, 4))], {"normalized_ndim": 2, "eps": 1e-3},
     lambda x, w, b: F.layer_norm(x, (3, 4), w, b, 1e-3)),
    ("batch_norm", [(F32, (2, 3, 4, 4))] + [(F32, (3,))] * 4, {"eps": 1e-5},
     lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, False, 0.0, 1e-5)),
    ("matmul", [(F32, (2, 1, 3, 5)), (F32, (4, 5, 2))], {}, torch.matmul),
    ("conv2d", [(F32, (2, 4, 7, 7)), (F32, (6, 2, 3, 3))],
     {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2},
     lambda x, w: F.conv2d(x, w, None, (2, 1), (1, 0), (1, 2), 2)),
    ("max_pool2d", [(F32, (1, 2, 7, 7))], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True},
     lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("avg_pool2d", [(F32, (1, 2, 6, 6))], {"kernel": (2, 2), "stride": (2, 2), "count_include_pad": False},
     lambda x: F.avg_pool2d(x, 2, 2, count_include_pad=False)),
    ("adaptive_avg_pool2d", [(F32, (2, 3, 7, 5))], {"output_size": (2, 3)},
     lambda x: F.adaptive_avg_pool2d(x, (2, 3))),
    ("attention", [(F32, (2, 3, 5, 8)), (F32, (2, 3, 6, 8)), (F32, (2, 3, 6, 4))], {"causal": True},
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    ("attention", [(F32, (2, 5, 8)), (F32, (2, 6, 8)), (F32, (2, 6, 4)), (BOOL, (5, 6))], {"scale": 0.3},
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)),
]


@pytest.mark.parametrize("name, specs, attrs, expected", CASES, ids=[c[0] for c in CASES])
def test_op_matches_torch(name: str, specs: list, attrs: dict, expected: Callable) -> None:
    torch.manual_seed(len(specs) * 31 + len(name))
    tensors = [rand(dt, shape) for dt, shape in specs]
    # keep inputs in the ops' domains: nonzero divisors, valid indices, positive variance,
    # a mask that keeps at least one key per query
    if name == "div":
        tensors[1] = tensors[1].abs() + 1
    if name == "take":
        tensors[1] = tensors[1].abs() % 6
    if name == "batch_norm":
        tensors[2] = tensors[2].abs() + 0.1
    if name == "attention" and len(tensors) == 4:
        tensors[3] = tensors[3] | torch.eye(5, 6, dtype=torch.bool)
    b = GraphBuilder(name)
    values = [b.input(TensorType(dt, shape)) for dt, shape in specs]
    graph = b.finish([b.op(name, *values, **attrs)])
    (got,) = run_graph(graph, tensors)
    want = expected(*tensors)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, equal_nan=True) if want.is_floating_point() \
        else torch.equal(got, want)


def test_symbols_bind_from_inputs_and_reach_attributes() -> None:
    b = GraphBuilder("sym")
    x = b.input(TensorType(F32, (S0, 6)), "x")
    r = b.op("reshape", x, shape=(3, S0 * 2))
    i = b.op("iota", shape=(S0, 2), axis=0, dtype=I64)
    y = b.op("softmax", b.op("add", b.op("sum", r, dims=(0,)), b.op("cast", b.op("reshape", i, shape=(-1,)),
                                                                      dtype=F32)), dim=0)
    g = b.finish([y, i])
    for n in (1, 4):
        x_t = torch.randn(n, 6)
        out, iota = run_graph(g, [x_t])
        idx = torch.arange(n).repeat_interleave(2).float()
        assert torch.allclose(out, torch.softmax(x_t.reshape(3, 2 * n).sum(0) + idx, 0))
        assert torch.equal(iota, torch.arange(n)[:, None].expand(n, 2))


def test_kernel_body_and_constants() -> None:
    text = """graph @g(%x: f32[s0, 3]) {
      %w = const {name = "w"} : f32[3]
      %two = const {value = 2.0} : f32[]
      %k = kernel(%x, %w, %two) {kind = "pointwise", name = "k"} : f32[s0, 3] {
        graph @k(%a: f32[s0, 3], %b: f32[3], %c: f32[]) {
          %0 = mul(%a, %b) : f32[s0, 3]
          %1 = pow(%0, %c) : f32[s0, 3]
          return %1
        }
      }
      return %k
    }"""
    w = np.random.rand(3).astype(np.float32)
    g = parse_graph(text, {"w": w})
    x = torch.randn(5, 3)
    (out,) = run_graph(g, [x])
    assert torch.allclose(out, (x * torch.from_numpy(w)) ** 2)
    assert g.constants["w"] is w  # the run copied the weight, never wrote it


def encode_args(*args: Any, **kwargs: Any) -> str:
    return json.dumps({"args": list(args), "kwargs": kwargs})


def test_fallback_runs_the_torch_op() -> None:
    b = GraphBuilder("fb")
    x = b.input(TensorType(F32, (S0, 8)), "x")
    (csum,) = b.op_typed("fallback", [x], [TensorType(DType.float64, (S0, 8))], target="aten::cumsum.default",
                         args=encode_args({"%": 0}, 1, dtype={"dtype": "float64"}))
    top = b.op_typed("fallback", [x], [TensorType(F32, (S0, 2)), TensorType(I64, (S0, 2))],
                     target="aten::topk", args=encode_args({"%": 0}, 2))
    (full,) = b.op_typed("fallback", [], [TensorType(F32, (2, 3))], target="aten::full.default",
                         args=encode_args([2, 3], 1.5, dtype={"dtype": "float32"}, device={"device": "cpu"}))
    g = b.finish([csum, *top, full])
    x_t = torch.randn(4, 8)
    got_csum, values, indices, got_full = run_graph(g, [x_t])
    assert torch.equal(got_csum, torch.cumsum(x_t, 1, dtype=torch.float64))
    want = torch.topk(x_t, 2)
    assert torch.equal(values, want.values) and torch.equal(indices, want.indices)
    assert torch.equal(got_full, torch.full((2, 3), 1.5))


def test_run_fallback_directly_and_errors() -> None:
    b = GraphBuilder("fb")
    x = b.input(TensorType(F32, (4,)), "x")
    (y,) = b.op_typed("fallback", [x, x], [x.type], target="aten::add.Tensor",
                      args=encode_args({"%": 0}, {"%": 1}, alpha=2))
    op = b.ops[-1]
    t = torch.randn(4)
    (out,) = run_fallback(op, [t, t])
    assert torch.allclose(out, 3 * t)
    bad = op.__class__(op.name, op.inputs, op.results, (("args", op.attr("args")), ("target", "aten::no_such_op")))
    with pytest.raises(InterpreterError, match="aten::no_such_op"):
        run_fallback(bad, [t, t])


def test_input_errors_name_the_input() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (S0, 3)), "x")
    y = b.input(TensorType(F32, (S0,)), "y")
    g = b.finish([b.op("add", x, b.op("reshape", y, shape=(S0, 1)))])
    with pytest.raises(InterpreterError, match="s0 is already 2"):
        run_graph(g, [torch.randn(2, 3), torch.randn(5)])
    with pytest.raises(InterpreterError, match="input %x is f32\\[s0, 3\\] but got a torch.float64"):
        run_graph(g, [torch.randn(2, 3, dtype=torch.float64), torch.randn(2)])
    with pytest.raises(InterpreterError, match="takes 2 inputs"):
        run_graph(g, [torch.randn(2, 3)])


def test_kernel_without_inputs() -> None:
    text = """graph @g() {
      %k = kernel {kind = "pointwise", name = "pos"} : f32[2, 3] {
        graph @pos() {
          %i = iota {axis = 1, dtype = f32, shape = [2, 3]} : f32[2, 3]
          %h = const {value = 0.5} : f32[]
          %r = mul(%i, %h) : f32[2, 3]
          return %r
        }
      }
      return %k
    }"""
    (out,) = run_graph(parse_graph(text), [])
    assert torch.equal(out, torch.arange(3.0).expand(2, 3) * 0.5)
