"""The driver: runs the whole pipeline on one captured graph and records it.

    captured --frontend--> IR --passes--> kernels + fallbacks --codegen--> CompiledGraph

``compile_graph`` lowers and optimizes once; kernels are built lazily by the
runtime for each concrete binding of the symbolic dims (a static graph has one
binding, a ``dynamic=True`` graph one per batch size seen). Kernels are
memoized in-process by their structure, so a model that repeats a block (a
ResNet stage, a transformer layer) builds each distinct kernel once; the TVM
backend's disk cache makes a rebuild in a new process cheap too.

Everything that happened is kept in a ``CompileRecord`` (IR after the frontend
and after the passes, kernels with their kind, fused ops and schedule,
fallbacks with their reasons, timings) so ``report()`` and ``tilefx inspect``
can show it. A kernel that fails to build does not fail the compile: it runs
in the reference interpreter and the record says why (``strict=True`` raises
instead). Every newly built kernel is checked once against the reference
before it is used (``check.py``); one that computes a wrong result runs in the
reference interpreter too, reported, and is never built for that schedule again.
"""

from __future__ import annotations

import re
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

import sympy

from tilefx.compiler.check import BuildChecker, CheckOutcome, checks_enabled
from tilefx.compiler.runtime import CompiledGraph, InterpretedKernel, KernelFn
from tilefx.ir.graph import Graph, Op
from tilefx.ir.identity import fused_op_names, kernel_key, kernel_symbols

if TYPE_CHECKING:
    from tilefx.codegen.target import Target

log = logging.getLogger("tilefx.driver")


@dataclass(frozen=True)
class CompileOptions:
    target: str | Target = "cpu"
    passes: Any = None        # tilefx.passes.PassOptions, None = the defaults
    tune_trials: int | str = 0  # autotune each kernel: N trials, or a time budget "30s"
    tune_db: str | None = None  # tuning database path (None: $TILEFX_CACHE_DIR/tuning.db)
    strict: bool = False      # raise on a kernel build failure instead of interpreting it
    cuda_graphs: bool | None = None  # replay static-shape cuda graphs; None: TILEFX_CUDA_GRAPHS
    prune: float = 0.0        # opt-in magnitude pruning (lossy, reported): fraction zeroed
    prune_block: tuple[int, int] = (1, 1)  # pruned together: (bk, bn) blocks of W[K, N]
    fusion_check: bool = False  # cpu: the latency model (measuring when unsure) vets each fusion
    quantize: Any = None      # opt-in simulated block quantization: "int4", "int8:16", BlockQuant (lossy)
    check_builds: bool | None = None  # run new kernels once vs the reference; None: TILEFX_CHECK_BUILDS

    def resolved_target(self) -> Target:
        from tilefx.codegen.target import Target

        return self.target if isinstance(self.target, Target) else Target.parse(self.target)


@dataclass
class KernelRecord:
    name: str
    kind: str
    fused_ops: tuple[str, ...]
    schedule: str = ""
    backend: str = ""          # "tvm", or "interpreter" when the build failed
    error: str = ""
    build_seconds: float = 0.0
    bindings: str = ""
    source: str = ""           # lowered code, kept only when asked for
    check: str = ""            # "" (passed, or checks off), "unchecked: why", "rejected...: why"
    check_seconds: float = 0.0  # of build_seconds, spent checking it against the reference


@dataclass
class FallbackRecord:
    target: str
    reason: str
    nodes: tuple[str, ...] = ()


