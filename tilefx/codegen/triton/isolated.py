"""Timing Triton candidates in a child process, so a hanging or faulting one is stopped.

``CudaRunner`` checks and times candidates in the tuning process: a kernel that
never returns would hang tuning for good, and one that faults (an illegal
address) spoils the process's CUDA context for every later candidate.
``IsolatedCudaRunner`` runs the same ``CudaRunner`` in a long-lived child
(``workers.py``: spawn, never runs the user's ``__main__``, dies with its
parent). Per candidate the parent sends the schedule and waits at most
``timeout`` seconds: no answer, and the child is killed, the candidate recorded
as ``timeout`` and a fresh child started for the next one; a child that dies
makes a ``run_error``. The workload (kernel op, bindings) goes to the child
once; the child makes its reference inputs and outputs on the device itself.

The child builds each candidate from the same generated source as the
tuning process's builder (same file, same fingerprint); Triton's compile
cache, filled by the parallel compiles (``prewarm.py``), makes that a load.
With this runner the builder does not launch candidates itself
(``TritonBuilder(launch=False)``): nothing of a candidate runs in the tuning
process.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tilefx.codegen.measure import BuildResult, MeasureResult, RunsInOrder, Workload
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.workers import serve, worker_context

log = logging.getLogger("tilefx.autotune")


def _child_main(conn: Any, options: dict) -> None:
    """The child: serve ("workload", bytes) and ("run", build bytes, fault) until EOF."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from tilefx.codegen.triton.measure import CudaRunner

    fault: list[str | None] = [None]
    runner = CudaRunner(fault=lambda s: fault[0], **options)
    loaded: list[Workload] = []

    def handle(msg: tuple) -> tuple:
        if msg[0] == "workload":
            loaded[:] = [pickle.loads(msg[1])]
            runner.state.device_data(loaded[0])  # reference inputs and outputs, once
            return "ok", ""
        build, fault[0] = pickle.loads(msg[1]), msg[2]
        if fault[0] == "hang":  # test hook: a kernel that never returns
            time.sleep(3600)
        assert loaded, "no workload loaded"
        return "result", pickle.dumps(runner._run_one(loaded[0], build))

    serve(conn, handle, lambda e: ("error", f"{type(e).__name__}: {e}"[:500]))


class _Child:
    def __init__(self, options: dict) -> None:
        ctx = worker_context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, name="tilefx-cuda-runner", args=(child, options),
                                daemon=True)
        self.proc.start()
        child.close()
        self.loaded = ""

    def ask(self, msg: tuple, timeout: float) -> tuple:
        """The child's answer, or ("timeout", why) / ("died", why)."""
        try:
            self.conn.send(msg)
            if not self.conn.poll(timeout):
                return "timeout", f"no result after {timeout:.1f}s (runner killed)"
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            return "died", f"runner process died (exit code {self.proc.exitcode})"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


@dataclass
class IsolatedCudaRunner(RunsInOrder):
    """``CudaRunner``'s checks and timings in a child process; see the module docstring.

    ``fault`` is a test hook: ``fault(schedule)`` may return "raise", "wrong" (as for
    ``CudaRunner``) or "hang" (the child never answers).
    """

    timeout: float = 120.0        # per candidate: a first launch may still compile
    setup_timeout: float = 300.0  # a workload's reference outputs
    repeats: int = 10
    fault: Callable[[Schedule], str | None] | None = None
    restarts: int = 0
    _child: _Child | None = field(default=None, repr=False)

    def _run_one(self, workload: Workload, b: BuildResult) -> MeasureResult:
        if b.status != "ok":
            return MeasureResult(b.schedule, "build_error", (), b.error, b.seconds)
        t0 = time.perf_counter()
        child = self._ready(workload)
        if isinstance(child, str):
            return MeasureResult(b.schedule, "run_error", (), f"workload setup failed: {child}", b.seconds)
        fault = self.fault(b.schedule) if self.fault is not None else None
        answer = child.ask(("run", pickle.dumps(b), fault), self.timeout)
        if answer[0] == "result":
            got: MeasureResult = pickle.loads(answer[1])
            return MeasureResult(got.schedule, got.status, got.samples, got.error, b.seconds,
                                 time.perf_counter() - t0)
        status = "timeout" if answer[0] == "timeout" else "run_error"
        if answer[0] in ("timeout", "died"):
            self._restart()
        return MeasureResult(b.schedule, status, (), answer[1], b.seconds, time.perf_counter() - t0)

    def _ready(self, workload: Workload) -> _Child | str:
        """The child with ``workload`` loaded (started if needed), or why not."""
        if self._child is None or not self._child.proc.is_alive():
            self._child = _Child({"repeats": self.repeats})
        if self._child.loaded != workload.key:
            answer = self._child.ask(("workload", pickle.dumps(workload)), self.setup_timeout)
            if answer[0] != "ok":
                if answer[0] in ("timeout", "died"):
                    self._restart()
                return answer[1]
            self._child.loaded = workload.key
        return self._child

    def _restart(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None
        self.restarts += 1
        log.info("tilefx: the cuda runner process was restarted (%d so far)", self.restarts)

    def close(self) -> None:
        if self._child is not None:
            self._child.conn.close()  # EOF: the child exits
            self._child.proc.join(5)
            if self._child.proc.is_alive():
                self._child.kill()
            self._child = None
