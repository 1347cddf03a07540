"""Sparsity and pruning passes: when they fire, exactness, the chooser seam, the report."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tilefx.ir.builder import GraphBuilder
from tilefx.ir.interpreter import run_graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, optimize
from tilefx.passes.decisions import MemoryDecisionStore
from tilefx.passes.prune import prune_kn, prune_module
from tilefx.passes.sparsity import (AnalyticalChooser, MeasuredChooser, block_density, sparse_layers,
                                    sparsify)


def _mlp_graph(w1, w2):
    b = GraphBuilder("mlp")
    x = b.input(TensorType(DType.float32, (4, w1.shape[0])), "x")
    h = b.op("relu", b.op("matmul", x, b.const(w1, "w1")))
    return b.finish([b.op("matmul", h, b.const(w2, "w2"))])


def _block_sparse(rng, k, n, block, density):
    bk, bn = block
    mask = rng.random((k // bk, n // bn)) < density
    mask[0, 0] = True
    return (rng.standard_normal((k, n)) * np.repeat(np.repeat(mask, bk, 0), bn, 1)).astype(np.float32)


def test_sparsify_rewrites_sparse_weights_only():
    rng = np.random.default_rng(0)
    w1 = _block_sparse(rng, 64, 128, (4, 16), 0.1)
    w2 = rng.standard_normal((128, 32)).astype(np.float32)  # dense: left alone
    g = _mlp_graph(w1, w2)
    chooser = AnalyticalChooser()
    out = sparsify.bind(chooser=chooser)(g)
    names = [op.name for op in out.ops]
    assert names.count("bsr_matmul") == 1 and names.count("matmul") == 1
    assert [d.layer for d in chooser.decisions] == ["w1"] and chooser.decisions[0].sparse
    x = torch.randn(4, 64)
    torch.testing.assert_close(run_graph(out, [x])[0], run_graph(g, [x])[0], rtol=1e-5, atol=1e-5)


def test_dense_graph_unchanged_by_pipeline():
    rng = np.random.default_rng(1)
    g = _mlp_graph(rng.standard_normal((16, 32)).astype(np.float32),
                   rng.standard_normal((32, 8)).astype(np.float32))
    assert sparsify(g) is g
    assert not sparse_layers(optimize(g))


def test_measured_chooser_follows_the_measurement():
    rng = np.random.default_rng(2)
    g = _mlp_graph(_block_sparse(rng, 64, 64, (4, 16), 0.2), rng.standard_normal((64, 8)).astype(np.float32))
    calls = []

    def slow_sparse(layer, block):
        calls.append(block)
        return 1.0, 2.0  # the measurement says dense wins, whatever the estimate says

    store = MemoryDecisionStore()
    chooser = MeasuredChooser(slow_sparse, target="test-slow", store=store)
    out = optimize(g, PassOptions(sparse_chooser=chooser))
    assert calls and not sparse_layers(out)
    d = chooser.decisions[0]
    assert not d.sparse and d.dense_ms == 1000.0 and "measured dense" in d.line()
    # kept per (weight hash, shape, target) in the store: a second compile measures nothing
    optimize(g, PassOptions(sparse_chooser=MeasuredChooser(slow_sparse, target="test-slow", store=store)))
    assert len(calls) == 1


def test_prune_kn_blocks():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    p = prune_kn(w, 0.75, (4, 16))
    assert block_density(p, (4, 16)) == pytest.approx(0.25)
    kept = p != 0
    np.testing.assert_array_equal(p[kept], w[kept])
    # the kept blocks are the ones with the largest norms
    norms = np.linalg.norm(w.reshape(8, 4, 4, 16), axis=(1, 3))
    assert norms[(p.reshape(8, 4, 4, 16) != 0).any(axis=(1, 3))].min() >= \
        norms[~(p.reshape(8, 4, 4, 16) != 0).any(axis=(1, 3))].max()


def test_prune_is_opt_in_and_reported(caplog):
    import tilefx

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    x = torch.randn(3, 64)
    dense_out = m(x)
    plain = tilefx.compile(m)
    torch.testing.assert_close(plain(x), dense_out, rtol=1e-4, atol=1e-4)  # nothing pruned by default
    with caplog.at_level(logging.WARNING, logger="tilefx.passes.prune"):
        cm = tilefx.compile(m, prune=0.9, prune_block=(4, 16))
        y = cm(x)
    assert sum("prune:" in r.message and "blocks: zeros 0.0% -> " in r.message for r in caplog.records) == 2
    pruned = prune_module(m, 0.9, (4, 16))
    torch.testing.assert_close(y, pruned(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y, dense_out, atol=1e-3)
    report = cm.report()
    assert report.count("sparsity: ") == 2  # measured per layer; tiny layers may stay dense


def test_pruned_transformer_layer_matches_eager_on_pruned_weights():
    import tilefx

    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 64)
    cm = tilefx.compile(layer, prune=0.9, prune_block=(4, 4))
    with torch.no_grad():
        y = cm(x)
        want = prune_module(layer, 0.9, (4, 4))(x)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    assert cm.report().count("sparsity: ") == 4  # in_proj, out_proj, linear1, linear2
