"""Tuning a whole model within one time budget (``tune="60s"``): estimate, plan, tune in order.

    report = tune_model(tuner, kernel_ops, bindings)  # budget: tuner.options.model_seconds
    print(report.line())

1. The model's kernel ops are grouped by computation (kernel key and the sizes
   it uses): one distinct kernel per group, run ``uses`` times per model call.
2. Each is estimated without building anything (``estimate_kernel``): its
   default schedule's time, and the gain the same model predicts for the best
   of a seeded sample of its space (``budget.clip_gain``). The model is the
   learned latency model (x86) when predicting for every kernel fits in
   ``ESTIMATE_SHARE`` of the budget (it lowers each schedule: ~20 ms), else
   the analytical one (~0.1 ms); the choice depends only on the kernel count
   and the budget, so the plan stays deterministic.
3. ``budget.plan_budget`` gives each a share, the plan is logged (``echo``).
4. Kernels the plan skips (negligible, nothing to choose) only read the
   database: a best schedule found earlier is still used. The others are tuned
   one by one, largest expected saving first; before each, ``budget.allocate``
   shares what is left of the budget among those not yet tuned, at the cost per
   candidate measured so far, so unused time flows to the rest. A search stops
   at its share, when it converged (``budget.PATIENCE``) or when its space is
   exhausted.

Each result is kept in ``tuner.planned``, where ``tuner.tune_or_default`` finds
it when the compiler builds the kernel. The estimate, the plan and every
kernel's turn count against the budget; the compiler's building, checking and
whole-graph decision after it do not (they are the same work as for ``tune=N``).
Ctrl-C keeps what was measured (the tuner's own handling) and stops the rest.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tilefx.autotune.budget import (PATIENCE, BudgetReport, KernelEstimate, Spent, allocate,
                                    clip_gain, format_plan, plan_budget, select)
from tilefx.autotune.tuner import KernelTuneResult, Tuner, planned_key
from tilefx.cost_model.advisor import latency_model
from tilefx.cost_model.analytical import AnalyticalModel
from tilefx.ir.identity import kernel_symbols

log = logging.getLogger("tilefx.autotune")

LATENCY_SAMPLE = 4      # schedules past the default the latency model predicts per kernel
LATENCY_COST = 0.02     # seconds it takes per schedule (features lower the TVM code)
LATENCY_START = 2.0     # and once: loading it, importing xgboost and TVM's lowering
ESTIMATE_SHARE = 0.05   # of the budget: the latency model is used when it fits in this
ANALYTICAL_SAMPLE = 48  # the analytical model is cheap: ~0.1 ms a schedule
CANDIDATE_SECONDS = 0.5  # first guess of one candidate's build + measurement, until measured


@dataclass(frozen=True)
class DistinctKernel:
    key: tuple               # tuner.planned_key
    op: Any                  # the first of its kernel ops
    bindings: dict           # the sizes it uses
    uses: int


def distinct_kernels(kernel_ops: Sequence[Any], bindings: Mapping[Any, int] | None
                     ) -> list[DistinctKernel]:
    """The kernels of ``kernel_ops`` with equal computations merged, in first-seen order."""
    groups: dict[tuple, list[Any]] = {}
    for op in kernel_ops:
        groups.setdefault(planned_key(op, bindings), []).append(op)
    out = []
    for key, ops in groups.items():
        used = kernel_symbols(ops[0])
        bound = {s: v for s, v in (bindings or {}).items() if s in used}
        out.append(DistinctKernel(key, ops[0], bound, len(ops)))
    return out


def _key_text(key: tuple) -> str:
    return f"{key[0]}{key[1]}"


def _sample(space: Any, default: Any, n: int) -> list[Any]:
    """The default, then ``n`` distinct seeded samples of ``space`` (all of a small one)."""
    if space.size <= n:
        pool = list(space.enumerate())
    else:
        rng = random.Random(0)
        pool = [space.sample(rng) for _ in range(2 * n)]
    out, seen = [default], {str(default)}
    for s in pool:
        if str(s) not in seen and len(out) <= n:
            seen.add(str(s))
            out.append(s)
    return out


def _predict_seconds(model: Any, kernel: DistinctKernel, schedules: list[Any], target: Any
                     ) -> list[float]:
    if model is not None:  # the regression model predicts -log2(seconds)
        scores = model.with_bindings(kernel.bindings).predict(kernel.op, schedules, target)
        return [2.0 ** -float(s) for s in scores]
    scores = AnalyticalModel(kernel.bindings).predict(kernel.op, schedules, target)
    return [1.0 / max(float(s), 1e-12) for s in scores]


def estimate_kernel(kernel: DistinctKernel, target: Any, latency: Any = None) -> KernelEstimate:
    """The allocator's view of ``kernel``: default time, predicted gain, space, library."""
    backend = target.backend()
    name = kernel.op.attr("name") or "kernel"
    space = backend.space(kernel.op, kernel.bindings)
    default = backend.default_schedule(kernel.op, kernel.bindings)
    seconds, gain = 1e-6, 0.0  # when no model can read it: a small kernel, the minimum gain
    for model in ([latency] if latency is not None else []) + [None]:
        n = ANALYTICAL_SAMPLE if model is None else LATENCY_SAMPLE
        try:
            predicted = _predict_seconds(model, kernel, _sample(space, default, n), target)
        except Exception as e:  # noqa: BLE001 - a kernel a model cannot read: the next model
            log.debug("budget: %s not estimated by %s: %s", name, model or "analytical", e)
            continue
        if predicted and math.isfinite(predicted[0]) and predicted[0] > 0:
            seconds, gain = predicted[0], 1.0 - min(predicted) / predicted[0]
            break
    return KernelEstimate(_key_text(kernel.key), name, seconds, kernel.uses,
                          clip_gain(gain, space=space.size, library=space.has_extern),
                          space.size, space.has_extern)


