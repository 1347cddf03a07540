"""Matmul epilogue flags on a real GPU (skipped without CUDA): many programs racing on the
workspace's atomics, launch after launch, and replayed in a CUDA graph."""

import pytest
import torch
from triton_testing import kernel_op, t

from tilefx.codegen.schedule import Schedule
from tilefx.ir import DType

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

F16 = DType.float16


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on


def _flag_op(m, k, n):
    def body(b, a, w, r):
        h = b.op("add", b.op("matmul", a, w), r)
        return h, b.op("any", b.op("eq", b.op("abs", h), b.scalar(float("inf"), F16)), dims=(), keepdim=False)
    return kernel_op("contraction", [t(F16, m, k), t(F16, k, n), t(F16, m, n)], body)


@pytest.mark.parametrize("schedule", [None, Schedule.of(impl="library", EPILOGUE_BLOCK=1024),
                                      Schedule.of(impl="triton", BLOCK_M=64, BLOCK_N=64, BLOCK_K=32,
                                                  GROUP_M=8, num_warps=4, num_stages=3)],
                         ids=["default", "library", "64x64"])
def test_flag_of_thousands_of_programs_launch_after_launch(schedule):
    from tilefx.codegen.triton import build_kernel

    op = _flag_op(4099, 512, 515)  # no tile divides M or N: part-filled edge tiles
    built = build_kernel(op, None, schedule)
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4099, 512, generator=g, device="cuda").half()
    w = (torch.randn(512, 515, generator=g, device="cuda") * 0.05).half()
    r0 = torch.randn(4099, 515, generator=g, device="cuda").half()
    h, flag = torch.empty_like(r0), torch.empty((), dtype=torch.bool, device="cuda")
    for n, place in enumerate([None, 0, None, -1, -1, None, 1234567, None, None, -1]):
        r = r0.clone()
        if place is not None:
            r.view(-1)[place] = float("inf")
        built(a, w, r, h, flag)
        torch.cuda.synchronize()
        assert bool(flag) == (place is not None), (n, place)
        assert bool(torch.isinf(h).any()) == (place is not None)


def test_t5_clamp_under_cuda_graphs():
    """T5's fp16 clamp compiled (two kernels) and replayed from a CUDA graph: an inf clamps the
    call it is in and no later one."""
    import tilefx

    class Block(torch.nn.Module):
        def __init__(self, d=512):
            super().__init__()
            self.proj = torch.nn.Linear(d, d, bias=False)

        def forward(self, x):
            h = x + self.proj(x)
            c = torch.where(torch.isinf(h).any(), torch.finfo(h.dtype).max - 1000, torch.finfo(h.dtype).max)
            h = torch.clamp(h, min=-c, max=c)
            var = h.float().pow(2).mean(-1, keepdim=True)  # T5LayerNorm, as transformers writes it
            return h, (h.float() * torch.rsqrt(var + 1e-6)).half()

    torch.manual_seed(0)
    model = Block().half().cuda().eval()
    x = torch.randn(16, 256, 512, device="cuda").half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        for n in range(12):
            xx = x.clone()
            if n % 3 == 1:
                xx[n % 16, 7, 3] = float("inf")
            got, want = cm(xx), model(xx)
            for g, w in zip(got, want):  # the clamped h: 64512 where eager's is (a NaN stays NaN)
                torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2, equal_nan=True)
    report = cm.report()
    assert "kernels: 2" in report and "fallbacks: 0, interpreted: 0" in report, report
