"""Default schedules of the Triton templates (the Hopper heuristics): which impl, which
tiles, for the shapes the zoo and the kernel benchmarks use; and that the defaults
still compute the right thing (under TRITON_INTERPRET=1)."""

import pytest
import torch.nn.functional as F
from triton_testing import close, f32, kernel_op, rand, run, t

from tilefx.codegen.target import Target
from tilefx.codegen.triton import default_schedule
from tilefx.codegen.triton.matmul import DEFAULT_SMS, sm_count
from tilefx.ir import DType

F16 = DType.float16


def _mm(m, n, k, dtype=F16, epilogue=True):
    types = [t(dtype, m, k), t(dtype, k, n), t(dtype, n)]
    return kernel_op("contraction", types, lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c))
                     if epilogue else b.op("matmul", x, w))


def test_sm_count_comes_from_a_cuda_target():
    assert sm_count(None) == DEFAULT_SMS == sm_count(Target.parse("cpu"))
    assert sm_count(Target(kind="cuda", cores=78)) == 78


def _tile(s):
    return (s["impl"], s["BLOCK_M"], s["BLOCK_N"], s["BLOCK_K"], s["num_warps"], s["num_stages"])


def test_fp16_matmul_tiles_follow_the_sweep():
    # transformer MLPs and projections: 128x128, 8 warps, 3 stages (ViT fc1, BERT fc1, QKV)
    assert _tile(default_schedule(_mm(4096, 3072, 768))) == ("triton", 128, 128, 64, 8, 3)
    assert _tile(default_schedule(_mm(4096, 4096, 4096))) == ("triton", 128, 128, 64, 8, 3)
    # K = 96 (ConvNeXt-T's first MLP): three full 32-steps
    assert _tile(default_schedule(_mm(100352, 384, 96))) == ("triton", 128, 128, 32, 8, 3)
    # an output of many waves with a deep K: the big tile's operand reuse pays
    assert _tile(default_schedule(_mm(8192, 4096, 4096))) == ("triton", 128, 256, 64, 8, 3)
    s = default_schedule(_mm(1024, 1024, 1024))  # 128x128 tiles would leave most SMs idle
    assert (s["impl"], s["BLOCK_M"], s["BLOCK_N"]) == ("triton", 64, 128)
    s = default_schedule(_mm(8, 4096, 512))  # GEMV-like
    assert (s["BLOCK_M"], s["BLOCK_K"]) == (16, 128)


def test_bare_and_deep_k_matmuls_default_to_cublas():
    # nothing fused: fusion saves nothing, cuBLAS leads (GPT-2's LM head)
    assert default_schedule(_mm(4096, 50264, 768, epilogue=False))["impl"] == "library"
    lm_head = kernel_op("contraction", [t(F16, 4096, 768), t(F16, 50264, 768)], lambda b, x, w: b.op(
        "matmul", x, b.op("permute", w, dims=(1, 0))))  # a tied weight, read transposed
    assert default_schedule(lm_head)["impl"] == "library"
    # K = 3072 on 150 tiles of 128x128 (ViT-B's fc2 at batch 16): cuBLAS splits K
    assert default_schedule(_mm(3152, 768, 3072))["impl"] == "library"
    # a small bare matmul stays a Triton kernel
    assert default_schedule(_mm(64, 64, 64, epilogue=False))["impl"] == "triton"


def test_skinny_deep_matmul_defaults_to_cublas():
    # the MLP's second Linear at batch 64: 64 x 1024 output, K = 4096
    assert default_schedule(_mm(64, 1024, 4096))["impl"] == "library"
    # a shallow skinny one stays fused in one Triton kernel, with short tiles
    s = default_schedule(_mm(64, 768, 256))
    assert s["impl"] == "triton" and s["BLOCK_M"] <= 64
    # fewer SMs: the same problem fills the device
    assert default_schedule(_mm(64, 1024, 4096), Target(kind="cuda", cores=8))["impl"] == "triton"


def test_fp32_matmul_defaults_to_cublas_unless_tf32(set_tf32):
    set_tf32(False)
    assert default_schedule(_mm(512, 512, 512, DType.float32))["impl"] == "library"
    computed = kernel_op("contraction", [f32(32, 16), f32(16, 8)], lambda b, x, w: b.op(
        "matmul", b.op("pad", x, pads=(0, 0, 0, 0), value=0.0), w))
    assert default_schedule(computed)["impl"] == "triton"  # no library candidate there
    set_tf32(True)
    s = default_schedule(_mm(512, 512, 512, DType.float32))
    assert s["impl"] == "triton" and (s["BLOCK_M"], s["BLOCK_N"], s["BLOCK_K"]) == (32, 64, 32)


def test_pointwise_blocks_follow_the_size():
    small = kernel_op("pointwise", [f32(3, 50)], lambda b, x: b.op("relu", x))
    big = kernel_op("pointwise", [f32(1024, 1024)], lambda b, x: b.op("relu", x))
    mid = kernel_op("pointwise", [f32(256, 256)], lambda b, x: b.op("relu", x))
    assert default_schedule(small)["BLOCK"] == 128  # never below 128 elements a program
    assert (default_schedule(big)["BLOCK"], default_schedule(big)["num_warps"]) == (1024, 4)
    assert default_schedule(mid)["BLOCK"] == 512  # 128 programs rather than 64


