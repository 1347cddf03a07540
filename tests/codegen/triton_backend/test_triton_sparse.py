"""The Triton sparse contraction template (``bsr_matmul``), under TRITON_INTERPRET=1 on small
odd shapes against torch on the dense weight; its schedule space; the 2:4 candidate's
pattern check. The ``gpu`` tests compile for a real device (skipped without CUDA)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from triton_testing import TORCH, close, kernel_op, run, t

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import default_schedule, kernel_source, schedule_space
from tilefx.codegen.triton import semi24
from tilefx.ir import DType
from tilefx.passes.sparsity import to_bsr

F16, F32, I32 = DType.float16, DType.float32, DType.int32


def block_sparse(k, n, block, density, seed=0, empty_column=True):
    """``W[K, N]`` with about ``density`` of its blocks nonzero (and block column 0 empty)."""
    rng = np.random.default_rng(seed)
    bk, bn = block
    keep = rng.random((k // bk, n // bn)) < density
    keep[0, -1] = True  # at least one block
    if empty_column:
        keep[:, 0] = False
    return rng.standard_normal((k, n)).astype(np.float32) * np.repeat(np.repeat(keep, bk, 0), bn, 1)


def bsr_kernel(x_type, w, block, epilogue=None, extra=()):
    data, idx, ptr = to_bsr(w, block)
    dtype = x_type.dtype
    types = [x_type, t(dtype, *data.shape), t(I32, *idx.shape), t(I32, *ptr.shape), *extra]
    axis = 1 if x_type.rank == 4 else -1

    def body(b, x, d, i, p, *rest):
        y = b.op("bsr_matmul", x, d, i, p, axis=axis)
        return epilogue(b, y, *rest) if epilogue else y
    op = kernel_op("sparse_contraction", types, body)
    consts = [torch.from_numpy(data).to(TORCH[dtype]), torch.from_numpy(idx), torch.from_numpy(ptr)]
    return op, consts


def randn(dtype, *shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(TORCH[dtype])


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("rows,block,step", [(5, (16, 16), 1), (1, (16, 16), 4), (19, (32, 16), 2),
                                             (37, (16, 32), 8)])
def test_linear_bias_relu(dtype, rows, block, step):
    k, n = 96, 64
    w = block_sparse(k, n, block, 0.5)
    w_t = torch.from_numpy(w).to(TORCH[dtype])  # the weight as the kernel sees it (rounded)
    op, consts = bsr_kernel(t(dtype, rows, k), w, block, lambda b, y, c: b.op("relu", b.op("add", y, c)),
                            [t(dtype, n)])
    x, c = randn(dtype, rows, k), randn(dtype, n, seed=2)
    sched = Schedule.of(BLOCK_M=16, STEP_BLOCKS=step, num_warps=4, num_stages=2)
    (y,) = run(op, [x, *consts, c], sched)
    close(y, torch.relu(x.float() @ w_t.float() + c.float()), dtype)
    assert (y[:, :block[1]] == torch.relu(c[:block[1]]).to(y.dtype)).all()  # the empty column


@pytest.mark.parametrize("block", [(4, 8), (3, 8), (1, 16)])
def test_narrow_blocks_take_the_multiply_sum_path(block):
    k, n = 24, 32
    w = block_sparse(k, n, block, 0.4, seed=3)
    op, consts = bsr_kernel(t(F32, 3, 7, k), w, block)
    x = randn(F32, 3, 7, k)
    (y,) = run(op, [x, *consts])
    close(y, x @ torch.from_numpy(w))
    assert "tl.dot" not in kernel_source(op)


def test_conv1x1_with_residual():
    k, n = 32, 48
    w = block_sparse(k, n, (16, 16), 0.5, seed=4)
    op, consts = bsr_kernel(t(F32, 2, k, 3, 5), w, (16, 16), lambda b, y, r: b.op("add", y, r),
                            [t(F32, 2, n, 3, 5)])
    x, r = randn(F32, 2, k, 3, 5), randn(F32, 2, n, 3, 5, seed=5)
    (y,) = run(op, [x, *consts, r])
    close(y, F.conv2d(x, torch.from_numpy(w).T.reshape(n, k, 1, 1)) + r)


def test_permuted_activation_is_index_arithmetic():
    k, n = 32, 16
    w = block_sparse(k, n, (16, 16), 1.0, seed=6, empty_column=False)
    data, idx, ptr = to_bsr(w, (16, 16))
    types = [t(F32, 2, 3, k), t(F32, *data.shape), t(I32, *idx.shape), t(I32, *ptr.shape)]
    op = kernel_op("sparse_contraction", types, lambda b, x, d, i, p: b.op(
        "bsr_matmul", b.op("permute", x, dims=(1, 0, 2)), d, i, p, axis=-1))
    x = randn(F32, 2, 3, k)
    (y,) = run(op, [x, *(torch.from_numpy(a) for a in (data, idx, ptr))])
    close(y, x.permute(1, 0, 2) @ torch.from_numpy(w))


def test_schedule_space_default_and_clamp():
    w = block_sparse(128, 64, (16, 16), 0.3)
    op, _ = bsr_kernel(t(F16, 1, 128), w, (16, 16))
    space = schedule_space(op)
    assert set(space) == {"impl", "BLOCK_M", "STEP_BLOCKS", "num_warps", "num_stages"}
    assert space["impl"] == ["triton"]  # no 2:4 candidate without a GPU
    s = default_schedule(op)
    assert (s["impl"], s["BLOCK_M"], s["STEP_BLOCKS"]) == ("triton", 16, 4)
    # BLOCK_M beyond the rows, STEP_BLOCKS beyond a block column: clamped, same code
    same = [kernel_source(op, Schedule.of(BLOCK_M=bm, STEP_BLOCKS=st)) for bm, st in ((16, 8), (128, 64))]
    assert same[0] == same[1]
    assert kernel_source(op, Schedule.of(STEP_BLOCKS=1)) != same[0]


def test_tuner_space_and_fingerprints():
    from tilefx.codegen.triton.measure import fingerprint, triton_space
    from tilefx.codegen.target import Target

    w = block_sparse(64, 32, (16, 16), 0.5)
    op, _ = bsr_kernel(t(F16, 20, 64), w, (16, 16))
    space = triton_space(op)
    assert not space.has_extern and "STEP_BLOCKS" in dict(space.knobs)
    target = Target.parse("cuda")
    a = fingerprint(op, Schedule.of(BLOCK_M=32, STEP_BLOCKS=2, num_warps=4, num_stages=2), target)
    b = fingerprint(op, Schedule.of(BLOCK_M=64, STEP_BLOCKS=2, num_warps=4, num_stages=2), target)
    c = fingerprint(op, Schedule.of(BLOCK_M=32, STEP_BLOCKS=1, num_warps=4, num_stages=2), target)
    assert a == b != c  # 64 rows clamp to 32 (20 rows): same code


def test_two_four_pattern_check():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    assert not semi24.holds_2to4(w)
    w[1::4] = 0
    w[3::4] = 0  # 2 of every 4 along K
    assert semi24.holds_2to4(w) and semi24.holds_2to4(torch.from_numpy(w))
    w[3, 0] = 1.0  # 3 nonzeros in one group
    assert not semi24.holds_2to4(w)
    assert not semi24.available(F16, 4096, 4096) or torch.cuda.is_available()


def test_compile_for_cuda_picks_the_sparse_triton_kernel():
    """End to end under the interpreter: a 16x16-block-sparse Linear compiled for cuda becomes
    one sparse_contraction kernel (bias and GELU fused) chosen by the GPU estimate."""
    import tilefx

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    with torch.no_grad():
        keep = (torch.rand(96 // 16, 64 // 16) < 0.15).repeat_interleave(16, 0).repeat_interleave(16, 1)
        keep[0, 0] = True
        lin.weight *= keep
    model = torch.nn.Sequential(lin, torch.nn.GELU()).eval()
    x = torch.randn(5, 64)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    report = cm.report()
    assert "sparse_contraction <- bsr_matmul + add + gelu (triton" in report
    assert "sparse 16x16" in report and "interpreter" not in report


# ------------------------------------------------------------------ on a GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _on_gpu(op, inputs, schedule=None):
    from tilefx.codegen.triton import build_kernel

    outs = [torch.empty(tuple(r.type.shape), device="cuda", dtype=TORCH[r.type.dtype]) for r in op.results]
    build_kernel(op, None, schedule)(*inputs, *outs)
    torch.cuda.synchronize()
    return outs


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on


@pytest.mark.parametrize("dtype", [F16, DType.bfloat16, F32])
@pytest.mark.parametrize("rows,block", [(1, (16, 16)), (37, (32, 32)), (130, (16, 32))])
@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("compiled")
def test_sparse_kernel_on_gpu(dtype, rows, block):
    k, n = 512, 384
    w = block_sparse(k, n, block, 0.2, seed=7)
    op, consts = bsr_kernel(t(dtype, rows, k), w, block, lambda b, y, c: b.op("gelu", b.op("add", y, c)),
                            [t(dtype, n)])
    x, c = randn(dtype, rows, k).cuda(), randn(dtype, n, seed=2).cuda()
    w_t = torch.from_numpy(w).to(TORCH[dtype]).cuda()
    want = F.gelu(x.float() @ w_t.float() + c.float())
    tol = {F32: 1e-3, F16: 2e-2, DType.bfloat16: 6e-2}[dtype]
    for step in (1, 4):
        (y,) = _on_gpu(op, [x, *(a.cuda() for a in consts), c], Schedule.of(STEP_BLOCKS=step))
        torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * 10)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
                    reason="2:4 sparse tensor cores need compute capability >= 8.0")
def test_semi24_candidate_on_gpu():
    k, n, rows = 256, 128, 5
    rng = np.random.default_rng(8)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[0::4] = 0
    w[2::4] = 0
    op, consts = bsr_kernel(t(F16, rows, k), w, (16, 16), lambda b, y, c: b.op("relu", b.op("add", y, c)),
                            [t(F16, n)])
    assert "semi24" in schedule_space(op)["impl"]
    x, c = randn(F16, rows, k).cuda(), randn(F16, n, seed=2).cuda()
    args = [x, *(a.cuda() for a in consts), c]
    (y,) = _on_gpu(op, args, Schedule.of(impl="semi24"))
    want = torch.relu(x.float() @ torch.from_numpy(w).cuda().half().float() + c.float())
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-1)
    # a weight that is not 2:4 is refused, never pruned
    w2 = block_sparse(k, n, (16, 16), 0.5, seed=9)
    op2, consts2 = bsr_kernel(t(F16, rows, k), w2, (16, 16))
    with pytest.raises(ValueError, match="not 2:4"):
        _on_gpu(op2, [x, *(a.cuda() for a in consts2)], Schedule.of(impl="semi24"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("compiled")
def test_compile_fp16_sparse_linear_on_gpu_measures_both_kernels():
    import tilefx

    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 1024)
    with torch.no_grad():
        keep = (torch.rand(1024 // 32, 1024 // 32) < 0.1).repeat_interleave(32, 0).repeat_interleave(32, 1)
        lin.weight *= keep
    model = torch.nn.Sequential(lin, torch.nn.ReLU()).cuda().half().eval()
    x = torch.randn(4, 1024, device="cuda", dtype=torch.float16)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=2e-2, atol=2e-2)
    report = cm.report()
    assert "measured dense" in report, report  # the MeasuredChooser timed both on the GPU
    assert "interpreter" not in report
