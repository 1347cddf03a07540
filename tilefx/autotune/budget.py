"""Tuning that fits a budget: one time budget for a whole model, shared by expected gain.

``tune="60s"`` gives the *model* 60 seconds of tuning, not each kernel: a user
expects ``tilefx.compile(model, tune="60s")`` to take about a minute whether the
model has 3 kernels or 50. The budget is spent where it is expected to pay.
For each distinct kernel (equal computations are tuned once but count once per
use), ``model_tune.py`` estimates, without building anything:

- ``t``: its time in the model: the predicted seconds of one run at its default
  schedule (the latency cost model, else the analytical one) times ``uses``,
  the runs per model call;
- ``g``: the fraction of ``t`` tuning could save: 1 - predicted best / predicted
  default over a seeded sample of its space, clipped to [``MIN_GAIN``,
  ``MAX_GAIN``] (a cost model that sees no gain can be wrong; one that sees 10x
  probably is), at least ``LIBRARY_GAIN`` when a library candidate exists, and 0 when
  there is nothing to choose (one schedule, no library).

The expected saving is ``s = t * g``. This module turns those estimates into
shares of the budget, with pure functions (no building, no timing: testable
alone):

1. ``select``: a kernel whose ``t`` is under ``NEGLIGIBLE`` (1%) of the model's
   time, or whose ``s`` is 0, is skipped: it keeps the database's best or its
   default. The rest are ordered by ``s``, largest first (ties by key):
   the tuning order.
2. ``allocate``: each admitted kernel gets ``clip(lam * s, floor, cap)`` seconds,
   ``lam`` chosen so the shares add up to the budget (water-filling: proportional
   to the expected saving, never under the floor, never over the cap), where
   ``c`` is the seconds one candidate costs (propose, build, measure),
   ``floor = (1 + library + FLOOR_CANDIDATES) * c`` (the default, the library
   and a few candidates) and ``cap = (space size + library) * c`` (no more than
   measuring the whole space). Kernels are admitted in tuning order while their
   floors fit; the others are skipped for the budget (the biggest expected gains
   come first). When not even the first floor fits, the first kernel gets all
   there is if that pays for its baselines (default and library), else none is tuned.
3. While tuning (``model_tune.tune_model``) ``allocate`` runs again before each
   kernel on what is left: the kernels not yet tuned and the time not yet used,
   with ``c`` as measured so far. Time a kernel leaves unused (its search
   converged, its space was exhausted, the database had it) flows back to the
   rest; a kernel that ran over takes from them.
4. Within its share a kernel's search stops when it has ``converged`` (no 1% gain
   over ``PATIENCE`` candidates), and a learned cost model ranks only a pool its
   share can pay the features of (``ranking_pool``). ``round_size`` sizes each
   round to the time left: no round starts that a typical round would not finish
   (the tuner also hands the deadline to its builder and runner, which leave what
   it cuts unmeasured).

``parse_tune``/``parse_budget`` read what ``tune=`` asks: trials per kernel, seconds per
kernel, or seconds for the model. Everything here is deterministic given the same estimates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

NEGLIGIBLE = 0.01       # of the model's predicted time: below it a kernel is not tuned
MIN_GAIN = 0.05         # a cost model that sees no gain may be wrong: assume this much
MAX_GAIN = 0.8          # ... and one that sees a 10x gain probably is
LIBRARY_GAIN = 0.15     # a library candidate (torch, cuBLAS, cuDNN) beats many defaults
FLOOR_CANDIDATES = 2    # new candidates every admitted kernel can measure, past its baselines
PATIENCE = 24           # measured candidates without a 1% gain: the search has converged
CONVERGED = 0.01
RANK_SECONDS = 0.05     # a learned model's features of one candidate (CPU: TVM lowering)
RANK_SHARE = 0.2        # of a kernel's share: what ranking its first pool may take


def parse_budget(tune: int | str | float | None) -> tuple[int, float | None]:
    """``32`` -> (32 trials, no time limit); ``"30s"``/``"2m"`` -> (unbounded, seconds)."""
    if tune is None or tune is False:
        return 0, None
    if isinstance(tune, (int, float)) and not isinstance(tune, bool):
        return int(tune), None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*", str(tune))
    if not m:
        raise ValueError(f"tune={tune!r}: give a number of trials per kernel (32) or a time "
                         "budget per kernel ('30s', '2m')")
    if m.group(2) is None:
        return int(float(m.group(1))), None
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[m.group(2)]
    return 1_000_000, float(m.group(1)) * scale


def parse_tune(tune: int | str | float | None) -> tuple[int, float | None, float | None]:
    """What ``tilefx.compile(tune=...)`` asks: (trials per kernel, seconds per kernel, seconds
    for the whole model). ``32``: 32 trials per kernel; ``"60s"``: 60 seconds for the model,
    shared by expected gain (``model_tune.py``); ``"30s/kernel"``: 30 seconds per kernel."""
    text = tune.strip() if isinstance(tune, str) else ""
    per_kernel = text.endswith("/kernel")
    try:
        trials, seconds = parse_budget(text[:-len("/kernel")] if per_kernel else tune)
    except ValueError:
        raise ValueError(f"tune={tune!r}: give a number of trials per kernel (32), a time "
                         "budget for the whole model ('60s', '2m') or per kernel "
                         "('30s/kernel')") from None
    return (trials, seconds, None) if per_kernel else (trials, None, seconds)


@dataclass(frozen=True)
class KernelEstimate:
    """What the allocator knows of one distinct kernel before anything is built."""

    key: str                 # identity (kernel key + bindings): the deterministic tie-break
    name: str
    seconds: float           # predicted seconds of one run at the default schedule
    uses: int = 1            # runs per model call
    gain: float = MIN_GAIN   # predicted fraction of its time tuning could save
    space: int = 1           # schedules in its space
    library: bool = False    # a library candidate exists

    @property
    def model_seconds(self) -> float:
        return self.seconds * self.uses

    @property
    def saving(self) -> float:
        """Expected seconds saved per model call."""
        return self.model_seconds * self.gain

    def floor(self, candidate_seconds: float) -> float:
        return min(self.cap(candidate_seconds),
                   (1 + self.library + FLOOR_CANDIDATES) * candidate_seconds)

    def cap(self, candidate_seconds: float) -> float:
        return (self.space + self.library) * candidate_seconds


def clip_gain(predicted: float, *, space: int, library: bool) -> float:
    """The gain the allocator uses for a kernel whose cost model predicts ``predicted``."""
    if space <= 1 and not library:
        return 0.0
    g = min(MAX_GAIN, max(MIN_GAIN, predicted if math.isfinite(predicted) else 0.0))
    return max(g, LIBRARY_GAIN) if library else g


@dataclass(frozen=True)
class Share:
    """One kernel's part of the plan: ``seconds`` to tune it, or ``skipped`` and why."""

    estimate: KernelEstimate
    seconds: float = 0.0
    skipped: str = ""        # "" when tuned; else the reason


