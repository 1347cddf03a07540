"""Checked builds: every newly built kernel runs once against the reference before use.

A planted wrong kernel (the real TVM kernel, then one added to its output: what a
miscompiled template does) must be rejected, reported in one line, run in PyTorch with
the right result, marked bad in the tuning database, not built again by a later compile,
and skipped by the tuner. A good kernel is checked once; a warm recompile checks
nothing. ``check=False`` / ``TILEFX_CHECK_BUILDS=0`` turn it off.
"""

from __future__ import annotations

import logging

import pytest
import torch

import tilefx
from tilefx.storage.database import KernelCheck, TuningDatabase
from tilefx.codegen.tvm.backend import TVMBackend
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.records import CheckStatus, CompileRecord
from tilefx.compiler.session import CompileSession, KernelBuilder
from tilefx.ir import functional_hash
from tests.old_database import old_database_with_workload


def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.relu(x @ w), dim=-1)  # a contraction kernel, then a reduction


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 32, generator=g), torch.randn(32, 16, generator=g) + 0.5


class WrongKernel:
    """A built kernel that adds one to its first output element after computing it."""

    def __init__(self, real):
        self.real, self.schedule, self.lowered = real, real.schedule, ""
        self.fingerprint, self.from_cache = "wrong-" + real.fingerprint, False

    def __call__(self, *tensors):
        self.real(*tensors)
        tensors[-1].view(-1)[0] += 1.0  # not all: a softmax after it would not see that


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache dir (kernels, tuning database) and a process that remembers nothing."""
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TILEFX_CHECK_BUILDS", raising=False)

    def forget() -> None:  # each compile has its own session: only process memos of the
        functional_hash._RUNS.clear()  # reference runs remain, and those are facts
        functional_hash._functional_hash_cached.cache_clear()

    forget()
    yield forget
    forget()


@pytest.fixture
def planted(monkeypatch):
    """Contraction kernels come out wrong; returns the list of wrong kernels built."""
    real_build = TVMBackend.build
    built: list[WrongKernel] = []

    def build(self, op, schedule=None, bindings=None):
        kernel = real_build(self, op, schedule, bindings)
        if op.attr("kind") != "contraction":
            return kernel
        built.append(WrongKernel(kernel))
        return built[-1]

    monkeypatch.setattr(TVMBackend, "build", build)
    return built


def _rows(status: str | None = None) -> list[KernelCheck]:
    with TuningDatabase() as db:
        rows = db._execute("SELECT code_key, target_key FROM kernel_checks").fetchall()
        found = [db.kernel_check(*r) for r in rows]
    return [r for r in found if status is None or r.status == status]


def _kernel_lines(cm) -> list[str]:
    return [line for line in cm.report().splitlines() if line.startswith("  fused_")]


def test_wrong_kernel_is_rejected_reported_run_in_pytorch_and_marked_bad(fresh, planted, caplog):
    x, w = _inputs()
    with caplog.at_level(logging.WARNING, logger="tilefx"):
        cm = tilefx.compile(f)
        y = cm(x, w)
    torch.testing.assert_close(y, f(x, w), rtol=1e-4, atol=1e-5)  # PyTorch ran it, not the kernel
    assert len(planted) == 1
    lines = _kernel_lines(cm)
    rejected = [line for line in lines if "rejected" in line]
    assert len(rejected) == 1, cm.report()
    assert "contraction" in rejected[0] and "(rejected: wrong result vs reference, max abs err 1 " \
        "— runs in PyTorch" in rejected[0], rejected[0]
    assert all("rejected" not in line and "unchecked" not in line
               for line in lines if line is not rejected[0])  # the softmax kernel passed
    assert any("rejected: wrong result vs reference" in r.message for r in caplog.records)
    [bad] = _rows("wrong_result")
    assert bad.workload_key.startswith("contraction:") and bad.fingerprint and bad.schedule_json
    assert bad.code_key.endswith(planted[0].fingerprint)
    assert len(_rows("ok")) == 1  # the softmax kernel, checked once

    # a new process: nothing in memory, the database remembers; the kernel is not even built
    fresh()
    session = CompileSession()
    cm2 = tilefx.compile(f, session=session)
    torch.testing.assert_close(cm2(x, w), f(x, w), rtol=1e-4, atol=1e-5)
    assert len(planted) == 1, "a kernel known bad was built again"
    assert session.checks.checks_run == 0  # the softmax kernel: checked before, from the db
    [line] = [line for line in _kernel_lines(cm2) if "rejected" in line]
    assert "(rejected earlier: wrong result vs reference, max abs err 1 — runs in PyTorch" in line


def test_strict_raises_on_a_wrong_kernel(fresh, planted):
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.session import WrongKernelError

    cm = tilefx.compile(f, options=CompileOptions(strict=True))
    with pytest.raises(WrongKernelError, match="wrong result vs reference"):
        cm(*_inputs())


def test_the_tuner_skips_a_kernel_marked_bad(fresh, planted):
    from tilefx.autotune.tuner import TuneOptions, Tuner

    cm = tilefx.compile(f)
    cm(*_inputs())
    [bad] = _rows("wrong_result")
    [op] = [op for op in cm.records[-1].optimized_ir.ops
            if op.name == "kernel" and op.attr("kind") == "contraction"]
    tuner = Tuner(options=TuneOptions(trials=2, batch=2, workers=0, progress=False, seed=1))
    try:
        res = tuner.tune_kernel(op)  # the default schedule, the one marked bad, comes first
    finally:
        tuner.close()
    assert res.workload_key == bad.workload_key
    assert res.bad_skipped >= 1 and res.trials >= 1
    with TuningDatabase() as db:
        fps = {r.fingerprint for r in db.records(bad.workload_key)}
        assert bad.fingerprint not in fps
        # even a measurement of it (another machine's, an import) is never the best
        cid = db.add_candidate(bad.workload_key, bad.target_key, bad.schedule_json, bad.fingerprint)
        db.add_measurement(cid, [1e-9], "ok")
        best = db.best(bad.workload_key, bad.target_key)
        assert best is not None and best.fingerprint != bad.fingerprint


@pytest.mark.parametrize("how", ["keyword", "env"])
def test_check_off(fresh, planted, monkeypatch, how):
    x, w = _inputs()
    session = CompileSession()
    if how == "env":
        monkeypatch.setenv("TILEFX_CHECK_BUILDS", "0")
        cm = tilefx.compile(f, session=session)
    else:
        cm = tilefx.compile(f, check=False, session=session)
    y = cm(x, w)
    assert session.checks.checks_run == 0 and _rows() == []
    # the planted kernel ran (nothing checked): its first row is off
    assert not torch.allclose(y, f(x, w), rtol=1e-5, atol=1e-6)
    assert "rejected" not in cm.report()


def test_good_kernels_are_checked_once(fresh):
    x, w = _inputs()
    session = CompileSession()
    cm = tilefx.compile(f, session=session)
    torch.testing.assert_close(cm(x, w), f(x, w), rtol=1e-4, atol=1e-5)
    n = len(cm.records[-1].kernels)
    assert session.checks.checks_run == n == len(_rows("ok"))
    assert all(k.check is CheckStatus.PASSED for k in cm.records[-1].kernels)
    assert "check" in cm.records[-1].seconds
    assert "rejected" not in cm.report() and "unchecked" not in cm.report()
    tilefx.compile(f, session=session)(x, w)  # same session: remembered
    assert session.checks.checks_run == n
    fresh()
    session3 = CompileSession()
    cm3 = tilefx.compile(f, session=session3)  # new session, warm cache: the database remembers
    torch.testing.assert_close(cm3(x, w), f(x, w), rtol=1e-4, atol=1e-5)
    assert session3.checks.checks_run == 0
    assert "check" not in cm3.records[-1].seconds or cm3.records[-1].seconds["check"] < 0.5


def test_kernel_without_a_reference_is_used_and_reported_unchecked(fresh, monkeypatch):
    from tilefx.ir import functional_hash

    def no_reference(*args, **kw):
        raise RuntimeError("the interpreter has no rule for this op")

    monkeypatch.setattr(functional_hash, "reference_run", no_reference)
    x, w = _inputs()
    cm = tilefx.compile(f)
    torch.testing.assert_close(cm(x, w), f(x, w), rtol=1e-4, atol=1e-5)
    lines = _kernel_lines(cm)
    assert lines and all("(tvm, unchecked: RuntimeError: the interpreter has no rule" in line
                         for line in lines), lines
    assert _rows() == []  # not stored: a later compile tries again


def test_the_check_reuses_the_functional_hash_run(fresh, monkeypatch):
    from tilefx.ir import functional_hash

    cm = tilefx.compile(f, check=False)
    cm(*_inputs())
    ops = [op for op in cm.records[-1].optimized_ir.ops if op.name == "kernel"]
    calls = []
    real = functional_hash._run_wide
    monkeypatch.setattr(functional_hash, "_run_wide", lambda *a: calls.append(a[2:]) or real(*a))
    functional_hash._RUNS.clear()
    functional_hash._functional_hash_cached.cache_clear()
    for op in ops:
        functional_hash.workload_key(op)  # what tuning computes: the wide (float64) run
    assert len(calls) == len(ops) == 2
    options = CompileOptions()
    session = CompileSession()
    build = KernelBuilder(session, options.resolved_target(), options, CompileRecord("t"))
    for op in ops:  # as a tuned compile does: the hash first, then the build and its check
        build(op, {})
    assert session.checks.checks_run == 2 and len(calls) == 2  # checked on the hash's run
    functional_hash._RUNS.clear()
    with TuningDatabase() as db:
        db._execute("DELETE FROM kernel_checks")
    session = CompileSession()  # remembers no checks
    build = KernelBuilder(session, options.resolved_target(), options, CompileRecord("t"))
    for op in ops:  # no hash computed: a float32 reference run per kernel
        build(op, {})
    assert session.checks.checks_run == 2
    assert calls[2:] == [(functional_hash.DType.float32,)] * 2


def test_version_3_database_gains_kernel_checks(tmp_path):
    import sqlite3

    from tilefx.storage import database

    path = tmp_path / "old.db"
    old_database_with_workload(path, "kernel_checks", version=3)
    with database.TuningDatabase(path) as db:
        assert db.workload("w") == ("ir", "fh")  # kept, not moved aside
        db.set_kernel_check(KernelCheck("c", "t", "wrong_result", "b", "w", '{"a": 1}', "fp", "e"))
        assert db.kernel_check("c", "t").status == "wrong_result"
        assert db.failed_build("b", "t").error == "e" and db.bad_fingerprints("w", "t") == {"fp"}
        with pytest.raises(ValueError, match="kernel check status"):
            db.set_kernel_check(KernelCheck("c", "t", "maybe", "b"))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION


def test_a_right_kernel_whose_output_cancels_is_kept(fresh):
    """``x - 1.0001 * x`` keeps 4 of float32's 7 digits: the float32 reference is itself
    off by more than the tolerance there (and so would eager be). The float64 reference
    then decides, allowing float32 rounding's own error, and the kernel is kept."""
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(5))
    compiled = tilefx.compile(lambda t: t - t * 1.0001)
    torch.testing.assert_close(compiled(x), x - x * 1.0001, rtol=1e-3, atol=1e-7)
    (kernel,) = compiled.records[0].kernels
    assert kernel.backend == "tvm" and "rejected" not in compiled.report(), compiled.report()


def test_a_device_reference_keeps_body_constants_on_the_device():
    """On a GPU the check computes its reference there (the host took 48 s of a ResNet-50
    compile); an ``iota`` or ``const`` inside the body is made on the CPU and must follow
    the inputs, or the run mixes devices. ("meta" stands in for "cuda" on this machine.)"""
    from tilefx.ir import DType, TensorType
    from tilefx.ir.builder import kernel_op

    op = kernel_op("pointwise", [TensorType(DType.float16, (3, 5))], lambda b, x: b.op(
        "add", x, b.op("cast", b.op("iota", shape=(3, 5), axis=1, dtype=DType.int64), dtype=DType.float16)))
    inputs, want = functional_hash.check_reference(op, None, device="meta")
    assert inputs[0].device.type == "meta" and want[0].device.type == "meta"
    assert want[0].dtype == torch.float16 and tuple(want[0].shape) == (3, 5)
    cpu_inputs, cpu_want = functional_hash.check_reference(op, None)
    assert cpu_want[0].device.type == "cpu"
    torch.testing.assert_close(cpu_want[0].float(), cpu_inputs[0].float() + torch.arange(5.0), atol=1e-2, rtol=1e-3)
