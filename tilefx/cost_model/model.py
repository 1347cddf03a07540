"""The learned cost model: gradient-boosted trees (XGBoost) over ``features``.

    model = LearnedModel.train(X, seconds, groups, target_key, feature_set=fs, objective="rank")
    model.save("model.json"); model = LearnedModel.load("model.json")
    scores = model.predict(kernel_op, schedules, target)     # higher = faster

``fs`` is the feature layout of the rows of ``X``: the ``FeatureSet`` of the
target's backend (``target.backend().feature_set``; ``features.layout_of``).

Two objectives (``benchmarks/cost_model.py`` compares them):

- ``rank``: ``rank:pairwise`` with one query group per workload, labels the
  normalized throughput (best latency of the workload / latency). Only the
  order inside a workload is learned, which is all the tuner asks for. Every
  pair of a group is trained on (XGBoost's default keeps only the pairs of
  the model's current top 32: a group of 63 schedules then loses most of the
  pairs that the held-out pairwise accuracy counts; all pairs: +0.012 held
  out), and each round grows ``PARALLEL_TREES`` trees on row/column samples
  (bagging inside one booster: steadier across seeds).
- ``regression``: squared error on ``-log2(seconds)``; it must also learn
  each workload's absolute scale, which the ranking never uses. It leaves out
  the ``d_`` features (differences from the default schedule): they are
  scale-free, and with them the absolute error held out grows (0.559 ->
  0.576 mean |log2 error| on the latency model's data).

The file is JSON: format tag, ``feature_set`` and ``feature_version``, the
target key it was trained for, the objective, the feature names and the
booster (XGBoost's own JSON). Loading a model of another feature version is
refused. Files written before ``feature_set`` was recorded (the shipped
models among them) are matched to a layout by their feature names.

Each model holds its own ``features.FeatureCache`` (``with_bindings`` makes a
model with a fresh one: one kernel's search), so candidates the search ranks
again cost nothing and no cache outlives the model.

Online: ``observe`` (called by the evolutionary search with each measured
batch) keeps the kernel's measurements and, once a few have arrived, boosts
``ONLINE_ROUNDS`` more trees on them from the loaded model, so the ranking
adapts to the kernel being tuned.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.space import is_extern
from tilefx.cost_model.features import LAYOUTS, NO_DELTA, FeatureCache, feature_matrix, layout_of
from tilefx.ir.identity import kernel_key

log = logging.getLogger("tilefx.cost_model")

FORMAT = "tilefx-cost-model"
OBJECTIVES = ("rank", "regression")
ONLINE_MIN = 6        # measurements of a kernel before the first online update
ONLINE_ROUNDS = 20
ALL_PAIRS = 4096      # lambdarank truncation level above any group size: all pairs
PARALLEL_TREES = 4    # chosen by nested CV (benchmarks/results/cost-model-cpu-2026-11-26.md)


class ModelError(ValueError):
    """A model file that cannot be used (other feature version, not a model, ...)."""


def _params(objective: str, seed: int) -> dict[str, Any]:
    common = {"eta": 0.1, "max_depth": 6, "min_child_weight": 1, "subsample": 0.9,
              "colsample_bytree": 0.9, "seed": seed, "nthread": 1, "verbosity": 0}
    if objective == "rank":
        # topk with k >= any group: every pair of the group
        return {**common, "objective": "rank:pairwise", "eval_metric": "ndcg",
                "lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": ALL_PAIRS,
                "num_parallel_tree": PARALLEL_TREES}
    if objective == "regression":
        return {**common, "objective": "reg:squarederror"}
    raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")


def _labels(seconds: np.ndarray, groups: np.ndarray, objective: str) -> np.ndarray:
    if objective == "regression":
        return -np.log2(seconds)
    out = np.empty_like(seconds)
    for g in np.unique(groups):
        m = groups == g
        out[m] = seconds[m].min() / seconds[m]
    return out


def _dmatrix(X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None,
             columns: Sequence[int] | None) -> Any:
    import xgboost as xgb

    Xs = X if columns is None else X[:, list(columns)]
    d = xgb.DMatrix(Xs, label=y)
    if groups is not None:
        # rank objectives want rows of a group contiguous and the group sizes
        d.set_group(np.diff(np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])))
    return d


def _sorted_by_group(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple:
    order = np.argsort(groups, kind="stable")
    return X[order], y[order], groups[order]


class LearnedModel:
    """An XGBoost booster + what it was trained on; a ``CostModel`` for the search."""

    def __init__(self, booster: Any, objective: str, target_key: str,
                 columns: Sequence[int] | None = None, *, feature_set: FeatureSet,
                 bindings: Mapping[Any, int] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.booster, self.objective, self.target_key = booster, objective, target_key
        self.feature_set = feature_set
        self.columns = None if columns is None else tuple(int(c) for c in columns)
        self.cache = FeatureCache()   # this model's feature vectors (one kernel's search)
        self.bindings = dict(bindings or {})
        self.meta = dict(meta or {})
        self._seen: dict[Any, tuple[list[Any], list[float]]] = {}
        self._online: dict[Any, Any] = {}   # kernel -> booster boosted on its measurements

    # ------------------------------------------------------------------ training

    @staticmethod
    def train(X: np.ndarray, seconds: np.ndarray, groups: np.ndarray, target_key: str, *,
              feature_set: FeatureSet, objective: str = "rank", rounds: int = 300, seed: int = 0,
              columns: Sequence[int] | None = None, meta: dict[str, Any] | None = None,
              params: Mapping[str, Any] | None = None, init: LearnedModel | None = None) -> LearnedModel:
        """``feature_set``: the layout of ``X``'s rows; ``params``: XGBoost parameters over
        the defaults (variants, nested CV); ``init``: a model to go on boosting from (its trees
        kept, ``rounds`` more fitted to this data), so that new measurements of some kernels
        refine a model whose own training data is not at hand instead of replacing it."""
        import xgboost as xgb

        if init is not None:
            if init.feature_set is not feature_set or init.objective != objective:
                raise ModelError(f"cannot continue a {init.objective} model on {init.feature_set.value} "
                                 f"features with {objective} on {feature_set.value}")
            columns = init.columns
        if objective == "regression" and columns is None and feature_set is FeatureSet.LOOP_NEST:
            columns = NO_DELTA
        X, y, g = _sorted_by_group(X, _labels(seconds, groups, objective), groups)
        d = _dmatrix(X, y, g if objective == "rank" else None, columns)
        booster = xgb.train({**_params(objective, seed), **(params or {})}, d, num_boost_round=rounds,
                            xgb_model=None if init is None else init.booster.copy())
        return LearnedModel(booster, objective, target_key, columns, feature_set=feature_set,
                            meta=meta)

    def score_matrix(self, X: np.ndarray, booster: Any = None) -> np.ndarray:
        return (booster or self.booster).predict(_dmatrix(X, None, None, self.columns))

    # ------------------------------------------------------------------ CostModel

    def with_bindings(self, bindings: Mapping[Any, int] | None) -> LearnedModel:
        """The same model for kernels with these symbol sizes (a fresh online state and
        feature cache)."""
        return LearnedModel(self.booster, self.objective, self.target_key, self.columns,
                            feature_set=self.feature_set, bindings=bindings, meta=self.meta)

    def predict(self, kernel: Any, schedules: Sequence[Any], target: Any) -> list[float]:
        if not schedules:
            return []
        X = feature_matrix(kernel, schedules, target, self.bindings, cache=self.cache)
        scores = self.score_matrix(X, self._online.get(_kernel_id(kernel)))
        # the extern candidate has no loop nest: never ranked above a schedule by the model
        return [float(s) if not is_extern(sch) else -1e9 for s, sch in zip(scores, schedules)]

    def observe(self, kernel: Any, results: Sequence[Any], target: Any) -> None:
        """Measured results (``.schedule``, ``.seconds``) of ``kernel``: boost on them."""
        kid = _kernel_id(kernel)
        schedules, seconds = self._seen.setdefault(kid, ([], []))
        new = 0
        for r in results:
            t = getattr(r, "seconds", None)
            if t and not is_extern(r.schedule):
                schedules.append(r.schedule)
                seconds.append(float(t))
                new += 1
        if not new or len(seconds) < ONLINE_MIN:
            return
        import xgboost as xgb

        X = feature_matrix(kernel, schedules, target, self.bindings, cache=self.cache)
        t = np.asarray(seconds)
        g = np.zeros(len(t), dtype=int)
        d = _dmatrix(X, _labels(t, g, self.objective), g if self.objective == "rank" else None,
                     self.columns)
        params = {**_params(self.objective, 0), "eta": 0.05}
        # boosting from the base model every time: the online trees fit only this kernel
        self._online[kid] = xgb.train(params, d, num_boost_round=ONLINE_ROUNDS,
                                      xgb_model=self.booster)
        log.debug("cost model: boosted on %d measurements of %s", len(t), kernel.attr("name"))

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict[str, Any]:
        raw = self.booster.save_raw(raw_format="json")
        version, names = layout_of(self.feature_set)
        return {"format": FORMAT, "feature_set": self.feature_set.value, "feature_version": version,
                "target_key": self.target_key,
                "objective": self.objective, "features": list(names),
                "columns": None if self.columns is None else list(self.columns),
                "meta": self.meta, "booster": json.loads(bytes(raw).decode())}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @staticmethod
    def load(path: str | Path) -> LearnedModel:
        import xgboost as xgb

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read cost model {path}: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"{path} is not a tilefx cost model (no format {FORMAT!r})")
        feature_set = _feature_set_of(data, path)
        version = layout_of(feature_set)[0]
        if data.get("feature_version") != version:
            raise ModelError(
                f"cost model {path} was trained on {feature_set.value} features version "
                f"{data.get('feature_version')}, this tilefx computes version {version}; retrain it with "
                "`tilefx train-cost-model --db ... -o ...`")
        booster = xgb.Booster()
        booster.load_model(bytearray(json.dumps(data["booster"]).encode()))
        booster.set_param({"nthread": 1})
        return LearnedModel(booster, data["objective"], data["target_key"], data.get("columns"),
                            feature_set=feature_set, meta=data.get("meta"))


def _feature_set_of(data: dict[str, Any], path: Any) -> FeatureSet:
    """The feature layout a model file was trained on: its ``feature_set``, or for a file
    written before that was recorded, the layout sharing the most of its feature names."""
    if "feature_set" in data:
        try:
            return FeatureSet(data["feature_set"])
        except ValueError:
            raise ModelError(f"cost model {path} has unknown feature set {data['feature_set']!r}; "
                             f"this tilefx knows {', '.join(fs.value for fs in FeatureSet)}") from None
    names = set(data.get("features") or ())
    return max(LAYOUTS, key=lambda fs: len(names & set(LAYOUTS[fs][1])))


def _kernel_id(kernel: Any) -> Any:
    return kernel_key(kernel)
