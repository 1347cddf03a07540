"""Every op-table case through capture -> lower_to_ir -> reference interpreter, vs eager.

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
from tilefx.compiler.capture import capture
from tilefx.compiler.frontend import FallbackInfo, lower_to_ir
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
    fallbacks: list[FallbackInfo]
    got: list[torch.Tensor]  # the graph's tensor outputs for this case on CHECK_SEED inputs


def _run(fn: Any, group: list[OpCase]) -> list[Outcome]:
    captured = capture(fn, tuple(t for c in group for t in c.inputs(CAPTURE_SEED)))
    result = lower_to_ir(captured)
    args = tuple(t for c in group for t in c.inputs(CHECK_SEED))
    got = run_graph(result.graph, captured.flatten_inputs(args))
    outcomes, i = [], 0
    for c in group:
        n = sum(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(c.fn(*c.inputs(CHECK_SEED))))
        outcomes.append(Outcome(result.fallbacks, got[i:i + n]))
        i += n
    return outcomes


@functools.lru_cache(maxsize=None)
def _group_outcomes(index: int) -> list[Outcome]:
    group = CASES[index * GROUP_SIZE:(index + 1) * GROUP_SIZE]
    try:
        outcomes = _run(_Group(group), group)
        if not outcomes[0].fallbacks:
            return outcomes
    except Exception:
        pass
    return [_run(c.fn, [c])[0] for c in group]  # isolate the failing case


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_op_matches_eager(index: int) -> None:
    case = CASES[index]
    outcome = _group_outcomes(index // GROUP_SIZE)[index % GROUP_SIZE]
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