@dataclass(frozen=True)
class BudgetPlan:
    """The shares of ``budget`` seconds: tuned kernels in tuning order, then the skipped."""

    budget: float
    candidate_seconds: float
    model_seconds: float     # predicted time of one model call at default schedules
    shares: tuple[Share, ...] = ()
    unallocated: float = 0.0  # every admitted kernel at its cap: more than the model needs

    @property
    def tuned(self) -> list[Share]:
        return [s for s in self.shares if not s.skipped]

    @property
    def skipped(self) -> list[Share]:
        return [s for s in self.shares if s.skipped]

    def share_of(self, key: str) -> Share | None:
        return next((s for s in self.shares if s.estimate.key == key), None)


def _order(estimates: Sequence[KernelEstimate]) -> list[KernelEstimate]:
    return sorted(estimates, key=lambda e: (-e.saving, e.key))


def select(estimates: Sequence[KernelEstimate], *, negligible: float = NEGLIGIBLE
           ) -> tuple[list[KernelEstimate], list[Share]]:
    """(kernels worth tuning in tuning order, skipped kernels with the reason)."""
    total = sum(e.model_seconds for e in estimates)
    keep: list[KernelEstimate] = []
    skipped: list[Share] = []
    for e in _order(estimates):
        fraction = e.model_seconds / total if total > 0 else 1.0 / max(1, len(estimates))
        if e.gain <= 0 or e.saving <= 0:
            skipped.append(Share(e, skipped="nothing to choose" if e.gain <= 0 else
                                 "no expected gain"))
        elif fraction < negligible:
            skipped.append(Share(e, skipped=f"{fraction:.1%} of model time"))
        else:
            keep.append(e)
    return keep, skipped


