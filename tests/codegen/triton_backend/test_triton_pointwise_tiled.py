"""The pointwise template's 2-D tiled mode (``pointwise_tiled.py``), under TRITON_INTERPRET=1
against PyTorch: bodies that read an input transposed (ConvNeXt's NHWC -> NCHW layer scale,
head splits that move ``D``, ViT's patch flatten) in fp32/fp16/bf16 on awkward shapes, every
``TILE_Y``, and which mode the generated source takes."""

import math

import pytest
import torch
from triton_testing import close, f32, kernel_op, rand, run, t

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.codegen.triton import default_schedule, kernel_source, schedule_space
from tilefx.codegen.triton import pointwise
from tilefx.codegen.triton.pointwise_tiled import find_tiling
from tilefx.cost_model.gpu_features import gpu_features
from tilefx.ir import DType

F16, BF16 = DType.float16, DType.bfloat16
TORCH = {DType.float32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}
SMALL_TILE = Schedule.of(BLOCK=256, TILE_Y=16, num_warps=2)  # 16 x 16: every shape is split


def _layer_scale(n, h, w, c, dtype=F16):
    """ConvNeXt's block tail: NHWC -> NCHW, times gamma [C, 1, 1], plus the residual."""
    return kernel_op("pointwise", [t(dtype, n, h, w, c), t(dtype, c, 1, 1), t(dtype, n, c, h, w)],
                     lambda b, x, g, r: b.op("add", b.op("mul", b.op("permute", x, dims=(0, 3, 1, 2)), g), r),
                     name="layer_scale")


def _run_layer_scale(op, dtype, schedule=None):
    x, g, r = (rand(v.type, i) for i, v in enumerate(op.inputs))
    (y,) = run(op, [x, g, r], schedule)
    close(y, (x.float().permute(0, 3, 1, 2) * g.float() + r.float()).to(TORCH[dtype]), dtype)


@pytest.mark.parametrize("dtype", [DType.float32, F16, BF16])
def test_layer_scale_runs_tiled_by_default(dtype):
    op = _layer_scale(2, 7, 9, 40, dtype)
    s = default_schedule(op)
    assert (s["TILE_Y"], s["BLOCK"]) == (32, 1024)  # two 64 x 64 tiles would idle the GPU: 32 x 32
    _run_layer_scale(op, dtype)


@pytest.mark.parametrize("shape", [(7, 13, 17, 5), (1, 17, 19, 23), (1, 1, 1, 1), (3, 1, 1, 20),
                                   (1, 5, 1, 33)], ids=str)
@pytest.mark.parametrize("schedule", [None, SMALL_TILE], ids=["default", "16x16"])
def test_layer_scale_awkward_shapes(shape, schedule):
    _run_layer_scale(_layer_scale(*shape, dtype=DType.float32), DType.float32, schedule)


@pytest.mark.parametrize("tile_y", pointwise.TILE_Y)
def test_every_tile_y(tile_y):
    op = _layer_scale(2, 5, 7, 40, DType.float32)
    assert schedule_space(op)["TILE_Y"] == pointwise.TILE_Y
    s = Schedule.of(BLOCK=1024, TILE_Y=tile_y, num_warps=4)
    text = kernel_source(op, s)
    assert ("BLOCK_Y" in text) == (tile_y > 0)
    _run_layer_scale(op, DType.float32, s)


def test_nchw_to_nhwc_merges_the_pixels_into_y():
    op = kernel_op("pointwise", [f32(2, 24, 5, 6)], lambda b, x: b.op(
        "relu", b.op("permute", x, dims=(0, 2, 3, 1))))
    tiling = find_tiling(op.body)
    assert (tiling.y, tiling.x, tiling.z) == ((1, 2), (3,), (0,))
    # the input reads H x W as one linear run: yindex itself, not (y // 6) * 6 + y % 6
    assert "tl.load(in0 + pid_z * 720 + xindex * 30 + yindex, mask=" in kernel_source(op, SMALL_TILE)
    x = rand(op.inputs[0].type, 1)
    for s in (None, SMALL_TILE):
        (y,) = run(op, [x], s)
        close(y, torch.relu(x.permute(0, 2, 3, 1)))


