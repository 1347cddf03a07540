"""Helpers for TVM codegen tests: wrap a hand-built body Graph in a ``kernel`` op,
build it, run it destination-passing and compare with a PyTorch reference."""

from __future__ import annotations

import os
from typing import Sequence

import pytest
import torch

from tilefx.ir import DType, Op, TensorType
from tilefx.ir.builder import kernel_op  # noqa: F401  (re-exported for the tests)

os.environ.setdefault("TVM_BIND_THREADS", "0")

TORCH_DTYPES = {DType.float32: torch.float32, DType.float64: torch.float64,
                DType.int64: torch.int64, DType.int32: torch.int32, DType.bool: torch.bool}


def f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)




def random_input(t: TensorType, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(t.shape)
    if t.dtype == DType.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if t.dtype.is_int:
        return torch.randint(0, 5, shape, generator=gen, dtype=TORCH_DTYPES[t.dtype])
    return torch.randn(shape, generator=gen, dtype=TORCH_DTYPES[t.dtype])


def run_kernel(op: Op, inputs: Sequence[torch.Tensor], schedule=None, **kw) -> list[torch.Tensor]:
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel

    built = build_kernel(op, Target.host_cpu(), schedule, **kw)
    outs = [torch.empty(tuple(r.type.shape), dtype=TORCH_DTYPES[r.type.dtype]) for r in op.results]
    built(*inputs, *outs)
    return outs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
