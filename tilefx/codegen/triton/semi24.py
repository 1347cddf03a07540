"""2:4 semi-structured library candidate for ``bsr_matmul`` (``impl="semi24"``).

Ampere and newer GPUs (compute capability >= 8.0) multiply a matrix in which
every group of 4 consecutive elements along K holds at most 2 nonzeros at
twice the tensor-core rate, from a compressed copy half the size
(cuSPARSELt or CUTLASS, through ``torch.sparse.to_sparse_semi_structured``).
This candidate runs a ``bsr_matmul`` that way when its weight has that
pattern *exactly* (no pruning: a weight that is not 2:4 raises ``ValueError``
on the first call — the tuner records it as a failed candidate).

The kernel's operands are the BSR constants; the launch densifies ``W^T[N, K]``
from them once, checks the pattern and compresses it, and keeps the result for
as long as the ``data`` tensor lives (the runtime passes the same constant
tensors on every call). Then ``F.linear(x2d, w24)`` (rows padded to a multiple
of 16, the smallest dense operand both backends take) and the fused epilogue as
one generated pointwise kernel, like every library candidate (``library.py``).

Only fp16/bf16, ``K % 64 == 0`` and ``N % 32 == 0`` (what both torch backends
accept for the sparse operand), on a CUDA device of capability >= 8.0.

Two ways in: the tuner (``impl`` is a knob of the sparse template's space), and
the sparsity pass, which times this candidate against dense for a 2:4 weight
(``sparse.measure_2to4``) and, when it wins, marks the ``bsr_matmul`` with
``impl = "semi24"`` so the default schedule is this one. Timings exclude the
one-time work (the first call compresses; ``_CACHE`` keeps the result): what
remains per call on an H100 with torch 2.11 is cuSPARSELt's matmul-plan setup
inside ``torch._cslt_sparse_mm``, ~0.5 ms of host time (CUTLASS's 2:4 kernels
run on compute capability 8.x only), so at 4096x4096 it measured 0.02-0.05x of
cuBLAS eagerly and 0.42-0.58x replayed from a CUDA graph
(``benchmarks/sparsity_gpu.py --only-2to4``).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch.sparse import to_sparse_semi_structured

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import gpu_present, library
from tilefx.codegen.triton.source import HEADER, KernelSource
from tilefx.ir.graph import Graph, Op
from tilefx.ir.types import DType
from tilefx.passes.sparsity import holds_2to4  # noqa: F401  (re-exported: the pattern check)

MIN_CAPABILITY = (8, 0)
ROW_MULTIPLE = 16
_CACHE: dict[int, tuple[Any, Any]] = {}   # id(data) -> (weakref to data, compressed W^T)


def device_ok() -> bool:
    """A GPU with sparse tensor cores (compute capability 8.0 or newer) runs the kernels."""
    if not gpu_present():
        return False

    return torch.cuda.get_device_capability() >= MIN_CAPABILITY


def fits(dtype: DType, k: int, n: int) -> bool:
    """Whether torch's 2:4 kernels take a ``W[K, N]`` of this dtype and size (any device)."""
    return dtype in (DType.float16, DType.bfloat16) and k % 64 == 0 and n % 32 == 0


def available(dtype: DType, k: int, n: int) -> bool:
    """Whether a ``bsr_matmul`` of these sizes may take the 2:4 candidate on this machine."""
    return fits(dtype, k, n) and device_ok()


def compress(w_kn: Any) -> Any:
    """The semi-structured ``W^T[N, K]`` of a 2:4 ``W[K, N]`` (a CUDA fp16/bf16 tensor)."""
    if not holds_2to4(w_kn):
        raise ValueError("semi24 candidate: the weight is not 2:4 sparse along K (at most 2 "
                         "nonzeros in every 4); use the block-sparse Triton kernel instead")
    return to_sparse_semi_structured(w_kn.t().contiguous())


def dense_from_bsr(data: Any, indices: Any, indptr: Any, k: int) -> Any:
    """``W[K, N]`` from BSR tensors (torch; see ``ir/ops/sparse.py``)."""
    _, bk, bn = data.shape
    nb = indptr.numel() - 1
    col = torch.repeat_interleave(torch.arange(nb, device=data.device), torch.diff(indptr.long()))
    blocks = torch.zeros(k // bk, nb, bk, bn, dtype=data.dtype, device=data.device)
    blocks[indices.long(), col] = data
    return blocks.permute(0, 2, 1, 3).reshape(k, nb * bn)


def _weight(data: Any, indices: Any, indptr: Any, k: int) -> Any:
    hit = _CACHE.get(id(data))
    if hit is not None and hit[0]() is data:
        return hit[1]
    w24 = compress(dense_from_bsr(data, indices, indptr, k))
    for key in [key for key, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[key]
    _CACHE[id(data)] = (weakref.ref(data), w24)
    return w24


def bsr_linear(x: Any, data: Any, indices: Any, indptr: Any, axis: int) -> Any:
    """``bsr_matmul(x, data, indices, indptr) {axis}`` through the 2:4 sparse tensor cores."""
    k = x.shape[axis]
    w24 = _weight(data, indices, indptr, k)
    xm = torch.movedim(x, axis, -1)
    lead = xm.shape[:-1]
    x2d = xm.reshape(-1, k).contiguous()
    rows = x2d.shape[0]
    if rows % ROW_MULTIPLE:
        x2d = F.pad(x2d, (0, 0, 0, ROW_MULTIPLE - rows % ROW_MULTIPLE))
    y = F.linear(x2d, w24)[:rows]
    return torch.movedim(y.reshape(*lead, y.shape[-1]), -1, axis)


def emit(body: Graph, name: str, anchor: Op, schedule: Schedule) -> KernelSource:
    axis = int(anchor.attr("axis")) % anchor.inputs[0].type.rank
    src = library.emit(body, name, anchor,
                       lambda op, xs: f"semi24.bsr_linear({', '.join(xs)}, {axis})", schedule)
    text = src.text.replace(HEADER, HEADER + "from tilefx.codegen.triton import semi24\n", 1)
    return dataclasses.replace(src, text=text, meta=(("impl", "semi24"),) + src.meta[1:],
                               schedule=Schedule.of(impl="semi24", EPILOGUE_BLOCK=1024))
