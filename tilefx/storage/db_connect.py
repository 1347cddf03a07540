"""Where a tuning database lives and how it is opened: a path or URL in, a SQLAlchemy
connection to a database with the current schema out (used by ``database.py``).

    tuning.db, sqlite:///tuning.db        a SQLite file (the default, one per machine)
    postgresql://user@host:5432/tilefx    a PostgreSQL server (also postgresql+psycopg://),
                                          shared by a team or a cluster

SQLite: the file is opened in autocommit mode (each statement commits at once, so a killed
process loses nothing acknowledged) with WAL, ``busy_timeout`` and foreign keys; its header
is checked (``application_id``, ``user_version``, ``quick_check``) inside ``BEGIN
IMMEDIATE``, so of several processes opening a new file one creates the tables. A file that
is not our database is moved aside under a lock file (``db_file.py``). One connection per
``TuningDatabase`` object (``NullPool``): the file checks run at every open, as before.

PostgreSQL: one engine per URL and process, with a connection pool (``pool_pre_ping``: a
connection the server dropped is replaced, not handed out), autocommit, and
``synchronous_commit=off`` (SQLite's durability: see ``_new_postgres_engine``). The schema is
checked or created once per engine, in a transaction holding an advisory lock, so several
machines starting on an empty database create it once. psycopg is imported only here, only
when a ``postgresql`` URL is opened. A password never appears in a message (``redact``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from tilefx.storage import db_schema
from tilefx.storage.db_file import (LockFile, foreign_header, is_busy, is_corruption, move_aside,
                                    sqlite_error)
from tilefx.storage.db_schema import APPLICATION_ID, SCHEMA_VERSION

log = logging.getLogger("tilefx.storage.database")

_PG_DRIVERS = ("postgresql", "postgres", "postgresql+psycopg")
_CONNECT_TIMEOUT_S = 10  # an unreachable server fails a compile's open in seconds, not minutes


class DatabaseError(RuntimeError):
    """The tuning database cannot be used (unreachable, made by a newer tilefx, ...)."""


class _NotOurs(Exception):
    """The file is readable SQLite but not a tilefx tuning database."""


@dataclass(frozen=True)
class Location:
    """Where a tuning database is: ``dialect`` ``"sqlite"`` (``path``) or ``"postgresql"``."""

    dialect: str
    url: URL             # with the password: pass it to SQLAlchemy, never print it
    path: Path | None    # the SQLite file; None for a server
    shown: str = ""      # as the user wrote it, password hidden: what messages say

    def __str__(self) -> str:
        return self.shown or (str(self.path) if self.path is not None else redact(self.url))


def redact(url: URL | str | Path) -> str:
    """``url`` with its password replaced by ``***``: what messages and logs show."""
    if not isinstance(url, URL):
        url = os.fspath(url)
        if "://" not in url:
            return url
        try:
            url = make_url(url)
        except ArgumentError:
            return "(an unreadable database URL)"
    return url.render_as_string(hide_password=True)


def _scrub(text: str, url: URL) -> str:
    # a driver's message may quote what it was given; the password must not reach a log
    return text.replace(url.password, "***") if url.password else text


def parse(location: str | Path) -> Location:
    """A path, ``sqlite:///path`` or ``postgresql://...``; anything else is a clear error."""
    text = os.fspath(location)
    if "://" not in text:
        return Location("sqlite", URL.create("sqlite+pysqlite", database=text), Path(text))
    try:
        url = make_url(text)
    except ArgumentError as e:
        raise DatabaseError(f"tuning database URL {redact(text)!r} is not a URL ({e}); give a "
                            "path, sqlite:///path or postgresql://user@host:port/db") from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise DatabaseError(f"tuning database {redact(url)}: an in-memory database keeps "
                                "nothing; give a file, sqlite:///path/tuning.db")
        return Location("sqlite", url.set(drivername="sqlite+pysqlite"), Path(url.database),
                        redact(url))
    if url.drivername in _PG_DRIVERS:
        if not url.database:
            raise DatabaseError(f"tuning database URL {redact(url)} names no database; "
                                "write postgresql://user@host:port/db")
        return Location("postgresql", url.set(drivername="postgresql+psycopg"), None, redact(url))
    raise DatabaseError(f"tuning database URL {redact(url)}: tilefx keeps records in SQLite "
                        "(a path or sqlite:///path) or PostgreSQL (postgresql://user@host:port/db"
                        f"), not {url.drivername!r}")


