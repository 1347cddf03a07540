"""The tuning loop: search one kernel's schedules, measure, remember.

    tuner = Tuner(Target.host_cpu(), TuneOptions(trials=32))
    result = tuner.tune_kernel(kernel_op, bindings)   # KernelTuneResult
    print(format_summary([result]))
    tuner.close()

For each kernel: its workload key (functional hash + shapes) names its rows
in the ``TuningDatabase``, so equal computations in other kernels or models
share them. The default schedule and, for contractions, the extern library
candidate are measured first (the baselines of the summary), then the
search strategy proposes batches. Every proposal is fingerprinted before
anything is built: code already measured in this run or found in the
database is skipped (counted, with the wall time that saved). New
candidates are built in the builder pool, measured in the isolated runner,
checked against the reference outputs, and each measurement is committed to
the database at once. So:

- a warm database means no measuring at all: a workload that already has as
  many candidates as asked (or any result, for a time budget) uses
  ``db.best`` straight away;
- Ctrl-C stops the loop cleanly; what was measured is kept, and a rerun
  resumes (measured fingerprints are skipped, the search starts from them);
- a failing candidate (build error, crash, hang, wrong result) is recorded
  and the search goes on; a wrong result is logged with its schedule;
- a schedule whose built kernel failed the compile's check (marked bad in the
  database's ``kernel_checks``) is never measured, seeded from or chosen.

Under a time limit (``seconds``: per kernel, or the share of a model budget that
``model_tune.tune_model`` gives each kernel, ``budget.py``) the first round
measures the baselines alone, and each later round only as many candidates as
the time left fits at the cost per candidate seen so far; no round starts in
less time than a round of the same kind of kernel has taken; the builder and
the runner get the deadline (what is still compiling then, or not started, is
left unmeasured); the library re-match after the search is kept time for, or
left out, and runs only for a close call (within ``DECISIVE``). So a kernel
ends at its limit, not a compile past it. With ``patience`` a search whose best
has not improved by 1% over that many candidates stops early (its time goes back
to the model's budget).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from tilefx import settings
from tilefx.autotune.budget import Spent, converged, ranking_pool, round_size
from tilefx.autotune.budget import parse_budget, parse_tune  # noqa: F401 (parse_tune: callers import it here)
from tilefx.autotune.search import make_strategy
from tilefx.codegen.measure import (EXTERN_ARTIFACT, OUT_OF_TIME, BuildResult, LocalBuilder,
                                    LocalRunner, MeasureResult, Workload)
from tilefx.codegen.space import EXTERN, SearchSpace, is_extern
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.cost_model import default_model  # learned: local, else shipped
from tilefx.cost_model.analytical import AnalyticalModel
from tilefx.ir.identity import kernel_key, kernel_symbols
from tilefx.ir.printer import print_graph
from tilefx.storage.database import TuningDatabase

log = logging.getLogger("tilefx.autotune")

# Under a time limit, the library re-match runs only when the search's best and the library
# are within this factor, a choice drift could flip: the re-match of ResNet-50's 22 tuned
# kernels took 13 s of its 60 s budget on an H200 (bf16), time the searches can use.
DECISIVE = 1.5


@dataclass
class TuneOptions:
    trials: int = 32                   # new candidates measured per kernel
    seconds: float | None = None       # or a time budget per kernel
    model_seconds: float | None = None  # or one for the whole model (model_tune.py)
    strategy: str = "evolutionary"     # evolutionary | random | grid
    batch: int = 8                     # candidates proposed (and built in parallel) per round
    workers: int = field(default_factory=settings.tune_workers)
    # builder processes; 0 builds in this process ($TILEFX_TUNE_WORKERS sets the default)
    timeout: float = 30.0              # per candidate run
    repeats: int = 10
    min_repeat_seconds: float = 0.005
    seed: int = 0
    progress: bool = True
    db_path: str | None = None         # None: $TILEFX_CACHE_DIR/tuning.db
    # None: build and measure on this machine; "ray": a local Ray (attached or started);
    # else a Ray address: builds and measurements run there (autotune/cluster.py)
    cluster: str | None = None

    @staticmethod
    def from_tune(tune: int | str, **kw: Any) -> TuneOptions:
        trials, seconds = parse_budget(tune)
        return TuneOptions(trials=trials, seconds=seconds, **kw)


@dataclass
class KernelTuneResult:
    name: str
    kind: str
    workload_key: str
    best: Schedule | None = None
    best_seconds: float | None = None
    default_seconds: float | None = None
    library_seconds: float | None = None
    trials: int = 0                    # candidates measured in this run
    dup_skipped: int = 0               # proposals whose code was already measured
    bad_skipped: int = 0               # proposals whose built kernel failed the compile's check
    saved_seconds: float = 0.0         # estimated build+run time the skipping saved
    statuses: dict[str, int] = field(default_factory=dict)
    wrong_results: list[str] = field(default_factory=list)
    history: list[float] = field(default_factory=list)  # best seconds after each trial
    from_db: bool = False              # nothing measured: the database had it
    interrupted: bool = False
    seconds: float = 0.0               # wall time of tuning this kernel
    budget: Spent | None = None        # its part of a model budget (model_tune.py)
    # seconds one candidate cost (propose, build, measure) in the rounds after the baselines'
    candidate_seconds: float | None = None
    rematch_seconds: float = 0.0       # of ``seconds``: the library re-match after the search
    cut: int = 0                       # candidates the time limit left unmeasured

    @property
    def speedup(self) -> float | None:
        if self.best_seconds and self.default_seconds:
            return self.default_seconds / self.best_seconds
        return None


@dataclass(frozen=True)
class _Known:
    """A measurement from the database, in the shape strategies' ``update`` reads."""

    schedule: Schedule
    seconds: float | None


