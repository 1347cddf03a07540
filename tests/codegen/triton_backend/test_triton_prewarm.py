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
