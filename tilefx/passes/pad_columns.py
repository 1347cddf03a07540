"""Constant matmul weights padded to a multiple of 8 columns (exact; GPU targets).

A matmul ``[.., M, K] x [K, N]`` with ``N % 8 != 0`` has rows of B and of the
output starting at addresses that are not 16-byte aligned; on an H200 such a
matmul runs 4.2-4.4x slower than with N rounded up, in the Triton template and
cuBLAS alike (benchmarks/results/gpu-unaligned-matmul-h200-2026-12-03.md; GPT-2's
tied LM head, N = 50257, was 58% of its GPU time). When B is a constant (a
``const``, or the ``cast(const f32 -> bf16)`` that holds a bf16 one) the pass
pads its N dimension with zeros to a multiple of 8, lets the matmul produce
``[.., M, Npad]`` and slices the result back to N for its readers.

The elementwise epilogue of the matmul (a bias add with a constant ``[N]``
bias, which is padded too; activations; casts; anything broadcasting inputs of
one column) stays on the padded columns, so fusion still puts it in the matmul's
kernel; the slice comes after it. The slice is data movement: fusion folds it
into its reader's prologue, or it becomes a copy kernel where it is a graph
output. What the padded columns hold is never read.

Only the compiler turns it on, for backends whose ``PassDefaults.pad_columns``
says the alignment matters (``compiler/pass_setup.py``).
"""

from __future__ import annotations

import logging

import numpy as np

from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.ops import get_op
from tilefx.ir.ops.registry import Category
from tilefx.ir.types import DType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import Rewriter

log = logging.getLogger("tilefx.passes.pad_columns")

MULTIPLE = 8        # 16-byte rows for fp16/bf16 (fp32 rows need only 4 but gain the same way)
MIN_COLUMNS = 256   # narrower outputs are cheap either way; padding would only add a copy
FLOATS = (DType.float16, DType.bfloat16, DType.float32)
EPILOGUE = (Category.elementwise, Category.broadcast)


@graph_pass("pad_columns")
def pad_columns(graph: Graph, multiple: int = MULTIPLE, min_columns: int = MIN_COLUMNS) -> Graph:
    rw = Rewriter(graph)
    # old value -> (it, its padded stand-in): computed on the padded columns, not yet sliced
    padded: dict[str, tuple[Value, Value]] = {}
    changed = False
    for op in graph.ops:
        new = _padded_epilogue(rw, op, padded)
        if new is None:
            for v in op.inputs:  # a reader that needs the N columns: slice first
                if v.name in padded:
                    _slice_back(rw, *padded.pop(v.name))
            new = _padded_matmul(rw, op, multiple, min_columns) if op.name == "matmul" else None
        if new is None:
            rw.emit(op)
            continue
        padded[op.results[0].name] = (op.results[0], new)
        changed = True
    for old, new in padded.values():  # graph outputs (or values nothing reads)
        _slice_back(rw, old, new)
    return rw.finish() if changed else graph


def _padded_matmul(rw: Rewriter, op: Op, multiple: int, min_columns: int) -> Value | None:
    """The matmul on B padded with zero columns, or None where the rule does not apply."""
    a, b = op.inputs
    n = b.type.shape[-1]
    if (not isinstance(n, int) or n % multiple == 0 or n < min_columns
            or op.results[0].type.dtype not in FLOATS):
        return None
    w = rw.held_array(b)
    if w is None:
        return None
    src = rw.producer(b)
    hint = f"{src.attr('name') if src is not None and src.attr('name') else 'w'}_pad"
    wp = rw.typed_const(_pad_last(w, (-n) % multiple), b.type.dtype, hint)
    log.debug("pad_columns: %s %s -> %s columns", hint[:-4], list(b.type.shape), n + (-n) % multiple)
    return rw.op("matmul", a, wp, hint=op.results[0].name)


def _padded_epilogue(rw: Rewriter, op: Op, padded: dict[str, tuple[Value, Value]]) -> Value | None:
    """``op`` on the padded columns when it is an elementwise step of a padded value that
    nothing else reads (its other inputs: one column, or a constant with N columns)."""
    chain = [v for v in dict.fromkeys(op.inputs) if v.name in padded]
    if (len(chain) != 1 or len(op.results) != 1 or get_op(op.name).category not in EPILOGUE
            or rw.uses(chain[0]) != 1 or op.results[0].type.shape != chain[0].type.shape):
        return None
    v, vp = padded[chain[0].name]
    n, npad = v.type.shape[-1], vp.type.shape[-1]
    inputs = []
    for x in op.inputs:
        if x.name == v.name:
            inputs.append(vp)
        elif x.type.rank == 0 or x.type.shape[-1] == 1:
            inputs.append(x)  # broadcast along the columns
        elif x.type.shape[-1] == n and (data := rw.held_array(x)) is not None:
            inputs.append(rw.typed_const(_pad_last(data, npad - n), x.type.dtype, f"{x.name}_pad"))
        else:
            return None
    del padded[v.name]
    return rw.op(op.name, *inputs, hint=op.results[0].name, **dict(op.attrs))


def _slice_back(rw: Rewriter, old: Value, new: Value) -> None:
    """Readers of ``old`` (graph outputs too) read the first N columns of ``new``."""
    # the slice takes the old value's name (nothing emitted has it), so the IR text keeps it
    sliced = rw.make_op("slice", [new], {"axis": old.type.rank - 1, "start": 0,
                                         "end": old.type.shape[-1], "step": 1})
    rw.emit(Op("slice", sliced.inputs, (old,), sliced.attrs))


def _pad_last(data: np.ndarray, extra: int) -> np.ndarray:
    return np.pad(data, [(0, 0)] * (data.ndim - 1) + [(0, extra)])
