"""Where training workloads and targets come from: the generated families, a zoo handed in
from outside the package (``tilefx collect --zoo``), ``--target`` text resolved to a
database key through ``Target.parse``, and the shipped models' feature layouts."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from cost_model_synthetic import TARGET, make_db, matmul

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.target import Target
from tilefx.compiler.cli import CLIError
from tilefx.compiler.cli_cost import load_zoo
from tilefx.cost_model import SHIPPED
from tilefx.cost_model.dataset import resolve_target_key
from tilefx.cost_model.workloads import HELD_OUT, signature, workload_set
from tilefx.ir.identity import kernel_key


def test_family_without_a_zoo_and_zoo_names_need_one():
    family = workload_set("family")
    assert family and all(signature(k) not in HELD_OUT for k in family)
    assert len({kernel_key(k) for k in family}) == len(family)
    with pytest.raises(ValueError, match="zoo workloads need a zoo"):
        workload_set("zoo,family")
    with pytest.raises(ValueError, match="zoo workloads need a zoo"):
        workload_set("resnet18")


def test_the_zoo_is_called_with_model_names_and_deduplicated():
    asked = []

    def zoo(names):
        asked.append(names)
        # a held-out kernel (benchmarks/tuning.py's matmul 512) is dropped, duplicates too
        return [matmul(8, 16, 8), matmul(8, 16, 8), matmul(512, 512, 512)]

    kernels = workload_set("zoo,mlp", zoo=zoo)
    assert asked == [None, ["mlp"]]
    assert [k.attr("name") for k in kernels] == ["mm8x16x8"]


def test_load_zoo_by_path_binds_the_target_text(tmp_path):
    src = tmp_path / "myzoo.py"
    src.write_text("def kernels(names, target):\n    return [(names, target)]\n")
    zoo = load_zoo(f"{src}:kernels", "cpu:haswell")
    assert zoo(["a"]) == [(["a"], "cpu:haswell")]
    with pytest.raises(CLIError, match="has no attribute 'nothing'"):
        load_zoo(f"{src}:nothing", "cpu")
    with pytest.raises(CLIError, match="no such file"):
        load_zoo(f"{tmp_path / 'absent.py'}:kernels", "cpu")
    with pytest.raises(CLIError, match="cannot import module 'no_such_module_anywhere' .from --zoo"):
        load_zoo("no_such_module_anywhere:kernels", "cpu")


def test_collect_names_the_missing_zoo(tmp_path, capsys):
    from tilefx.compiler.cli import main

    assert main(["collect", "--db", str(tmp_path / "c.db"), "--workloads", "mlp"]) == 2
    assert "--zoo" in capsys.readouterr().err


def test_target_text_resolves_through_the_backend(tmp_path):
    db = make_db(tmp_path / "t.db", shapes=[(16, 16, 16)], per_workload=2)
    other = dataclasses.replace(TARGET, mcpu="some-other-cpu")
    cuda = Target(kind="cuda", mcpu="sm_90", arch="sm_90", cores=132)
    for t in (other, cuda):
        db.add_target(t.key(), t.to_json())
        key = db.workload_keys()[0]
        cid = db.add_candidate(key, t.key(), '{"tile": 1}', f"fp-{t.key()}")
        db.add_measurement(cid, [1e-3], "ok")
    try:
        assert resolve_target_key(db, TARGET.key()) == TARGET.key()
        assert resolve_target_key(db, "cpu") == TARGET.key()     # the host's key
        assert resolve_target_key(db, "cuda") == cuda.key()      # the only triton target
        with pytest.raises(ValueError, match="not in the database"):
            resolve_target_key(db, "cpu:some-cpu-nobody-has")
        with pytest.raises(ValueError, match="not in the database"):
            resolve_target_key(db, "tpu")
    finally:
        db.close()
    db = make_db(tmp_path / "u.db", shapes=[(16, 16, 16)], per_workload=2)
    try:
        db.add_target(other.key(), other.to_json())
        cid = db.add_candidate(db.workload_keys()[0], other.key(), '{"tile": 1}', "fp-other")
        db.add_measurement(cid, [1e-3], "ok")
        assert resolve_target_key(db, "cpu") == TARGET.key()
        with pytest.raises(ValueError, match="0 targets for the triton backend"):
            resolve_target_key(db, "cuda")
    finally:
        db.close()


@pytest.mark.skipif(importlib.util.find_spec("xgboost") is None, reason="needs xgboost")
def test_shipped_models_load_with_their_layouts():
    from tilefx.cost_model.advisor import LATENCY_MODELS
    from tilefx.cost_model.model import LearnedModel

    assert LearnedModel.load(SHIPPED["x86_64"]).feature_set is FeatureSet.LOOP_NEST
    assert LearnedModel.load(SHIPPED["cuda"]).feature_set is FeatureSet.TILING
    assert LearnedModel.load(LATENCY_MODELS["x86_64"]).feature_set is FeatureSet.LOOP_NEST
