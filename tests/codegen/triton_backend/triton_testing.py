"""Helpers for the Triton backend tests: hand-built kernel ops, random inputs, and
running a built kernel destination-passing on CPU tensors under ``TRITON_INTERPRET=1``.

Importing this module sets ``TRITON_INTERPRET=1`` (Triton reads it each time a
``@triton.jit`` function is defined, i.e. when a generated module is loaded).
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from tilefx.ir import DType, Op, TensorType  # noqa: E402
from tilefx.ir.builder import kernel_op  # noqa: F401,E402  (re-exported for the tests)

TORCH = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
         DType.int64: torch.int64, DType.int32: torch.int32, DType.bool: torch.bool}


def t(dtype: DType, *shape: int) -> TensorType:
    return TensorType(dtype, shape)


def f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)




def rand(ty: TensorType, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = tuple(ty.shape)
    if ty.dtype == DType.bool:
        return torch.rand(shape, generator=g) > 0.5
    if ty.dtype.is_int:
        return torch.randint(0, 5, shape, generator=g, dtype=TORCH[ty.dtype])
    return torch.randn(shape, generator=g).to(TORCH[ty.dtype])


def run(op: Op, inputs: Sequence[torch.Tensor], schedule=None) -> list[torch.Tensor]:
    from tilefx.codegen.triton import build_kernel

    built = build_kernel(op, None, schedule)
    outs = [torch.empty(tuple(r.type.shape), dtype=TORCH[r.type.dtype]) for r in op.results]
    with warnings.catch_warnings():  # numpy warns about masked-off lanes (0/0, inf-inf)
        warnings.simplefilter("ignore", RuntimeWarning)
        built(*inputs, *outs)
    return outs


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: DType = DType.float32) -> None:
    tol = {DType.float32: 2e-5, DType.float16: 2e-2, DType.bfloat16: 6e-2}.get(dtype, 0)
    torch.testing.assert_close(actual.float() if actual.is_floating_point() else actual,
                               expected.float() if expected.is_floating_point() else expected,
                               rtol=tol, atol=tol)

