"""The direct conv template's channels-last tiling (``depthwise._pixels_by_channels``), under
TRITON_INTERPRET=1 against ``torch.nn.functional.conv2d``: a region's conv kernel reads its
NHWC input and its ``[KH, KW, 1, C]`` weight through permutes and stores NHWC. Awkward shapes
(1-pixel planes, a kernel larger than the plane, prime channels, 3 images, stride and dilation
2, a channel multiplier, groups of 3 channels), every knob value, fp16/bf16, an NHWC residual
with the NCHW result as a second output, the defaults, and a ConvNeXt compiled for cuda."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.codegen.triton_backend.triton_testing import TORCH, close, kernel_op, rand, run, t
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import depthwise
from tilefx.codegen.triton.depthwise import MAX_TILE, ConvGeometry
from tilefx.codegen.triton.templates import emit_source
from tilefx.ir import DType

F32, F16, BF16 = DType.float32, DType.float16, DType.bfloat16
TO_NCHW, TO_NHWC, FROM_HWIO = (0, 3, 1, 2), (0, 2, 3, 1), (3, 2, 0, 1)

# (n, c, h, w, out channels, groups, k, stride, padding, dilation)
CASES = {
    "dw7x7-c13-11x7": (1, 13, 11, 7, 13, 13, 7, 1, 3, 1),
    "dw7x7-c96-b2-9x9": (2, 96, 9, 9, 96, 96, 7, 1, 3, 1),  # the code (not run: slow to interpret)
    "dw7x7-c40-b2-5x6": (2, 40, 5, 6, 40, 40, 7, 1, 3, 1),
    "dw7x7-c5-b3-1x1-plane": (3, 5, 1, 1, 5, 5, 7, 1, 3, 1),
    "dw7x7-c6-3x5-kernel-over-plane": (2, 6, 3, 5, 6, 6, 7, 1, 3, 1),
    "dw3x3-mult2-c7-s2-d2": (2, 7, 13, 11, 14, 7, 3, 2, 1, 2),
    "g3-cg3-og2-5x5-pad2": (1, 9, 7, 6, 6, 3, 5, 1, 2, 1),
}


def _region_conv(case: str, dtype: DType, residual: bool = False):
    """permute(x_nhwc) -> conv (weight: permute of [KH, KW, Cg, O]) -> permute to NHWC -> + bias
    row [-> + NHWC residual, and the NCHW conv result as a second output]."""
    n, c, h, w, o, g, k, s, p, d = CASES[case]
    oh, ow = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size in (h, w))
    types = [t(dtype, n, h, w, c), t(dtype, k, k, c // g, o), t(dtype, o)] + \
        ([t(dtype, n, oh, ow, o)] if residual else [])

    def body(b, x, wt, bias, *res):
        y = b.op("conv2d", b.op("permute", x, dims=TO_NCHW), b.op("permute", wt, dims=FROM_HWIO),
                 stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
        z = b.op("add", b.op("permute", y, dims=TO_NHWC), bias)
        return (b.op("add", z, res[0]), y) if res else z

    def ref(x, wt, bias, *res):
        y = F.conv2d(x.float().permute(TO_NCHW), wt.float().permute(FROM_HWIO), None, s, p, d, g)
        z = y.permute(TO_NHWC) + bias.float()
        return (z + res[0].float(), y) if res else (z,)
    return kernel_op("contraction", types, body), ref


def _sampled(n: int) -> list[Schedule]:
    """``n`` schedules that together take every value of every knob."""
    cycle = {k: itertools.cycle(v) for k, v in depthwise.SPACE.items()}
    return [Schedule.of(impl="depthwise", **{k: next(it) for k, it in cycle.items()}) for _ in range(n)]


def _geometry(op) -> ConvGeometry:
    return ConvGeometry.of(next(o for o in op.body.ops if o.name == "conv2d"), op.body)


@pytest.mark.parametrize("case", [c for c in CASES if c != "dw7x7-c96-b2-9x9"])
def test_every_knob_value_fp32(case):
    op, ref = _region_conv(case, F32)
    g = _geometry(op)
    assert g.channels_last
    ins = [rand(v.type, i) for i, v in enumerate(op.inputs)]
    (want,) = ref(*ins)
    for s in [None, *_sampled(7)]:
        source, _ = emit_source(op, s)
        used = source.schedule
        if used["impl"] == "library":  # the default of a grouped conv (several channels a group)
            assert s is None and g.cg > 1
            continue
        assert "BLOCK_W" not in used and used["BLOCK_C"] * used["BLOCK_HW"] <= MAX_TILE
        if s is not None:
            assert used == depthwise.clamp(g, s)
        close(run(op, ins, s)[0], want)


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("case", ["dw7x7-c13-11x7", "dw7x7-c5-b3-1x1-plane", "g3-cg3-og2-5x5-pad2"])
def test_half_precision_nhwc_residual_and_nchw_second_output(case, dtype):
    op, ref = _region_conv(case, dtype, residual=True)
    ins = [rand(v.type, i) for i, v in enumerate(op.inputs)]
    want = ref(*ins)
    for s in [None, *_sampled(2)]:
        got = run(op, ins, s)
        assert [y.dtype for y in got] == [TORCH[dtype]] * 2
        for y, w in zip(got, want):
            close(y, w, dtype)


def test_the_code_loads_channel_rows():
    """Channels are the tile's fast axis: each tap loads the input at a pixel's NHWC row plus
    the channel vector, the weight at one contiguous row of ``[KH, KW, 1, C]``, and the bias
    row loads without the pixel mask; the store is the NHWC offset."""
    op, _ = _region_conv("dw7x7-c96-b2-9x9", F16)
    text = emit_source(op, None)[0].text
    assert "tl.load(in1 + kh * 672 + kw * 96 + oc)" in text, text
    assert "+ iw * 96 + cin0" in text and "off = pix * 96 + oc" in text
    assert "tl.load(in2 + oc)" in text and "tl.where" not in text  # a view's masked load is 0


def test_defaults_and_grid():
    # ConvNeXt-T's planes at batch 32: a channel block that divides C, 2048 outputs a program
    for c, hw in ((96, 56), (192, 28), (384, 14), (768, 7)):
        g = ConvGeometry(32, c, hw, hw, c, 7, 7, hw, hw, (1, 1), (3, 3), (1, 1), c, channels_last=True)
        s = depthwise.default_schedule(g)
        assert c % s["BLOCK_C"] == 0 and s["BLOCK_C"] * s["BLOCK_HW"] == 2048 and s["num_warps"] == 4
        assert depthwise.programs(g, s) == -(-32 * hw * hw // s["BLOCK_HW"]) * (c // s["BLOCK_C"])
    assert depthwise.default_schedule(g)["BLOCK_C"] == 64
    assert depthwise.default_schedule(ConvGeometry(32, 96, 56, 56, 96, 7, 7, 56, 56, (1, 1), (3, 3), (1, 1), 96,
                                                   channels_last=True))["BLOCK_C"] == 32
    # NCHW geometry keeps its measured default (one channel x 64 pixels on a 7x7)
    nchw = ConvGeometry(32, 96, 56, 56, 96, 7, 7, 56, 56, (1, 1), (3, 3), (1, 1), 96)
    assert (depthwise.default_schedule(nchw)["BLOCK_C"], depthwise.default_schedule(nchw)["BLOCK_HW"]) == (1, 64)


class _LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _CNBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        h = self.fc2(F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return self.scale * h.permute(0, 3, 1, 2) + x


class _ConvNeXt(nn.Module):
    """torchvision's ConvNeXt in small: stem, blocks, downsampling, pool, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), _LayerNorm2d(8))
        self.stage1 = nn.Sequential(_CNBlock(8), _CNBlock(8))
        self.down = nn.Sequential(_LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2))
        self.stage2 = _CNBlock(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_convnext_for_cuda():
    import tilefx

    torch.manual_seed(0)
    model = _ConvNeXt().eval().half()
    x = torch.randn(2, 3, 44, 36).half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model.float()(x.float())
    assert got.dtype == torch.float16
    close(got, want, F16)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    # the three 7x7s read NHWC and the [KH, KW, 1, C] weight through permutes, store NHWC, and
    # run the direct template's channels-last tiling
    lines = report.splitlines()
    schedules = [lines[i + 1] for i, ln in enumerate(lines) if "<- permute + permute + conv2d + permute + add" in ln]
    assert len(schedules) == 4, report  # and the downsampling conv: cuDNN on the NHWC view
    assert sum("impl='depthwise'" in ln for ln in schedules) == 3, report
    assert sum("impl='library'" in ln for ln in schedules) == 1, report


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["dw7x7-c40-b2-5x6", "dw3x3-mult2-c7-s2-d2"])  # 47 and 31 kernels
def test_every_compiled_point_on_gpu(case, monkeypatch):
    """Through Triton's compiler (vector loads, layouts the interpreter never sees): every
    distinct code of the channels-last space, num_warps and num_stages included, fp16, with an
    NHWC residual and the NCHW second output, against torch on the device."""
    from tilefx.codegen.space import SearchSpace
    from tilefx.codegen.triton import build_kernel
    from tilefx.codegen.triton.source import fingerprint
    from tilefx.codegen.triton.templates import space

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on
    op, ref = _region_conv(case, F16, residual=True)
    ins = [rand(v.type, i).cuda() for i, v in enumerate(op.inputs)]
    want = ref(*ins)
    seen = set()
    for s in SearchSpace.of({**space(op), "impl": ["depthwise"]}).enumerate():
        source, _ = emit_source(op, s)
        if fingerprint(source) in seen:
            continue
        seen.add(fingerprint(source))
        outs = [torch.full(tuple(r.type.shape), float("nan"), device="cuda", dtype=torch.float16) for r in op.results]
        build_kernel(op, None, s)(*ins, *outs)
        for y, w in zip(outs, want):
            torch.testing.assert_close(y.float(), w, rtol=2e-2, atol=2e-2, msg=lambda m, s=s: f"{s}: {m}")
    assert len(seen) > 10