def allocate(kernels: Sequence[KernelEstimate], budget: float, candidate_seconds: float
             ) -> tuple[list[Share], float]:
    """(shares in tuning order, skipped ones last; seconds no kernel can use) of ``budget``
    among ``kernels`` (already selected): see the module docstring, step 2."""
    c = max(candidate_seconds, 1e-6)
    ordered = _order(kernels)
    admitted: list[KernelEstimate] = []
    used = 0.0
    for e in ordered:
        if used + e.floor(c) > budget + 1e-9:
            break
        admitted.append(e)
        used += e.floor(c)
    if not admitted and ordered and budget >= (1 + ordered[0].library) * c:
        # not even one floor, but the biggest's baselines fit: it gets all there is
        first = ordered[0]
        rest = [Share(e, skipped="budget spent") for e in ordered[1:]]
        return [Share(first, budget)] + rest, 0.0
    rest = [Share(e, skipped=f"budget: needs {e.floor(c):.1f}s") for e in ordered[len(admitted):]]
    if not admitted:
        return rest, max(0.0, budget)
    caps = [e.cap(c) for e in admitted]
    floors = [e.floor(c) for e in admitted]
    if sum(caps) <= budget:
        return [Share(e, cap) for e, cap in zip(admitted, caps)] + rest, budget - sum(caps)

    def total(lam: float) -> float:
        return sum(min(cap, max(lo, lam * e.saving)) for e, lo, cap in zip(admitted, floors, caps))

    lo_lam, hi_lam = 0.0, max(cap / e.saving for e, cap in zip(admitted, caps))
    for _ in range(100):  # total() grows with lam: bisect to the budget
        mid = (lo_lam + hi_lam) / 2
        lo_lam, hi_lam = (mid, hi_lam) if total(mid) < budget else (lo_lam, mid)
    shares = [Share(e, min(cap, max(lo, hi_lam * e.saving)))
              for e, lo, cap in zip(admitted, floors, caps)]
    return shares + rest, 0.0


def plan_budget(estimates: Sequence[KernelEstimate], budget: float, candidate_seconds: float,
                *, negligible: float = NEGLIGIBLE) -> BudgetPlan:
    """The whole plan: ``select`` then ``allocate``."""
    keep, skipped = select(estimates, negligible=negligible)
    shares, unallocated = allocate(keep, budget, candidate_seconds)
    return BudgetPlan(budget, candidate_seconds, sum(e.model_seconds for e in estimates),
                      tuple(shares) + tuple(skipped), unallocated)


def ranking_pool(seconds: float, largest: int = 512, smallest: int = 32) -> int | None:
    """Candidates a learned cost model may rank per round for a kernel given ``seconds``, or
    None when not even ``smallest`` fit (rank with the analytical model, ~0.1 ms each). Its
    features cost up to ~``RANK_SECONDS`` each (TVM lowering; a first round ranks the whole
    pool, later ones mostly hit the feature cache): a 20s share ranks 80, not 512."""
    pool = int(RANK_SHARE * seconds / RANK_SECONDS)
    return None if pool < smallest else min(largest, pool)


def converged(history: Sequence[float], patience: int = PATIENCE,
              tolerance: float = CONVERGED) -> bool:
    """``history`` (best seconds after each measured candidate) has not improved by
    ``tolerance`` over its last ``patience`` entries."""
    if patience <= 0 or len(history) <= patience:
        return False
    before, now = history[-patience - 1], history[-1]
    if not math.isfinite(before):
        return False
    return now > before * (1 - tolerance)


