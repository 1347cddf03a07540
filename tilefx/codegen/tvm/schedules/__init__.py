"""Schedule templates, one per kernel kind: each declares its knob ``space``,
a ``default_schedule`` heuristic and ``apply`` (knobs -> s_tir primitives).

The spaces are plain data (``dict[knob, list[values]]``) so the autotuner can
enumerate and search them without knowing what the knobs mean.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType
from typing import Any, Mapping

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op
from tilefx.ir.identity import specialize

KINDS = ("pointwise", "reduction", "contraction", "sparse_contraction")


def template(kind: str) -> ModuleType:
    # sparse imports TVM (its TE op registers at import)
    from tilefx.codegen.tvm.schedules import contraction, pointwise, reduction, sparse

    templates = {"pointwise": pointwise, "reduction": reduction, "contraction": contraction,
                 "sparse_contraction": sparse}
    if kind not in templates:
        raise ValueError(f"no TVM schedule template for kernel kind {kind!r} (have {KINDS})")
    return templates[kind]


def _specialized(kernel_op: Op, bindings: Mapping[Any, int] | None) -> Op:
    if not bindings:
        return kernel_op

    return replace(kernel_op, body=specialize(kernel_op.body, bindings))


def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    return template(kernel_op.attr("kind")).space(kernel_op, target)


def default_schedule(kernel_op: Op, target: Target, *,
                     bindings: Mapping[Any, int] | None = None) -> Schedule:
    return template(kernel_op.attr("kind")).default_schedule(_specialized(kernel_op, bindings), target)


def apply_schedule(func: Any, kind: str, schedule: Schedule, target: Target) -> Any:
    """A ``s_tir.Schedule`` of ``func`` with the template of ``kind`` applied."""
    from tvm import s_tir  # heavy: loaded on first use

    sch = s_tir.Schedule(func)
    template(kind).apply(sch, schedule, target)
    return sch
