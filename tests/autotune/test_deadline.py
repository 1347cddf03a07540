"""A kernel's time limit is kept through compiles that take seconds (a GPU's): the builder
and the runner stop at the tuner's deadline (``OUT_OF_TIME``: neither measured nor
recorded), no round starts in less time than a round of its kind takes, and the library
re-match after a search is kept time for. Seen on an H200 before: a ResNet-50 tuned with
``tune="60s"`` used 68.6 s."""

from __future__ import annotations

import random
import time

from tilefx.autotune import model_tune
from tilefx.autotune.tuner import Tuner, TuneOptions
from tilefx.codegen.measure import (OUT_OF_TIME, BuildResult, LocalBuilder, MeasureResult,
                                    RunsInOrder, Workload)
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import is_extern
from tilefx.codegen.target import Target
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op

TARGET = Target.host_cpu()
# seconds a round's compile takes, however many candidates (side by side): as on a GPU, some
# rounds are quick (their code was compiled before, for another kernel), most are not
COMPILES = (0.15, 1.5, 2.0)
RUN = 0.1       # seconds one candidate's measurement takes


def f32(*shape):
    return TensorType(DType.float32, shape)


class GpuLikeBuilder:
    """Compiles a round's new candidates side by side in one of COMPILES seconds, as the Triton
    builder's process pool does (one built before is in the cache); what the deadline cuts
    is OUT_OF_TIME. ``rounds`` counts the calls."""

    def __init__(self) -> None:
        self.rounds, self.built, self.rng = 0, set(), random.Random(1)

    def build(self, workload, schedules, deadline=None):
        self.rounds += 1
        todo = [s for s in schedules if not is_extern(s) and (workload.key, s) not in self.built]
        ready_at = time.perf_counter() + (self.rng.choice(COMPILES) if todo else 0.0)
        if deadline is not None and deadline < ready_at:
            time.sleep(max(0.0, deadline - time.perf_counter()))
            return [BuildResult(s, OUT_OF_TIME) if s in todo else BuildResult(s, "ok", "built")
                    for s in schedules]
        time.sleep(max(0.0, ready_at - time.perf_counter()))
        self.built.update((workload.key, s) for s in todo)
        return [BuildResult(s, "ok", "built") for s in schedules]

    def close(self):
        pass


class GpuLikeRunner(RunsInOrder):
    def __init__(self) -> None:
        self.rng = random.Random(0)

    def close(self):
        pass

    def _run_one(self, workload, b):
        time.sleep(RUN)
        t = 1e-3 * (0.5 + self.rng.random())
        return MeasureResult(b.schedule, "ok", (t, t, t), "", 0.0, RUN)


def _ops():
    """Three matmuls of different shapes: three distinct kernels to share the budget."""
    sizes = {"mm": (128, 256, 256), "mm2": (64, 512, 128), "mm3": (96, 128, 384)}
    return [kernel_op("contraction", [f32(m, k), f32(k, n)],
                      lambda b, x, w: b.op("matmul", x, w), name=name)
            for name, (m, k, n) in sizes.items()]


def test_a_model_budget_holds_when_each_round_costs_a_compile(tmp_path, monkeypatch):
    monkeypatch.setattr(model_tune, "CANDIDATE_SECONDS", 0.25)  # the first guess: three fit
    budget = 8.0
    builder = GpuLikeBuilder()
    tuner = Tuner(TARGET, TuneOptions(trials=1_000_000, model_seconds=budget, progress=False,
                                      db_path=str(tmp_path / "t.db")),
                  builder=builder, runner=GpuLikeRunner())
    ops = _ops()
    for k in model_tune.distinct_kernels(ops, {}):  # TVM's import is not what is timed here
        model_tune.estimate_kernel(k, TARGET)
    report = model_tune.tune_model(tuner, ops, {}, budget=budget, echo=lambda _: None)
    tuned = [r for r in tuner.results if r.trials]
    # past the budget: at most one measurement that started before the deadline
    assert report.seconds <= budget + 0.4, report.line()
    assert len(tuned) >= 2 and all(r.best is not None for r in tuned), report.line()
    assert any(r.trials > 2 for r in tuned), report.line()  # searched past the baselines
    assert "library re-matches" in report.line() and "cut at a deadline" in report.line()
    records = tuner.db.records()
    assert records and all(r.status == "ok" for r in records)  # nothing cut was recorded
    tuner.close()


