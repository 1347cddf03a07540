"""Sparsity choices beyond the block size: the 2:4 library candidate (picked only on a
measurement), decisions kept in the tuning database across processes, and bf16 weights.
All on the CPU: measurements are fake callables that count their calls."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tilefx.storage.database import SCHEMA_VERSION, TuningDatabase
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.interpreter import run_graph
from tilefx.ir.printer import print_graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import sparsity
from tilefx.passes.decisions import MemoryDecisionStore
from tilefx.passes.rewrite import Rewriter
from tilefx.passes.sparsity import CUDA_BREAK_EVEN, AnalyticalChooser, MeasuredChooser, holds_2to4, sparsify
from tilefx.storage import decisions as storage_decisions
from tilefx.storage.decisions import DatabaseDecisionStore
from tests.old_database import old_database

F16, BF16 = DType.float16, DType.bfloat16
ROOT = Path(__file__).resolve().parents[2]


def two_four(rng, k, n):
    """``W[K, N]`` with exactly 2 random nonzeros in every 4 consecutive along K."""
    w = rng.standard_normal((k, n)).astype(np.float32)
    for g in range(0, k, 4):
        drop = rng.permuted(np.tile([0, 0, 1, 1], (n, 1)), axis=1).T.astype(bool)
        w[g:g + 4][drop] = 0
    return w


def block_sparse(rng, k, n, block, density):
    bk, bn = block
    mask = rng.random((k // bk, n // bn)) < density
    mask[0, 0] = True
    return rng.standard_normal((k, n)).astype(np.float32) * np.repeat(np.repeat(mask, bk, 0), bn, 1)


def linear_graph(w, dtype, rows=4):
    b = GraphBuilder("lin")
    x = b.input(TensorType(dtype, (rows, w.shape[0])), "x")
    return b.finish([b.op("relu", b.op("matmul", x, b.const(w.astype(np.float16), "w")))])


def gpu_estimate():
    return AnalyticalChooser(dict(CUDA_BREAK_EVEN), dtypes=(DType.float32, F16, BF16),
                             semi24=lambda layer: True)


class Counter:
    """A fake ``measure`` / ``measure_2to4``: fixed seconds, every call counted."""

    def __init__(self, dense, sparse):
        self.dense, self.sparse, self.calls = dense, sparse, 0

    def __call__(self, layer, block=None):
        self.calls += 1
        return self.dense, self.sparse


def layer_of(graph):
    """The first layer of ``graph`` the pass would look at (as ``sparsify`` finds it)."""
    rw = Rewriter(graph)
    for op in graph.ops:
        layer = sparsity.candidate(rw, op, tuple(CUDA_BREAK_EVEN), (F16, BF16))
        if layer is not None:
            return layer
        rw.emit(op)
    raise AssertionError("no candidate layer")


def bsr_ops(graph):
    return [op for op in graph.ops if op.name == "bsr_matmul"]


# ------------------------------------------------------------------ 2:4

def test_two_four_wins_only_when_measured_faster():
    rng = np.random.default_rng(0)
    w = two_four(rng, 128, 64)
    assert holds_2to4(w)
    g = linear_graph(w, F16)
    block, fast24 = Counter(1.0, 2.0), Counter(2e-3, 1e-3)
    chooser = MeasuredChooser(block, target="t", estimate=gpu_estimate(), measure_2to4=fast24)
    out = sparsify.bind(chooser=chooser)(g)
    (op,) = bsr_ops(out)
    assert op.attr("impl") == "semi24" and out.const_data(
        next(o for o in out.ops if o.result == op.inputs[1])).shape[1:] == (16, 16)
    assert 'impl = "semi24"' in print_graph(out)
    d = chooser.decisions[0]
    assert d.sparse and d.impl == "semi24" and fast24.calls == 1
    assert block.calls == 0  # every 16x16 block is nonzero: far from break-even, not timed
    assert "sparse 2:4 (semi24)" in d.line() and "measured dense 2.000 ms, sparse 1.000 ms" in d.line()
    x = torch.randn(4, 128).half()
    torch.testing.assert_close(run_graph(out, [x])[0], run_graph(g, [x])[0], rtol=1e-3, atol=1e-2)

    # measured slower: dense, and the line still shows the 2:4 timing (a new chooser, no store)
    slow24 = Counter(1e-3, 3e-3)
    chooser = MeasuredChooser(block, target="t", estimate=gpu_estimate(), measure_2to4=slow24)
    assert sparsify.bind(chooser=chooser)(g) is g
    d = chooser.decisions[0]
    assert not d.sparse and slow24.calls == 1 and "2:4 3.000 ms" in d.line() and d.line().count("dense")


def test_two_four_never_picked_on_an_estimate():
    rng = np.random.default_rng(1)
    g = linear_graph(two_four(rng, 128, 64), F16)
    chooser = gpu_estimate()  # what the driver uses without a GPU (TRITON_INTERPRET=1)
    assert sparsify.bind(chooser=chooser)(g) is g
    d = chooser.decisions[0]
    assert not d.sparse and "2:4 candidate estimated" in d.line() and "without a GPU measurement" in d.line()


def test_block_sparse_beats_two_four_when_faster_and_non_two_four_is_not_timed():
    rng = np.random.default_rng(2)
    # 2:4 inside 16x16 blocks at 10% density: both candidates exist
    mask = np.repeat(np.repeat(rng.random((8, 4)) < 0.1, 16, 0), 16, 1)
    mask[:16, :16] = True
    w = two_four(rng, 128, 64) * mask
    g = linear_graph(w, F16)
    blk, s24 = Counter(1e-3, 0.2e-3), Counter(1e-3, 0.5e-3)
    chooser = MeasuredChooser(blk, target="t", estimate=gpu_estimate(), measure_2to4=s24)
    (op,) = bsr_ops(sparsify.bind(chooser=chooser)(g))
    d = chooser.decisions[0]
    assert (blk.calls, s24.calls) == (1, 1) and d.impl == "auto" and op.attr("impl") == "auto"
    assert d.block == (16, 16) and "2:4 0.500 ms" in d.line()
    # three nonzeros in one group of 4: no 2:4 candidate, nothing timed for it
    w2 = two_four(rng, 128, 64)
    w2[0:3, 0], w2[4:8, 0] = 1.0, 0.0  # (and one group emptier: still half zeros)
    s24b = Counter(1.0, 0.0)
    MeasuredChooser(Counter(1.0, 2.0), target="t", estimate=gpu_estimate(),
                    measure_2to4=s24b).choose(layer_of(linear_graph(w2, F16)))
    assert s24b.calls == 0


def test_triton_default_schedule_follows_the_impl(monkeypatch):
    from tilefx.codegen.triton import default_schedule, semi24
    from tilefx.ir.builder import kernel_op
    from tilefx.passes.sparsity import to_bsr

    data, idx, ptr = to_bsr(two_four(np.random.default_rng(3), 128, 64), (16, 16))
    types = [TensorType(F16, (5, 128)), TensorType(F16, data.shape), TensorType(DType.int32, idx.shape),
             TensorType(DType.int32, ptr.shape)]
    op = kernel_op("sparse_contraction", types,
                   lambda b, x, d, i, p: b.op("bsr_matmul", x, d, i, p, axis=-1, impl="semi24"))
    assert default_schedule(op)["impl"] == "triton"  # no GPU here: the Triton kernel
    monkeypatch.setattr(semi24, "device_ok", lambda: True)
    assert default_schedule(op)["impl"] == "semi24"


# ------------------------------------------------------------------ the tuning database

def test_decision_is_stored_and_reused(tmp_path, caplog):
    rng = np.random.default_rng(4)
    g = linear_graph(block_sparse(rng, 128, 64, (16, 16), 0.1), F16)
    db = tmp_path / "tuning.db"
    meas = Counter(2e-3, 1e-3)

    def compile_once():  # a new chooser and store: nothing remembered but the database, as in a new process
        chooser = MeasuredChooser(meas, target="cuda:test", estimate=gpu_estimate(),
                                  store=DatabaseDecisionStore(str(db), "cuda:test"))
        return sparsify.bind(chooser=chooser)(g), chooser.decisions[0]

    out1, d1 = compile_once()
    out2, d2 = compile_once()
    assert meas.calls == 1 and d1.sparse and d2.sparse and d1.block == d2.block == (16, 16)
    assert "(from the tuning database)" in d2.line() and d2.dense_ms == 2.0
    assert print_graph(out1) == print_graph(out2)
    with TuningDatabase(db) as tdb:
        (key,) = [r[0] for r in tdb._execute("SELECT key FROM pass_decisions")]
        row = json.loads(tdb.pass_decision("sparsity", key, "cuda:test"))
    assert row["kn"] == [128, 64] and row["dtype"] == "f16" and row["densities"][0][:2] == [16, 16]
    assert row["target"] == "cuda:test" and len(row["digest"]) == 16

    # a corrupt row and a row made for another weight are ignored, with a warning, and replaced
    for bad in ("{not json", json.dumps({**row, "digest": "0" * 16})):
        with TuningDatabase(db) as tdb:
            tdb.set_pass_decision("sparsity", key, "cuda:test", bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tilefx.passes.sparsity"):
            _, d = compile_once()
        assert "ignoring" in caplog.text and d.sparse and "from the tuning database" not in d.line()
    assert meas.calls == 3
    compile_once()
    assert meas.calls == 3  # the replaced row is good again


def test_estimates_are_not_stored(tmp_path):
    rng = np.random.default_rng(5)
    g = linear_graph(block_sparse(rng, 128, 64, (16, 16), 0.9), F16)  # far from break-even
    chooser = MeasuredChooser(Counter(1.0, 0.5), target="t", estimate=gpu_estimate(),
                              store=DatabaseDecisionStore(str(tmp_path / "t.db"), "t"))
    assert sparsify.bind(chooser=chooser)(g) is g
    with TuningDatabase(tmp_path / "t.db") as tdb:
        assert tdb._execute("SELECT COUNT(*) FROM pass_decisions").fetchone()[0] == 0



def test_database_store_reads_the_rows_databases_hold_and_remembers_them(tmp_path, monkeypatch):
    """The rows are ``pass_decisions`` (kind ``sparsity``, per target) as the store before it
    wrote them; a store object remembers what it read (a miss too) or wrote, so asking it again
    does not reopen the database; a new store reads the database afresh."""
    db = tmp_path / "tuning.db"
    with TuningDatabase(db) as tdb:
        tdb.set_pass_decision("sparsity", "k1", "cpu:test", '{"a": 1}')
    opened = []
    real = storage_decisions.TuningDatabase
    monkeypatch.setattr(storage_decisions, "TuningDatabase", lambda path: opened.append(path) or real(path))
    store = DatabaseDecisionStore(str(db), "cpu:test")
    assert store.get("k1") == '{"a": 1}' and store.get("missing") is None
    assert DatabaseDecisionStore(str(db), "cpu:other").get("k1") is None
    assert DatabaseDecisionStore(str(db), "cpu:test", kind="other_pass").get("k1") is None
    store.put("k2", '{"b": 2}')
    assert len(opened) == 5
    assert (store.get("k1"), store.get("missing"), store.get("k2")) == ('{"a": 1}', None, '{"b": 2}')
    assert len(opened) == 5  # all three from the store's memo
    with real(db) as tdb:
        assert tdb.pass_decision("sparsity", "k2", "cpu:test") == '{"b": 2}'
    assert DatabaseDecisionStore(str(db), "cpu:test").get("k2") == '{"b": 2}' and len(opened) == 6


def test_database_store_that_cannot_open_the_database_reports_and_answers_absent(tmp_path, monkeypatch,
                                                                                   caplog):
    def unopenable(path):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(storage_decisions, "TuningDatabase", unopenable)
    store = DatabaseDecisionStore(str(tmp_path / "t.db"), "t")
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.decisions"):
        assert store.get("k") is None
        store.put("k", "{}")
    assert caplog.text.count("cannot") == 2 and "unable to open" in caplog.text
    assert store.get("k") == "{}"  # this process remembers what the database did not take
    # the chooser goes on measuring: the compile never fails on its store
    g = linear_graph(block_sparse(np.random.default_rng(9), 128, 64, (16, 16), 0.1), F16)
    meas = Counter(2e-3, 1e-3)
    chooser = MeasuredChooser(meas, target="t", estimate=gpu_estimate(),
                              store=DatabaseDecisionStore(str(tmp_path / "t.db"), "t"))
    assert len(bsr_ops(sparsify.bind(chooser=chooser)(g))) == 1 and meas.calls == 1


def test_a_store_shared_by_two_choosers_measures_once_and_a_weight_met_twice_is_decided_once():
    w = block_sparse(np.random.default_rng(8), 128, 64, (16, 16), 0.1).astype(np.float16)
    b = GraphBuilder("two")
    x = b.input(TensorType(F16, (4, 128)), "x")
    g = b.finish([b.op("matmul", x, b.const(w, "w1")), b.op("matmul", x, b.const(w, "w2"))])
    meas, store = Counter(2e-3, 1e-3), MemoryDecisionStore()
    chooser = MeasuredChooser(meas, target="t", estimate=gpu_estimate(), store=store)
    assert len(bsr_ops(sparsify.bind(chooser=chooser)(g))) == 2
    assert meas.calls == 1 and len(store.rows) == 1
    d1, d2 = chooser.decisions
    assert (d1.layer, d2.layer) == ("w1", "w2") and d1.sparse and d2.sparse
    assert "from the tuning database" not in d2.line()  # this chooser's own decision, not a stored one
    again = MeasuredChooser(meas, target="t", estimate=gpu_estimate(), store=store)  # a second compile
    assert len(bsr_ops(sparsify.bind(chooser=again)(g))) == 2
    assert meas.calls == 1 and all(d.sparse and d.dense_ms == 2.0 for d in again.decisions)
    # without a store nothing outlives the chooser: a new one measures again
    MeasuredChooser(meas, target="t", estimate=gpu_estimate()).choose(layer_of(g))
    assert meas.calls == 2

SCRIPT = """
import numpy as np, sys
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.types import DType, TensorType
from tilefx.passes.sparsity import MeasuredChooser, sparsify
from tilefx.storage.decisions import DatabaseDecisionStore
rng = np.random.default_rng(0)
mask = np.repeat(np.repeat(rng.random((8, 4)) < 0.1, 16, 0), 16, 1)
mask[:16, :16] = True
b = GraphBuilder("lin")
x = b.input(TensorType(DType.float32, (4, 128)), "x")
g = b.finish([b.op("matmul", x, b.const((rng.standard_normal((128, 64)) * mask).astype(np.float32), "w"))])
calls = []
chooser = MeasuredChooser(lambda layer, block: calls.append(block) or (2.0, 1.0), target="cpu:test",
                          store=DatabaseDecisionStore(sys.argv[1], "cpu:test"))
