"""The GPU sparsity choice end to end: bf16 weights and 2:4 weights compiled for cuda, under
TRITON_INTERPRET=1 (the estimate decides; 2:4 is never picked without a timing) and, marked
``gpu``, on a device (timed; a 2:4 pick is built with the semi24 kernel without tuning)."""

import pytest
import torch
from triton_testing import TORCH  # noqa: F401  (sets TRITON_INTERPRET=1 before Triton loads)

from tilefx.ir.interpreter import run_graph


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch, tmp_path):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))  # a fresh tuning database


def block_sparse_linear(k, n, density, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        keep = (torch.rand(n // 16, k // 16) < density).repeat_interleave(16, 0).repeat_interleave(16, 1)
        keep[:16, :16] = True
        lin.weight *= keep
    return lin


def two_four_linear(k, n, seed=0):
    """``nn.Linear`` whose weight keeps 2 of every 4 consecutive inputs (2:4 along K)."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        keep = torch.zeros(n, k // 4, 4)
        idx = torch.rand(n, k // 4, 4).argsort(-1)[..., :2]
        keep.scatter_(-1, idx, 1.0)
        lin.weight *= keep.reshape(n, k)
    return lin


def notes(cm):
    (record,) = cm.records
    return record, "\n".join(record.notes)


def test_bf16_linear_becomes_sparse_under_the_interpreter():
    """The bf16 weight reaches the pass; the optimized IR computes the eager result (checked
    with the reference interpreter: Triton's interpreter mishandles bf16 dots)."""
    import tilefx

    model = torch.nn.Sequential(block_sparse_linear(64, 96, 0.1), torch.nn.GELU()).bfloat16().eval()
    x = torch.randn(5, 64).bfloat16()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        cm(x)  # compiles
        want = model(x).float()
    record, text = notes(cm)
    assert "sparse 16x16" in text and "bf16 @ W [64, 96]" in text, text
    assert [k.kind for k in record.kernels].count("sparse_contraction") == 1
    got = run_graph(record.optimized_ir, [x])[0].float()
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)


def test_two_four_linear_stays_dense_without_a_gpu_measurement():
    import tilefx

    model = torch.nn.Sequential(two_four_linear(128, 64), torch.nn.ReLU()).half().eval()
    x = torch.randn(3, 128).half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=2e-2, atol=2e-2)
    record, text = notes(cm)
    assert "dense" in text and "2:4 candidate estimated" in text, text
    assert "sparse_contraction" not in [k.kind for k in record.kernels]


# ------------------------------------------------------------------ on a GPU

gpu_2to4 = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
    reason="2:4 sparse tensor cores need a CUDA device of compute capability >= 8.0")


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_testing turned the interpreter on


@pytest.mark.gpu
@gpu_2to4
@pytest.mark.usefixtures("compiled")
def test_two_four_linear_gets_the_semi24_kernel_when_measured_faster(monkeypatch):
    import tilefx
    from tilefx.codegen.triton import sparse as triton_sparse

    calls = []
    monkeypatch.setattr(triton_sparse, "measure_2to4",
                        lambda layer, target=None: calls.append(layer.name) or (2e-3, 1e-3))
    model = torch.nn.Sequential(two_four_linear(256, 128), torch.nn.ReLU()).cuda().half().eval()
    x = torch.randn(5, 256, device="cuda", dtype=torch.float16)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(cm(x), model(x), rtol=2e-2, atol=2e-2)  # the cached compression
    record, text = notes(cm)
    assert calls and "sparse 2:4 (semi24)" in text, text
    (kernel,) = [k for k in record.kernels if k.kind == "sparse_contraction"]
    assert "impl='semi24'" in kernel.schedule and "interpreter" not in cm.report()


@pytest.mark.gpu
@gpu_2to4
@pytest.mark.usefixtures("compiled")
def test_two_four_linear_is_timed_on_the_gpu():
    import tilefx
    from tilefx.codegen.triton import semi24

    model = torch.nn.Sequential(two_four_linear(1024, 512), torch.nn.ReLU()).cuda().half().eval()
    x = torch.randn(16, 1024, device="cuda", dtype=torch.float16)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=2e-2, atol=2e-2)
    _, text = notes(cm)
    d = next(d for d in cm.records[0].notes if d.startswith("sparsity: "))
    assert "measured dense" in d and ("2:4 " in d), text
    assert semi24._CACHE  # the timed kernel compressed its weight once, before the timing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("compiled")
def test_bf16_sparse_linear_on_gpu_is_measured():
    import tilefx

    model = torch.nn.Sequential(block_sparse_linear(1024, 1024, 0.1), torch.nn.ReLU()).cuda()
    model = model.bfloat16().eval()
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cm(x).float(), model(x).float(), rtol=5e-2, atol=5e-2)
    _, text = notes(cm)
    assert "bf16 @ W [1024, 1024]" in text and "measured dense" in text, text
    assert "interpreter" not in cm.report()
