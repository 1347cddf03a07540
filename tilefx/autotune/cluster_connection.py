"""The driver's connection to a Ray cluster, and what it knows of the cluster's nodes.

``RayCluster`` connects to ``address``, or with ``"ray"`` attaches to the Ray this
process (or this machine, ``ray start``) already runs, else starts a local one.
Measurements need the custom resource ``tilefx-measure:<hash of target.key()>``
(``measure_resource``), 1 per node: only nodes whose hardware is the target's
measure, one measurement per device at a time. A local Ray started here gets it;
a node of a real cluster is started with ``ray start --address=HEAD
--resources='{"tilefx-measure:<hash>": 1}'`` (the error for a cluster without such
a node prints the exact line). One connection per process is shared by every
``RayCluster`` of it; the last user of a connection this process made shuts Ray down.

``ClusterStats`` (filled by ``cluster_dispatch``) and ``RayCluster.summary`` say
where the time went, for the tuner's summary line.

Ray is imported inside the functions here, never at module level (see ``cluster.py``).
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tilefx.codegen.measure import Workload

RESOURCE_PREFIX = "tilefx-measure:"
LOCAL_SPECS = ("ray", "local", "auto")


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
                               f"{first_line(e)})") from None
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


def first_line(e: BaseException) -> str:
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