out = sparsify.bind(chooser=chooser)(g)
print(len(calls), sum(op.name == "bsr_matmul" for op in out.ops))
"""


def test_a_new_process_measures_nothing(tmp_path):
    db = str(tmp_path / "tuning.db")
    runs = [subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), db], capture_output=True,
                           text=True, cwd=ROOT, timeout=120) for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["1", "1"], ["0", "1"]], [r.stderr[-2000:] for r in runs]


def test_version_2_database_gains_pass_decisions(tmp_path):
    path = tmp_path / "v2.db"
    conn = old_database(path, "pass_decisions", version=2)
    conn.execute("INSERT INTO graph_decisions VALUES ('g', 't', 1, 1.0, 2.0, 0)")
    conn.commit()
    conn.close()
    with TuningDatabase(path) as db:
        assert db.graph_decision("g", "t") == (True, 1.0, 2.0)  # kept, not moved aside
        assert db.pass_decision("sparsity", "k", "t") is None
        db.set_pass_decision("sparsity", "k", "t", '{"a": 1}')
        db.set_pass_decision("sparsity", "k", "t", '{"a": 2}')  # replaced
        assert db.pass_decision("sparsity", "k", "t") == '{"a": 2}'
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_driver_keeps_cpu_decisions_in_the_tuning_db(tmp_path, monkeypatch):
    """Two CPU compiles: the second finds the decision in the database given by ``tune_db``
    and times nothing."""
    pytest.importorskip("tvm")
    import tilefx
    from tilefx.codegen.tvm.schedules import sparse as tvm_sparse
    from tilefx.compiler.options import CompileOptions

    meas = Counter(2e-3, 1e-3)
    monkeypatch.setattr(tvm_sparse, "measure_layer", lambda layer, block, target=None: meas(layer, block))
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    with torch.no_grad():
        lin.weight *= (torch.rand(64 // 16, 128 // 16) < 0.1).repeat_interleave(16, 0).repeat_interleave(16, 1)
        lin.weight[:16, :16] = 1.0
    x = torch.randn(3, 128)
    options = CompileOptions(tune_db=str(tmp_path / "tuning.db"))
    reports, calls = [], []
    for _ in range(2):
        cm = tilefx.compile(lin, options=options)
        with torch.no_grad():
            torch.testing.assert_close(cm(x), lin(x), rtol=1e-4, atol=1e-4)
        reports.append(cm.report())
        calls.append(meas.calls)
    # the first compile times the estimate's best block and its runner-up; the second nothing
    assert 1 <= calls[0] <= 2 and calls[1] == calls[0]
    assert "sparsity: " in reports[0] and "(from the tuning database)" in reports[1]
    assert "sparse_contraction" in reports[1]


# ------------------------------------------------------------------ bf16

def bf16_linear_graph(w):
    """As the frontend holds a bf16 nn.Linear weight: f32 const -> cast bf16 -> permute."""
    b = GraphBuilder("lin_bf16")
    x = b.input(TensorType(BF16, (3, w.shape[0])), "x")
    wt = torch.from_numpy(np.ascontiguousarray(w.T)).bfloat16().float().numpy()  # [N, K], bf16 values
    v = b.op("permute", b.op("cast", b.const(wt, "weight"), dtype=BF16), dims=(1, 0))
    return b.finish([b.op("matmul", x, v)])


def test_bf16_weight_reaches_the_pass_and_stays_exact():
    rng = np.random.default_rng(6)
    w = block_sparse(rng, 64, 96, (16, 16), 0.1)
    g = bf16_linear_graph(w)
    chooser = gpu_estimate()
    out = sparsify.bind(chooser=chooser)(g)
    (op,) = bsr_ops(out)
    d = chooser.decisions[0]
    assert d.sparse and d.block == (16, 16) and d.layer == "weight" and " bf16 @ W [64, 96]" in d.line()
    cast = next(o for o in out.ops if o.result == op.inputs[1])
    assert cast.name == "cast" and cast.attr("dtype") == BF16
    data = out.const_data(next(o for o in out.ops if o.result == cast.inputs[0]))
    assert data.dtype == np.float32
    # the blocks are the bf16 weight's values, bit for bit
    want = torch.from_numpy(np.ascontiguousarray(w)).bfloat16().float().numpy()
    np.testing.assert_array_equal(sparsity.from_bsr(data, *(out.const_data(next(
        o for o in out.ops if o.result == v)) for v in op.inputs[2:]), 64), want)
    x = torch.randn(3, 64).bfloat16()
    torch.testing.assert_close(run_graph(out, [x])[0].float(), run_graph(g, [x])[0].float(),
                               rtol=2e-2, atol=2e-2)


def test_bf16_cast_of_values_that_are_not_bf16_is_left_alone():
    rng = np.random.default_rng(7)
    w = block_sparse(rng, 64, 96, (16, 16), 0.2)
    b = GraphBuilder("lin_f32_cast")
    x = b.input(TensorType(BF16, (3, 64)), "x")
    v = b.op("cast", b.const(w + np.float32(1e-4) * (w != 0), "weight"), dtype=BF16)  # rounds
    g = b.finish([b.op("matmul", x, v)])
    assert sparsify.bind(chooser=gpu_estimate())(g) is g


def test_the_runner_up_block_is_timed_and_wins_when_faster():
    """A learned estimate that ranks blocks: its best and runner-up are both timed, and the
    faster measured one is chosen even when the estimate preferred the other."""
    class Ranked:
        def rank_blocks(self, layer):
            return [((4, 4), 0.1, 1.0), ((4, 16), 0.1, 1.5), ((1, 1), 0.1, 1.8)], 10.0

        def estimate(self, layer):
            block, density, ms = self.rank_blocks(layer)[0][0]
            return block, density, 10.0, ms

    timed = []

    def measure(layer, block):
        timed.append(block)
        return 5e-3, (1e-3 if block == (4, 16) else 3e-3)

    rng = np.random.default_rng(0)
    w = (rng.random((64, 64)) < 0.1).astype(np.float32) * rng.standard_normal((64, 64)).astype(np.float32)
    layer = sparsity.SparseLayer("w", "linear", (4, 64), 1, w, (((1, 1), 0.1), ((4, 4), 0.1), ((4, 16), 0.1)))
    d = sparsity.MeasuredChooser(measure, target="test-runner-up", estimate=Ranked()).choose(layer)
    assert timed == [(4, 4), (4, 16)]
    assert d.sparse and d.block == (4, 16) and d.sparse_ms == pytest.approx(1.0)
