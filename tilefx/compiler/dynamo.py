"""The ``torch.compile`` backend: ``torch.compile(model, backend="tilefx")``.

Dynamo splits the user's program into graphs at every graph break (a
``print``, a data-dependent Python branch...) and calls the backend once per
graph with the graph and its example inputs. Those inputs include the
parameters and buffers of inlined modules; ``capture_dynamo`` bakes them in as
constants (so mutating a weight after compiling needs a recompile) and we run
the rest through the pipeline. The callable we return takes all of dynamo's flat
inputs and returns what the graph returns. In-place updates in the graph
(``self.n.add_(1)``, a KV-cache write, BatchNorm's running stats in training
mode, ``x.add_(1)``) are kept: the compiled graph returns the new values and
``run`` copies them into dynamo's tensors (``mutation.py``).

Options come as ``torch.compile(..., options={"target": "cpu", "strict": True})``.
A graph that fails to compile runs eagerly with a warning (the program still
works); ``strict`` (or ``TILEFX_STRICT=1``) raises instead, which tests use.
``compiled_graphs()`` lists the compiled graphs still in use, for reports and tests
(weak references: a graph dynamo dropped is not kept alive by this list). Options may
name a ``session`` (a ``CompileSession``) to share built kernels between graphs;
each graph gets its own otherwise.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from typing import Any, Callable, Sequence

import torch

from tilefx import settings
from tilefx.compiler.capture import capture_dynamo
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import compile_graph
from tilefx.compiler.session import CompileSession
from tilefx.compiler.mutation import write_back

log = logging.getLogger("tilefx.dynamo")

# Every graph compiled by the backend in this process, oldest first.
_COMPILED: list[weakref.ref] = []  # weak: dynamo owns the graphs it compiled
_COUNT = itertools.count()


def compiled_graphs() -> list[Any]:
    """The ``CompiledGraph`` of each dynamo graph compiled so far (``.record`` has details)."""
    live = [g for g in (r() for r in _COMPILED) if g is not None]
    _COMPILED[:] = [weakref.ref(g) for g in live]
    return live


def reset() -> None:
    """Start the list afresh (a test that counts its own graphs); nothing else depends on it."""
    _COMPILED.clear()


def tilefx_backend(gm: Any, example_inputs: Sequence[Any], **kwargs: Any) -> Callable[..., Any]:
    options = dict(kwargs.get("options") or {})
    strict = bool(options.pop("strict", False)) or settings.strict()
    try:
        return _compile(gm, example_inputs, options, strict)
    except Exception as e:
        if strict:
            raise
        log.warning("tilefx: a dynamo graph failed to compile and runs eagerly: %s: %s",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return gm.forward


def _compile(gm: Any, example_inputs: Sequence[Any], options: dict, strict: bool
             ) -> Callable[..., Any]:
    t0 = time.perf_counter()
    with torch.no_grad():
        captured = capture_dynamo(gm, list(example_inputs))
    capture_seconds = time.perf_counter() - t0
    copts = CompileOptions(target=options.pop("target", "cpu"), passes=options.pop("passes", None),
                           strict=strict)
    session = options.pop("session", None) or CompileSession()
    if options:
        raise TypeError(f"tilefx backend: unknown option(s) {sorted(options)}; "
                        "known: target, passes, strict, session")
    positions = captured.input_positions
    example = [example_inputs[i] for i in positions]
    compiled = compile_graph(captured, copts, session, name=f"dynamo_graph_{next(_COUNT)}",
                             example_inputs=tuple(example))
    compiled.record.seconds = {"capture": capture_seconds, **compiled.record.seconds}
    _COMPILED.append(weakref.ref(compiled))

    mutations = captured.mutations

    def run(*args: Any) -> Any:
        inputs = [args[i] for i in positions]
        outs = compiled(*inputs)
        # in-place updates of buffers and inputs land in dynamo's (the caller's) tensors
        return captured.unflatten_outputs(write_back(mutations, inputs, outs))

    run.tilefx_compiled = compiled  # type: ignore[attr-defined]
    return run
