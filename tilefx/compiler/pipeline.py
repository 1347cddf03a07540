"""The pipeline: one compile, stage by stage, top to bottom.

    model + example inputs
      1 capture     torch.export / dynamo / symbolic_trace  -> captured fx graph  (capture.py)
      2 lower       one rule per aten op; the rest fall back -> IR graph           (frontend.py)
      3 optimize    the pass pipeline, with the target's hooks -> kernel ops        (passes/, pass_setup.py)
      4 assemble    buffers, kernel calls, fallbacks, guards   -> CompiledGraph      (runtime.py)
    then, per binding of the symbolic dims (now for the example inputs, later for new sizes):
      5 schedule    tuned (or read from the database) or the backend's default     (autotune/)
      6 build       the target's backend: TVM or Triton                           (codegen/)
      7 check       the new kernel against the reference; a wrong one runs in PyTorch (check.py)
      8 keep        tuned or default schedules, timed on the whole graph           (whole_graph.py)

``tilefx.compile``, the dynamo backend, ``tilefx inspect|tune|compile`` and the
artifact loader all call these functions; none rebuilds the sequence. What lives
longer than one call (built kernels, tuners, database handles) is the
``CompileSession`` passed in; what happened is the ``CompileRecord``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sympy

from tilefx.codegen.target import Target
from tilefx.compiler.capture import capture, capture_mode
from tilefx.compiler.frontend import lower_to_ir
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pass_setup import configure_passes
from tilefx.compiler.records import CompileRecord, FallbackRecord
from tilefx.compiler.runtime import CompiledGraph, bind_symbols
from tilefx.compiler.session import CompileSession, KernelBuilder
from tilefx.compiler.whole_graph import keep_tuning_if_it_pays, note_quant_error
from tilefx.ir.graph import Graph, Op
from tilefx.ir.identity import kernel_key
from tilefx.passes import optimize as run_passes
from tilefx.passes import optimize_with_trace

log = logging.getLogger("tilefx.compiler")


def compile_model(model: Any, tensors: Sequence[Any], options: CompileOptions,
                  session: CompileSession, *, dynamic: bool = False,
                  name: str | None = None) -> CompiledGraph:
    """Stages 1-8 for a model called on ``tensors``."""
    t0 = time.perf_counter()
    captured = capture_model(model, tensors, dynamic=dynamic)                    # 1
    seconds = time.perf_counter() - t0
    compiled = compile_graph(captured, options, session, name=name or model_name(model),
                             example_inputs=tuple(tensors))
    compiled.record.seconds = {"capture": seconds, **compiled.record.seconds}
    return compiled


def compile_graph(captured: Any, options: CompileOptions, session: CompileSession, *,
                  name: str | None = None, example_inputs: tuple | None = None) -> CompiledGraph:
    """Stages 2-8 for a captured graph. With ``example_inputs`` the kernels for their sizes
    are built now, so the compile time is paid here and not on the first call."""
    target = options.resolved_target()
    record = CompileRecord(name or getattr(captured, "name", None) or "main",
                           target=f"{target.kind}:{target.mcpu}")
    if example_inputs is not None:  # tune="60s": its processes start while the passes run
        session.start_tuner(target, options)
    graph = lower(captured, record)                                              # 2
    graph = optimize(graph, options, target, session, record)                    # 3
    compiled = assemble(graph, KernelBuilder(session, target, options, record),  # 4 (5-7 lazily)
                        options, record)
    if example_inputs is not None:
        inputs = [t.contiguous() for t in example_inputs]
        compiled.plan_for(bind_symbols(graph, inputs), inputs[0].device if inputs else None)
        if options.tune_trials:                                                  # 8
            session.release()  # tuning happened while building: stop its processes
            compiled = keep_tuning_if_it_pays(compiled, session, target, options, inputs)
        if options.quantize is not None:  # lossy: say how much, on the inputs we were given
            note_quant_error(compiled, record, inputs)
        session.release()  # built: the checks are done with the database for now
    log.info("tilefx: compiled %s: %d kernels, %d fallbacks, %d interpreted in %.2fs", record.name,
             len(record.kernels), len(record.fallbacks), len(record.interpreted),
             sum(record.seconds.values()))
    return compiled


# ---------------------------------------------------------------------------- the stages

def capture_model(model: Any, tensors: Sequence[Any], *, dynamic: bool = False) -> Any:
    """1: the model's fx graph on ``tensors`` (eval mode, no grad; flags restored after)."""
    with capture_mode(model):
        return capture(model, tuple(tensors), dynamic_batch=dynamic)


