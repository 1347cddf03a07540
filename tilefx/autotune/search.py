"""Search strategies: which schedules of a ``SearchSpace`` to measure next.

One interface (``SearchStrategy``): ``propose(n)`` returns up to ``n`` new
schedules (never one it proposed before; an empty list means the space is
exhausted) and ``update(results)`` tells it what they measured. A result is
anything with ``.schedule`` and ``.seconds`` (``None`` for a failed
candidate), e.g. ``measure.MeasureResult``.

- ``RandomSearch``: uniform samples without repetition.
- ``GridSearch``: the whole product in order (for small spaces).
- ``EvolutionarySearch``: a population of the best measured schedules
  (seeded with the default schedule and the database's best) is mutated
  (one to three knobs, or one step to a neighbour) and crossed over; the
  children plus fresh random samples are ranked by a ``CostModel`` and the
  best predicted are proposed, a few per parent, with a fraction ``epsilon``
  of random picks so a wrong model cannot trap the search (epsilon-greedy).

A ``CostModel`` scores (kernel, schedules, target): higher is better.
``RandomModel`` is the stub for tests; ``analytical.AnalyticalModel`` is the
hand-written default until a learned model is trained.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol, Sequence

from tilefx.codegen.space import SearchSpace
from tilefx.codegen.schedule import Schedule
from tilefx.cost_model.analytical import AnalyticalModel

log = logging.getLogger("tilefx.autotune")


class CostModel(Protocol):
    def predict(self, kernel: Any, schedules: Sequence[Schedule], target: Any) -> list[float]:
        """One score per schedule, higher = predicted faster."""
        ...


class RandomModel:
    """Random scores: the cost model of tests and of the "no model" baseline."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def predict(self, kernel: Any, schedules: Sequence[Schedule], target: Any) -> list[float]:
        return [self.rng.random() for _ in schedules]


class SearchStrategy(Protocol):
    def propose(self, n: int) -> list[Schedule]: ...

    def update(self, results: Sequence[Any]) -> None: ...


class _Base:
    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.proposed: set[Schedule] = set()
        self.measured: dict[Schedule, float | None] = {}

    def seed(self, schedules: Sequence[Schedule]) -> None:
        """Known good starting points; only the evolutionary search uses them."""

    def exclude(self, schedules: Sequence[Schedule]) -> None:
        """Never propose these (already measured, e.g. the default schedule)."""
        self.proposed.update(schedules)

    def update(self, results: Sequence[Any]) -> None:
        for r in results:  # schedules outside the space (the extern candidate) are not parents
            self.proposed.add(r.schedule)
            if self.space.contains(r.schedule):
                self.measured[r.schedule] = r.seconds

    def _take(self, schedule: Schedule, out: list[Schedule]) -> bool:
        if schedule in self.proposed or not self.space.contains(schedule):
            return False
        self.proposed.add(schedule)
        out.append(schedule)
        return True

    def _random(self, n: int, out: list[Schedule], tries: int = 0) -> None:
        tries = tries or 20 * n + 50
        goal = len(out) + n
        for _ in range(tries):
            if len(out) >= goal:
                return
            self._take(self.space.sample(self.rng), out)
        if len(out) < goal and self.space.size <= 100_000:  # sparse leftovers: scan
            for s in self.space.enumerate():
                if len(out) >= goal:
                    return
                self._take(s, out)


class RandomSearch(_Base):
    def propose(self, n: int) -> list[Schedule]:
        out: list[Schedule] = []
        self._random(n, out)
        return out


class GridSearch(_Base):
    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self._it = space.enumerate()

    def propose(self, n: int) -> list[Schedule]:
        out: list[Schedule] = []
        for s in self._it:
            self._take(s, out)
            if len(out) >= n:
                break
        return out


