"""Distributed measurement on Ray: the tuner's builder and runner, spread over a cluster.

    tuner = Tuner(target, TuneOptions(trials=32, cluster="ray"))        # a local Ray
    tuner = Tuner(target, TuneOptions(trials=32, cluster="10.0.0.5:6379"))
    tilefx tune model.py:build --input 64x1024 --ray 10.0.0.5:6379

``RayBuilder`` and ``RayRunner`` implement the tuner's builder and runner
protocols (``codegen/measure.py``) by running the target backend's *own* local
builder and runner (``backend.tuning_pair``) inside Ray tasks; the search, the
deduplication by fingerprint and every database commit stay in the tuner, the
driver process. Workers return records, never touch the database.

Where things run
- ``RayCluster`` connects to ``address``, or with ``"ray"`` attaches to the Ray
  this process (or this machine, ``ray start``) already runs, else starts a local
  one. Measurements need the custom resource ``tilefx-measure:<hash of
  target.key()>`` (``measure_resource``), 1 per node: only nodes whose hardware
  is the target's measure, one measurement per device at a time. A local Ray
  started here gets it; a node of a real cluster is started with
  ``ray start --address=HEAD --resources='{"tilefx-measure:<hash>": 1}'`` (the
  error for a cluster without such a node prints the exact line).
- Builds run anywhere (``num_cpus=1``), one schedule per task. The backend's
  builder writes the kernel into that node's disk cache; for TVM the ``.so``
  bytes and their ``<key>.sha256`` digest (``codegen/tvm/cache.py``) come back
  with the build result (``ShippedBuild``), and the measuring task installs
  them into its own node's kernel cache (digest recomputed over the received
  bytes first; an entry already there and verified is kept) before it times
  the kernel. A backend without a shipper (Triton: its builds live in the
  process) builds and measures in the same task on the measuring node.
- A Ray worker keeps its backend builder/runner between tasks (``_WORKER``), so
  the runner's isolated child process (the TVM import, the loaded workload)
  stays warm across candidates.
- The driver keeps at most as many tasks in flight as the cluster has slots
  (CPUs for builds, measuring nodes for measurements), so a task's timeout
  counts from about when it starts, not from when it was queued.

Faults
- A task whose worker dies (``WorkerCrashedError``, a node that died, a lost
  object) is submitted again, wherever Ray finds room: after ``max_tries``
  attempts the candidate is recorded as ``build_error`` / ``run_error`` with
  the reason. A crash or hang *inside* a kernel is the backend runner's
  business as it is locally (its child process dies or is killed: ``run_error``
  / ``timeout``); the Ray layer is the second line.
- A task with no result after its timeout is stopped (``ray.cancel(force=True)``:
  its worker process is killed) and recorded as ``timeout``; tuning goes on.
- Tuning goes on with the nodes that remain; with no measuring node left a
  measurement is recorded as ``run_error`` at once instead of waiting forever.
- Ctrl-C: every in-flight task is cancelled; what the tuner committed stays
  (it commits each result as it arrives), so a rerun resumes.

Nodes that disagree (``RayRunner.tolerance``, default 1.5x)
  Timings from different machines are compared with one another, so one node
  that is off (a busy or throttled machine, another CPU stepping) would decide
  the winner. With two or more measuring nodes, every result that would become
  the kernel's new winner is timed again on a second node before the tuner
  sees it. Within the tolerance both are stored as ``ok`` measurements (the
  database's ``best`` takes the candidate's lower median, as for the tuner's
  re-matches). Beyond it a warning names the nodes (and, once one node was the
  odd one out in every disagreement so far, that node) and both are stored:
  **the slower median counts** (max of medians) — stored ``ok`` — and the
  faster one is stored with its samples as ``run_error`` with the reason, so
  ``db.best`` (lowest ``ok`` median) never picks a kernel because of the
  faster node. A wrongly slow timing only hides a candidate; a wrongly fast one
  would ship a slower model, so the conservative side wins. A persistently
  slow node thereby puts every contender on its own scale (each new winner is
  confirmed there), which keeps the comparison fair. The ``ok`` measurement
  and each further one travel in one ``ClusterMeasureResult`` (``also``), so
  the tuner counts the candidate once and writes every measurement once.

Limits
- With two measuring nodes a single disagreement cannot tell which node is off:
  the warning names both, with the direction; there is no third-node tie-break.
- The tuner's library-vs-best re-match (``Tuner._rematch``) times the two on
  whichever node is free, not necessarily the same one.
- Within one tuner builds and measurements do not overlap (a batch is built, then
  measured); several tuners sharing a cluster can build beside a measurement.
- Nodes need the driver's tilefx version (checked by every task) and TVM version
  (part of the kernel cache key); that a node's hardware matches the target is the
  operator's promise, made by giving it the resource.

Ray is an optional dependency (``pip install 'tilefx[cluster]'``): it is imported
only inside the functions here, never at module level, so ``import tilefx``
(and ``tilefx.autotune``) stays light. Keep it that way when hoisting imports.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

from tilefx.codegen.measure import EXTERN_ARTIFACT, BuildResult, MeasureResult, Workload
from tilefx.codegen.schedule import Schedule
from tilefx.version import __version__

log = logging.getLogger("tilefx.autotune")

RESOURCE_PREFIX = "tilefx-measure:"
DEFERRED_ARTIFACT = "deferred"  # built by the measuring task itself (no shipper)
DEFAULT_TOLERANCE = 1.5
LOCAL_SPECS = ("ray", "local", "auto")

# task-level test hooks (a fault(schedule) hook may return them; anything else is handed
# to the backend's own builder/runner hook, e.g. "crash" or "hang" of the kernel)
TASK_EXIT_FIRST = "task-exit-first"  # the task's process exits on its first attempt
TASK_EXIT = "task-exit"              # ... on every attempt
TASK_HANG = "task-hang"              # the task never returns


def measure_resource(target: Any) -> str:
    """The custom Ray resource a node offers (1 per device) to measure for ``target``."""
    return RESOURCE_PREFIX + hashlib.sha256(target.key().encode()).hexdigest()[:12]


class ClusterError(RuntimeError):
    """The cluster cannot be used; the message names the argument that asked for it."""


def describe(spec: str | None, label: str = "cluster") -> str:
    """How an error names the argument: ``--ray 1.2.3.4:6379`` or ``cluster='ray'``."""
    if label.startswith("-"):
        return f"{label} {spec}" if spec and spec not in LOCAL_SPECS else label
    return f"{label}={spec!r}"


# ------------------------------------------------------------------------- connection

_CONNECTION = {"users": 0, "owned": False}  # one Ray connection per process, shared


@dataclass
class ClusterStats:
    """Where the time went: task-seconds summed over workers, and the driver's waits."""

    build_s: float = 0.0      # build tasks' own execution time
    measure_s: float = 0.0    # measurement (and re-timing) tasks' execution time
    queue_s: float = 0.0      # round trip minus execution: scheduling, transfer, worker start
    lost_s: float = 0.0       # attempts that died or timed out
    blocked_s: float = 0.0    # driver wall time spent waiting in build()/run()
    tasks: Counter = field(default_factory=Counter)  # build, measure, retime, retry, timeout, died
    nodes: set = field(default_factory=set)


