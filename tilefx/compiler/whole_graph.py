"""Stage 8 of the pipeline: tuned or default schedules, decided on the whole graph.

Kernels are tuned one by one in an isolated runner, with warm caches and the
machine to themselves. In the model they run between other kernels, and a
library (torch) kernel between TVM kernels competes with TVM's still-spinning
worker threads: a ResNet whose every kernel was tuned faster ran 1.7x slower.
So the model itself decides, once: the decision is stored in the tuning
database under the graph, its input shapes and the chosen schedules, so a warm
recompile does not time the model again. Also here: the output error of opt-in
simulated quantization, measured on the example inputs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace

from tilefx.codegen.target import Target
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.records import CompileRecord, TuningDecision
from tilefx.compiler.runtime import CompiledGraph
from tilefx.compiler.session import CompileSession, KernelBuilder
from tilefx.ir.printer import print_graph
from tilefx.passes.block_quant import output_error
from tilefx.storage.database import TuningDatabase

log = logging.getLogger("tilefx.compiler")


def keep_tuning_if_it_pays(tuned: CompiledGraph, session: CompileSession, target: Target,
                           options: CompileOptions, inputs: list) -> CompiledGraph:
    """Time the whole graph with the tuned schedules and with the defaults; keep the faster."""
    t0 = time.perf_counter()
    record = tuned.record
    plain_record = CompileRecord(record.name, target=record.target)
    plain_builder = KernelBuilder(session, target, replace(options, tune_trials=0), plain_record)
    plain = CompiledGraph(tuned.graph, plain_builder, lambda bindings, plan: None,
                          cuda_graphs=options.cuda_graphs)
    key = _graph_key(tuned.graph, record, inputs)
    with TuningDatabase(options.tune_db) as db:
        known = db.graph_decision(key, target.key())
        if known is None:
            decision = _time_tuned_and_plain(tuned, plain, inputs, target)
            db.set_graph_decision(key, target.key(), decision.keep_tuned, decision.tuned_ms,
                                  decision.default_ms)
        else:
            decision = TuningDecision(*known, from_database=True)
    record.tuning_decision = decision
    log.info("tilefx: %s", decision.line())
    if not decision.keep_tuned:
        plain(*inputs)  # build now, not on the user's first call
        record.kernels = plain_record.kernels  # what runs now
        plain.record = record
    record.add_time("tuning decision", time.perf_counter() - t0)
    return tuned if decision.keep_tuned else plain


def _time_tuned_and_plain(tuned: CompiledGraph, plain: CompiledGraph, inputs: list,
                          target: Target) -> TuningDecision:
    timer = target.backend().timer()
    for g in (tuned, plain):  # build and warm up both
        g(*inputs)
        g(*inputs)
    tuned_ms, plain_ms = [], []
    for _ in range(3):  # interleaved rounds, so a change of load hits both alike
        tuned_ms.append(timer(tuned, inputs))
        plain_ms.append(timer(plain, inputs))
    t, p = min(tuned_ms), min(plain_ms)
    return TuningDecision(t <= p, t, p)


def _graph_key(graph: object, record: CompileRecord, inputs: list) -> str:
    """What the whole-graph decision depends on: the graph, the input shapes and the tuned
    schedule of every kernel (a retuned kernel asks again)."""
    h = hashlib.sha256(print_graph(graph).encode())
    h.update(repr([(tuple(t.shape), str(t.dtype)) for t in inputs]).encode())
    for k in record.kernels:
        h.update(f"|{k.name}:{k.bindings}:{k.schedule}".encode())
    return h.hexdigest()


def note_quant_error(compiled: CompiledGraph, record: CompileRecord, inputs: list) -> None:
    """The relative output error simulated quantization causes on the example inputs."""
    try:
        err = output_error(record.frontend_ir, compiled(*inputs), inputs)
    except Exception as e:  # the note is a courtesy; the compiled model is fine
        record.notes.append(f"quantize (simulated): output error not measured ({e})")
        return
    log.warning("quantize (simulated): relative output error %.4g on the example inputs", err)
    record.notes.append(f"quantize (simulated): relative output error {err:.4g} on the example inputs")
