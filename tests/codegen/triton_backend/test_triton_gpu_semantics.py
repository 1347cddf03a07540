"""Eager's semantics on a real GPU (skipped without CUDA): NaN and Inf through relu,
clamp, max, reductions, softmax and pooling; a query masked from every key gives 0s;
``x * 0`` of inf is NaN; an index past the table raises IndexError. The same cases run
under ``TRITON_INTERPRET=1`` in tests/codegen/test_bounds_nan.py; here Triton's real
compiler (3.6 on the GPU machine) builds them, and every built kernel is checked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefx

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _special(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(*shape, generator=g, device="cuda")
    flat = x.view(-1)
    flat[3], flat[flat.numel() // 2], flat[-2] = float("nan"), float("inf"), -float("inf")
    return x


CASES = {
    "relu": torch.relu,
    "clamp": lambda x: x.clamp(-0.5, 0.5),
    "maximum": lambda x: torch.maximum(x, x.flip(-1)),
    "amax": lambda x: x.amax(-1),
    "amin": lambda x: x.amin(0),
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: torch.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, (x.shape[-1],)),
    "max_pool2d": lambda x: F.max_pool2d(x.view(2, 3, 12, 33), 3, 2, 1),
    "times_zero": lambda x: x * 0 + 1,
    "gelu_linear": lambda x: F.gelu(x @ torch.ones(x.shape[-1], 16, device=x.device)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_and_inf_as_eager(name):
    fn = CASES[name]
    x = _special(72, 33)
    compiled = tilefx.compile(fn, target="cuda")
    torch.testing.assert_close(compiled(x), fn(x), rtol=1e-3, atol=1e-3, equal_nan=True)
    assert "rejected" not in compiled.report(), compiled.report()


def test_query_masked_from_every_key_gives_zeros():
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=g, device="cuda") for _ in range(3))
    keep = torch.rand(2, 3, 37, 37, generator=g, device="cuda") > 0.3
    keep[0, 1, 5] = False
    keep[1, 2, 36] = False

    def attend(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    compiled = tilefx.compile(attend, target="cuda")
    got = compiled(q, k, v, keep)
    torch.testing.assert_close(got, attend(q, k, v, keep), rtol=2e-3, atol=2e-3)
    assert torch.equal(got[0, 1, 5], torch.zeros_like(got[0, 1, 5]))


def test_index_past_the_table_raises():
    table = torch.randn(10, 8, device="cuda")
    compiled = tilefx.compile(lambda i: F.embedding(i, table) * 2, target="cuda")
    ids = torch.tensor([1, 2, 3], device="cuda")
    torch.testing.assert_close(compiled(ids), F.embedding(ids, table) * 2)
    for bad in (10, -1, 10**7):
        with pytest.raises(IndexError):
            compiled(torch.tensor([1, bad], device="cuda"))
