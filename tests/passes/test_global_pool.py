"""Global average pooling is a mean: canonicalize rewrites ``adaptive_avg_pool2d(x, 1)`` and a
whole-plane ``avg_pool2d`` into ``mean(x, dims=(2, 3), keepdim=True)`` (a row reduction),
uniform adaptive windows into ``avg_pool2d``. A squeeze-excitation block (EfficientNet's)
compiled for the CPU, and for cuda under TRITON_INTERPRET=1 in fp32 and fp16, equals eager
with no pooling op left: its pool is the reduction template's mean kernel (N*C rows of
H*W), not the pooling template (a window loop per output element, 15 GB/s on an H200)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from passes_testing import assert_same, compute_ops, kernel_summary
from torch import nn

import tilefx
from tilefx.ir import structural_equal
from tilefx.ir.parser import parse_graph
from tilefx.passes.canonicalize import canonicalize
from tilefx.passes.cleanup import dce

POOLS = ("adaptive_avg_pool2d", "avg_pool2d", "max_pool2d")


def canon(graph):
    return dce(canonicalize(graph))


@pytest.mark.parametrize("pool", ["adaptive_avg_pool2d(%x) {output_size = [1, 1]}",
                                  "avg_pool2d(%x) {kernel = [13, 5], stride = [13, 5]}",
                                  "avg_pool2d(%x) {ceil_mode = true, count_include_pad = false, "
                                  "kernel = [13, 5], stride = [2, 2]}"])
def test_global_pool_becomes_mean(pool: str) -> None:
    before = parse_graph(f"""
graph @g(%x: f16[1, 7, 13, 5]) {{
  %p = {pool} : f16[1, 7, 1, 1]
  return %p
}}
""")
    expected = parse_graph("""
graph @g(%x: f16[1, 7, 13, 5]) {
  %p = mean(%x) {dims = [2, 3], keepdim = true} : f16[1, 7, 1, 1]
  return %p
}
""")
    out = canon(before)
    assert structural_equal(out, expected), str(out)
    assert_same(before, out, atol=1e-3, rtol=1e-3)


def test_uniform_adaptive_windows_become_avg_pool() -> None:
    before = parse_graph("""
graph @g(%x: f32[2, 3, 12, 10]) {
  %p = adaptive_avg_pool2d(%x) {output_size = [4, 5]} : f32[2, 3, 4, 5]
  %q = adaptive_avg_pool2d(%p) {output_size = [4, 5]} : f32[2, 3, 4, 5]
  return %q
}
""")
    expected = parse_graph("""
graph @g(%x: f32[2, 3, 12, 10]) {
  %p = avg_pool2d(%x) {kernel = [3, 2], stride = [3, 2]} : f32[2, 3, 4, 5]
  return %p
}
""")
    out = canon(before)
    assert structural_equal(out, expected), str(out)
    assert_same(before, out)


@pytest.mark.parametrize("pool,shape", [
    ("adaptive_avg_pool2d(%x) {output_size = [3, 2]}", "f32[1, 2, 3, 2]"),      # 7 % 3: uneven windows
    ("avg_pool2d(%x) {kernel = [7, 5], padding = [1, 1], stride = [7, 5]}", "f32[1, 2, 1, 1]"),
    ("avg_pool2d(%x) {divisor_override = 3, kernel = [7, 5], stride = [7, 5]}", "f32[1, 2, 1, 1]"),
    ("avg_pool2d(%x) {kernel = [7, 4], stride = [7, 4]}", "f32[1, 2, 1, 1]"),   # not the whole row
])
def test_other_pools_are_kept(pool: str, shape: str) -> None:
    before = parse_graph(f"""
graph @g(%x: f32[1, 2, 7, 5]) {{
  %p = {pool} : {shape}
  return %p
}}
""")
    out = canon(before)
    assert compute_ops(out) == [before.ops[0].name]
    assert_same(before, out)


class SqueezeExcite(nn.Module):
    """conv -> SiLU -> global average pool -> 1x1 conv -> sigmoid -> scale (EfficientNet's)."""

    def __init__(self, c: int = 7, squeeze: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.reduce = nn.Conv2d(c, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv(x))
        s = self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(h, 1))))
        return h * torch.sigmoid(s)


def se_block(hw: tuple[int, int]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SqueezeExcite().eval(), torch.randn(1, 3, *hw)


def assert_pool_is_a_reduction(cm, hw: tuple[int, int]) -> None:
    """No pooling op is left; the pool is a mean kernel of its own (nothing over a 1x1 plane)."""
    kernels = kernel_summary(cm.records[-1].optimized_ir)
    assert not [k for k in kernels if set(k[1]) & set(POOLS)], kernels
    assert (("reduction", ["mean"]) in kernels) == (hw != (1, 1)), kernels


@pytest.mark.parametrize("hw", [(13, 13), (1, 1), (17, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_squeeze_excite_on_cpu(hw, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    model, x = se_block(hw)
    cm = tilefx.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
    assert "fallbacks: 0" in cm.report()
    assert_pool_is_a_reduction(cm, hw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("hw", [(13, 13), (1, 1), (17, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_squeeze_excite_for_cuda(hw, dtype, tmp_path, monkeypatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when each generated kernel is defined
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path))
    model, x = se_block(hw)
    model, x = model.to(dtype), x.to(dtype)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        y = cm(x)
        want = copy.deepcopy(model).float()(x.float())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol)
    assert "fallbacks: 0" in cm.report()
    assert_pool_is_a_reduction(cm, hw)
