"""Training and evaluation: tuning database -> held-out metrics -> model file.

``train_from_db`` is what ``tilefx train-cost-model`` runs: load the
database's candidates (``dataset``), refuse a database too small to learn
from, hold out a share of the **workloads** (sklearn ``GroupShuffleSplit``:
no workload is in both sets), train on the rest and print the held-out
metrics next to the random and analytical baselines, then retrain on every
workload and write the model.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from tilefx.cost_model.analytical import AnalyticalModel
from tilefx.cost_model.dataset import load_dataset, resolve_target_key
from tilefx.cost_model.features import layout_of
from tilefx.cost_model.metrics import evaluate, format_metrics
from tilefx.cost_model.model import LearnedModel
from tilefx.storage.database import TuningDatabase
from tilefx.storage.db_connect import parse as parse_location

log = logging.getLogger("tilefx.cost_model")

MIN_MEASUREMENTS = 200
ROUNDS = 300  # boosting rounds of a model trained from scratch (LearnedModel.train's default)
MIN_WORKLOADS = 4


class DatasetTooSmall(ValueError):
    """Too few measurements or workloads to train a useful model."""


def check_size(n_samples: int, n_workloads: int, path: Any = "the database") -> None:
    if n_samples < MIN_MEASUREMENTS or n_workloads < MIN_WORKLOADS:
        raise DatasetTooSmall(
            f"{path} has {n_samples} ok measurements over {n_workloads} workloads; training "
            f"needs at least {MIN_MEASUREMENTS} measurements and {MIN_WORKLOADS} workloads. "
            "Collect more with `tilefx collect --db ... --trials N`")


def split_by_workload(groups: np.ndarray, test_fraction: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) with no workload in both."""
    from sklearn.model_selection import GroupShuffleSplit

    gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(gss.split(np.zeros(len(groups)), groups=groups))
    return train, test


def baseline_scores(ds: Any, rows: np.ndarray, which: str, seed: int = 0) -> np.ndarray:
    """Scores of the ``random`` or ``analytical`` baseline for ``rows`` of ``ds``."""
    if which == "random":
        return np.random.default_rng(seed).random(len(rows))
    model = AnalyticalModel()
    out = np.zeros(len(rows))
    for j, i in enumerate(rows):
        s = ds.samples[i]
        try:
            out[j] = model.predict(s.kernel, [s.schedule], ds.target)[0]
        except Exception:  # noqa: BLE001 - bodies the hand model does not know: no opinion
            out[j] = 0.0
    return out


def evaluate_split(ds: Any, X: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                   objectives: Sequence[str] = ("rank", "regression"),
                   columns: Sequence[int] | None = None, seed: int = 0,
                   baselines: bool = True, init: LearnedModel | None = None,
                   rounds: int = ROUNDS) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Held-out metrics per model name, and the trained models. With ``init``: that model as
    it is, and boosted on the training share (only its objective)."""
    t, g = ds.seconds(), ds.groups()
    rows: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}
    if init is not None:
        objectives = (init.objective,)
        rows[f"--init model as it is ({init.objective})"] = evaluate(t[test], init.score_matrix(X[test]), g[test])
    for obj in objectives:
        m = LearnedModel.train(X[train], t[train], g[train], ds.target_key, feature_set=ds.feature_set,
                               objective=obj, seed=seed, columns=columns, init=init, rounds=rounds)
        models[obj] = m
        rows[f"xgboost {obj}" + (f" (--init + {rounds} rounds)" if init is not None else "")] = \
            evaluate(t[test], m.score_matrix(X[test]), g[test])
    if baselines:
        for b in ("random", "analytical"):
            rows[b] = evaluate(t[test], baseline_scores(ds, test, b, seed), g[test])
    return rows, models


def train_from_db(db_path: str, target: str, output: str, *, objective: str = "rank",
                  test_fraction: float = 0.25, seed: int = 0, init: str | None = None,
                  rounds: int = ROUNDS) -> str:
    """Train on ``db_path`` and write ``output``; returns the printed report. ``init``: a model
    file to go on boosting from (``rounds`` more trees fitted to this database)."""
    start = LearnedModel.load(init) if init else None
    where = parse_location(db_path)
    # a server database is checked by connecting; a missing file must not become a new empty one
    if where.path is not None and not where.path.is_file():
        raise FileNotFoundError(f"no tuning database at {where}; make one with `tilefx collect`")
    with TuningDatabase(db_path) as db:
        key = resolve_target_key(db, target)
        ds = load_dataset(db, key)
    check_size(len(ds.samples), len(ds.workloads), str(where))
    X = ds.features()
    g = ds.groups()
    train, test = split_by_workload(g, test_fraction, seed)
    rows, _ = evaluate_split(ds, X, train, test, seed=seed, init=start, rounds=rounds)
    meta: dict[str, Any] = {"db": str(where), "samples": len(ds.samples), "workloads": len(ds.workloads)}
    if start is not None:
        meta = {**meta, "rounds": rounds, "init": {"path": str(init), **start.meta}}
    model = LearnedModel.train(X, ds.seconds(), g, key, feature_set=ds.feature_set,
                               objective=objective, seed=seed,
                               meta=meta, init=start, rounds=rounds)
    model.save(output)
    n_test = len(np.unique(g[test]))
    return (f"tilefx train-cost-model: {len(ds.samples)} measured candidates, {len(ds.workloads)} "
            f"workloads on {key} (features v{layout_of(ds.feature_set)[0]}, {X.shape[1]} features)\n"
            f"held-out metrics ({n_test} workloads not trained on):\n{format_metrics(rows)}\n"
            f"wrote {objective} model trained on all workloads to {output}")
