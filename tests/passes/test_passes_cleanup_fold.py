"""dce, cse, fold_constants and fold_batch_norm: IR in -> IR out, plus numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from passes_testing import F32, assert_same, compute_ops, op_names, weights

from tilefx.ir import GraphBuilder, TensorType, structural_equal
from tilefx.ir.interpreter import run_graph
from tilefx.ir.parser import parse_graph
from tilefx.passes import PassOptions, optimize
from tilefx.passes.canonicalize import canonicalize
from tilefx.passes.cleanup import cse, dce
from tilefx.passes.fold import fold_batch_norm, fold_constants


def test_dce_drops_unused_ops_and_constants() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (4,)), "x")
    w = b.const(weights(4), "w")
    b.const(weights(4, seed=1), "unused")
    b.op("exp", b.op("mul", x, w))  # dead chain
    g = b.finish([b.op("tanh", x)])
    out = dce(g)
    assert op_names(out) == ["tanh"] and dict(out.constants) == {}
    assert dce(out) is out  # nothing to do: the same graph back
    assert_same(g, out)


def test_cse_merges_ops_and_equal_constants() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (3, 4)), "x")
    w1 = b.const(weights(4, seed=3), "w1")
    w2 = b.const(weights(4, seed=3), "w2")  # same data, other name
    w3 = b.const(weights(4, seed=4), "w3")
    a = b.op("exp", b.op("add", x, w1))
    c = b.op("exp", b.op("add", x, w2))
    d = b.op("add", x, w3)
    g = b.finish([b.op("add", b.op("mul", a, c), d)])
    out = cse(g)
    assert compute_ops(out) == ["add", "exp", "add", "mul", "add"]
    assert set(out.constants) == {"w1", "w3"}
    assert_same(g, out)


def test_cse_keeps_scalars_that_differ_by_sign_of_zero() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (3,)), "x")
    p = b.scalar(0.0, F32)
    n = b.scalar(-0.0, F32)
    g = b.finish([b.op("div", b.op("exp", x), b.op("sub", p, x)), b.op("sub", n, x)])
    assert op_names(cse(g)).count("const") == 2


def test_fold_transposed_linear_weight() -> None:
    before = parse_graph("""
graph @linear(%x: f32[2, 4]) {
  %fc1_weight = const {name = "fc1_weight"} : f32[3, 4]
  %wt = permute(%fc1_weight) {dims = [1, 0]} : f32[4, 3]
  %y = matmul(%x, %wt) : f32[2, 3]
  return %y
}
""", constants={"fc1_weight": weights(3, 4)})
    out = dce(fold_constants(before))
    expected = parse_graph("""
graph @linear(%x: f32[2, 4]) {
  %wt = const {name = "fc1_weight_folded"} : f32[4, 3]
  %y = matmul(%x, %wt) : f32[2, 3]
  return %y
}
""", constants={"fc1_weight_folded": weights(3, 4).T.copy()})
    assert structural_equal(out, expected), str(out)
    assert_same(before, out)


def test_fold_scalars_and_skip_growing_broadcast() -> None:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (64, 128)), "x")
    two = b.op("add", b.scalar(1.5, F32), b.scalar(0.5, F32))
    bias = b.op("broadcast_to", b.const(weights(128), "bias"), shape=(64, 128))
    g = b.finish([b.op("mul", b.op("add", x, bias), two)])
    out = dce(fold_constants(g))
    assert compute_ops(out) == ["broadcast_to", "add", "mul"]  # 8192 elements: not folded
    scalar = [op for op in out.ops if op.name == "const" and op.attr("value") is not None]
    assert [op.attr("value") for op in scalar] == [2.0]
    assert_same(g, out)


def _conv_bn_graph(with_bias: bool, groups: int = 1):
    rng = np.random.default_rng(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=with_bias, groups=groups)
    bn = torch.nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(6).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.random(6).astype(np.float32) + 0.2))
        bn.weight.copy_(torch.from_numpy(rng.standard_normal(6).astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(6).astype(np.float32)))
    model = torch.nn.Sequential(conv, bn).eval()
    b = GraphBuilder("convbn")
    x = b.input(TensorType(F32, (2, 4, 9, 9)), "x")
    y = b.op("conv2d", x, b.const(conv.weight.detach().numpy(), "conv.weight"), padding=(1, 1), groups=groups)
    if with_bias:
        y = b.op("add", y, b.const(conv.bias.detach().numpy().reshape(6, 1, 1), "conv.bias"))
    params = [bn.running_mean, bn.running_var, bn.weight, bn.bias]
    names = ["bn.running_mean", "bn.running_var", "bn.weight", "bn.bias"]
    y = b.op("batch_norm", y, *(b.const(p.detach().numpy(), n) for p, n in zip(params, names)), eps=1e-3)
    return model, b.finish([y])


@pytest.mark.parametrize("with_bias,groups", [(True, 1), (False, 1), (True, 2)])
def test_batch_norm_folds_into_conv_exactly(with_bias: bool, groups: int) -> None:
    model, g = _conv_bn_graph(with_bias, groups)
    out = dce(fold_batch_norm(fold_constants(canonicalize(g))))
    assert compute_ops(out) == ["conv2d", "add"]
    assert "conv_weight_folded" in out.constants
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(run_graph(out, [x])[0], want, atol=1e-5, rtol=1e-5)
    assert_same(g, out, [x])


def test_batch_norm_not_folded_into_a_conv_with_other_readers() -> None:
    _, g = _conv_bn_graph(False)
    conv_out = g.ops[1].result
    g = g.replace(outputs=g.outputs + (conv_out,))
    out = optimize(g, PassOptions(fuse=False))
    assert compute_ops(out) == ["conv2d", "mul", "add"]  # the raw conv output is still needed
    assert_same(g, out)