def tune_model(tuner: Tuner, kernel_ops: Sequence[Any], bindings: Mapping[Any, int] | None,
               *, budget: float | None = None,
               echo: Callable[[str], None] | None = None) -> BudgetReport:
    """Tune ``kernel_ops`` (every kernel op of a model at ``bindings``) within ``budget``
    seconds (default: the tuner's ``model_seconds``); see the module docstring."""
    t0 = time.perf_counter()
    budget = tuner.options.model_seconds if budget is None else budget
    if budget is None:
        raise ValueError("tune_model needs a budget: TuneOptions(model_seconds=...) or budget=")
    kernels = {_key_text(k.key): k for k in distinct_kernels(kernel_ops, bindings)}
    tuner.warm_up()  # if the compiler has not yet: its processes start while we estimate
    fits = LATENCY_START + len(kernels) * (1 + LATENCY_SAMPLE) * LATENCY_COST \
        <= ESTIMATE_SHARE * budget
    latency = latency_model(tuner.target) if fits else None
    estimates = [estimate_kernel(k, tuner.target, latency) for k in kernels.values()]
    end = t0 + budget
    plan = plan_budget(estimates, max(0.0, end - time.perf_counter()), CANDIDATE_SECONDS)
    (echo or log.info)(format_plan(plan))
    report = BudgetReport(plan, budget, estimate_seconds=time.perf_counter() - t0)
    pending, skipped = select(estimates)
    for share in skipped:  # the database may know a best schedule: use it, measure nothing
        _turn(tuner, kernels[share.estimate.key], report, share.estimate, 0.0, share.skipped)
    cost, costs = CANDIDATE_SECONDS, []
    while pending:
        if tuner.interrupted:
            for e in pending:
                report.spent[e.key] = Spent(e.key, skipped="stopped", saving=e.saving)
            report.interrupted = True
            break
        head = allocate(pending, max(0.0, end - time.perf_counter()), cost)[0][0]
        e = head.estimate
        pending.remove(e)
        res = _turn(tuner, kernels[e.key], report, e, head.seconds, head.skipped,
                    cost if costs else None)
        if res is not None and res.candidate_seconds:
            costs.append(res.candidate_seconds)
            cost = sum(costs) / len(costs)
    report.seconds = time.perf_counter() - t0
    report.interrupted = report.interrupted or tuner.interrupted
    log.info("tilefx tune: %s", report.line())
    return report


def _turn(tuner: Tuner, kernel: DistinctKernel, report: BudgetReport, e: KernelEstimate,
          seconds: float, skipped: str, cost: float | None = None) -> KernelTuneResult | None:
    """One kernel's turn: tuned for ``seconds``, or (``skipped``) a database look-up;
    ``cost``: seconds per candidate measured on the kernels before it."""
    try:
        res = tuner.tune_kernel(kernel.op, kernel.bindings, seconds=0.0 if skipped else seconds,
                                patience=PATIENCE, cost_hint=cost)
    except Exception as err:  # noqa: BLE001 - tuning never fails a compile: default schedule
        log.warning("tilefx tune: could not tune kernel %s (%s: %s); it uses its default "
                    "schedule", e.name, type(err).__name__, err)
        report.spent[e.key] = Spent(e.key, skipped=f"failed: {type(err).__name__}",
                                    saving=e.saving)
        return None
    res.budget = report.spent[e.key] = Spent(e.key, 0.0 if skipped else seconds, res.seconds,
                                             skipped, e.saving, res.rematch_seconds, res.cut)
    tuner.planned[kernel.key] = res
    return res
