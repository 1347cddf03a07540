"""What runs inside the Ray workers: one build or one measurement per task.

Each task runs the target backend's *own* builder or runner (``backend.tuning_pair``)
and returns a plain dict; it never touches the database. A Ray worker keeps its
backend builder/runner between tasks (``_WORKER``), so the runner's isolated child
process (the TVM import, the loaded workload) stays warm across candidates.

Builds travel: a backend with ``ships_builds`` (TVM: a kernel disk-cache entry)
packs a build on the node that made it (``Backend.ship``) and the measuring node
installs it into its own cache (``Backend.unship``: the digest is checked against
the received bytes first; an entry already there and verified is kept) before it
times the kernel. A backend without (Triton: its builds live in the process) is
built by the measuring task itself, on the measuring node (``DEFERRED_ARTIFACT``).

Every task first checks that its node runs the driver's tilefx version.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tilefx.autotune.cluster_connection import first_line
from tilefx.codegen.backend import Shipment
from tilefx.codegen.measure import EXTERN_ARTIFACT, BuildResult, Workload
from tilefx.codegen.schedule import Schedule
from tilefx.version import __version__

DEFERRED_ARTIFACT = "deferred"  # built by the measuring task itself (no shipping)

# task-level test hooks (a fault(schedule) hook may return them; anything else is handed
# to the backend's own builder/runner hook, e.g. "crash" or "hang" of the kernel)
TASK_EXIT_FIRST = "task-exit-first"  # the task's process exits on its first attempt
TASK_EXIT = "task-exit"              # ... on every attempt
TASK_HANG = "task-hang"              # the task never returns
TASK_HOOKS = (TASK_EXIT_FIRST, TASK_EXIT, TASK_HANG)

_WORKER: dict[Any, Any] = {}  # per Ray worker process: the backend's builder/runner, kept warm


class Refused(Exception):
    """This worker cannot take the task (another tilefx version)."""


def _enter(request: dict, role: str) -> str:
    """Checks and test hooks every task starts with; the node id."""
    import ray

    if request["version"] != __version__:
        raise Refused(f"this node runs tilefx {__version__}, the driver {request['version']}")
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


def build_task(request: dict, workload: Workload) -> dict:
    """Build one schedule; the build comes back packed (``shipment``) where it can travel."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "build_error", "artifact": "", "error": "", "seconds": 0.0,
                           "shipment": None, "node": ""}
    try:
        out["node"] = _enter(request, "build")
        builder, _ = _pair(request)
        _inner_fault(builder, request.get("fault"))
        r = builder.build(workload, [Schedule.from_json(request["schedule"])])[0]
        out.update(status=r.status, artifact=r.artifact, error=r.error, seconds=r.seconds)
        backend = workload.target.backend()
        if r.status == "ok" and backend.ships_builds and r.artifact != EXTERN_ARTIFACT:
            out["shipment"] = backend.ship(r.artifact)
    except Exception as e:  # noqa: BLE001 - a failed candidate is data
        out.update(status="build_error", error=f"{type(e).__name__}: {first_line(e)}")
    out["exec_seconds"] = time.perf_counter() - t0
    return out


def measure_task(request: dict, workload: Workload, shipment: Shipment | None) -> dict:
    """Time one build: installed from ``shipment``, or built here (``DEFERRED_ARTIFACT``)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "run_error", "samples": [], "error": "", "run_seconds": 0.0,
                           "node": ""}
    try:
        node = out["node"] = _enter(request, "measure")
        builder, runner = _pair(request)
        schedule = Schedule.from_json(request["schedule"])
        artifact = request["artifact"]
        if artifact == DEFERRED_ARTIFACT:  # cannot travel: built here, where it runs
            build = builder.build(workload, [schedule])[0]
            out["build_seconds"] = build.seconds
        else:
            if shipment is not None:
                workload.target.backend().unship(shipment)
            build = BuildResult(schedule, "ok", artifact, "", request.get("build_seconds", 0.0))
        _inner_fault(runner, request.get("fault"))
        r = runner.run(workload, [build])[0]
        samples = list(r.samples)
        skew = (request.get("skew") or {}).get(node)
        if skew and samples:  # test hook: a node whose clock (or machine) is off
            samples = [s * skew for s in samples]
        out.update(status=r.status, samples=samples, error=r.error, run_seconds=r.run_seconds)
    except Exception as e:  # noqa: BLE001 - a failed candidate is data
        out.update(status="run_error", error=f"{type(e).__name__}: {first_line(e)}")
    out["exec_seconds"] = time.perf_counter() - t0
    return out