def test_reductions_are_persistent_and_spread_rows_over_the_sms():
    few = kernel_op("reduction", [f32(64, 1000)], lambda b, x: b.op("softmax", x, dim=-1))
    s = default_schedule(few)
    assert s["persistent"] is True and s["XBLOCK"] == 1 and s["RBLOCK"] == 1024
    many = kernel_op("reduction", [f32(8192, 768)], lambda b, x: b.op("softmax", x, dim=-1))
    assert default_schedule(many)["XBLOCK"] == 4
    wide = kernel_op("reduction", [f32(4, 10000)], lambda b, x: b.op("sum", x, dims=(1,)))
    assert default_schedule(wide)["persistent"] is False


def test_attention_defaults():
    long = kernel_op("contraction", [t(F16, 4, 16, 2048, 64)] * 3, lambda b, q, k, v: b.op("attention", q, k, v))
    s = default_schedule(long)
    assert (s["BLOCK_M"], s["BLOCK_N"], s["num_warps"], s["num_stages"]) == (128, 64, 4, 3)
    short = kernel_op("contraction", [t(F16, 4, 4, 64, 64)] * 3, lambda b, q, k, v: b.op("attention", q, k, v))
    assert default_schedule(short)["BLOCK_M"] == 64


@pytest.mark.parametrize("m,n,k", [(16, 40, 24), (70, 33, 48), (5, 8, 130)])
def test_default_matmul_schedules_compute_correctly(m, n, k):
    op = _mm(m, n, k)
    x, w, c = (rand(v.type, i) for i, v in enumerate(op.inputs))
    (y,) = run(op, [x, w, c])
    close(y, F.gelu(x.float() @ w.float() + c.float()), F16)


def _conv(x, w, stride=1, padding=0, dtype=F16, groups=1):
    types = [t(dtype, *x), t(dtype, *w), t(dtype, w[0], 1, 1)]
    return kernel_op("contraction", types, lambda b, xx, ww, c: b.op("relu", b.op("add", b.op(
        "conv2d", xx, ww, stride=(stride,) * 2, padding=(padding,) * 2, groups=groups), c)))


def test_a_sequence_linear_tiles_the_batch_as_rows():
    """[B, S, D] @ W is one tall GEMM: ViT's seq-first QKV input (M = 16 a batch) took the
    16-row GEMV tile at 19% of roofline; folded it takes the 128x128 tile."""
    vit = kernel_op("contraction", [t(F16, 197, 16, 768), t(F16, 768, 2304), t(F16, 2304)],
                    lambda b, x, w, c: b.op("add", b.op("matmul", b.op("permute", x, dims=(1, 0, 2)), w), c))
    s = default_schedule(vit)
    assert (s["impl"], s["BLOCK_M"], s["BLOCK_N"]) == ("triton", 128, 128)
    convnext = kernel_op("contraction", [t(F16, 32, 56, 56, 96), t(F16, 96, 384), t(F16, 384)],
                         lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c)))
    s = default_schedule(convnext)
    assert (s["BLOCK_M"], s["BLOCK_K"]) == (128, 32)  # K = 96: three whole 32-steps


@pytest.mark.parametrize("x,w,stride,padding,impl", [
    ((32, 256, 56, 56), (64, 256, 1, 1), 1, 0, "triton"),     # ResNet-50 1x1 reduce
    ((32, 16, 112, 112), (96, 16, 1, 1), 1, 0, "triton"),     # MobileNetV2 expand
    ((16, 3, 224, 224), (768, 3, 16, 16), 16, 0, "triton"),   # ViT patchify
    ((32, 3, 224, 224), (64, 3, 7, 7), 2, 3, "triton"),       # ResNet stem
    ((32, 256, 14, 14), (256, 256, 3, 3), 1, 1, "library"),   # 3x3 over many channels: cuDNN
])
def test_conv_defaults_follow_the_sweep(x, w, stride, padding, impl):
    s = default_schedule(_conv(x, w, stride, padding))
    assert s["impl"] == impl
    if impl == "triton":
        assert s["BLOCK_M"] in (64, 128) and s["BLOCK_N"] <= 128
    assert default_schedule(_conv(x, w, stride, padding, DType.float32))["impl"] == "library"


@pytest.mark.parametrize("x,w,stride,padding", [
    ((2, 5, 7, 9), (11, 5, 1, 1), 1, 0), ((1, 3, 9, 9), (17, 3, 2, 2), 2, 0),
    ((3, 3, 13, 11), (8, 3, 3, 3), 2, 1), ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0)])
def test_default_implicit_gemm_convs_compute_correctly(x, w, stride, padding, dtype=F16):
    # fp16 only: Triton's interpreter mishandles bf16 dots (bf16: test_triton_gpu.py)
    op = _conv(x, w, stride, padding, dtype)
    assert default_schedule(op)["impl"] == "triton"
    xx, ww, c = (rand(v.type, i) for i, v in enumerate(op.inputs))
    (y,) = run(op, [xx, ww, c])
    ref = F.relu(F.conv2d(xx.float(), ww.float(), None, stride, padding) + c.float())
    close(y, ref, dtype)


def test_a_conv_reading_through_a_permute_stays_with_cudnn():
    """ConvNeXt's downsampling conv reads its channels-last LayerNorm output: cuDNN takes the
    permuted view as NHWC; the implicit GEMM's gather through it was 3-6x slower."""
    types = [t(F16, 32, 28, 28, 96), t(F16, 192, 96, 2, 2), t(F16, 192, 1, 1)]
    op = kernel_op("contraction", types, lambda b, x, w, c: b.op("add", b.op(
        "conv2d", b.op("permute", x, dims=(0, 3, 1, 2)), w, stride=(2, 2), padding=(0, 0)), c))
    assert default_schedule(op)["impl"] == "library"