# -- SQLite ------------------------------------------------------------------------------------

def open_sqlite(path: Path, busy_timeout_ms: int) -> tuple[Engine, Connection]:
    """An autocommit connection to the checked (created, upgraded) tuning database file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DatabaseError(
            f"cannot create the tuning database {path}: {path.parent} or a folder above it "
            "is a file, not a folder; point TILEFX_CACHE_DIR (or the database path) at a "
            "folder") from None
    opened = _try_open_sqlite(path, busy_timeout_ms)
    if isinstance(opened, str):
        # judge again and move aside under a lock file, so that of several processes finding
        # the same bad file one moves it, and none moves the fresh database
        with LockFile(path.with_name(path.name + ".lock")):
            opened = _try_open_sqlite(path, busy_timeout_ms)
            if isinstance(opened, str):
                move_aside(path, opened)
                opened = _open_sqlite_checked(path, busy_timeout_ms)
    return opened


def _try_open_sqlite(path: Path, busy_timeout_ms: int) -> tuple[Engine, Connection] | str:
    """The open database; or why the file is not a usable tuning database."""
    problem = foreign_header(path)
    if problem is not None:
        return problem
    try:
        return _open_sqlite_checked(path, busy_timeout_ms)
    except _NotOurs as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - only SQLite's own errors are judged here
        error = sqlite_error(e)
        if error is None:
            raise
        if not is_corruption(error):  # locked, read-only, disk full: not the file's fault
            raise DatabaseError(
                f"cannot open the tuning database {path}: {error}. Check the folder's "
                "permissions and free space, or point TILEFX_CACHE_DIR elsewhere") from e
        return f"SQLite cannot read it ({error})"


def _open_sqlite_checked(path: Path, busy_timeout_ms: int) -> tuple[Engine, Connection]:
    # AUTOCOMMIT: the driver runs with isolation_level=None, every statement commits at once
    engine = create_engine(URL.create("sqlite+pysqlite", database=str(path)), poolclass=NullPool,
                           isolation_level="AUTOCOMMIT",
                           connect_args={"timeout": busy_timeout_ms / 1000,
                                         "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:  # every connection, reconnects too
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # WAL + NORMAL: a commit survives a killed process; only a power loss may drop the last few
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    conn = None
    try:
        conn = engine.connect()
        mode = _journal_wal(conn, busy_timeout_ms)
        if str(mode).lower() != "wal":
            log.warning("tuning database %s: WAL journal unavailable (got %s); concurrent "
                        "tuners will wait for each other", path, mode)
        # BEGIN IMMEDIATE: two processes creating the file at once see each other's schema
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _check_or_create_sqlite(conn, path)
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
    except BaseException:
        if conn is not None:
            conn.close()
        engine.dispose()
        raise
    return engine, conn


def _journal_wal(conn: Connection, busy_timeout_ms: int) -> Any:
    """``PRAGMA journal_mode = WAL``, tried again while SQLite says busy, up to the busy timeout.
    Two processes opening a new file at once: the one that is not switching the journal can get
    "database is locked" at once, without SQLite's busy handler waiting (seen once in CI's
    two-writer test)."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            return conn.exec_driver_sql("PRAGMA journal_mode = WAL").scalar()
        except DBAPIError as e:
            error = sqlite_error(e)
            if error is None or not is_busy(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _check_or_create_sqlite(conn: Connection, path: Path) -> None:
    app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
    version = conn.exec_driver_sql("PRAGMA user_version").scalar()
    tables = set(inspect(conn).get_table_names())
    if app_id == 0 and version == 0 and not tables:  # a new (empty) file: ours to fill
        db_schema.create_missing(conn)
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    if app_id != APPLICATION_ID:
        raise _NotOurs(f"it is an SQLite file of another application (application_id "
                       f"{app_id:#x}, tables {sorted(tables)})")
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"tuning database {path} has schema version {version}, newer than this tilefx "
            f"understands ({SCHEMA_VERSION}); upgrade tilefx or point TILEFX_CACHE_DIR at "
            "another folder")
    missing = db_schema._REQUIRED - tables
    if version < 1 or missing:
        raise _NotOurs(f"schema version {version} with tables {sorted(missing)} missing")
    # a bad data page (the schema page intact) would only surface mid-run as a raw
    # DatabaseError; SQLite's quick check reads every page once, here
    problems = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise _NotOurs(f"SQLite's quick_check finds it damaged: {'; '.join(problems)[:300]}")
    if db_schema._TABLES - tables:  # made by an older tilefx: tables are only ever added
        db_schema.create_missing(conn)
    if version < SCHEMA_VERSION:
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


