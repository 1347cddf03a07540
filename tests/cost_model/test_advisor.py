"""The fusion advisor: the fusion pass follows its word; unsure predictions are measured."""

from __future__ import annotations

import math

import pytest
import torch

from tilefx.codegen.target import Target
from tilefx.compiler.capture import capture
from tilefx.compiler.frontend import lower_to_ir
from tilefx.cost_model.advisor import FusionAdvisor
from tilefx.ir.interpreter import run_graph
from tilefx.ir.printer import print_graph
from tilefx.passes import optimize
from tilefx.passes.fusion import kernels
from tilefx.passes.pipeline import PassOptions

TARGET = Target.host_cpu()


class Net(torch.nn.Module):
    """matmul+add+relu (an epilogue) and add -> layer_norm (a reduction prologue)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 24)
        self.ln = torch.nn.LayerNorm(24)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.ln(torch.relu(self.fc(x)) * 2.0 + r)


def _graph():
    torch.manual_seed(0)
    net = Net().eval()
    x, r = torch.randn(8, 16), torch.randn(8, 24)
    g = lower_to_ir(capture(net, (x, r))).graph
    return net, g, (x, r)


class FakeModel:
    """Predicts ``ratio`` x the sum of the parts for a fused kernel (by body size)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def predict(self, kernel, schedules, target):
        n = sum(op.name != "const" for op in kernel.body.ops)
        seconds = 1e-4 * n * (self.ratio if kernel.attr("name") == "advice_fused" else 1.0)
        return [-math.log2(seconds)]


class FakeMeasurer:
    def __init__(self, fused_faster: bool) -> None:
        self.fused_faster, self.calls = fused_faster, 0

    def __call__(self, kernel, target, bindings):
        self.calls += 1
        fused = kernel.attr("name") == "advice_fused"
        return 1e-3 * (0.5 if fused == self.fused_faster else 2.0)


class AlwaysYes:
    asked = 0

    def should_fuse(self, fused, separate):
        AlwaysYes.asked += 1
        assert fused.name == "kernel" and fused.body is not None and separate
        return True


def _check_numerics(net, g, inputs):
    out = run_graph(g, list(inputs))[0]
    torch.testing.assert_close(out, net(*inputs).detach(), rtol=1e-4, atol=1e-5)


def test_no_advisor_or_yes_advisor_leaves_fusion_unchanged():
    _, g, _ = _graph()
    plain = print_graph(optimize(g, PassOptions()))
    assert print_graph(optimize(g, PassOptions(fusion_advisor=None))) == plain
    AlwaysYes.asked = 0
    assert print_graph(optimize(g, PassOptions(fusion_advisor=AlwaysYes()))) == plain
    assert AlwaysYes.asked >= 2  # the epilogue(s) and the layer_norm prologue were asked about


def test_advisor_follows_a_model_that_says_fusion_pays():
    net, g, inputs = _graph()
    measurer = FakeMeasurer(fused_faster=False)
    adv = FusionAdvisor(TARGET, FakeModel(0.5), measurer=measurer)
    out = optimize(g, PassOptions(fusion_advisor=adv))
    assert print_graph(out) == print_graph(optimize(g, PassOptions()))
    assert measurer.calls == 0 and adv.decisions and all(d.fuse for d in adv.decisions)
    _check_numerics(net, out, inputs)


def test_advisor_follows_a_model_that_says_fusion_loses():
    net, g, inputs = _graph()
    adv = FusionAdvisor(TARGET, FakeModel(2.0), measurer=None)
    out = optimize(g, PassOptions(fusion_advisor=adv))
    fused = len(kernels(optimize(g, PassOptions())))
    assert len(kernels(out)) > fused
    assert adv.decisions and not any(d.fuse for d in adv.decisions)
    # the refused epilogue (relu, mul) runs in a pointwise kernel, not the matmul's
    for k in kernels(out):
        if k.attr("kind") == "contraction":
            assert not {"relu", "mul"} & {op.name for op in k.body.ops}
    _check_numerics(net, out, inputs)
    assert any("keep separate" in ln for ln in adv.lines())


@pytest.mark.parametrize("fused_faster", [True, False])
def test_unsure_band_measures_and_measurement_decides(fused_faster):
    net, g, inputs = _graph()
    measurer = FakeMeasurer(fused_faster)
    adv = FusionAdvisor(TARGET, FakeModel(1.0), measurer=measurer)
    out = optimize(g, PassOptions(fusion_advisor=adv))
    assert measurer.calls > 0 and all(d.measured for d in adv.decisions)
    assert all(d.fuse == fused_faster for d in adv.decisions)
    _check_numerics(net, out, inputs)
    # decisions are cached by the kernels' computation: a second run measures nothing
    calls = measurer.calls
    optimize(g, PassOptions(fusion_advisor=adv))
    assert measurer.calls == calls


@pytest.mark.parametrize("name", ["mlp", "transformer_encoder"])
def test_real_advisor_compiled_zoo_model_matches_eager(name):
    pytest.importorskip("xgboost")
    import tilefx
    from benchmarks.models import ZOO
    from tilefx.compiler.options import CompileOptions

    entry = ZOO[name]
    model = entry.build()
    inputs = entry.make_inputs(batch=2, seed=1)
    compiled = tilefx.compile(model, options=CompileOptions(fusion_check=True))
    out = compiled(*inputs)
    with torch.no_grad():
        ref = model(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    notes = [n for r in compiled.records for n in r.notes if n.startswith("fusion:")]
    assert notes and "fusions considered" in notes[-1]


class _KindModel:
    """A fake regression model: -log2 seconds from the kernel kind and the block's nonzeros."""

    def predict(self, kernel, schedules, target):
        if kernel.attr("kind") == "sparse_contraction":
            data = kernel.body.inputs[1].type.shape
            nnz = int(data[0]) * int(data[1]) * int(data[2])
            return [-math.log2(1e-9 * nnz + 1e-5 * int(data[1] == 1))]  # 1x1 blocks pay a penalty
        return [-math.log2(1e-3)]


def test_sparse_estimate_names_the_cheapest_predicted_block_and_the_chooser_confirms():
    import numpy as np

    from tilefx.cost_model.advisor import SparseEstimate
    from tilefx.passes.sparsity import MeasuredChooser, SparseLayer

    layer = SparseLayer("w", "linear", (4, 64), 1, np.zeros((64, 32), np.float32),
                        (((1, 1), 0.1), ((4, 4), 0.1), ((4, 16), 0.5)))
    est = SparseEstimate(TARGET, _KindModel())
    block, density, dense_ms, sparse_ms = est.estimate(layer)
    assert block == (4, 4) and density == 0.1
    assert dense_ms == pytest.approx(1.0) and sparse_ms < dense_ms
    timed = []

    def measure(lay, blk):  # the confirmation: sparse measured slower, so dense is kept
        timed.append(blk)
        return 1e-3, 2e-3

    chooser = MeasuredChooser(measure, target="test-learned", estimate=est)
    d = chooser.choose(layer)
    # the estimate's best first (then its runner-up): both slower, so dense is kept
    assert timed[0] == (4, 4) and len(timed) <= 2 and not d.sparse and d.block == (4, 4)