@dataclass
class CompileRecord:
    name: str
    target: str = ""
    frontend_ir: Graph | None = None
    optimized_ir: Graph | None = None
    pass_trace: list[tuple[str, Graph]] = field(default_factory=list)
    kernels: list[KernelRecord] = field(default_factory=list)
    fallbacks: list[FallbackRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    buffers: list[str] = field(default_factory=list)         # buffer plan per binding
    tuning: list[Any] = field(default_factory=list)          # autotune.KernelTuneResult
    tuning_check: str = ""  # tuned vs default schedules, timed on the whole graph
    notes: list[str] = field(default_factory=list)  # per-layer pass decisions (sparsity)
    fusion_decisions: list[Any] = field(default_factory=list)  # cost_model.advisor.FusionDecision

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def report(self) -> str:
        lines = [f"tilefx compile of {self.name!r} for {self.target}"]
        total = sum(self.seconds.values())
        times = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        lines.append(f"compile time: {total:.2f}s ({times})")
        fused = [k for k in self.kernels if len(k.fused_ops) > 1]
        lines.append(f"kernels: {len(self.kernels)} ({len(fused)} fusions)")
        for k in self.kernels:
            extra = f" [{k.bindings}]" if k.bindings else ""
            if k.check.startswith("rejected"):
                status = k.check
            elif k.backend == "interpreter":
                status = f"interpreter: {k.error}"
            else:
                status = k.backend + (f", {k.check}" if k.check else "")
            lines.append(f"  {k.name}: {k.kind} <- {' + '.join(k.fused_ops)} "
                         f"({status}, {k.build_seconds:.2f}s){extra}")
            if k.schedule:
                lines.append(f"      schedule {k.schedule}")
        lines.append(f"fallbacks: {len(self.fallbacks)}")
        for f in self.fallbacks:
            nodes = f" (nodes {', '.join(f.nodes)})" if f.nodes else ""
            lines.append(f"  {f.target} runs in PyTorch: {f.reason}{nodes}")
        for b in self.buffers:
            lines.append(f"buffers: {b}")
        if self.tuning:
            from tilefx.autotune.tuner import format_summary

            lines += ["tuning:", format_summary(self.tuning)]
        if self.tuning_check:
            lines.append(f"tuning check: {self.tuning_check}")
        lines += self.notes
        return "\n".join(lines)


# In-process memo of built kernels: (kernel key, target, bindings) -> built kernel.
_BUILT: OrderedDict[tuple, Any] = OrderedDict()
_BUILT_LIMIT = 1024


def _tvm(name: str) -> Any:
    """``build_kernel`` / ``default_schedule`` of the TVM backend (imports TVM)."""
    import tilefx.codegen.tvm as backend

    if not hasattr(backend, name):
        from tilefx.codegen.tvm import kernel, schedules  # noqa: F401 - older layout

        return getattr(kernel, name, None) or getattr(schedules, name)
    return getattr(backend, name)


def _backend(target: Target, name: str) -> Any:
    """``build_kernel`` / ``default_schedule`` of the target's backend: Triton for
    cuda (it never imports TVM), else TVM."""
    if target.kind == "cuda":
        import tilefx.codegen.triton as triton_backend

        return getattr(triton_backend, name)
    return _tvm(name)


class WrongKernelError(RuntimeError):
    """A newly built kernel disagrees with the reference (raised under ``strict=True``)."""


def _build_one(op: Op, target: Target, bindings: Mapping[sympy.Symbol, int],
               schedule: Any = None, *, op_key: str | None = None) -> Any:
    build_kernel = _backend(target, "build_kernel")

    used = kernel_symbols(op)
    bindings = {s: v for s, v in bindings.items() if s in used}
    key = (op_key or kernel_key(op), target.key(), tuple(sorted((s.name, v) for s, v in bindings.items())),
           str(schedule))
    built = _BUILT.get(key)
    if built is not None:
        _BUILT.move_to_end(key)
        return built
    if schedule is not None and schedule.get("extern") and target.kind == "cuda":
        from tilefx.codegen.triton.measure import resolve

        schedule = resolve(schedule)  # the Triton template's library impl: what was measured
    if schedule is not None and schedule.get("extern"):  # tuning chose the library call
        from tilefx.codegen.measure import LibraryKernel

        built = LibraryKernel(op, {s.name: v for s, v in bindings.items()})
    elif bindings:
        built = build_kernel(op, target, schedule, bindings=dict(bindings))
    else:
        built = build_kernel(op, target, schedule)
    _BUILT[key] = built
    if len(_BUILT) > _BUILT_LIMIT:
        _BUILT.popitem(last=False)
    return built


def _fallback_records(fallbacks: Any) -> list[FallbackRecord]:
    """Normalize the frontend's fallback infos (read by attribute, leniently)."""
    out = []
    for f in fallbacks or ():
        target = str(getattr(f, "target", None) or getattr(f, "op", None) or f)
        reason = str(getattr(f, "reason", "") or "no lowering")
        nodes = getattr(f, "nodes", None) or getattr(f, "node", None) or ()
        nodes = (nodes,) if isinstance(nodes, str) else tuple(str(n) for n in nodes)
        out.append(FallbackRecord(target, reason, nodes))
    return out


def lower_and_optimize(captured: Any, options: CompileOptions, record: CompileRecord,
                       trace: bool = False) -> Graph:
    """Frontend then passes; fills the IR, fallbacks and timings of ``record``."""
    from tilefx.compiler.frontend import lower_to_ir

    t0 = time.perf_counter()
    lowered = lower_to_ir(captured, name=re.sub(r"\W", "_", record.name) or "main")
    record.add_time("frontend", time.perf_counter() - t0)
    record.frontend_ir = lowered.graph
    record.fallbacks = _fallback_records(lowered.fallbacks)

    t0 = time.perf_counter()
    from tilefx.compiler.pass_setup import configure_passes

    setup = configure_passes(options)
    passes = setup.passes
    if trace:
        from tilefx.passes import optimize_with_trace

        graph, record.pass_trace = optimize_with_trace(lowered.graph, passes)
    else:
        from tilefx.passes import optimize

        graph = optimize(lowered.graph, passes)
    record.notes += setup.notes()
    if setup.advisor is not None:
        record.fusion_decisions = list(setup.advisor.decisions)
    record.add_time("passes", time.perf_counter() - t0)
    record.optimized_ir = graph
    return graph


def default_schedule_text(op: Op, target: Target) -> str:
    try:
        return str(_backend(target, "default_schedule")(op, target))
    except Exception as e:  # the schedule is only shown, never needed here
        return f"<no default schedule: {e}>"


class KernelBuilder:
    """The runtime's kernel builder: TVM (Triton on cuda), memoized, checked, recorded.

    A kernel that fails to build or to pass its check runs in the reference
    interpreter. ``close()`` releases the tuning database the checks use (a later
    build, e.g. for a new batch size, opens it again).
    """

    def __init__(self, target: Target, options: CompileOptions, record: CompileRecord,
                 keep_source: bool = False) -> None:
        self.target, self.options, self.record = target, options, record
        self.keep_source = keep_source
        self.checker = BuildChecker(target, options.tune_db) \
            if checks_enabled(options.check_builds) else None

    def __call__(self, op: Op, bindings: Mapping[sympy.Symbol, int]) -> KernelFn:
        used = kernel_symbols(op)
        bound = {s: v for s, v in bindings.items() if s in used}
        kr = KernelRecord(op.attr("name"), op.attr("kind"), fused_op_names(op),
                          bindings=", ".join(f"{s}={v}" for s, v in bound.items()))
        t0 = time.perf_counter()
        try:
            fn = self._build(op, bound, kr)
        except Exception as e:
            if self.options.strict:
                raise
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            log.warning("tilefx: kernel %s (%s) failed to build and will run in the "
                        "reference interpreter: %s", kr.name, "+".join(kr.fused_ops), msg)
            kr.backend, kr.error = "interpreter", msg
            fn = InterpretedKernel(op, msg)
        kr.build_seconds = time.perf_counter() - t0
        self.record.kernels.append(kr)
        self.record.add_time("codegen", kr.build_seconds - kr.check_seconds)
        if kr.check_seconds:
            self.record.add_time("check", kr.check_seconds)
        return fn

    def _build(self, op: Op, bound: dict[sympy.Symbol, int], kr: KernelRecord) -> KernelFn:
        target, options = self.target, self.options
        schedule = None
        if options.tune_trials:  # autotune (or read the tuning database) first
            from tilefx.autotune.tuner import tuned_schedule

            schedule, tuned = tuned_schedule(op, target, bound, options)
            if tuned is not None:
                self.record.tuning.append(tuned)
        op_key = kernel_key(op)
        if self.checker is not None:  # found wrong before: not even built
            known = self.checker.known_bad(op_key, bound, schedule)
            if known is not None:
                return self._rejected(op, kr, known)
        built = _build_one(op, target, bound, schedule, op_key=op_key)
        kr.backend = "extern (torch)" if schedule is not None and schedule.get("extern") \
            else "triton" if target.kind == "cuda" else "tvm"
        sched = getattr(built, "schedule", None)
        kr.schedule = str(sched) if sched is not None else ""
        if getattr(built, "from_cache", False):
            kr.backend = "tvm, disk cache"
        if self.keep_source:
            kr.source = str(getattr(built, "lowered", "") or getattr(built, "source", ""))
        if self.checker is not None:
            t0 = time.perf_counter()
            outcome = self.checker.check(op, op_key, bound, built, schedule)
            kr.check, kr.check_seconds = outcome.note, time.perf_counter() - t0
            if outcome.rejected:
                return self._rejected(op, kr, outcome)
        return built

    def _rejected(self, op: Op, kr: KernelRecord, outcome: CheckOutcome) -> KernelFn:
        """A kernel that computed a wrong result: PyTorch runs its body instead."""
        if self.options.strict:
            raise WrongKernelError(f"kernel {kr.name} ({'+'.join(kr.fused_ops)}): {outcome.note}")
        log.warning("tilefx: kernel %s (%s) %s%s", kr.name, "+".join(kr.fused_ops), outcome.note,
                    f" (schedule {kr.schedule})" if kr.schedule else "")
        kr.backend, kr.error, kr.check = "interpreter", outcome.detail, outcome.note
        return InterpretedKernel(op, outcome.note)

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()


def make_builder(target: Target, options: CompileOptions, record: CompileRecord,
                 keep_source: bool = False) -> KernelBuilder:
    """The runtime's kernel builder (see ``KernelBuilder``)."""
    return KernelBuilder(target, options, record, keep_source)


def compile_graph(captured: Any, target: str | Target | None = None,
                  options: CompileOptions | None = None, *, name: str | None = None,
                  example_inputs: tuple | None = None) -> CompiledGraph:
    """Lower, optimize and (lazily, per binding) build ``captured``.

    With ``example_inputs`` the kernels for their sizes are built now, so the
    compile time is paid here and not on the first call.
    """
    options = options or CompileOptions()
    tgt = options.resolved_target() if target is None else \
        CompileOptions(target=target).resolved_target()
    record = CompileRecord(name or getattr(captured, "name", None) or "main",
                           target=f"{tgt.kind}:{tgt.mcpu}")
    graph = lower_and_optimize(captured, replace(options, target=tgt), record)

    def on_specialize(bindings: dict, plan: Any) -> None:
        where = ", ".join(f"{s}={v}" for s, v in bindings.items()) or "static"
        record.buffers.append(f"{where}: {plan.buffer_stats}")

    builder = make_builder(tgt, options, record)
    compiled = CompiledGraph(graph, builder, on_specialize, cuda_graphs=options.cuda_graphs)
    compiled.record = record
    if example_inputs is not None:
        from tilefx.compiler.runtime import bind_symbols

        inputs = [t.contiguous() for t in example_inputs]
        compiled.plan_for(bind_symbols(graph, inputs), inputs[0].device if inputs else None)
        if options.tune_trials:  # tuning happened while building: stop its processes
            from tilefx.autotune.tuner import close_sessions

            close_sessions()
            compiled = _keep_tuning_if_it_pays(compiled, graph, tgt, options, inputs)
        if options.quantize is not None:  # lossy: say how much, on the inputs we were given
            _note_quant_error(compiled, record, inputs)
        builder.close()  # built: the checks are done with the database for now
    log.info("tilefx: compiled %s: %d kernels, %d fallbacks in %.2fs", record.name,
             len(record.kernels), len(record.fallbacks), sum(record.seconds.values()))
    return compiled



def _note_quant_error(compiled: CompiledGraph, record: CompileRecord, inputs: list) -> None:
    from tilefx.passes.block_quant import output_error

    try:
        err = output_error(record.frontend_ir, compiled(*inputs), inputs)
    except Exception as e:  # the note is a courtesy; the compiled model is fine
        record.notes.append(f"quantize (simulated): output error not measured ({e})")
        return
    log.warning("quantize (simulated): relative output error %.4g on the example inputs", err)
    record.notes.append(f"quantize (simulated): relative output error {err:.4g} on the example inputs")


def _median_ms(fn: Any, inputs: list, repeats: int = 9) -> float:
    import statistics

    import torch

    # GPU kernels run asynchronously: time until they are done, not until they are queued
    on_gpu = any(getattr(t, "is_cuda", False) for t in inputs)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*inputs)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _keep_tuning_if_it_pays(tuned: CompiledGraph, graph: Graph, target: Target,
                            options: CompileOptions, inputs: list) -> CompiledGraph:
    """Time the whole graph with the tuned schedules and with the defaults; keep the faster.

    Kernels are tuned one by one in an isolated runner, with warm caches and the machine to
    themselves. In the model they run between other kernels, and a library (torch) kernel
    between TVM kernels competes with TVM's still-spinning worker threads: a ResNet whose
    every kernel was tuned faster ran 1.7x slower. So the model itself decides, once: the
    decision is stored in the tuning database under the graph, its input shapes and the
    chosen schedules, so a warm recompile does not time the model again.
    """
    from tilefx.storage.database import TuningDatabase

    record = tuned.record
    plain_record = CompileRecord(record.name, target=record.target)
    plain_builder = make_builder(target, replace(options, tune_trials=0), plain_record)
    plain = CompiledGraph(graph, plain_builder, lambda bindings, plan: None,
                          cuda_graphs=options.cuda_graphs)
    key = _graph_key(graph, record, inputs)
    with TuningDatabase(options.tune_db) as db:
        known = db.graph_decision(key, target.key())
        if known is None:
            keep_tuned, t, p = _time_tuned_and_plain(tuned, plain, inputs)
            db.set_graph_decision(key, target.key(), keep_tuned, t, p)
        else:
            keep_tuned, t, p = known
    record.tuning_check = (f"whole graph on the example inputs: tuned {t:.3f} ms, default "
                           f"schedules {p:.3f} ms -> kept the "
                           f"{'tuned' if keep_tuned else 'default'} schedules"
                           + (" (decided earlier, from the tuning database)" if known else ""))
    log.info("tilefx: %s", record.tuning_check)
    if keep_tuned:
        plain_builder.close()
        return tuned
    plain(*inputs)  # build now, not on the user's first call
    plain_builder.close()
    record.kernels = plain_record.kernels  # what runs now
    plain.record = record
    return plain


def _time_tuned_and_plain(tuned: CompiledGraph, plain: CompiledGraph,
                          inputs: list) -> tuple[bool, float, float]:
    for g in (tuned, plain):  # build and warm up both
        g(*inputs)
        g(*inputs)
    tuned_ms, plain_ms = [], []
    for _ in range(3):  # interleaved rounds, so a change of load hits both alike
        tuned_ms.append(_median_ms(tuned, inputs))
        plain_ms.append(_median_ms(plain, inputs))
    t, p = min(tuned_ms), min(plain_ms)
    return t <= p, t, p


def _graph_key(graph: Graph, record: CompileRecord, inputs: list) -> str:
    """What the whole-graph decision depends on: the graph, the input shapes and the tuned
    schedule of every kernel (a retuned kernel asks again)."""
    import hashlib

    from tilefx.ir.printer import print_graph

    h = hashlib.sha256(print_graph(graph).encode())
    h.update(repr([(tuple(t.shape), str(t.dtype)) for t in inputs]).encode())
    for k in record.kernels:
        h.update(f"|{k.name}:{k.bindings}:{k.schedule}".encode())
    return h.hexdigest()
