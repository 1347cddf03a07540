"""Worker processes of tilefx's own: what the builder pool and the runner start.

Two things the standard ``spawn`` context gets wrong for a library:

- **It re-runs the user's script.** A spawned child re-imports the parent's
  ``__main__`` module (as ``__mp_main__``) so that functions defined there can be
  unpickled. A script without ``if __name__ == "__main__":`` that calls
  ``tilefx.compile(model, tune=N)`` then runs its whole body again in every worker
  (it did: four times, then "could not tune"). Our workers only ever run functions
  of ``tilefx`` itself, so they need nothing from ``__main__``: processes of this
  context leave it out of the data a child prepares from.
- **Children outlive a killed parent.** After ``kill -9`` of a tuning run its
  builder worker (~480 MB) kept running, and with it the resource tracker (which
  waits for every holder of its pipe to exit). Our children ask the kernel to
  kill them when their parent dies (``PR_SET_PDEATHSIG``, Linux) and exit at
  once if the parent is already gone; elsewhere they still exit on EOF of their
  pipe or when the pool shuts down.

``PR_SET_PDEATHSIG`` fires when the *thread* that started the child ends: a
tuning session used from a short-lived thread loses its workers with it, and the
builder and runner then start new ones (they restart dead children anyway).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing.context as mp_context
import os
import signal
import sys
from multiprocessing import spawn
from typing import Any, Callable

log = logging.getLogger("tilefx.autotune")

PREFIX = "tilefx-"  # names of our processes; what the preparation filter looks for
_PR_SET_PDEATHSIG = 1


class WorkerProcess(mp_context.SpawnProcess):
    """A spawn process that needs no ``__main__`` and dies with its parent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.name.startswith(PREFIX):
            self.name = PREFIX + self.name
        self._tilefx_parent = os.getpid()  # pickled to the child with the process object

    def run(self) -> None:
        die_with_parent(self._tilefx_parent)
        super().run()


class WorkerContext(mp_context.SpawnContext):
    Process = WorkerProcess


def die_with_parent(parent_pid: int) -> None:
    """In a child: be killed when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError) as e:  # no prctl: the pipes' EOF still ends us
            log.debug("PR_SET_PDEATHSIG unavailable: %s", e)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _without_main(original: Callable[[str], dict]) -> Callable[[str], dict]:
    def get_preparation_data(name: str) -> dict:
        data = original(name)
        if str(name).startswith(PREFIX):  # only our processes: others keep the usual behaviour
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data
    get_preparation_data.tilefx_filter = True  # type: ignore[attr-defined]
    return get_preparation_data


def worker_context() -> WorkerContext:
    """The multiprocessing context for tilefx's builder pool and runner children."""
    # spawn's Popen asks this module-level function for what the child prepares from;
    # wrapped once, it leaves __main__ out for processes named PREFIX* and no others
    if not getattr(spawn.get_preparation_data, "tilefx_filter", False):
        spawn.get_preparation_data = _without_main(spawn.get_preparation_data)
    return WorkerContext()


def serve(conn: Any, handle: Callable[[tuple], Any], on_error: Callable[[Exception], Any]) -> None:
    """A child's loop: answer each request on ``conn`` with ``handle(msg)`` (or, when that
    raises, ``on_error(e)``) until the parent closes the pipe."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        try:
            reply = handle(msg)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            reply = on_error(e)
        conn.send(reply)
