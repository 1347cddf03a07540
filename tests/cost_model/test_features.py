"""Feature extraction: deterministic, versioned, documented, and sensitive to the schedule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from cost_model_synthetic import TARGET, matmul

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.tvm import default_schedule
from tilefx.cost_model import features as F
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op


def _pointwise():
    t = TensorType(DType.float32, (64, 256))
    return kernel_op("pointwise", [t, t], lambda b, x, y: b.op("relu", b.op("add", x, y)), "pw")


def test_features_are_documented_and_versioned():
    assert isinstance(F.FEATURE_VERSION, int) and F.FEATURE_VERSION >= 1
    assert len(set(F.NAMES)) == len(F.NAMES)
    assert all(doc and "\n" not in doc for _, doc in F.FEATURES)
    op = matmul(64, 64, 64)
    vec = F.features(op, default_schedule(op, TARGET), TARGET)
    assert vec.shape == (len(F.NAMES),) and vec.dtype == np.float32


def test_extraction_is_deterministic_and_cached():
    op = matmul(48, 64, 96)
    s = default_schedule(op, TARGET)
    a = F.features(op, s, TARGET)  # no cache: nothing kept
    cache = F.FeatureCache()
    b = F.features(op, s, TARGET, cache=cache)
    assert np.array_equal(a, b) and a is not b and len(cache) == 1
    assert F.features(op, s, TARGET, cache=cache) is b  # second call: from the caller's cache
    assert F.features(op, s, TARGET) is not b  # no process-wide cache
    assert a[F.INDEX["flops"]] > 0 and a[F.INDEX["kind_contraction"]] == 1.0
    other = s.with_(parallel=not s.get("parallel"))
    rows = F.feature_matrix(op, [s, other], TARGET, cache=cache)
    assert rows[0] is not b and np.array_equal(rows[0], b) and len(cache) == 2
    small = F.FeatureCache(limit=1)
    F.features(op, s, TARGET, cache=small)
    F.features(op, other, TARGET, cache=small)
    assert len(small) == 1  # bounded: the least recently used vector is dropped


def test_loop_nest_features_follow_the_schedule():
    op = _pointwise()
    lanes = TARGET.vector_lanes(4)
    vec = F.features(op, Schedule.of(vectorize=lanes, unroll=1, parallel=True), TARGET)
    scalar = F.features(op, Schedule.of(vectorize=1, unroll=4, parallel=False), TARGET)
    i = F.INDEX
    assert vec[i["vec_frac"]] == 1.0 and scalar[i["vec_frac"]] == 0.0
    assert vec[i["par_extent"]] > 0 and scalar[i["par_extent"]] == 0
    assert scalar[i["unroll"]] > vec[i["unroll"]]
    # the same kernel's work and traffic do not depend on the schedule
    for name in ("flops", "global_read", "global_write"):
        assert vec[i[name]] == scalar[i[name]] > 0
    cheap = F.features(op, Schedule.of(vectorize=1, unroll=4, parallel=False), TARGET, nest=False)
    assert cheap[i["flops"]] == 0 and cheap[i["knob_unroll"]] == 4


def test_gathered_vectors_count_as_scalar():
    # rows of 100: a vector of 4 stays inside a row, a vector of 8 or 16 straddles two rows
    # of the fused loop (floordiv/floormod by 100): per-lane code, 3x slower when measured
    row = TensorType(DType.float32, (16, 100))
    op = kernel_op("pointwise", [row, TensorType(DType.float32, (100,))],
                   lambda b, x, y: b.op("relu", b.op("add", x, y)), "bias_relu")
    i = F.INDEX
    whole = F.features(op, Schedule.of(vectorize=4, unroll=1, parallel=False), TARGET)
    assert whole[i["vec_frac"]] == 1.0 and whole[i["vec_gather"]] == 0.0
    for lanes in (8, 16):
        split = F.features(op, Schedule.of(vectorize=lanes, unroll=1, parallel=False), TARGET)
        assert split[i["vec_gather"]] == 1.0 and split[i["vec_frac"]] == 0.0
        assert split[i["loop0_kind"]] == 2.0  # still the vectorized loop in the signature


def test_differences_from_the_default_schedule():
    op = matmul(64, 128, 96)
    default = default_schedule(op, TARGET)
    i = F.INDEX
    at_default = F.features(op, default, TARGET)
    deltas = [i[f"d_{n}"] for n in F.DELTA_OF]
    assert not at_default[deltas].any()
    other = default.with_(parallel=not default.get("parallel"))
    vec = F.features(op, other, TARGET)
    assert vec[i["d_knob_parallel"]] == vec[i["knob_parallel"]] - at_default[i["knob_parallel"]] != 0
    assert vec[i["d_par_extent"]] == vec[i["par_extent"]] - at_default[i["par_extent"]]


def test_hottest_store_detail():
    op = matmul(64, 128, 96)
    vec = F.features(op, default_schedule(op, TARGET), TARGET)
    i = F.INDEX
    sig = [(vec[i[f"loop{k}_kind"]], vec[i[f"loop{k}_spatial"]]) for k in range(F.LEVELS)]
    assert sig[0] == (2.0, 1.0)            # innermost: the vectorized output columns
    assert (0.0, 0.0) in sig               # a serial reduction loop (k) around the register tile
    assert vec[i["w_reg_fp"]] > 0 and vec[i["r0_task_fp"]] > 0 and vec[i["r1_task_fp"]] > 0


def test_layout_follows_the_backend():
    assert TARGET.backend().feature_set is FeatureSet.LOOP_NEST
    assert F.layout_of(FeatureSet.LOOP_NEST) == (F.FEATURE_VERSION, F.NAMES)
    assert F.feature_matrix(matmul(8, 8, 8), [], TARGET).shape == (0, len(F.NAMES))


def test_kernel_kind_from_body():
    assert F.kernel_kind(matmul(16, 16, 16).body) == "contraction"
    assert F.kernel_kind(_pointwise().body) == "pointwise"


def test_import_tilefx_does_not_import_xgboost():
    code = ("import sys, tilefx, tilefx.cost_model, tilefx.autotune; "
            "assert 'xgboost' not in sys.modules and 'tvm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
