"""The compile session: what lives longer than one kernel build, owned and passed explicitly.

A ``CompileSession`` holds

- the built kernels, by (kernel key, target, bindings, schedule): a model that
  repeats a block (a ResNet stage, a transformer layer) builds each distinct
  kernel once, and a new batch size of a dynamic model builds only what is new;
- the tuners (with their builder pools and runner processes), the build
  checkers (with their database handles and what they know of checks) and the
  stores of pass decisions.

``tilefx.compile`` makes one per compiled model (pass ``session=`` to share one
between models); the pipeline, the dynamo backend, the CLI verbs and the
artifact loader take one as an argument. ``release()`` stops the processes and
closes the database handles (the next use opens them again) and keeps what was
built; ``close()`` also forgets it. There is no module-level state to reset.

``KernelBuilder`` is what the runtime calls for each (kernel op, binding): it
chooses the schedule (tuned or default), builds through the target's backend,
checks the new kernel against the reference and records all of it in a
``KernelRecord``. A kernel that fails to build or its check runs in the
reference interpreter (``strict=True`` raises instead).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import sympy

from tilefx.autotune.budget import parse_tune
from tilefx.autotune.model_tune import tune_model
from tilefx.autotune.tuner import Tuner, TuneOptions, tune_or_default
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import is_extern
from tilefx.codegen.target import Target
from tilefx.compiler.check import BuildChecker, CheckMemory, CheckOutcome, checks_enabled
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.records import CheckStatus, CompileRecord, KernelImpl, KernelRecord
from tilefx.compiler.runtime import InterpretedKernel, KernelFn
from tilefx.cost_model.default_pick import predicted_best
from tilefx.ir.graph import Op
from tilefx.ir.identity import fused_op_names, kernel_key, kernel_symbols
from tilefx.settings import default_schedule_source
from tilefx.storage.decisions import DatabaseDecisionStore

log = logging.getLogger("tilefx.compiler")

BUILT_LIMIT = 1024
EARLY_START_CORES = 8  # start_tuner starts processes during the passes from this many cores


class WrongKernelError(RuntimeError):
    """A newly built kernel disagrees with the reference (raised under ``strict=True``)."""


@dataclass
class CompileSession:
    built: OrderedDict[tuple, Any] = field(default_factory=OrderedDict)
    checks: CheckMemory = field(default_factory=CheckMemory)
    _tuners: dict[tuple, Tuner] = field(default_factory=dict)
    _checkers: dict[tuple, BuildChecker] = field(default_factory=dict)
    _stores: dict[tuple, DatabaseDecisionStore] = field(default_factory=dict)

    def build(self, op: Op, target: Target, bindings: Mapping[sympy.Symbol, int],
              schedule: Schedule | None = None, *, op_key: str | None = None) -> Any:
        """``op`` built by ``target``'s backend (the library call for an extern schedule)."""
        used = kernel_symbols(op)
        bound = {s: v for s, v in bindings.items() if s in used}
        key = (op_key or kernel_key(op), target.key(),
               tuple(sorted((s.name, v) for s, v in bound.items())), str(schedule))
        built = self.built.get(key)
        if built is not None:
            self.built.move_to_end(key)
            return built
        backend = target.backend()
        if is_extern(schedule):  # tuning chose the library call: what was measured runs
            built = backend.build_library(op, bound)
        else:
            built = backend.build(op, schedule, bound)
        self.built[key] = built
        if len(self.built) > BUILT_LIMIT:
            self.built.popitem(last=False)
        return built

    def tuner(self, target: Target, options: CompileOptions) -> Tuner | None:
        """The tuner of ``options.tune_trials`` on ``target`` (None when not tuning)."""
        trials, seconds, model_seconds = parse_tune(options.tune_trials)
        if not trials and seconds is None and model_seconds is None:
            return None
        key = (str(options.tune_trials), str(options.tune_db), target.key(), options.cluster)
        tuner = self._tuners.get(key)
        if tuner is None:
            tuner = self._tuners[key] = Tuner(target, TuneOptions(
                trials=trials, seconds=seconds, model_seconds=model_seconds,
                db_path=options.tune_db, cluster=options.cluster))
        return tuner

    def start_tuner(self, target: Target, options: CompileOptions) -> None:
        """Under a model budget (``tune="60s"``), start the tuner's build and run processes
        now: each imports torch and TVM (seconds), which the budget would otherwise pay.
        Only with cores to spare: on 2 cores their imports slowed the passes down by more
        than they saved (4s of passes took 8-16s); there they start with the tuning."""
        if len(os.sched_getaffinity(0)) < EARLY_START_CORES:
            return
        tuner = self.tuner(target, options)
        if tuner is not None and tuner.options.model_seconds is not None:
            tuner.warm_up()

    def checker(self, target: Target, db_path: str | None) -> BuildChecker:
        key = (target.key(), str(db_path))
        checker = self._checkers.get(key)
        if checker is None:
            checker = self._checkers[key] = BuildChecker(target, db_path, self.checks)
        return checker

    def decision_store(self, db_path: str | None, target_key: str) -> DatabaseDecisionStore:
        """The store of pass decisions (sparse or dense) in the tuning database; it remembers
        what it read, so a second compile in this session does not ask the database again."""
        key = (str(db_path), target_key)
        if key not in self._stores:
            self._stores[key] = DatabaseDecisionStore(db_path, target_key)
        return self._stores[key]

    def release(self) -> None:
        """Stop the tuners' processes and close database handles; keep what was built."""
        while self._tuners:
            _, tuner = self._tuners.popitem()
            tuner.close()
        for checker in self._checkers.values():
            checker.close()
        _stop_compile_workers()

    def close(self) -> None:
        self.release()
        self.built.clear()
        self._stores.clear()

    def __enter__(self) -> CompileSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop_compile_workers() -> None:
    """Triton's parallel compile workers hold a CUDA context each: stopped with the builds.
    (Looked up, not imported: a CPU-only compile never started them.)"""
    prewarm = sys.modules.get("tilefx.codegen.triton.prewarm")
    if prewarm is not None:
        prewarm.shutdown()


