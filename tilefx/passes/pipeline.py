"""The optimization pipeline: one line per pass, read top to bottom.

``optimize(graph, options)`` is what the compiler driver calls;
``optimize_with_trace`` also returns the graph after each pass (for
``tilefx inspect``). Options are a frozen record passed explicitly, never read
from globals; the environment only controls instruments (``TILEFX_VERIFY``,
``TILEFX_PRINT_AFTER``, see ``manager``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tilefx.ir.graph import Graph
from tilefx.passes.canonicalize import canonicalize
from tilefx.passes.cleanup import cse, dce
from tilefx.passes.fold import fold_batch_norm, fold_constants
from tilefx.passes.fusion import fuse
from tilefx.passes.manager import GraphPass, Instrument, PassManager, TraceInstrument, env_instruments


@dataclass(frozen=True)
class PassOptions:
    fuse: bool = True
    decompose_attention: bool = True  # False keeps `attention` whole (its own kernel)
    fold_constants: bool = True
    verify: bool | None = None  # None: TILEFX_VERIFY decides


def pipeline(options: PassOptions | None = None) -> list[GraphPass]:
    o = options or PassOptions()
    passes = [
        canonicalize.bind(decompose_attention=o.decompose_attention),  # batch_norm -> x*s+t, attention -> softmax
        fold_constants if o.fold_constants else None,                   # all-const ops -> new consts
        fold_batch_norm if o.fold_constants else None,                  # conv [+b] * s -> conv(W*s) [+b*s]
        cse,                                                            # equal ops and equal weights once
        dce,                                                            # unused ops and weights dropped
        fuse if o.fuse else None,                                       # ops -> kernel ops
    ]
    return [p for p in passes if p is not None]


def optimize(graph: Graph, options: PassOptions | None = None,
             instruments: list[Instrument] | None = None) -> Graph:
    options = options or PassOptions()
    if instruments is None:
        instruments = env_instruments(options.verify)
    return PassManager(pipeline(options), instruments, verify=options.verify).run(graph)


def optimize_with_trace(graph: Graph, options: PassOptions | None = None) -> tuple[Graph, list[tuple[str, Graph]]]:
    options = options or PassOptions()
    trace = TraceInstrument()
    out = optimize(graph, options, env_instruments(options.verify) + [trace])
    return out, trace.trace
