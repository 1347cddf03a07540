"""``tilefx.compile``: numerics vs eager, the signature cache, decorators, report()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tilefx

RTOL, ATOL = 1e-3, 1e-4


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(self.drop(nn.functional.gelu(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial running stats so BN folding is really checked
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(h.mean(dim=(2, 3)))


def strict(**kw):
    return tilefx.CompileOptions(strict=True, **kw)


def test_mlp_matches_eager_and_caches_by_signature():
    torch.manual_seed(0)
    model = MLP()
    model.train()  # captured with eval semantics; the module's own flag is left alone
    cm = tilefx.compile(model, options=strict())
    for _ in range(2):
        x = torch.randn(4, 32)
        with torch.no_grad():
            ref = model.eval()(x)
        model.train()
        torch.testing.assert_close(cm(x), ref, rtol=RTOL, atol=ATOL)
    assert model.training and model.drop.training
    assert cm.num_compiles == 1  # the second call hit the cache
    x = torch.randn(4 * 32 + 1)[1:].view(4, 32)  # a misaligned view: the runtime copies it
    torch.testing.assert_close(cm(x), model.eval()(x).detach(), rtol=RTOL, atol=ATOL)
    model.train()
    cm(torch.randn(6, 32))
    assert cm.num_compiles == 2  # a new shape compiles anew
    report = cm.report()
    assert "kernels:" in report and "matmul" in report and "compile time" in report
    assert "fallbacks: 0" in report
    assert all(k.backend.startswith("tvm") for r in cm.records for k in r.kernels), report


def test_convnet_matches_eager():
    torch.manual_seed(1)
    model = ConvNet().eval()
    cm = tilefx.compile(model, options=strict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(cm(x), ref, rtol=RTOL, atol=ATOL)
    assert "conv2d" in cm.report()


def test_decorator_on_function_and_pytree_outputs():
    @tilefx.compile(options=strict())
    def f(x, w, scale=2.0):
        y = torch.relu(x @ w) * scale
        return {"y": y, "pair": (y.sum(dim=1), 7)}

    x, w = torch.randn(5, 8), torch.randn(8, 3)
    out = f(x, w)
    ref = torch.relu(x @ w) * 2.0
    assert set(out) == {"y", "pair"} and out["pair"][1] == 7
    torch.testing.assert_close(out["y"], ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["pair"][0], ref.sum(dim=1), rtol=RTOL, atol=ATOL)
    assert f.__name__ == "f"
    f(x, w, scale=3.0)  # a non-tensor argument is part of the signature
    assert f.num_compiles == 2
    torch.testing.assert_close(f(x, w, scale=3.0)["y"], torch.relu(x @ w) * 3.0,
                               rtol=RTOL, atol=ATOL)
    assert f.num_compiles == 2


def test_decorator_on_module_class_compiles_instances_lazily():
    @tilefx.compile(options=strict())
    class Small(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.lin = nn.Linear(n, n)

        def forward(self, x):
            return torch.sigmoid(self.lin(x)) * x

    assert Small.__name__ == "Small" and issubclass(Small, nn.Module)
    m = Small(12)
    assert "nothing compiled" in m.tilefx_report()
    x = torch.randn(3, 12)
    with torch.no_grad():
        ref = torch.sigmoid(m.lin(x)) * x
    torch.testing.assert_close(m(x), ref, rtol=RTOL, atol=ATOL)
    assert "sigmoid" in m.tilefx_report()


def test_dynamic_batch_captures_once():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh()).eval()
    cm = tilefx.compile(model, dynamic=True, options=strict())
    for n in (3, 5):
        x = torch.randn(n, 16)
        with torch.no_grad():
            torch.testing.assert_close(cm(x), model(x), rtol=RTOL, atol=ATOL)
    assert cm.num_compiles == 1  # one capture serves both sizes
    (record,) = cm.records
    assert record.frontend_ir.inputs[0].type.free_symbols()  # the batch really is symbolic
    assert "s0=3" in cm.report() and "s0=5" in cm.report()  # kernels specialized per size


def test_fft_in_the_middle_falls_back_to_pytorch():
    torch.manual_seed(3)

    class Spectral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = nn.Linear(9, 4)

        def forward(self, x):
            return self.b(torch.fft.rfft(self.a(x), dim=-1).abs())

    model = Spectral().eval()
    cm = tilefx.compile(model, options=strict())
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(cm(x), ref, rtol=RTOL, atol=ATOL)
    report = cm.report()
    assert "fft_rfft" in report and "runs in PyTorch" in report
    assert cm.records[0].fallbacks


def test_import_tilefx_is_light():
    code = "import sys, tilefx; print('torch' in sys.modules, 'tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]


def test_compile_rejects_non_callables():
    with pytest.raises(TypeError, match="expected an nn.Module or a function"):
        tilefx.compile(42)


def test_recompile_limit_runs_new_signatures_eagerly_with_one_warning(caplog):
    """A Python scalar that changes every call would recompile forever (seconds each)."""
    def scaled(x, alpha):
        return torch.relu(x) * alpha

    compiled = tilefx.compile(scaled, recompile_limit=2)
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    with caplog.at_level("WARNING", logger="tilefx"):
        outs = [compiled(x, alpha) for alpha in (0.5, 1.5, 2.5, 3.5, 1.5)]
    for alpha, y in zip((0.5, 1.5, 2.5, 3.5, 1.5), outs):
        torch.testing.assert_close(y, torch.relu(x) * alpha)
    assert compiled.num_compiles == 2 and compiled.eager_calls == 2
    warnings = [r.getMessage() for r in caplog.records if "recompile limit" in r.getMessage()]
    assert len(warnings) == 1 and "eager PyTorch" in warnings[0] and "\n" not in warnings[0]
    assert "recompile limit (2) reached: 2 call(s)" in compiled.report()


@pytest.mark.ir_unchecked  # its IR names a non-ATen op: parse_graph refuses that text, on purpose
def test_custom_operator_runs_as_a_fallback_in_process():
    """Text and artifacts from disk may only name ATen operators; a graph built from the
    user's own model in this process runs the operators its libraries registered."""
    from torch.library import custom_op

    @custom_op("tilefx_test::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @twice.register_fake
    def _(x):
        return torch.empty_like(x)

    compiled = tilefx.compile(lambda x: torch.relu(torch.ops.tilefx_test.twice(x)) + 1)
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(compiled(x), torch.relu(x * 2) + 1)
    assert "tilefx_test.twice.default runs in PyTorch" in compiled.report()
