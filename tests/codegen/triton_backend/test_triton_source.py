"""Generated Triton source: golden snapshots, fingerprints, spaces, the cache-dir file,
and clear refusals for what the templates do not cover.

Regenerate the snapshots after an intended change with
``TILEFX_UPDATE_GOLDEN=1 python -m pytest tests/codegen/triton_backend/test_triton_source.py``
and review the diff.
"""

import os
from pathlib import Path

import pytest
from triton_testing import f32, kernel_op, rand, run, t

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import build_kernel, default_schedule, kernel_source, schedule_space
from tilefx.codegen.triton.source import fingerprint
from tilefx.codegen.triton.templates import emit_source
from tilefx.ir import DType

GOLDEN = Path(__file__).parent / "golden"


def _pointwise_chain():
    return kernel_op("pointwise", [f32(4, 6), f32(6)], lambda b, x, c: b.op(
        "relu", b.op("mul", b.op("add", x, c), b.scalar(0.5, DType.float32))), name="add_mul_relu")


def _softmax():
    return kernel_op("reduction", [f32(8, 100)], lambda b, x: b.op("softmax", x, dim=-1), name="softmax")


def _matmul_epilogue():
    return kernel_op("contraction", [t(DType.float16, 64, 96), t(DType.float16, 96, 128), t(DType.float16, 128)],
                     lambda b, x, w, c: b.op("silu", b.op("add", b.op("matmul", x, w), c)),
                     name="matmul_bias_silu")


@pytest.mark.parametrize("make", [_pointwise_chain, _softmax, _matmul_epilogue],
                         ids=["pointwise", "softmax", "matmul_epilogue"])
def test_golden_source(make):
    op = make()
    text = kernel_source(op)
    path = GOLDEN / f"{op.attr('name')}.py.txt"
    if os.environ.get("TILEFX_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"generated source of {op.attr('name')} changed; see {path}"


def test_built_kernel_is_a_real_file_and_tracebacks_point_at_it():
    op = _pointwise_chain()
    built = build_kernel(op)
    assert Path(built.path).read_text() == built.source
    assert built.fingerprint in {fingerprint(emit_source(op)[0])}
    assert "@triton.jit" in built.source and "def launch(" in built.source


def test_fingerprint_clamps_block_sizes_to_the_problem():
    op = _softmax()  # rows of 100: any persistent RBLOCK becomes 128
    a, _ = emit_source(op, Schedule.of(XBLOCK=8, RBLOCK=128, persistent=True, num_warps=4))
    b, _ = emit_source(op, Schedule.of(XBLOCK=64, RBLOCK=4096, persistent=True, num_warps=4))
    assert fingerprint(a) == fingerprint(b)  # XBLOCK 64 > 8 rows clamps to 8 as well
    c, _ = emit_source(op, Schedule.of(XBLOCK=8, RBLOCK=128, persistent=True, num_warps=8))
    assert fingerprint(c) != fingerprint(a)  # launch meta is part of the identity
    mm = _matmul_epilogue()
    d, _ = emit_source(mm, Schedule.of(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8))
    e, _ = emit_source(mm, Schedule.of(BLOCK_M=64, BLOCK_N=128, BLOCK_K=96 * 2, GROUP_M=1))
    assert fingerprint(d) == fingerprint(e)  # M=64 and K=96 clamp both


def test_schedule_spaces_and_defaults():
    mm = _matmul_epilogue()
    space = schedule_space(mm)
    assert space["impl"] == ["triton", "library"] and 128 in space["BLOCK_N"] and "num_stages" in space
    assert default_schedule(mm)["impl"] == "triton"
    assert set(schedule_space(_softmax())) == {"XBLOCK", "RBLOCK", "persistent", "num_warps"}
    assert default_schedule(_softmax())["persistent"] is True
    conv = kernel_op("contraction", [f32(1, 2, 5, 5), f32(3, 2, 3, 3)], lambda b, x, w: b.op("conv2d", x, w))
    assert schedule_space(conv)["impl"] == ["library", "triton"] and default_schedule(conv)["impl"] == "library"
    depthwise = kernel_op("contraction", [f32(1, 2, 5, 5), f32(2, 1, 3, 3)],
                          lambda b, x, w: b.op("conv2d", x, w, groups=2))
    # grouped: the library and the direct template (depthwise.py); a depthwise conv defaults
    # to the direct template (measured faster than cuDNN), a grouped one with Cg > 1 to the library
    assert schedule_space(depthwise)["impl"] == ["library", "depthwise"] and "BLOCK_HW" in schedule_space(depthwise)
    assert default_schedule(depthwise)["impl"] == "depthwise"
    grouped = kernel_op("contraction", [f32(1, 4, 5, 5), f32(4, 2, 3, 3)],
                        lambda b, x, w: b.op("conv2d", x, w, groups=2))
    assert default_schedule(grouped)["impl"] == "library"
    # a matmul fed by a computed operand has no library candidate
    computed = kernel_op("contraction", [f32(8, 16), f32(16, 8)], lambda b, x, w: b.op(
        "matmul", b.op("pad", x, pads=(0, 0, 0, 0), value=0.0), w))
    assert schedule_space(computed)["impl"] == ["triton"]


def test_unsupported_bodies_raise_not_implemented():
    bn = kernel_op("pointwise", [f32(2, 3, 4)] + [f32(3)] * 4, lambda b, x, m, v, w, c: b.op(
        "batch_norm", x, m, v, w, c))  # canonicalize rewrites it before fusion
    with pytest.raises(NotImplementedError, match="batch_norm"):
        build_kernel(bn)
    int_mm = kernel_op("contraction", [t(DType.int32, 4, 4), t(DType.int32, 4, 4)],
                       lambda b, x, w: b.op("matmul", x, w))
    with pytest.raises(NotImplementedError, match="i32"):
        build_kernel(int_mm)
    conv = kernel_op("contraction", [f32(1, 2, 5, 5), f32(2, 1, 3, 3)], lambda b, x, w: b.op("conv2d", x, w, groups=2))
    with pytest.raises(NotImplementedError, match="library"):
        build_kernel(conv, None, Schedule.of(impl="triton"))


def test_fp32_matmul_uses_tf32_only_when_torch_allows_it(set_tf32):

    op = kernel_op("contraction", [f32(16, 16), f32(16, 16)], lambda b, x, w: b.op("matmul", x, w))
    triton = Schedule.of(impl="triton")
    set_tf32(False)
    assert 'input_precision="ieee"' in kernel_source(op, triton)
    assert default_schedule(op)["impl"] == "library"  # cuBLAS's SGEMM is the default then
    set_tf32(True)
    assert 'input_precision="tf32"' in kernel_source(op, triton)
    assert default_schedule(op)["impl"] == "triton"


def test_bf16_pointwise_computes_in_fp32():
    op = kernel_op("pointwise", [t(DType.bfloat16, 3, 7)], lambda b, x: b.op("sigmoid", x))
    assert ".to(tl.float32)" in kernel_source(op)
    x = rand(op.inputs[0].type, 1)
    (y,) = run(op, [x])
    import torch

    torch.testing.assert_close(y.float(), torch.sigmoid(x.float()), rtol=2e-2, atol=2e-2)
