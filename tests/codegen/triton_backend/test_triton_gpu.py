"""The Triton templates compiled for a real GPU (skipped without CUDA): the same kernels
the interpreter tests run, now through Triton's compiler, against torch on the device."""

import pytest
import torch
import torch.nn.functional as F
from triton_testing import kernel_op, t

from tilefx.ir import DType

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on


def _cuda(ty, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(tuple(ty.shape), generator=g, device="cuda").to(getattr(torch, ty.dtype.name))


def _run(op, inputs):
    from tilefx.codegen.triton import build_kernel

    outs = [torch.empty(tuple(r.type.shape), device="cuda", dtype=getattr(torch, r.type.dtype.name))
            for r in op.results]
    build_kernel(op)(*inputs, *outs)
    torch.cuda.synchronize()
    return outs


@pytest.mark.parametrize("dtype", [DType.float32, DType.float16, DType.bfloat16])
def test_matmul_layer_norm_softmax_on_gpu(dtype):
    tol = {DType.float32: 1e-3, DType.float16: 2e-2, DType.bfloat16: 6e-2}[dtype]
    mm = kernel_op("contraction", [t(dtype, 130, 96), t(dtype, 96, 200), t(dtype, 200)],
                   lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c)))
    x, w, c = (_cuda(v.type, i) for i, v in enumerate(mm.inputs))
    torch.testing.assert_close(_run(mm, [x, w, c])[0].float(),
                               F.gelu(x.float() @ w.float() + c.float()), rtol=tol, atol=tol * 10)
    ln = kernel_op("reduction", [t(dtype, 33, 300), t(dtype, 300), t(dtype, 300)],
                   lambda b, x, w, c: b.op("layer_norm", x, w, c, normalized_ndim=1))
    x, w, c = (_cuda(v.type, i) for i, v in enumerate(ln.inputs))
    torch.testing.assert_close(_run(ln, [x, w, c])[0].float(),
                               F.layer_norm(x.float(), (300,), w.float(), c.float()), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [DType.float16, DType.bfloat16])
def test_folded_batch_matmul_and_implicit_gemm_defaults_on_gpu(dtype):
    """The new defaults, compiled: a Linear + GELU on a [B, S, D] sequence (the batch tiled as
    rows) and a 1x1 and a patchify conv on the implicit GEMM, in fp16 and bf16 (the
    interpreter cannot run bf16 dots)."""
    from tilefx.codegen.triton import default_schedule

    tol = {DType.float16: 2e-2, DType.bfloat16: 6e-2}[dtype]
    mm = kernel_op("contraction", [t(dtype, 3, 197, 96), t(dtype, 96, 200), t(dtype, 200)],
                   lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c)))
    x, w, c = (_cuda(v.type, i) for i, v in enumerate(mm.inputs))
    torch.testing.assert_close(_run(mm, [x, w, c])[0].float(),
                               F.gelu(x.float() @ w.float() + c.float()), rtol=tol, atol=tol * 10)
    for xs, ws, stride in (((4, 40, 17, 19), (72, 40, 1, 1), 1), ((2, 3, 32, 32), (48, 3, 8, 8), 8)):
        conv = kernel_op("contraction", [t(dtype, *xs), t(dtype, *ws), t(dtype, ws[0], 1, 1)],
                         lambda b, x, w, c, s=stride: b.op("relu", b.op("add", b.op(
                             "conv2d", x, w, stride=(s, s), padding=(0, 0)), c)))
        assert default_schedule(conv)["impl"] == "triton"
        x, w, c = (_cuda(v.type, i) for i, v in enumerate(conv.inputs))
        want = F.relu(F.conv2d(x.float(), w.float(), None, stride) + c.float())
        torch.testing.assert_close(_run(conv, [x, w, c])[0].float(), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_on_gpu(causal):
    types = [t(DType.float16, 2, 4, 300, 64)] * 3
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v, causal=causal))
    q, k, v = (_cuda(ty, i) for i, ty in enumerate(types))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(_run(op, [q, k, v])[0], ref, rtol=2e-2, atol=2e-2)


def test_compiled_model_on_gpu():
    import tilefx

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.LayerNorm(128),
                                torch.nn.Linear(128, 10)).cuda().eval()
    x = torch.randn(16, 64, device="cuda")
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-3, atol=1e-3)
    assert "interpreter" not in cm.report()


def test_every_attention_schedule_on_gpu_with_a_padding_mask():
    """Every point of the attention template's space, compiled, on BERT's shape class (heads of
    64, an additive padding mask broadcast over heads and queries) against SDPA. The H200
    sweep found three points wrong on the GPU (64x64 and 64x128 at 8 warps, 16x32 at 1 stage)
    that the interpreter computes right; the compile-time check rejects such a kernel, this
    names every one. (The 8-warp ones now build their 4-warp twins: ``attention.clamp``.)
    Compiled side by side first (``prewarm``)."""
    from tilefx.codegen.space import SearchSpace
    from tilefx.codegen.triton import build_kernel
    from tilefx.codegen.triton.prewarm import job_for, prewarm
    from tilefx.codegen.triton.templates import space

    types = [t(DType.float16, 2, 12, 256, 64)] * 3 + [t(DType.float16, 2, 1, 1, 256)]
    op = kernel_op("contraction", types, lambda b, q, k, v, m: b.op("attention", q, k, v, m))
    q, k, v, m = (_cuda(ty, i) for i, ty in enumerate(types))
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m.float())
    knobs = {**space(op), "impl": ["triton"]}
    built = {}
    for s in SearchSpace.of(knobs).enumerate():
        kernel = build_kernel(op, None, s)
        built.setdefault(kernel.fingerprint, kernel)
    prewarm([job_for(kernel, op) for kernel in built.values()])
    wrong = []
    for kernel in built.values():
        out = torch.full_like(q, float("nan"))
        kernel(q, k, v, m, out)
        torch.cuda.synchronize()
        err = (out.float() - want).abs().nan_to_num(1e9).max().item()
        if not err <= 3e-2:
            wrong.append(f"{kernel.schedule}: max abs err {err:.3g}")
    assert not wrong, f"{len(wrong)} of {len(built)} attention schedules are wrong on this GPU:\n" + \
        "\n".join(wrong)
