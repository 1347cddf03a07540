"""Sparse contraction template: ``bsr_matmul`` (block-sparse constant weight) on the CPU.

The loop over a block column's nonzero blocks has a data-dependent extent
(``indptr[j] .. indptr[j + 1]``), which TE reductions and ``s_tir`` schedule
primitives handle badly (TE nests it in an opaque inner block whose loops
cannot be reordered). So the contraction itself is a hand-written loop nest
(``te.extern`` built with TVMScript's IR builder), already scheduled, and the
fused epilogue (bias, activation, residual) is ordinary TE that ``apply``
inlines into one parallel, vectorized pass over the output.

The activation ``x`` is viewed as ``[A, K, P]`` (K the contracted axis), the
output as ``[A, N, P]``. Two loop nests, after "Fast Sparse ConvNets" (Elsen et
al.) and TVM's ``topi.nn.sparse_dense`` BSR compute:

* **rows** (``P == 1``: linear layers) — vectorized over the block's ``bn``
  output lanes, which are contiguous in ``data``; a register tile of
  ``reg_m x bn`` accumulators; each step is one vector load of a weight row
  and ``reg_m`` broadcast-FMAs. Parallel over block columns.
* **columns** (``P > 1``: 1x1 convolutions on NCHW) — vectorized over the
  spatial axes flattened into one (``vec_p`` lanes; a 28x28 map is 49 full
  16-lane vectors, where row by row it was 28 ragged ones: 5x faster), a register tile of ``bn x vec_p``
  accumulators; each step loads one activation vector and broadcasts ``bn``
  weights. Parallel over (image, block column).

Knobs (``reg_m``, ``vec_p``) are picked from the shapes when the compute is
built: the extern is generated before a ``Schedule`` exists, so the template
space is a single point for now (``space`` returns it for the tuner's sake).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tilefx.codegen import timing
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.codegen.tvm import build_kernel
from tilefx.codegen.tvm.schedules.contraction import schedule_leftovers
from tilefx.ir.builder import kernel_op
from tilefx.ir.graph import Op
from tilefx.ir.types import DType, TensorType
from tilefx.passes.sparsity import to_bsr

EXTERN_NAME = "bsr_matmul"


def _unravel(flat: Any, dims: list[int]) -> list[Any]:
    """Indices of ``flat`` over row-major ``dims`` (constant extents: TVM simplifies)."""
    out = []
    for i in range(len(dims)):
        inner = math.prod(dims[i + 1:])
        out.append((flat // inner) % dims[i] if i else flat // inner)
    return out


def loop_plan(shape: list[int], axis: int, bn: int, lanes: int = 16) -> dict[str, int]:
    """The register tile for input ``shape`` contracted on ``axis`` with ``bn``-wide blocks."""
    from tilefx.codegen.tvm.schedules.common import divisor_near, pow2_divisor  # imports TVM

    a = math.prod(shape[:axis])
    if axis == len(shape) - 1:
        # reg_m x bn accumulators; 8 rows x one vector leaves registers for loads
        return {"reg_m": divisor_near(a, 8 if bn <= lanes else 4), "vec": 1, "rows": 1}
    # bn x vec accumulators, vectorized along the flattened (contiguous) spatial axes
    w = math.prod(shape[axis + 1:])
    if w % lanes == 0:
        return {"reg_m": 1, "vec": lanes, "rows": divisor_near(bn, 16)}
    if w <= 2 * lanes:
        return {"reg_m": 1, "vec": w, "rows": divisor_near(bn, 8)}
    # e.g. a 7x7 map (49): 7 lanes beat scalar code
    return {"reg_m": 1, "vec": max(pow2_divisor(w, lanes), divisor_near(w, lanes)),
            "rows": divisor_near(bn, 16)}


def bsr_extern(x: Any, data: Any, indices: Any, indptr: Any, axis: int, name: str) -> Any:
    """The TE tensor of ``bsr_matmul`` (see ``ir/ops/sparse.py``) as a scheduled extern."""
    from tvm import te, tirx  # heavy: loaded on first use
    from tvm.script.ir_builder import IRBuilder  # heavy: loaded on first use
    from tvm.script.ir_builder import tirx as T  # heavy: loaded on first use

    shape = [int(d) for d in x.shape]
    _, bk, bn = (int(d) for d in data.shape)
    nblocks = int(indptr.shape[0]) - 1
    out_shape = shape[:axis] + [nblocks * bn] + shape[axis + 1:]
    plan = loop_plan(shape, axis, bn)
    zero = tirx.const(0, str(x.dtype))

    def body(ins: list[Any], outs: list[Any]) -> Any:
        with IRBuilder() as ib:
            if axis == len(shape) - 1:
                _rows(T, *ins, outs[0], shape, nblocks, bk, bn, plan["reg_m"], zero)
            else:
                _columns(T, *ins, outs[0], shape, axis, nblocks, bk, bn, plan, zero)
        return ib.get()

    return te.extern([out_shape], [x, data, indices, indptr], body, name=name, dtype=str(x.dtype))


def _rows(T: Any, x: Any, d: Any, idx: Any, ptr: Any, y: Any, shape: list[int], nblocks: int,
          bk: int, bn: int, reg_m: int, zero: Any) -> None:
    lead = shape[:-1]
    a = math.prod(lead)
    with T.parallel(0, nblocks) as j:
        with T.serial(0, a // reg_m) as m0:
            acc = T.decl_buffer((reg_m, bn), d.dtype, scope="local")
            with T.unroll(0, reg_m) as mi:
                with T.vectorized(0, bn) as r:
                    T.buffer_store(acc, zero, [mi, r])
            with T.serial(ptr[j], ptr[j + 1]) as e:
                with T.unroll(0, bk) as c:
                    with T.unroll(0, reg_m) as mi:
                        with T.vectorized(0, bn) as r:
                            row = _unravel(m0 * reg_m + mi, lead)
                            T.buffer_store(acc, acc[mi, r] + d[e, c, r] * x[(*row, idx[e] * bk + c)],
                                           [mi, r])
            with T.unroll(0, reg_m) as mi:
                with T.vectorized(0, bn) as r:
                    T.buffer_store(y, acc[mi, r], [*_unravel(m0 * reg_m + mi, lead), j * bn + r])


def _columns(T: Any, x: Any, d: Any, idx: Any, ptr: Any, y: Any, shape: list[int], axis: int,
             nblocks: int, bk: int, bn: int, plan: dict[str, int], zero: Any) -> None:
    # the axes after the contracted one are contiguous: one flat spatial axis P, so a
    # 28x28 image is 49 full 16-lane vectors instead of 28 rows of 28 ragged lanes
    lead = shape[:axis]
    a, k, p = math.prod(lead), shape[axis], math.prod(shape[axis + 1:])
    vec, rows = plan["vec"], plan["rows"]
    with T.parallel(0, a * nblocks) as task:
        # flat views of the same memory (declared inside a frame, as the builder wants)
        xf = T.decl_buffer((a, k, p), x.dtype, data=x.data)
        yf = T.decl_buffer((a, nblocks * bn, p), y.dtype, data=y.data)
        b = task // nblocks
        j = task % nblocks
        with T.serial(0, p // vec) as pt:
            p0 = pt * vec
            with T.serial(0, bn // rows) as r0:
                acc = T.decl_buffer((rows, vec), d.dtype, scope="local")
                with T.unroll(0, rows) as r:
                    with T.vectorized(0, vec) as pi:
                        T.buffer_store(acc, zero, [r, pi])
                with T.serial(ptr[j], ptr[j + 1]) as e:
                    with T.unroll(0, bk) as c:
                        with T.unroll(0, rows) as r:
                            with T.vectorized(0, vec) as pi:
                                xval = xf[b, idx[e] * bk + c, p0 + pi]
                                T.buffer_store(acc, acc[r, pi] + d[e, c, r0 * rows + r] * xval, [r, pi])
                with T.unroll(0, rows) as r:
                    with T.vectorized(0, vec) as pi:
                        T.buffer_store(yf, acc[r, pi], [b, j * bn + r0 * rows + r, p0 + pi])


# --------------------------------------------------------------- template API

def space(kernel_op: Op, target: Target) -> dict[str, list[Any]]:
    return {"parallel": [target.cores > 1]}


def default_schedule(kernel_op: Op, target: Target) -> Schedule:
    return Schedule.of(parallel=target.cores > 1)


def apply(sch: Any, schedule: Schedule, target: Target) -> None:
    """Inline the epilogue into one output pass; run it parallel and vectorized."""
    from tilefx.codegen.tvm.schedules import common as c  # imports TVM

    def is_extern(b: Any) -> bool:
        return c.block_name(sch, b).startswith(EXTERN_NAME)

    if c.attempt("find root block", lambda: sch.get_sblock("root")) is None:
        return  # the extern alone writes the output: nothing left to schedule
    c.inline_intermediates(sch, keep=is_extern)
    schedule_leftovers(sch, is_extern, target, c, parallel=schedule.get("parallel", True))


def register_te() -> None:
    """Register the TE compute of ``bsr_matmul`` (idempotent)."""
    from tilefx.codegen.tvm.te_ops import TE_OPS, TeContext  # imports TVM

    if "bsr_matmul" in TE_OPS:
        return

    def compute(ctx: TeContext, op: Op, ins: list[Any]) -> list[Any]:
        x = ins[0]
        axis = op.attr("axis") % len(x.shape)
        return [bsr_extern(*ins, axis=axis, name=ctx.name(EXTERN_NAME))]

    TE_OPS["bsr_matmul"] = compute


register_te()


# --------------------------------------------------------------- measurement

def layer_kernels(x_shape: tuple[int, ...], axis: int, weight: Any, block: tuple[int, int],
                  kind: str = "linear") -> tuple[Op, Op, list[Any]]:
    """(dense kernel op, sparse kernel op, weight operands) of one contraction layer.

    The dense kernel's weight operand is ``W[K, N]`` (linear) or ``[N, K, 1, 1]``
    (1x1 conv); the sparse kernel takes ``(data, indices, indptr)``.
    """
    f32 = lambda shape: TensorType(DType.float32, tuple(shape))  # noqa: E731
    xt = f32(x_shape)
    if kind == "conv1x1":
        wd = np.ascontiguousarray(weight.T).reshape(weight.shape[1], weight.shape[0], 1, 1)
        dense = kernel_op("contraction", [xt, f32(wd.shape)], lambda b, x, w: b.op("conv2d", x, w),
                          name="dense")
    else:
        wd = np.ascontiguousarray(weight)
        dense = kernel_op("contraction", [xt, f32(wd.shape)], lambda b, x, w: b.op("matmul", x, w),
                          name="dense")
    data, indices, indptr = to_bsr(weight, block)
    i32 = lambda shape: TensorType(DType.int32, tuple(shape))  # noqa: E731
    sparse = kernel_op("sparse_contraction", [xt, f32(data.shape), i32(indices.shape), i32(indptr.shape)],
                       lambda b, x, d, i, p: b.op("bsr_matmul", x, d, i, p, axis=axis), name="sparse")
    return dense, sparse, [wd, (data, indices, indptr)]


def measure_layer(layer: Any, block: tuple[int, int], target: Target | None = None,
                  repeats: int = 5) -> tuple[float, float]:
    """Seconds of the default dense kernel and of the sparse kernel for ``layer``
    (a ``passes.sparsity.SparseLayer``), built here and timed in-process."""
    target = target or Target.host_cpu()
    dense, sparse, (wd, bsr) = layer_kernels(layer.x_shape, layer.axis, layer.weight, block, layer.kind)
    x = torch.randn(*layer.x_shape)
    d_fn, s_fn = build_kernel(dense, target), build_kernel(sparse, target)
    d_out = torch.empty(*dense.results[0].type.shape)
    s_out = torch.empty(*sparse.results[0].type.shape)
    d_args = [x, torch.from_numpy(wd).clone(), d_out]
    s_args = [x, *(torch.from_numpy(a).clone() for a in bsr), s_out]
    return (timing.host_median(d_fn, d_args, repeats=repeats),
            timing.host_median(s_fn, s_args, repeats=repeats))
