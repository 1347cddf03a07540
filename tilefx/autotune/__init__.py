"""Autotuning: search each kernel's schedule space, measure the promising
candidates, and remember every result.

- ``tuner``: the tuning loop (``Tuner``, ``TuneOptions``); ``space`` and
  ``search``: what may be chosen and in which order (``SearchSpace``,
  strategies, the ``analytical`` cost model); ``measure``: builder pool and
  isolated runner; ``measure_cuda``: the Triton space, fingerprint, builder
  and runner (CUDA events, cold L2) used on cuda targets.
- ``database``: the SQLite tuning database (``TuningDatabase``, ``Record``).
- ``fingerprint``: the identity of a candidate's generated code; equal
  fingerprints mean identical code, measured once.
- ``functional_hash``: the identity of a kernel's computation (outputs on
  seeded random inputs, rounded and hashed), the workload key under which
  records are shared, and the correctness guard ``outputs_match``.

Names are loaded on first use so ``import tilefx.autotune`` imports neither
TVM nor torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TuningDatabase": ("tilefx.storage.database", "TuningDatabase"),
    "Record": ("tilefx.storage.database", "Record"),
    "Measurement": ("tilefx.storage.database", "Measurement"),
    "fingerprint": ("tilefx.codegen.tvm.fingerprint", "fingerprint"),
    "functional_hash": ("tilefx.ir.functional_hash", "functional_hash"),
    "workload_key": ("tilefx.ir.functional_hash", "workload_key"),
    "reference_inputs": ("tilefx.ir.functional_hash", "reference_inputs"),
    "reference_outputs": ("tilefx.ir.functional_hash", "reference_outputs"),
    "outputs_match": ("tilefx.ir.functional_hash", "outputs_match"),
    "cache_root": ("tilefx.settings", "cache_root"),
    "Tuner": ("tilefx.autotune.tuner", "Tuner"),
    "TuneOptions": ("tilefx.autotune.tuner", "TuneOptions"),
    "SearchSpace": ("tilefx.codegen.space", "SearchSpace"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilefx.autotune' has no attribute {name!r}")
