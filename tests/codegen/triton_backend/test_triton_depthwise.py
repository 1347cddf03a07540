"""The direct (depthwise / grouped) conv2d template, under TRITON_INTERPRET=1 against
``torch.nn.functional.conv2d``: every point of its flat tiling's space on awkward shapes
(prime channels and planes, batch 1, 1x5 / 3x3 / 7x7 kernels, stride and dilation 2,
channel multiplier 2, groups 2 and 4 with 3 channels a group), every rows x columns tile
of a 7x7, the rows x columns tiling on more awkward shapes (1x1 planes, planes smaller
than the tile, a kernel larger than the input), fused epilogues and prologues,
fp16/bf16, and the path through the space, the tuner and the compiler.

The interpreter ignores ``num_warps`` and ``num_stages`` (they only change the launch
line), so each distinct kernel body of a space is run once; every point is emitted.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from triton_testing import TORCH, close, kernel_op, rand, run, t

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import SearchSpace
from tilefx.codegen.target import Target
from tilefx.codegen.triton import depthwise
from tilefx.codegen.triton.depthwise import MAX_TILE, ConvGeometry
from tilefx.codegen.triton.templates import emit_source, space
from tilefx.ir import DType

F32, F16, BF16 = DType.float32, DType.float16, DType.bfloat16


@dataclass(frozen=True)
class Case:
    id: str
    n: int
    c: int
    hw: tuple[int, int]
    o: int
    k: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 0  # 0: depthwise (groups = c)

    @property
    def g(self) -> int:
        return self.groups or self.c

    def types(self, dtype: DType) -> tuple:
        return t(dtype, self.n, self.c, *self.hw), t(dtype, self.o, self.c // self.g, *self.k)

    def attrs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.g)

    def ref(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.float(), w.float(), None, self.stride, self.padding, self.dilation, self.g)


CASES = [
    Case("dw3x3-c7-b1-13x13-pad1", 1, 7, (13, 13), 7, (3, 3), padding=(1, 1)),
    Case("dw7x7-c13-11x7-pad3", 1, 13, (11, 7), 13, (7, 7), padding=(3, 3)),
    Case("dw1x5-c5-stride2-pad0x2", 2, 5, (7, 13), 5, (1, 5), stride=(2, 2), padding=(0, 2)),
    Case("dw3x3-c7-stride2-dil2-pad0", 1, 7, (17, 13), 7, (3, 3), stride=(2, 2), dilation=(2, 2)),
    Case("dw3x3-mult2-c5-stride2-pad1", 2, 5, (11, 11), 10, (3, 3), stride=(2, 2), padding=(1, 1)),
    Case("g2-cg3-og2-3x3-pad1", 1, 6, (9, 11), 4, (3, 3), padding=(1, 1), groups=2),
    Case("g4-cg3-og3-3x3-s2-d2-pad3", 2, 12, (13, 7), 12, (3, 3), (2, 1), (3, 3), (2, 2), groups=4),
    Case("dw3x3-one-column-out", 3, 7, (5, 3), 7, (3, 3)),
]


def _bias_relu(case: Case, dtype: DType):
    x_t, w_t = case.types(dtype)
    return kernel_op("contraction", [x_t, w_t, t(dtype, case.o, 1, 1)], lambda b, x, w, c: b.op(
        "relu", b.op("add", b.op("conv2d", x, w, **case.attrs()), c)))


def _launchless(text: str) -> str:
    """The module without its launch meta (what the interpreter ignores)."""
    return re.sub(r", num_warps=\d+, num_stages=\d+\)", ")", text)


def _distinct(op, points) -> dict[str, Schedule]:
    """Emit every point; one schedule per distinct kernel body."""
    g = ConvGeometry.of(next(o for o in op.body.ops if o.name == "conv2d"))
    out: dict[str, Schedule] = {}
    for s in points:
        source, _ = emit_source(op, s)
        used = source.schedule
        assert used == depthwise.clamp(g, s) and used["BLOCK_C"] * used["BLOCK_HW"] <= MAX_TILE
        assert used["num_warps"] * 32 <= max(32, used["BLOCK_C"] * used["BLOCK_HW"])
        out.setdefault(_launchless(source.text), used)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_point_of_the_space_fp32(case):
    op = _bias_relu(case, F32)
    knobs = space(op)
    assert knobs["impl"] == ["library", "depthwise"] and knobs["BLOCK_W"][0] == 0
    # the flat tiling's points (rows x columns: test_every_rows_by_columns_tile_of_a_7x7)
    flat = {**{k: v for k, v in knobs.items() if k != "impl"}, "BLOCK_W": [0]}
    points = list(SearchSpace.of(flat).enumerate())
    assert len(points) == 6 * 7 * 4 * 3
    x, w, c = (rand(v.type, i + 1) for i, v in enumerate(op.inputs))
    ref = F.relu(case.ref(x, w) + c)
    distinct = _distinct(op, (p.with_(impl="depthwise") for p in points))
    assert len(distinct) >= 2
    for s in distinct.values():
        (y,) = run(op, [x, w, c], s)
        close(y, ref, F32)


def _sampled(n: int) -> list[Schedule]:
    """``n`` schedules that together take every value of every knob."""
    cycle = {k: itertools.cycle(v) for k, v in depthwise.SPACE.items()}
    return [Schedule.of(impl="depthwise", **{k: next(it) for k, it in cycle.items()}) for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=lambda c: c.id)
def test_half_precision_every_knob_value(case, dtype):
    _check_half(case, dtype, _sampled(6))


def _check_half(case, dtype, schedules):
    op = _bias_relu(case, dtype)
    x, w, c = (rand(v.type, i + 1) for i, v in enumerate(op.inputs))
    ref = F.relu(case.ref(x, w) + c.float())
    for s in schedules:
        (y,) = run(op, [x, w, c], s)
        assert y.dtype == TORCH[dtype]
        close(y, ref, dtype)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]], ids=lambda c: c.id)
def test_batch_norm_and_residual_epilogue_two_outputs(case, dtype):
    """Unfolded batch norm (scale, shift), a residual and hardswish; the pre-activation
    sum is a second output, as when a later kernel reads it too."""
    x_t, w_t = case.types(dtype)
    oh = (case.hw[0] + 2 * case.padding[0] - case.dilation[0] * (case.k[0] - 1) - 1) // case.stride[0] + 1
    ow = (case.hw[1] + 2 * case.padding[1] - case.dilation[1] * (case.k[1] - 1) - 1) // case.stride[1] + 1
    chan = t(dtype, case.o, 1, 1)

    def body(b, x, w, scale, shift, res):
        z = b.op("add", b.op("add", b.op("mul", b.op("conv2d", x, w, **case.attrs()), scale), shift), res)
        return z, b.op("hardswish", z)
    op = kernel_op("contraction", [x_t, w_t, chan, chan, t(dtype, case.n, case.o, oh, ow)], body)
    ins = [rand(v.type, i + 3) for i, v in enumerate(op.inputs)]
    x, w, scale, shift, res = ins
    z = case.ref(x, w) * scale.float() + shift.float() + res.float()
    for s in _sampled(2):
        y0, y1 = run(op, ins, s)
        close(y0, z, dtype)
        close(y1, F.hardswish(z), dtype)


def test_prologue_on_the_input_is_zero_in_the_padding():
    """conv(x + 1): the padded border is 0, not prologue(0) = 1."""
    case = CASES[0]
    x_t, w_t = case.types(F32)
    op = kernel_op("contraction", [x_t, w_t], lambda b, x, w: b.op(
        "conv2d", b.op("add", x, b.scalar(1.0, F32)), w, **case.attrs()))
    x, w = rand(x_t, 1), rand(w_t, 2)
    for s in _sampled(2):
        close(run(op, [x, w], s)[0], case.ref(x + 1, w))


# the rows x columns tiling (BLOCK_W > 0) where its offsets and masks can go wrong: tiles
# larger than the plane, planes not a multiple of the tile, channel tails, every bound
TILED = [
    Case("dw7x7-c13-13x7-pad3", 1, 13, (13, 7), 13, (7, 7), padding=(3, 3)),
    Case("dw7x7-c3-29x31-pad3", 1, 3, (29, 31), 3, (7, 7), padding=(3, 3)),
    Case("dw7x7-c6-b2-1x1-plane-pad3", 2, 6, (1, 1), 6, (7, 7), padding=(3, 3)),
    Case("dw5x5-c6-29x31-s2-pad2", 1, 6, (29, 31), 6, (5, 5), stride=(2, 2), padding=(2, 2)),
    Case("dw3x3-c5-dil2-pad2-11x13", 1, 5, (11, 13), 5, (3, 3), padding=(2, 2), dilation=(2, 2)),
    Case("dw7x7-c3-b2-kernel-over-3x5-pad3", 2, 3, (3, 5), 3, (7, 7), padding=(3, 3)),
    Case("dw7x7-c5-no-pad-s1x2-13x17", 1, 5, (13, 17), 5, (7, 7), stride=(1, 2)),
    Case("g3-cg2-og2-7x7-pad3", 1, 6, (9, 10), 6, (7, 7), padding=(3, 3), groups=3),
    Case("dw5x5-mult2-c3-b2-pad2", 2, 3, (12, 9), 6, (5, 5), padding=(2, 2)),
]


def _tiled(bw: int, bhw: int, bc: int) -> Schedule:
    return Schedule.of(impl="depthwise", BLOCK_W=bw, BLOCK_HW=bhw, BLOCK_C=bc, num_warps=4, num_stages=2)


# 4 rows x 16 columns and 8 x 8: several tiles a plane, the last ones partly outside it;
# 16 rows x 64 columns x 32 channels: clamped to one tile, larger than the plane (MAX_TILE)
TILED_SCHEDULES = [_tiled(16, 64, 4), _tiled(8, 64, 2), _tiled(64, 1024, 32)]


@pytest.mark.parametrize("case", TILED, ids=lambda c: c.id)
def test_rows_by_columns_on_awkward_shapes(case):
    op = _bias_relu(case, F32)
    x, w, c = (rand(v.type, i + 1) for i, v in enumerate(op.inputs))
    ref = F.relu(case.ref(x, w) + c)
    for s in (TILED_SCHEDULES[0], TILED_SCHEDULES[2]):
        source, _ = emit_source(op, s)
        assert source.schedule["BLOCK_W"] > 0 and " + tap" in source.text
        (y,) = run(op, [x, w, c], s)
        close(y, ref, F32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("case", [TILED[0], TILED[3], TILED[7]], ids=lambda c: c.id)
def test_rows_by_columns_half_precision(case, dtype):
    """bf16 too: the template has no ``tl.dot``, which the interpreter cannot run in bf16."""
    _check_half(case, dtype, [TILED_SCHEDULES[1]])


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", [TILED[0], TILED[3], TILED[7], TILED[8]], ids=lambda c: c.id)
def test_rows_by_columns_prologue_and_epilogue(case, dtype):
    """conv(relu(x + y + 1)) + bias + residual, and its SiLU: the prologue's operand of the
    input's shape reads at the tap's offset, the padding stays 0 (not relu(0 + 0 + 1) = 1),
    the residual reads at the output's offset; two outputs."""
    x_t, w_t = case.types(dtype)
    res_t = t(dtype, *case.ref(rand(x_t), rand(w_t)).shape)

    def body(b, x, w, y, bias, res):
        pre = b.op("relu", b.op("add", b.op("add", x, y), b.scalar(1.0, dtype)))
        z = b.op("add", b.op("add", b.op("conv2d", pre, w, **case.attrs()), bias), res)
        return z, b.op("silu", z)
    op = kernel_op("contraction", [x_t, w_t, x_t, t(dtype, case.o, 1, 1), res_t], body)
    ins = [rand(v.type, i + 5) for i, v in enumerate(op.inputs)]
    x, w, y, bias, res = ins
    z = case.ref(F.relu(x.float() + y.float() + 1), w) + bias.float() + res.float()
    z0, z1 = run(op, ins, TILED_SCHEDULES[0 if dtype == F32 else 1])
    close(z0, z, dtype)
    close(z1, F.silu(z), dtype)


