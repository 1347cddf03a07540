"""Run a test script the way a GPU machine without TVM would: a fresh Python process with a
bare environment (the cache in ``tmp_path``), whose script sets ``TRITON_INTERPRET=1`` and
blocks ``import tvm`` itself. The script prints ``OK`` at its end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TILEFX_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
