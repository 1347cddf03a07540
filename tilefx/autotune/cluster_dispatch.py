"""Running the cluster's tasks: a window of slots, timeouts, and retries when a worker dies.

``Flight`` runs ``Job``s (one build, measurement or re-timing each) as Ray tasks
and yields each one's outcome as it ends: the task's dict, or a ``Failure``.

- The driver keeps at most as many tasks in flight as the cluster has slots (CPUs
  for builds, measuring nodes for measurements), so a task's timeout counts from
  about when it starts, not from when it was queued.
- A task whose worker dies (``WorkerCrashedError``, a node that died, a lost
  object) is submitted again, wherever Ray finds room: after ``max_tries``
  attempts it ends as ``Failure("died")`` (the candidate is recorded as
  ``build_error`` / ``run_error`` with the reason). A crash or hang *inside* a
  kernel is the backend runner's business as it is locally (its child process
  dies or is killed: ``run_error`` / ``timeout``); this layer is the second line.
- A task with no result after its timeout is stopped (``ray.cancel(force=True)``:
  its worker process is killed) and ends as ``Failure("timeout")``; tuning goes on.
- Tuning goes on with the nodes that remain; with no measuring node left a
  measurement fails at once instead of waiting forever.
- Ctrl-C (or any error in the caller): closing ``results()`` cancels every task
  in flight; what the tuner committed stays, so a rerun resumes.

Ray is imported inside the functions here, never at module level (see ``cluster.py``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tilefx.autotune.cluster_connection import RayCluster, first_line

log = logging.getLogger("tilefx.autotune")


@dataclass
class Failure:
    status: str   # "died" (retries exhausted), "timeout", "error"
    error: str


@dataclass
class Job:
    key: Any                      # the caller's handle (index of the build)
    kind: str                     # "build" | "measure" | "retime"
    request: dict                 # what the task gets besides the workload
    args: tuple                   # (workload ref, ...) after the request
    timeout: float
    node: str | None = None       # run on this node only (re-timing)
    tries: int = 0
    submitted: float = 0.0


class Flight:
    """Runs jobs as Ray tasks: a window of slots, per-attempt timeouts, resubmission
    when a worker dies; ``results()`` yields (job, task dict | Failure) as each ends."""

    def __init__(self, cluster: RayCluster, remote: Any, slots: Callable[[], int]) -> None:
        self.cluster, self.remote, self.slots = cluster, remote, slots
        self.queue: deque[Job] = deque()
        self.running: dict[Any, Job] = {}

    def add(self, job: Job) -> None:
        self.queue.append(job)

    def _submit(self, job: Job) -> Failure | None:
        options: dict[str, Any] = {}
        if job.kind != "build":
            nodes = self.cluster.measuring_nodes()
            if not nodes:
                return Failure("error", f"no alive node offers {self.cluster.resource}: no "
                                "node left to measure on")
            if job.node is not None:
                if job.node not in nodes:
                    return Failure("error", f"node {job.node[:8]} is gone")
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(job.node, soft=False)
        job.tries += 1
        job.submitted = time.perf_counter()
        job.request = {**job.request, "attempt": job.tries}
        ref = self.remote.options(**options).remote(job.request, *job.args) if options else \
            self.remote.remote(job.request, *job.args)
        self.running[ref] = job
        self.cluster.in_flight += 1
        return None

    def _done(self, ref: Any) -> None:
        self.running.pop(ref, None)
        self.cluster.in_flight -= 1

    def results(self) -> Iterator[tuple[Job, Any]]:
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        stats = self.cluster.stats
        try:
            while self.queue or self.running:
                while self.queue and len(self.running) < max(1, self.slots()):
                    job = self.queue.popleft()
                    failed = self._submit(job)
                    if failed is not None:
                        yield job, failed
                if not self.running:
                    continue
                now = time.perf_counter()
                wait = min(j.submitted + j.timeout for j in self.running.values()) - now
                refs = list(self.running)
                ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, min(wait, 1.0)))
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    job = self.running[ref]
                    self._done(ref)
                    elapsed = time.perf_counter() - job.submitted
                    try:
                        value = ray.get(ref)
                    except TaskCancelledError:
                        continue
                    except RayTaskError as e:  # an exception escaped the task: not retried
                        stats.lost_s += elapsed
                        yield job, Failure("error", f"task failed: {first_line(e)}")
                        continue
                    except RayError as e:  # the worker or its node died, an object was lost
                        stats.lost_s += elapsed
                        reason = f"{type(e).__name__}: {first_line(e)}"
                        if job.tries < self.cluster.max_tries:
                            stats.tasks["retried"] += 1
                            log.info("tilefx tune: %s task died (%s); submitting it again "
                                     "(attempt %d of %d)", job.kind, reason, job.tries + 1,
                                     self.cluster.max_tries)
                            self.queue.appendleft(job)
                            continue
                        stats.tasks["failed"] += 1
                        yield job, Failure("died", f"worker died {job.tries} time(s); last: "
                                                    f"{reason}"[:500])
                        continue
                    exec_s = float(value.get("exec_seconds", 0.0))
                    stats.queue_s += max(0.0, elapsed - exec_s)
                    if job.kind == "build":
                        stats.build_s += exec_s
                    else:
                        stats.measure_s += exec_s
                    stats.tasks[job.kind] += 1
                    if value.get("node"):
                        stats.nodes.add(value["node"])
                    yield job, value
                now = time.perf_counter()
                for ref, job in list(self.running.items()):
                    if now - job.submitted >= job.timeout:
                        ray.cancel(ref, force=True)  # kills the worker process: it is stuck
                        self._done(ref)
                        stats.lost_s += now - job.submitted
                        stats.tasks["timeout"] += 1
                        yield job, Failure("timeout", f"no result after {job.timeout:.1f}s "
                                                       "(task stopped)")
        finally:  # Ctrl-C, an error in the caller: nothing of ours keeps running
            for ref in list(self.running):
                try:
                    ray.cancel(ref, force=True)
                except Exception as e:  # noqa: BLE001 - best effort on the way out
                    log.debug("could not cancel a task: %s", e)
                self._done(ref)
            self.queue.clear()


def remote(fn: Callable, **options: Any) -> Any:
    import ray

    return ray.remote(max_retries=0, **options)(fn)
