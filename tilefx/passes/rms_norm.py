"""RMSNorm as one row op: ``x * rsqrt(mean(x^2) + eps)`` -> ``rms_norm(x)`` (exact; GPU targets).

Llama's and T5's RMSNorm is written out in the model::

    h = x.to(float32); h = h * rsqrt(h.pow(2).mean(-1, keepdim=True) + eps); w * h.to(dtype)

and lowered op by op it became three kernels on an H200: the residual matmul's
epilogue also wrote ``float(h)`` and ``float(h)^2`` (two float32 copies of the
hidden state), a ``mean + add + rsqrt`` reduction read one back, and a
pointwise kernel read the other to normalize: about 40 MB a norm where one row
kernel reads the hidden state once and writes the result (Llama-style, 4 x 512
x 2048). The pass replaces the chain ``pow(x, 2) | x * x -> mean(last axes,
keepdim) -> + eps -> rsqrt -> x * r`` by ``rms_norm(x)``, a row op like
``layer_norm`` that the reduction template computes in one kernel, with the
cast to the model's dtype and the weight as its epilogue. Only float32 chains
(what the models write) whose intermediates nothing else reads are replaced, so
the result is the same computation.

Only the compiler turns it on, for backends whose ``PassDefaults.rms_norm`` says
so (``compiler/pass_setup.py``): the Triton template has the row op; TVM does not.
"""

from __future__ import annotations

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.types import DType
from tilefx.passes.cleanup import dce
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import PatternRewriter, rewrite_graph


def _only_reader(rw: PatternRewriter, v: Value, name: str) -> Op | None:
    """The producer of ``v`` if it is a ``name`` op and ``v`` has no other reader."""
    op = rw.producer(v)
    return op if op is not None and op.name == name and rw.uses(v) == 1 else None


def _square_of(rw: PatternRewriter, v: Value) -> Value | None:
    """``x`` when ``v`` is ``pow(x, 2)`` or ``x * x`` read only here."""
    op = rw.producer(v)
    if op is None or rw.uses(v) != 1:
        return None
    if op.name == "pow" and rw.scalar(op.inputs[1]) == 2:
        return op.inputs[0]
    if op.name == "mul" and op.inputs[0] == op.inputs[1]:
        return op.inputs[0]
    return None


def rms_norm_rule(rw: PatternRewriter, op: Op) -> Value | None:
    for x, r in (op.inputs, op.inputs[::-1]):
        if x.type.dtype != DType.float32 or x.type != op.result.type:
            continue
        rsqrt = _only_reader(rw, r, "rsqrt")
        add = rsqrt and _only_reader(rw, rsqrt.inputs[0], "add")
        if add is None:
            continue
        mean, eps = add.inputs
        if rw.scalar(eps) is None:
            mean, eps = eps, mean
        mean_op = _only_reader(rw, mean, "mean")
        if mean_op is None or rw.scalar(eps) is None or not mean_op.attr("keepdim"):
            continue
        rank = x.type.rank
        dims = sorted(d % rank for d in (mean_op.attr("dims") or range(rank)))
        n = len(dims)
        if dims != list(range(rank - n, rank)) or _square_of(rw, mean_op.inputs[0]) != x:
            continue
        return rw.op("rms_norm", x, normalized_ndim=n, eps=float(rw.scalar(eps)))
    return None


@graph_pass("rms_norm")
def fuse_rms_norm(graph: Graph) -> Graph:
    out = rewrite_graph(graph, {"mul": [rms_norm_rule]})
    return graph if out is graph else dce(out)  # the replaced chain's ops
