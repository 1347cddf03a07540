"""The tuner on a cuda target: Triton candidates through the same Tuner, database,
fingerprint dedupe, functional-hash workload keys and correctness guard as on CPU.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` on CPU tensors on tiny
shapes (timed with ``perf_counter``, which every record says); the tests marked
``gpu`` run the same path compiled on a device and are skipped without CUDA.
"""

from __future__ import annotations

import os

# before anything imports Triton: its standard library is jitted for the interpreter only
# when TRITON_INTERPRET is set at import (as ``triton_testing`` does for the backend tests)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tilefx.codegen.triton import measure as measure_cuda  # noqa: E402
from tilefx.codegen.triton.measure import LIBRARY, CudaRunner, TritonBuilder  # noqa: E402
from tilefx.codegen.space import EXTERN, SearchSpace, is_extern  # noqa: E402
from tilefx.autotune.tuner import TuneOptions, Tuner, format_summary  # noqa: E402
from tilefx.codegen.schedule import Schedule  # noqa: E402
from tilefx.codegen.target import Target  # noqa: E402
from tilefx.ir import DType, TensorType  # noqa: E402
from tilefx.ir.builder import kernel_op  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _env(request, tmp_path, monkeypatch):
    """Interpreter unless the test is a GPU test; a fresh kernel cache dir per test."""
    gpu = request.node.get_closest_marker("gpu") is not None
    monkeypatch.setenv("TRITON_INTERPRET", "0" if gpu else "1")
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    yield


def _t(dtype: DType, *shape: int) -> TensorType:
    return TensorType(dtype, shape)


def _matmul(n: int = 16, dtype: DType = DType.float16, name: str = "mm"):
    return kernel_op("contraction", [_t(dtype, n, n), _t(dtype, n, n), _t(dtype, n)],
                     lambda b, x, w, c: b.op("relu", b.op("add", b.op("matmul", x, w), c)),
                     name=name)


def _tuner(tmp_path, trials: int, runner=None, builder=None, target=None, **kw) -> Tuner:
    opts = TuneOptions(trials=trials, batch=4, progress=False, seed=3, repeats=2,
                       db_path=str(tmp_path / "tuning.db"), **kw)
    return Tuner(target or Target.parse("cuda"), opts, builder=builder,
                 runner=runner or CudaRunner(repeats=2))


def test_triton_space_and_fingerprints():
    target = Target.parse("cuda")
    op = _matmul(16)
    space = SearchSpace.for_kernel(op, target)
    # the library impl is the extern candidate, not a knob value sampled over and over
    assert space.has_extern and space.values("impl") == ("triton",)
    assert "BLOCK_K" in space.names and "num_stages" in space.names
    fp = lambda s: measure_cuda.fingerprint(op, s, target)  # noqa: E731
    base = Schedule.of(impl="triton", BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=1,
                       num_warps=4, num_stages=2)
    # block sizes are clamped to the 16x16x16 problem before the source is hashed
    assert fp(base) == fp(base.with_(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8))
    # launch meta is part of the identity
    assert fp(base) != fp(base.with_(num_warps=8)) != fp(base.with_(num_stages=3))
    # code equal to the library candidate's is the extern candidate
    assert fp(EXTERN) == fp(LIBRARY) == measure_cuda.extern_fingerprint(target) != fp(base)
    # interpreter code never stands for compiled code
    interpreted = fp(base)
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        assert fp(base) != interpreted
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    # templates without a library impl have no extern candidate
    ln = kernel_op("reduction", [_t(DType.float32, 4, 32)] * 1 + [_t(DType.float32, 32)] * 2,
                   lambda b, x, w, c: b.op("layer_norm", x, w, c, normalized_ndim=1))
    assert not SearchSpace.for_kernel(ln, target).has_extern


