"""A dynamic kernel on the Triton backend, built per batch size through its ``Backend``.

The Triton backend had its own ``specialize``, which left symbols in attributes (a
reshape's target shape); both backends now share ``ir.identity.specialize``, which
binds them too (``tests/ir/test_identity.py``). This kernel emitted right before as
well (the pointwise template indexes by the output's shape): a guard, not a repro.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.codegen.triton_backend.triton_testing import close  # noqa: F401 (sets TRITON_INTERPRET)
from tilefx.codegen.target import Target
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tilefx.ir.types import symbol

B = symbol("B")


def _kernel():
    return kernel_op("pointwise", [TensorType(DType.float32, (B, 6))],
                     lambda b, x: b.op("reshape", b.op("relu", x), shape=(B, 2, 3)))


@pytest.mark.parametrize("batch", [1, 5, 13])
def test_symbolic_reshape_builds_for_each_batch(batch):
    op = _kernel()
    built = Target.parse("cuda").backend().build(op, None, {B: batch})
    x = torch.randn(batch, 6, generator=torch.Generator().manual_seed(batch))
    out = torch.full((batch, 2, 3), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        built(x, out)
    close(out, torch.relu(x).reshape(batch, 2, 3))
