"""Schedule spaces as data: what the tuner may choose for one kernel.

Each codegen template declares its knobs beside its code
(``codegen/tvm/schedules/*.space()``: ``dict[knob, list[values]]``). A
``SearchSpace`` wraps that dict so strategies can count, enumerate, sample and
walk it without knowing what a knob means. Every point of the product is a
valid schedule: templates clamp knobs to the loop extents (a tile larger than
its loop becomes the loop), so no combination fails to build; equal code from
different knobs is caught later by the fingerprint.

Contractions also have an **extern (library) candidate**, ``EXTERN``: the
kernel body run as the bare torch calls eager would make (``torch.matmul``,
``F.conv2d`` and the epilogue; ``measure.LibraryKernel``). It is measured like any other
candidate, so a tuned kernel is never slower than the library; the compiler
runs a kernel whose chosen schedule ``is_extern`` through that path. On a
cuda target the space is the Triton template's and ``EXTERN`` is its library
implementation (cuBLAS / torch SDPA plus a generated epilogue kernel; see
``codegen/triton/measure.py``).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

from tilefx.codegen.schedule import Schedule

EXTERN = Schedule.of(extern="torch")
EXTERN_KINDS = ("contraction",)  # kinds whose body is one library call plus epilogue


def is_extern(schedule: Schedule | None) -> bool:
    return schedule is not None and bool(schedule.get("extern"))


@dataclass(frozen=True)
class SearchSpace:
    """The product of the template's knob values (+ the extern candidate, kept apart)."""

    knobs: tuple[tuple[str, tuple[Any, ...]], ...]
    has_extern: bool = False

    @staticmethod
    def of(knobs: dict[str, list[Any]], has_extern: bool = False) -> SearchSpace:
        clean = []
        for name, values in sorted(knobs.items()):
            unique = tuple(dict.fromkeys(values))  # templates may list a value twice
            if not unique:
                raise ValueError(f"knob {name!r} has no values: a template's space must list "
                                 "at least one value per knob")
            clean.append((name, unique))
        return SearchSpace(tuple(clean), has_extern)

    @staticmethod
    def for_kernel(kernel_op: Any, target: Any, bindings: Any = None) -> SearchSpace:
        """The space of a ``kernel`` op's template on ``target``."""
        return target.backend().space(kernel_op, bindings)

    @property
    def names(self) -> list[str]:
        return [k for k, _ in self.knobs]

    @property
    def size(self) -> int:
        """Number of template schedules (the extern candidate not counted)."""
        return math.prod(len(v) for _, v in self.knobs)

    def values(self, knob: str) -> tuple[Any, ...]:
        for k, v in self.knobs:
            if k == knob:
                return v
        raise KeyError(f"space has no knob {knob!r} (has {self.names})")

    def contains(self, schedule: Schedule) -> bool:
        return set(schedule) == set(self.names) and all(
            schedule[k] in v for k, v in self.knobs)

    def enumerate(self) -> Iterator[Schedule]:
        """Every template schedule, in a fixed order (the product of the knob lists)."""
        for combo in itertools.product(*(v for _, v in self.knobs)):
            yield Schedule.of(**dict(zip(self.names, combo)))

    def sample(self, rng: random.Random) -> Schedule:
        return Schedule.of(**{k: rng.choice(v) for k, v in self.knobs})

    def index(self, schedule: Schedule) -> int:
        """Position of ``schedule`` in ``enumerate()`` (mixed radix)."""
        i = 0
        for k, v in self.knobs:
            i = i * len(v) + v.index(schedule[k])
        return i

    def neighbors(self, schedule: Schedule) -> list[Schedule]:
        """Schedules that differ in one knob by one step along its value list.

        Knob lists are ordered (tile sizes ascending), so one step is the
        smallest change: what mutation in the evolutionary search uses.
        """
        out = []
        for k, values in self.knobs:
            i = values.index(schedule[k]) if schedule.get(k) in values else 0
            for j in (i - 1, i + 1):
                if 0 <= j < len(values) and j != i:
                    out.append(schedule.with_(**{k: values[j]}))
        return out

    def mutate(self, schedule: Schedule, rng: random.Random, knobs: int = 1) -> Schedule:
        """``schedule`` with ``knobs`` randomly chosen knobs set to another random value."""
        changes = {}
        for k in rng.sample(self.names, min(knobs, len(self.names))):
            others = [v for v in self.values(k) if v != schedule.get(k)]
            if others:
                changes[k] = rng.choice(others)
        return schedule.with_(**changes)

    def crossover(self, a: Schedule, b: Schedule, rng: random.Random) -> Schedule:
        return Schedule.of(**{k: (a if rng.random() < 0.5 else b)[k] for k in self.names})