@pytest.mark.slow
def test_every_rows_by_columns_tile_of_a_7x7():
    """Every tile ``clamp`` makes of the rows x columns space (``BLOCK_W x BLOCK_HW x BLOCK_C``
    at one warp count) for a 7x7 on a 13x11 plane of 6 channels: each distinct code once."""
    case = Case("dw7x7-c6-13x11-pad3", 1, 6, (13, 11), 6, (7, 7), padding=(3, 3))
    op = _bias_relu(case, F32)
    g = ConvGeometry.of(next(o for o in op.body.ops if o.name == "conv2d"))
    knobs = {**depthwise.SPACE, "BLOCK_W": [v for v in depthwise.SPACE["BLOCK_W"] if v],
             "num_warps": [4], "num_stages": [1]}
    points = [p.with_(impl="depthwise") for p in SearchSpace.of(knobs).enumerate()]
    distinct = _distinct(op, points)
    tiles = {(s["BLOCK_C"], s["BLOCK_HW"] // s["BLOCK_W"], s["BLOCK_W"]) for s in distinct.values()}
    # columns 8 or 16 (11 wide), rows up to 16 (13 high), channels up to 8 (6 of them)
    assert {bw for *_, bw in tiles} == {8, 16} and max(bh for _, bh, _ in tiles) == 16
    assert {bc for bc, *_ in tiles} == {1, 2, 4, 8}
    # equal code, equal schedule; a clamped schedule clamps to itself
    assert len(set(distinct.values())) == len(distinct) == len(tiles)
    assert all(depthwise.clamp(g, s) == s for s in distinct.values())
    x, w, c = (rand(v.type, i + 1) for i, v in enumerate(op.inputs))
    ref = F.relu(case.ref(x, w) + c)
    for s in distinct.values():
        (y,) = run(op, [x, w, c], s)
        close(y, ref, F32)


def test_rows_by_columns_clamp_default_and_code():
    convnext = [ConvGeometry(32, c, hw, hw, c, 7, 7, hw, hw, (1, 1), (3, 3), (1, 1), c)
                for c, hw in ((96, 56), (192, 28), (384, 14), (768, 7))]
    # the H200 sweep's best on ConvNeXt's planes: one channel x 64 pixels, one warp, flat
    tiles = [(s["BLOCK_C"], s["BLOCK_HW"], s.get("BLOCK_W", 0), s["num_warps"])
             for s in map(depthwise.default_schedule, convnext)]
    assert tiles == [(1, 64, 0, 1)] * 4
    # 3x3s keep the flat default; BLOCK_W 0 and absent are the same (flat) schedule
    mobilenet = ConvGeometry(32, 144, 56, 56, 144, 3, 3, 56, 56, (1, 1), (1, 1), (1, 1), 144)
    assert "BLOCK_W" not in depthwise.default_schedule(mobilenet)
    flat = Schedule.of(BLOCK_HW=128, BLOCK_C=4, num_warps=4, num_stages=1)
    assert depthwise.clamp(mobilenet, flat) == depthwise.clamp(mobilenet, flat.with_(BLOCK_W=0))
    # columns: at most the plane's width (to a power of two) and BLOCK_HW; rows fill the rest
    g = convnext[3]  # 7x7 plane
    assert depthwise.clamp(g, flat.with_(BLOCK_W=64, BLOCK_HW=1024, BLOCK_C=32)).as_dict() == dict(
        impl="depthwise", BLOCK_W=8, BLOCK_HW=64, BLOCK_C=32, num_warps=4, num_stages=1)
    one_row = depthwise.clamp(convnext[0], flat.with_(BLOCK_W=64, BLOCK_HW=32))
    assert (one_row["BLOCK_W"], one_row["BLOCK_HW"]) == (32, 32)
    big = depthwise.clamp(convnext[0], flat.with_(BLOCK_W=64, BLOCK_HW=1024, BLOCK_C=32))
    assert big["BLOCK_HW"] * big["BLOCK_C"] == MAX_TILE and big["BLOCK_W"] == 64
    # the code: the launch grid is programs(); each tap reads at the tile's offset plus a
    # constant under a row mask AND a column mask, no division by the width
    op = _bias_relu(TILED[1], F16)
    s = _tiled(16, 128, 4)
    source, _ = emit_source(op, s)
    cg = ConvGeometry.of(next(o for o in op.body.ops if o.name == "conv2d"))
    assert depthwise.programs(cg, s) == 1 * 4 * 2  # channel blocks x row tiles x column tiles
    assert f"[({depthwise.programs(cg, s)},)]" in source.text
    assert "in0 + xoff + tap" in source.text and "//" not in source.text.split("acc0 =")[1]
    assert re.search(r"m\d+ = \(m\d+\) & \(\(iw >= 0\) & \(iw < 31\)\)", source.text), source.text


def test_space_tuner_view_and_clamping():
    target = Target.parse("cuda")
    dw = _bias_relu(CASES[1], F16)
    sp = SearchSpace.for_kernel(dw, target)
    # the library is the extern candidate; the direct template's knobs only
    assert sp.has_extern and sp.values("impl") == ("depthwise",)
    assert set(sp.names) == {"impl", *depthwise.SPACE} and sp.size == 504 * 5
    # groups == 1 keeps the implicit GEMM; a non-float grouped conv has only the library
    dense = kernel_op("contraction", [t(F16, 1, 4, 9, 9), t(F16, 6, 4, 3, 3)],
                      lambda b, x, w: b.op("conv2d", x, w))
    assert SearchSpace.for_kernel(dense, target).values("impl") == ("triton",)
    ints = kernel_op("contraction", [t(DType.int32, 1, 4, 9, 9), t(DType.int32, 4, 1, 3, 3)],
                     lambda b, x, w: b.op("conv2d", x, w, groups=4))
    assert space(ints)["impl"] == ["library"]
    # clamping: an 11x7 plane (77 pixels) of 13 channels needs at most 128 pixels x 16 channels
    g = ConvGeometry.of(next(o for o in dw.body.ops if o.name == "conv2d"))
    big = depthwise.clamp(g, Schedule.of(BLOCK_HW=1024, BLOCK_C=32, num_warps=8, num_stages=3))
    assert (big["BLOCK_HW"], big["BLOCK_C"], big["num_stages"]) == (128, 16, 1)
    wide = depthwise.clamp(ConvGeometry(32, 96, 112, 112, 96, 3, 3, 112, 112, (1, 1), (1, 1), (1, 1), 96),
                           Schedule.of(BLOCK_HW=1024, BLOCK_C=32, num_warps=8, num_stages=2))
    assert wide["BLOCK_HW"] * wide["BLOCK_C"] == MAX_TILE and wide["BLOCK_HW"] == 1024


def test_cost_model_features_see_the_direct_tiling():
    from tilefx.cost_model.gpu_features import gpu_features

    target = Target.parse("cuda")
    op = _bias_relu(CASES[1], F16)
    small = gpu_features(op, Schedule.of(impl="depthwise", BLOCK_HW=32, BLOCK_C=1, num_warps=1,
                                         num_stages=1), target)
    large = gpu_features(op, Schedule.of(impl="depthwise", BLOCK_HW=256, BLOCK_C=16, num_warps=4,
                                         num_stages=1), target)
    assert small["programs"] > large["programs"] and small["tile_elems"] < large["tile_elems"]
    assert small["impl_library"] == 0 and small["smem"] == 0 and small["tpl_conv"] == 1
    # rows x columns on the 11x7 plane: 8 rows of 8 columns pad both axes (2 programs of 64
    # pixels a channel block for 77 pixels); the flat 128-pixel tile pads 51 of 128
    tiled = gpu_features(op, Schedule.of(impl="depthwise", BLOCK_HW=64, BLOCK_W=8, BLOCK_C=16,
                                         num_warps=4, num_stages=1), target)
    flat = gpu_features(op, Schedule.of(impl="depthwise", BLOCK_HW=128, BLOCK_C=16, num_warps=4,
                                        num_stages=1), target)
    assert tiled["programs"] > flat["programs"]
    assert tiled["pad_share"] == pytest.approx(1 - 13 * 77 / (2 * 16 * 64))
    assert flat["pad_share"] == pytest.approx(1 - 13 * 77 / (16 * 128))


class _Block(nn.Module):
    """MobileNet's depthwise block: depthwise 3x3 (multiplier 2), batch norm, ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


def _block() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _Block().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(2, 6, 13, 11)


def test_compile_for_cuda_with_the_depthwise_schedule(monkeypatch, tmp_path):
    """``tilefx.compile(target="cuda")`` with the conv kernel's default forced to the direct
    template: folded batch norm, bias and ReLU6 in its epilogue, equal to eager."""
    import tilefx
    from tilefx.codegen.triton import conv

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    forced = Schedule.of(impl="depthwise", BLOCK_HW=32, BLOCK_C=4, num_warps=2, num_stages=1)
    monkeypatch.setattr(conv, "default_schedule", lambda body, target=None: forced)
    model, x = _block()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
    report = cm.report()
    assert "fallbacks: 0" in report and "impl='depthwise'" in report, report


@pytest.mark.slow
def test_tuning_a_depthwise_kernel_for_cuda(tmp_path):
    """The tuner samples the direct template's space, checks each candidate against the
    reference and builds what it chose."""
    from tilefx.compiler.capture import capture
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import compile_graph
    from tilefx.compiler.session import CompileSession
    from tilefx.storage.database import TuningDatabase

    model, x = _block()
    db = str(tmp_path / "t.db")
    options = CompileOptions(target="cuda", tune_trials=3, tune_db=db)
    with torch.no_grad():
        compiled = compile_graph(capture(model, (x,)), options, CompileSession())
        torch.testing.assert_close(compiled(x)[0], model(x), rtol=1e-5, atol=1e-5)
    (tuned,) = compiled.record.tuning
    assert tuned.best is not None and tuned.trials == 3
    records = TuningDatabase(db).records()
    direct = [r for r in records if r.schedule.get("impl") == "depthwise"]
    assert direct and all(r.ok for r in direct), records


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", [CASES[4], CASES[6]], ids=lambda c: c.id)
def test_every_compiled_point_on_gpu(case, monkeypatch):
    """Through Triton's compiler: every distinct code of the space (num_warps and num_stages
    included), fp16, against torch on the device."""
    from tilefx.codegen.triton import build_kernel
    from tilefx.codegen.triton.source import fingerprint

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on
    op = _bias_relu(case, F16)
    x, w, c = (rand(v.type, i + 1).cuda() for i, v in enumerate(op.inputs))
    ref = F.relu(case.ref(x, w) + c.float())
    knobs = {**space(op), "impl": ["depthwise"]}
    seen = set()
    for s in SearchSpace.of(knobs).enumerate():
        source, _ = emit_source(op, s)
        if fingerprint(source) in seen:
            continue
        seen.add(fingerprint(source))
        y = torch.full(tuple(op.results[0].type.shape), float("nan"), device="cuda", dtype=torch.float16)
        build_kernel(op, None, s)(x, w, c, y)
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2, msg=lambda m, s=s: f"{s}: {m}")
