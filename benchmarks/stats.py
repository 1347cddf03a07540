"""Read what a ``tilefx.compile`` result says about itself: kernels, fallbacks, compile time.

The compiled module keeps one ``CompileRecord`` per captured graph (the
driver's ``record``; a dynamo compile may capture several graphs). This file
is the one place the benchmarks and the zoo tests look into it, so a change of
the runtime's attributes touches only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CompileStats:
    kernels: int          # kernels built (per input signature seen so far)
    interpreted: int      # of those, kernels whose build failed and run in the reference interpreter
    fallbacks: int        # PyTorch ops not lowered to the IR
    compile_seconds: float
    problems: tuple[str, ...]  # one line per fallback or interpreted kernel, for error messages

    def __str__(self) -> str:
        interp = f" ({self.interpreted} interpreted)" if self.interpreted else ""
        return f"{self.kernels} kernels{interp}, {self.fallbacks} fallbacks"


def compile_records(compiled: Any) -> list[Any]:
    """Every CompileRecord reachable from a compiled module, graph or dynamo result."""
    for attr in ("records", "compile_records"):
        found = getattr(compiled, attr, None)
        if callable(found):
            found = found()
        if found:
            return list(found)
    for attr in ("record", "compiled", "graph_module", "_compiled"):
        inner = getattr(compiled, attr, None)
        if inner is None or inner is compiled:
            continue
        if hasattr(inner, "kernels") and hasattr(inner, "fallbacks"):
            return [inner]
        nested = compile_records(inner)
        if nested:
            return nested
    return []


def compile_stats(compiled: Any) -> CompileStats:
    records = compile_records(compiled)
    if not records:
        raise AttributeError(f"cannot find the compile records of {type(compiled).__name__}: "
                             "update benchmarks/stats.py for the runtime's attributes")
    kernels = [k for r in records for k in r.kernels]
    fallbacks = [f for r in records for f in r.fallbacks]
    problems = [f"fallback {f.target}: {f.reason}" for f in fallbacks]
    problems += [f"kernel {k.name} ({'+'.join(k.fused_ops)}) interpreted: {k.error}"
                 for k in kernels if getattr(k, "backend", "tvm") == "interpreter"]
    seconds = sum(sum(r.seconds.values()) for r in records)
    interpreted = sum(1 for k in kernels if getattr(k, "backend", "tvm") == "interpreter")
    return CompileStats(len(kernels), interpreted, len(fallbacks), seconds, tuple(problems))


def steady_malloc() -> None:
    """Fix glibc's mmap/trim thresholds (what MALLOC_MMAP_THRESHOLD_ does).

    Measured: once TVM/LLVM has built a kernel in a process, glibc returns
    freed tensor memory to the OS, so every torch op of a few MB page-faults
    its output again (LayerNorm+GELU 512x768 5x slower). Eager runs in this
    process after tilefx compiled: without this its times would be inflated.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except OSError:
        pass
