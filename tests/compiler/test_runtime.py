"""Runtime: execution plans, liveness buffer reuse, views, fallbacks, fresh outputs.

Kernels here run in the reference interpreter (``InterpretedKernel``), so these
tests check the runtime alone, without TVM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tilefx.compiler.runtime import CompiledGraph, InterpretedKernel, RuntimeInputError
from tilefx.ir import DType, GraphBuilder, Op, TensorType, Value, symbol

F32 = DType.float32


def kernel(b: GraphBuilder, name: str, kind: str, inputs: list[Value], body_fn) -> list[Value]:
    """Add a kernel op whose body is ``body_fn(body_builder, *body_inputs) -> outputs``."""
    kb = GraphBuilder(name)
    params = [kb.input(v.type, f"a{i}") for i, v in enumerate(inputs)]
    outs = body_fn(kb, *params)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    body = kb.finish(outs)
    return b.op_typed("kernel", inputs, [o.type for o in outs], body=body, kind=kind, name=name)


def interpreted(op: Op, bindings) -> InterpretedKernel:
    return InterpretedKernel(op)


def chain_graph(n: int = 6, batch=8):
    """x -> (exp, neg, ...) n pointwise kernels in a chain, each its own buffer candidate."""
    b = GraphBuilder("chain")
    x = b.input(TensorType(F32, (batch, 16)), "x")
    v = x
    for i in range(n):
        unary = ["sin", "cos", "tanh"][i % 3]
        (v,) = kernel(b, f"k{i}", "pointwise", [v], lambda kb, a, u=unary: kb.op(u, a))
    return b.finish([v])


def test_chain_reuses_buffers_and_matches_eager():
    g = chain_graph(6)
    cg = CompiledGraph(g, interpreted)
    x = torch.randn(8, 16)
    (y,) = cg(x)
    ref = x
    for i in range(6):
        ref = [torch.sin, torch.cos, torch.tanh][i % 3](ref)
    torch.testing.assert_close(y, ref)
    (stats,) = [p.buffer_stats for p in cg.plans.values()]
    assert stats.intermediates == 5  # the last kernel writes the output, freshly allocated
    assert stats.buffers == 2        # a chain ping-pongs between two buffers
    # a second call with new data reuses the plan and still agrees
    x2 = torch.randn(8, 16)
    (y2,) = cg(x2)
    assert len(cg.plans) == 1
    ref2 = x2
    for i in range(6):
        ref2 = [torch.sin, torch.cos, torch.tanh][i % 3](ref2)
    torch.testing.assert_close(y2, ref2)


def test_outputs_are_fresh_and_never_alias_inputs_or_constants():
    b = GraphBuilder("aliases")
    x = b.input(TensorType(F32, (4, 6)), "x")
    w = b.const(np.random.rand(4, 6).astype(np.float32), "w")
    (s,) = kernel(b, "add", "pointwise", [x, w], lambda kb, p, q: kb.op("add", p, q))
    view = b.op("reshape", s, shape=(24,))
    xv = b.op("reshape", x, shape=(6, 4))
    g = b.finish([view, s, xv, w])
    cg = CompiledGraph(g, interpreted)
    x_t = torch.randn(4, 6)
    out1 = cg(x_t)
    out2 = cg(x_t)
    torch.testing.assert_close(out1[1], x_t + torch.from_numpy(g.constants["w"]))
    torch.testing.assert_close(out1[0], out1[1].reshape(24))
    assert out1[1].data_ptr() != out2[1].data_ptr()  # fresh per call
    assert out1[0].data_ptr() == out1[1].data_ptr()  # the view of an output stays a view
    assert out1[2].data_ptr() != x_t.data_ptr()      # never hand out the input's storage
    out1[3].add_(1.0)                                 # mutating an output ...
    torch.testing.assert_close(cg(x_t)[3], torch.from_numpy(g.constants["w"]))  # ... is harmless


def test_views_extend_buffer_lifetime():
    # k0 -> reshape view -> used two kernels later: k1's buffer must not overwrite k0's.
    b = GraphBuilder("views")
    x = b.input(TensorType(F32, (4, 8)), "x")
    (a,) = kernel(b, "k0", "pointwise", [x], lambda kb, p: kb.op("exp", p))
    av = b.op("reshape", a, shape=(8, 4))
    (c,) = kernel(b, "k1", "pointwise", [x], lambda kb, p: kb.op("sin", p))
    (d,) = kernel(b, "k2", "pointwise", [c], lambda kb, p: kb.op("cos", p))
    (e,) = kernel(b, "k3", "pointwise", [av, b.op("reshape", d, shape=(8, 4))],
                  lambda kb, p, q: kb.op("add", p, q))
    g = b.finish([e])
    cg = CompiledGraph(g, interpreted)
    x_t = torch.randn(4, 8)
    (y,) = cg(x_t)
    torch.testing.assert_close(y, (x_t.exp() + x_t.sin().cos()).reshape(8, 4))


def test_fallback_step_and_multi_output_kernel():
    b = GraphBuilder("fb")
    x = b.input(TensorType(F32, (4, 16)), "x")
    (r,) = kernel(b, "k0", "pointwise", [x], lambda kb, p: kb.op("relu", p))
    args = json.dumps({"args": [{"%": 0}], "kwargs": {"dim": -1}})
    (f,) = b.op_typed("fallback", [r], [TensorType(F32, (4, 16))],
                      target="aten::cumsum.default", args=args)
    lo, hi = kernel(b, "k1", "pointwise", [f],
                    lambda kb, p: [kb.op("neg", p), kb.op("exp", p)])
    g = b.finish([lo, hi])
    cg = CompiledGraph(g, interpreted)
    x_t = torch.randn(4, 16)
    lo_t, hi_t = cg(x_t)
    ref = torch.cumsum(torch.relu(x_t), dim=-1)
    torch.testing.assert_close(lo_t, -ref)
    torch.testing.assert_close(hi_t, ref.exp())


def test_symbolic_batch_gets_one_plan_per_size():
    b = GraphBuilder("dyn")
    s0 = symbol("s0")
    x = b.input(TensorType(F32, (s0, 8)), "x")
    w = b.const(np.random.rand(8, 4).astype(np.float32), "w")
    (m,) = kernel(b, "mm", "contraction", [x, w], lambda kb, p, q: kb.op("matmul", p, q))
    flat = b.op("reshape", m, shape=(-1,))
    g = b.finish([flat])
    seen = []
    cg = CompiledGraph(g, lambda op, bindings: seen.append(dict(bindings)) or InterpretedKernel(op))
    w_t = torch.from_numpy(g.constants["w"])
    for n in (3, 5, 3):
        x_t = torch.randn(n, 8)
        (y,) = cg(x_t)
        assert y.shape == (n * 4,)
        torch.testing.assert_close(y, (x_t @ w_t).reshape(-1))
    assert seen == [{s0: 3}, {s0: 5}]  # built once per size, reused on the repeat


def test_bad_inputs_name_the_input():
    cg = CompiledGraph(chain_graph(2), interpreted)
    with pytest.raises(RuntimeInputError, match="%x"):
        cg(torch.randn(8, 17))
    with pytest.raises(RuntimeInputError, match="takes 1 tensors"):
        cg(torch.randn(8, 16), torch.randn(8, 16))
    with pytest.raises(RuntimeInputError, match="float32"):
        cg(torch.randn(8, 16, dtype=torch.float64))


def test_non_contiguous_input_is_made_contiguous():
    cg = CompiledGraph(chain_graph(1), interpreted)
    x = torch.randn(16, 8).t()
    (y,) = cg(x)
    torch.testing.assert_close(y, torch.sin(x))


def test_unfused_top_level_op_runs_in_interpreter():
    b = GraphBuilder("unfused")
    x = b.input(TensorType(F32, (3, 5)), "x")
    y = b.op("softmax", b.op("exp", x), dim=1)
    g = b.finish([y])
    (out,) = CompiledGraph(g, interpreted)(x_t := torch.randn(3, 5))
    torch.testing.assert_close(out, torch.softmax(x_t.exp(), dim=1))
