"""Permutations through attention heads (exact), simulated block quantization, outlier grouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.passes.passes_testing import assert_same
from tilefx.compiler.capture import capture
from tilefx.compiler.frontend import lower_to_ir
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.interpreter import run_graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, optimize
from tilefx.passes.block_quant import BlockQuant, block_quantize, fake_quant, parse_quant, relative_error
from tilefx.passes.outliers import block_noise, group_outliers, output_weighted_error
from tilefx.passes.permute import permute_constants
from tilefx.passes.permute_heads import HeadOrders, apply_head_orders, find_heads
from tilefx.passes.pipeline import pipeline


def FusedQKV(dim: int = 32, heads: int = 4) -> nn.Module:
    """GPT-2 style: one qkv Linear split by slices, causal SDPA, output projection (the zoo's)."""
    from benchmarks.models.gpt2 import CausalSelfAttention

    return CausalSelfAttention(dim, heads)


class SeparateQKV(nn.Module):
    """Separate q/k/v Linears, head dim of V != of Q/K, hand-written softmax attention."""

    def __init__(self, dim: int = 24, heads: int = 3, dqk: int = 8, dv: int = 4) -> None:
        super().__init__()
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.q, self.k = nn.Linear(dim, heads * dqk), nn.Linear(dim, heads * dqk)
        self.v, self.o = nn.Linear(dim, heads * dv), nn.Linear(heads * dv, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.h, self.dqk).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, t, self.h, self.dqk).permute(0, 2, 3, 1)
        v = self.v(x).reshape(b, t, self.h, self.dv).permute(0, 2, 1, 3)
        p = torch.softmax(q @ k * 0.3, dim=-1)
        return self.o((p @ v).permute(0, 2, 1, 3).reshape(b, t, self.h * self.dv))


class PerHeadMask(SeparateQKV):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.randn(1, 3, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.h, self.dqk).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, t, self.h, self.dqk).permute(0, 2, 3, 1)
        v = self.v(x).reshape(b, t, self.h, self.dv).permute(0, 2, 1, 3)
        p = torch.softmax(q @ k + self.mask, dim=-1)
        return self.o((p @ v).permute(0, 2, 1, 3).reshape(b, t, self.h * self.dv))


def _graph(model: nn.Module, x: torch.Tensor, decompose: bool = True):
    torch.manual_seed(0)
    g = lower_to_ir(capture(model.eval(), (x,))).graph
    return optimize(g, PassOptions(fuse=False, sparsity=False, decompose_attention=decompose))


def _random_orders(site, rng) -> HeadOrders:
    h = site.heads
    return HeadOrders(rng.permutation(h), np.stack([rng.permutation(site.qk_dim) for _ in range(h)]),
                      np.stack([rng.permutation(site.v_dim) for _ in range(h)]))


CASES = [
    ("fused_qkv", lambda: FusedQKV(), (2, 6, 32), True),
    ("fused_qkv_whole_attention", lambda: FusedQKV(), (1, 6, 32), False),
    ("separate_qkv", lambda: SeparateQKV(), (2, 5, 24), True),
    # PyTorch's own layer: packed in_proj, batch merged with heads ([L, B*H, D]) on the way
    ("multihead_attention", lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), (2, 5, 32), True),
]


@pytest.mark.parametrize("name,make,shape,decompose", CASES, ids=[c[0] for c in CASES])
def test_head_permutations_are_exact(name, make, shape, decompose):
    torch.manual_seed(1)
    model, x = make().eval(), torch.randn(*shape)
    g = _graph(model, x, decompose)
    sites = find_heads(g)
    assert len(sites) == 1, name
    rng = np.random.default_rng(2)
    orders = _random_orders(sites[0], rng)
    assert not np.array_equal(orders.heads, np.arange(sites[0].heads))  # heads really move
    out = apply_head_orders(g, [(sites[0], orders)])
    assert out.constants != g.constants
    assert_same(g, out, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(out, [x])[0], model(x), atol=1e-5, rtol=1e-5)


def test_inconsistent_permutation_would_be_caught():
    """Only Wq's columns reordered (not Wk's): the scores change; the check above has teeth."""
    torch.manual_seed(3)
    x = torch.randn(1, 5, 24)
    g = _graph(SeparateQKV(), x)
    (site,) = find_heads(g)
    perm = np.arange(site.heads * site.qk_dim)
    perm[site.q.labels[0]] = site.q.labels[0][::-1]
    bad = permute_constants(g, {site.q.proj.weight.name: [(1, perm)]})
    with pytest.raises(AssertionError):
        assert_same(g, bad, atol=1e-5, rtol=1e-5)


def test_per_head_mask_is_not_a_site():
    torch.manual_seed(4)
    assert find_heads(_graph(PerHeadMask(), torch.randn(1, 5, 24))) == []


# ------------------------------------------------------------- block quantization

def test_fake_quant_rounds_per_block():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    spec = BlockQuant(bits=4, block=16)
    q = fake_quant(w, spec, axis=0)
    assert q.dtype == w.dtype and q.shape == w.shape
    for blk in range(4):
        rows = q[16 * blk:16 * blk + 16]
        scale = np.abs(w[16 * blk:16 * blk + 16]).max(axis=0) / 7
        steps = rows / scale
        assert np.allclose(steps, np.rint(steps), atol=1e-4) and np.abs(steps).max() <= 7 + 1e-4
    assert 0.02 < relative_error(q, w) < 0.2
    assert relative_error(fake_quant(w, BlockQuant(8, 16)), w) < relative_error(q, w) / 8
    p2 = fake_quant(w, BlockQuant(4, 16, "pow2"))
    assert 0 < relative_error(p2, w) < 0.3
    # a ragged axis: the last block is shorter, values still close
    assert relative_error(fake_quant(w[:50], BlockQuant(8, 16)), w[:50]) < 0.01


