"""bf16 on the cuda path, under TRITON_INTERPRET=1 on CPU tensors (issue 17).

- The GPT-2 / BERT embedding block (token + position [+ token type] embeddings,
  summed, layer-normed; the sum also read later as the residual) builds one
  Triton reduction kernel in bf16 as in fp16 and matches eager, on awkward sizes
  (seq 1 and 7, hidden 97, vocab 101). In bf16 it used to run in the reference
  interpreter: the shared norm weight's cast was an extra [H] output.
- The reduction template stores a prologue value exported on another shape (a
  [H] parameter computed in the kernel) with a flat function of its own.
- Every zoo model has as many kernels for cuda in bf16 as in fp16 (lower and
  optimize only: cheap). ResNet-18 had 65 in bf16 against 23.
- A kernel that runs in the interpreter is counted in the report, next to the
  fallbacks.

No matmul runs here in bf16: Triton's interpreter mishandles bf16 dots
(``test_sparse_choice.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from triton_testing import close, kernel_op, rand, run, t

import tilefx
from benchmarks.models import ZOO
from tilefx.codegen.schedule import Schedule
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import model_kernels
from tilefx.compiler.records import CompileRecord, KernelImpl, KernelRecord
from tilefx.compiler.runtime import constant_tensors
from tilefx.compiler.session import CompileSession
from tilefx.ir import DType

BF16, F16 = DType.bfloat16, DType.float16
TORCH = {BF16: torch.bfloat16, F16: torch.float16, DType.float32: torch.float32}
VOCAB, HIDDEN, MAX_POS = 101, 97, 11
LOOPED = Schedule.of(XBLOCK=2, RBLOCK=16, persistent=False, num_warps=2)


class Embeddings(nn.Module):
    """GPT-2's (``token_types=0``) or BERT's embedding block, then a second norm that
    reads the embedding sum again (the residual stream) and shares the first norm's
    weight once CSE merges equal weights (fresh norms are all ones and zeros)."""

    def __init__(self, token_types: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, HIDDEN)
        self.wpe = nn.Embedding(MAX_POS, HIDDEN)
        self.tte = nn.Embedding(token_types, HIDDEN) if token_types else None
        self.ln = nn.LayerNorm(HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        h = self.wte(ids) + self.wpe(pos)
        if self.tte is not None:
            h = h + self.tte(torch.zeros_like(ids))
        y = self.ln(h)
        return y, self.ln2(h + y)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("seq,token_types", [(1, 0), (7, 0), (7, 2)], ids=["gpt2-seq1", "gpt2-seq7", "bert-seq7"])
def test_embedding_layer_norm_is_one_triton_kernel(dtype, seq, token_types, tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    torch.manual_seed(seq + token_types)
    model = Embeddings(token_types).eval().to(TORCH[dtype])
    ids = torch.randint(0, VOCAB, (2, seq))
    cm = tilefx.compile(model, options=CompileOptions(target="cuda"))
    with torch.no_grad():
        got, want = cm(ids), model(ids)
    record = cm.records[-1]
    report = cm.report()
    assert not record.interpreted and not record.fallbacks, report
    assert all(k.backend == "triton" and k.impl is KernelImpl.GENERATED for k in record.kernels), report
    fused = [k for k in record.kernels if "take" in k.fused_ops and "layer_norm" in k.fused_ops]
    assert len(fused) == 1 and fused[0].kind == "reduction", report
    assert "cast" not in fused[0].fused_ops, report  # the bf16 tables are cast once, at load
    assert "fallbacks: 0, interpreted: 0" in report, report
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        close(g, w, dtype)
    # the runtime keeps each bf16 table once, as bf16: not its f32 holder too
    tensors = constant_tensors(record.optimized_ir)
    assert all(x.dtype == TORCH[dtype] for x in tensors.values() if x.dim() == 2), \
        {k: x.dtype for k, x in tensors.items()}


@pytest.mark.parametrize("dtype", [DType.float32, BF16, F16])
@pytest.mark.parametrize("schedule", [None, LOOPED], ids=["persistent", "looped"])
def test_reduction_exports_a_parameter_shaped_prologue_value(dtype, schedule):
    """``w2 = w * 2`` feeds the norm and is read by another kernel too: an [H] output of
    the reduction kernel, neither on the reduced input nor on the result."""
    def body(b, x, w, c):
        w2 = b.op("mul", w, c)
        y = b.op("layer_norm", b.op("add", x, w2), w2, c, normalized_ndim=1)
        return [y, w2]
    op = kernel_op("reduction", [t(dtype, 2, 7, 97), t(dtype, 97), t(dtype, 97)], body)
    x, w, c = (rand(v.type, i) for i, v in enumerate(op.inputs))
    y, w2 = run(op, [x, w, c], schedule)
    ref_w2 = (w.float() * c.float()).to(TORCH[dtype])
    close(w2, ref_w2, dtype)
    close(y, F.layer_norm(x.float() + ref_w2.float(), (97,), ref_w2.float(), c.float()), dtype)


def test_sum_exports_values_of_two_other_shapes():
    """Side outputs of several shapes: one flat function each."""
    def body(b, x, w):
        e = b.op("exp", w)                                       # [5]
        r = b.op("reshape", b.op("neg", x), shape=(3, 35))      # [3, 35]
        return [b.op("sum", b.op("mul", x, e), dims=(1,)), e, r]
    op = kernel_op("reduction", [t(DType.float32, 7, 5, 3), t(DType.float32, 5, 1)], body)
    x, w = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2)
    s, e, r = run(op, [x, w], LOOPED)
    close(e, w.exp())
    close(r, (-x).reshape(3, 35))
    close(s, (x * w.exp()).sum(1))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_has_as_many_kernels_in_bf16_as_in_fp16(name):
    entry = ZOO[name]
    counts = {}
    for dtype in (torch.float16, torch.bfloat16):
        model = entry.build().to(dtype)
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in entry.make_inputs(entry.batches[0]))
        with CompileSession() as session:
            found = model_kernels(model, inputs, CompileOptions(target="cuda"), session)
        counts[dtype] = [op.attr("name").rsplit("_", 1)[0] for op in found.graph.ops if op.name == "kernel"]
    assert counts[torch.bfloat16] == counts[torch.float16]


def test_report_counts_interpreted_kernels():
    record = CompileRecord("m", target="cuda:sm_90")
    record.kernels = [KernelRecord("k0", "reduction", ("take", "layer_norm"), backend="triton"),
                      KernelRecord("k1", "pointwise", ("exp",), backend="triton",
                                   impl=KernelImpl.INTERPRETER, error="NotImplementedError: no")]
    report = record.report()
    assert "fallbacks: 0, interpreted: 1 (k1 run in the reference interpreter)" in report, report


def test_a_kernel_that_fails_to_build_is_reported_as_interpreted(tmp_path, monkeypatch):
    from tilefx.codegen.triton import reduction

    def refuse(*args, **kwargs):
        raise NotImplementedError("no reduction template today")

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(reduction, "emit", refuse)
    model = nn.Sequential(nn.LayerNorm(13), nn.ReLU()).eval()
    x = torch.randn(3, 13)
    cm = tilefx.compile(model, options=CompileOptions(target="cuda"))
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x))  # it still runs, in PyTorch
    report = cm.report()
    assert "fallbacks: 0, interpreted: 1" in report and "no reduction template today" in report, report
