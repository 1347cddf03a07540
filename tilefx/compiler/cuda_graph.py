"""CUDA graphs: record a compiled graph's whole execution once, replay it on every call.

The zoo's models are small: at batch 64 an MLP's kernels run for a few
microseconds each, and launching them from Python (Triton's launcher, torch's
dispatcher for library calls) costs more than running them. A
``torch.cuda.CUDAGraph`` records every launch of one ``ExecutionPlan`` once
and replays them all with one driver call, so the per-call cost becomes one
copy per input and one replay.

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
   returns the static outputs themselves (new tensor objects on the graph's
   buffers): no copy per output. That is safe because a replay only ever writes
   buffers nobody holds: each captured *instance* of the plan has its own output
   buffers, and a call replays an instance whose outputs the caller has let go
   (torch counts the references to their storage, views included). A loop
   ``out = f(x)`` still holds the last output while it makes the next, so a second
   instance is captured (sharing the first one's memory pool for everything but
   the outputs) and the two alternate; when every instance's outputs are still
   held (the caller keeps a list of them), the call runs eagerly into fresh
   outputs. The caller gets the same contract as eager execution: an output
   keeps its values until the caller drops it. (Cloning every output cost a
   device copy per call: 0.2 ms on GPT-2's 411 MB of logits.)

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
INSTANCES = 2   # captures per plan: `out = f(x)` in a loop holds one output while the next is made


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


def storage_uses(t: torch.Tensor) -> int:
    """How many tensors (views included) hold ``t``'s storage, plus a constant for the call."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


@dataclass
class Instance:
    """One capture of a plan: its graph and its own output buffers. ``held`` counts the
    storage references the instance itself keeps, so more means a caller holds an output."""

    graph: Any
    outputs: list[torch.Tensor]
    held: list[int]

    def free(self) -> bool:
        return all(storage_uses(t) <= n for t, n in zip(self.outputs, self.held))


class GraphedPlan:
    """One execution plan behind CUDA graphs: eager warm-up, one capture, then replays
    (a second capture when the caller still holds the first one's outputs)."""

    def __init__(self, plan: ExecutionPlan, device: Any, name: str = "") -> None:
        self.plan = plan
        self.device = device
        self.name = name
        self.calls = 0
        self.replays = 0
        self.eager_calls = 0     # calls after the capture that ran eagerly: every output held
        self.error = ""          # why the capture failed; the plan then runs eagerly
        self._inputs: list[torch.Tensor] = []
        self._instances: list[Instance] = []

    @property
    def captured(self) -> bool:
        return bool(self._instances)

    def run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self._instances:
            self.calls += 1
            if self.error or self.calls <= WARMUP_CALLS:
                return self.plan.run(tensors)
            try:
                self._first_capture(tensors)
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
                self._give_up(e)
                return self.plan.run(tensors)
        instance = next((i for i in self._instances if i.free()), None)
        if instance is None:
            if len(self._instances) >= INSTANCES:
                self.eager_calls += 1
                return self.plan.run(tensors)
            instance = self._add_instance()
        for static, t in zip(self._inputs, tensors):
            if static.data_ptr() != t.data_ptr():
                static.copy_(t)
        instance.graph.replay()
        self.replays += 1
        return [t.detach() for t in instance.outputs]

    def _first_capture(self, tensors: Sequence[torch.Tensor]) -> None:
        self._inputs = [t.clone() for t in tensors]  # fresh, aligned, contiguous: the graphs read these
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # torch's recipe: one more warm-up on a side stream
            self.plan.run(self._inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._add_instance()
        log.debug("captured @%s in a CUDA graph (%d steps)", self.name, len(self.plan.steps))

    def _add_instance(self) -> Instance:
        graph, outputs = self._record(self._inputs)
        # the instance's own references only (an output listed twice, two outputs on one buffer)
        instance = Instance(graph, outputs, [storage_uses(t) for t in outputs])
        self._instances.append(instance)
        return instance

    def _record(self, inputs: list[torch.Tensor]) -> tuple[Any, list[torch.Tensor]]:
        """Capture one run of the plan on ``inputs``: (graph, its output tensors). Later
        instances share the first one's memory pool: their intermediates may reuse its
        freed blocks (the graphs never run at once), never its outputs (still held)."""
        pool = self._instances[0].graph.pool() if self._instances else None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = self.plan.run(inputs)
        return graph, list(outputs)

    def _give_up(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        self._inputs, self._instances = [], []
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
            eager = f", {entry.eager_calls} eager (outputs of every capture still held)" if entry.eager_calls else ""
            lines.append(f"cuda graph: {entry.replays} replays{eager}")
        else:
            lines.append(f"cuda graph: warming up ({entry.calls} eager calls)")
    return lines
