"""A time budget for the whole model (``tune="60s"``): the allocator's pure functions
(``autotune/budget.py``), the driver with a stub tuner (``autotune/model_tune.py``), and
``tilefx.compile(model, tune="8s")`` end to end on CPU."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch

from tilefx.autotune import model_tune
from tilefx.autotune.budget import (FLOOR_CANDIDATES, BudgetPlan, KernelEstimate, Spent, allocate,
                                    clip_gain, converged, format_plan, plan_budget)
from tilefx.autotune.tuner import KernelTuneResult, TuneOptions, format_summary, parse_tune


def est(key: str, ms: float, gain: float = 0.2, *, uses: int = 1, space: int = 1000,
        library: bool = False) -> KernelEstimate:
    return KernelEstimate(key, key, ms * 1e-3, uses, gain, space, library)


def shares(plan_or_list) -> dict[str, float]:
    items = plan_or_list.shares if isinstance(plan_or_list, BudgetPlan) else plan_or_list
    return {s.estimate.key: s.seconds for s in items if not s.skipped}


# ------------------------------------------------------------------------ the allocator

def test_shares_are_proportional_to_expected_saving_and_add_up_to_the_budget():
    ks = [est("a", 6.0), est("b", 3.0), est("c", 1.0)]
    plan = plan_budget(ks, 100.0, candidate_seconds=0.1)
    got = shares(plan)
    assert sum(got.values()) == pytest.approx(100.0)
    assert got == pytest.approx({"a": 60.0, "b": 30.0, "c": 10.0}, rel=1e-6)
    assert [s.estimate.key for s in plan.tuned] == ["a", "b", "c"]  # largest saving first
    # uses count: a kernel run 3 times per model call weighs 3 times
    got = shares(plan_budget([est("a", 1.0, uses=3), est("b", 1.0)], 40.0, 0.1))
    assert got == pytest.approx({"a": 30.0, "b": 10.0}, rel=1e-6)


def test_every_tuned_kernel_gets_at_least_its_floor():
    c = 0.5
    big, small = est("big", 100.0), est("small", 2.0, gain=0.05)
    got = shares(plan_budget([big, small], 10.0, c))
    floor = (1 + FLOOR_CANDIDATES) * c
    assert got["small"] == pytest.approx(floor)  # proportional would be ~0.05s
    assert got["big"] == pytest.approx(10.0 - floor)
    # a library candidate is one more baseline in the floor
    lib = est("lib", 2.0, gain=0.05, library=True)
    assert shares(plan_budget([big, lib], 10.0, c))["lib"] == pytest.approx(floor + c)


def test_negligible_and_choiceless_kernels_are_skipped_with_the_reason():
    ks = [est("conv", 99.0), est("relu", 0.5), est("fixed", 20.0, gain=clip_gain(0.5, space=1,
                                                                              library=False))]
    plan = plan_budget(ks, 30.0, 0.5)
    assert list(shares(plan)) == ["conv"]
    reasons = {s.estimate.key: s.skipped for s in plan.skipped}
    assert reasons["relu"] == "0.4% of model time"
    assert reasons["fixed"] == "nothing to choose"
    assert shares(plan)["conv"] == pytest.approx(30.0)


def test_gain_is_clipped_and_a_library_raises_it():
    assert clip_gain(0.0, space=10, library=False) == pytest.approx(0.05)  # the model may be wrong
    assert clip_gain(5.0, space=10, library=False) == pytest.approx(0.8)
    assert clip_gain(0.0, space=10, library=True) == pytest.approx(0.15)
    assert clip_gain(float("nan"), space=10, library=False) == pytest.approx(0.05)
    assert clip_gain(0.9, space=1, library=False) == 0.0
    assert clip_gain(0.0, space=1, library=True) == pytest.approx(0.15)


def test_a_small_space_is_capped_and_its_time_goes_to_the_others():
    tiny = est("tiny", 50.0, space=4)  # measuring all of it takes 4 candidates
    ks = [tiny, est("b", 50.0)]
    got = shares(plan_budget(ks, 40.0, 1.0))
    assert got["tiny"] == pytest.approx(4.0) and got["b"] == pytest.approx(36.0)
    # every kernel at its cap: the rest is reported as unallocated
    plan = plan_budget([tiny], 40.0, 1.0)
    assert shares(plan)["tiny"] == pytest.approx(4.0) and plan.unallocated == pytest.approx(36.0)


def test_leftover_time_flows_to_the_kernels_not_yet_tuned():
    ks = [est("a", 5.0), est("b", 3.0), est("c", 2.0)]
    first = shares(plan_budget(ks, 50.0, 0.1))
    assert first["a"] == pytest.approx(25.0)
    # "a" converged after 5s of its 25: the other two share the 45s left, in proportion
    again = shares(allocate([ks[1], ks[2]], 45.0, 0.1)[0])
    assert again["b"] == pytest.approx(27.0) and again["c"] == pytest.approx(18.0)
    assert again["b"] / again["c"] == pytest.approx(first["b"] / first["c"])
    # and one that ran over takes from them
    less = shares(allocate([ks[1], ks[2]], 10.0, 0.1)[0])
    assert sum(less.values()) == pytest.approx(10.0)


def test_the_plan_is_deterministic():
    ks = [est(f"k{i}", ms=1.0 + (i % 5), gain=0.1 + 0.01 * (i % 3), library=bool(i % 2))
          for i in range(30)]
    a = plan_budget(ks, 60.0, 0.5)
    shuffled = list(ks)
    random.Random(3).shuffle(shuffled)
    b = plan_budget(shuffled, 60.0, 0.5)
    assert a == b
    ties = [est("x", 1.0), est("y", 1.0), est("w", 1.0)]  # equal savings: by key
    assert [s.estimate.key for s in plan_budget(ties, 30.0, 0.1).tuned] == ["w", "x", "y"]


def test_a_budget_too_small_for_all_tunes_the_biggest_gains_first_and_says_which_are_skipped():
    c = 1.0  # floors: 3s each ((1 + 2) candidates), 4s with a library
    ks = [est("a", 10.0), est("b", 8.0, library=True), est("c", 4.0), est("d", 1.0)]
    plan = plan_budget(ks, 8.0, c)
    assert [s.estimate.key for s in plan.tuned] == ["a", "b"]
    assert {s.estimate.key: s.skipped for s in plan.skipped} == {
        "c": "budget: needs 3.0s", "d": "budget: needs 3.0s"}
    assert sum(shares(plan).values()) == pytest.approx(8.0)
    # not even one floor: the biggest gets all there is, the rest are skipped
    plan = plan_budget(ks, 1.5, c)
    assert shares(plan) == {"a": pytest.approx(1.5)}
    assert len(plan.skipped) == 3
    assert "skipped: budget" in format_plan(plan)
    assert shares(plan_budget(ks, 0.5, c)) == {}  # not even its default: nothing is tuned


def test_converged():
    assert not converged([1.0] * 10, patience=24)
    assert converged([2.0] + [1.0] * 25, patience=24)
    assert not converged([2.0] * 20 + [1.0] * 6, patience=24)  # improved in the window
    assert converged([1.0] * 20 + [0.995] * 6, patience=24)     # by less than 1%
    assert not converged([float("inf")] * 30, patience=24)


def test_rounds_fit_the_time_left():
    from tilefx.autotune.budget import round_size

    soon = 5.0  # seconds left
    assert round_size(8, None, [], baselines=2) == 8  # no time limit
    assert round_size(8, soon, [], baselines=2) == 0  # the baselines alone, to learn the cost
    assert round_size(8, soon, [], baselines=0) == 1
    assert round_size(8, soon, [2.0], baselines=0) == 2  # ~5s left at 2s a candidate
    assert round_size(8, soon, [2.0], baselines=0, reserve=2.0) == 1  # the library re-match
    # a first round slowed by loading the workload: the other kernels' cost is the better guess
    assert round_size(8, soon, [4.0], baselines=0, hint=0.5) == 8
    assert round_size(8, soon, [4.0, 2.0], baselines=0, hint=0.5) == 2
    assert round_size(8, -1.0, [1.0], baselines=0) == 0  # time is up
    # a round costs at least a compile: with 5 s left and rounds of 6 s seen, none starts,
    # though the mean cost per candidate (1 s) would fit five candidates
    assert round_size(8, soon, [1.0, 1.0], baselines=0, walls=[9.0, 6.0]) == 0
    assert round_size(8, soon, [1.0, 1.0], baselines=0, walls=[9.0, 3.0]) == 5
    # the first round's wall (it loads the workload) is no floor
    assert round_size(8, soon, [1.0], baselines=0, walls=[9.0]) == 5


def test_parse_tune():
    assert parse_tune(8) == (8, None, None)
    assert parse_tune("60s") == (1_000_000, None, 60.0)
    assert parse_tune("2m") == (1_000_000, None, 120.0)
    assert parse_tune("30s/kernel") == (1_000_000, 30.0, None)
    assert parse_tune(0) == (0, None, None)
    with pytest.raises(ValueError, match="for the whole model"):
        parse_tune("soon")


def test_summary_has_a_budget_column():
    r = KernelTuneResult("conv", "contraction", "w", trials=3, seconds=2.0,
                         budget=Spent("conv", given=2.5, used=2.0, saving=1e-3))
    s = KernelTuneResult("relu", "pointwise", "w2", budget=Spent("relu", skipped="0.2% of model time"))
    table = format_summary([r, s])
    assert "| budget |" in table
    assert "2.0/2.5s (exp. -1.000 ms)" in table and "skipped: 0.2% of model time" in table
    assert "budget" not in format_summary([KernelTuneResult("k", "pointwise", "w")]).splitlines()[0]


def test_cli_budget_flag_is_checked_before_anything_is_captured(tmp_path, capsys):
    from tilefx.compiler.cli import main

    src = tmp_path / "m.py"
    src.write_text("import torch\ndef f(x):\n    return torch.relu(x)\n")
    assert main(["tune", f"{src}:f", "--input", "4x16", "--budget", "soon"]) == 2
    assert "--budget 'soon': give a time" in capsys.readouterr().err
    assert main(["tune", f"{src}:f", "--input", "4x16", "--budget", "5"]) == 2  # not trials
    assert main(["tune", f"{src}:f", "--input", "4x16", "--budget", "5s", "--time", "5s"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -------------------------------------------------- the driver, with a stub tuner

def _three_kernel_ops():
    from tilefx.ir import DType, TensorType
    from tilefx.ir.builder import kernel_op

    def f32(*shape):
        return TensorType(DType.float32, shape)

    mm = kernel_op("contraction", [f32(128, 256), f32(256, 256)],
                   lambda b, x, w: b.op("matmul", x, w), name="mm")
    mm_again = kernel_op("contraction", [f32(128, 256), f32(256, 256)],
                         lambda b, x, w: b.op("matmul", x, w), name="mm_again")
    small = kernel_op("contraction", [f32(64, 128), f32(128, 128)],
                      lambda b, x, w: b.op("matmul", x, w), name="small")
    relu = kernel_op("pointwise", [f32(4, 8)], lambda b, x: b.op("relu", x), name="relu")
    return [mm, small, mm_again, relu]


class StubTuner:
    """Records each kernel's time limit and uses ``use[name]`` seconds of it."""

    def __init__(self, budget: float, use: dict[str, float]) -> None:
        from tilefx.codegen.target import Target

        self.target = Target.host_cpu()
        self.options = TuneOptions(trials=1_000_000, model_seconds=budget)
        self.interrupted = False
        self.planned: dict = {}
        self.use, self.calls = use, []

    def warm_up(self) -> None:
        pass

    def tune_kernel(self, op, bindings=None, *, seconds=None, patience=0, cost_hint=None):
        name = op.attr("name")
        self.calls.append((name, seconds))
        spent = min(seconds, self.use.get(name, seconds)) if seconds else 0.0
        time.sleep(spent)
        trials = int(spent / 0.05)
        return KernelTuneResult(name, op.attr("kind"), name, trials=trials, seconds=spent,
                                candidate_seconds=0.05 if trials else None)


