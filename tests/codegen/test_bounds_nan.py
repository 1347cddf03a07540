"""Bounds and NaNs as eager has them: an index out of range raises IndexError (never
reads past the table), and NaN / inf propagate through max, min, relu, clamp, the
reductions, softmax and layer_norm, on TVM (native and AVX2) and Triton (interpreted)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tilefx

ROOT = Path(__file__).resolve().parents[2]
NAN, INF = math.nan, math.inf


def _table(n: int = 10, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


INDEXERS = {
    "embedding": lambda w, i: F.embedding(i, w),
    "index_select": lambda w, i: torch.index_select(w, 0, i),
    "getitem": lambda w, i: w[i],
    "gather": lambda w, i: torch.gather(w, 0, i.view(-1, 1).expand(-1, w.shape[1])),
}


@pytest.fixture(scope="module")
def compiled_indexers():
    out = {}
    for name, fn in INDEXERS.items():
        w = _table()
        out[name] = (tilefx.compile(lambda i, fn=fn, w=w: fn(w, i) * 2.0, target="cpu"), w, fn)
    return out


@pytest.mark.parametrize("name", sorted(INDEXERS))
@pytest.mark.parametrize("bad", [10, -11, 10 ** 7, -10 ** 7])
def test_index_out_of_range_raises(compiled_indexers, name, bad):
    cm, w, fn = compiled_indexers[name]
    good = torch.tensor([1, 2, 3])
    torch.testing.assert_close(cm(good), fn(w, good) * 2.0)
    with pytest.raises((IndexError, RuntimeError)) as eager:
        fn(w, torch.tensor([1, bad]))
    with pytest.raises(type(eager.value)):
        cm(torch.tensor([1, bad]))


def test_index_message_is_eager_like(compiled_indexers):
    cm, _, _ = compiled_indexers["getitem"]
    with pytest.raises(IndexError, match="index 10 is out of bounds for dimension 0 with size 10"):
        cm(torch.tensor([0, 10]))


@pytest.mark.parametrize("i", [-1, -10])
def test_negative_in_range_index_wraps_like_eager(compiled_indexers, i):
    cm, w, fn = compiled_indexers["getitem"]
    idx = torch.tensor([i, 2])
    torch.testing.assert_close(cm(idx), fn(w, idx) * 2.0)


@pytest.mark.parametrize("name", ["embedding", "index_select"])
def test_negative_index_is_out_of_range_for_embedding_and_index_select(compiled_indexers, name):
    """Unlike w[i], torch's embedding and index_select do not wrap -1: they raise."""
    cm, w, fn = compiled_indexers[name]
    with pytest.raises(IndexError, match="index out of range in self"):
        fn(w, torch.tensor([-1, 2]))
    with pytest.raises(IndexError, match="index out of range in self"):
        cm(torch.tensor([-1, 2]))


def test_index_computed_in_kernel_is_checked():
    w = _table()
    cm = tilefx.compile(lambda i: F.embedding(i + 1, w), target="cpu")
    torch.testing.assert_close(cm(torch.tensor([0, 3])), F.embedding(torch.tensor([1, 4]), w))
    with pytest.raises(IndexError):
        cm(torch.tensor([0, 9]))


def test_huge_index_never_crashes_the_process():
    """10**7 rows past a 10-row table: a read there segfaulted before the check."""
    script = textwrap.dedent('''
        import torch, tilefx
        emb = torch.nn.Embedding(10, 4).eval()
        cm = tilefx.compile(emb, target="cpu")
        cm(torch.tensor([1]))
        try:
            cm(torch.tensor([10 ** 7]))
        except IndexError as e:
            print("IndexError", e)
    ''')
    env = dict(os.environ, TVM_BIND_THREADS="0")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IndexError index out of range in self" in r.stdout  # embedding's own message


def test_reference_take_matches_eager():
    from tilefx.ir.reference_ops import check_take_indices

    idx = torch.tensor([-1, 3, -10])
    torch.testing.assert_close(check_take_indices(idx, 10), torch.tensor([9, 3, 0]))
    with pytest.raises(IndexError, match="index -11 is out of bounds for dimension 1 with size 10"):
        check_take_indices(torch.tensor([0, -11]), 10, axis=1)


# ------------------------------------------------------------------ NaN and inf

