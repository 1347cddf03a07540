"""Channel permutation pass: exactness, recovery of shuffled block structure, when it fires."""

from __future__ import annotations

import numpy as np
import torch

from tests.passes.passes_testing import assert_same
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, optimize
from tilefx.passes.permute import (PermutationLog, find_chains, group_channels, nonzero_blocks,
                                   permute_channels)
from tilefx.passes.sparsity import block_mask


def _block_sparse(rng, k, n, block, density):
    bk, bn = block
    mask = rng.random((k // bk, n // bn)) < density
    mask[0, 0] = True
    return (rng.standard_normal((k, n)) * np.repeat(np.repeat(mask, bk, 0), bn, 1)).astype(np.float32)


def _mlp3(w1, b1, w2, b2, w3, rows=3):
    """x @ w1 + b1 -> gelu -> @ w2 -> *scale + b2 -> relu -> @ w3 (constants along the way)."""
    b = GraphBuilder("mlp3")
    x = b.input(TensorType(DType.float32, (rows, w1.shape[0])), "x")
    h = b.op("gelu", b.op("add", b.op("matmul", x, b.const(w1, "w1")), b.const(b1, "b1")))
    h = b.op("matmul", h, b.const(w2, "w2"))
    scale = np.linspace(0.5, 1.5, w2.shape[1], dtype=np.float32)
    h = b.op("relu", b.op("add", b.op("mul", h, b.const(scale, "scale")), b.const(b2, "b2")))
    return b.finish([b.op("matmul", h, b.const(w3, "w3"))])


def _shuffled_case(seed, block=(4, 4), density=0.15, k=32, h1=64, h2=128, n=16):
    rng = np.random.default_rng(seed)
    w2 = _block_sparse(rng, h1, h2, block, density)
    p1, p2 = rng.permutation(h1), rng.permutation(h2)
    w1 = rng.standard_normal((k, h1)).astype(np.float32)
    w3 = rng.standard_normal((h2, n)).astype(np.float32)
    b1 = rng.standard_normal(h1).astype(np.float32)
    b2 = rng.standard_normal(h2).astype(np.float32)
    # shuffle the hidden channels of the whole model: same function, scattered blocks
    g = _mlp3(w1[:, p1], b1[p1], w2[p1][:, p2], b2[p2], w3[p2])
    return g, w2


def test_group_channels_puts_equal_supports_together():
    sig = np.zeros((8, 4), dtype=bool)
    sig[[0, 3, 5, 6], 1] = True
    sig[[1, 2, 4, 7], 2] = True
    order = group_channels(sig, 4)
    assert sorted(order.tolist()) == list(range(8))
    assert {frozenset(order[:4].tolist()), frozenset(order[4:].tolist())} == \
        {frozenset({0, 3, 5, 6}), frozenset({1, 2, 4, 7})}


def test_recovers_shuffled_block_structure_and_is_exact():
    for seed, block in ((0, (4, 4)), (1, (4, 4)), (2, (4, 16))):
        g, w2 = _shuffled_case(seed, block)
        original = int(block_mask(w2, block).sum())
        shuffled = nonzero_blocks(g, block)["w2"]
        report = PermutationLog()
        out = permute_channels.bind(block=block, report=report)(g)
        recovered = nonzero_blocks(out, block)
        (name,) = recovered  # w1, w3 are dense: not candidates
        # >= 90% of the original block structure: at most original / 0.9 nonzero blocks
        assert original / recovered[name] >= 0.9, (seed, original, shuffled, recovered)
        assert shuffled > recovered[name]
        assert [(d.layer, d.before, d.after) for d in report.decisions] == \
            [("w2", shuffled, recovered[name])]
        assert_same(g, out, atol=1e-4, rtol=1e-4)


def test_exact_on_conv_chain():
    rng = np.random.default_rng(3)
    c = 32
    w1 = rng.standard_normal((c, 8, 3, 3)).astype(np.float32)  # 3x3 producer: not a candidate
    w2 = _block_sparse(rng, c, 16, (4, 4), 0.2)  # [K=c, N=16] view of a 1x1 conv [16, c, 1, 1]
    p = rng.permutation(c)
    b = GraphBuilder("convs")
    x = b.input(TensorType(DType.float32, (2, 8, 6, 6)), "x")
    conv = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    h = b.op("conv2d", x, b.const(w1[p], "w1"), **conv)
    h = b.op("sigmoid", b.op("add", h, b.const(rng.standard_normal((c, 1, 1)).astype(np.float32)[p],
                                               "bias")))
    w2c = np.ascontiguousarray(w2.T[:, p]).reshape(16, c, 1, 1)
    y = b.op("conv2d", h, b.const(w2c, "w2"), **{**conv, "padding": [0, 0]})
    g = b.finish([y])
    assert len(find_chains(g)) == 1
    out = permute_channels(g)
    assert nonzero_blocks(out)["w2"] <= int(block_mask(w2, (4, 4)).sum()) < nonzero_blocks(g)["w2"]
    assert_same(g, out, atol=1e-4, rtol=1e-4)


def test_unchanged_when_nothing_to_gain_or_unsafe():
    rng = np.random.default_rng(4)
    # already block-aligned: no permutation lowers the count, the graph is returned as is
    w2 = _block_sparse(rng, 64, 64, (4, 4), 0.2)
    g = _mlp3(rng.standard_normal((16, 64)).astype(np.float32), np.zeros(64, np.float32), w2,
              np.zeros(64, np.float32), rng.standard_normal((64, 8)).astype(np.float32))
    assert permute_channels(g) is g
    # dense weights: never touched
    d = _mlp3(*(rng.standard_normal(s).astype(np.float32) for s in ((16, 64), (64,), (64, 64), (64,),
                                                                     (64, 8))))
    assert permute_channels(d) is d
    # the hidden value is also a graph output: permuting it would change that output
    b = GraphBuilder("leak")
    x = b.input(TensorType(DType.float32, (2, 16)), "x")
    h = b.op("relu", b.op("matmul", x, b.const(rng.standard_normal((16, 64)).astype(np.float32), "w1")))
    ws = _block_sparse(rng, 64, 8, (4, 4), 0.3)[rng.permutation(64)]
    y = b.op("matmul", h, b.const(ws, "w2"))
    leak = b.finish([y, h])
    assert find_chains(leak) == [] and permute_channels(leak) is leak


def test_pipeline_runs_it_before_sparsify_and_compile_reports_it():
    import tilefx

    g, _ = _shuffled_case(5)
    out = optimize(g, PassOptions(sparse_chooser=None))
    assert_same(g, out, atol=1e-4, rtol=1e-4)
    # end to end: an eager model with shuffled block-sparse hidden weights
    torch.manual_seed(0)
    rng = np.random.default_rng(6)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                            torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    w = _block_sparse(rng, 64, 64, (4, 4), 0.15)[rng.permutation(64)][:, rng.permutation(64)]
    with torch.no_grad():
        m[2].weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
    x = torch.randn(4, 32)
    cm = tilefx.compile(m)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-4)
    notes = [ln for ln in cm.records[0].notes if ln.startswith("permute:")]
    assert notes and "nonzero 4x4 blocks" in notes[0]
