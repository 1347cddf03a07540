"""Column padding of constant matmul weights: exact, only where the rule applies, on for cuda only."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from tests.cuda_subprocess import run_script
from tests.passes.passes_testing import assert_same
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.pad_columns import pad_columns


def _head(n=1001, k=48, dtype=DType.float32, bias=False, act=None, const_b=True, reader=None):
    rng = np.random.default_rng(0)
    b = GraphBuilder("head")
    x = b.input(TensorType(dtype, (2, 5, k)), "x")
    w = (b.const(rng.standard_normal((k, n)).astype(dtype.numpy_name), "w") if const_b
         else b.input(TensorType(dtype, (k, n)), "w"))
    y = b.op("matmul", x, w)
    if bias:
        y = b.op("add", y, b.const(rng.standard_normal(n).astype(dtype.numpy_name), "bias"))
    if act:
        y = b.op(act, y)
    if reader:
        y = b.op(reader, y, dim=-1)
    return b.finish([y])


def _shapes(graph: Graph) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in graph.constants.items()}


def _ops(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops if op.name != "const"]


@pytest.mark.parametrize("dtype", [DType.float32, DType.float16])
def test_pads_a_constant_weight_and_slices_back(dtype):
    g = _head(dtype=dtype)
    out = pad_columns(g)
    assert _shapes(out)["w_pad"] == (48, 1008)
    assert _ops(out) == ["matmul", "slice"]
    assert out.outputs[0].type == g.outputs[0].type  # [2, 5, 1001], the same name
    assert out.outputs[0].name == g.outputs[0].name
    tol = 1e-5 if dtype == DType.float32 else 1e-2
    assert_same(g, out, atol=tol, rtol=tol)


def test_bias_and_activation_stay_on_the_padded_columns():
    g = _head(bias=True, act="gelu")
    out = pad_columns(g)
    assert _shapes(out)["bias_pad"] == (1008,)
    assert _ops(out) == ["matmul", "add", "gelu", "slice"]
    assert_same(g, out)
    fused = optimize(g, PassOptions(pad_columns=True))
    ks = kernels(fused)  # matmul+add+gelu in one kernel on 1008 columns
    assert [k.result.type.shape[-1] for k in ks] == [1008]
    # the graph returns the slice: a view at the top level (no copy kernel), as eager's would be
    top = [op.name for op in fused.ops if op.name != "const"]
    assert top == ["kernel", "slice"] and fused.outputs[0].type.shape[-1] == 1001
    assert_same(g, fused)


def test_a_reduction_reads_the_sliced_value():
    g = _head(reader="softmax")
    out = pad_columns(g)
    assert _ops(out) == ["matmul", "slice", "softmax"]
    assert_same(g, out)
    fused = optimize(g, PassOptions(pad_columns=True))
    assert_same(g, fused)
    assert _shapes(fused)["w_pad"] == (48, 1008)


def test_bf16_weight_held_as_a_cast():
    b = GraphBuilder("bf16")
    x = b.input(TensorType(DType.bfloat16, (4, 32)), "x")
    w = b.op("cast", b.const(np.random.default_rng(1).standard_normal((32, 300)).astype(np.float32), "w"),
             dtype=DType.bfloat16)
    g = b.finish([b.op("matmul", x, w)])
    out = optimize(g, PassOptions(pad_columns=True, fuse=False))
    assert _shapes(out) == {"w_pad": (32, 304)}
    x = torch.randn(4, 32).to(torch.bfloat16)
    assert_same(g, out, [x], atol=0, rtol=0)


@pytest.mark.parametrize("case", [dict(const_b=False), dict(n=1008), dict(n=100)],
                         ids=["input_weight", "aligned", "narrow"])
def test_left_alone(case):
    g = _head(**case)
    assert pad_columns(g) is g


def test_off_unless_asked():
    g = _head()
    assert "w_pad" not in optimize(g, PassOptions()).constants
    assert "w_pad" in optimize(g, PassOptions(pad_columns=True)).constants


def test_only_the_cuda_backend_asks_for_it():
    from tilefx.codegen.target import Target
    cpu = pytest.importorskip("tilefx.codegen.tvm.backend")
    from tilefx.codegen.triton.backend import TritonBackend
    assert TritonBackend(Target.parse("cuda")).pass_defaults().pad_columns
    assert not cpu.TVMBackend(Target.parse("cpu")).pass_defaults().pad_columns


def test_compile_for_cpu_leaves_weights_alone():
    import tilefx
    torch.manual_seed(0)
    model = torch.nn.Linear(48, 1001).eval()
    x = torch.randn(3, 48)
    cm = tilefx.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(v.shape[-1] == 1008 for v in cm.records[-1].optimized_ir.constants.values())


SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.modules["tvm"] = None
    sys.modules["tvm_ffi"] = None
    import torch
    import torch.nn.functional as F
    from torch import nn
    import tilefx

    class TiedHead(nn.Module):  # GPT-2's LM head: logits = h @ wte.T
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(1001, 48)
        def forward(self, ids, h):
            return (h + self.emb(ids).mean(1, keepdim=True)) @ self.emb.weight.T

    class BiasGelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(48, 1001)
        def forward(self, h):
            return F.gelu(self.lin(h))

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        h = torch.randn(2, 5, 48).to(dtype)
        ids = torch.randint(0, 1001, (2, 3))
        cases = [(nn.Linear(48, 1001), (h,)), (TiedHead(), (ids, h)), (BiasGelu(), (h,))]
        for model, args in cases:
            model = model.to(dtype).eval()
            cm = tilefx.compile(model, target="cuda")
            with torch.no_grad():
                y, ref = cm(*args), model(*args)
            assert y.shape == ref.shape and y.shape[-1] == 1001, (y.shape, ref.shape)
            torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
            ir = cm.records[-1].optimized_ir
            widths = [tuple(v.shape) for v in ir.constants.values()]
            assert (48, 1008) in widths, widths
            assert "fallbacks: 0" in cm.report(), cm.report()
            print(type(model).__name__, dtype, "ok")
    print("OK")
''')


def test_compile_for_cuda_pads_and_matches_eager(tmp_path):
    run_script(SCRIPT, tmp_path, timeout=600)