@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_head_split_and_merge(dtype):
    """[B, S, H, D] -> [B, H, S, D] keeps D last: flat. Splitting K transposed ([B, H, D, S])
    and merging it back to [B, S, H*D] read transposed: tiled."""
    B, S, H, D = 2, 19, 3, 16
    split = kernel_op("pointwise", [t(dtype, B, S, H, D)], lambda b, x: b.op("permute", x, dims=(0, 2, 1, 3)))
    merge = kernel_op("pointwise", [t(dtype, B, H, S, D)], lambda b, x: b.op(
        "reshape", b.op("permute", x, dims=(0, 2, 1, 3)), shape=(B, S, H * D)))
    split_t = kernel_op("pointwise", [t(dtype, B, S, H, D)], lambda b, x: b.op("permute", x, dims=(0, 2, 3, 1)))
    merge_t = kernel_op("pointwise", [t(dtype, B, H, D, S)], lambda b, x: b.op(
        "reshape", b.op("permute", x, dims=(0, 3, 1, 2)), shape=(B, S, H * D)))
    assert find_tiling(split.body) is None and find_tiling(merge.body) is None
    assert "TILE_Y" in default_schedule(split_t) and "TILE_Y" in default_schedule(merge_t)
    x = rand(split.inputs[0].type, 1)
    for op, ref in ((split, x.permute(0, 2, 1, 3)), (split_t, x.permute(0, 2, 3, 1))):
        for s in (None, SMALL_TILE):
            (y,) = run(op, [x], s)
            close(y, ref, dtype)
    for op in (merge, merge_t):
        z = rand(op.inputs[0].type, 2)
        ref = z.permute(0, 2, 1, 3) if op is merge else z.permute(0, 3, 1, 2)
        (y,) = run(op, [z], SMALL_TILE)
        close(y, ref.reshape(B, S, H * D), dtype)


def test_patch_flatten_reads_the_reshape_transposed():
    """ViT's ``flatten(2).transpose(1, 2)`` of the patch conv: [B, C, 5, 7] -> [B, 35, C]."""
    op = kernel_op("pointwise", [f32(2, 24, 5, 7), f32(24)], lambda b, x, c: b.op("add", b.op(
        "permute", b.op("reshape", x, shape=(2, 24, 35)), dims=(0, 2, 1)), c))
    tiling = find_tiling(op.body)
    assert (tiling.y, tiling.x) == ((1,), (2,))
    x, c = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2)
    (y,) = run(op, [x, c], SMALL_TILE)
    close(y, x.reshape(2, 24, 35).permute(0, 2, 1) + c)


def test_permute_with_broadcast_inputs():
    """A per-channel bias and a per-column row: each load only takes its own tile mask."""
    op = kernel_op("pointwise", [f32(2, 10, 12, 20), f32(20, 1, 1), f32(12)], lambda b, x, c, w: b.op(
        "mul", b.op("add", b.op("permute", x, dims=(0, 3, 1, 2)), c), w))
    tiling = find_tiling(op.body)
    assert (tiling.y, tiling.x) == ((1,), (3,))  # the [W] row keeps H out of the X axis
    text = kernel_source(op, SMALL_TILE)
    assert "tl.load(in1 + yindex, mask=ymask" in text and "tl.load(in2 + xindex, mask=xmask" in text
    x, c, w = (rand(v.type, i) for i, v in enumerate(op.inputs))
    for s in (None, SMALL_TILE):
        (y,) = run(op, [x, c, w], s)
        close(y, (x.permute(0, 3, 1, 2) + c) * w)


def test_outputs_of_one_shape_share_the_tile():
    op = kernel_op("pointwise", [t(F16, 3, 6, 10, 24)], lambda b, x: [
        b.op("permute", x, dims=(0, 3, 1, 2)), b.op("exp", b.op("permute", x, dims=(0, 3, 1, 2)))])
    text = kernel_source(op, SMALL_TILE)
    assert text.count("tl.store(") == 2 and text.count("@triton.jit") == 1
    x = rand(op.inputs[0].type, 1)
    y, e = run(op, [x], SMALL_TILE)
    close(y, x.permute(0, 3, 1, 2), F16)
    close(e, x.float().permute(0, 3, 1, 2).exp().half(), F16)


@pytest.mark.parametrize("to", [F16, BF16])
def test_permute_feeding_a_cast(to):
    op = kernel_op("pointwise", [f32(2, 9, 11, 20)], lambda b, x: b.op(
        "cast", b.op("permute", x, dims=(0, 3, 1, 2)), dtype=to))
    assert "BLOCK_Y" in kernel_source(op)
    x = rand(op.inputs[0].type, 1)
    (y,) = run(op, [x])
    assert y.dtype == TORCH[to]
    ref = x.permute(0, 3, 1, 2).to(TORCH[to])
    if to == F16:
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
    else:  # Triton's interpreter truncates fp32 -> bf16 (a GPU rounds to nearest even)
        close(y, ref, BF16)


