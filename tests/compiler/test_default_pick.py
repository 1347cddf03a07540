"""Untuned kernels can take the learned cost model's pick over the template's fixed default
(``cost_model/default_pick.py``): the pick stays in the default's implementation, is
deterministic, is checked like any build, and a rejected pick falls back to the fixed default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tilefx
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import SearchSpace
from tilefx.compiler import session as session_module
from tilefx.compiler.check import BuildChecker, CheckOutcome
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import model_kernels
from tilefx.compiler.session import CompileSession
from tilefx.cost_model.default_pick import candidates, predicted_best


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 130), nn.GELU(), nn.Linear(130, 37)).eval()


def test_candidates_keep_the_default_first_and_its_impl():
    space = SearchSpace.of({"impl": ["library", "triton"], "BLOCK": [16, 32, 64], "warps": [4, 8]})
    default = Schedule.of(impl="triton", BLOCK=32, warps=4)
    pool = candidates(space, default)
    assert pool[0] == default and len(pool) == 6  # the 6 triton points, the default once
    assert all(s["impl"] == "triton" for s in pool)
    sampled = candidates(space, default, sample=4, seed=3)
    assert sampled == candidates(space, default, sample=4, seed=3)  # seeded: the same pick
    assert sampled[0] == default and len(sampled) <= 5


def test_cpu_compile_with_cost_model_defaults_matches_eager(tmp_path):
    model, x = _mlp(), torch.randn(33, 96)
    options = CompileOptions(target="cpu", default_schedules="cost_model",
                             tune_db=str(tmp_path / "t.db"))
    compiled = tilefx.compile(model, options=options)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    record = compiled.records[-1]
    with CompileSession() as s:
        found = model_kernels(model, (x,), CompileOptions(target="cpu"), s)
    picks = {op.attr("name"): predicted_best(op, found.target, found.bindings) for op in found.kernels}
    assert any(p is not None for p in picks.values()), "the model picked nothing on any kernel"
    for kr in record.kernels:
        if picks.get(kr.name) is not None:
            assert kr.schedule == str(picks[kr.name])
        assert kr.check.name == "PASSED"


def test_a_rejected_pick_falls_back_to_the_fixed_default(tmp_path, monkeypatch):
    model, x = _mlp(), torch.randn(8, 96)
    picked: list[str] = []
    real_pick, real_check = predicted_best, BuildChecker.check

    def pick(op, target, bindings=None):
        s = real_pick(op, target, bindings)
        if s is not None:
            picked.append(str(s))
        return s

    def check(self, op, op_key, bindings, built, schedule):
        if schedule is not None and str(schedule) in picked:
            return CheckOutcome("rejected", "max abs err 9.9 (test)")
        return real_check(self, op, op_key, bindings, built, schedule)

    monkeypatch.setattr(session_module, "predicted_best", pick)
    monkeypatch.setattr(BuildChecker, "check", check)
    compiled = tilefx.compile(model, options=CompileOptions(
        target="cpu", default_schedules="cost_model", tune_db=str(tmp_path / "t.db")))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert picked, "no kernel got a cost-model pick to reject"
    kernels = compiled.records[-1].kernels
    assert all(kr.schedule not in picked for kr in kernels)
    assert all(kr.impl.name != "INTERPRETER" for kr in kernels)


def test_the_environment_chooses_and_a_typo_is_named(monkeypatch):
    from tilefx.settings import default_schedule_source

    monkeypatch.setenv("TILEFX_DEFAULT_SCHEDULE", "cost_model")
    assert default_schedule_source() == "cost_model"
    monkeypatch.setenv("TILEFX_DEFAULT_SCHEDULE", "costmodel")
    with pytest.raises(ValueError, match="TILEFX_DEFAULT_SCHEDULE"):
        default_schedule_source()
