"""Every op-table case against eager PyTorch, on each backend:

- ``reference``: capture -> lower_to_ir -> the IR's reference interpreter;
- ``tvm``: the whole compiler (``tilefx.compile``: passes, fusion, TVM kernels).

torch.export costs ~0.5 s a call whatever the graph size, so the cases are
captured in groups: one module whose forward runs a group's cases side by side.
A case is checked against its own slice of the group's outputs. A group that
fails to capture or lower without fallbacks is redone case by case, so a
failure always names the case at fault.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from tests.ops_table import OpCase, cases
import tilefx
from tilefx.compiler.capture import capture
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.frontend import lower_to_ir
from tilefx.ir.interpreter import run_graph

CASES = cases()
GROUP_SIZE = 16
CAPTURE_SEED, CHECK_SEED = 0, 1  # the graph is checked on inputs it was not captured with


class _Group(nn.Module):
    def __init__(self, group: list[OpCase]) -> None:
        super().__init__()
        self.fns = [c.fn for c in group]
        self.mods = nn.ModuleList(c.fn for c in group if isinstance(c.fn, nn.Module))  # register weights
        self.arity = [len(c.inputs(CAPTURE_SEED)) for c in group]

    def forward(self, *flat: torch.Tensor) -> Any:
        outs, i = [], 0
        for fn, n in zip(self.fns, self.arity):
            outs.append(fn(*flat[i:i + n]))
            i += n
        return tuple(outs)


@dataclass
class Outcome:
    fallbacks: list[Any]
    got: list[torch.Tensor]  # the graph's tensor outputs for this case on CHECK_SEED inputs


def _reference(fn: Any, capture_args: tuple, check_args: tuple) -> tuple[list, list[torch.Tensor]]:
    captured = capture(fn, capture_args)
    result = lower_to_ir(captured)
    return result.fallbacks, run_graph(result.graph, captured.flatten_inputs(check_args))


def _tvm(fn: Any, capture_args: tuple, check_args: tuple) -> tuple[list, list[torch.Tensor]]:
    # strict: a kernel that fails to build is an error here, not a quiet interpreter fallback
    compiled = tilefx.compile(fn, options=CompileOptions(target="cpu", strict=True))
    compiled(*capture_args)
    got = [t for t in pytree.tree_leaves(compiled(*check_args)) if isinstance(t, torch.Tensor)]
    assert compiled.num_compiles == 1, "same signature must not recompile"
    return [f for r in compiled.records for f in r.fallbacks], got


BACKENDS = {"reference": _reference, "tvm": _tvm}


def _run(backend: str, fn: Any, group: list[OpCase]) -> list[Outcome]:
    capture_args = tuple(t for c in group for t in c.inputs(CAPTURE_SEED))
    check_args = tuple(t for c in group for t in c.inputs(CHECK_SEED))
    fallbacks, got = BACKENDS[backend](fn, capture_args, check_args)
    outcomes, i = [], 0
    for c in group:
        n = sum(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(c.fn(*c.inputs(CHECK_SEED))))
        outcomes.append(Outcome(fallbacks, got[i:i + n]))
        i += n
    return outcomes


@functools.lru_cache(maxsize=None)
def _group_outcomes(backend: str, index: int) -> list[Outcome]:
    group = CASES[index * GROUP_SIZE:(index + 1) * GROUP_SIZE]
    try:
        outcomes = _run(backend, _Group(group), group)
        if not outcomes[0].fallbacks:
            return outcomes
    except Exception:
        pass
    return [_run(backend, c.fn, [c])[0] for c in group]  # isolate the failing case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_op_matches_eager(backend: str, index: int) -> None:
    case = CASES[index]
    outcome = _group_outcomes(backend, index // GROUP_SIZE)[index % GROUP_SIZE]
    assert outcome.fallbacks == [], f"{case.name}: unexpected fallbacks {outcome.fallbacks}"
    want = [w for w in pytree.tree_leaves(case.fn(*case.inputs(CHECK_SEED))) if isinstance(w, torch.Tensor)]
    assert len(outcome.got) == len(want)
    for g, w in zip(outcome.got, want):
        assert g.dtype == w.dtype, f"{case.name}: dtype {g.dtype} vs eager {w.dtype}"
        assert g.shape == w.shape, f"{case.name}: shape {tuple(g.shape)} vs eager {tuple(w.shape)}"
        torch.testing.assert_close(g, w, rtol=case.rtol, atol=case.atol, msg=lambda m: f"{case.name}: {m}")


def test_single_case_output_structure() -> None:
    """Outside a group: the flat graph outputs rebuild the user's nested structure."""
    case = next(c for c in CASES if c.name == "unbind")
    captured = capture(case.fn, case.inputs(CAPTURE_SEED))
    result = lower_to_ir(captured)
    args = case.inputs(CHECK_SEED)
    rebuilt = captured.unflatten_outputs(run_graph(result.graph, captured.flatten_inputs(args)))
    want = case.fn(*args)
    assert isinstance(rebuilt, list) and len(rebuilt) == len(want)
    for g, w in zip(rebuilt, want):
        torch.testing.assert_close(g, w)