def test_convnext_source_is_tiled():
    op = _layer_scale(32, 56, 56, 96)
    s = default_schedule(op)
    assert (s["TILE_Y"], s["BLOCK"], s["num_warps"]) == (32, 2048, 4)
    text = kernel_source(op, s)
    assert "yindex = (pid_y * BLOCK_Y + tl.arange(0, BLOCK_Y))[:, None]" in text
    assert "xindex = (pid_x * BLOCK_X + tl.arange(0, BLOCK_X))[None, :]" in text
    assert "tl.load(in0 + pid_z * 301056 + yindex + xindex * 96)" in text  # NHWC: rows contiguous
    assert "mask" not in text  # 96 = 3 x 32 channels, 56 * 56 = 49 x 64 pixels
    assert "layer_scale[(4704,)]" in text  # 32 images x 3 x 49 tiles


def test_plain_and_multi_shape_bodies_stay_flat():
    plain = kernel_op("pointwise", [f32(4, 32, 32), f32(32)], lambda b, x, c: b.op("add", x, c))
    bias = kernel_op("pointwise", [f32(2, 20, 8, 8), f32(20, 1, 1)], lambda b, x, c: b.op("mul", x, c))
    multi = kernel_op("pointwise", [f32(2, 8, 8, 20), f32(20, 1)], lambda b, x, c: [
        b.op("permute", x, dims=(0, 3, 1, 2)), b.op("exp", c)])
    for op in (plain, bias, multi):
        assert find_tiling(op.body) is None and "TILE_Y" not in schedule_space(op)
        assert "TILE_Y" not in default_schedule(op)
        assert "BLOCK: tl.constexpr" in kernel_source(op, Schedule.of(BLOCK=256, TILE_Y=32, num_warps=4))
    x, c = rand(multi.inputs[0].type, 1), rand(multi.inputs[1].type, 2)
    y, e = run(multi, [x, c], SMALL_TILE)
    close(y, x.permute(0, 3, 1, 2))
    close(e, c.exp())


def test_clamp_gives_equal_code_one_schedule():
    op = _layer_scale(2, 5, 7, 40, DType.float32)
    body = op.body
    assert pointwise.clamp(body, Schedule.of(BLOCK=1024, TILE_Y=0, num_warps=4)) == \
        pointwise.clamp(body, Schedule.of(BLOCK=1024, num_warps=4)) == Schedule.of(BLOCK=1024, num_warps=4)
    # Y = 40 channels, X = 35 pixels: 64 rows clamp to 64, columns to the 64 of X's next power of 2
    s = pointwise.clamp(body, Schedule.of(BLOCK=4096, TILE_Y=64, num_warps=8))
    assert s == Schedule.of(BLOCK=4096, TILE_Y=64, num_warps=8)
    # at least 16 columns: 64 x 2 would store two elements a row
    assert pointwise.clamp(body, Schedule.of(BLOCK=128, TILE_Y=64, num_warps=8)) == \
        Schedule.of(BLOCK=1024, TILE_Y=64, num_warps=8)
    space = schedule_space(op)
    for block in space["BLOCK"]:
        for ty in space["TILE_Y"]:
            for w in space["num_warps"]:
                s = pointwise.clamp(body, Schedule.of(BLOCK=block, TILE_Y=ty, num_warps=w))
                assert pointwise.clamp(body, s) == s


def test_gpu_features_count_the_tiles():
    h200 = Target(kind="cuda", mcpu="sm_90", arch="sm_90", cores=132, l1_bytes=227 * 1024,
                  l2_bytes=50 * 1024 * 1024)
    op = _layer_scale(32, 56, 56, 96)
    tiled = gpu_features(op, default_schedule(op, h200), h200)
    assert tiled["tpl_pointwise"] == 1.0 and tiled["knob_BLOCK"] == pytest.approx(math.log2(1 + 2048))
    assert tiled["programs"] == pytest.approx(math.log2(1 + 4704)) and tiled["pad_share"] == 0.0
    assert tiled["n"] == pytest.approx(math.log2(1 + 3136))  # X: the merged H x W
    flat = gpu_features(op, Schedule.of(BLOCK=1024, num_warps=4), h200)
    assert flat["programs"] == pytest.approx(math.log2(1 + 32 * 96 * 56 * 56 // 1024)) and flat["n"] == 1.0
