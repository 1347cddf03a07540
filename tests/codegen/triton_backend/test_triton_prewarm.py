"""Parallel compiles ahead of the builds (``codegen/triton/prewarm.py``): the worker pool
launches each generated module once and reports what failed; a dead worker only loses the
warm cache. Here under TRITON_INTERPRET=1 (the workers inherit it), so the plumbing is what
is tested: on a GPU the same launch is what fills Triton's compile cache."""

from triton_testing import f32, kernel_op

from tilefx.codegen.triton import build_kernel
from tilefx.codegen.triton.prewarm import PrewarmJob, job_for, prewarm, shutdown
from tilefx.codegen.schedule import Schedule


def test_prewarm_launches_each_module_once_and_reports_failures(tmp_path):
    op = kernel_op("contraction", [f32(5, 7), f32(7, 3)], lambda b, x, w: b.op("matmul", x, w))
    built = [build_kernel(op, None, Schedule.of(impl="triton", BLOCK_M=m, BLOCK_N=16, BLOCK_K=16))
             for m in (16, 32)]
    jobs = [job_for(k, op) for k in built]
    assert jobs[0].shapes == ((5, 7), (7, 3), (5, 3)) and jobs[0].dtypes == ("float32",) * 3
    bad = tmp_path / "bad_kernel.py"
    bad.write_text("def launch(*tensors):\n    raise ValueError('out of shared memory')\n")
    try:
        out = prewarm([*jobs, jobs[0], PrewarmJob(str(bad), ((2,),), ("float32",))], workers=2)
    finally:
        shutdown()
    assert out[built[0].path] == "" and out[built[1].path] == ""
    assert out[str(bad)] == "ValueError: out of shared memory"


def test_nothing_to_do_starts_no_workers():
    assert prewarm([], workers=4) == {}
    assert prewarm([PrewarmJob("x.py", (), ())], workers=0) == {}


def test_a_launch_that_never_returns_costs_the_pool_not_the_caller(tmp_path):
    slow = tmp_path / "hangs.py"
    slow.write_text("import time\n\ndef launch(*tensors):\n    time.sleep(60)\n")
    fine = tmp_path / "fine.py"
    fine.write_text("def launch(*tensors):\n    pass\n")
    try:
        out = prewarm([PrewarmJob(str(slow), (), ()), PrewarmJob(str(fine), (), ())], workers=2, timeout=8)
        assert out == {str(fine): ""}  # the hung one: no verdict, its caller compiles it
        fine2 = tmp_path / "fine2.py"
        fine2.write_text(fine.read_text())
        # the hung worker was killed with its pool: the next batch gets a fresh one at once
        again = prewarm([PrewarmJob(str(fine), (), ()), PrewarmJob(str(fine2), (), ())], workers=2, timeout=30)
        assert again == {str(fine): "", str(fine2): ""}
    finally:
        shutdown()


def test_a_compile_prebuilds_each_distinct_kernel_once_through_its_own_cache(monkeypatch):
    """On a GPU a compile hands every distinct default kernel to the pool before building and
    checking them one by one; the prebuild goes through the session's build cache, so each
    module is emitted once. (The GPU and the pool are stand-ins here.)"""
    import torch
    from torch import nn

    from tilefx.codegen.triton import backend as triton_backend
    from tilefx.codegen.triton import prewarm as prewarm_mod
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import compile_model
    from tilefx.compiler.session import CompileSession

    jobs, builds = [], []
    monkeypatch.setattr(triton_backend, "gpu_present", lambda: True)
    monkeypatch.setattr(prewarm_mod, "prewarm", lambda js, *a, **k: jobs.extend(js) or {})
    real_build = triton_backend.TritonBackend.build
    monkeypatch.setattr(triton_backend.TritonBackend, "build",
                        lambda self, op, *a, **k: builds.append(op.attr("name")) or real_build(self, op, *a, **k))
    # fp16: an fp32 matmul defaults to cuBLAS, which has nothing to compile
    model = nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 12), nn.GELU(), nn.Linear(12, 20),
                          nn.GELU()).half()
    x = torch.randn(3, 12).half()
    with CompileSession() as session:
        compiled = compile_model(model, [x], CompileOptions(target="cuda", cuda_graphs=False), session)
        (y,) = compiled(x)
        torch.testing.assert_close(y.float(), model(x).float(), atol=2e-2, rtol=2e-2)
    assert len(builds) == len(set(builds)) >= 2  # built once each: the checks hit the cache
    assert len(jobs) == len({j.path for j in jobs}) == len(builds)
    assert "prebuild" in compiled.record.seconds


def test_prewarm_built_maps_errors_back_to_every_key_of_a_file(monkeypatch):
    """What the compile's prebuild and the tuner's batches share: builds that raise are left
    to the caller, the library needs no compile, keys whose code is one file share its verdict."""
    from types import SimpleNamespace

    from tilefx.codegen.triton import prewarm as prewarm_mod

    seen = []
    monkeypatch.setattr(prewarm_mod, "prewarm", lambda jobs, **k: seen.extend(jobs) or {
        "/a.py": "CompilationError: out of resources", "/b.py": ""})
    monkeypatch.setattr(prewarm_mod, "job_for", lambda built, op, b: built.path)

    def built(path, impl="triton"):
        return lambda: SimpleNamespace(path=path, schedule={"impl": impl})

    def boom():
        raise RuntimeError("emit failed")

    errors = prewarm_mod.prewarm_built([("s1", built("/a.py"), None, None), ("s2", built("/a.py"), None, None),
                                        ("s3", built("/b.py"), None, None), ("lib", built("/l.py", "library"), None, None),
                                        ("bad", boom, None, None)])
    assert errors == {"s1": "CompilationError: out of resources", "s2": "CompilationError: out of resources"}
    assert sorted(seen) == ["/a.py", "/a.py", "/b.py"]


def test_a_deadline_leaves_slow_compiles_running_and_keeps_the_pool(tmp_path):
    """A tuning round's deadline: what is still compiling then is STILL_COMPILING (the tuner
    leaves it unmeasured) and finishes in the pool, which serves the next batch; one job is
    compiled here too (without a deadline it would compile where it runs)."""
    import time

    from tilefx.codegen.triton import prewarm as prewarm_mod
    from tilefx.codegen.triton.prewarm import STILL_COMPILING

    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef launch(*tensors):\n    time.sleep(4)\n")
    fine = tmp_path / "fine.py"
    fine.write_text("def launch(*tensors):\n    pass\n")
    try:
        prewarm([PrewarmJob(str(fine), (), ()), PrewarmJob(str(tmp_path / "x.py"), (), ())],
                workers=2)  # the workers' start (imports) is not what is timed here
        pool = prewarm_mod._POOLS[2]
        t0 = time.perf_counter()
        out = prewarm([PrewarmJob(str(slow), (), ()), PrewarmJob(str(fine), (), ())], workers=2,
                      timeout=60, deadline=time.perf_counter() + 1.5)
        assert time.perf_counter() - t0 < 3.0
        assert out == {str(slow): STILL_COMPILING, str(fine): ""}
        assert prewarm_mod._POOLS[2] is pool  # kept: a slow compile is not a hang
        assert prewarm([PrewarmJob(str(fine), (), ())], workers=2,
                       deadline=time.perf_counter() + 30) == {str(fine): ""}
        assert prewarm([PrewarmJob(str(fine), (), ())], workers=2) == {}  # no deadline: one job
    finally:                                                                # compiles where it runs
        shutdown()
