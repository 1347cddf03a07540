"""Weight packing pass: exact, agrees with the schedule, only where it is safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.passes.passes_testing import assert_same
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, optimize
from tilefx.passes.packing import (PackingLog, pack_panels, pack_weights, packed_weights,
                                   unpack_panels)


def _mlp(rows=8, k=64, h=128, n=32, seed=0, shared=False):
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    x = b.input(TensorType(DType.float32, (rows, k)), "x")
    w1 = b.const(rng.standard_normal((k, h)).astype(np.float32), "w1")
    h1 = b.op("gelu", b.op("add", b.op("matmul", x, w1), b.const(rng.standard_normal(h).astype(np.float32),
                                                                   "b1")))
    y = b.op("matmul", h1, b.const(rng.standard_normal((h, n)).astype(np.float32), "w2"))
    outs = [y, b.op("matmul", b.op("neg", x), w1)] if shared else [y]  # w1 read by two kernels
    return optimize(b.finish(outs), PassOptions())


def test_pack_panels_round_trip():
    w = np.arange(6 * 32, dtype=np.float32).reshape(6, 32)
    p = pack_panels(w, 8)
    assert p.shape == (4, 6, 8) and p[1, 2, 3] == w[2, 8 + 3]
    np.testing.assert_array_equal(unpack_panels(p), w)
    with pytest.raises(ValueError, match="does not divide"):
        pack_panels(w, 5)


def test_packing_is_exact_in_the_interpreter():
    g = _mlp()
    log = PackingLog()
    out = pack_weights.bind(pack_factor=lambda op: 16, report=log)(g)
    assert len(packed_weights(out)) == 2 and len(log.lines) == 2
    # the unpacked weights are gone: the model holds each weight once
    assert not any(a.ndim == 2 and a.shape in ((64, 128), (128, 32)) for a in out.constants.values())
    assert_same(g, out, atol=0, rtol=0)
    # no factor, or one that does not divide N: unchanged
    assert pack_weights(g) is g
    assert pack_weights.bind(pack_factor=lambda op: 48)(g) is g


def test_shared_weight_not_packed():
    g = _mlp(shared=True)
    out = pack_weights.bind(pack_factor=lambda op: 16)(g)
    assert packed_weights(out) == ["w2_packed16"]
    assert_same(g, out, atol=0, rtol=0)


def test_tvm_kernel_reads_panels_with_matching_schedule():
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel, default_schedule, schedule_space
    from tilefx.codegen.tvm.schedules.matmul import register_n

    target = Target.host_cpu()
    g = _mlp(rows=8, k=64, h=128, n=32)
    plain = [op for op in g.ops if op.name == "kernel"][0]
    bn = register_n(128, default_schedule(plain, target), target)
    out = pack_weights.bind(pack_factor=lambda op: bn)(g)
    kernel = [op for op in out.ops if op.name == "kernel"][0]
    # the template sees the panels: register width pinned to the panel width, no in-kernel packing
    sched = default_schedule(kernel, target)
    assert sched.get("reg_n") == bn and sched.get("pack_b") is False
    assert schedule_space(kernel, target)["reg_n"] == [bn]
    fn = build_kernel(kernel, target, use_cache=False)
    consts = {op.results[0].name: torch.from_numpy(out.constants[op.attr("name")]).clone()  # aligned
              for op in out.ops if op.name == "const" and op.attr("name")}
    x = torch.randn(8, 64)
    args = [x if v.name == "x" else consts[v.name] for v in kernel.inputs]
    got = torch.empty(8, 128)
    fn(*args, got)
    w1 = torch.from_numpy(unpack_panels(consts[kernel.inputs[1].name].numpy()))
    want = torch.nn.functional.gelu(x @ w1 + consts[kernel.inputs[2].name])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the read is of the packed buffer itself (no cache copy block)
    assert "_global" not in str(fn.lowered)


def test_compile_with_packing_matches_eager():
    import tilefx

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()
    x = torch.randn(4, 32)
    cm = tilefx.compile(m, passes=PassOptions(pack_weights=True))
    # N = 64 is two panels of the default 32-wide register tile; N = 32 is one panel = W itself
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-5)
    packed = [ln.split(":")[1].strip() for ln in cm.records[0].notes if ln.startswith("packing:")]
    assert "fused_matmul_add_relu_0" in packed
