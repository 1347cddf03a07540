"""The reduction template's ``rms_norm`` row op (passes/rms_norm.py), under TRITON_INTERPRET=1:
persistent and looped rows, awkward lengths, with the model's cast and weight as its epilogue."""

from __future__ import annotations

import pytest
import torch

from tests.codegen.triton_backend.triton_testing import close, kernel_op, rand, run, t
from tilefx.codegen.schedule import Schedule
from tilefx.ir import DType

F16, F32 = DType.float16, DType.float32


def _op(shape, n=1):
    return kernel_op("reduction", [t(F16, *shape), t(F16, *shape[len(shape) - n:])], lambda b, x, w: b.op(
        "mul", w, b.op("cast", b.op("rms_norm", b.op("cast", x, dtype=F32), normalized_ndim=n, eps=1e-6),
                       dtype=F16)))


def _ref(x, w, n):
    h = x.float()
    dims = tuple(range(h.dim() - n, h.dim()))
    return w.float() * (h * torch.rsqrt(h.pow(2).mean(dims, keepdim=True) + 1e-6)).half().float()


LOOPED = Schedule.of(XBLOCK=2, RBLOCK=16, persistent=False, num_warps=2)


# 1-element rows, primes, a row past the persistent limit (looped by default), two axes
@pytest.mark.parametrize("shape,n", [((3, 1), 1), ((2, 5, 33), 1), ((1, 4100), 1), ((3, 4, 7), 2), ((7,), 1)])
@pytest.mark.parametrize("schedule", [None, LOOPED], ids=["default", "looped"])
def test_rms_norm_row(shape, n, schedule):
    op = _op(shape, n)
    x, w = rand(op.inputs[0].type, 1) * 3, rand(op.inputs[1].type, 2)
    (y,) = run(op, [x, w], schedule)
    assert y.dtype == torch.float16
    close(y, _ref(x, w, n), F16)


class _RMSNorm(torch.nn.Module):  # transformers' LlamaRMSNorm, as written there
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d) * 0.1 + 1)

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(dtype)


class _Block(torch.nn.Module):
    def __init__(self, d=24):
        super().__init__()
        self.proj, self.norm = torch.nn.Linear(d, d, bias=False), _RMSNorm(d)

    def forward(self, x):
        h = x + self.proj(x)  # the residual matmul: its epilogue writes h alone
        return self.norm(h)


def test_llama_style_norm_compiles_to_one_kernel_for_cuda():
    import tilefx

    torch.manual_seed(0)
    model = _Block().half().eval()
    x = torch.randn(2, 7, 24).half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model.float()(x.float())
    close(got, want, F16)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    assert "<- cast + rms_norm + cast + mul" in report, report
    assert "kernels: 2" in report, report  # matmul + add, then the whole norm
