"""Every zoo model compiles with tilefx, with no fallback, and matches eager PyTorch.

Each model is compiled once and called at its two small test batch sizes (two
signatures, so two captures), each time on fresh random inputs that the
compile never saw; then once more with ``dynamic=True``, where one capture
must serve two batch sizes. A fallback or a kernel that failed to build (and
so runs in the reference interpreter) fails the test: the zoo is the list of
models tilefx claims to compile whole. The last test runs ``benchmarks/run.py``
on one model so the benchmark script cannot rot unnoticed.
"""

from __future__ import annotations

import os

import pytest
import torch

import tilefx
from benchmarks.models import ZOO, ZooModel
from benchmarks.stats import compile_stats

os.environ.setdefault("TVM_BIND_THREADS", "0")  # read when tilefx first imports TVM, later

RTOL, ATOL = 1e-3, 1e-4

# Known bugs elsewhere, skipped with their reason so they stay visible; delete an entry once fixed.

@pytest.fixture(params=sorted(ZOO), ids=str)
def entry(request: pytest.FixtureRequest) -> ZooModel:
    return ZOO[request.param]


def test_zoo_is_complete() -> None:
    assert set(ZOO) == {"mlp", "resnet18", "mobilenetv2_block", "transformer_encoder", "gpt2_block"}
    for e in ZOO.values():
        assert len(e.batches) >= 2 and e.bench_batch >= 1, e.name


def test_zoo_models_are_deterministic_and_eval(entry: ZooModel) -> None:
    a, b = entry.build(), entry.build()
    assert not any(m.training for m in a.modules()), f"{entry.name} must be built in eval mode"
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), f"{entry.name}.{name} differs between two builds: seed it"
    x1, x2 = entry.make_inputs(entry.batches[0], seed=0), entry.make_inputs(entry.batches[0], seed=1)
    assert all(torch.equal(u, v) for u, v in zip(x1, entry.make_inputs(entry.batches[0], seed=0)))
    assert not torch.equal(x1[0], x2[0])
    # Norms carry random statistics, so BN folding and LayerNorm affines are really exercised.
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean.abs().sum() > 0 and not torch.allclose(m.running_var, torch.ones(1))


def test_zoo_model_compiles_whole_and_matches_eager(entry: ZooModel) -> None:
    model = entry.build()
    compiled = tilefx.compile(model, target="cpu")
    for i, batch in enumerate(entry.batches):
        inputs = entry.make_inputs(batch, seed=100 + i)
        with torch.no_grad():
            expected = model(*inputs)
        got = compiled(*inputs)
        assert got.shape == expected.shape, f"{entry.name} batch {batch}"
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, b=batch: f"{entry.name} batch {b}: {m}")
        assert expected.abs().max() > 1e-3, f"{entry.name}: the reference output is ~0, the check is void"

    stats = compile_stats(compiled)
    assert stats.fallbacks == 0 and stats.interpreted == 0, (
        f"{entry.name}: {stats}:\n  " + "\n  ".join(stats.problems))
    assert stats.kernels > 0


def test_zoo_model_dynamic_batch_is_captured_once(entry: ZooModel) -> None:
    # Batch sizes >= 2: torch.export specializes a dim of size 1, so batch 1 is its own signature.
    model = entry.build()
    compiled = tilefx.compile(model, target="cpu", dynamic=True)
    for batch in (2, 3):
        inputs = entry.make_inputs(batch, seed=200 + batch)
        with torch.no_grad():
            expected = model(*inputs)
        torch.testing.assert_close(compiled(*inputs), expected, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, b=batch: f"{entry.name} dynamic, batch {b}: {m}")
    assert compiled.num_compiles == 1, f"{entry.name}: dynamic=True captured once per batch size"
    stats = compile_stats(compiled)
    assert stats.fallbacks == 0 and stats.interpreted == 0, (
        f"{entry.name}: {stats}:\n  " + "\n  ".join(stats.problems))


def test_benchmark_script_writes_a_checked_table(tmp_path) -> None:
    # Inductor left out: its C++ build alone would take longer than this whole file.
    from benchmarks import run

    out = tmp_path / "result.md"
    rc = run.main(["--models", "mobilenetv2_block", "--compilers", "tilefx", "--repeats", "2",
                   "--warmup", "1", "--output", str(out)])
    text = out.read_text()
    assert rc == 0, text
    row = next(line for line in text.splitlines() if line.startswith("| mobilenetv2_block"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[4]) > 0, row  # eager and tilefx ms measured
    assert cells[8] == "0", f"fallbacks: {row}"
    assert "torch 2." in text and "apache-tvm" in text
