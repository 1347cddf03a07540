"""Fused kernels vs PyTorch, vectorized contractions, and the disk cache."""

import logging

import torch
import torch.nn.functional as F
from conftest import f32, kernel_op, run_kernel

from tilefx.codegen.target import Target


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def test_matmul_bias_gelu_is_tiled_and_vectorized():
    from tilefx.codegen.tvm import build_kernel

    op = kernel_op("contraction", [f32(64, 96), f32(96, 80), f32(80)], lambda b, x, w, c: b.op(
        "gelu", b.op("add", b.op("matmul", x, w), c), approximate="none"))
    x, w, c = _rand(64, 96), _rand(96, 80, seed=1), _rand(80, seed=2)
    built = build_kernel(op, Target.host_cpu())
    y = torch.empty(64, 80)
    built(x, w, c, y)
    torch.testing.assert_close(y, F.gelu(x @ w + c), rtol=1e-4, atol=1e-4)
    assert "T.vectorized" in built.lowered and "T.parallel" in built.lowered
    assert "ramp" in built.source.lower() or "<16 x float>" in built.source or "x float>" in built.source


def test_batched_matmul_broadcast():
    op = kernel_op("contraction", [f32(2, 3, 8, 16), f32(16, 24)], lambda b, x, w: b.op("matmul", x, w))
    x, w = _rand(2, 3, 8, 16), _rand(16, 24, seed=3)
    (y,) = run_kernel(op, [x, w])
    torch.testing.assert_close(y, x @ w, rtol=1e-4, atol=1e-4)


def test_conv_bias_residual_relu():
    op = kernel_op("contraction", [f32(2, 8, 10, 10), f32(16, 8, 3, 3), f32(16, 1, 1), f32(2, 16, 10, 10)],
                   lambda b, x, w, c, r: b.op("relu", b.op("add", b.op("add", b.op(
                       "conv2d", x, w, padding=(1, 1)), c), r)))
    ins = [_rand(2, 8, 10, 10), _rand(16, 8, 3, 3, seed=4), _rand(16, 1, 1, seed=5), _rand(2, 16, 10, 10, seed=6)]
    (y,) = run_kernel(op, ins)
    ref = torch.relu(F.conv2d(ins[0], ins[1], padding=1) + ins[2] + ins[3])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_depthwise_and_strided_conv():
    op = kernel_op("contraction", [f32(1, 8, 9, 9), f32(8, 1, 3, 3)], lambda b, x, w: b.op(
        "conv2d", x, w, stride=(2, 2), padding=(1, 1), groups=8))
    x, w = _rand(1, 8, 9, 9), _rand(8, 1, 3, 3, seed=7)
    (y,) = run_kernel(op, [x, w])
    torch.testing.assert_close(y, F.conv2d(x, w, stride=2, padding=1, groups=8), rtol=1e-4, atol=1e-5)


def test_layer_norm_gelu_and_softmax():
    op = kernel_op("reduction", [f32(6, 40), f32(40), f32(40)], lambda b, x, w, c: b.op(
        "gelu", b.op("layer_norm", x, w, c, normalized_ndim=1), approximate="tanh"))
    x, w, c = _rand(6, 40), _rand(40, seed=8), _rand(40, seed=9)
    (y,) = run_kernel(op, [x, w, c])
    torch.testing.assert_close(y, F.gelu(F.layer_norm(x, (40,), w, c), approximate="tanh"),
                               rtol=1e-4, atol=1e-5)
    op = kernel_op("reduction", [f32(3, 5, 33)], lambda b, x: b.op("softmax", b.op(
        "mul", x, b.scalar(0.5, x.type.dtype)), dim=-1))
    x = _rand(3, 5, 33)
    (y,) = run_kernel(op, [x])
    torch.testing.assert_close(y, (x * 0.5).softmax(-1), rtol=1e-5, atol=1e-6)


def test_permute_add_chain_vectorized():
    from tilefx.codegen.tvm import build_kernel

    op = kernel_op("pointwise", [f32(4, 6, 8), f32(8, 6, 4)], lambda b, x, z: b.op(
        "add", b.op("permute", x, dims=(2, 1, 0)), b.op("exp", z)))
    x, z = _rand(4, 6, 8), _rand(8, 6, 4, seed=10)
    built = build_kernel(op, Target.host_cpu())
    y = torch.empty(8, 6, 4)
    built(x, z, y)
    torch.testing.assert_close(y, x.permute(2, 1, 0) + z.exp())
    assert "T.vectorized" in built.lowered