def round_size(want: int, left: float | None, costs: list[float], *, baselines: int,
               reserve: float = 0.0, hint: float | None = None,
               walls: Sequence[float] = ()) -> int:
    """New candidates to propose in a kernel's next round: ``want``, or with ``left``
    seconds of its time limit as many as fit at the mean cost per candidate so far (past
    the first round when there is a ``hint`` to go by instead), keeping ``reserve``
    seconds (the library re-match after the search); the first round (``baselines``
    queued, no cost known yet) measures the baselines alone, or one candidate without any.

    ``walls``: each round's wall seconds. A round compiles its candidates side by side, so
    even one candidate costs about a whole compile: no round starts when the time left is
    under the median round seen (past the first, which also loads the workload; not the
    quickest: a round whose code was compiled before takes no compile). Sized by the mean
    alone, the last rounds of each kernel overran its share (ResNet-50 on an H200: 68.5 s
    for a 60 s model budget)."""
    if left is None:
        return want
    if not costs:
        return 0 if baselines else min(want, 1)
    later = costs[1:] if hint else costs
    per = sum(later) / len(later) if later else hint
    left -= reserve
    later_walls = sorted(walls[1:])
    if later_walls and left < later_walls[len(later_walls) // 2]:
        return 0
    return max(0, min(want, int(left / per) if per > 0 else want))


# ------------------------------------------------------------------------ reporting

@dataclass
class Spent:
    """How one kernel's turn went: the share it was given when its turn came and what it
    used (the plan's share may differ: leftovers flow)."""

    key: str
    given: float = 0.0       # seconds it was given when its turn came
    used: float = 0.0
    skipped: str = ""        # "" when tuned; else the reason
    saving: float = 0.0      # expected seconds saved per model call (the estimate)
    rematch: float = 0.0     # of ``used``: the library re-match after its search
    cut: int = 0             # candidates its deadline left unmeasured

    def cell(self) -> str:
        """The summary table's "budget" cell."""
        gain = f" (exp. -{self.saving * 1e3:.3f} ms)" if self.saving else ""
        if self.skipped:
            return f"skipped: {self.skipped}"
        return f"{self.used:.1f}/{self.given:.1f}s{gain}"


@dataclass
class BudgetReport:
    """A plan and how it went, for the summary."""

    plan: BudgetPlan
    budget: float            # the model's, as asked (the plan shares what estimating left)
    spent: dict[str, Spent] = field(default_factory=dict)
    seconds: float = 0.0     # wall time of the whole budgeted tuning
    estimate_seconds: float = 0.0  # of which estimating and planning
    interrupted: bool = False

    def line(self) -> str:
        tuned = [s for s in self.spent.values() if not s.skipped]
        skipped = [s for s in self.spent.values() if s.skipped]
        over = self.seconds - self.budget
        searched = sum(s.used - s.rematch for s in tuned)
        rematch = sum(s.rematch for s in tuned)
        # where the time went, so an overrun names its part
        text = (f"budget {self.budget:.1f}s for the model: {self.seconds:.1f}s used "
                f"({'+' if over >= 0 else '-'}{abs(over):.1f}s; estimating "
                f"{self.estimate_seconds:.1f}s, searches {searched:.1f}s, library re-matches "
                f"{rematch:.1f}s, look-ups {sum(s.used for s in skipped):.1f}s; "
                f"{sum(s.cut for s in tuned)} candidates cut at a deadline), "
                f"{len(tuned)} kernels tuned, {len(skipped)} skipped")
        if skipped:
            names = {s.estimate.key: s.estimate.name for s in self.plan.shares}
            text += " (" + ", ".join(f"{names.get(s.key, s.key)}: {s.skipped}"
                                     for s in skipped[:8]) + (", ..." if len(skipped) > 8 else "") + ")"
        return text + (" (stopped)" if self.interrupted else "")


def format_plan(plan: BudgetPlan) -> str:
    """The plan as a table: kernel, share of model time, expected gain, share of the budget."""
    rows = [f"tuning plan: {plan.budget:.1f}s to share among {len(plan.shares)} kernels "
            f"(~{plan.candidate_seconds:.2f}s per candidate, predicted model time "
            f"{plan.model_seconds * 1e3:.3f} ms)",
            "| kernel | uses | model time | expected gain | budget s |",
            "|---|---:|---:|---:|---|"]
    for s in plan.shares:
        e = s.estimate
        pct = e.model_seconds / plan.model_seconds if plan.model_seconds > 0 else 0.0
        share = f"skipped: {s.skipped}" if s.skipped else f"{s.seconds:.1f}"
        rows.append(f"| {e.name} | {e.uses} | {pct:.1%} | {e.gain:.0%} ({e.saving * 1e3:.3f} ms) "
                    f"| {share} |")
    return "\n".join(rows)

