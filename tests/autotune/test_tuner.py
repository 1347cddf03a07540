"""The tuning loop end to end: builder pool, isolated runner, correctness guard,
dedupe, database reuse, Ctrl-C, ``tilefx.compile(tune=N)`` and ``tilefx tune``.

Kernels are tiny and trial counts small; one runner process is shared by
the tests of this file (starting one costs a TVM import).
"""

from __future__ import annotations

import os

import pytest
import torch

from tilefx.codegen.measure import LocalBuilder, LocalRunner
from tilefx.codegen.space import EXTERN
from tilefx.autotune.tuner import TuneOptions, Tuner, format_summary, parse_budget
from tilefx.codegen.target import Target
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tests.old_database import old_database_with_workload

TARGET = Target.host_cpu()


def f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)




def _relu_add(name="pw", n=256):
    return kernel_op("pointwise", [f32(4, n), f32(4, n)],
                     lambda b, x, y: b.op("relu", b.op("add", x, y)), name=name)


def _matmul(name="mm"):
    return kernel_op("contraction", [f32(16, 32), f32(32, 16)],
                     lambda b, x, w: b.op("matmul", x, w), name=name)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    old = os.environ.get("TILEFX_CACHE_DIR")
    path = tmp_path_factory.mktemp("tune_cache")
    os.environ["TILEFX_CACHE_DIR"] = str(path)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    yield path
    if old is None:
        os.environ.pop("TILEFX_CACHE_DIR", None)
    else:
        os.environ["TILEFX_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def runner(cache_dir):
    r = LocalRunner(timeout=20.0, repeats=2, min_repeat_seconds=0.0005)
    yield r
    r.close()


def _tuner(tmp_path, runner, trials=4, **kw):
    opts = TuneOptions(trials=trials, batch=kw.pop("batch", 4), workers=kw.pop("workers", 0),
                       progress=False, db_path=str(tmp_path / "tuning.db"), seed=1, **kw)
    return Tuner(TARGET, opts, runner=runner)


def _count(db) -> int:
    return len(db.records())


def test_parse_budget():
    assert parse_budget(8) == (8, None) and parse_budget("8") == (8, None)
    assert parse_budget("30s")[1] == 30.0 and parse_budget("2m")[1] == 120.0
    assert parse_budget(0) == (0, None)
    with pytest.raises(ValueError, match="tune='fast'"):
        parse_budget("fast")


def test_tune_pool_measures_records_and_warm_db_measures_nothing(tmp_path, runner):
    from tilefx.codegen.tvm import default_schedule

    op = _matmul()
    default = default_schedule(op, TARGET)
    crash = lambda s: None if s == default else "crash"  # noqa: E731 - the searched one dies
    tuner = Tuner(TARGET, TuneOptions(trials=3, batch=4, progress=False, seed=1,
                                      db_path=str(tmp_path / "tuning.db")),
                  builder=LocalBuilder(workers=1, fault=crash), runner=runner)  # a real pool
    res = tuner.tune_kernel(op)
    tuner.builder.close()
    assert res.trials == 3 and res.statuses == {"ok": 2, "build_error": 1}, res
    assert "builder process failed" in [r for r in tuner.db.records()
                                        if r.status == "build_error"][0].error
    assert res.best is not None and res.best_seconds > 0
    assert res.default_seconds and res.library_seconds  # both baselines measured first
    assert res.best_seconds <= min(res.default_seconds, res.library_seconds)
    assert res.history == sorted(res.history, reverse=True)
    # 3 candidates; the best TVM one and the library measured twice more each, in turns
    assert len({r.fingerprint for r in tuner.db.records()}) == 3 and _count(tuner.db) == 3 + 4
    table = format_summary([res])
    assert "| mm | contraction | 3 |" in table and "library ms" in table
    # the same computation under another name, in a fresh tuner: nothing measured
    again = _tuner(tmp_path, runner, trials=3)
    res2 = again.tune_kernel(_matmul(name="other"))
    assert res2.from_db and res2.trials == 0 and again.measurements == 0
    assert res2.best == res.best and _count(again.db) == 7


def _calibrated_timeout() -> float:
    """A candidate's timeout that scales with how busy the machine is now.

    A fixed 3 s made good candidates time out on a loaded 2-core machine (the runner child
    restarted after the crash must import TVM and load the kernel again). So one good
    candidate of the same kind is measured first, child start included, and the timeout
    is 10x that (at least 3 s): a hang still costs seconds, a slow machine no false alarm.
    """
    import time

    from tilefx.ir.functional_hash import workload_key
    from tilefx.codegen.measure import Workload
    from tilefx.codegen.tvm import default_schedule

    op = _relu_add(name="probe")
    workload = Workload(op, TARGET, (), workload_key(op))
    probe = LocalRunner(timeout=120.0, repeats=2, min_repeat_seconds=0.0005)
    try:
        build = LocalBuilder(workers=0).build(workload, [default_schedule(op, TARGET)])[0]
        t0 = time.perf_counter()
        result = probe.run(workload, [build])[0]
        seconds = time.perf_counter() - t0
    finally:
        probe.close()
    assert result.status == "ok", result
    return max(3.0, 10 * seconds)


def test_crashing_and_hanging_candidates_are_recorded_and_tuning_goes_on(tmp_path, cache_dir):
    bad: dict = {}

    def fault(schedule):
        if not bad:
            bad[schedule] = "crash"
        elif len(bad) == 1 and schedule not in bad:
            bad[schedule] = "hang"
        return bad.get(schedule)

    runner = LocalRunner(timeout=_calibrated_timeout(), repeats=2, min_repeat_seconds=0.0005,
                         fault=fault)
    try:
        tuner = _tuner(tmp_path, runner, trials=4)
        res = tuner.tune_kernel(_relu_add())
    finally:
        runner.close()
    assert res.statuses.get("run_error") == 1 and res.statuses.get("timeout") == 1, res.statuses
    assert res.statuses.get("ok", 0) >= 2 and res.best is not None
    errors = {r.status: r.error for r in tuner.db.records()}
    assert "died" in errors["run_error"] and "no result" in errors["timeout"]
    assert runner.restarts == 2


class _MiscompilingBuilder(LocalBuilder):
    """Builds every other candidate from a different computation (exp instead of relu)."""

    def build(self, workload, schedules, deadline=None):
        from dataclasses import replace

        wrong = kernel_op("pointwise", [f32(4, 256), f32(4, 256)],
                          lambda b, x, y: b.op("exp", b.op("add", x, y)))
        out = []
        for i, s in enumerate(schedules):
            w = replace(workload, kernel=wrong) if i % 2 else workload
            out += super().build(w, [s], deadline)
        return out


def test_wrong_results_are_rejected_and_counted(tmp_path, runner, caplog):
    tuner = Tuner(TARGET, TuneOptions(trials=4, batch=4, progress=False,
                                      db_path=str(tmp_path / "t.db")),
                  builder=_MiscompilingBuilder(workers=0), runner=runner)
    with caplog.at_level("WARNING", logger="tilefx.autotune"):
        res = tuner.tune_kernel(_relu_add(name="guarded"))
    assert res.statuses.get("wrong_result") == 2 and len(res.wrong_results) == 2
    assert "wrong result" in caplog.text and "Schedule(" in caplog.text
    best = tuner.db.best(res.workload_key, TARGET.key())
    assert best.schedule not in [r.schedule for r in tuner.db.records() if r.status != "ok"]
    assert "wrong results rejected" in format_summary([res])


def test_duplicate_code_is_skipped(tmp_path, runner):
    # a tiny kernel: unroll and vector knobs collapse on 4 x 2 elements
    op = kernel_op("pointwise", [f32(4, 2)], lambda b, x: b.op("relu", x), name="tiny")
    tuner = _tuner(tmp_path, runner, trials=30, strategy="grid", batch=8)
    res = tuner.tune_kernel(op)
    assert res.dup_skipped > 0 and res.trials + res.dup_skipped >= 10
    fps = [r.fingerprint for r in tuner.db.records()]
    assert len(fps) == len(set(fps)) == res.trials  # each code measured once
    assert res.saved_seconds > 0


def test_ctrl_c_keeps_measurements_and_rerun_resumes(tmp_path, runner):
    calls = []

    def interrupt_on_third(schedule):
        calls.append(schedule)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None

    runner.fault = interrupt_on_third
    try:
        tuner = _tuner(tmp_path, runner, trials=5, batch=2)
        res = tuner.tune_kernel(_relu_add(name="stopped"))
    finally:
        runner.fault = None
    assert res.interrupted and res.trials == 2 and _count(tuner.db) == 2
    rerun = _tuner(tmp_path, runner, trials=5, batch=2)
    res2 = rerun.tune_kernel(_relu_add(name="stopped"))
    assert not res2.interrupted and res2.trials == 3 and _count(rerun.db) == 5
    fps = [r.fingerprint for r in rerun.db.records()]
    assert len(set(fps)) == 5


def test_extern_schedule_runs_the_library_path(cache_dir):
    from tilefx.compiler.session import CompileSession

    op = kernel_op("contraction", [f32(8, 16), f32(16, 4), f32(4)],
                   lambda b, x, w, c: b.op("relu", b.op("add", b.op("matmul", x, w), c)))
    built = CompileSession().build(op, TARGET, {}, EXTERN)
    x, w, c = torch.randn(8, 16), torch.randn(16, 4), torch.randn(4)
    out = torch.empty(8, 4)
    built(x, w, c, out)
    torch.testing.assert_close(out, torch.relu(x @ w + c))


def test_library_kernel_is_the_bare_torch_calls():
    """The extern candidate: no interpreter, results written in place where torch can."""
    from tilefx.codegen.measure import LibraryKernel

    # matmul straight into the output buffer
    mm = LibraryKernel(_matmul())
    x, w = torch.randn(16, 32), torch.randn(32, 16)
    out = torch.full((16, 16), float("nan"))
    mm(x, w, out)
    torch.testing.assert_close(out, x @ w)
    assert mm._outputs[0][1]  # written by torch.matmul(out=), not copied
    # conv + bias + relu: the epilogue's last op writes the output; two outputs, one twice
    op = kernel_op("contraction", [f32(1, 4, 8, 8), f32(6, 4, 3, 3), f32(6, 1, 1)],
                   lambda b, x, w, c: (lambda y: [b.op("relu", b.op("add", y, c)), y, y])(
                       b.op("conv2d", x, w, padding=(1, 1))))
    lib = LibraryKernel(op)
    x, w, c = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6, 1, 1)
    outs = [torch.full((1, 6, 8, 8), float("nan")) for _ in range(3)]
    lib(x, w, c, *outs)
    y = torch.nn.functional.conv2d(x, w, padding=1)
    torch.testing.assert_close(outs[0], torch.relu(y + c))
    torch.testing.assert_close(outs[1], y)
    torch.testing.assert_close(outs[2], y)
    assert [direct for _, direct in lib._outputs] == [True, False, False]
    # a fresh input each call: nothing is cached between calls
    x2 = torch.randn(1, 4, 8, 8)
    lib(x2, w, c, *outs)
    torch.testing.assert_close(outs[0], torch.relu(torch.nn.functional.conv2d(x2, w, padding=1) + c))


