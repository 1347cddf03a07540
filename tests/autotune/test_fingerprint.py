"""Fingerprints: schedules that generate the same code share one, different code
does not; stable across processes; value names do not matter."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tilefx.codegen.tvm.fingerprint import fingerprint, lowered_module, scheduled_module
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir import DType, Op, TensorType
from tilefx.ir.builder import kernel_op

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[2]
# a fixed target (not the host) so the expected collapses do not depend on the machine
TARGET = Target(cores=4, vector_bytes=32)  # 8 fp32 lanes


def f32(*shape) -> TensorType:
    return TensorType(DType.float32, shape)




def relu(*shape) -> Op:
    return kernel_op("pointwise", [f32(*shape)], lambda b, x: b.op("relu", x), name="relu")


def linear(names=("x", "w", "b"), name="fc", m=8, k=32, n=16) -> Op:
    def body(b, x, w, c):
        return b.op("relu", b.op("add", b.op("matmul", x, w, result_name=name + "_mm"), c),
                    result_name=name)
    return kernel_op("contraction", [f32(m, k), f32(k, n), f32(n)], body, name=name,
                     input_names=list(names))


PW = Schedule.of(vectorize=8, unroll=1, parallel=False)
MM = Schedule.of(tile_m=8, tile_n=16, reg_m=4, reg_n=8, parallel=True)


def fp(op, schedule, target=TARGET, **kw):
    return fingerprint(op, schedule, target, **kw)


def test_equal_code_equal_fingerprint_small_pointwise():
    op = relu(3, 5)  # 15 elements: no power-of-two vector or unroll factor divides it
    base = fp(op, PW)
    assert base == fp(op, PW)
    assert len(base) == 32 and int(base, 16) >= 0
    for vec, unroll in itertools.product([1, 2, 4, 8, 16], [1, 2, 4]):
        assert fp(op, PW.with_(vectorize=vec, unroll=unroll)) == base, (vec, unroll)
    assert fp(op, PW.with_(irrelevant_knob=3)) == base  # knobs a template ignores
    assert fp(op, PW.with_(parallel=True)) != base      # 15 iterations: parallel is real


def test_different_code_different_fingerprint_pointwise():
    op = relu(64, 128)
    prints = {fp(op, PW.with_(vectorize=v, unroll=u, parallel=p))
              for v, u, p in itertools.product([1, 4, 8], [1, 2], [False, True])}
    assert len(prints) == 12


def test_contraction_knobs_that_cannot_change_the_code():
    op = linear()  # M=8, K=32, N=16
    base = fp(op, MM)
    assert fp(op, MM.with_(tile_m=128)) == base                       # tile >= M
    assert fp(op, MM.with_(tile_n=64)) == fp(op, MM.with_(tile_n=512)) == base  # tile >= N
    assert fp(op, MM.with_(not_a_knob=7)) == base          # knobs the template does not read
    assert fp(op, MM.with_(reg_m=2)) != base
    assert fp(op, MM.with_(reg_n=16)) != base
    serial = MM.with_(parallel=False)  # (with parallel on, templates may re-tile for the cores)
    assert fp(op, serial.with_(tile_m=4)) != fp(op, serial)  # two row tiles instead of one


def _hand_scheduled(steps, shape=(4, 16)) -> str:
    """Fingerprint of relu(4 x 16) scheduled by hand (independent of the templates)."""
    from tvm import s_tir

    from tilefx.codegen.tvm.fingerprint import fingerprint_module
    from tilefx.codegen.tvm.kernel import to_prim_func

    sch = s_tir.Schedule(to_prim_func(relu(*shape)))
    i, j = sch.get_loops(sch.get_sblock("relu"))
    steps(sch, i, j)
    return fingerprint_module(sch.mod, TARGET)


def test_unit_loops_are_normalized_away():
    base = _hand_scheduled(lambda s, i, j: None)
    same = {
        "tile >= extent": lambda s, i, j: s.split(i, [1, 4]),
        "parallel extent 1": lambda s, i, j: s.parallel(s.split(i, [1, 4])[0]),
        "unroll extent 1": lambda s, i, j: s.unroll(s.split(j, [16, 1])[1]),
        "vector width 1": lambda s, i, j: s.vectorize(s.split(j, [16, 1])[1]),
    }
    for what, steps in same.items():
        assert _hand_scheduled(steps) == base, what
    different = {
        "vectorize": lambda s, i, j: s.vectorize(s.split(j, [4, 4])[1]),
        "parallel": lambda s, i, j: s.parallel(i),
        "fuse": lambda s, i, j: s.fuse(i, j),
        "unroll": lambda s, i, j: s.unroll(s.split(j, [8, 2])[1]),
    }
    prints = {what: _hand_scheduled(steps) for what, steps in different.items()}
    column = _hand_scheduled(lambda s, i, j: None, shape=(4, 1))  # a dim of size 1
    assert _hand_scheduled(lambda s, i, j: s.vectorize(j), shape=(4, 1)) == column
    assert _hand_scheduled(lambda s, i, j: s.unroll(j), shape=(4, 1)) == column
    assert base not in prints.values() and len(set(prints.values())) == len(prints)


def test_value_names_do_not_matter_but_target_does():
    a, b = linear(("x", "w", "b"), "fc1"), linear(("inp", "weight", "bias"), "layer3")
    assert fp(a, MM) == fp(b, MM)
    assert fp(a, MM) != fp(a, MM, Target(cores=8, vector_bytes=32))
    assert fp(linear(m=16), MM) != fp(a, MM)


def test_default_schedule_and_bindings():
    from tilefx.codegen.tvm import default_schedule
    from tilefx.ir.types import symbol

    sym = kernel_op("pointwise", [f32(symbol("s0"), 24)], lambda b, x: b.op("relu", x))
    static = kernel_op("pointwise", [f32(16, 24)], lambda b, x: b.op("relu", x))
    assert fp(sym, PW, bindings={"s0": 16}) == fp(static, PW)
    assert fp(static, None) == fp(static, default_schedule(static, TARGET))
    assert fp(sym, PW, bindings={"s0": 16}) != fp(sym, PW, bindings={"s0": 32})


def test_lowered_module_is_what_gets_built():
    op = linear()
    lowered = lowered_module(scheduled_module(op, TARGET, MM), TARGET).script()
    assert "float32x8" in lowered  # lowered: vector types, not a T.vectorized loop
    assert "T.vectorized" not in lowered
    # and the fingerprinted schedule builds into a kernel that computes the layer
    from tilefx.codegen.tvm import build_kernel

    host = Target.host_cpu()
    built = build_kernel(op, host, MM, use_cache=False)
    x, w, c = (torch.randn(8, 32), torch.randn(32, 16), torch.randn(16))
    y = torch.empty(8, 16)
    built(x, w, c, y)
    torch.testing.assert_close(y, torch.relu(x @ w + c), rtol=1e-4, atol=1e-4)


def test_stable_across_processes():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import test_fingerprint as t; print(t.fp(t.linear(), t.MM))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TVM_BIND_THREADS": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == fp(linear(), MM)


@pytest.mark.parametrize("kind", ["pointwise", "contraction"])
def test_space_collapse_is_counted(kind):
    """How much of a space is duplicate code (reported by the tuner as skipped builds)."""
    from tilefx.codegen.tvm import schedule_space

    op = relu(4, 6) if kind == "pointwise" else linear(m=8, k=16, n=16)
    space = schedule_space(op, TARGET)
    if kind == "contraction":  # two values per knob keep the test fast
        space = {k: v[:2] for k, v in space.items()}
    points = [Schedule.of(**dict(zip(space, vals))) for vals in itertools.product(*space.values())]
    distinct = {fp(op, s) for s in points}
    assert 1 < len(distinct) < len(points), (len(distinct), len(points))


def _llvm_ir(op, schedule) -> str:
    import re

    from tilefx.codegen.tvm import build_kernel

    src = build_kernel(op, TARGET, schedule, use_cache=False).source
    seen: dict[str, int] = {}
    # TBAA metadata names buffers by their address in the compiling process: number them
    return re.sub(r"0x[0-9a-f]{6,}", lambda m: f"@{seen.setdefault(m.group(0), len(seen))}", src)


def test_equal_fingerprint_means_identical_llvm_ir():
    small = relu(3, 5)
    a, b = PW.with_(vectorize=4, unroll=2), PW.with_(vectorize=16, unroll=4)
    assert fp(small, a) == fp(small, b)
    assert _llvm_ir(small, a) == _llvm_ir(small, b)
    mm = linear()
    assert fp(mm, MM) == fp(mm, MM.with_(tile_m=128))
    assert _llvm_ir(mm, MM) == _llvm_ir(mm, MM.with_(tile_m=128))
    assert _llvm_ir(mm, MM) != _llvm_ir(mm, MM.with_(reg_m=2))
