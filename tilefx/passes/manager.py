"""The pass manager: named ``Graph -> Graph`` passes run in order, with instruments.

A pass is a plain function decorated with ``@graph_pass("dce")``; the decorator
wraps it in a ``GraphPass`` (a name, the function, and bound keyword options),
so a pipeline is just a list of passes. ``PassManager`` runs the list and calls
each instrument before and after every pass (after TVM's ``PassInstrument`` and
hidet's ``PassContext`` hooks):

- ``TimingInstrument``: seconds per pass, logged at debug level,
- ``VerifyInstrument``: ``ir.verifier.verify`` after each pass; on by
  ``verify=True`` or ``TILEFX_VERIFY=1`` (tests turn it on),
- ``PrintAfterInstrument``: ``TILEFX_PRINT_AFTER=fusion`` (comma list, or
  ``all``) prints the IR after those passes under a header
  ``# after fusion (took 3 ms)``,
- ``TraceInstrument``: keeps ``(pass name, graph)`` after each pass, for
  ``tilefx inspect``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TextIO

from tilefx import settings
from tilefx.ir.graph import Graph
from tilefx.ir.printer import print_graph
from tilefx.ir.verifier import verify

log = logging.getLogger("tilefx.passes")

PassFn = Callable[..., Graph]


@dataclass(frozen=True)
class GraphPass:
    """A named graph transformation; ``kwargs`` are options bound by the pipeline."""

    name: str
    fn: PassFn
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, graph: Graph) -> Graph:
        return self.fn(graph, **dict(self.kwargs))

    def bind(self, **options: Any) -> GraphPass:
        return GraphPass(self.name, self.fn, tuple(sorted({**dict(self.kwargs), **options}.items())))


def graph_pass(name: str) -> Callable[[PassFn], GraphPass]:
    """Decorator: ``@graph_pass("dce")`` turns ``fn(graph, **options)`` into a ``GraphPass``."""
    def wrap(fn: PassFn) -> GraphPass:
        return GraphPass(name, fn)
    return wrap


class Instrument(Protocol):
    def before_pass(self, name: str, graph: Graph) -> None: ...

    def after_pass(self, name: str, graph: Graph, seconds: float) -> None: ...


@dataclass
class TimingInstrument:
    timings: list[tuple[str, float]] = field(default_factory=list)

    def before_pass(self, name: str, graph: Graph) -> None:
        pass

    def after_pass(self, name: str, graph: Graph, seconds: float) -> None:
        self.timings.append((name, seconds))
        log.debug("pass %s took %.1f ms (%d ops)", name, seconds * 1e3, len(graph.ops))


class PassVerificationError(RuntimeError):
    """The graph a pass produced does not verify; names the pass at fault."""


class VerifyInstrument:
    def before_pass(self, name: str, graph: Graph) -> None:
        pass

    def after_pass(self, name: str, graph: Graph, seconds: float) -> None:
        try:
            verify(graph)
        except Exception as e:
            raise PassVerificationError(f"IR invalid after pass {name!r}: {e}") from e


@dataclass
class PrintAfterInstrument:
    """Prints the IR after the named passes (``{"all"}`` = every pass)."""

    names: frozenset[str]
    stream: TextIO | None = None  # None = sys.stderr at print time (so pytest capsys sees it)

    def before_pass(self, name: str, graph: Graph) -> None:
        pass

    def after_pass(self, name: str, graph: Graph, seconds: float) -> None:
        if "all" in self.names or name in self.names:
            out = self.stream or sys.stderr
            out.write(f"# after {name} (took {seconds * 1e3:.0f} ms)\n{print_graph(graph)}\n")


@dataclass
class TraceInstrument:
    trace: list[tuple[str, Graph]] = field(default_factory=list)

    def before_pass(self, name: str, graph: Graph) -> None:
        pass

    def after_pass(self, name: str, graph: Graph, seconds: float) -> None:
        self.trace.append((name, graph))


def verify_requested(verify: bool | None = None) -> bool:
    """An explicit ``verify`` wins; else ``TILEFX_VERIFY=1`` turns verification on."""
    return verify if verify is not None else settings.verify_passes()


def env_instruments(verify: bool | None = None) -> list[Instrument]:
    """The instruments the environment asks for: TILEFX_VERIFY, TILEFX_PRINT_AFTER."""
    out: list[Instrument] = [TimingInstrument()]
    if verify_requested(verify):
        out.append(VerifyInstrument())
    names = settings.print_after()
    if names:
        out.append(PrintAfterInstrument(names))
    return out


class PassManager:
    def __init__(self, passes: Sequence[GraphPass], instruments: Sequence[Instrument] | None = None,
                 *, verify: bool | None = None) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments) if instruments is not None else env_instruments(verify)
        if verify_requested(verify) and not any(isinstance(i, VerifyInstrument) for i in self.instruments):
            self.instruments.append(VerifyInstrument())

    def run(self, graph: Graph) -> Graph:
        for p in self.passes:
            for inst in self.instruments:
                inst.before_pass(p.name, graph)
            start = time.perf_counter()
            graph = p(graph)
            seconds = time.perf_counter() - start
            for inst in self.instruments:
                inst.after_pass(p.name, graph, seconds)
        return graph

    def __call__(self, graph: Graph) -> Graph:
        return self.run(graph)
