"""Feature extraction: deterministic, versioned, documented, and sensitive to the schedule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from cost_model_synthetic import TARGET, matmul

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
    a = F.features(op, s, TARGET)
    F._CACHE.clear()
    b = F.features(op, s, TARGET)
    assert np.array_equal(a, b)
    assert F.features(op, s, TARGET) is b  # second call: from the cache
    assert a[F.INDEX["flops"]] > 0 and a[F.INDEX["kind_contraction"]] == 1.0


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


def test_kernel_kind_from_body():
    assert F.kernel_kind(matmul(16, 16, 16).body) == "contraction"
    assert F.kernel_kind(_pointwise().body) == "pointwise"


def test_import_tilefx_does_not_import_xgboost():
    code = ("import sys, tilefx, tilefx.cost_model, tilefx.autotune; "
            "assert 'xgboost' not in sys.modules and 'tvm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
