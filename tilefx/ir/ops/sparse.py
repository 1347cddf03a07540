"""Sparse contractions: a dense activation times a constant block-sparse weight.

``bsr_matmul(x, data, indices, indptr) {axis}`` contracts axis ``axis`` of ``x``
(size K) with a weight ``W[K, N]`` stored block-compressed by block columns
(BSR of ``W^T``), so each output block column is one independent dot product
over its nonzero blocks:

- ``data  [nnzb, bk, bn]``: the nonzero ``bk x bn`` blocks of ``W``, as they sit
  in ``W`` (rows along K, columns along N: the N lanes are contiguous, which is
  what a CPU kernel vectorizes over);
- ``indices [nnzb] int32``: the K-block index of each block;
- ``indptr [N / bn + 1] int32``: block column ``j`` owns blocks
  ``indptr[j] .. indptr[j + 1]``.

``axis = -1`` (rank - 1) is a linear layer ``x[..., K] @ W``; ``axis = 1`` on NCHW
is a 1x1 convolution (stride 1, no padding) with ``W = w[:, :, 0, 0].T``. The
result has ``x``'s shape with the contracted axis replaced by N. The operands are
constants written by ``passes/sparsity.py``; the op is exact (same products, a
different summation order).

``impl`` says which kernel the pass measured fastest for this layer, for the
backend to build without tuning: ``"auto"`` (the backend's default), ``"triton"``
(the block-sparse template) or ``"semi24"`` (the 2:4 semi-structured library
candidate, GPUs only). A backend that cannot honor it uses its default.
"""

from __future__ import annotations

from tilefx.ir.ops.registry import Category, register_op
from tilefx.ir.ops.shapes import normalize_axis
from tilefx.ir.types import DType, dims_equal


IMPLS = ("auto", "triton", "semi24")


@register_op("bsr_matmul", Category.contraction, inputs=4, attrs={"axis": -1, "impl": "auto"},
             doc="x contracted on `axis` with a block-sparse W[K, N] (data [nnzb, bk, bn], "
                 "indices [nnzb], indptr [N/bn + 1])")
def _bsr_matmul(types, attrs):
    x, data, indices, indptr = types
    if data.rank != 3 or indices.rank != 1 or indptr.rank != 1:
        raise ValueError(f"bsr_matmul: want data [nnzb, bk, bn], indices [nnzb], indptr [nb + 1]; "
                         f"got {data.shape}, {indices.shape}, {indptr.shape}")
    if indices.dtype != DType.int32 or indptr.dtype != DType.int32:
        raise TypeError("bsr_matmul: indices and indptr must be int32")
    if data.dtype != x.dtype:
        raise TypeError(f"bsr_matmul: block dtype {data.dtype} differs from the input's {x.dtype}")
    if not dims_equal(data.shape[0], indices.shape[0]):
        raise ValueError(f"bsr_matmul: {data.shape[0]} blocks but {indices.shape[0]} indices")
    if attrs["impl"] not in IMPLS:
        raise ValueError(f"bsr_matmul: impl {attrs['impl']!r} is not one of {IMPLS}")
    axis = normalize_axis(attrs["axis"], x.rank)
    bk, bn = int(data.shape[1]), int(data.shape[2])
    k = x.shape[axis]
    if getattr(k, "is_number", True) and int(k) % bk:
        raise ValueError(f"bsr_matmul: contracted dim {k} is not a multiple of the block's {bk}")
    n = (int(indptr.shape[0]) - 1) * bn
    return [x.with_shape(tuple(n if i == axis else d for i, d in enumerate(x.shape)))]