def _scaled_softmax(x):
    # reduction + pointwise kernels only: no contraction, so no library runner to start
    return torch.softmax(x * 0.5, dim=-1) + 1.0


def test_compile_with_tune_then_warm_compile_measures_nothing(tmp_path, cache_dir, monkeypatch):
    import tilefx
    from tilefx.storage.database import TuningDatabase
    from tilefx.compiler.options import CompileOptions

    monkeypatch.setenv("TILEFX_TUNE_WORKERS", "0")  # builds in process: no pool start-up
    torch.manual_seed(0)
    model, x = _scaled_softmax, torch.randn(8, 32)
    db_path = str(tmp_path / "model.db")
    opts = CompileOptions(tune_trials=2, tune_db=db_path)
    cm = tilefx.compile(model, options=opts)
    torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-5)
    (rec,) = cm.records
    assert rec.tuning and all(t.trials == 2 for t in rec.tuning)
    assert "tuning:" in cm.report()
    with TuningDatabase(db_path) as db:
        n = _count(db)
    assert n >= 2
    cm2 = tilefx.compile(model, options=opts)
    torch.testing.assert_close(cm2(x), model(x), rtol=1e-4, atol=1e-5)
    assert all(t.from_db and t.trials == 0 for t in cm2.records[0].tuning)
    with TuningDatabase(db_path) as db:
        assert _count(db) == n  # zero measurements the second time


