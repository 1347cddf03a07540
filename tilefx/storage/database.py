"""The tuning database: every measurement the tuner ever made, in SQLite.

    db = TuningDatabase()                       # $TILEFX_CACHE_DIR/tuning.db
    db.add_workload(key, ir_text, functional_hash)
    cid = db.add_candidate(key, target.key(), schedule.to_json(), fingerprint)
    db.add_measurement(cid, [1.2e-5, 1.1e-5], "ok")
    db.best(key, target.key())                  # -> Record with the lowest median

Tables: ``workloads`` (a kernel's computation: key, IR text, functional
hash), ``candidates`` (one schedule of a workload on a target, with the
fingerprint of the code it generates and the cost-model features version),
``measurements`` (latency samples or the error of one run) and ``targets``
(target key -> target JSON, so the cost model can rebuild a ``Target``).
Three small tables make a warm recompile cheap: ``kernel_keys`` (hash of a
kernel's IR text -> its workload key, so the functional hash, a reference run,
is computed once), ``tuning_state`` (how many trials a workload was tuned
with and whether its space ran out, so a finished search is not resumed),
``graph_decisions`` (the whole-graph check of tuned vs default schedules) and
``pass_decisions`` (a pass's measured choice for one layer, e.g. sparsity's
dense vs sparse, as JSON that the pass writes and validates itself).
``kernel_checks`` holds what the compile's check of each newly built kernel
found (its outputs against the reference): a kernel checked once is not
checked again, and one that computed a wrong result is marked bad under its
workload, target, schedule and tuner fingerprint, so neither a compile nor
the tuner (``best``, ``bad_fingerprints``) ever picks it again.
It is the memory of the tuner (``lookup_fingerprint``: code already
measured is never measured again) and the training set of the cost model
(``records``).

Durability and concurrency: WAL journal, ``busy_timeout``, and autocommit —
every call is its own transaction, so a tuning run killed at any point
(Ctrl-C, ``kill -9``) keeps every measurement it made, and several tuning
processes can write at once. A file that is not our database (garbage, a
truncated file, another application's SQLite) is never overwritten: it is
moved aside as ``tuning.db.corrupt-<timestamp>-<pid>`` with a warning and a
fresh database is made in its place (under the lock file ``tuning.db.lock``,
so of several processes that find the same bad file exactly one moves it).
A database made by a newer tilefx (higher ``PRAGMA user_version``) is
refused with an error instead, and a locked or unwritable one is reported,
never taken for corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tilefx.storage import db_jsonl
from tilefx.storage.db_file import LockFile, foreign_header, is_corruption, move_aside
from tilefx.storage.db_schema import (  # noqa: F401 - the schema's names, re-exported
    _SCHEMA, _TABLES, APPLICATION_ID, CHECK_STATUSES, SCHEMA_VERSION, STATUSES, _create_schema)

log = logging.getLogger("tilefx.storage.database")

BUSY_TIMEOUT_MS = 60_000

# connections inherited through fork, kept referenced so they are never closed in the child
_INHERITED: list[sqlite3.Connection] = []


class DatabaseError(RuntimeError):
    """The tuning database cannot be used (e.g. made by a newer tilefx)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One measurement together with its candidate (schedule, fingerprint, target)."""

    workload_key: str
    target_key: str
    schedule_json: str
    fingerprint: str
    samples: tuple[float, ...]
    median: float | None          # seconds; None when the run produced no samples
    status: str                   # one of STATUSES
    error: str = ""
    features_version: int = 0
    created: float = 0.0          # unix time of the measurement
    candidate_id: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def schedule(self) -> Any:
        from tilefx.codegen.schedule import Schedule

        return Schedule.from_json(self.schedule_json)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        del d["candidate_id"]  # local to one database file
        return d


@dataclass(frozen=True, slots=True)
class KernelCheck:
    """What the check of one built kernel found (a row of ``kernel_checks``).

    ``code_key`` names the code that ran (the backend's fingerprint of the built
    kernel); ``build_key`` what was asked for (kernel, schedule or default, tilefx
    sources), so a compile can skip building a kernel known bad. The workload key,
    schedule and tuner fingerprint are filled for bad kernels: what the tuner skips.
    """

    code_key: str
    target_key: str
    status: str                   # one of CHECK_STATUSES
    build_key: str = ""
    workload_key: str = ""
    schedule_json: str = ""
    fingerprint: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_CHECK_COLUMNS = ("code_key, target_key, status, build_key, workload_key, schedule_json, "
                  "fingerprint, error")

# What ``lookup_fingerprint`` returns: the same row shape (a measurement and its candidate).
Measurement = Record


def _median(samples: Sequence[float]) -> float | None:
    return float(statistics.median(samples)) if samples else None


# candidates whose built kernel failed the compile's check, by fingerprint or by schedule
_NOT_BAD = """AND NOT EXISTS (SELECT 1 FROM kernel_checks k WHERE k.status != 'ok'
    AND k.workload_key = c.workload_key AND k.target_key = c.target_key
    AND (k.fingerprint = c.fingerprint OR k.schedule_json = c.schedule_json)) """

_RECORD_SELECT = """
SELECT c.workload_key, c.target_key, c.schedule_json, c.fingerprint, m.samples, m.median,
       m.status, m.error, c.features_version, m.created, c.id