def test_parse_quant():
    assert parse_quant("int4") == BlockQuant(4, 32, "absmax", True)
    assert parse_quant("int8:16:pow2") == BlockQuant(8, 16, "pow2", True)
    assert parse_quant("int4:32:absmax:nogroup").group is False
    with pytest.raises(ValueError, match="quantize="):
        parse_quant("fp4")


def _outlier_mlp(seed: int, hidden: int = 128, outliers: int = 4, scale: float = 50.0):
    """x @ W1 + b1 -> relu -> @ W2 with a few hidden channels x``scale`` in W2 (and /scale in W1:
    the same function, LLM-like outlier rows in the weight that is block-quantized along them)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, hidden)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = rng.standard_normal((hidden, 16)).astype(np.float32)
    idx = rng.choice(hidden, outliers, replace=False)
    w1[:, idx] /= scale
    b1[idx] /= scale
    w2[idx] *= scale
    b = GraphBuilder("mlp")
    x = b.input(TensorType(DType.float32, (8, 32)), "x")
    h = b.op("relu", b.op("add", b.op("matmul", x, b.const(w1, "w1")), b.const(b1, "b1")))
    return b.finish([b.op("matmul", h, b.const(w2, "w2"))]), w2, idx


def test_grouping_lowers_block_quant_error_and_is_exact():
    spec = BlockQuant(bits=4, block=16)
    for seed in (0, 1):
        g, w2, idx = _outlier_mlp(seed)
        # the weight alone, each row weighted by its input channel's RMS (outliers: small)
        rms = np.where(np.isin(np.arange(len(w2)), idx), 1 / 50, 1.0)
        order = np.argsort(-np.linalg.norm(w2, axis=1), kind="stable")
        assert output_weighted_error(w2[order], rms[order], 0, spec) < \
            0.8 * output_weighted_error(w2, rms, 0, spec)
        grouped = group_outliers.bind(spec=spec)(g)
        assert_same(g, grouped, atol=1e-4, rtol=1e-4)  # the reordering alone changes nothing
        x = [torch.randn(8, 32)]
        want = run_graph(g, x)[0]
        plain = run_graph(block_quantize.bind(spec=spec)(g), x)[0]
        better = run_graph(block_quantize.bind(spec=spec)(grouped), x)[0]
        err_plain = float((plain - want).norm() / want.norm())
        err_better = float((better - want).norm() / want.norm())
        assert err_better < 0.8 * err_plain, (seed, err_plain, err_better)


def test_key_channel_grouping_lowers_the_noise_proxy():
    """Outlier key channels (Wk columns x30, Wq /30: same scores) are sorted within heads."""
    torch.manual_seed(6)
    model, x = SeparateQKV(dim=24, heads=3, dqk=16, dv=4).eval(), torch.randn(1, 5, 24)
    with torch.no_grad():
        for c in (1, 12, 17, 30):  # two per head, in different blocks of 8
            model.k.weight[c] *= 30
            model.k.bias[c] *= 30
            model.q.weight[c] /= 30
            model.q.bias[c] /= 30
    g = _graph(model, x)
    (site,) = find_heads(g)
    spec = BlockQuant(bits=4, block=8)
    out = group_outliers.bind(spec=spec)(g)
    assert_same(g, out, atol=1e-4, rtol=1e-4)
    (after,) = find_heads(out)

    def rms(graph, view):
        w = graph.constants[graph.producers()[view.proj.weight.name].attr("name")]
        return np.linalg.norm(w[:, view.labels], axis=0)
    before_noise = sum(block_noise(k, 8, q) for k, q in zip(rms(g, site.k), rms(g, site.q)))
    after_noise = sum(block_noise(k, 8, q) for k, q in zip(rms(out, after.k), rms(out, after.q)))
    assert after_noise < 0.7 * before_noise


def test_quantize_is_opt_in_and_reported():
    import tilefx

    assert PassOptions().quantize is None
    names = [p.name for p in pipeline(PassOptions())]
    assert "block_quantize" not in names and "group_outliers" not in names
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 16)).eval()
    with torch.no_grad():
        idx = torch.tensor([3, 50, 90, 111])
        m[2].weight[:, idx] *= 50
        m[0].weight[idx] /= 50
        m[0].bias[idx] /= 50
    x = torch.randn(8, 32)
    with torch.no_grad():
        ref = m(x)
        cm = tilefx.compile(m)
        torch.testing.assert_close(cm(x), ref, rtol=1e-4, atol=1e-4)
        assert not any("quantize" in n for n in cm.records[0].notes)
        errs = {}
        for spec in ("int4:16:absmax:nogroup", "int4:16"):
            cq = tilefx.compile(m, quantize=spec)
            errs[spec] = float((cq(x) - ref).norm() / ref.norm())
            notes = cq.records[0].notes
            assert any("relative output error" in n for n in notes), notes
            assert any("relative L2 change" in n for n in notes)
    assert 0 < errs["int4:16"] < 0.8 * errs["int4:16:absmax:nogroup"], errs
    assert any("outliers grouped" in n for n in notes)