def _with_specials(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    flat = x.view(-1, shape[-1])
    flat[0, 1] = NAN
    if flat.shape[0] > 1:
        flat[1, 2] = INF
    if flat.shape[0] > 2:
        flat[2, 0] = -INF
    if flat.shape[0] > 3:
        flat[3, :] = -INF
    return x


NAN_OPS = {
    "relu": F.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "hardsigmoid": F.hardsigmoid,
    "clamp": lambda x: x.clamp(-0.5, 0.5), "clamp_min": lambda x: x.clamp(min=0.1),
    "maximum": lambda x: torch.maximum(x, x.flip(-1)),
    "minimum": lambda x: torch.minimum(x, x.flip(-1)),
    "amax": lambda x: x.amax(-1), "amin": lambda x: x.amin(0),
    "max_dim": lambda x: x.max(-1).values, "min_dim": lambda x: x.min(-1).values,
    "argmax": lambda x: x.argmax(-1).float(),
    "softmax": lambda x: x.softmax(-1), "log_softmax": lambda x: x.log_softmax(-1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "linear_relu": lambda x: F.relu(x @ torch.ones(x.shape[-1], 8) + 0.5),
    "add_relu_amax": lambda x: F.relu(x + 1.0).amax(-1),
}


@pytest.mark.parametrize("target", ["cpu", "cpu:haswell"])
@pytest.mark.parametrize("name", sorted(NAN_OPS))
def test_nan_propagates_tvm(name, target):
    fn = NAN_OPS[name]
    x = _with_specials(6, 40, seed=sum(map(ord, name)) % 100)
    cm = tilefx.compile(fn, target=target)
    torch.testing.assert_close(cm(x), fn(x), equal_nan=True, rtol=1e-5, atol=1e-5)


def test_max_pool_nan_tvm():
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    x[0, 0, 3, 3], x[0, 1, 0, 0] = NAN, INF
    fn = lambda t: F.max_pool2d(t, 3, 2, 1)  # noqa: E731
    for target in ("cpu", "cpu:haswell"):
        torch.testing.assert_close(tilefx.compile(fn, target=target)(x), fn(x), equal_nan=True)


# Triton, interpreted on the CPU (TRITON_INTERPRET=1 must be set before triton is used):
# a subprocess with small shapes, the interpreter is slow
TRITON_SCRIPT = textwrap.dedent('''
    import os, sys, math
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, torch.nn.functional as F
    import tilefx
    sys.path.insert(0, {here!r})
    from test_bounds_nan import NAN_OPS, _with_specials, _table, INDEXERS
    failed = []
    for name in {names!r}:
        fn = NAN_OPS[name]
        x = _with_specials(6, 40, seed=sum(map(ord, name)) % 100)
        try:
            torch.testing.assert_close(tilefx.compile(fn, target="cuda")(x), fn(x), equal_nan=True,
                                       rtol=1e-5, atol=1e-5)
        except Exception as e:
            failed.append(f"{{name}}: {{type(e).__name__}} {{str(e)[:300]}}")
    x = torch.randn(1, 2, 8, 8); x[0, 0, 3, 3] = math.nan
    pool = lambda t: F.max_pool2d(t, 3, 2, 1)
    try:
        torch.testing.assert_close(tilefx.compile(pool, target="cuda")(x), pool(x), equal_nan=True)
    except Exception as e:
        failed.append(f"max_pool2d: {{e}}")
    w = _table()
    cm = tilefx.compile(lambda i: w[i] * 2.0, target="cuda")
    torch.testing.assert_close(cm(torch.tensor([-1, 2])), w[torch.tensor([-1, 2])] * 2.0)
    try:
        cm(torch.tensor([1, 10 ** 7]))
        failed.append("no IndexError on cuda")
    except IndexError:
        pass
    print("FAILED", failed) if failed else print("OK")
''')


TRITON_NAMES = ["relu", "hardtanh", "hardsigmoid", "clamp", "maximum", "minimum", "amax", "amin",
                "softmax", "log_softmax", "layer_norm", "add_relu_amax"]


def test_nan_propagates_triton_interpreted():
    pytest.importorskip("triton")
    script = TRITON_SCRIPT.format(here=str(Path(__file__).parent), names=TRITON_NAMES)
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
