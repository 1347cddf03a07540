"""The model zoo's kernels as cost-model training workloads: what ``tilefx collect --zoo`` loads.

    tilefx collect --db cm.db --trials 24 --zoo benchmarks/cost_model_workloads.py:zoo_kernels

``zoo_kernels(models, target)`` compiles each zoo model (``benchmarks/models``)
at its smallest batch as the compiler forms it for ``target`` (layout and
fusion decisions differ per target) and returns the distinct kernels. Models
with symbolic shapes are skipped: the collector measures static kernels only.

The zoo is not part of the installed package, so ``tilefx`` never imports it:
``tilefx collect`` loads this file by path, and like every script here it puts
the repository root on ``sys.path`` for ``benchmarks.models``. The generated
families and the held-out benchmark kernels stay in ``tilefx.cost_model.workloads``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("benchmarks.cost_model_workloads")


def zoo_kernels(models: Sequence[str] | None, target: str = "cpu") -> list[Any]:
    """The distinct kernels of the zoo ``models`` (None: all) at their smallest batch, as the
    compiler forms them for ``target`` (``cpu``, ``cpu:<mcpu>``, ``cuda``)."""
    from benchmarks.models import ZOO
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    unknown = [name for name in models or () if name not in ZOO]
    if unknown:
        raise ValueError(f"unknown zoo model {unknown[0]!r}; have {', '.join(ZOO)}")
    out: list[Any] = []
    with CompileSession() as session:
        for name in models or list(ZOO):
            entry = ZOO[name]
            found = model_kernels(entry.build(), entry.make_inputs(batch=entry.batches[0], seed=0),
                                  CompileOptions(target=target), session)
            if found.bindings:  # symbolic shapes: the collector measures static kernels only
                log.info("zoo model %s has symbolic shapes %s; skipped", name, found.bindings)
                continue
            out.extend(found.kernels)
    return out
