"""Tuning's worker processes: they never run the user's script and die with it.

Both are about what a user does, so both run a real script in a real Python
process: a script without ``if __name__ == "__main__":`` that tunes, and a
tuning run killed with ``kill -9`` while its builder and runner are up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_SCRIPT = """
import os, sys, torch, tilefx
with open(os.environ["MARKER"], "a") as f:
    f.write(f"{os.getpid()}\\n")  # one line per execution of this script's body
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU()).eval()
x = torch.randn(8, 16)
compiled = tilefx.compile(model, tune=TRIALS)
y = compiled(x)
assert torch.allclose(y, model(x), atol=1e-4), "wrong result"
print(compiled.report())
"""


def _run_script(tmp_path: Path, trials: int, **popen: object) -> subprocess.Popen:
    script = tmp_path / "user_script.py"  # no main guard, on purpose
    script.write_text(textwrap.dedent(_SCRIPT).replace("TRIALS", str(trials)))
    env = dict(os.environ, MARKER=str(tmp_path / "marker"), TILEFX_CACHE_DIR=str(tmp_path / "cache"),
               TILEFX_TUNE_WORKERS="1", TVM_BIND_THREADS="0")
    return subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc: children are re-parented once it dies)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_a_script_without_a_main_guard_tunes_once(tmp_path):
    proc = _run_script(tmp_path, trials=3)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    runs = (tmp_path / "marker").read_text().split()
    assert runs == [str(proc.pid)], f"the script body ran {len(runs)} times:\n{out}"
    assert "could not tune" not in out and "tuning:" in out, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_a_tuning_run_leaves_no_process(tmp_path):
    proc = _run_script(tmp_path, trials=64, start_new_session=True)
    try:
        # wait until the builder pool and the runner are up (the script's grandchildren)
        deadline = time.monotonic() + 300
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _descendants(proc.pid)
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, f"no workers started: {proc.poll()} {proc.stdout.read() if proc.poll() is not None else ''}"
        time.sleep(1.0)  # let them get to work
        workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        left = sorted(p for p in workers if _alive(p))
        assert not left, f"processes left 5 s after kill -9: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
