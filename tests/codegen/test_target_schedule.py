"""Target detection and Schedule records (no TVM import needed)."""

import sys

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target


def test_host_cpu_detection_is_sane():
    t = Target.host_cpu()
    assert t.kind == "cpu" and t.cores >= 1 and t.mcpu
    assert t.vector_bytes in (16, 32, 64) and t.vector_lanes(4) == t.vector_bytes // 4
    assert t.l1_bytes < t.l2_bytes <= t.l3_bytes
    assert Target.from_json(t.to_json()) == t
    assert Target.parse("cpu") == t
    assert Target.parse("cpu:skylake-avx512").mcpu == "skylake-avx512"


def test_target_to_tvm_has_explicit_triple():
    spec = Target.host_cpu().to_tvm()
    assert str(spec.attrs["mtriple"]) == "x86_64-linux-gnu"


def test_import_codegen_does_not_import_tvm():
    import subprocess

    code = ("import sys, tilefx.codegen, tilefx.codegen.tvm, tilefx.codegen.target, "
            "tilefx.codegen.schedule; print('tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_schedule_record():
    s = Schedule.of(tile_m=64, vectorize=16, order=["i", "j"])
    assert s.get("tile_m") == 64 and s.get("missing", 3) == 3 and s["order"] == ("i", "j")
    assert s == Schedule.of(order=("i", "j"), vectorize=16, tile_m=64) and hash(s) == hash(
        Schedule.of(vectorize=16, order=("i", "j"), tile_m=64))
    assert Schedule.from_json(s.to_json()) == s
    assert s.with_(tile_m=32).get("tile_m") == 32 and s.get("tile_m") == 64