class RayCluster:
    """A connection to a Ray cluster for measuring on ``target``; connects on first use.

    ``spec``: ``"ray"`` (also ``"local"``/``"auto"``/None) attaches to the Ray this
    process or machine runs, else starts a local one (``num_cpus``, the measure
    resource 1); anything else is an address for ``ray.init(address=...)``.
    ``where`` names the argument in errors. ``max_tries``: attempts of a task whose
    worker dies. ``split_caches`` (test hook) makes build tasks write to another kernel
    cache (``<cache>/ray-build``) than measurements read, as on different machines, so
    every kernel must travel.
    """

    def __init__(self, spec: str | None, target: Any, *, where: str | None = None,
                 num_cpus: int | None = None, max_tries: int = 3,
                 split_caches: bool = False) -> None:
        self.spec = spec or "ray"
        self.target = target
        self.where = where or describe(self.spec)
        self.resource = measure_resource(target)
        self.num_cpus = num_cpus
        self.max_tries = max(1, max_tries)
        self.split_caches = split_caches
        self.stats = ClusterStats()
        self.in_flight = 0
        self._connected = False
        self._error: ClusterError | None = None
        self._nodes: tuple[float, dict[str, str], int] = (-1.0, {}, 0)
        self._workloads: dict[str, Any] = {}  # workload key -> ObjectRef (the last few)

    # -- connecting
    def connect(self) -> None:
        """Connect (idempotent); raises ``ClusterError`` naming the argument. A failure is
        remembered: asking again fails at once instead of waiting for Ray again."""
        if self._connected:
            return
        if self._error is not None:
            raise self._error
        try:
            import ray
        except ImportError:
            self._error = ClusterError(f"{self.where}: Ray is not installed "
                                       "(pip install 'tilefx[cluster]')")
            raise self._error from None
        try:
            owned = self._init(ray)
        except ClusterError as e:
            self._error = e
            raise
        _CONNECTION["users"] += 1
        _CONNECTION["owned"] = _CONNECTION["owned"] or owned
        self._connected = True
        if not self.measuring_nodes(fresh=True):
            self.release()
            self._error = ClusterError(
                f"{self.where}: no alive node of the cluster offers the resource "
                f"{self.resource!r}, so nothing can measure for target {self.target.key()}; "
                f"start measuring nodes on matching hardware with: ray start "
                f"--address=<head> --resources='{{\"{self.resource}\": 1}}'")
            raise self._error

    def _init(self, ray: Any) -> bool:
        """Attach or start; True when this process started the connection (and ends it)."""
        if self.spec not in LOCAL_SPECS:
            _reachable(self.spec, self.where)
        if ray.is_initialized():  # one connection per process: the one we have, if it is that
            current = getattr(ray.get_runtime_context(), "gcs_address", "") or ""
            if self.spec not in LOCAL_SPECS and current and \
                    _host_port(current) != _host_port(self.spec):
                raise ClusterError(f"{self.where}: this process is already connected to the Ray "
                                   f"cluster at {current}")
            return False
        quiet = dict(log_to_driver=False)
        if self.spec in LOCAL_SPECS:
            try:  # a new local Ray with the measure resource, or the one this machine runs
                ray.init(num_cpus=self.num_cpus, resources={self.resource: 1},
                         include_dashboard=False, **quiet)
            except (ValueError, RuntimeError) as e:
                if "existing cluster" not in str(e):
                    raise ClusterError(f"{self.where}: cannot start Ray ({e})") from None
                ray.init(**quiet)
            return True
        try:
            ray.init(address=self.spec, **quiet)
        except Exception as e:  # noqa: BLE001 - any failure to connect is the argument's
            raise ClusterError(f"{self.where}: cannot connect ({type(e).__name__}: "
                               f"{_first_line(e)})") from None
        return True

    def release(self) -> None:
        """Give the connection back; the last user of a connection this process made
        shuts Ray down. A later use connects again."""
        self._workloads.clear()
        if not self._connected:
            return
        self._connected = False
        _CONNECTION["users"] = max(0, _CONNECTION["users"] - 1)
        if _CONNECTION["users"] == 0 and _CONNECTION["owned"]:
            import ray

            _CONNECTION["owned"] = False
            ray.shutdown()

    # -- the fleet
    def measuring_nodes(self, fresh: bool = False) -> dict[str, str]:
        """Alive nodes offering the measure resource: node id -> address (cached ~1 s)."""
        self._refresh(fresh)
        return self._nodes[1]

    def cpus(self) -> int:
        self._refresh(False)
        return max(1, self._nodes[2])

    def _refresh(self, fresh: bool) -> None:
        if not fresh and time.monotonic() - self._nodes[0] < 1.0:
            return
        import ray

        measuring, cpus = {}, 0
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            resources = n.get("Resources") or {}
            cpus += int(resources.get("CPU", 0))
            if resources.get(self.resource, 0) > 0:
                measuring[n["NodeID"]] = n.get("NodeManagerAddress", "?")
        self._nodes = (time.monotonic(), measuring, cpus)

    def node_name(self, node_id: str) -> str:
        address = self._nodes[1].get(node_id)
        return f"{node_id[:8]}" + (f" ({address})" if address else "")

    def put_workload(self, workload: Workload) -> Any:
        """The workload in the object store, once per kernel (tasks receive the object)."""
        import ray

        ref = self._workloads.get(workload.key)
        if ref is None:
            while len(self._workloads) >= 4:
                self._workloads.pop(next(iter(self._workloads)))
            ref = self._workloads[workload.key] = ray.put(workload)
        return ref

    def summary(self, total_seconds: float | None = None) -> str:
        """One line: where the time went (task-seconds over all workers; driver wall)."""
        s = self.stats
        if not s.tasks:
            return ""
        n = s.tasks
        faults = ", ".join(f"{n[k]} {word}" for k, word in (
            ("retried", "retried"), ("timeout", "timed out"), ("failed", "failed")) if n[k])
        line = (f"cluster: {len(s.nodes)} node(s), {n['build']} builds, {n['measure']} "
                f"measurements" + (f" + {n['retime']} re-timed on a second node"
                                   if n["retime"] else "") +
                (f" ({faults})" if faults else "") +
                f"; task time build {s.build_s:.1f}s, measure {s.measure_s:.1f}s, "
                f"queue+transfer {s.queue_s:.1f}s" + (f", lost {s.lost_s:.1f}s" if s.lost_s else ""))
        if total_seconds is not None:
            line += (f"; driver {max(0.0, total_seconds - s.blocked_s):.1f}s of "
                     f"{total_seconds:.1f}s wall")
        return line


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _split(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    return (m.group(1), int(m.group(2))) if m else None


def _host_port(address: str) -> tuple[str, int] | None:
    """(IP, port) of an address, for comparing two spellings of one cluster."""
    parts = _split(address)
    if parts is None:
        return None
    try:
        return socket.gethostbyname(parts[0]), parts[1]
    except OSError:
        return parts


def _reachable(address: str, where: str, timeout: float = 5.0) -> None:
    """A TCP connection to ``host:port`` first: Ray itself retries a dead address for
    minutes before it gives up."""
    parts = _split(address)
    if parts is None:
        raise ClusterError(f"{where}: not an address (expected HOST:PORT, e.g. "
                           "10.0.0.5:6379, or 'ray' for a local cluster)")
    try:
        socket.create_connection(parts, timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"{where}: cannot connect ({e.strerror or e})") from None


# --------------------------------------------------------------------------- dispatch

@dataclass
class _Failure:
    status: str   # "died" (retries exhausted), "timeout", "error"
    error: str


@dataclass
class _Job:
    key: Any                      # the caller's handle (index of the build)
    kind: str                     # "build" | "measure" | "retime"
    request: dict                 # what the task gets besides the workload
    args: tuple                   # (workload ref, ...) after the request
    timeout: float
    node: str | None = None       # run on this node only (re-timing)
    tries: int = 0
    submitted: float = 0.0


class _Flight:
    """Runs jobs as Ray tasks: a window of slots, per-attempt timeouts, resubmission
    when a worker dies; ``results()`` yields (job, task dict | _Failure) as each ends."""

    def __init__(self, cluster: RayCluster, remote: Any, slots: Callable[[], int]) -> None:
        self.cluster, self.remote, self.slots = cluster, remote, slots
        self.queue: deque[_Job] = deque()
        self.running: dict[Any, _Job] = {}

    def add(self, job: _Job) -> None:
        self.queue.append(job)

    def _submit(self, job: _Job) -> _Failure | None:
        options: dict[str, Any] = {}
        if job.kind != "build":
            nodes = self.cluster.measuring_nodes()
            if not nodes:
                return _Failure("error", f"no alive node offers {self.cluster.resource}: no "
                                "node left to measure on")
            if job.node is not None:
                if job.node not in nodes:
                    return _Failure("error", f"node {job.node[:8]} is gone")
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

    def results(self) -> Iterator[tuple[_Job, Any]]:
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
                        yield job, _Failure("error", f"task failed: {_first_line(e)}")
                        continue
                    except RayError as e:  # the worker or its node died, an object was lost
                        stats.lost_s += elapsed
                        reason = f"{type(e).__name__}: {_first_line(e)}"
                        if job.tries < self.cluster.max_tries:
                            stats.tasks["retried"] += 1
                            log.info("tilefx tune: %s task died (%s); submitting it again "
                                     "(attempt %d of %d)", job.kind, reason, job.tries + 1,
                                     self.cluster.max_tries)
                            self.queue.appendleft(job)
                            continue
                        stats.tasks["failed"] += 1
                        yield job, _Failure("died", f"worker died {job.tries} time(s); last: "
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
                        yield job, _Failure("timeout", f"no result after {job.timeout:.1f}s "
                                                       "(task stopped)")
        finally:  # Ctrl-C, an error in the caller: nothing of ours keeps running
            for ref in list(self.running):
                try:
                    ray.cancel(ref, force=True)
                except Exception as e:  # noqa: BLE001 - best effort on the way out
                    log.debug("could not cancel a task: %s", e)
                self._done(ref)
            self.queue.clear()


def _remote(fn: Callable, **options: Any) -> Any:
    import ray

    return ray.remote(max_retries=0, **options)(fn)


# ---------------------------------------------------------------------------- builder

@dataclass(frozen=True)
class ShippedBuild(BuildResult):
    """A build made on some node, with what the measuring node needs to install it."""

    blob: bytes = field(default=b"", repr=False)   # the artifact's bytes (TVM: the .so)
    digest: str = ""                               # its sha256 sidecar (TVM: <key>.sha256)
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

    def build(self, workload: Workload, schedules: Sequence[Schedule]) -> list[BuildResult]:
        t0 = time.perf_counter()
        try:
            return self._build(workload, schedules)
        finally:
            self.cluster.stats.blocked_s += time.perf_counter() - t0

    def _build(self, workload: Workload, schedules: Sequence[Schedule]) -> list[BuildResult]:
        from tilefx.codegen.space import is_extern

        done: dict[int, BuildResult] = {}
        shipper = _shipper(workload.target)
        todo = []
        for i, s in enumerate(schedules):
            if is_extern(s):
                done[i] = BuildResult(s, "ok", EXTERN_ARTIFACT)
            elif shipper is None:  # built where it is measured
                done[i] = ShippedBuild(s, "ok", DEFERRED_ARTIFACT)
            else:
                todo.append(i)
        if todo:
            self.cluster.connect()
            if self._remote is None:
                self._remote = _remote(_build_task, num_cpus=1)
            flight = _Flight(self.cluster, self._remote, self.cluster.cpus)
            wref = self.cluster.put_workload(workload)
            for i in todo:
                s = schedules[i]
                flight.add(_Job(i, "build", _request(self.cluster, s, self.fault),
                                (wref,), self.timeout))
            finished = flight.results()
            try:
                for job, out in finished:
                    s = schedules[job.key]
                    if isinstance(out, _Failure):
                        status = "timeout" if out.status == "timeout" else "build_error"
                        done[job.key] = BuildResult(s, status, error=f"build {out.error}"
                                                    if out.status == "timeout" else out.error)
                    else:
                        done[job.key] = ShippedBuild(s, out["status"], out["artifact"],
                                                     out["error"], out["seconds"], out["blob"],
                                                     out["digest"], out["node"])
            finally:  # Ctrl-C: the build tasks in flight are stopped now
                finished.close()
        return [done[i] for i in range(len(schedules))]

    def close(self) -> None:
        self.cluster.release()


# ----------------------------------------------------------------------------- runner

@dataclass(frozen=True)
class ClusterMeasureResult(MeasureResult):
    """A measurement and the node that made it; ``also``: further measurements of the same
    candidate for the tuner to store with it (a re-timing on another node)."""

    node: str = ""
    also: tuple[MeasureResult, ...] = ()


class RayRunner:
    """The runner protocol on Ray: each build is timed by the backend's own runner in a task
    on a node offering the target's measure resource; results reach ``on_result`` as they
    arrive. New winners are re-timed on a second node (``tolerance``; None: never).

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
        self.tolerance = tolerance
        self.fault = fault
        self.timing_skew = dict(timing_skew or {})
        self._best: dict[str, tuple[Schedule, float]] = {}  # workload -> confirmed winner
        self._odd: dict[str, Counter] = {}  # node -> {"slower": n, "faster": n} in disagreements
        self._retimes = 0
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
            on_result: Callable[[MeasureResult], None] | None = None) -> list[MeasureResult]:
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
            self._remote = _remote(_measure_task, num_cpus=1, resources={self.cluster.resource: 1})
        flight = _Flight(self.cluster, self._remote, lambda: len(self.cluster.measuring_nodes()))
        wref = self.cluster.put_workload(workload)
        for i in todo:
            b = builds[i]
            # the bytes go as an argument: Ray inlines a small one (a kernel .so is ~25 KB;
            # 2 ms a task either way, where a ray.put first cost 5.6 ms) and puts a large one
            # in the object store itself
            blob = getattr(b, "blob", b"")
            request = _request(self.cluster, b.schedule, self.fault, artifact=b.artifact,
                               digest=getattr(b, "digest", ""), build_seconds=b.seconds,
                               runner=(self.timeout, self.repeats, self.min_repeat_seconds,
                                       self.setup_timeout), skew=self.timing_skew)
            flight.add(_Job(i, "measure", request, (wref, blob), self.task_timeout))
        held: dict[int, ClusterMeasureResult] = {}
        finished = flight.results()
        try:
            for job, out in finished:
                r = self._result(builds[job.key], out)
                if job.kind == "measure":
                    other = self._second_node(workload, r)
                    if other is not None:
                        held[job.key] = r
                        request = dict(job.request)  # a task hook was for the first timing
                        if request.get("fault") in (TASK_EXIT_FIRST, TASK_EXIT, TASK_HANG):
                            request["fault"] = None
                        flight.add(_Job(job.key, "retime", request, job.args,
                                        self.task_timeout, node=other))
                        continue
                    self._note_best(workload, r, r.seconds)
                    deliver(job.key, r)
                else:  # the re-timing of a held winner
                    deliver(job.key, self._judge(workload, held.pop(job.key), r))
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
        if isinstance(out, _Failure):
            status = "timeout" if out.status == "timeout" else "run_error"
            error = f"measurement {out.error}" if out.status == "timeout" else out.error
            return ClusterMeasureResult(build.schedule, status, (), error, build.seconds)
        return ClusterMeasureResult(build.schedule, out["status"], tuple(out["samples"]),
                                    out["error"], out.get("build_seconds") or build.seconds,
                                    out["run_seconds"], node=out["node"])

    def _second_node(self, workload: Workload, r: ClusterMeasureResult) -> str | None:
        """Another measuring node to confirm ``r`` on, when it would be the new winner."""
        if self.tolerance is None or r.seconds is None or not r.node:
            return None
        best = self._best.get(workload.key)
        if best is not None and (best[0] == r.schedule or r.seconds >= best[1]):
            return None
        others = sorted(n for n in self.cluster.measuring_nodes() if n != r.node)
        if not others:
            return None
        self._retimes += 1  # round robin over the other nodes
        return others[self._retimes % len(others)]

    def _note_best(self, workload: Workload, r: MeasureResult, seconds: float | None) -> None:
        if seconds is None or r.status != "ok":
            return
        best = self._best.get(workload.key)
        if best is None or seconds < best[1]:
            self._best[workload.key] = (r.schedule, seconds)

    def _judge(self, workload: Workload, first: ClusterMeasureResult,
               again: ClusterMeasureResult) -> ClusterMeasureResult:
        """The result the tuner gets for a re-timed winner; see "Nodes that disagree"."""
        name = self.cluster.node_name
        if again.status != "ok" or again.seconds is None:
            note = f"re-timing on another node failed: {again.status}: {again.error}"[:500]
            self._note_best(workload, first, first.seconds)
            return replace(first, also=(replace(again, error=note),))
        a, b = first.seconds, again.seconds
        assert a is not None
        ratio = max(a, b) / min(a, b)
        if ratio <= (self.tolerance or math.inf):
            self._note_best(workload, first, min(a, b))
            return replace(first, also=(replace(again, error=f"re-timed on node "
                                                f"{name(again.node)}: {ratio:.2f}x apart"),))
        slow, fast = (first, again) if a > b else (again, first)
        for node, side in ((slow.node, "slower"), (fast.node, "faster")):
            self._odd.setdefault(node, Counter())[side] += 1
        verdict = ""
        for node, sides in self._odd.items():
            n = sum(sides.values())
            if n >= 2 and len(sides) == 1:
                side = next(iter(sides))
                verdict = (f"; node {name(node)}'s timings disagree with the fleet's "
                           f"({side} in {n} of {n} disagreements)")
        log.warning("tilefx tune: kernel %s: node %s timed %s %.1fx slower than node %s "
                    "(%.4f ms vs %.4f ms; tolerance %.1fx): keeping the slower (max of medians), "
                    "both measurements stored%s", workload.name, name(slow.node), slow.schedule,
                    ratio, name(fast.node), max(a, b) * 1e3, min(a, b) * 1e3, self.tolerance,
                    verdict)
        kept = replace(slow, error=f"node {name(slow.node)}; node {name(fast.node)} timed it "
                       f"{ratio:.2f}x faster: the slower counts (max of medians)",
                       build_seconds=first.build_seconds, also=())
        dropped = replace(fast, status="run_error", also=(),
                          error=f"timing disagrees: node {name(fast.node)} "
                          f"{min(a, b) * 1e3:.4f} ms vs node {name(slow.node)} "
                          f"{max(a, b) * 1e3:.4f} ms ({ratio:.2f}x > tolerance "
                          f"{self.tolerance:.2f}x); kept for the record, not used")
        self._note_best(workload, kept, max(a, b))
        return replace(kept, also=(dropped,))

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


# ------------------------------------------------------------------- shipping artifacts

class _KernelCacheShipper:
    """TVM: the artifact is a kernel disk-cache key; what travels is ``<key>.so`` and
    the digest of its ``<key>.sha256`` sidecar (``codegen/tvm/cache.py``'s format)."""

    @staticmethod
    def export(key: str) -> tuple[bytes, str]:
        from tilefx.codegen.tvm import cache

        path = cache.verified_path(key)
        if path is None:
            raise FileNotFoundError(f"kernel {key} is not in this node's cache "
                                    f"{cache.cache_dir()}")
        return path.read_bytes(), (path.parent / f"{key}.sha256").read_text().strip()

    @staticmethod
    def install(key: str, blob: bytes, digest: str) -> None:
        """Put a shipped kernel into this node's cache, as ``cache.store`` would have."""
        import tempfile

        from tilefx.codegen.tvm import cache

        if not re.fullmatch(r"[0-9a-f]{8,64}", key):
            raise ValueError(f"not a kernel cache key: {key!r}")
        if cache.verified_path(key) is not None:
            return  # built or received here before
        h = hashlib.sha256(f"tilefx-kernel-cache|{key}|".encode())
        h.update(blob)
        if h.hexdigest() != digest:
            raise ValueError(f"kernel {key} arrived damaged: its bytes do not match the "
                             "sha256 sent with them")
        directory = cache.cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        fd, tmp_hash = tempfile.mkstemp(suffix=".sha256", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        with _cache_lock(directory):  # the pair is replaced as one, like cache.store
            os.replace(tmp, directory / f"{key}.so")
            os.replace(tmp_hash, directory / f"{key}.sha256")


class _cache_lock:
    """The kernel cache folder's lock (``<dir>/.lock``, flock), as ``cache.py`` takes it."""

    def __init__(self, directory: Any) -> None:
        self.path = directory / ".lock"
        self.f: Any = None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: a race only costs a rebuild
            return
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        if self.f is not None:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


# backend name -> how its built artifacts travel; a backend not here builds where it measures
_SHIPPERS: dict[str, Any] = {"tvm": _KernelCacheShipper}


def _shipper(target: Any) -> Any:
    return _SHIPPERS.get(target.backend().name)


# ------------------------------------------------------------------- inside the workers

_WORKER: dict[Any, Any] = {}  # per Ray worker process: the backend's builder/runner, kept warm


class _Refused(Exception):
    """This worker cannot take the task (another tilefx version)."""


def _enter(request: dict, role: str) -> str:
    """Checks and test hooks every task starts with; the node id."""
    import ray

    if request["version"] != __version__:
        raise _Refused(f"this node runs tilefx {__version__}, the driver {request['version']}")
    fault = request.get("fault")
    if fault == TASK_EXIT or (fault == TASK_EXIT_FIRST and request.get("attempt") == 1):
        os._exit(1)
    if fault == TASK_HANG:
        while True:
            time.sleep(60)
    base = _WORKER.setdefault("cache_base", os.environ.get("TILEFX_CACHE_DIR", ""))
    if request.get("split_caches") and role == "build":  # test hook: builds elsewhere
        from tilefx import settings

        os.environ["TILEFX_CACHE_DIR"] = str(settings.cache_root() if not base else base) + \
            "/ray-build"
    elif base:
        os.environ["TILEFX_CACHE_DIR"] = base
    return ray.get_runtime_context().get_node_id()


def _pair(request: dict) -> tuple[Any, Any]:
    """The backend's own builder and runner in this worker (made once per settings)."""
    runner_settings = tuple(request.get("runner") or (30.0, 10, 0.005, 300.0))
    key = (request["target"], runner_settings, os.environ.get("TILEFX_CACHE_DIR", ""))
    pair = _WORKER.get(key)
    if pair is None:
        from tilefx.codegen.target import Target

        timeout, repeats, min_repeat, setup_timeout = runner_settings
        pair = Target.from_json(request["target"]).backend().tuning_pair(
            workers=0, timeout=timeout, repeats=repeats, min_repeat_seconds=min_repeat)
        if hasattr(pair[1], "setup_timeout"):
            pair[1].setup_timeout = setup_timeout
        _WORKER[key] = pair
    return pair


def _inner_fault(obj: Any, fault: str | None) -> None:
    """Hand a backend-level test hook ("crash", "hang") to its builder/runner."""
    if hasattr(obj, "fault"):
        obj.fault = (lambda s, f=fault: f) if fault else None


def _build_task(request: dict, workload: Workload) -> dict:
    t0 = time.perf_counter()
    out = {"status": "build_error", "artifact": "", "error": "", "seconds": 0.0, "blob": b"",
           "digest": "", "node": ""}
    try:
        out["node"] = _enter(request, "build")
        builder, _ = _pair(request)
        _inner_fault(builder, request.get("fault"))
        r = builder.build(workload, [Schedule.from_json(request["schedule"])])[0]
        out.update(status=r.status, artifact=r.artifact, error=r.error, seconds=r.seconds)
        shipper = _shipper(workload.target)
        if r.status == "ok" and shipper is not None and r.artifact != EXTERN_ARTIFACT:
            out["blob"], out["digest"] = shipper.export(r.artifact)
    except Exception as e:  # noqa: BLE001 - a failed candidate is data
        out.update(status="build_error", error=f"{type(e).__name__}: {_first_line(e)}")
    out["exec_seconds"] = time.perf_counter() - t0
    return out


def _measure_task(request: dict, workload: Workload, blob: bytes) -> dict:
    t0 = time.perf_counter()
    out = {"status": "run_error", "samples": [], "error": "", "run_seconds": 0.0, "node": ""}
    try:
        node = out["node"] = _enter(request, "measure")
        builder, runner = _pair(request)
        schedule = Schedule.from_json(request["schedule"])
        artifact = request["artifact"]
        if artifact == DEFERRED_ARTIFACT:  # no shipper: built here, where it runs
            build = builder.build(workload, [schedule])[0]
            out["build_seconds"] = build.seconds
        else:
            if artifact != EXTERN_ARTIFACT:
                _shipper(workload.target).install(artifact, blob, request["digest"])
            build = BuildResult(schedule, "ok", artifact, "", request.get("build_seconds", 0.0))
        _inner_fault(runner, request.get("fault"))
        r = runner.run(workload, [build])[0]
        samples = list(r.samples)
        skew = (request.get("skew") or {}).get(node)
        if skew and samples:  # test hook: a node whose clock (or machine) is off
            samples = [s * skew for s in samples]
        out.update(status=r.status, samples=samples, error=r.error, run_seconds=r.run_seconds)
    except Exception as e:  # noqa: BLE001 - a failed candidate is data
        out.update(status="run_error", error=f"{type(e).__name__}: {_first_line(e)}")
    out["exec_seconds"] = time.perf_counter() - t0
    return out
