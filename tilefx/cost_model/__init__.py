"""The learned hardware cost model: predicts how fast a (Kernel, Schedule, Target) runs.

- ``features``: the versioned feature vector of a candidate whose backend's
  feature set is ``LOOP_NEST`` (TVM: loop-nest walk of the scheduled TIR in
  ``loopnest`` + knobs + target facts + differences from the kernel's default
  schedule), ``FEATURES`` documents each entry, ``FeatureCache`` keeps
  computed vectors for whoever ranks; ``gpu_features``: the ``TILING`` one
  (Triton: tiling, waves, shared memory, occupancy estimate), ``GPU_FEATURES``;
- ``analytical``: ``AnalyticalModel``, the hand-written estimate (the tuner's
  ranking when no learned model fits, and a feature of the learned one);
- ``model``: ``LearnedModel`` (XGBoost, pairwise ranking or log-latency
  regression), JSON save/load, online boosting as measurements arrive;
- ``dataset`` / ``train`` / ``metrics``: tuning database -> split by workload
  -> held-out pairwise accuracy, Kendall tau, top-k -> model file;
- ``workloads``: the generated kernel families ``tilefx collect`` measures
  (the model zoo's kernels are handed in from outside the package);
- ``advisor``: the fusion advisor and the sparse-vs-dense estimate (a latency model).

The tuner ranks candidates with ``default_model(target)``: a local model
(``$TILEFX_CACHE_DIR/cost_model/<target key>.json``, what ``tilefx
train-cost-model -o`` may write), else the shipped model for the backend's
``cost_model_arch`` (``default_x86.json`` for x86 CPUs, ``default_cuda.json``
for NVIDIA GPUs), else None (the tuner then uses ``analytical``). Nothing
here measures but the advisor's in-process timing when a fusion is close;
xgboost is imported only when a model is used.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

from tilefx.settings import cache_root

log = logging.getLogger("tilefx.cost_model")

# by the backend's cost_model_arch: per CPU architecture, and one for cuda (trained on an H100;
# Triton tiling features carry the SM count and shared memory, so it is the best guess on other
# NVIDIA GPUs too)
SHIPPED = {"x86_64": Path(__file__).with_name("default_x86.json"),
           "cuda": Path(__file__).with_name("default_cuda.json")}


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Any:
    # one parse per file version: the tuner asks once per kernel. Imported here, not at the
    # top: this package's __init__ stays light (tilefx.cost_model.analytical, the tuner's
    # fallback, must not pull in the feature extraction's numpy/TVM-scheduling stack)
    from tilefx.cost_model.model import LearnedModel

    return LearnedModel.load(path)


def local_model_path(target: Any) -> Path:
    return Path(cache_root()) / "cost_model" / f"{target.key()}.json"


def default_model(target: Any, bindings: Mapping[Any, int] | None = None) -> Any:
    """The learned model to rank ``target``'s candidates with, or None (use the analytical one)."""
    if importlib.util.find_spec("xgboost") is None:  # the `tune` extra is not installed
        log.debug("xgboost is not installed: candidates are ranked by the analytical model")
        return None
    candidates = [local_model_path(target)]
    arch = target.backend().cost_model_arch
    if arch in SHIPPED:
        candidates.append(SHIPPED[arch])
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return _load(str(path), path.stat().st_mtime).with_bindings(bindings)
        except Exception as e:  # noqa: BLE001 - no xgboost, old feature version: analytical
            log.warning("cost model %s not used (%s); ranking with the analytical model", path, e)
    return None
