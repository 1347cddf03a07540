"""``Schedule``: the knob values of one code-generation template, as data.

A schedule is a frozen, hashable record, e.g. ``Schedule.of(tile_m=64,
tile_n=128, vectorize=16)``. Templates (``codegen/tvm/schedules/``) declare
their space of knobs as ``dict[knob, list[values]]`` and read a schedule with
``schedule.get(knob, default)``; the autotuner enumerates the space and stores
schedules as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

KnobValue = Any  # int | float | bool | str | tuple of those


def _freeze(v: KnobValue) -> KnobValue:
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True, slots=True)
class Schedule:
    knobs: tuple[tuple[str, KnobValue], ...] = ()

    @staticmethod
    def of(**knobs: KnobValue) -> Schedule:
        return Schedule(tuple(sorted((k, _freeze(v)) for k, v in knobs.items())))

    @staticmethod
    def from_dict(knobs: Mapping[str, KnobValue]) -> Schedule:
        return Schedule.of(**dict(knobs))

    def get(self, knob: str, default: KnobValue = None) -> KnobValue:
        for k, v in self.knobs:
            if k == knob:
                return v
        return default

    def __getitem__(self, knob: str) -> KnobValue:
        for k, v in self.knobs:
            if k == knob:
                return v
        raise KeyError(f"schedule has no knob {knob!r} (has {[k for k, _ in self.knobs]})")

    def __contains__(self, knob: str) -> bool:
        return any(k == knob for k, _ in self.knobs)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.knobs)

    def as_dict(self) -> dict[str, KnobValue]:
        return dict(self.knobs)

    def with_(self, **changes: KnobValue) -> Schedule:
        return Schedule.of(**{**self.as_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Schedule:
        return Schedule.of(**json.loads(text))

    def __str__(self) -> str:
        return "Schedule(" + ", ".join(f"{k}={v!r}" for k, v in self.knobs) + ")"
