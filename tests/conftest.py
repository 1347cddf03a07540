"""Test-suite wide checks of the IR contract.

Every ``Graph`` constructed while a test runs (by ``GraphBuilder.finish``,
``Graph.replace``, ``dataclasses.replace`` or a direct ``Graph(...)``: they
all go through ``Graph.__init__``, which is what we wrap) is recorded, and at
teardown each one must

- pass ``verify``, and
- survive ``print_graph`` -> ``parse_graph`` as a ``structural_equal`` graph.

So the verifier and the printer/parser round trip are exercised on every
graph the frontend, the passes and the runtime produce, not just on the IR
tests' own graphs. A test that builds broken graphs on purpose opts out with
``@pytest.mark.ir_unchecked``; ``TILEFX_IR_CHECK=0`` turns the check off.
Graphs are checked once per test (by id) and once per session (by their
text and constant shapes), so the check stays cheap.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tilefx.ir.graph import Graph

# Triton decides at each ``@triton.jit``, its own standard library's included (at ``import
# triton``), whether that function is interpreted. Without a GPU every Triton test runs under
# the interpreter, so it is on before any test module can import Triton: set later (by one
# test module or a script's --dry-run), it left the standard library compiled for a GPU and
# the kernels calling it failed ("Cannot call @triton.jit'd outside of the scope of a kernel")
# whenever an earlier module had imported Triton first.
if not os.environ.get("TRITON_INTERPRET"):
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

_MAX_GRAPHS_PER_TEST = 400
_checked_texts: set[tuple] = set()  # (IR text, constant signatures) already known good


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ir_unchecked: the test builds invalid graphs on purpose; skip the "
                   "verify + print/parse round trip of recorded graphs")


class _Recorder:
    def __init__(self) -> None:
        self.graphs: dict[int, Graph] = {}
        self.active = True

    def add(self, graph: Graph) -> None:
        if self.active and len(self.graphs) < _MAX_GRAPHS_PER_TEST:
            self.graphs.setdefault(id(graph), graph)


def _check(graph: Graph) -> str | None:
    """None if ``graph`` is fine, else what is wrong (with its IR text)."""
    from tilefx.ir.parser import parse_graph
    from tilefx.ir.printer import print_graph
    from tilefx.ir.verifier import verify

    try:
        text = print_graph(graph)
    except Exception as e:  # noqa: BLE001  (reported as a test failure below)
        return f"print_graph failed: {type(e).__name__}: {e}"
    key = (text, tuple(sorted((k, str(getattr(a, "dtype", "")), tuple(getattr(a, "shape", ())))
                              for k, a in graph.constants.items())))
    if key in _checked_texts:
        return None
    try:
        verify(graph)
    except Exception as e:  # noqa: BLE001
        return f"verify failed: {e}\n{text}"
    try:
        parsed = parse_graph(text, _all_constants(graph))
    except Exception as e:  # noqa: BLE001
        return f"parse_graph(print_graph(g)) failed: {e}\n{text}"
    from tilefx.ir.graph import structural_equal

    parsed = parsed.replace(constants=dict(graph.constants))
    if not structural_equal(parsed, graph):
        again = print_graph(parsed)
        diff = "the texts are equal" if again == text else f"reprinted:\n{again}"
        return f"print -> parse is not structurally equal ({diff})\noriginal:\n{text}"
    _checked_texts.add(key)
    return None


def _all_constants(graph: Graph) -> dict:
    """Top-level constants plus those of kernel bodies (for the parser's lookup)."""
    out = {}
    for op in graph.ops:
        if op.body is not None:
            out.update(_all_constants(op.body))
    out.update(graph.constants)
    return out


@pytest.fixture(autouse=True)
def _ir_round_trip(request: pytest.FixtureRequest) -> Iterator[None]:
    if os.environ.get("TILEFX_IR_CHECK", "1") == "0" or request.node.get_closest_marker("ir_unchecked"):
        yield
        return
    recorder = _Recorder()
    original_init = Graph.__init__

    def recording_init(self: Graph, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        recorder.add(self)

    Graph.__init__ = recording_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        Graph.__init__ = original_init  # type: ignore[method-assign]
    recorder.active = False
    problems = []
    for graph in recorder.graphs.values():
        problem = _check(graph)
        if problem is not None:
            problems.append(f"graph @{graph.name}: {problem}")
    if problems:
        pytest.fail(f"{len(problems)} graph(s) built by this test break the IR contract:\n\n"
                    + "\n\n".join(problems[:3]), pytrace=False)