def test_tune_records_dedupes_and_rejects_wrong_and_failing_candidates(tmp_path):
    op = _matmul(16)
    target = Target.parse("cuda")
    default = measure_cuda.default_schedule(op, target, None)
    faults: dict[Schedule, str] = {}

    def fault(schedule: Schedule) -> str | None:
        # the first three searched candidates: a miscompile, a crash at run, a failed build
        if schedule != default and not is_extern(schedule) and schedule not in faults \
                and len(faults) < 3:
            faults[schedule] = ("wrong", "raise", "build")[len(faults)]
        return faults.get(schedule)

    tuner = _tuner(tmp_path, trials=8, runner=CudaRunner(repeats=2, fault=fault),
                   builder=TritonBuilder(fault=fault), strategy="random")
    res = tuner.tune_kernel(op)
    assert res.trials == 8, res
    assert res.statuses.get("wrong_result") == 1 and res.statuses.get("run_error") == 1
    assert res.statuses.get("build_error") == 1 and res.statuses["ok"] == 5
    assert res.wrong_results == [str(s) for s, f in faults.items() if f == "wrong"]
    assert res.best is not None and res.best not in faults
    assert res.default_seconds and res.library_seconds  # both baselines measured first
    assert res.best_seconds <= min(res.default_seconds, res.library_seconds)
    # 16^3 clamps every block size: 12 distinct codes in a space of thousands of points
    assert res.dup_skipped >= 1
    records = tuner.db.records()
    first = {}
    for r in records:  # no code measured twice (re-measurements repeat the same schedule)
        assert first.setdefault(r.fingerprint, r.schedule) == r.schedule or \
            r.fingerprint == measure_cuda.extern_fingerprint(target)
    assert all(r.error == measure_cuda.INTERPRETER_NOTE for r in records if r.ok)
    assert {r.status for r in records} == {"ok", "wrong_result", "run_error", "build_error"}
    assert any(is_extern(r.schedule) for r in records)  # the library candidate is there
    table = format_summary([res])
    assert "| mm | contraction | 8 | " in table and "1 wrong results rejected" in table
    # the same computation under another name, fresh tuner: the database has it
    again = _tuner(tmp_path, trials=8)
    res2 = again.tune_kernel(_matmul(16, name="other"))
    assert res2.from_db and res2.trials == 0 and res2.best == res.best
    tuner.close()
    again.close()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.fc(x)))


def _built_schedule(op, schedule, target, bindings) -> str:
    """The schedule a kernel record shows when built with ``schedule`` (after clamping)."""
    from tilefx.codegen.triton.templates import emit_source

    source, used = emit_source(op, measure_cuda.resolve(schedule), target, bindings)
    return str(source.schedule or used)


def test_compile_for_cuda_with_tune_builds_the_best_schedules(tmp_path):
    import tilefx
    from tilefx.compiler.capture import capture
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import compile_graph
    from tilefx.compiler.session import CompileSession

    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(4, 32)
    options = CompileOptions(target="cuda", tune_trials=3, tune_db=str(tmp_path / "t.db"))
    with torch.no_grad():
        ref = model(x)
        # lazily built: every kernel is built with what the tuner chose
        compiled = compile_graph(capture(model, (x,)), options, CompileSession())
        torch.testing.assert_close(compiled(x)[0], ref, rtol=1e-4, atol=1e-4)
    record = compiled.record
    assert [t.kind for t in record.tuning] == ["contraction", "reduction"]
    target = Target.parse("cuda")
    ops = {op.attr("name"): op for op in compiled.graph.ops if op.name == "kernel"}
    tuning = {t.name: t for t in record.tuning}
    for kr in record.kernels:
        tuned = tuning[kr.name]
        assert tuned.best is not None and tuned.trials == 3
        assert kr.schedule == _built_schedule(ops[kr.name], tuned.best, target, None)
    # tilefx.compile(model, target="cuda", tune=N): the database already has every kernel
    cm = tilefx.compile(model, options=options)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), ref, rtol=1e-4, atol=1e-4)
    rec = cm.records[-1]
    assert all(t.from_db and t.trials == 0 for t in rec.tuning)
    assert rec.tuning_decision is not None
    if rec.tuning_decision.keep_tuned:
        assert [k.schedule for k in rec.kernels] == [k.schedule for k in record.kernels]


