"""Training data from the tuning database: one row per measured candidate.

The database keeps every measurement (a candidate may have several: reruns,
the tuner's re-matching of the best against the library); a candidate's
latency is its fastest timing window over its ``ok`` runs. Not the median:
on a loaded machine a window that lost the CPU to another process reads in
multiples of the scheduler's time slice (4 ms), and the fastest window is
the estimate least touched by that. Failed candidates and the
extern (library) candidate are left out: the model ranks template schedules.
Kernels are rebuilt from the workload's IR text (``parse_graph``), their kind
inferred from the body (``features.kernel_kind``), so a database from another
machine or an exported JSONL file is enough to train on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilefx.codegen.backend import FeatureSet
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import is_extern
from tilefx.codegen.target import Target
from tilefx.cost_model.features import feature_matrix, kernel_kind
from tilefx.ir.graph import Op, Value, freeze_attrs
from tilefx.ir.parser import parse_graph

log = logging.getLogger("tilefx.cost_model")


@dataclass(frozen=True)
class Sample:
    workload_key: str
    kernel: Any          # the ``kernel`` Op rebuilt from the database
    schedule: Any        # Schedule
    seconds: float


@dataclass(frozen=True)
class Dataset:
    samples: tuple[Sample, ...]
    target: Any          # the codegen Target the measurements were made on
    target_key: str

    @property
    def feature_set(self) -> FeatureSet:
        """The feature layout of the target's candidates (its backend's)."""
        return self.target.backend().feature_set

    @property
    def workloads(self) -> list[str]:
        return sorted({s.workload_key for s in self.samples})

    def groups(self) -> np.ndarray:
        index = {w: i for i, w in enumerate(self.workloads)}
        return np.array([index[s.workload_key] for s in self.samples])

    def seconds(self) -> np.ndarray:
        return np.array([s.seconds for s in self.samples], dtype=np.float64)

    def features(self, *, nest: bool = True) -> np.ndarray:
        rows = []
        by_kernel: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_kernel.setdefault(s.workload_key, []).append(i)
        out = None
        for idx in by_kernel.values():
            k = self.samples[idx[0]].kernel
            m = feature_matrix(k, [self.samples[i].schedule for i in idx], self.target, nest=nest)
            rows.append((idx, m))
        for idx, m in rows:
            if out is None:
                out = np.zeros((len(self.samples), m.shape[1]), dtype=np.float32)
            out[idx] = m
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def kernel_from_ir(ir_text: str, name: str = "kernel") -> Any:
    """A ``kernel`` op around a body printed in the database (kind inferred)."""
    body = parse_graph(ir_text, {})
    args = tuple(Value(f"x{i}", v.type) for i, v in enumerate(body.inputs))
    results = tuple(Value(f"y{i}", v.type) for i, v in enumerate(body.outputs))
    return Op("kernel", args, results, freeze_attrs({"kind": kernel_kind(body), "name": name}), body)


def resolve_target_key(db: Any, target: str) -> str:
    """``target`` (``--target`` text) as a key of the database: a key it has; else the key of
    the target ``Target.parse`` reads from the text (``cpu``: the host, ``cpu:<mcpu>``,
    ``cuda``) if the database has it; else, for a bare ``cpu``/``llvm``/``cuda``, the
    database's only target whose backend is that target's."""
    keys = db.target_keys()
    if target in keys:
        return target
    missing = f"target {target!r} is not in the database (it has {keys or 'none'})"
    try:
        wanted = Target.parse(target)
    except ValueError:
        raise ValueError(missing) from None
    if wanted.key() in keys:
        return wanted.key()
    if ":" in target or target.lstrip().startswith("{"):  # a named CPU or a whole target: that one
        raise ValueError(missing)
    backend = wanted.backend().name
    same = [k for k in keys if _backend_name(db, k) == backend]
    if len(same) == 1:
        return same[0]
    raise ValueError(f"database has {len(same)} targets for the {backend} backend"
                     f"{': ' + ', '.join(same) if same else ''}; pass one with --target")


def _backend_name(db: Any, target_key: str) -> str | None:
    tj = db.target_json(target_key)
    return Target.from_json(tj).backend().name if tj else None


def load_dataset(db: Any, target_key: str) -> Dataset:
    """Every ok template candidate of ``target_key`` in ``db`` (a TuningDatabase)."""
    tj = db.target_json(target_key)
    target = Target.from_json(tj) if tj else Target.host_cpu()
    best: dict[tuple[str, str], float] = {}
    for r in db.records(target_key=target_key):
        if not r.ok or not r.samples:
            continue
        key = (r.workload_key, r.schedule_json)
        best[key] = min(best.get(key, float("inf")), float(min(r.samples)))
    kernels: dict[str, Any] = {}
    samples = []
    for (wkey, sjson), seconds in sorted(best.items()):
        schedule = Schedule.from_json(sjson)
        if is_extern(schedule):
            continue
        if wkey not in kernels:
            found = db.workload(wkey)
            if found is None:
                continue
            try:
                kernels[wkey] = kernel_from_ir(found[0], wkey[:12])
            except Exception as e:  # noqa: BLE001 - an unreadable workload is skipped, not fatal
                log.warning("cost model: workload %s cannot be rebuilt from its IR (%s); skipped",
                            wkey, e)
                kernels[wkey] = None
        if kernels[wkey] is not None:
            samples.append(Sample(wkey, kernels[wkey], schedule, seconds))
    return Dataset(tuple(samples), target, target_key)
