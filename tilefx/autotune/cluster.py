"""Distributed measurement on Ray: the tuner's builder and runner, spread over a cluster.

    tuner = Tuner(target, TuneOptions(trials=32, cluster="ray"))        # a local Ray
    tuner = Tuner(target, TuneOptions(trials=32, cluster="10.0.0.5:6379"))
    tilefx tune model.py:build --input 64x1024 --ray 10.0.0.5:6379

``RayBuilder`` and ``RayRunner`` implement the tuner's builder and runner
protocols (``codegen/measure.py``) by running the target backend's *own* local
builder and runner (``backend.tuning_pair``) inside Ray tasks; the search, the
deduplication by fingerprint and every database commit stay in the tuner, the
driver process. Workers return records, never touch the database.

The pieces, one module each:

- ``cluster_connection``: ``RayCluster``, the connection and the fleet — which
  nodes offer the target's measure resource (``measure_resource``), how many
  CPUs; errors (``ClusterError``) name the argument that asked for the cluster.
- ``cluster_dispatch``: tasks in flight — a window of slots, per-attempt
  timeouts, resubmission when a worker or node dies, cancellation on Ctrl-C.
- ``cluster_tasks``: what runs in a worker — builds run anywhere
  (``num_cpus=1``), one schedule per task, and come back packed by the backend
  (``Backend.ship``); measurements run only on measuring nodes (the resource, 1
  per node: one measurement per device at a time) and install the build there
  (``Backend.unship``) before timing it.
- ``cluster_retime``: nodes that disagree — each new winner is timed again on a
  second node; beyond the tolerance the slower median counts.
- here: the builder and runner the tuner sees, and ``ray_tuning_pair``.

Limits
- The tuner's library-vs-best re-match (``Tuner._rematch``) times the two on
  whichever node is free, not necessarily the same one.
- Within one tuner builds and measurements do not overlap (a batch is built, then
  measured); several tuners sharing a cluster can build beside a measurement.
- Nodes need the driver's tilefx version (checked by every task) and TVM version
  (part of the kernel cache key); that a node's hardware matches the target is the
  operator's promise, made by giving it the resource.

Ray is an optional dependency (``pip install 'tilefx[cluster]'``): it is imported
only inside the functions of these modules, never at module level, so ``import
tilefx`` (and ``tilefx.autotune``) stays light. Keep it that way when hoisting imports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tilefx.autotune.cluster_connection import (
    LOCAL_SPECS, RESOURCE_PREFIX, ClusterError, ClusterStats, RayCluster, describe,
    measure_resource)
from tilefx.autotune.cluster_dispatch import Failure, Flight, Job, remote
from tilefx.autotune.cluster_retime import DEFAULT_TOLERANCE, ClusterMeasureResult, Referee
from tilefx.autotune.cluster_tasks import (
    DEFERRED_ARTIFACT, TASK_EXIT, TASK_EXIT_FIRST, TASK_HANG, TASK_HOOKS, build_task,
    measure_task)
from tilefx.codegen.backend import Shipment
from tilefx.codegen.measure import EXTERN_ARTIFACT, BuildResult, MeasureResult, Workload
from tilefx.codegen.schedule import Schedule
from tilefx.version import __version__

log = logging.getLogger("tilefx.autotune")

__all__ = [
    "DEFAULT_TOLERANCE", "LOCAL_SPECS", "RESOURCE_PREFIX", "TASK_EXIT", "TASK_EXIT_FIRST",
    "TASK_HANG", "ClusterError", "ClusterMeasureResult", "ClusterStats", "RayBuilder",
    "RayCluster", "RayRunner", "ShippedBuild", "describe", "measure_resource",
    "ray_tuning_pair"]


# ---------------------------------------------------------------------------- builder

@dataclass(frozen=True)
class ShippedBuild(BuildResult):
    """A build made on some node, with what the measuring node needs to install it."""

    shipment: Shipment | None = None  # the packed build (None: nothing to install)
    node: str = ""


class RayBuilder:
    """The builder protocol on Ray: each schedule is built by the backend's own builder in
    a task (``num_cpus=1``) on any node; see the module docstring."""

    def __init__(self, cluster: RayCluster, *, timeout: float = 300.0,
                 fault: Callable[[Schedule], str | None] | None = None) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.fault = fault  # test hook: fault(schedule) -> a TASK_* hook or the backend's
        self._remote: Any = None

    def build(self, workload: Workload, schedules: Sequence[Schedule],
              deadline: float | None = None) -> list[BuildResult]:
        """Build ``schedules`` on the cluster. ``deadline`` is not used: a round's tasks are
        all in flight at once, and the tuner sizes its rounds to the time left."""
        t0 = time.perf_counter()
        try:
            return self._build(workload, schedules)
        finally:
            self.cluster.stats.blocked_s += time.perf_counter() - t0

    def _build(self, workload: Workload, schedules: Sequence[Schedule]) -> list[BuildResult]:
        from tilefx.codegen.space import is_extern

        done: dict[int, BuildResult] = {}
        ships = workload.target.backend().ships_builds
        todo = []
        for i, s in enumerate(schedules):
            if is_extern(s):
                done[i] = BuildResult(s, "ok", EXTERN_ARTIFACT)
            elif not ships:  # built where it is measured
                done[i] = ShippedBuild(s, "ok", DEFERRED_ARTIFACT)
            else:
                todo.append(i)
        if todo:
            self.cluster.connect()
            if self._remote is None:
                self._remote = remote(build_task, num_cpus=1)
            flight = Flight(self.cluster, self._remote, self.cluster.cpus)
            wref = self.cluster.put_workload(workload)
            for i in todo:
                s = schedules[i]
                flight.add(Job(i, "build", _request(self.cluster, s, self.fault),
                               (wref,), self.timeout))
            finished = flight.results()
            try:
                for job, out in finished:
                    s = schedules[job.key]
                    if isinstance(out, Failure):
                        status = "timeout" if out.status == "timeout" else "build_error"
                        done[job.key] = BuildResult(s, status, error=f"build {out.error}"
                                                    if out.status == "timeout" else out.error)
                    else:
                        done[job.key] = ShippedBuild(s, out["status"], out["artifact"],
                                                     out["error"], out["seconds"],
                                                     out["shipment"], out["node"])
            finally:  # Ctrl-C: the build tasks in flight are stopped now
                finished.close()
        return [done[i] for i in range(len(schedules))]

    def close(self) -> None:
        self.cluster.release()


# ----------------------------------------------------------------------------- runner

class RayRunner:
    """The runner protocol on Ray: each build is timed by the backend's own runner in a task
    on a node offering the target's measure resource; results reach ``on_result`` as they
    arrive. New winners are re-timed on a second node (``tolerance``; None: never;
    ``cluster_retime``).

    ``timeout``/``repeats``/``min_repeat_seconds``/``setup_timeout`` go to the backend's
    runner; ``task_timeout`` (default: ``setup_timeout + 2 * timeout + 30``) stops a task
    that returns nothing. Test hooks: ``fault(schedule)`` (a TASK_* hook or the backend's
    runner hook), ``timing_skew`` (node id -> factor its samples are multiplied by).
    """

    def __init__(self, cluster: RayCluster, *, timeout: float = 30.0, repeats: int = 10,
                 min_repeat_seconds: float = 0.005, setup_timeout: float = 300.0,
                 task_timeout: float | None = None, tolerance: float | None = DEFAULT_TOLERANCE,
                 fault: Callable[[Schedule], str | None] | None = None,
                 timing_skew: Mapping[str, float] | None = None) -> None:
        self.cluster = cluster
        self.timeout, self.repeats, self.min_repeat_seconds = timeout, repeats, min_repeat_seconds
        self.setup_timeout = setup_timeout
        self.task_timeout = task_timeout if task_timeout is not None else \
            setup_timeout + 2 * timeout + 30.0
        self.referee = Referee(tolerance, cluster.node_name)
        self.fault = fault
        self.timing_skew = dict(timing_skew or {})
        self._remote: Any = None

    # -- progress
    def progress_note(self) -> str:
        """For the tuner's bar: measuring nodes and tasks in flight."""
        if not self.cluster._connected:
            return ""
        return f"{len(self.cluster.measuring_nodes())} nodes, {self.cluster.in_flight} tasks"

    def time_summary(self, total_seconds: float | None = None) -> str:
        return self.cluster.summary(total_seconds)

    # -- measuring
    def run(self, workload: Workload, builds: Sequence[BuildResult],
            on_result: Callable[[MeasureResult], None] | None = None,
            deadline: float | None = None) -> list[MeasureResult]:
        """Measure ``builds`` on the cluster's nodes; ``deadline`` is not used (see ``build``)."""
        t0 = time.perf_counter()
        try:
            return self._run(workload, builds, on_result)
        finally:
            self.cluster.stats.blocked_s += time.perf_counter() - t0

    def _run(self, workload: Workload, builds: Sequence[BuildResult],
             on_result: Callable[[MeasureResult], None] | None) -> list[MeasureResult]:
        results: dict[int, MeasureResult] = {}

        def deliver(i: int, r: MeasureResult) -> None:
            results[i] = r
            if on_result is not None:
                on_result(r)

        todo = []
        for i, b in enumerate(builds):
            if b.status != "ok":
                status = "timeout" if b.status == "timeout" else "build_error"
                deliver(i, MeasureResult(b.schedule, status, (), b.error, b.seconds))
            else:
                todo.append(i)
        if not todo:
            return [results[i] for i in range(len(builds))]
        self.cluster.connect()
        if self._remote is None:
            self._remote = remote(measure_task, num_cpus=1, resources={self.cluster.resource: 1})
        flight = Flight(self.cluster, self._remote, lambda: len(self.cluster.measuring_nodes()))
        wref = self.cluster.put_workload(workload)
        for i in todo:
            b = builds[i]
            # the shipment goes as an argument: Ray inlines a small one (a kernel .so is ~25 KB;
            # 2 ms a task either way, where a ray.put first cost 5.6 ms) and puts a large one
            # in the object store itself
            shipment = getattr(b, "shipment", None)
            request = _request(self.cluster, b.schedule, self.fault, artifact=b.artifact,
                               build_seconds=b.seconds,
                               runner=(self.timeout, self.repeats, self.min_repeat_seconds,
                                       self.setup_timeout), skew=self.timing_skew)
            flight.add(Job(i, "measure", request, (wref, shipment), self.task_timeout))
        held: dict[int, ClusterMeasureResult] = {}
        finished = flight.results()
        try:
            for job, out in finished:
                r = self._result(builds[job.key], out)
                if job.kind == "measure":
                    other = self.referee.second_node(workload, r,
                                                     self.cluster.measuring_nodes())
                    if other is not None:
                        held[job.key] = r
                        request = dict(job.request)  # a task hook was for the first timing
                        if request.get("fault") in TASK_HOOKS:
                            request["fault"] = None
                        flight.add(Job(job.key, "retime", request, job.args,
                                       self.task_timeout, node=other))
                        continue
                    self.referee.note_best(workload, r, r.seconds)
                    deliver(job.key, r)
                else:  # the re-timing of a held winner
                    deliver(job.key, self.referee.judge(workload, held.pop(job.key), r))
        finally:  # interrupted: in-flight tasks stop, what was measured goes over unconfirmed
            finished.close()
            for i, r in held.items():
                if i not in results:
                    results[i] = r
                    if on_result is not None:
                        try:
                            on_result(r)
                        except (Exception, KeyboardInterrupt) as e:  # the first one propagates
                            log.debug("tilefx tune: unconfirmed result not handed over: %s", e)
        return [results[i] for i in range(len(builds))]

    def _result(self, build: BuildResult, out: Any) -> ClusterMeasureResult:
        if isinstance(out, Failure):
            status = "timeout" if out.status == "timeout" else "run_error"
            error = f"measurement {out.error}" if out.status == "timeout" else out.error
            return ClusterMeasureResult(build.schedule, status, (), error, build.seconds)
        return ClusterMeasureResult(build.schedule, out["status"], tuple(out["samples"]),
                                    out["error"], out.get("build_seconds") or build.seconds,
                                    out["run_seconds"], node=out["node"])

    def close(self) -> None:
        self.cluster.release()


def _request(cluster: RayCluster, schedule: Schedule, fault: Callable | None,
             **extra: Any) -> dict:
    return {"version": __version__, "target": cluster.target.to_json(),
            "schedule": schedule.to_json(), "fault": fault(schedule) if fault else None,
            "split_caches": cluster.split_caches, **extra}


def ray_tuning_pair(target: Any, options: Any, *, where: str | None = None,
                    **hooks: Any) -> tuple[RayBuilder, RayRunner]:
    """The builder and runner a ``Tuner`` with ``options.cluster`` uses (one cluster
    connection, made on first use: a tuner that finds everything in its database never
    starts Ray)."""
    cluster = RayCluster(options.cluster, target, where=where or describe(options.cluster))
    builder = RayBuilder(cluster, fault=hooks.pop("build_fault", None))
    runner = RayRunner(cluster, timeout=options.timeout, repeats=options.repeats,
                       min_repeat_seconds=options.min_repeat_seconds, **hooks)
    return builder, runner