def lower(captured: Any, record: CompileRecord) -> Graph:
    """2: the frontend: aten ops to IR; what it cannot lower becomes fallback regions."""
    t0 = time.perf_counter()
    lowered = lower_to_ir(captured, name=re.sub(r"\W", "_", record.name) or "main")
    record.add_time("frontend", time.perf_counter() - t0)
    record.frontend_ir = lowered.graph
    record.fallbacks = [FallbackRecord(f.target, f.reason, tuple(f.nodes)) for f in lowered.fallbacks]
    return lowered.graph


def optimize(graph: Graph, options: CompileOptions, target: Target, session: CompileSession,
             record: CompileRecord, *, trace: bool = False) -> Graph:
    """3: the pass pipeline with the target backend's hooks; fills the record's decision
    lines, the fusion advisor's decisions and (``trace``) the IR after each pass."""
    t0 = time.perf_counter()
    setup = configure_passes(options, target, session)
    if trace:
        graph, record.pass_trace = optimize_with_trace(graph, setup.passes)
    else:
        graph = run_passes(graph, setup.passes)
    record.notes += setup.notes()
    if setup.advisor is not None:
        record.fusion_decisions = list(setup.advisor.decisions)
    record.add_time("passes", time.perf_counter() - t0)
    record.optimized_ir = graph
    return graph


def assemble(graph: Graph, builder: KernelBuilder, options: CompileOptions,
             record: CompileRecord) -> CompiledGraph:
    """4: the runtime: buffers, kernel calls and fallbacks in order, one plan per binding;
    each plan asks ``builder`` for its kernels (stages 5-7, session.py)."""
    def on_specialize(bindings: dict, plan: Any) -> None:
        where = ", ".join(f"{s}={v}" for s, v in bindings.items()) or "static"
        record.buffers.append(f"{where}: {plan.buffer_stats}")

    compiled = CompiledGraph(graph, builder, on_specialize, cuda_graphs=options.cuda_graphs)
    compiled.record = record
    return compiled


# ----------------------------------------------------------- pieces the CLI verbs reuse

@dataclass
class ModelKernels:
    """The distinct kernels of a model at one binding (what ``tilefx tune`` tunes)."""

    kernels: list[Op]
    bindings: dict[sympy.Symbol, int]
    target: Target
    graph: Graph
    record: CompileRecord


def model_kernels(model: Any, tensors: Sequence[Any], options: CompileOptions,
                  session: CompileSession, *, dynamic: bool = False,
                  trace: bool = False) -> ModelKernels:
    """Stages 1-3 for ``model`` on ``tensors``: its kernels, each distinct one once."""
    target = options.resolved_target()
    record = CompileRecord(model_name(model), target=f"{target.kind}:{target.mcpu}")
    graph = lower(capture_model(model, tensors, dynamic=dynamic), record)
    graph = optimize(graph, options, target, session, record, trace=trace)
    distinct: dict[str, Op] = {}
    for op in graph.ops:
        if op.name == "kernel":
            distinct.setdefault(kernel_key(op), op)
    bindings = bind_symbols(graph, [t.contiguous() for t in tensors])
    return ModelKernels(list(distinct.values()), bindings, target, graph, record)


def build_kernels(graph: Graph, bindings: Mapping[sympy.Symbol, int], builder: KernelBuilder) -> None:
    """Stages 5-7 for every kernel of ``graph`` at ``bindings`` (``tilefx inspect --source``)."""
    for op in graph.ops:
        if op.name == "kernel":
            builder(op, bindings)


def model_name(model: Any) -> str:
    return getattr(model, "__name__", None) or type(model).__name__