def test_the_runner_starts_nothing_past_the_deadline():
    s1, s2 = Schedule.of(a=1), Schedule.of(a=2)
    seen = []
    runner = GpuLikeRunner()
    builds = [BuildResult(s1, "ok", "built"), BuildResult(s2, "ok", "built")]
    out = runner.run(None, builds, on_result=seen.append, deadline=time.perf_counter() + RUN / 2)
    assert [r.status for r in out] == ["ok", OUT_OF_TIME] and [r.schedule for r in seen] == [s1]
    cut = runner.run(None, [BuildResult(s1, OUT_OF_TIME)], on_result=seen.append)
    assert [r.status for r in cut] == [OUT_OF_TIME] and len(seen) == 1  # a build the builder cut


def test_the_local_builder_leaves_what_the_deadline_cuts():
    op = kernel_op("pointwise", [f32(4, 8)], lambda b, x: b.op("relu", x), name="relu")
    workload = Workload(op, TARGET, (), "w")
    out = LocalBuilder(workers=0).build(workload, [Schedule.of(vec=1)],
                                        deadline=time.perf_counter() - 1)
    assert [b.status for b in out] == [OUT_OF_TIME]


def test_a_round_is_never_shorter_than_a_typical_round_of_its_kind():
    from tilefx.autotune.budget import round_size

    soon = 5.0  # seconds left
    # rounds of 0.5 s (compiled before) and of 7 s: the median, not the quickest, is the floor
    assert round_size(8, soon, [1.0, 1.0], baselines=0, walls=[1.0, 0.5, 7.0, 7.5]) == 0
    assert round_size(8, soon, [1.0, 1.0], baselines=0, walls=[1.0, 0.5, 0.6, 7.5]) == 5
    assert round_size(8, soon, [0.5, 0.5], baselines=0, reserve=2.0) == 6  # 3 s: the re-match's


class LibraryAt(GpuLikeRunner):
    """Every schedule at 1 ms; the library (extern) candidate at ``factor`` ms."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def _run_one(self, workload, b):
        t = 1e-3 * (self.factor if is_extern(b.schedule) else 1.0)
        return MeasureResult(b.schedule, "ok", (t, t, t), "", 0.0, 0.01)


def test_under_a_time_limit_only_a_close_call_is_rematched(tmp_path):
    """The re-match measures the library and the best schedule again (drift between their first
    measurements could decide the choice): under a time limit only when they are within
    ``DECISIVE`` of each other; with a trial count always, as before."""
    from tilefx.autotune.tuner import DECISIVE

    op = _ops()[0]
    # every schedule at 1 ms: with patience the search stops after two, leaving the time
    for factor, seconds, rematched in ((3.0, 20.0, False), (1.1, 20.0, True), (3.0, None, True)):
        tuner = Tuner(TARGET, TuneOptions(trials=4 if seconds is None else 1_000_000,
                                          seconds=seconds, progress=False,
                                          db_path=str(tmp_path / f"{factor}-{seconds}.db")),
                      builder=GpuLikeBuilder(), runner=LibraryAt(factor))
        res = tuner.tune_kernel(op, patience=2)
        extern = [r for r in tuner.db.records(res.workload_key) if is_extern(r.schedule)]
        assert len(extern) == (3 if rematched else 1), (factor, seconds, len(extern))  # 1 + 2 rounds
        assert (res.rematch_seconds > 0) == rematched
        tuner.close()
    assert 1.1 < DECISIVE < 3.0
