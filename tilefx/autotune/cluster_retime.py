"""Nodes that disagree: a new winner is timed again on a second node before the tuner sees it.

Timings from different machines are compared with one another, so one node that
is off (a busy or throttled machine, another CPU stepping) would decide the
winner. With two or more measuring nodes, every result that would become the
kernel's new winner is timed again on a second node (``Referee.second_node``).
``Referee.judge`` then decides what the tuner gets (``tolerance``, default 1.5x):

- Within the tolerance both are stored as ``ok`` measurements (the database's
  ``best`` takes the candidate's lower median, as for the tuner's re-matches).
- Beyond it a warning names the nodes (and, once one node was the odd one out in
  every disagreement so far, that node) and both are stored: **the slower median
  counts** (max of medians) — stored ``ok`` — and the faster one is stored with
  its samples as ``run_error`` with the reason, so ``db.best`` (lowest ``ok``
  median) never picks a kernel because of the faster node. A wrongly slow timing
  only hides a candidate; a wrongly fast one would ship a slower model, so the
  conservative side wins. A persistently slow node thereby puts every contender
  on its own scale (each new winner is confirmed there), which keeps the
  comparison fair.

The ``ok`` measurement and each further one travel in one ``ClusterMeasureResult``
(``also``), so the tuner counts the candidate once and writes every measurement once.

Limit: with two measuring nodes a single disagreement cannot tell which node is
off: the warning names both, with the direction; there is no third-node tie-break.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from tilefx.codegen.measure import MeasureResult, Workload
from tilefx.codegen.schedule import Schedule

log = logging.getLogger("tilefx.autotune")

DEFAULT_TOLERANCE = 1.5


@dataclass(frozen=True)
class ClusterMeasureResult(MeasureResult):
    """A measurement and the node that made it; ``also``: further measurements of the same
    candidate for the tuner to store with it (a re-timing on another node)."""

    node: str = ""
    also: tuple[MeasureResult, ...] = ()


class Referee:
    """Keeps each kernel's confirmed winner and each node's record in disagreements.

    ``tolerance``: the ratio of two nodes' medians still taken as agreement (None:
    never re-time). ``name(node id)``: how messages name a node.
    """

    def __init__(self, tolerance: float | None, name: Callable[[str], str]) -> None:
        self.tolerance = tolerance
        self.name = name
        self.best: dict[str, tuple[Schedule, float]] = {}  # workload -> confirmed winner
        self.odd: dict[str, Counter] = {}  # node -> {"slower": n, "faster": n} in disagreements
        self._retimes = 0

    def second_node(self, workload: Workload, r: ClusterMeasureResult,
                    nodes: Iterable[str]) -> str | None:
        """Another of the measuring ``nodes`` to confirm ``r`` on, when it would be the
        new winner; None when it would not, or no other node is there."""
        if self.tolerance is None or r.seconds is None or not r.node:
            return None
        best = self.best.get(workload.key)
        if best is not None and (best[0] == r.schedule or r.seconds >= best[1]):
            return None
        others = sorted(n for n in nodes if n != r.node)
        if not others:
            return None
        self._retimes += 1  # round robin over the other nodes
        return others[self._retimes % len(others)]

    def note_best(self, workload: Workload, r: MeasureResult, seconds: float | None) -> None:
        if seconds is None or r.status != "ok":
            return
        best = self.best.get(workload.key)
        if best is None or seconds < best[1]:
            self.best[workload.key] = (r.schedule, seconds)

    def judge(self, workload: Workload, first: ClusterMeasureResult,
              again: ClusterMeasureResult) -> ClusterMeasureResult:
        """The result the tuner gets for a re-timed winner (see the module docstring)."""
        name = self.name
        if again.status != "ok" or again.seconds is None:
            note = f"re-timing on another node failed: {again.status}: {again.error}"[:500]
            self.note_best(workload, first, first.seconds)
            return replace(first, also=(replace(again, error=note),))
        a, b = first.seconds, again.seconds
        assert a is not None
        ratio = max(a, b) / min(a, b)
        if ratio <= (self.tolerance or math.inf):
            self.note_best(workload, first, min(a, b))
            return replace(first, also=(replace(again, error=f"re-timed on node "
                                                f"{name(again.node)}: {ratio:.2f}x apart"),))
        slow, fast = (first, again) if a > b else (again, first)
        for node, side in ((slow.node, "slower"), (fast.node, "faster")):
            self.odd.setdefault(node, Counter())[side] += 1
        verdict = ""
        for node, sides in self.odd.items():
            n = sum(sides.values())
            if n >= 2 and len(sides) == 1:
                side = next(iter(sides))
                verdict = (f"; node {name(node)}'s timings disagree with the fleet's "
                           f"({side} in {n} of {n} disagreements)")
        log.warning("tilefx tune: kernel %s: node %s timed %s %.1fx slower than node %s "
                    "(%.4f ms vs %.4f ms; tolerance %.1fx): keeping the slower (max of medians), "
                    "both measurements stored%s", workload.name, name(slow.node), slow.schedule,
                    ratio, name(fast.node), max(a, b) * 1e3, min(a, b) * 1e3, self.tolerance,
                    verdict)
        kept = replace(slow, error=f"node {name(slow.node)}; node {name(fast.node)} timed it "
                       f"{ratio:.2f}x faster: the slower counts (max of medians)",
                       build_seconds=first.build_seconds, also=())
        dropped = replace(fast, status="run_error", also=(),
                          error=f"timing disagrees: node {name(fast.node)} "
                          f"{min(a, b) * 1e3:.4f} ms vs node {name(slow.node)} "
                          f"{max(a, b) * 1e3:.4f} ms ({ratio:.2f}x > tolerance "
                          f"{self.tolerance:.2f}x); kept for the record, not used")
        self.note_best(workload, kept, max(a, b))
        return replace(kept, also=(dropped,))