def test_tune_model_tunes_in_order_of_gain_once_per_computation_and_passes_leftovers_on(
        monkeypatch):
    monkeypatch.setattr(model_tune, "CANDIDATE_SECONDS", 0.05)
    ops = _three_kernel_ops()
    tuner = StubTuner(1.0, use={"mm": 0.1})  # the big matmul converges early
    for k in model_tune.distinct_kernels(ops, {}):  # imports TVM (a compile has by now)
        model_tune.estimate_kernel(k, tuner.target)
    lines: list[str] = []
    t0 = time.perf_counter()
    report = model_tune.tune_model(tuner, ops, {}, echo=lines.append)
    took = time.perf_counter() - t0
    calls = dict(tuner.calls)
    assert "mm_again" not in calls and calls["relu"] == 0.0  # equal computation: tuned once
    assert [n for n, s in tuner.calls if s] == ["mm", "small"]  # biggest expected gain first
    assert next(s for s in report.plan.shares if s.estimate.name == "mm").estimate.uses == 2
    planned_small = next(s.seconds for s in report.plan.tuned if s.estimate.name == "small")
    assert calls["small"] > planned_small + 0.3  # what mm left unused went to the next one
    assert took < 1.0 + 0.3
    assert "relu" in report.line() and "of model time" in report.line()
    assert lines and "tuning plan" in lines[0]
    assert len(tuner.planned) == 3  # every distinct kernel has a result for the compiler


