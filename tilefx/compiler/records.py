"""What a compile did, as typed records: the data ``report()`` and ``tilefx inspect`` print.

A ``CompileRecord`` holds the IR after the frontend and after the passes, one
``KernelRecord`` per built kernel (its kind, fused ops, schedule, which
implementation runs it and how its check went), the fallbacks with their
reasons, the tuning results, the whole-graph ``TuningDecision``, the passes'
decision lines and the time of each stage. Decisions are fields (enums, bools,
numbers); text is made only in ``report()``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from tilefx.autotune.budget import BudgetReport
from tilefx.autotune.tuner import KernelTuneResult, format_summary
from tilefx.cost_model.advisor import FusionDecision
from tilefx.ir.graph import Graph


class KernelImpl(enum.Enum):
    """What runs a kernel."""

    GENERATED = "generated"      # the backend's generated code (TVM, Triton)
    LIBRARY = "library"          # tuning chose the library call (torch, cuBLAS, cuDNN, SDPA)
    INTERPRETER = "interpreter"  # it failed to build or its check: its body runs in PyTorch


class CheckStatus(enum.Enum):
    """How a newly built kernel's check against the reference went."""

    OFF = "off"                  # checks turned off
    PASSED = "passed"            # now, or recorded as passed in the tuning database
    UNCHECKED = "unchecked"      # the reference could not run (the note says why)
    REJECTED = "rejected"        # a wrong result or a crash: never used


@dataclass
class KernelRecord:
    name: str
    kind: str
    fused_ops: tuple[str, ...]
    schedule: str = ""
    backend: str = ""            # the code generator's name: "tvm", "triton"
    impl: KernelImpl = KernelImpl.GENERATED
    from_disk_cache: bool = False  # loaded from the kernel cache, not compiled now
    error: str = ""              # why it runs in the interpreter
    build_seconds: float = 0.0
    bindings: str = ""
    source: str = ""             # generated code, kept only when asked for
    check: CheckStatus = CheckStatus.OFF
    check_note: str = ""         # why it is unchecked or rejected
    check_seconds: float = 0.0   # of build_seconds, spent checking it against the reference

    @property
    def interpreted(self) -> bool:
        return self.impl is KernelImpl.INTERPRETER

    def status(self) -> str:
        if self.check is CheckStatus.REJECTED:
            return self.check_note
        if self.impl is KernelImpl.INTERPRETER:
            return f"interpreter: {self.error}"
        where = {KernelImpl.GENERATED: self.backend, KernelImpl.LIBRARY: "extern (library)"}[self.impl]
        if self.from_disk_cache:
            where += ", disk cache"
        return where + (f", {self.check_note}" if self.check is CheckStatus.UNCHECKED else "")


@dataclass
class FallbackRecord:
    target: str
    reason: str
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TuningDecision:
    """Tuned vs default schedules, timed on the whole graph: which set the model keeps."""

    keep_tuned: bool
    tuned_ms: float
    default_ms: float
    from_database: bool = False  # decided by an earlier compile

    def line(self) -> str:
        return (f"whole graph on the example inputs: tuned {self.tuned_ms:.3f} ms, default "
                f"schedules {self.default_ms:.3f} ms -> kept the "
                f"{'tuned' if self.keep_tuned else 'default'} schedules"
                + (" (decided earlier, from the tuning database)" if self.from_database else ""))


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
    tuning: list[KernelTuneResult] = field(default_factory=list)
    tuning_budgets: list[BudgetReport] = field(default_factory=list)  # tune="60s": per binding
    tuning_decision: TuningDecision | None = None
    notes: list[str] = field(default_factory=list)  # one line per pass decision (sparsity, packing)
    fusion_decisions: list[FusionDecision] = field(default_factory=list)  # with fusion_check

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def interpreted(self) -> list[KernelRecord]:
        return [k for k in self.kernels if k.interpreted]

    def report(self) -> str:
        lines = [f"tilefx compile of {self.name!r} for {self.target}"]
        total = sum(self.seconds.values())
        times = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        lines.append(f"compile time: {total:.2f}s ({times})")
        fused = [k for k in self.kernels if len(k.fused_ops) > 1]
        lines.append(f"kernels: {len(self.kernels)} ({len(fused)} fusions)")
        for k in self.kernels:
            extra = f" [{k.bindings}]" if k.bindings else ""
            lines.append(f"  {k.name}: {k.kind} <- {' + '.join(k.fused_ops)} "
                         f"({k.status()}, {k.build_seconds:.2f}s){extra}")
            if k.schedule:
                lines.append(f"      schedule {k.schedule}")
        # a kernel that failed to build or its check runs in PyTorch too: say so next to
        # the fallbacks, so "fallbacks: 0" never hides a model that is not compiled whole
        interpreted = [k.name for k in self.interpreted]
        lines.append(f"fallbacks: {len(self.fallbacks)}, interpreted: {len(interpreted)}"
                     + (f" ({', '.join(interpreted)} run in the reference interpreter)" if interpreted else ""))
        for f in self.fallbacks:
            nodes = f" (nodes {', '.join(f.nodes)})" if f.nodes else ""
            lines.append(f"  {f.target} runs in PyTorch: {f.reason}{nodes}")
        for b in self.buffers:
            lines.append(f"buffers: {b}")
        if self.tuning:
            lines += ["tuning:", format_summary(self.tuning)]
        lines += [f"tuning {b.line()}" for b in self.tuning_budgets]
        if self.tuning_decision is not None:
            lines.append(f"tuning check: {self.tuning_decision.line()}")
        lines += self.notes
        return "\n".join(lines)