def test_disk_cache_hit_and_corrupt_entry(caplog):
    from tilefx.codegen.tvm import build_kernel
    from tilefx.codegen.tvm.cache import cache_dir

    op = kernel_op("pointwise", [f32(16, 16)], lambda b, x: b.op("sigmoid", x), name="cached")
    first = build_kernel(op, Target.host_cpu())
    second = build_kernel(op, Target.host_cpu())
    assert not first.from_cache and second.from_cache and first.fingerprint == second.fingerprint
    x, y = _rand(16, 16), torch.empty(16, 16)
    second(x, y)
    torch.testing.assert_close(y, torch.sigmoid(x))
    entry = cache_dir() / f"{first.fingerprint}.so"
    entry.unlink()  # a new inode: this process still maps the old library
    entry.write_bytes(b"not a shared library")
    with caplog.at_level(logging.WARNING, logger="tilefx.codegen.tvm"):
        third = build_kernel(op, Target.host_cpu())
    assert not third.from_cache and "unreadable" in caplog.text
    third(x, y)
    torch.testing.assert_close(y, torch.sigmoid(x))


def test_a_shipped_kernel_installs_into_another_cache_and_a_tampered_one_is_refused(
        tmp_path, monkeypatch):
    """``Backend.ship`` on the building machine, ``unship`` on the measuring one (the Ray
    cluster's nodes): the kernel then loads from the receiving cache and runs; bytes that
    do not match the digest sent with them are refused and nothing is written."""
    from dataclasses import replace

    import pytest

    from tilefx.codegen.backend import Backend
    from tilefx.codegen.tvm import build_kernel
    from tilefx.codegen.tvm.cache import cache_dir, entry_digest

    target = Target.host_cpu()
    backend = target.backend()
    op = kernel_op("pointwise", [f32(8, 32)], lambda b, x: b.op("tanh", x), name="shipped")
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "builder"))
    built = build_kernel(op, target)
    assert backend.ships_builds
    shipment = backend.ship(built.fingerprint)
    assert shipment.artifact == built.fingerprint and shipment.payload[:4] == b"\x7fELF"

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "measurer"))  # a fresh cache
    assert backend.unship(shipment) == built.fingerprint
    entry = cache_dir() / f"{built.fingerprint}.so"
    assert entry.read_bytes() == shipment.payload
    assert entry.with_suffix(".sha256").read_text().strip() == entry_digest(entry.stem, entry)
    backend.unship(shipment)  # again: the verified entry is kept
    there = build_kernel(op, target)
    assert there.from_cache  # loaded from what was installed, not rebuilt
    x, y = _rand(8, 32), torch.empty(8, 32)
    there(x, y)
    torch.testing.assert_close(y, torch.tanh(x))

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "third"))
    flipped = bytearray(shipment.payload)
    flipped[len(flipped) // 2] ^= 0xFF
    for bad in (replace(shipment, payload=bytes(flipped)), replace(shipment, digest="0" * 64)):
        with pytest.raises(ValueError, match=rf"kernel {built.fingerprint} arrived damaged: "
                                             "its bytes do not match the sha256"):
            backend.unship(bad)
    assert not list((tmp_path / "third").rglob("*.so"))
    with pytest.raises(ValueError, match="not a kernel cache key"):
        backend.unship(replace(shipment, artifact="../../etc/evil"))
    with pytest.raises(FileNotFoundError, match="is not in this machine's kernel cache"):
        backend.ship("0" * 32)
    with pytest.raises(NotImplementedError, match="build where you measure"):
        Backend(target).ship(built.fingerprint)  # a backend whose builds cannot travel


def test_schedule_space_is_data_and_non_default_schedules_work():
    from tilefx.codegen.tvm import default_schedule, schedule_space

    op = kernel_op("contraction", [f32(32, 48), f32(48, 64)], lambda b, x, w: b.op("matmul", x, w))
    target = Target.host_cpu()
    space = schedule_space(op, target)
    assert {"tile_m", "tile_n", "tile_k", "reg_m", "reg_n"} <= set(space)
    assert all(isinstance(v, list) and v for v in space.values())
    default = default_schedule(op, target)
    x, w = _rand(32, 48), _rand(48, 64, seed=11)
    for sched in (default, default.with_(tile_m=16, tile_k=64, reg_m=2, reg_n=16, parallel=False)):
        (y,) = run_kernel(op, [x, w], sched)
        torch.testing.assert_close(y, x @ w, rtol=1e-4, atol=1e-4)
