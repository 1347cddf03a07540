"""CUDA graphs: record a compiled graph's whole execution once, replay it on every call.

The zoo's models are small: at batch 64 an MLP's kernels run for a few
microseconds each, and launching them from Python (Triton's launcher, torch's
dispatcher for library calls) costs more than running them. A
``torch.cuda.CUDAGraph`` records every launch of one ``ExecutionPlan`` once
and replays them all with one driver call, so the per-call cost becomes one
copy per input, one replay and one copy per output.

How it runs, per execution plan (one per input signature):

1. ``decide`` says whether to capture: the plan must run on a CUDA device,
   with static shapes (a ``dynamic=True`` graph has one plan per size: it runs
   eagerly, as capturing every batch size seen would pin a memory pool each),
   every step must be a device launch (a kernel left to the reference
   interpreter computes on the host), and it must not be turned off
   (``CompileOptions(cuda_graphs=False)`` or ``TILEFX_CUDA_GRAPHS=0``).
   Fallback regions (PyTorch ops) are tried: most are capturable.
2. The first ``WARMUP_CALLS`` calls run eagerly: Triton compiles its kernels and
   cuBLAS/cuDNN create their handles and workspaces, none of which may happen
   during a capture.
3. The next call copies its inputs into static input buffers, runs the plan once
   more on a side stream (torch's recipe), then captures it. Outputs the plan
   allocates during capture live in the graph's private memory pool.
4. Every later call copies the inputs into the static buffers, replays, and
   returns *clones* of the static outputs: the caller gets fresh tensors that
   the next replay does not overwrite, the same contract as eager execution.

If the capture raises (a fallback op that synchronizes, say), the error is
logged once and that plan runs eagerly from then on. Like the plan itself, a
graphed plan must not be called from two threads at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from tilefx import settings
from tilefx.compiler.runtime import ExecutionPlan, InterpretedKernel, InterpretStep, KernelStep

if TYPE_CHECKING:
    import torch

    from tilefx.compiler.runtime import CompiledGraph
    from tilefx.ir.graph import Graph

log = logging.getLogger("tilefx.runtime.cuda_graph")

ENV = "TILEFX_CUDA_GRAPHS"  # "0" turns CUDA graphs off when the compile options leave it open
WARMUP_CALLS = 1


@dataclass(frozen=True, slots=True)
class Decision:
    capture: bool
    reason: str


def host_steps(plan: ExecutionPlan) -> list[str]:
    """Names of the steps that compute on the host (the reference interpreter)."""
    out = []
    for step in plan.steps:
        if isinstance(step, InterpretStep):
            out.append(step.graph.name)
        elif isinstance(step, KernelStep) and isinstance(step.fn, InterpretedKernel):
            out.append(step.name)
    return out


def decide(graph: Graph, plan: ExecutionPlan, device: Any, option: bool | None) -> Decision:
    """Whether to capture ``plan`` in a CUDA graph, and why (or why not)."""
    if option is False:
        return Decision(False, "turned off by CompileOptions(cuda_graphs=False)")
    if option is None and not settings.cuda_graphs():
        return Decision(False, f"turned off by {ENV}=0")
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return Decision(False, "not on a CUDA device")
    if any(not v.type.is_static for v in graph.inputs):
        return Decision(False, "dynamic shapes: each size runs eagerly")
    host = host_steps(plan)
    if host:
        return Decision(False, f"{len(host)} step(s) run on the host in the interpreter: "
                               f"{', '.join(host[:3])}")
    return Decision(True, "static shapes on a CUDA device")


class GraphedPlan:
    """One execution plan behind a CUDA graph: eager warm-up, one capture, then replays."""

    def __init__(self, plan: ExecutionPlan, device: Any, name: str = "") -> None:
        self.plan = plan
        self.device = device
        self.name = name
        self.calls = 0
        self.replays = 0
        self.error = ""          # why the capture failed; the plan then runs eagerly
        self._graph: Any = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._graph is None:
            self.calls += 1
            if self.error or self.calls <= WARMUP_CALLS:
                return self.plan.run(tensors)
            try:
                self._capture(tensors)
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
                self._give_up(e)
                return self.plan.run(tensors)
        for static, t in zip(self._inputs, tensors):
            if static.data_ptr() != t.data_ptr():
                static.copy_(t)
        self._graph.replay()
        self.replays += 1
        return [t.clone() for t in self._outputs]

    def _capture(self, tensors: Sequence[torch.Tensor]) -> None:
        inputs = [t.clone() for t in tensors]  # fresh, aligned, contiguous: the graph reads these
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # torch's recipe: one more warm-up on a side stream
            self.plan.run(inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.plan.run(inputs)
        self._graph, self._inputs, self._outputs = graph, inputs, list(outputs)
        log.debug("captured @%s in a CUDA graph (%d steps)", self.name, len(self.plan.steps))

    def _give_up(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        self._graph, self._inputs, self._outputs = None, [], []
        try:  # a failed capture leaves no work behind, but make sure the stream is idle
            torch.cuda.synchronize(self.device)
        except Exception:  # noqa: BLE001 - the eager run below reports real device errors
            pass
        log.warning("tilefx: @%s could not be captured in a CUDA graph, it runs eagerly: %s "
                    "(set %s=0 to stop trying)", self.name, self.error, ENV)


def run_graphed(compiled: CompiledGraph, plan: ExecutionPlan, tensors: Sequence[torch.Tensor],
                device: Any) -> list[torch.Tensor]:
    """Run ``plan`` of ``compiled`` through its CUDA graph when ``decide`` allows one."""
    entry = compiled._graphed.get(id(plan))
    if entry is None:
        decision = decide(compiled.graph, plan, device, compiled.cuda_graphs)
        log.debug("@%s CUDA graph: %s", compiled.graph.name, decision.reason)
        entry = GraphedPlan(plan, device, compiled.graph.name) if decision.capture else decision
        compiled._graphed[id(plan)] = entry
    if isinstance(entry, GraphedPlan):
        return entry.run(tensors)
    return plan.run(tensors)


def status(compiled: Any) -> list[str]:
    """One line per plan seen on a CUDA device: captured, why not, or why it failed.
    Takes a ``CompiledGraph`` or a ``CompiledModule`` (all its signatures)."""
    if hasattr(compiled, "_cache"):  # api.CompiledModule
        return [line for e in compiled._cache.values() for line in status(e.compiled)]
    lines = []
    for entry in getattr(compiled, "_graphed", {}).values():
        if isinstance(entry, Decision):
            lines.append(f"eager: {entry.reason}")
        elif entry.error:
            lines.append(f"eager: capture failed: {entry.error}")
        elif entry.captured:
            lines.append(f"cuda graph: {entry.replays} replays")
        else:
            lines.append(f"cuda graph: warming up ({entry.calls} eager calls)")
    return lines
