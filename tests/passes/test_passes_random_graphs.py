"""Random DAGs through the whole pipeline: fused graphs verify, have no cycles, and compute the same."""

from __future__ import annotations

import json
import random

import pytest
from passes_testing import F32, assert_fused_top_level, assert_same

from tilefx.ir import GraphBuilder, TensorType
from tilefx.ir.graph import Graph, Value
from tilefx.passes import PassOptions, optimize


def random_graph(seed: int, n_ops: int = 40) -> Graph:
    rnd = random.Random(seed)
    b = GraphBuilder(f"random{seed}")
    pool: list[Value] = [b.input(TensorType(F32, (4, 4)), "x"), b.input(TensorType(F32, (4, 4)), "y")]

    def pick() -> Value:
        return rnd.choice(pool[-6:]) if rnd.random() < 0.7 else rnd.choice(pool)

    for _ in range(n_ops):
        kind = rnd.choice(["unary", "unary", "binary", "binary", "matmul", "softmax", "sum", "fallback",
                           "reshape", "permute"])
        x = pick()
        if kind == "unary":
            v = b.op(rnd.choice(["tanh", "sin", "relu", "neg", "sigmoid"]), x)
        elif kind == "binary":
            v = b.op(rnd.choice(["add", "mul", "sub", "maximum"]), x, pick())
        elif kind == "matmul":
            v = b.op("tanh", b.op("matmul", x, pick()))  # tanh keeps magnitudes tame
        elif kind == "softmax":
            v = b.op("softmax", x, dim=-1)
        elif kind == "sum":
            v = b.op("add", b.op("sum", x, dims=(1,), keepdim=True), pick())
        elif kind == "fallback":
            (v,) = b.op_typed("fallback", [x], [x.type], target="aten::cumsum.default",
                              args=json.dumps({"args": [{"%": 0}, 0], "kwargs": {}}))
            v = b.op("tanh", v)
        elif kind == "reshape":
            v = b.op("reshape", b.op("reshape", x, shape=(16,)), shape=(4, 4))
        else:
            v = b.op("permute", x, dims=(1, 0))
        pool.append(v)
    outputs = [pool[-1]] + rnd.sample(pool[2:-1], 2)
    return b.finish(outputs)


@pytest.mark.parametrize("seed", range(12))
def test_random_graph_pipeline(seed: int) -> None:
    g = random_graph(seed)
    out = optimize(g, PassOptions(verify=True))
    assert_fused_top_level(out)
    assert_same(g, out, atol=1e-5, rtol=1e-4)
    for op in out.ops:
        if op.name == "kernel":
            cats = [o.name for o in op.body.ops]
            assert sum(n == "matmul" for n in cats) <= 1
            assert sum(n in ("softmax", "sum") for n in cats) <= 1
            assert not (("matmul" in cats) and any(n in ("softmax", "sum") for n in cats))
