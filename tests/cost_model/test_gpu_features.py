"""Cuda candidates' features: versioned, documented, deterministic, computed from the Triton
template's tiling without a GPU, and a model trained on them saves, loads and ranks."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.cost_model import features as F
from tilefx.cost_model import gpu_features as G
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op

H100 = Target(kind="cuda", mcpu="sm_90", arch="sm_90", cores=132, l1_bytes=227 * 1024,
              l2_bytes=50 * 1024 * 1024)


def _mm(m: int, k: int, n: int):
    t = lambda *s: TensorType(DType.float16, s)  # noqa: E731
    return kernel_op("contraction", [t(m, k), t(k, n)], lambda b, x, w: b.op("matmul", x, w),
                     f"mm{m}x{k}x{n}")


def _tile(bm, bn, bk, warps=4, stages=3, group=8):
    return Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group,
                       num_warps=warps, num_stages=stages)


def test_gpu_features_are_documented_versioned_and_deterministic():
    assert isinstance(G.GPU_FEATURE_VERSION, int) and len(set(G.GPU_NAMES)) == len(G.GPU_NAMES)
    assert all(doc and "\n" not in doc for _, doc in G.GPU_FEATURES)
    assert H100.backend().feature_set is FeatureSet.TILING
    assert F.layout_of(FeatureSet.TILING) == (G.GPU_FEATURE_VERSION, G.GPU_NAMES)
    assert F.layout_of(FeatureSet.LOOP_NEST) == (F.FEATURE_VERSION, F.NAMES)
    op = _mm(512, 512, 512)
    a = F.features(op, _tile(64, 64, 32), H100)
    b = F.features(op, _tile(64, 64, 32), H100, cache=F.FeatureCache())
    assert a.shape == (len(G.GPU_NAMES),) and a.dtype == np.float32 and np.array_equal(a, b)


def test_launch_and_occupancy_follow_the_tiling():
    op = _mm(1024, 1024, 1024)
    small = G.gpu_features(op, _tile(64, 64, 32, warps=4, stages=2), H100)
    big = G.gpu_features(op, _tile(128, 256, 64, warps=8, stages=5), H100)
    # 16 x 16 programs of 64 x 64 vs 8 x 4 of 128 x 256
    assert small["programs"] == pytest.approx(math.log2(257)) and big["programs"] == pytest.approx(math.log2(33))
    assert small["sm_fill"] == 1.0 and big["sm_fill"] == pytest.approx(32 / 132)
    # the pipeline's shared memory: stages x (BM x BK + BK x BN) x 2 bytes
    assert small["smem"] == pytest.approx(math.log2(1 + 2 * (64 * 32 + 32 * 64) * 2))
    assert big["smem_share"] == pytest.approx(5 * (128 * 64 + 64 * 256) * 2 / (227 * 1024))
    assert big["smem_share"] > 1 and big["resident"] == 0 and big["limit_smem"] == 1.0
    assert small["occupancy"] > 0 and small["acc_per_thread"] == 64 * 64 / 128
    # larger tiles re-read the operands fewer times
    assert big["operand_traffic"] < small["operand_traffic"]
    assert small["tile_intensity"] < big["tile_intensity"]
    # the problem does not depend on the schedule; the knobs are log2
    for name in ("flops", "bytes", "m", "n", "k", "roofline", "sms", "arch"):
        assert small[name] == big[name]
    assert small["arch"] == 90 and small["knob_BLOCK_M"] == pytest.approx(math.log2(65))
    assert small["knob_XBLOCK"] == -1 and small["tpl_matmul"] == 1.0


def test_padding_reductions_pointwise_and_the_library_candidate():
    odd = G.gpu_features(_mm(100, 64, 64), _tile(64, 64, 32), H100)
    assert odd["pad_share"] == pytest.approx(1 - 100 / 128)
    x = TensorType(DType.float16, (256, 1000))
    soft = kernel_op("reduction", [x], lambda b, v: b.op("softmax", v, dim=-1), "sm")
    looped = G.gpu_features(soft, Schedule.of(XBLOCK=1, RBLOCK=256, persistent=False, num_warps=4), H100)
    whole = G.gpu_features(soft, Schedule.of(XBLOCK=1, RBLOCK=1024, persistent=True, num_warps=4), H100)
    assert looped["tpl_reduction"] == 1.0 and looped["steps"] > whole["steps"]
    assert whole["pad_share"] == pytest.approx(1 - 1000 / 1024)
    pw = kernel_op("pointwise", [x], lambda b, v: b.op("relu", v), "pw")
    f = G.gpu_features(pw, Schedule.of(BLOCK=1024, num_warps=4), H100)
    assert f["programs"] == pytest.approx(math.log2(1 + 250)) and f["elems_per_thread"] == pytest.approx(math.log2(9))
    from tilefx.codegen.space import EXTERN

    lib = G.gpu_features(_mm(512, 512, 512), EXTERN, H100)
    assert lib["impl_library"] == 1.0 and "programs" not in lib and lib["flops"] > 0


def test_a_model_on_gpu_features_saves_loads_and_ranks(tmp_path):
    from tilefx.codegen.triton.measure import triton_space
    from tilefx.cost_model.metrics import pairwise_accuracy
    from tilefx.cost_model.model import LearnedModel, ModelError

    # fake latencies from waves and tile reuse: learnable from the features, not from the knobs alone
    def seconds(op, s):
        f = G.gpu_features(op, s, H100)
        if f["smem_share"] > 1:
            return 1.0
        waves = 2 ** f["waves"] - 1
        return (math.ceil(waves) / max(1e-3, 2 ** f["tile_intensity"])) * (1 + 0.02 * rng.random())

    rng = random.Random(0)
    shapes = [(256, 512, 512), (512, 256, 1024), (1024, 1024, 256), (128, 2048, 512), (768, 768, 768)]
    X, t, g, kept = [], [], [], []
    for i, shape in enumerate(shapes):
        op, space = _mm(*shape), triton_space(_mm(*shape))
        for _ in range(40):
            s = space.sample(rng)
            X.append(F.features(op, s, H100))
            t.append(seconds(op, s))
            g.append(i)
        kept.append(op)
    X, t, g = np.array(X), np.array(t), np.array(g)
    model = LearnedModel.train(X[g < 4], t[g < 4], g[g < 4], H100.key(),
                               feature_set=H100.backend().feature_set, rounds=60)
    model.save(tmp_path / "gpu.json")
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["feature_version"] == G.GPU_FEATURE_VERSION and data["features"] == list(G.GPU_NAMES)
    assert data["feature_set"] == "tiling"
    loaded = LearnedModel.load(tmp_path / "gpu.json")
    assert loaded.feature_set is FeatureSet.TILING
    held = g == 4
    assert pairwise_accuracy(t[held], loaded.score_matrix(X[held])) > 0.75
    data["feature_version"] = 999
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="tiling features version 999"):
        LearnedModel.load(tmp_path / "old.json")
    # a file from before feature_set was recorded: its layout is told by its feature names
    del data["feature_set"]
    data["feature_version"] = G.GPU_FEATURE_VERSION
    (tmp_path / "older.json").write_text(json.dumps(data))
    assert LearnedModel.load(tmp_path / "older.json").feature_set is FeatureSet.TILING