FROM measurements m JOIN candidates c ON c.id = m.candidate_id
"""


def _record(row: Sequence[Any]) -> Record:
    (workload, target, schedule, fp, samples, median, status, error, fv, created, cid) = row
    return Record(workload, target, schedule, fp, tuple(float(s) for s in json.loads(samples)),
                  median, status, error, int(fv), float(created), int(cid))


class TuningDatabase:
    """SQLite tuning records; safe to share between threads and between processes.

    A ``TuningDatabase`` object may also cross a ``fork``: the child opens its
    own connection on first use (a SQLite connection must never be shared
    between processes).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        from tilefx.settings import tuning_db_path

        self.path = Path(path) if path is not None else tuning_db_path()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._connect()

    # -- opening, validating, moving a bad file aside ---------------------------------------

    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                return self._conn
            self._pid = os.getpid()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise DatabaseError(
                    f"cannot create the tuning database {self.path}: {self.path.parent} or a "
                    "folder above it is a file, not a folder; point TILEFX_CACHE_DIR (or the "
                    "database path) at a folder") from None
            problem = self._try_open()
            if problem is not None:
                # judge again and move aside under a lock file, so that of several processes
                # finding the same bad file one moves it, and none moves the fresh database
                with LockFile(self.path.with_name(self.path.name + ".lock")):
                    problem = self._try_open()
                    if problem is not None:
                        move_aside(self.path, problem)
                        self._conn = self._open_checked()
            return self._conn

    def _try_open(self) -> str | None:
        """Open ``self._conn``; or say why the file is not a usable tuning database."""
        problem = foreign_header(self.path)
        if problem is not None:
            return problem
        try:
            self._conn = self._open_checked()
            return None
        except _NotOurs as e:
            return str(e)
        except sqlite3.DatabaseError as e:
            if not is_corruption(e):  # locked, read-only, disk full: not the file's fault
                raise DatabaseError(
                    f"cannot open the tuning database {self.path}: {e}. Check the folder's "
                    "permissions and free space, or point TILEFX_CACHE_DIR elsewhere") from e
            return f"SQLite cannot read it ({e})"

    def _open_checked(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, every statement commits at once
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("tuning database %s: WAL journal unavailable (got %s); concurrent "
                            "tuners will wait for each other", self.path, mode)
            # WAL + NORMAL: a commit survives a killed process; only a power loss may drop the last few
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            # BEGIN IMMEDIATE: two processes creating the file at once see each other's schema
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_or_create(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_or_create(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id == 0 and version == 0 and not tables:  # a new (empty) file: ours to fill
            _create_schema(conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if app_id != APPLICATION_ID:
            raise _NotOurs(f"it is an SQLite file of another application (application_id "
                           f"{app_id:#x}, tables {sorted(tables)})")
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"tuning database {self.path} has schema version {version}, newer than this "
                f"tilefx understands ({SCHEMA_VERSION}); upgrade tilefx or point "
                "TILEFX_CACHE_DIR at another folder")
        missing = {"workloads", "candidates", "measurements"} - tables
        if version < 1 or missing:
            raise _NotOurs(f"schema version {version} with tables {sorted(missing)} missing")
        # a bad data page (the schema page intact) would only surface mid-run as a raw
        # sqlite3.DatabaseError; SQLite's quick check reads every page once, here
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise _NotOurs(f"SQLite's quick_check finds it damaged: {'; '.join(problems)[:300]}")
        if _TABLES - tables:  # made by an older tilefx: tables are only ever added
            _create_schema(conn)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            # a forked child: the parent's connection must not be used or closed here
            # (closing may checkpoint the WAL under the parent); keep it alive, unused
            _INHERITED.append(self._conn)
            self._conn = None
        return self._conn if self._conn is not None else self._connect()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    # -- writing ----------------------------------------------------------------------------

    def add_workload(self, key: str, ir_text: str, functional_hash: str) -> None:
        """Record a workload (idempotent: a known key keeps its first IR text)."""
        self._execute("INSERT OR IGNORE INTO workloads (key, ir_text, functional_hash, created) "
                      "VALUES (?, ?, ?, ?)", (key, ir_text, functional_hash, time.time()))

    def add_target(self, target_key: str, target_json: str) -> None:
        """Remember what a target key stands for (cores, vector width, caches: cost-model
        features); idempotent."""
        self._execute("INSERT OR IGNORE INTO targets (key, target_json) VALUES (?, ?)",
                      (target_key, _canonical_json(target_json)))

    def add_candidate(self, workload_key: str, target_key: str, schedule_json: str,
                      fingerprint: str, features_version: int = 0) -> int:
        """The id of this candidate, inserting it if new (idempotent)."""
        schedule_json = _canonical_json(schedule_json)
        key = (workload_key, target_key, schedule_json, fingerprint, int(features_version))
        with self._lock:
            self._execute("INSERT OR IGNORE INTO candidates (workload_key, target_key, "
                          "schedule_json, fingerprint, features_version, created) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (*key, time.time()))
            row = self._execute("SELECT id FROM candidates WHERE workload_key = ? AND "
                                "target_key = ? AND schedule_json = ? AND fingerprint = ? AND "
                                "features_version = ?", key).fetchone()
        return int(row[0])

    def add_measurement(self, candidate_id: int, samples: Sequence[float], status: str,
                        error: str = "", *, created: float | None = None) -> None:
        """Store one run of a candidate; committed before this returns."""
        if status not in STATUSES:
            raise ValueError(f"measurement status {status!r} is not one of {STATUSES}")
        samples = [float(s) for s in samples]
        if status == "ok" and not samples:
            raise ValueError(f"candidate {candidate_id}: an 'ok' measurement needs latency samples")
        self._execute("INSERT INTO measurements (candidate_id, samples, median, status, error, "
                      "created) VALUES (?, ?, ?, ?, ?, ?)",
                      (int(candidate_id), json.dumps(samples), _median(samples), status,
                       str(error), time.time() if created is None else created))

    def remember_workload_key(self, ir_hash: str, workload_key: str) -> None:
        self._execute("INSERT OR REPLACE INTO kernel_keys (ir_hash, workload_key) VALUES (?, ?)",
                      (ir_hash, workload_key))

    def set_tuning_state(self, workload_key: str, target_key: str, trials: int,
                         exhausted: bool) -> None:
        """Record that the workload was searched with ``trials`` (kept if larger before) and
        whether its space ran out of new code."""
        self._execute(
            "INSERT INTO tuning_state (workload_key, target_key, trials, exhausted) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (workload_key, target_key) DO UPDATE SET "
            "trials = MAX(trials, excluded.trials), exhausted = MAX(exhausted, excluded.exhausted)",
            (workload_key, target_key, int(trials), int(bool(exhausted))))

    def set_graph_decision(self, graph_key: str, target_key: str, keep_tuned: bool,
                           tuned_ms: float, default_ms: float) -> None:
        self._execute("INSERT OR REPLACE INTO graph_decisions (graph_key, target_key, keep_tuned, "
                      "tuned_ms, default_ms, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (graph_key, target_key, int(keep_tuned), tuned_ms, default_ms, time.time()))

    def set_pass_decision(self, kind: str, key: str, target_key: str, payload: str) -> None:
        """Store (or replace) a pass's decision for one layer: ``payload`` is JSON the pass
        reads back and validates itself (``kind`` names the pass, e.g. ``"sparsity"``)."""
        self._execute("INSERT OR REPLACE INTO pass_decisions (kind, key, target_key, json, created) "
                      "VALUES (?, ?, ?, ?, ?)", (kind, key, target_key, str(payload), time.time()))

    def set_kernel_check(self, check: KernelCheck) -> None:
        """Store (or replace) what the check of one built kernel found."""
        if check.status not in CHECK_STATUSES:
            raise ValueError(f"kernel check status {check.status!r} is not one of {CHECK_STATUSES}")
        schedule = _canonical_json(check.schedule_json) if check.schedule_json else ""
        self._execute(f"INSERT OR REPLACE INTO kernel_checks ({_CHECK_COLUMNS}, created) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (check.code_key, check.target_key, check.status, check.build_key,
                       check.workload_key, schedule, check.fingerprint, check.error, time.time()))

    # -- reading ----------------------------------------------------------------------------

    def kernel_check(self, code_key: str, target_key: str) -> KernelCheck | None:
        """The check of this built code on this target, or None (never checked)."""
        row = self._execute(f"SELECT {_CHECK_COLUMNS} FROM kernel_checks WHERE code_key = ? "
                            "AND target_key = ?", (code_key, target_key)).fetchone()
        return KernelCheck(*row) if row else None

    def failed_build(self, build_key: str, target_key: str) -> KernelCheck | None:
        """A failed check of a kernel built for ``build_key`` (the latest), or None."""
        row = self._execute(f"SELECT {_CHECK_COLUMNS} FROM kernel_checks WHERE build_key = ? "
                            "AND target_key = ? AND status != 'ok' ORDER BY created DESC LIMIT 1",
                            (build_key, target_key)).fetchone()
        return KernelCheck(*row) if row else None

    def bad_fingerprints(self, workload_key: str, target_key: str) -> set[str]:
        """Tuner fingerprints of this workload whose built kernel failed the compile's check."""
        return {r[0] for r in self._execute(
            "SELECT fingerprint FROM kernel_checks WHERE workload_key = ? AND target_key = ? "
            "AND status != 'ok' AND fingerprint != ''", (workload_key, target_key))}

    def pass_decision(self, kind: str, key: str, target_key: str) -> str | None:
        """The JSON text stored by ``set_pass_decision``, or None."""
        row = self._execute("SELECT json FROM pass_decisions WHERE kind = ? AND key = ? AND "
                            "target_key = ?", (kind, key, target_key)).fetchone()
        return row[0] if row else None

    def known_workload_key(self, ir_hash: str) -> str | None:
        """The workload key remembered for a kernel with this IR hash, or None."""
        row = self._execute("SELECT workload_key FROM kernel_keys WHERE ir_hash = ?",
                            (ir_hash,)).fetchone()
        return row[0] if row else None

    def tuning_state(self, workload_key: str, target_key: str) -> tuple[int, bool] | None:
        """(largest trials searched with, space exhausted) of a workload, or None."""
        row = self._execute("SELECT trials, exhausted FROM tuning_state WHERE workload_key = ? "
                            "AND target_key = ?", (workload_key, target_key)).fetchone()
        return (int(row[0]), bool(row[1])) if row else None

    def target_keys(self) -> list[str]:
        """Every target with measured candidates, sorted."""
        return sorted({r[0] for r in self._execute("SELECT DISTINCT target_key FROM candidates")})

    def graph_decision(self, graph_key: str, target_key: str) -> tuple[bool, float, float] | None:
        """(keep tuned, tuned ms, default ms) of an earlier whole-graph check, or None."""
        row = self._execute("SELECT keep_tuned, tuned_ms, default_ms FROM graph_decisions "
                            "WHERE graph_key = ? AND target_key = ?",
                            (graph_key, target_key)).fetchone()
        return (bool(row[0]), row[1], row[2]) if row else None

    def lookup_schedule(self, workload_key: str, target_key: str,
                        schedule_json: str) -> Record | None:
        """The fastest ok measurement of this schedule (no fingerprint needed), else the latest."""
        rows = self._execute(
            _RECORD_SELECT + "WHERE c.workload_key = ? AND c.target_key = ? AND c.schedule_json = ? "
            "ORDER BY (m.status = 'ok') DESC, CASE WHEN m.status = 'ok' THEN m.median END ASC, "
            "m.id DESC LIMIT 1", (workload_key, target_key, _canonical_json(schedule_json))
        ).fetchall()
        return _record(rows[0]) if rows else None

    def lookup_fingerprint(self, workload_key: str, target_key: str,
                           fingerprint: str) -> Record | None:
        """A measurement of code with this fingerprint: the fastest ok one, else the latest."""
        rows = self._execute(
            _RECORD_SELECT + "WHERE c.workload_key = ? AND c.target_key = ? AND c.fingerprint = ? "
            "ORDER BY (m.status = 'ok') DESC, CASE WHEN m.status = 'ok' THEN m.median END ASC, "
            "m.id DESC LIMIT 1", (workload_key, target_key, fingerprint)).fetchall()
        return _record(rows[0]) if rows else None

    def best(self, workload_key: str, target_key: str) -> Record | None:
        """The ok measurement with the lowest median latency, or None; a candidate whose
        built kernel failed the compile's check (``kernel_checks``) is never returned."""
        rows = self._execute(
            _RECORD_SELECT + "WHERE c.workload_key = ? AND c.target_key = ? AND m.status = 'ok' "
            + _NOT_BAD + "ORDER BY m.median ASC, m.id ASC LIMIT 1",
            (workload_key, target_key)).fetchall()
        return _record(rows[0]) if rows else None

    def records(self, workload_key: str | None = None, target_key: str | None = None) -> list[Record]:
        """Every measurement (all statuses), oldest first, optionally filtered."""
        where, params = [], []
        if workload_key is not None:
            where.append("c.workload_key = ?")
            params.append(workload_key)
        if target_key is not None:
            where.append("c.target_key = ?")
            params.append(target_key)
        sql = _RECORD_SELECT + ("WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.id"
        return [_record(r) for r in self._execute(sql, params).fetchall()]

    def workload(self, key: str) -> tuple[str, str] | None:
        """(IR text, functional hash) of a workload, or None."""
        row = self._execute("SELECT ir_text, functional_hash FROM workloads WHERE key = ?",
                            (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def target_json(self, target_key: str) -> str | None:
        """The JSON of a target added with ``add_target`` (``Target.from_json`` reads it)."""
        row = self._execute("SELECT target_json FROM targets WHERE key = ?", (target_key,)).fetchone()
        return row[0] if row else None

    def workload_keys(self) -> list[str]:
        return [r[0] for r in self._execute("SELECT key FROM workloads ORDER BY key")]

    def count(self) -> dict[str, int]:
        """Row counts of workloads, candidates and measurements (for reports and tests)."""
        return {t: int(self._execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("workloads", "candidates", "measurements")}

    def summary(self) -> str:
        """A few lines for people: counts, statuses, and the best latency per workload."""
        counts = self.count()
        lines = [f"tuning database {self.path}: {counts['workloads']} workloads, "
                 f"{counts['candidates']} candidates, {counts['measurements']} measurements"]
        statuses = self._execute("SELECT status, COUNT(*) FROM measurements GROUP BY status "
                                 "ORDER BY status").fetchall()
        if statuses:
            lines.append("  " + ", ".join(f"{n} {status}" for status, n in statuses))
        for workload, target, median, n in self._execute(
                "SELECT c.workload_key, c.target_key, MIN(m.median), COUNT(*) FROM measurements m "
                "JOIN candidates c ON c.id = m.candidate_id WHERE m.status = 'ok' "
                "GROUP BY c.workload_key, c.target_key ORDER BY c.workload_key, c.target_key"):
            lines.append(f"  {workload} on {target}: best {median * 1e3:.4f} ms of {n} measured")
        return "\n".join(lines)

    # -- JSONL export / import (db_jsonl.py) -------------------------------------------------

    def export_jsonl(self, path: str | Path) -> int:
        """Write workloads, targets, then measurements, one JSON object a line; returns the record count."""
        return db_jsonl.export_jsonl(self, path)

    def import_jsonl(self, path: str | Path) -> int:
        """Merge an exported file; records already present are skipped. Returns records added."""
        return db_jsonl.import_jsonl(self, path)

    def has_measurement(self, candidate_id: int, samples_json: str, status: str,
                        created: float) -> bool:
        """Whether this exact measurement is stored (an import skips it)."""
        return self._execute("SELECT 1 FROM measurements WHERE candidate_id = ? AND samples = ? "
                             "AND status = ? AND created = ?",
                             (candidate_id, samples_json, status, created)).fetchone() is not None

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> TuningDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.path)!r})"


class _NotOurs(Exception):
    """The file is readable SQLite but not a tilefx tuning database."""


def _canonical_json(text: str) -> str:
    # the same schedule written with other spacing or key order is the same candidate
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError as e:
        raise ValueError(f"schedule_json is not JSON ({e}): {text[:80]!r}") from e