# ----------------------------------------------------------------- end to end on CPU

class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)
        self.norm = torch.nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


BUDGET = 8.0
# past the budget: the last round of the last kernel (one candidate's build and run, its
# re-timing against the library) and the database look-ups of skipped kernels
TOLERANCE = 3.0


def test_compile_with_a_model_budget_stays_within_it(tmp_path, monkeypatch):
    """``tune="8s"``: the tuning of all kernels fits in 8s (+ TOLERANCE), more than one
    kernel is tuned, the compiled model matches eager. The runner's processes start before
    the clock runs, as on a machine with cores to spare (``CompileSession.start_tuner``):
    on a loaded 2-core one their imports of torch and TVM alone take 5-15s. Builds run in
    process (no pool to start)."""
    import tilefx
    from tilefx.codegen.measure import LocalBuilder, LocalRunner
    from tilefx.codegen.tvm.backend import TVMBackend

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TVM_BIND_THREADS", os.environ.get("TVM_BIND_THREADS", "0"))
    runner = LocalRunner(timeout=20.0, repeats=3, min_repeat_seconds=0.001)
    runner.warm_up()
    monkeypatch.setattr(TVMBackend, "tuning_pair",
                        lambda self, **kw: (LocalBuilder(workers=0), runner))
    torch.manual_seed(0)
    model, x = _MLP().eval(), torch.randn(32, 64)
    cm = tilefx.compile(model, tune=f"{BUDGET:g}s")
    y = cm(x)  # compiles: the runner's children import while the model is captured
    torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-4)
    (rec,) = cm.records
    (report,) = rec.tuning_budgets
    assert report.seconds <= BUDGET + TOLERANCE, rec.report()
    assert rec.seconds["tune"] == pytest.approx(report.seconds, abs=0.5)
    tuned = [t for t in rec.tuning if t.trials > 0]
    assert len(tuned) > 1, rec.report()
    assert "| budget |" in rec.report() and "budget 8.0s for the model" in rec.report()
