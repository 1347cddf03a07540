"""Channels-last regions on the cuda path (passes/channels_last.py), under TRITON_INTERPRET=1:
the implicit GEMM and the library conv store NHWC results, and a ResNet-style network compiled
for cuda matches eager with no kernel left to the interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.codegen.triton_backend.triton_testing import close, kernel_op, rand, run, t
from tilefx.codegen.schedule import Schedule
from tilefx.ir import DType

F32, F16 = DType.float32, DType.float16
GEMM = Schedule.of(impl="triton", BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=2)


def _nhwc_conv(n, c, h, w, o, k, stride, pad, dtype):
    """permute(x_nhwc), permute(w_ohwi) -> conv -> permute to NHWC -> + bias row -> relu: a region's
    conv kernel."""
    return kernel_op("contraction", [t(dtype, n, h, w, c), t(dtype, o, k, k, c), t(dtype, o)],
                     lambda b, x, wt, bias: b.op("relu", b.op("add", b.op("permute", b.op(
                         "conv2d", b.op("permute", x, dims=(0, 3, 1, 2)), b.op("permute", wt, dims=(0, 3, 1, 2)),
                         stride=(stride, stride), padding=(pad, pad)), dims=(0, 2, 3, 1)), bias)))


# 1 pixel, primes, C == H == W (NCHW and NHWC shapes equal), tails of every block
@pytest.mark.parametrize("n,c,h,w,o,k,stride,pad", [
    (1, 3, 1, 1, 5, 1, 1, 0), (2, 7, 7, 7, 7, 3, 1, 1), (2, 5, 11, 9, 13, 3, 2, 1), (1, 17, 6, 5, 33, 1, 2, 0)])
@pytest.mark.parametrize("impl", ["triton", "library"])
def test_region_conv_kernel(impl, n, c, h, w, o, k, stride, pad):
    dtype = F16 if impl == "triton" else F32
    op = _nhwc_conv(n, c, h, w, o, k, stride, pad, dtype)
    x, wt, bias = (rand(v.type, i) for i, v in enumerate(op.inputs))
    ref = F.relu(F.conv2d(x.float().permute(0, 3, 1, 2), wt.float().permute(0, 3, 1, 2), None, stride, pad)
                 .permute(0, 2, 3, 1)
                 + bias.float())
    close(run(op, [x, wt, bias], GEMM if impl == "triton" else Schedule.of(impl="library"))[0], ref, dtype)


def test_library_conv_reads_and_writes_the_channels_last_views():
    from tilefx.codegen.triton import conv

    op = _nhwc_conv(2, 8, 6, 6, 16, 3, 1, 1, F32)
    src = conv.emit(op.body, "k", Schedule.of(impl="library")).text
    # cuDNN gets the NHWC input and the OHWI weight as channels-last views
    assert "in0.permute(0, 3, 1, 2)" in src and "in1.permute(0, 3, 1, 2)" in src
    assert ".permute(0, 2, 3, 1).contiguous()" in src  # and its NHWC result without a transpose


class _Bottleneck(nn.Module):
    def __init__(self, c, mid, out, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.c2, self.b2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.c3, self.b3 = nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out)
        self.down = nn.Sequential(nn.Conv2d(c, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)))
        return F.relu(self.b3(self.c3(h)) + self.down(x))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.blocks = nn.Sequential(_Bottleneck(8, 5, 12, 2), _Bottleneck(12, 7, 12, 1))
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        h = self.blocks(F.max_pool2d(F.relu(self.stem(x)), 2))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1)), h


def test_resnet_style_network_for_cuda():
    import tilefx

    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model = model.half()
    x = torch.randn(2, 3, 19, 19).half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model.float()(x.float())
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float16
        close(g, w, F16)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    # the 1x1 convs run as matmuls over NHWC pixels; the 3x3 convs read NHWC (and OHWI) via permutes
    assert report.count("<- matmul") + report.count("<- slice + slice + reshape + matmul") >= 6, report
    assert report.count("<- permute + permute + conv2d + permute") == 2, report