class Tuner:
    """Tunes kernels one after the other, sharing a builder pool, a runner and a database."""

    def __init__(self, target: Any = None, options: TuneOptions | None = None, *,
                 db: Any = None, builder: LocalBuilder | None = None,
                 runner: LocalRunner | None = None, model: Any = None) -> None:
        self.target = target or Target.host_cpu()
        self.options = options or TuneOptions()
        self._own_db = db is None
        if db is None:
            db = TuningDatabase(self.options.db_path)
        self.db = db
        self.backend = self.target.backend()
        if builder is None or runner is None:
            if self.options.cluster:  # Ray tasks running the backend's own builder/runner
                from tilefx.autotune.cluster import ray_tuning_pair

                made_builder, made_runner = ray_tuning_pair(self.target, self.options)
            else:
                made_builder, made_runner = self.backend.tuning_pair(
                    workers=self.options.workers, timeout=self.options.timeout,
                    repeats=self.options.repeats,
                    min_repeat_seconds=self.options.min_repeat_seconds)
            builder, runner = builder or made_builder, runner or made_runner
        self.builder, self.runner = builder, runner
        self.model = model
        self.results: list[KernelTuneResult] = []
        self.interrupted = False
        self.measurements = 0          # candidates measured by this tuner, all kernels
        # wall seconds of rounds past a kernel's first, by kernel kind: a kernel's first
        # rounds go by its kind's (a round costs about one compile however few it holds)
        self.round_walls: dict[str, list[float]] = {}
        self.rematch_walls: list[float] = []  # each library re-match's wall seconds
        self.run_seconds: list[float] = []    # each measurement's (the runner's share)
        # model budget: each kernel's result by planned_key(), from model_tune.tune_model
        self.planned: dict[tuple, KernelTuneResult] = {}

    # ------------------------------------------------------------------ one kernel

    def tune_kernel(self, kernel_op: Any, bindings: Mapping[Any, int] | None = None, *,
                    seconds: float | None = None, patience: int = 0,
                    cost_hint: float | None = None) -> KernelTuneResult:
        """Tune one kernel: ``options.trials`` new candidates, or until ``seconds`` (default
        ``options.seconds``) have passed; ``patience``: stop once converged (budget.py);
        ``cost_hint``: seconds per candidate seen on other kernels, which sizes the rounds
        until this one has its own (its first round loads the workload: it says little)."""
        t_start = time.perf_counter()
        opts, tkey = self.options, self.target.key()
        limit = opts.seconds if seconds is None else seconds
        if limit is None and opts.model_seconds is not None:  # never more than the model's
            limit = opts.model_seconds
        names = {(getattr(k, "name", k)): int(v) for k, v in (bindings or {}).items()}
        bindings = names or None
        wkey = self._workload_key(kernel_op, bindings)
        self.db.add_target(tkey, self.target.to_json())  # the cost model rebuilds Targets from it
        res = KernelTuneResult(kernel_op.attr("name") or "kernel", kernel_op.attr("kind"), wkey)
        workload = Workload(kernel_op, self.target, tuple(sorted(names.items())), wkey)
        past = self.db.records(wkey, tkey)
        bad = self.db.bad_fingerprints(wkey, tkey)  # computed wrong in a compiled model
        past = [r for r in past if r.fingerprint not in bad]
        seen = {r.fingerprint for r in past}
        done_before = len(seen)
        if self.interrupted:  # Ctrl-C earlier in this run: no more measuring
            res.interrupted = True
            return self._finish(res, kernel_op, bindings, t_start)
        state = self.db.tuning_state(wkey, tkey)  # a finished search is not resumed
        finished = state is not None and (state[1] or state[0] >= opts.trials)
        if past and (done_before >= opts.trials or finished or
                     (limit is not None and self.db.best(wkey, tkey))):
            res.from_db = True
            return self._finish(res, kernel_op, bindings, t_start)
        if limit is not None and limit <= 0:  # a look-up: the database's best, or nothing
            return self._finish(res, kernel_op, bindings, t_start)

        space = self.backend.space(kernel_op, bindings)
        strategy = self._strategy(space, kernel_op, bindings, seconds)
        strategy.update([_Known(r.schedule, r.median if r.ok else None) for r in past])
        default = self.backend.default_schedule(kernel_op, bindings)
        first = [default] + ([EXTERN] if space.has_extern else [])
        strategy.exclude(first)
        ranked = sorted((r for r in past if r.ok and r.median), key=lambda r: r.median)
        strategy.seed([default] + [r.schedule for r in ranked[:4] if not is_extern(r.schedule)])
        goal = max(0, opts.trials - done_before)
        deadline = None if limit is None else t_start + limit
        cost_per_candidate: list[float] = []  # build + run: what skipping a duplicate saves
        round_cost: list[float] = []  # per candidate, with proposing and fingerprinting
        round_walls: list[float] = []  # each round's wall time: a typical one is the floor
        bar = _progress(res.name if seconds is None else f"{res.name} [{seconds:.1f}s]",
                        goal if limit is None else None, opts.progress)
        idle_rounds, exhausted = 0, False
        try:
            while res.trials < goal and (deadline is None or time.perf_counter() < deadline):
                t_round = time.perf_counter()
                if patience and converged(res.history, patience):
                    break
                kind_walls = self.round_walls.get(res.kind or "", [])
                # the re-match follows a search: the baselines' round keeps nothing for it
                reserve = self._rematch_reserve() if space.has_extern and round_walls else 0.0
                left = None if deadline is None else deadline - time.perf_counter()
                want = round_size(min(opts.batch, goal - res.trials), left, round_cost,
                                   baselines=len(first), hint=cost_hint, reserve=reserve,
                                   walls=round_walls if len(round_walls) > 1
                                   else [0.0, *kind_walls])
                if want == 0 and not first:  # not even one more candidate fits the time left
                    break
                proposals = first + (strategy.propose(want) if want else [])
                first = []
                if not proposals:
                    exhausted = True
                    break
                new: list[tuple[Schedule, str]] = []
                for s in proposals:
                    fp = self.backend.fingerprint(kernel_op, s, bindings)
                    if fp in bad:  # never measured again, nor a parent of new proposals
                        res.bad_skipped += 1
                        strategy.update([_Known(s, None)])
                        continue
                    if fp in seen:
                        res.dup_skipped += 1
                        known = self.db.lookup_fingerprint(wkey, tkey, fp)
                        strategy.update([_Known(s, known.median if known and known.ok else None)])
                        continue
                    seen.add(fp)
                    new.append((s, fp))
                idle_rounds = 0 if new else idle_rounds + 1
                if idle_rounds > 50:  # only code already measured comes up
                    exhausted = True
                    break
                new = new[:max(1, goal - res.trials)] if goal else []
                if not new:
                    continue
                t0 = time.perf_counter()
                measured: list[MeasureResult] = []
                cut: set[str] = set()
                try:
                    cut = self._measure(workload, new, functools.partial(
                        self._on_result, res, bar, measured),
                        None if deadline is None else deadline - reserve)
                    seen.difference_update(cut)  # not measured: a later run may try them
                    res.cut += len(cut)
                finally:
                    cost_per_candidate.append((time.perf_counter() - t0) / max(1, len(measured)))
                    strategy.update(measured)
                    round_walls.append(time.perf_counter() - t_round)
                    if not cut:  # a cut round's cost per candidate is not known, only its floor
                        round_cost.append(round_walls[-1] / max(1, len(measured)))
                    if len(round_walls) > 1:
                        self.round_walls.setdefault(res.kind or "", []).append(round_walls[-1])
            if space.has_extern and res.trials and (
                    deadline is None or deadline - time.perf_counter()
                    >= self._rematch_reserve()):
                t_rematch = time.perf_counter()
                # under a time limit only a close call is re-matched: its time is the search's
                if self._rematch(workload, bad, decisive=None if deadline is None else DECISIVE):
                    res.rematch_seconds = time.perf_counter() - t_rematch
                    self.rematch_walls.append(res.rematch_seconds)
            self.db.set_tuning_state(wkey, tkey, opts.trials if limit is None else
                                     done_before + res.trials, exhausted)
        except KeyboardInterrupt:
            log.warning("tilefx tune: interrupted while tuning %s; keeping the %d measurements "
                        "made (a rerun resumes)", res.name, res.trials)
            res.interrupted = self.interrupted = True
            self.runner.close()  # the child may be mid-measurement: start afresh next time
        finally:
            if bar is not None:
                bar.close()
        if cost_per_candidate:
            res.saved_seconds = res.dup_skipped * sum(cost_per_candidate) / len(cost_per_candidate)
        if len(round_cost) > 1:  # the first round also loads the workload (or starts the
            # runner's processes): left out, and no estimate from it alone
            res.candidate_seconds = sum(round_cost[1:]) / (len(round_cost) - 1)
        return self._finish(res, kernel_op, bindings, t_start)

    def _workload_key(self, kernel_op: Any, bindings: Mapping[str, int] | None) -> str:
        """The kernel's workload key, remembered in the database by the hash of its IR.

        The functional hash runs the kernel's reference (seconds for a large conv);
        a warm recompile finds the key by the IR text instead.
        """
        # looked up per call: tests monkeypatch functional_hash and workload_key
        from tilefx.ir.functional_hash import HASH_VERSION, functional_hash, workload_key

        text = print_graph(kernel_op.body)
        unnamed = text.split("(", 1)[-1]  # "graph @conv2d_3(...": the name changes nothing
        h = hashlib.sha256(f"{HASH_VERSION}|{kernel_op.attr('kind')}|"
                           f"{sorted((bindings or {}).items())}|{unnamed}".encode())
        for name, array in sorted(kernel_op.body.constants.items()):  # printed by name only
            h.update(name.encode() + np.ascontiguousarray(np.asarray(array)).tobytes())
        ir_hash = h.hexdigest()
        key = self.db.known_workload_key(ir_hash)
        if key is None:
            key = workload_key(kernel_op, bindings)
            self.db.add_workload(key, text, functional_hash(kernel_op, bindings))
            self.db.remember_workload_key(ir_hash, key)
        return key

    def _strategy(self, space: SearchSpace, kernel_op: Any, bindings: Any,
                  share: float | None = None) -> Any:
        """The search; with a model budget's ``share`` of seconds a learned model ranks a
        pool sized to it, or the analytical model ranks when none fits (``budget.ranking_pool``):
        its features are not free."""
        model, pool = self.model, 512
        if model is None and self.options.strategy == "evolutionary":
            fits = 512 if share is None else ranking_pool(share)
            if fits:
                model = default_model(self.target, bindings)
                pool = fits if model is not None else pool
        if model is None and self.options.strategy == "evolutionary":
            model = AnalyticalModel(bindings)
        return make_strategy(self.options.strategy, space, kernel=kernel_op, target=self.target,
                             model=model, seed=self.options.seed, pool=pool)

    def _rematch(self, workload: Workload, bad: set[str], rounds: int = 2,
                 decisive: float | None = None) -> bool:
        """Measure the library candidate and the best TVM schedule again, in turns; whether
        it did.

        The library was measured first and the best TVM candidate maybe minutes
        later; on a machine whose load drifts that decides the choice, not the
        code. Re-running both back to back (``rounds`` times each, stored as
        extra measurements; ``db.best`` takes each candidate's best median)
        makes the drift hit both alike. With ``decisive``, two medians that far apart
        (a factor) are left as they are: drift does not flip that choice.
        """
        tkey = self.target.key()
        records = [r for r in self.db.records(workload.key, tkey)
                   if r.ok and r.median and r.fingerprint not in bad]
        tvm = min((r for r in records if not is_extern(r.schedule)), key=lambda r: r.median,
                  default=None)
        lib = self.db.lookup_fingerprint(workload.key, tkey, self.backend.extern_fingerprint())
        if tvm is None or lib is None or lib.fingerprint in bad:
            return False
        if decisive is not None and lib.median and \
                max(tvm.median, lib.median) > decisive * min(tvm.median, lib.median):
            return False
        build = self.builder.build(workload, [tvm.schedule])[0]  # in the kernel cache by now
        if build.status != "ok":
            return False
        pair = [(build, tvm.fingerprint), (BuildResult(EXTERN, "ok", EXTERN_ARTIFACT),
                                           lib.fingerprint)]
        for i in range(rounds):
            for build, fp in (pair if i % 2 == 0 else pair[::-1]):
                r = self.runner.run(workload, [build])[0]
                if r.status == "ok":
                    cid = self.db.add_candidate(workload.key, tkey, r.schedule.to_json(), fp)
                    self._store(cid, r)
        return True

    def _rematch_reserve(self) -> float:
        """Seconds to keep for the library re-match after a search: as long as the last ones
        took, else its four runs (nothing to compile) at a typical run's time so far (the lower
        median: a kernel's first run also loads its workload)."""
        if self.rematch_walls:
            return max(self.rematch_walls[-3:])
        runs = sorted(self.run_seconds[-16:])
        return 4 * runs[(len(runs) - 1) // 2] if runs else 0.0

    def _measure(self, workload: Workload, new: list[tuple[Schedule, str]],
                 on_result: Callable[[MeasureResult], None],
                 deadline: float | None = None) -> set[str]:
        """Build ``new`` in the pool, then run each; every result is committed at once.
        Returns the fingerprints the ``deadline`` left unmeasured."""
        fps = dict(new)
        until = {} if deadline is None else {"deadline": deadline}
        builds = self.builder.build(workload, [s for s, _ in new], **until)
        cut: set[str] = set()

        def commit(r: MeasureResult) -> None:
            cid = self.db.add_candidate(workload.key, self.target.key(), r.schedule.to_json(),
                                        fps[r.schedule])
            self._store(cid, r)
            self.measurements += 1
            on_result(r)

        for r in self.runner.run(workload, builds, on_result=commit, **until):
            if r.status == OUT_OF_TIME:
                cut.add(fps[r.schedule])
        return cut

    def _store(self, cid: int, r: MeasureResult) -> None:
        """One measurement, and any the runner made of the same candidate with it (a cluster
        runner's re-timing on a second node: ``also``), each written once."""
        for m in (r, *getattr(r, "also", ())):
            self.db.add_measurement(cid, list(m.samples), m.status, m.error)

    def _on_result(self, res: KernelTuneResult, bar: Any, measured: list[MeasureResult],
                   r: MeasureResult) -> None:
        measured.append(r)
        self.run_seconds.append(r.run_seconds)
        self._record(res, r)
        if bar is not None:
            bar.update(1)
            best = res.history[-1]
            text = (f"best {best * 1e3:.3f} ms, dup {res.dup_skipped}"
                    if best < float("inf") else f"dup {res.dup_skipped}")
            note = getattr(self.runner, "progress_note", None)  # a cluster: nodes, tasks
            if note is not None:
                failed = sum(n for s, n in res.statuses.items() if s != "ok")
                text += f", {note()}, failed {failed}"
            bar.set_postfix_str(text)

    def _record(self, res: KernelTuneResult, r: MeasureResult) -> None:
        res.trials += 1
        res.statuses[r.status] = res.statuses.get(r.status, 0) + 1
        if r.status == "wrong_result":
            log.warning("tilefx tune: kernel %s: schedule %s computes a wrong result (%s); "
                        "rejected", res.name, r.schedule, r.error)
            res.wrong_results.append(str(r.schedule))
        elif r.status != "ok":
            log.info("tilefx tune: kernel %s: %s %s: %s", res.name, r.status, r.schedule, r.error)
        log.debug("tilefx tune: kernel %s: %s %s (build %.2fs, run %.2fs)", res.name, r.status,
                  r.schedule, r.build_seconds, r.run_seconds)
        prev = res.history[-1] if res.history else float("inf")
        t = r.seconds
        res.history.append(min(prev, t) if t is not None else prev)

    def _finish(self, res: KernelTuneResult, kernel_op: Any, bindings: Any,
                t_start: float) -> KernelTuneResult:
        tkey = self.target.key()
        best = self.db.best(res.workload_key, tkey)
        if best is not None:  # else nothing measured correctly: no baseline to look up either
            res.best, res.best_seconds = best.schedule, best.median
            self._baselines(res, kernel_op, bindings)
        res.seconds = time.perf_counter() - t_start
        self.results.append(res)
        return res

    def _baselines(self, res: KernelTuneResult, kernel_op: Any, bindings: Any) -> None:
        """The default schedule's and the library's times, for the summary."""
        tkey = self.target.key()
        default = self.backend.default_schedule(kernel_op, bindings)
        try:  # by schedule first: lowering for a fingerprint is the slow way
            rec = self.db.lookup_schedule(res.workload_key, tkey, default.to_json()) or \
                self.db.lookup_fingerprint(res.workload_key, tkey,
                                           self.backend.fingerprint(kernel_op, default, bindings))
            res.default_seconds = rec.median if rec is not None and rec.ok else None
        except Exception as e:  # noqa: BLE001 - only the summary needs it
            log.debug("no default fingerprint for %s: %s", res.name, e)
        rec = self.db.lookup_fingerprint(res.workload_key, tkey, self.backend.extern_fingerprint())
        res.library_seconds = rec.median if rec is not None and rec.ok else None

    def time_summary(self) -> str:
        """Where the tuning time went (build, queue, measure, driver) when the runner can
        tell (a cluster), in one line; "" otherwise."""
        summary = getattr(self.runner, "time_summary", None)
        return summary(sum(r.seconds for r in self.results)) if summary is not None else ""

    def warm_up(self) -> None:
        """Start the builder's and runner's processes now, where they can (each imports torch
        and TVM: seconds), so a time-limited run does not wait for them."""
        for part in (self.builder, self.runner):
            start = getattr(part, "warm_up", None)
            if start is not None:
                start()

    def close(self) -> None:
        line = self.time_summary()
        if line:
            log.info("tilefx tune: %s", line)
        self.builder.close()
        self.runner.close()
        if self._own_db:
            self.db.close()


def _progress(name: str, total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None

    return tqdm(total=total, desc=f"tune {name}", unit="cand", leave=True)


# ------------------------------------------------------------------------ summary

def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.3f}" if seconds else "-"


def format_summary(results: list[KernelTuneResult]) -> str:
    """A markdown table: kernel, trials, dup skipped, default/best/library ms, speedup; under
    a model budget also each kernel's budget (seconds used / given, expected gain)."""
    budgeted = any(r.budget is not None for r in results)
    rows = ["| kernel | kind | trials | dup skipped | failed | default ms | best ms | speedup "
            "| library ms | best schedule |" + (" budget |" if budgeted else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---|" if budgeted else "")]
    for r in results:
        failed = sum(n for s, n in r.statuses.items() if s != "ok")
        sp = f"{r.speedup:.2f}x" if r.speedup else "-"
        trials = f"{r.trials}" + (" (db)" if r.from_db else "") + (" (stopped)" if r.interrupted else "")
        sched = "extern torch" if is_extern(r.best) else (str(r.best) if r.best else "-")
        rows.append(f"| {r.name} | {r.kind} | {trials} | {r.dup_skipped} | {failed} | "
                    f"{_ms(r.default_seconds)} | {_ms(r.best_seconds)} | {sp} | "
                    f"{_ms(r.library_seconds)} | {sched} |"
                    + (f" {r.budget.cell() if r.budget else '-'} |" if budgeted else ""))
    dups = sum(r.dup_skipped for r in results)
    saved = sum(r.saved_seconds for r in results)
    wrong = sum(len(r.wrong_results) for r in results)
    rows.append(f"\n{sum(r.trials for r in results)} candidates measured, {dups} duplicates "
                f"skipped (~{saved:.1f}s saved), {wrong} wrong results rejected")
    return "\n".join(rows)


# ------------------------------------------------------- the compiler's entry point

def planned_key(kernel_op: Any, bindings: Mapping[Any, int] | None) -> tuple:
    """A kernel at a binding, as ``Tuner.planned`` knows it: equal computations, one key."""
    used = {getattr(s, "name", str(s)) for s in kernel_symbols(kernel_op)}
    sizes = {getattr(s, "name", str(s)): int(v) for s, v in (bindings or {}).items()}
    return kernel_key(kernel_op), tuple(sorted((k, v) for k, v in sizes.items() if k in used))


def tune_or_default(tuner: Tuner, kernel_op: Any, bindings: Mapping[Any, int] | None
                    ) -> tuple[Schedule | None, KernelTuneResult | None]:
    """The schedule to build ``kernel_op`` with: tuned (or read from the database) by
    ``tuner``; (None, ...) when nothing measured correctly or tuning failed (the default
    schedule is then used: tuning is an optimization and never fails a compile).

    Under a model budget the kernel was tuned with the others (``model_tune.tune_model``,
    before the binding's kernels are built): its result is taken from there. One that no
    plan covered only reads the database (a zero time limit)."""
    planned = tuner.planned.get(planned_key(kernel_op, bindings)) \
        if tuner.options.model_seconds is not None else None
    if planned is not None:
        return planned.best, planned
    try:
        result = tuner.tune_kernel(kernel_op, bindings) if tuner.options.model_seconds is None \
            else tuner.tune_kernel(kernel_op, bindings, seconds=0.0)
    except Exception as e:  # noqa: BLE001 - tuning is an optimization: never fail the compile
        log.warning("tilefx tune: could not tune kernel %s (%s: %s); it uses its default "
                    "schedule", kernel_op.attr("name"), type(e).__name__, e)
        return None, None
    return result.best, result
