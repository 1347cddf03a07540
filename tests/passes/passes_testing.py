"""Shared helpers of the pass tests: random inputs, numeric comparison, fused-graph summaries."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tilefx.ir.graph import Graph
from tilefx.ir.interpreter import run_graph
from tilefx.ir.types import DType

F32 = DType.float32


def rand_inputs(graph: Graph, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in graph.inputs:
        shape = tuple(int(d) for d in v.type.shape)
        if v.type.dtype == DType.bool:
            out.append(torch.rand(shape, generator=gen) > 0.3)
        elif v.type.dtype.is_int:
            out.append(torch.randint(0, 4, shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen).to(getattr(torch, v.type.dtype.name)))
    return out


def weights(*shape: int, seed: int = 0, positive: bool = False) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def property_budget(examples: int):
    """The hypothesis settings of the pass property tests: a fixed example budget, derandomized
    (CI runs the same examples every time), no deadline (the interpreter's speed varies)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def nonzero_inputs(graph: Graph, seed: int = 1) -> list[torch.Tensor]:
    """Seeded inputs for a property test, ``assume``-d to give some output that is not all zero
    (a ReLU'd pixel or row can be): an example that compares zeros proves nothing."""
    from hypothesis import assume

    inputs = rand_inputs(graph, seed=seed)
    assume(any(w.dtype == torch.bool or w.float().abs().max() > 0 for w in run_graph(graph, inputs)))
    return inputs


def assert_same(before: Graph, after: Graph, inputs: Sequence[torch.Tensor] | None = None,
                atol: float = 1e-5, rtol: float = 1e-5) -> list[torch.Tensor]:
    """``after`` computes what ``before`` does on (fresh random) inputs; returns the outputs."""
    inputs = list(inputs) if inputs is not None else rand_inputs(before, seed=int(torch.randint(0, 1000, ())))
    want = run_graph(before, inputs)
    got = run_graph(after, inputs)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape and w.dtype == g.dtype
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, equal_nan=True)
    # never pass by comparing zeros only
    assert any(w.dtype == torch.bool or w.float().abs().max() > 0 for w in want)
    return got


def op_names(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops]


def compute_ops(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops if op.name != "const"]


def kernel_summary(graph: Graph) -> list[tuple[str, list[str]]]:
    """(kind, body op names without consts) for each kernel, in order."""
    return [(op.attr("kind"), compute_ops(op.body)) for op in graph.ops if op.name == "kernel"]


def assert_fused_top_level(graph: Graph) -> None:
    consts = {op.result.name for op in graph.ops if op.name == "const"}
    for op in graph.ops:
        if op.name == "cast" and op.inputs[0].name in consts:
            continue  # a bf16 constant, held as cast(const f32): the runtime casts it once
        assert op.name in ("const", "kernel", "fallback", "reshape"), f"{op.name} left at the top level"