class EvolutionarySearch(_Base):
    """Cost-model-guided evolution; see the module docstring.

    Three things keep it from doing worse than random sampling:

    - **seeds**: the default schedule and the best records of the database
      are parents from the first round, before anything new is measured;
    - **ranking many, measuring few**: ``pool`` candidates (mutants, one-step
      neighbours, crossovers and fresh random samples) are scored by the cost
      model and only the best predicted are measured, plus ``epsilon`` random
      picks so a wrong model cannot trap the search;
    - **diversity**: parents are the ``population`` best distinct measured
      schedules, taken in turn (not only mutants of the single best), and a
      batch holds at most ``max(1, n // 3)`` children of one parent, so one
      region of the space (the schedules within ``NEAR`` knobs of a parent)
      cannot fill a whole batch.
    """

    def __init__(self, space: SearchSpace, model: CostModel, kernel: Any, target: Any, *,
                 population: int = 8, pool: int = 512, epsilon: float = 0.2,
                 seed: int = 0) -> None:
        super().__init__(space, seed)
        self.model, self.kernel, self.target = model, kernel, target
        self.population, self.pool, self.epsilon = population, pool, epsilon
        self.seeds: list[Schedule] = []

    def seed(self, schedules: Sequence[Schedule]) -> None:
        """Parents to start from (default schedule, the database's best), measured or not."""
        for s in schedules:
            if self.space.contains(s) and s not in self.seeds:
                self.seeds.append(s)

    def _parents(self) -> list[Schedule]:
        ok = sorted((s for s, t in self.measured.items() if t is not None),
                    key=lambda s: self.measured[s])
        # failed seeds are no parents; unmeasured ones wait behind the measured best
        seeds = [s for s in self.seeds if s not in self.measured]
        return list(dict.fromkeys(ok[:self.population] + seeds))[:max(self.population, 1)]

    def _children(self, parents: list[Schedule]) -> dict[Schedule, int]:
        """Candidate -> its region: the index of the nearest parent when it is within
        ``NEAR`` knobs of one, else -1 (anywhere else)."""
        kids: dict[Schedule, int] = {}
        n_random = self.pool // 4 if parents else self.pool
        for attempt in range(self.pool * 4 if parents else 0):
            if len(kids) >= self.pool - n_random:
                break
            i = attempt % len(parents)  # every parent in turn: diversity
            if attempt % (2 * len(parents)) < len(parents):
                i = min(i, int(self.rng.expovariate(1.0)) % len(parents))  # and the best more
            p = parents[i]
            r = self.rng.random()
            if r < 0.3:
                child = self.rng.choice(self.space.neighbors(p) or [p])
            elif r < 0.8 or len(parents) < 2:
                child = self.space.mutate(p, self.rng, knobs=self.rng.choice((1, 1, 2, 3)))
            else:
                child = self.space.crossover(p, self.rng.choice(parents), self.rng)
            if child not in self.proposed:
                kids[child] = -1
        for _ in range(n_random * 2):
            if len(kids) >= self.pool:
                break
            child = self.space.sample(self.rng)
            if child not in self.proposed:
                kids[child] = -1
        names = self.space.names
        for child in kids:
            dist = [sum(child[k] != p[k] for k in names) for p in parents]
            if dist and min(dist) <= NEAR:
                kids[child] = dist.index(min(dist))
        return kids

    def update(self, results: Sequence[Any]) -> None:
        super().update(results)
        observe = getattr(self.model, "observe", None)  # a learned model retrains online
        if observe is not None and results:
            observe(self.kernel, results, self.target)

    def propose(self, n: int) -> list[Schedule]:
        out: list[Schedule] = []
        n_random = sum(1 for _ in range(n) if self.rng.random() < self.epsilon)
        kids = self._children(self._parents())
        if kids:
            cands = list(kids)
            scores = self.model.predict(self.kernel, cands, self.target)
            cap = max(1, n // 3)
            per_origin: dict[int, int] = {}
            # stable: on equal scores, children of the best parents come first
            for i in sorted(range(len(cands)), key=lambda i: -scores[i]):
                if len(out) >= n - n_random:
                    break
                origin = kids[cands[i]]  # the parent whose region it is in
                if origin >= 0 and per_origin.get(origin, 0) >= cap:
                    continue
                if self._take(cands[i], out):
                    per_origin[origin] = per_origin.get(origin, 0) + 1
        self._random(n - len(out), out)
        return out


NEAR = 2  # knobs that may differ for a child to count as in its parent's region


STRATEGIES = ("evolutionary", "random", "grid")


def make_strategy(name: str, space: SearchSpace, *, kernel: Any = None, target: Any = None,
                  model: CostModel | None = None, seed: int = 0, pool: int = 512) -> _Base:
    """A strategy by name: ``evolutionary`` (default), ``random`` or ``grid``; ``pool``:
    candidates the evolutionary search ranks per round."""
    if name == "random":
        return RandomSearch(space, seed)
    if name == "grid":
        return GridSearch(space, seed)
    if name == "evolutionary":
        if model is None:
            model = AnalyticalModel()
        return EvolutionarySearch(space, model, kernel, target, seed=seed, pool=pool)
    raise ValueError(f"unknown search strategy {name!r}: use one of {', '.join(STRATEGIES)}")