class KernelBuilder:
    """The runtime's kernel builder for one compile: schedule, build, check, record."""

    def __init__(self, session: CompileSession, target: Target, options: CompileOptions,
                 record: CompileRecord, *, keep_source: bool = False) -> None:
        self.session, self.target, self.options, self.record = session, target, options, record
        self.keep_source = keep_source
        self.checker = session.checker(target, options.tune_db) \
            if checks_enabled(options.check_builds) else None

    def prepare(self, ops: Sequence[Op], bindings: Mapping[sympy.Symbol, int]) -> None:
        """Called with all of a binding's kernel ops before any is built: under a model
        budget (``tune="60s"``) they are tuned here, together, the budget shared by
        expected gain (``autotune/model_tune.py``); ``__call__`` then takes their results."""
        tuner = self.session.tuner(self.target, self.options)
        if tuner is None:
            if not self._picks_by_cost_model():  # the fixed defaults: compiled side by side now
                self._prebuild(ops, bindings)
            return
        if tuner.options.model_seconds is None:
            return
        t0 = time.perf_counter()
        self.record.tuning_budgets.append(tune_model(tuner, ops, bindings))
        self.record.add_time("tune", time.perf_counter() - t0)

    def _prebuild(self, ops: Sequence[Op], bindings: Mapping[sympy.Symbol, int]) -> None:
        """Each distinct kernel's default, compiled before the one-by-one builds and checks
        (Triton: in parallel processes, where the first launch of each check compiled one
        kernel at a time). Built through the session's cache, which ``_build`` then hits;
        the builds that follow report their own errors."""
        distinct: dict[str, Op] = {}
        for op in ops:
            distinct.setdefault(kernel_key(op), op)
        t0 = time.perf_counter()
        failed = self.target.backend().prebuild(
            [(op, bindings) for op in distinct.values()],
            lambda op, bound: self.session.build(op, self.target, bound, op_key=kernel_key(op)))
        if failed is None:  # the backend compiles as it builds (TVM's cache, the interpreter)
            return
        if failed:
            log.info("tilefx: %d kernels failed to compile ahead: %s", len(failed), ", ".join(failed))
        self.record.add_time("prebuild", time.perf_counter() - t0)

    def __call__(self, op: Op, bindings: Mapping[sympy.Symbol, int]) -> KernelFn:
        used = kernel_symbols(op)
        bound = {s: v for s, v in bindings.items() if s in used}
        kr = KernelRecord(op.attr("name"), op.attr("kind"), fused_op_names(op),
                          backend=self.target.backend().name,
                          bindings=", ".join(f"{s}={v}" for s, v in bound.items()))
        t0 = time.perf_counter()
        try:
            fn = self._build(op, bound, kr)
        except Exception as e:
            if self.options.strict:
                raise
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            log.warning("tilefx: kernel %s (%s) failed to build and will run in the "
                        "reference interpreter: %s", kr.name, "+".join(kr.fused_ops), msg)
            kr.impl, kr.error = KernelImpl.INTERPRETER, msg
            fn = InterpretedKernel(op, msg)
        kr.build_seconds = time.perf_counter() - t0
        self.record.kernels.append(kr)
        self.record.add_time("codegen", kr.build_seconds - kr.check_seconds)
        if kr.check_seconds:
            self.record.add_time("check", kr.check_seconds)
        return fn

    def _build(self, op: Op, bound: dict[sympy.Symbol, int], kr: KernelRecord) -> KernelFn:
        schedule = None
        tuner = self.session.tuner(self.target, self.options)
        if tuner is not None:  # autotune (or read the tuning database) first
            schedule, tuned = tune_or_default(tuner, op, bound)
            if tuned is not None and not any(t is tuned for t in self.record.tuning):
                self.record.tuning.append(tuned)  # a planned kernel's result: once per kernel
        picked = schedule is None and self._picks_by_cost_model()
        if picked:
            schedule = predicted_best(op, self.target, bound)
            picked = schedule is not None
        op_key = kernel_key(op)
        if self.checker is not None:  # found wrong before: not even built
            known = self.checker.known_bad(op_key, bound, schedule)
            if known is not None:
                if picked:  # the model's pick, not the user's: the fixed default instead
                    return self._build_default(op, bound, kr)
                return self._rejected(op, kr, known)
        built = self.session.build(op, self.target, bound, schedule, op_key=op_key)
        kr.impl = KernelImpl.LIBRARY if is_extern(schedule) else KernelImpl.GENERATED
        sched = getattr(built, "schedule", None)
        kr.schedule = str(sched) if sched is not None else ""
        kr.from_disk_cache = bool(getattr(built, "from_cache", False))
        if self.keep_source:
            kr.source = self.target.backend().source(built)
        if self.checker is None:
            return built
        t0 = time.perf_counter()
        outcome = self.checker.check(op, op_key, bound, built, schedule)
        kr.check_seconds = time.perf_counter() - t0
        kr.check = {"ok": CheckStatus.PASSED, "unchecked": CheckStatus.UNCHECKED,
                    "rejected": CheckStatus.REJECTED}[outcome.status]
        kr.check_note = outcome.note
        if outcome.rejected and picked:
            return self._build_default(op, bound, kr)
        return self._rejected(op, kr, outcome) if outcome.rejected else built

    def _picks_by_cost_model(self) -> bool:
        source = self.options.default_schedules or default_schedule_source()
        if source is None:
            return self.target.backend().default_from_cost_model
        return source == "cost_model"

    def _build_default(self, op: Op, bound: dict[sympy.Symbol, int], kr: KernelRecord) -> KernelFn:
        """The cost model's pick was found wrong: build the fixed default (checked too)."""
        log.warning("tilefx: kernel %s: the cost model's default schedule was rejected; using "
                    "the template's", kr.name)
        plain = KernelBuilder(self.session, self.target,
                              replace(self.options, tune_trials=0, default_schedules="template"),
                              self.record, keep_source=self.keep_source)
        return plain._build(op, bound, kr)

    def _rejected(self, op: Op, kr: KernelRecord, outcome: CheckOutcome) -> KernelFn:
        """A kernel that computed a wrong result: PyTorch runs its body instead."""
        if self.options.strict:
            raise WrongKernelError(f"kernel {kr.name} ({'+'.join(kr.fused_ops)}): {outcome.note}")
        log.warning("tilefx: kernel %s (%s) %s%s", kr.name, "+".join(kr.fused_ops), outcome.note,
                    f" (schedule {kr.schedule})" if kr.schedule else "")
        kr.impl, kr.error = KernelImpl.INTERPRETER, outcome.detail
        kr.check, kr.check_note = CheckStatus.REJECTED, outcome.note
        return InterpretedKernel(op, outcome.note)