# -- PostgreSQL --------------------------------------------------------------------------------

_ENGINES: dict[tuple[int, str], Engine] = {}  # (pid, URL): a forked child makes its own
_ENGINES_LOCK = threading.Lock()


def postgres_engine(location: Location) -> Engine:
    """This process's pooled engine for ``location``, its schema checked (once)."""
    key = (os.getpid(), location.url.render_as_string(hide_password=False))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _new_postgres_engine(location)
            try:
                with connect(engine, location) as conn:
                    _check_or_create_postgres(conn, location)
            except BaseException:
                engine.dispose()
                raise
            _ENGINES[key] = engine  # only once its schema is known good
        return engine


def _new_postgres_engine(location: Location) -> Engine:
    query = location.url.query
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    if "application_name" not in query:
        connect_args["application_name"] = "tilefx"  # what a DBA sees in pg_stat_activity
    if "options" not in query:
        # the promise SQLite's WAL + NORMAL makes: a commit survives a killed client (and
        # a killed tuner loses nothing), a server crash may drop the last fraction of a
        # second; a commit then takes no WAL flush (measured: 3.6 ms -> 0.4 ms). A URL's
        # own ?options=-csynchronous_commit%3Don keeps the server's full durability
        connect_args["options"] = "-c synchronous_commit=off"
    try:
        return create_engine(location.url, pool_pre_ping=True, pool_size=4, max_overflow=8,
                             isolation_level="AUTOCOMMIT", connect_args=connect_args)
    except ImportError as e:  # SQLAlchemy imports the driver here
        raise DatabaseError(
            f"the tuning database {location} is a PostgreSQL URL, and that needs psycopg "
            f"({e}); pip install 'tilefx[postgres]' or unset TILEFX_TUNING_DB") from None


def connect(engine: Engine, location: Location) -> Connection:
    """A pooled connection; a server that cannot be reached is a clear error."""
    try:
        return engine.connect()
    except DBAPIError as e:
        reason = " ".join(str(e.orig).split())  # libpq's message, on one line
        raise DatabaseError(
            f"cannot connect to the tuning database {location}: {_scrub(reason, location.url)}; "
            "check the URL or unset TILEFX_TUNING_DB") from None


def _check_or_create_postgres(conn: Connection, location: Location) -> None:
    meta = db_schema.meta
    conn.exec_driver_sql("BEGIN")
    try:
        # one process at a time checks or creates the schema (DDL is transactional here)
        conn.execute(select(func.pg_advisory_xact_lock(APPLICATION_ID, 0)))
        tables = set(inspect(conn).get_table_names())
        if meta.name in tables:
            row = conn.execute(select(meta.c.value).where(meta.c.name == "schema_version")).first()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"tuning database {location} has schema version {version}, newer than this "
                    f"tilefx understands ({SCHEMA_VERSION}); upgrade tilefx or point "
                    "TILEFX_TUNING_DB at another database")
        else:
            ours = sorted(db_schema._TABLES & tables)
            if ours:  # never write into tables someone else made
                raise DatabaseError(
                    f"the database {location} has tables named like tilefx's ({', '.join(ours)}) "
                    f"but no {meta.name} table, so tilefx did not make them; point "
                    "TILEFX_TUNING_DB at an empty database")
            meta.create(conn)
            version = 0
        if version < SCHEMA_VERSION or db_schema._TABLES - tables:
            db_schema.create_missing(conn)  # tables are only ever added: every version upgrades so
            stmt = postgresql.insert(meta).values(name="schema_version", value=str(SCHEMA_VERSION))
            conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.name],
                                                    set_={"value": stmt.excluded.value}))
        conn.exec_driver_sql("COMMIT")
    except BaseException:
        try:
            conn.exec_driver_sql("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection itself failed: report the first error
            pass
        raise


def dispose_engines() -> None:
    """Close this process's pooled PostgreSQL connections (a later open reconnects)."""
    with _ENGINES_LOCK:
        for key in [k for k in _ENGINES if k[0] == os.getpid()]:
            _ENGINES.pop(key).dispose()
