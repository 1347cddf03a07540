"""Bounds checks of the index tensors that kernels read through (``take``: embedding,
index_select, ``w[i]``), so an index out of range raises torch's IndexError instead of
reading past the table.

The kernels also clamp every index into the table (defence in depth: a bypassed check
reads a wrong row, never outside the buffer); the check is what makes the call fail
as eager does. One ``aminmax`` pass over the indices per call (``check_take_indices``);
where the indices are a graph input it runs before the plan, so a CUDA graph's replay
is checked too; a constant index tensor is checked once, when the plan is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.interpreter import run_graph
from tilefx.ir.reference_ops import check_take_indices

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class IndexCheck:
    """The indices in one environment slot (or graph input position) must lie in
    ``[-size, size)``. ``graph``: they are computed inside the kernel from its inputs
    (``slots``), so the ops that make them run in the interpreter first."""

    slot: int
    size: int
    axis: int
    graph: Graph | None = None
    slots: tuple[int, ...] = ()
    wrap: bool = True  # negative indices count from the end (w[i]); else out of range

    def indices(self, env: Sequence[Any]) -> torch.Tensor:
        if self.graph is None:
            return env[self.slot]

        return run_graph(self.graph, [env[i] for i in self.slots])[0]

    def __call__(self, env: Sequence[Any]) -> None:
        check_take_indices(self.indices(env), self.size, self.axis, self.wrap)


def _producers(body: Graph, value: Value) -> tuple[Op, ...]:
    """The ops of ``body`` that ``value`` depends on, in order."""
    made = {r.name: op for op in body.ops for r in op.results}
    needed: set[str] = set()
    todo = [value.name]
    while todo:
        name = todo.pop()
        op = made.get(name)
        if op is None or id(op) in needed:
            continue
        needed.add(id(op))
        todo.extend(v.name for v in op.inputs)
    return tuple(op for op in body.ops if id(op) in needed)


def kernel_index_checks(op: Op, in_slots: tuple[int, ...],
                        size_of: Callable[[Value, int], int]) -> list[IndexCheck]:
    """One check per ``take`` in a kernel op's body; ``in_slots``: the slots of the
    kernel's inputs; ``size_of(value, axis)``: a table's concrete size along an axis."""
    body = op.body
    if body is None:
        return []
    position = {v.name: i for i, v in enumerate(body.inputs)}
    checks = []
    for t in body.ops:
        if t.name != "take":
            continue
        table, idx = t.inputs
        axis = t.attr("axis", 0) % max(table.type.rank, 1)
        size = size_of(table, axis)
        wrap = bool(t.attr("wrap", True))
        if idx.name in position:
            checks.append(IndexCheck(in_slots[position[idx.name]], size, axis, wrap=wrap))
        else:  # computed in the kernel (``emb(ids + 1)``): compute them here too
            graph = Graph("indices", body.inputs, _producers(body, idx), (idx,), body.constants)
            checks.append(IndexCheck(-1, size, axis, graph, in_slots, wrap=wrap))
    return checks
