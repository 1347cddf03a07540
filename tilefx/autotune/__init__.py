"""Autotuning: search each kernel's schedule space, measure the promising
candidates, and remember every result.

- ``tuner``: the tuning loop (``Tuner``, ``TuneOptions``, ``tune_or_default``). It
  asks the target's ``Backend`` (``codegen/backend.py``) for the space, the default
  schedule, fingerprints and the builder/runner that build and time candidates;
  keys workloads by their functional hash (``ir/functional_hash.py``); ranks
  candidates with the cost model (``cost_model/``); and stores every measurement
  in the tuning database (``storage/``).
- ``search``: the search strategies (random, grid, cost-model-guided evolutionary).

Floor: above ``cost_model`` and ``storage``, below ``compiler``. Names are loaded
on first use so ``import tilefx.autotune`` imports neither TVM nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Tuner": ("tilefx.autotune.tuner", "Tuner"),
    "TuneOptions": ("tilefx.autotune.tuner", "TuneOptions"),
    "tune_or_default": ("tilefx.autotune.tuner", "tune_or_default"),
    "make_strategy": ("tilefx.autotune.search", "make_strategy"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilefx.autotune' has no attribute {name!r}")
