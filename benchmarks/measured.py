"""Timed samples and the markdown table that ``benchmarks/distributed.py`` prints.

A ``Row`` is one measurement: its wall-time samples (median, spread: p10-p90,
or min-max under 10 samples), this process's CPU time per call beside them
(on a shared machine the wall time grows with other processes' load, the CPU
time much less: the scaling model reads both), and a derived rate as text.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable


def say(msg: str) -> None:
    """Progress, on stderr (stdout is the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Timing:
    wall: tuple[float, ...]   # seconds per call
    cpu: tuple[float, ...]    # this process's CPU seconds per call

    def per(self, k: int) -> Timing:
        """Per item, when each call handled ``k`` items."""
        return Timing(tuple(x / k for x in self.wall), tuple(x / k for x in self.cpu))

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def timed(fn: Callable[[], Any], n: int, warmup: int = 0) -> Timing:
    """``n`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(tuple(wall), tuple(cpu))


@dataclass(frozen=True)
class Row:
    part: str
    what: str
    timing: Timing | None = None
    rate: str = ""            # a derived "per second" figure, as text
    note: str = ""

    def cells(self) -> list[str]:
        if self.timing is None or not self.timing.wall:
            return [self.part, self.what, "", "", "", "", self.rate, self.note]
        s = sorted(self.timing.wall)
        if len(s) >= 10:
            q = statistics.quantiles(s, n=10)
            spread = f"{fmt(q[0])} - {fmt(q[-1])} (p10-p90)"
        else:
            spread = f"{fmt(s[0])} - {fmt(s[-1])} (min-max)"
        cpu = fmt(statistics.median(self.timing.cpu)) if self.timing.cpu else ""
        return [self.part, self.what, fmt(statistics.median(s)), spread, str(len(s)), cpu,
                self.rate, self.note]


def fmt(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def per_s(seconds: float, unit: str = "/s") -> str:
    """``1 / seconds`` as a rate, e.g. ``1,234 tasks/s``."""
    if seconds <= 0:
        return ""
    rate = 1 / seconds
    return f"{rate:,.0f}{unit}" if rate >= 10 else f"{rate:.2f}{unit}"


def table(rows: list[Row]) -> str:
    out = ["| part | measurement | median (wall) | spread (wall) | n | CPU, median | per second "
           "| note |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(out)