def test_cli_tune(tmp_path, cache_dir, capsys):
    from tilefx.compiler.cli import main

    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "def f(x):\n"
                   "    return torch.nn.functional.gelu(x) * 2.0\n")
    code = main(["tune", f"{src}:f", "--input", "4x16", "--trials", "2", "--workers", "0",
                 "--db", str(tmp_path / "cli.db"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "distinct kernels" in out and "| kernel |" in out and "candidates measured" in out
    assert main(["tune", f"{src}:f", "--input", "4x16", "--time", "soon"]) == 2


@pytest.mark.parametrize("tuned_faster", [True, False])
def test_the_whole_graph_decides_between_tuned_and_default(tmp_path, cache_dir, monkeypatch,
                                                           tuned_faster):
    """Tuned kernels that make the model slower are not kept: the graph is timed both ways."""
    import tilefx
    from tilefx.codegen import timing
    from tilefx.compiler.options import CompileOptions

    monkeypatch.setenv("TILEFX_TUNE_WORKERS", "0")
    calls = []

    def fake_median_ms(fn, inputs, repeats=9, **kwargs):  # called tuned, default, tuned, ...
        calls.append(fn)
        is_tuned = len(calls) % 2 == 1
        return 1.0 if is_tuned == tuned_faster else 2.0

    monkeypatch.setattr(timing, "median_ms", fake_median_ms)  # the backends' timer()
    x = torch.randn(8, 32)
    cm = tilefx.compile(_scaled_softmax, options=CompileOptions(
        tune_trials=2, tune_db=str(tmp_path / "check.db")))
    torch.testing.assert_close(cm(x), _scaled_softmax(x), rtol=1e-4, atol=1e-5)
    (rec,) = cm.records
    kept = "tuned" if tuned_faster else "default"
    decision = rec.tuning_decision
    assert decision.keep_tuned is tuned_faster and not decision.from_database
    assert f"kept the {kept} schedules" in cm.report()
    assert "tuning check:" in cm.report()
    assert len(calls) == 6  # three interleaved rounds
    # a warm recompile takes the decision from the database: the model is not timed again
    calls.clear()
    cm2 = tilefx.compile(_scaled_softmax, options=CompileOptions(
        tune_trials=2, tune_db=str(tmp_path / "check.db")))
    torch.testing.assert_close(cm2(x), _scaled_softmax(x), rtol=1e-4, atol=1e-5)
    assert calls == []
    decision = cm2.records[0].tuning_decision
    assert decision.keep_tuned is tuned_faster and decision.from_database


def test_warm_recompile_skips_the_functional_hash_and_finished_searches(tmp_path, runner,
                                                                       monkeypatch):
    """The warm path: the workload key comes from the IR hash, and a search that ran out of
    new code (fewer distinct schedules than trials) is not searched again."""
    import importlib

    functional_hash = importlib.import_module("tilefx.ir.functional_hash")
    op = _relu_add(n=8)  # a tiny space: fewer distinct programs than the trials asked for
    first = _tuner(tmp_path, runner, trials=64)
    res = first.tune_kernel(op)
    assert 0 < res.trials < 64 and first.db.tuning_state(res.workload_key, TARGET.key())[1]

    def no_reference_run(*a, **k):
        raise AssertionError("the functional hash was computed again")

    monkeypatch.setattr(functional_hash, "workload_key", no_reference_run)
    monkeypatch.setattr(functional_hash, "functional_hash", no_reference_run)
    again = _tuner(tmp_path, runner, trials=64)
    res2 = again.tune_kernel(_relu_add(name="renamed", n=8))
    assert res2.from_db and again.measurements == 0 and res2.workload_key == res.workload_key
    assert res2.best == res.best and res2.default_seconds is not None
    # other IR text (another size) is a new workload: the hash is needed, and asked for
    with pytest.raises(AssertionError, match="computed again"):
        again.tune_kernel(_relu_add(n=16))


def test_version_1_database_gains_the_new_tables(tmp_path):
    import sqlite3

    from tilefx.storage import database

    path = tmp_path / "old.db"
    old_database_with_workload(path, "kernel_keys", version=1)
    with database.TuningDatabase(path) as db:
        assert db.workload("w") == ("ir", "fh")  # kept, not moved aside
        db.set_tuning_state("w", "t", 8, False)
        db.set_tuning_state("w", "t", 4, True)
        assert db.tuning_state("w", "t") == (8, True)
        db.set_graph_decision("g", "t", True, 1.0, 2.0)
        assert db.graph_decision("g", "t") == (True, 1.0, 2.0)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION
