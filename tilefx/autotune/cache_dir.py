"""Where tilefx keeps its per-user state: ``$TILEFX_CACHE_DIR``, else the
platform's user cache folder (``$XDG_CACHE_HOME/tilefx`` or ``~/.cache/tilefx``
on Linux, ``~/Library/Caches/tilefx`` on macOS, ``%LOCALAPPDATA%\\tilefx`` on
Windows).

The compiled-kernel cache (``codegen/tvm/cache.py``) lives in ``kernels/``
below it and the tuning database in ``tuning.db``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_root() -> Path:
    """The tilefx cache folder (not created here)."""
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
