"""What a tuning-database file is, below SQL: the header check that tells a foreign file
from ours, the SQLite error codes that mean "corrupt" (not "locked"), and the lock file
under which exactly one process moves a bad file aside, and the move (used by
``db_connect.py`` for SQLite databases; a server database has no file of ours).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tilefx.storage.database")

_SQLITE_MAGIC = b"SQLite format 3\x00"


def foreign_header(path: Path) -> str | None:
    """Why ``path`` is certainly not an SQLite file, or None (missing, empty or SQLite)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    if not head or head == _SQLITE_MAGIC:
        return None
    return f"it does not start with the SQLite header (first bytes {head[:8]!r})"


class LockFile:
    """An exclusive advisory lock on a side file (``flock``; a no-op where there is none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> LockFile:
        try:
            import fcntl
        except ImportError:  # Windows: the rename race this guards against is left open
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            import fcntl  # POSIX only: set where __enter__ found it

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sqlite_error(e: BaseException) -> sqlite3.DatabaseError | None:
    """The ``sqlite3`` error behind ``e`` (SQLAlchemy wraps it as ``e.orig``), or None."""
    orig = getattr(e, "orig", e)
    return orig if isinstance(orig, sqlite3.DatabaseError) else None


def is_corruption(e: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB: the file's content is bad (not a lock or I/O error)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    return not isinstance(e, sqlite3.OperationalError)


def is_busy(e: sqlite3.DatabaseError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock; trying again may work."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(e)


def move_aside(path: Path, problem: str) -> None:
    """Rename a file that is not our database (and its WAL side files) out of the way."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process moved it first
        return
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            try:
                os.replace(side, aside.with_name(aside.name + suffix))
            except OSError:
                pass
    log.warning("tuning database %s is not a tilefx tuning database: %s. It was moved to "
                "%s and a new empty database was created; delete the old file if you do not "
                "need it", path, problem, aside)