def test_tilefx_tune_cli_with_target_cuda(tmp_path, capsys):
    from tilefx.compiler.cli import main

    src = tmp_path / "net.py"
    src.write_text("import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
                   "net = nn.Sequential(nn.Linear(16, 16), nn.GELU()).eval()\n")
    db = tmp_path / "cli.db"
    assert main(["tune", f"{src}:net", "--input", "4x16", "--target", "cuda", "--trials", "2",
                 "--db", str(db), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "distinct kernels on cuda-" in out and "| contraction | 2 |" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_no_gpu_and_no_interpreter_is_an_error_not_failed_records(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    tuner = _tuner(tmp_path, trials=2)
    with pytest.raises(measure_cuda.NoDeviceError, match="TRITON_INTERPRET=1"):
        tuner.tune_kernel(_matmul(16))
    assert tuner.db.records() == []  # a later run on a GPU measures everything
    tuner.close()


# ------------------------------------------------------------------ on a GPU (the lead runs these)

@pytest.mark.gpu
@CUDA
def test_gpu_tuning_a_512_fp16_matmul_finds_one_as_fast_as_the_default(tmp_path):
    n = 512
    op = kernel_op("contraction", [_t(DType.float16, n, n)] * 2,
                   lambda b, x, w: b.op("matmul", x, w), name="mm512")
    tuner = _tuner(tmp_path, trials=12, runner=CudaRunner(repeats=20))
    res = tuner.tune_kernel(op)
    tuner.close()
    assert res.statuses.get("ok", 0) >= 8, res.statuses
    assert res.library_seconds is not None  # cuBLAS, the extern candidate
    assert res.default_seconds is not None and res.best_seconds <= res.default_seconds
    assert res.best_seconds < 1e-3  # GPU time (a 512^3 fp16 matmul takes ~10 us), not CPU time
    records = tuner.db.records()
    assert any(is_extern(r.schedule) and r.ok for r in records)
    assert all(r.error == "" for r in records if r.ok)  # CUDA events, no interpreter note
    assert all(len(r.samples) >= 20 for r in records if r.ok)


@pytest.mark.gpu
@CUDA
def test_gpu_compile_with_tune_matches_eager(tmp_path):
    import tilefx
    from tilefx.compiler.options import CompileOptions

    torch.manual_seed(0)
    model = _Net().eval().cuda().half()
    x = torch.randn(64, 32, device="cuda", dtype=torch.float16)
    cm = tilefx.compile(model, options=CompileOptions(target="cuda", tune_trials=4,
                                                      tune_db=str(tmp_path / "t.db")))
    with torch.no_grad():
        torch.testing.assert_close(cm(x).float(), model(x).float(), rtol=2e-2, atol=2e-2)
    rec = cm.records[-1]
    assert len(rec.tuning) == 2 and all(t.best is not None for t in rec.tuning), rec.report()


def test_fp32_contractions_are_checked_at_the_tf32_tolerance_torch_computes_them_at():
    conv = kernel_op("contraction", [_t(DType.float32, 1, 8, 8, 8), _t(DType.float32, 8, 8, 3, 3)],
                     lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1)), name="conv")
    mm = _matmul(dtype=DType.float32)
    # torch's flag modules proxy these attributes (monkeypatch cannot undo them): set and restore
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, True   # torch's defaults
        # cuDNN (the library candidate) computes fp32 convolutions in TF32, as eager PyTorch does
        assert measure_cuda.check_dtype(conv, DType.float32) == DType.float16
        assert measure_cuda.check_dtype(mm, DType.float32) == DType.float32
        cudnn.allow_tf32 = False
        assert measure_cuda.check_dtype(conv, DType.float32) == DType.float32
        matmul.allow_tf32 = True
        assert measure_cuda.check_dtype(mm, DType.float32) == DType.float16
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_a_hanging_candidate_is_stopped_and_tuning_goes_on(tmp_path):
    """The GPU tuner times candidates in a child process (``isolated.py``): a candidate that
    never returns is killed after ``timeout``, recorded as ``timeout``, the child restarted,
    and the rest are still checked and timed (here the child interprets, as CI has no GPU)."""
    from tilefx.codegen.triton.isolated import IsolatedCudaRunner

    op = _matmul(16)
    target = Target.parse("cuda")
    default = measure_cuda.default_schedule(op, target, None)
    faults: dict[Schedule, str] = {}

    def fault(schedule: Schedule) -> str | None:
        if schedule != default and not is_extern(schedule) and not faults:
            faults[schedule] = "hang"
        elif schedule != default and not is_extern(schedule) and len(faults) == 1 \
                and schedule not in faults:
            faults[schedule] = "wrong"
        return faults.get(schedule)

    runner = IsolatedCudaRunner(repeats=2, timeout=10.0, fault=fault)
    tuner = _tuner(tmp_path, trials=6, runner=runner, builder=TritonBuilder(launch=False),
                   strategy="random")
    try:
        res = tuner.tune_kernel(op)
    finally:
        tuner.close()
    assert res.statuses.get("timeout") == 1 and res.statuses.get("wrong_result") == 1, res.statuses
    assert res.statuses["ok"] == res.trials - 2 and runner.restarts == 1
    assert res.best is not None and res.best not in faults
    hung = [r for r in tuner.db.records() if r.status == "timeout"]
    assert len(hung) == 1 and "runner killed" in hung[0].error


def test_a_time_limit_is_kept_on_the_cuda_path(tmp_path):
    """``seconds=`` on a Triton kernel (interpreted here): the builder and the runner get the
    deadline, so the kernel ends within one measurement of it; what it cut is not recorded."""
    import time

    tuner = _tuner(tmp_path, trials=1_000_000)
    t0 = time.perf_counter()
    res = tuner.tune_kernel(_matmul(16, name="limited"), seconds=3.0)
    took = time.perf_counter() - t0
    worst_run = max(tuner.run_seconds)
    assert res.trials >= 2 and res.best is not None, format_summary([res])
    assert took <= 3.0 + worst_run + 0.5, (took, worst_run, res.cut)
    assert all(r.status != "out_of_time" for r in tuner.db.records())
    tuner.close()
