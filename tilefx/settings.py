"""Settings from the environment: every ``TILEFX_*`` variable tilefx reads, read here.

This is the ground floor: it imports nothing from tilefx, and every layer may
ask it. A variable is read when its function is called (not at import), so a
test or a user can set one before compiling. The README's "Environment
variables" table lists the same names.

| variable | function | default |
|---|---|---|
| ``TILEFX_CACHE_DIR`` | ``cache_root()`` | the platform's user cache folder |
| ``TILEFX_TUNING_DB`` | ``tuning_db()`` | the cache folder's ``tuning.db`` (set: a path or ``postgresql://`` URL) |
| ``TILEFX_CHECK_BUILDS`` | ``check_builds()`` | on |
| ``TILEFX_RECOMPILE_LIMIT`` | ``recompile_limit()`` | 8 |
| ``TILEFX_TUNE_WORKERS`` | ``tune_workers()`` | 1 |
| ``TILEFX_COMPILE_WORKERS`` | ``compile_workers()`` | min(8, cores - 1) (Triton compiles in parallel; 0: none) |
| ``TILEFX_STRICT`` | ``strict()`` | off (dynamo backend: raise on a kernel build failure) |
| ``TILEFX_DEFAULT_SCHEDULE`` | ``default_schedule_source()`` | the backend's choice (``template``: fixed defaults; ``cost_model``: the learned model's pick) |
| ``TILEFX_CUDA_GRAPHS`` | ``cuda_graphs()`` | on (``0``: never replay CUDA graphs) |
| ``TILEFX_MCPU`` | ``forced_mcpu()`` | the host's LLVM CPU name |
| ``TILEFX_VERIFY`` | ``verify_passes()`` | off |
| ``TILEFX_PRINT_AFTER`` | ``print_after()`` | none |
| ``TILEFX_LOG`` | ``debug_log()`` | off (``debug``: the CLI logs decisions) |
| ``TRITON_INTERPRET`` | ``triton_interprets()`` | off (Triton's own: kernels run on the CPU) |

The cache folder holds the compiled-kernel cache (``kernels/``), the generated
Triton modules (``triton/``), the tuning database (``tuning.db``, unless
``TILEFX_TUNING_DB`` names another) and locally trained cost models (``cost_model/``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "off", "no")


def cache_root() -> Path:
    """The tilefx cache folder (not created here): ``$TILEFX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tilefx`` or ``~/.cache/tilefx`` on Linux, ``~/Library/Caches/tilefx``
    on macOS, ``%LOCALAPPDATA%\\tilefx`` on Windows."""
    explicit = os.environ.get("TILEFX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tilefx"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "tilefx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tilefx"


def tuning_db_path() -> Path:
    return cache_root() / "tuning.db"


def tuning_db() -> str:
    """The default tuning database: ``$TILEFX_TUNING_DB`` (a path, ``sqlite:///path``, or
    ``postgresql://user@host:port/db`` to share records across machines), else
    ``tuning_db_path()``."""
    return os.environ.get("TILEFX_TUNING_DB", "").strip() or str(tuning_db_path())


def check_builds() -> bool:
    """Whether newly built kernels are checked against the reference (``TILEFX_CHECK_BUILDS``)."""
    return _flag("TILEFX_CHECK_BUILDS", True)


def recompile_limit() -> int:
    return int(os.environ.get("TILEFX_RECOMPILE_LIMIT", "8"))


def tune_workers() -> int:
    """Builder processes of a tuning run; 0 builds in the tuning process."""
    return int(os.environ.get("TILEFX_TUNE_WORKERS", "1"))


def compile_workers() -> int:
    """Processes compiling Triton kernels side by side (ptxas and MLIR are single-threaded);
    0 compiles each in the process that launches it."""
    env = os.environ.get("TILEFX_COMPILE_WORKERS")
    if env is not None:
        return max(0, int(env))
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def strict() -> bool:
    return os.environ.get("TILEFX_STRICT") == "1"


def cuda_graphs() -> bool:
    """``TILEFX_CUDA_GRAPHS=0`` turns CUDA-graph replay off where the caller did not choose."""
    return os.environ.get("TILEFX_CUDA_GRAPHS", "1").strip() != "0"


def default_schedule_source() -> str | None:
    """Where an untuned kernel's schedule comes from: ``"template"``, ``"cost_model"``, or
    None (the backend decides)."""
    value = os.environ.get("TILEFX_DEFAULT_SCHEDULE", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("template", "cost_model"):
        raise ValueError(f"TILEFX_DEFAULT_SCHEDULE={value!r}: expected template or cost_model")
    return value


def forced_mcpu() -> str | None:
    return os.environ.get("TILEFX_MCPU") or None


def verify_passes() -> bool:
    return os.environ.get("TILEFX_VERIFY", "") not in ("", "0")


def print_after() -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get("TILEFX_PRINT_AFTER", "").split(",") if n.strip())


def debug_log() -> bool:
    return os.environ.get("TILEFX_LOG", "").lower() == "debug"


def triton_interprets() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
