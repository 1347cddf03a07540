"""Which Triton template builds a kernel op, and the build itself.

The kernel's ``kind`` picks the template, and for ``contraction`` the anchor
op does (``matmul``, ``conv2d`` or ``attention``). Each template module has
``SPACE`` (or ``space(body)``), ``default_schedule(body, target)`` and
``emit(body, name, schedule) -> KernelSource``. A body a template cannot
emit raises ``NotImplementedError`` naming what is missing; the compiler then
runs that kernel in the interpreter and reports it.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, Mapping

import sympy

from tilefx.codegen.schedule import Schedule
from tilefx.ir.identity import specialize
from tilefx.codegen.triton.source import BuiltKernel, build, identifier
from tilefx.ir.graph import Graph, Op
from tilefx.codegen.triton import attention, conv, matmul, pointwise, pool, reduction, sparse

log = logging.getLogger("tilefx.codegen.triton")

ANCHORS = ("attention", "conv2d", "matmul")


def template_for(kernel_op: Op) -> ModuleType:
    kind = kernel_op.attr("kind")
    if kind == "sparse_contraction":
        return sparse
    if kind == "pointwise":
        return pointwise
    if kind == "reduction":
        return pool if any(op.name in pool.POOLS for op in kernel_op.body.ops) else reduction
    if kind == "contraction":
        names = {op.name for op in kernel_op.body.ops}
        for anchor, module in (("attention", attention), ("conv2d", conv), ("matmul", matmul)):
            if anchor in names:
                return module
    raise NotImplementedError(f"kernel {kernel_op.attr('name')!r} of kind {kind!r} has no Triton "
                              f"template (it runs in the interpreter)")


def body_of(kernel_op: Op, bindings: Mapping[sympy.Symbol, int] | None) -> Graph:
    if kernel_op.name != "kernel" or kernel_op.body is None:
        raise ValueError(f"the Triton backend builds 'kernel' ops with a body, got {kernel_op.name!r}")
    body = specialize(kernel_op.body, bindings)
    for v in (*body.inputs, *body.outputs):
        if not v.type.is_static:
            raise NotImplementedError(f"%{v.name} has symbolic shape {v.type}: pass bindings=")
    return body


def space(kernel_op: Op, bindings: Mapping[sympy.Symbol, int] | None = None) -> dict[str, list[Any]]:
    module = template_for(kernel_op)
    if hasattr(module, "space"):
        return module.space(body_of(kernel_op, bindings))
    return {k: list(v) for k, v in module.SPACE.items()}


def default_schedule(kernel_op: Op, target: Any = None,
                     bindings: Mapping[sympy.Symbol, int] | None = None) -> Schedule:
    return template_for(kernel_op).default_schedule(body_of(kernel_op, bindings), target)


def emit_source(kernel_op: Op, schedule: Schedule | None = None, target: Any = None,
                bindings: Mapping[sympy.Symbol, int] | None = None) -> Any:
    module = template_for(kernel_op)
    body = body_of(kernel_op, bindings)
    schedule = schedule if schedule is not None else module.default_schedule(body, target)
    return module.emit(body, identifier(kernel_op.attr("name")), schedule), schedule


def build_kernel(kernel_op: Op, target: Any = None, schedule: Schedule | None = None, *,
                 bindings: Mapping[sympy.Symbol, int] | None = None) -> BuiltKernel:
    """Emit and load ``kernel_op``'s module (Triton compiles it on the first launch). Not
    memoized here: the compile session keeps what a compile built, the tuner's state
    what a tuning run built."""
    source, schedule = emit_source(kernel_op, schedule, target, bindings)
    built = build(source, kernel_op.attr("kind"), schedule)
    log.debug("built Triton kernel %s (%s) from %s", source.name, schedule, built.path)
    return built
