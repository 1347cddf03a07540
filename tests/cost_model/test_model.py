"""The XGBoost model on a synthetic database: trains, saves, loads, ranks held-out
workloads better than random; refuses other feature versions; the training CLI
rejects tiny databases; the tuner uses a learned model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cost_model_synthetic import SHAPES, TARGET, make_db, matmul

from tilefx.compiler.cli import main
from tilefx.cost_model.dataset import load_dataset
from tilefx.cost_model.metrics import evaluate, pairwise_accuracy, top_k_score
from tilefx.cost_model.model import LearnedModel, ModelError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("cm") / "synthetic.db"
    db = make_db(path)
    ds = load_dataset(db, TARGET.key())
    db.close()
    return path, ds, ds.features()


def test_metrics_on_known_orders():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert pairwise_accuracy(t, -t) == 1.0 and pairwise_accuracy(t, t) == 0.0
    assert top_k_score(t, np.array([0, 0, 1, 0.5]), 1) == pytest.approx(1 / 3)
    assert top_k_score(t, np.array([0, 0, 1, 0.5]), 3) == 1.0
    m = evaluate(np.r_[t, t], np.r_[-t, t], np.array([0] * 4 + [1] * 4))
    assert m["pairwise"] == 0.5 and m["workloads"] == 2


def test_trains_saves_loads_and_ranks_held_out_workloads(synthetic, tmp_path):
    _, ds, X = synthetic
    g, t = ds.groups(), ds.seconds()
    assert len(ds.workloads) == len(SHAPES) and len(t) == 32 * len(SHAPES)
    test = np.isin(g, [0, 1])
    model = LearnedModel.train(X[~test], t[~test], g[~test], ds.target_key,
                               feature_set=ds.feature_set, rounds=60)
    model.save(tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["feature_version"] >= 1 and saved["target_key"] == TARGET.key()
    loaded = LearnedModel.load(tmp_path / "m.json")
    assert np.allclose(loaded.score_matrix(X[test]), model.score_matrix(X[test]))
    learned = evaluate(t[test], loaded.score_matrix(X[test]), g[test])
    rand = evaluate(t[test], np.random.default_rng(0).random(test.sum()), g[test])
    assert learned["pairwise"] > 0.8 and learned["pairwise"] > rand["pairwise"] + 0.2
    assert learned["top5"] > 0.9
    # the CostModel interface: a held-out kernel's schedules, ranked from their features
    op = ds.samples[np.flatnonzero(test)[0]].kernel
    rows = [i for i in np.flatnonzero(test) if ds.samples[i].kernel is op]
    scores = loaded.predict(op, [ds.samples[i].schedule for i in rows], TARGET)
    assert pairwise_accuracy(t[rows], np.array(scores)) > 0.8


def test_other_feature_version_is_refused(synthetic, tmp_path):
    _, ds, X = synthetic
    model = LearnedModel.train(X, ds.seconds(), ds.groups(), ds.target_key,
                               feature_set=ds.feature_set, rounds=5)
    data = model.to_json()
    data["feature_version"] = 999
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="loop_nest features version 999"):
        LearnedModel.load(tmp_path / "old.json")
    data["feature_set"] = "punch_cards"
    (tmp_path / "odd.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="unknown feature set 'punch_cards'"):
        LearnedModel.load(tmp_path / "odd.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ModelError, match="not a tilefx cost model"):
        LearnedModel.load(tmp_path / "junk.json")


def test_train_cli_writes_a_model_and_rejects_a_tiny_db(synthetic, tmp_path, capsys):
    path, _, _ = synthetic
    assert main(["train-cost-model", "--db", str(path), "--target", "cpu",
                 "-o", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "pairwise" in out and "xgboost rank" in out and "analytical" in out
    assert LearnedModel.load(tmp_path / "m.json").objective == "rank"
    # a database URL is read as well as a path (a PostgreSQL one the same way)
    assert main(["train-cost-model", "--db", f"sqlite:///{path}", "--target", "cpu",
                 "-o", str(tmp_path / "u.json")]) == 0
    assert LearnedModel.load(tmp_path / "u.json").meta["db"] == f"sqlite:///{path}"
    assert main(["train-cost-model", "--db", f"sqlite:///{tmp_path}/none.db", "-o",
                 str(tmp_path / "n.json")]) == 2
    assert "no tuning database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # a missing file is not created empty
    make_db(tmp_path / "tiny.db", shapes=SHAPES[:3], per_workload=10).close()
    assert main(["train-cost-model", "--db", str(tmp_path / "tiny.db"), "-o",
                 str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "30 ok measurements over 3 workloads" in err and "at least 200" in err
    assert not (tmp_path / "t.json").exists()


def test_training_goes_on_from_a_model_whose_data_is_gone(synthetic, tmp_path, capsys):
    """``--init``: a model trained on some workloads keeps its trees and is boosted on others
    (the shipped GPU model refined by real models' kernels); its own ranking of the new workloads
    is printed beside the boosted one; a model of another objective is refused in one line."""
    path, ds, X = synthetic
    g, t = ds.groups(), ds.seconds()
    first = np.isin(g, [0, 1, 2])
    start = LearnedModel.train(X[first], t[first], g[first], ds.target_key, feature_set=ds.feature_set,
                               rounds=20)
    start.save(tmp_path / "start.json")
    trees = lambda m: int(m.booster.num_boosted_rounds())  # noqa: E731
    more = LearnedModel.train(X[~first], t[~first], g[~first], ds.target_key, feature_set=ds.feature_set,
                              rounds=30, init=start)
    assert trees(more) == trees(start) + 30
    assert evaluate(t[~first], more.score_matrix(X[~first]), g[~first])["pairwise"] > 0.8
    assert main(["train-cost-model", "--db", str(path), "--target", "cpu", "--init", str(tmp_path / "start.json"),
                 "--rounds", "10", "-o", str(tmp_path / "more.json")]) == 0
    out = capsys.readouterr().out
    assert "--init model as it is (rank)" in out and "(--init + 10 rounds)" in out
    saved = LearnedModel.load(tmp_path / "more.json")
    assert trees(saved) == trees(start) + 10 and saved.meta["init"]["path"] == str(tmp_path / "start.json")
    assert main(["train-cost-model", "--db", str(path), "--target", "cpu", "--init", str(tmp_path / "start.json"),
                 "--objective", "regression", "-o", str(tmp_path / "r.json")]) == 2
    assert "cannot continue a rank model" in capsys.readouterr().err
    assert main(["train-cost-model", "--db", str(path), "--init", str(tmp_path / "none.json"),
                 "-o", str(tmp_path / "n.json")]) == 2
    assert "cannot read cost model" in capsys.readouterr().err
    assert main(["train-cost-model", "--db", str(path), "--rounds", "0", "-o", str(tmp_path / "z.json")]) == 2
    assert "--rounds 0" in capsys.readouterr().err


class _Spy:
    """A learned-model stand-in that records what the search asks of it."""

    def __init__(self, inner):
        self.inner, self.predicted, self.observed = inner, 0, 0

    def predict(self, kernel, schedules, target):
        self.predicted += len(schedules)
        return self.inner.predict(kernel, schedules, target)

    def observe(self, kernel, results, target):
        self.observed += len(results)
        self.inner.observe(kernel, results, target)


def test_tuner_ranks_with_the_given_model_and_finds_the_local_one(synthetic, tmp_path,
                                                                 monkeypatch):
    from tilefx.autotune.search import EvolutionarySearch
    from tilefx.codegen.space import SearchSpace
    from tilefx.autotune.tuner import TuneOptions, Tuner

    _, ds, X = synthetic
    model = LearnedModel.train(X, ds.seconds(), ds.groups(), ds.target_key,
                               feature_set=ds.feature_set, rounds=20)
    spy = _Spy(model)
    op = matmul(16, 32, 16)
    tuner = Tuner(TARGET, TuneOptions(trials=4, batch=2, workers=0, progress=False, repeats=2,
                                      db_path=str(tmp_path / "t.db")), model=spy)
    try:
        res = tuner.tune_kernel(op)
    finally:
        tuner.close()
    assert res.trials >= 3 and spy.predicted > 100 and spy.observed >= 1
    # no model given: the local model under the cache dir is used
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    from tilefx.cost_model import local_model_path

    local_model_path(TARGET).parent.mkdir(parents=True)
    model.save(local_model_path(TARGET))
    tuner = Tuner(TARGET, TuneOptions(workers=0, progress=False, db_path=str(tmp_path / "u.db")))
    try:
        strategy = tuner._strategy(SearchSpace.for_kernel(op, TARGET), op, None)
    finally:
        tuner.close()
    assert isinstance(strategy, EvolutionarySearch) and isinstance(strategy.model, LearnedModel)


def test_online_update_adapts_to_the_measured_kernel(synthetic):
    _, ds, X = synthetic
    g, t = ds.groups(), ds.seconds()
    model = LearnedModel.train(X[g != 0], t[g != 0], g[g != 0], ds.target_key,
                               feature_set=ds.feature_set, rounds=10)
    rows = np.flatnonzero(g == 0)
    op = ds.samples[rows[0]].kernel

    class R:
        def __init__(self, s, sec):
            self.schedule, self.seconds = s, sec

    before = model.predict(op, [ds.samples[i].schedule for i in rows], TARGET)
    model.observe(op, [R(ds.samples[i].schedule, t[i]) for i in rows[:16]], TARGET)
    after = model.predict(op, [ds.samples[i].schedule for i in rows], TARGET)
    assert before != after  # an online booster now ranks this kernel
    assert pairwise_accuracy(t[rows], np.array(after)) >= pairwise_accuracy(
        t[rows], np.array(before)) - 0.05


def test_collect_fills_a_database_and_resumes(tmp_path, capsys):
    from tilefx.storage.database import TuningDatabase

    db = str(tmp_path / "c.db")
    args = ["collect", "--db", db, "--trials", "2", "--workloads", "family", "--limit", "1",
            "--no-progress", "--repeats", "2"]
    assert main(args) == 0
    with TuningDatabase(db) as d:
        first = d.count()
        assert first["workloads"] == 1 and first["measurements"] >= 2
        assert all(r.ok and r.median > 0 for r in d.records())
    assert main(args) == 0  # a rerun finds the workload complete: nothing measured again
    with TuningDatabase(db) as d:
        assert d.count() == first
    # a larger budget, guided by the cost model from the best measured so far: only new programs
    guided = args[:4] + ["12", "--strategy", "evolutionary"] + args[5:]
    assert main(guided) == 0
    with TuningDatabase(db) as d:
        more = d.count()
        assert more["candidates"] > first["candidates"] and more["workloads"] == 1
        assert len({r.schedule_json for r in d.records()}) == more["candidates"]
    assert main(["collect", "--db", db, "--trials", "1"]) == 2
    assert "--trials must be at least 2" in capsys.readouterr().err
