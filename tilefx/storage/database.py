"""The tuning database: every measurement the tuner ever made, in SQLite or PostgreSQL.

    db = TuningDatabase()                       # $TILEFX_TUNING_DB, else $TILEFX_CACHE_DIR/tuning.db
    db = TuningDatabase("postgresql://me@dbhost:5432/tilefx")   # shared by a team or cluster
    db.add_workload(key, ir_text, functional_hash)
    cid = db.add_candidate(key, target.key(), schedule.to_json(), fingerprint)
    db.add_measurement(cid, [1.2e-5, 1.1e-5], "ok")
    db.best(key, target.key())                  # -> Record with the lowest median

Tables (``db_schema.py``): ``workloads`` (a kernel's computation: key, IR text, functional
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

Every query is written once, in SQLAlchemy Core, for both dialects; an upsert is the
dialect's ``insert(...).on_conflict_do_nothing/update``. Opening (``db_connect.py``) is
where they differ.

Durability and concurrency: autocommit — every call is its own transaction, so a tuning
run killed at any point (Ctrl-C, ``kill -9``) keeps every measurement it made, and several
tuning processes (or machines, on PostgreSQL) can write at once; unique keys make each
workload, target and candidate one row however many write it. SQLite adds WAL and
``busy_timeout``; a file that is not our database (garbage, a truncated file, another
application's SQLite) is never overwritten: it is moved aside as
``tuning.db.corrupt-<timestamp>-<pid>`` with a warning and a fresh database is made in its
place (under the lock file ``tuning.db.lock``, so of several processes that find the same
bad file exactly one moves it). A database made by a newer tilefx (a higher schema version)
is refused with an error instead, and a locked, unwritable or unreachable one is reported,
never taken for corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import case, exists, func, literal, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.exc import DBAPIError

from tilefx.codegen.schedule import Schedule
from tilefx.settings import tuning_db
from tilefx.storage import db_jsonl, db_schema
from tilefx.storage.db_connect import (  # noqa: F401 - DatabaseError: part of this module's API
    DatabaseError, connect, open_sqlite, parse, postgres_engine)
from tilefx.storage.db_schema import (  # noqa: F401 - the schema's names, re-exported
    _TABLES, APPLICATION_ID, CHECK_STATUSES, SCHEMA_VERSION, STATUSES, candidates, graph_decisions,
    kernel_checks, kernel_keys, measurements, pass_decisions, targets, tuning_state, workloads)

log = logging.getLogger("tilefx.storage.database")

BUSY_TIMEOUT_MS = 60_000  # SQLite: how long a writer waits for another's lock

# connections inherited through fork, kept referenced so they are never closed in the child
_INHERITED: list[Any] = []

_BEGIN = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "BEGIN"}  # IMMEDIATE: take the write lock now
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # each has on_conflict_*


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
        return Schedule.from_json(self.schedule_json)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        del d["candidate_id"]  # local to one database
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


# What ``lookup_fingerprint`` returns: the same row shape (a measurement and its candidate).
Measurement = Record

_k = kernel_checks
_c = candidates
_m = measurements
_CHECK_COLUMNS = (_k.c.code_key, _k.c.target_key, _k.c.status, _k.c.build_key, _k.c.workload_key,
                  _k.c.schedule_json, _k.c.fingerprint, _k.c.error)
_CHECK_SELECT = select(*_CHECK_COLUMNS)


def _median(samples: Sequence[float]) -> float | None:
    return float(statistics.median(samples)) if samples else None


def _not_bad() -> Any:
    """No failed kernel check marks the candidate, by fingerprint or by schedule."""
    k = kernel_checks.alias("k")
    return ~exists().where(k.c.status != "ok", k.c.workload_key == _c.c.workload_key,
                           k.c.target_key == _c.c.target_key,
                           or_(k.c.fingerprint == _c.c.fingerprint,
                               k.c.schedule_json == _c.c.schedule_json))


# a measurement with its candidate: the columns of ``Record`` in order
_RECORD_SELECT = select(_c.c.workload_key, _c.c.target_key, _c.c.schedule_json, _c.c.fingerprint,
                        _m.c.samples, _m.c.median, _m.c.status, _m.c.error, _c.c.features_version,
                        _m.c.created, _c.c.id).select_from(_m.join(_c, _c.c.id == _m.c.candidate_id))
# the fastest ok measurement first, else the latest one
_OK_FASTEST_ELSE_LATEST = (case((_m.c.status == "ok", 0), else_=1),
                           case((_m.c.status == "ok", _m.c.median)), _m.c.id.desc())


def _record(row: Sequence[Any]) -> Record:
    (workload, target, schedule, fp, samples, median, status, error, fv, created, cid) = row
    return Record(workload, target, schedule, fp, tuple(float(s) for s in json.loads(samples)),
                  median, status, error, int(fv), float(created), int(cid))


class TuningDatabase:
    """Tuning records; safe to share between threads and between processes.

    ``path``: a file path, ``sqlite:///path`` or ``postgresql://user@host:port/db``; None
    is ``settings.tuning_db()`` ($TILEFX_TUNING_DB, else the cache folder's ``tuning.db``).
    A ``TuningDatabase`` object may also cross a ``fork``: the child opens its own
    connection on first use (a connection must never be shared between processes), and
    it pickles as its location (a worker that unpickles it opens the same database).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.location = parse(path if path is not None else tuning_db())
        self.dialect = self.location.dialect   # "sqlite" or "postgresql"
        self.path = self.location.path         # the SQLite file; None for a server
        self._lock = threading.RLock()
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._pid = os.getpid()
        self._insert = _INSERT[self.dialect]
        self._connect()

    # -- connecting; every statement runs through _run ---------------------------------------

    def _connect(self) -> Connection:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                return self._conn
            self._pid = os.getpid()
            if self.dialect == "sqlite":
                # BUSY_TIMEOUT_MS read now: tests shorten it
                self._engine, self._conn = open_sqlite(self.path, BUSY_TIMEOUT_MS)
            else:
                self._engine = postgres_engine(self.location)
                self._conn = connect(self._engine, self.location)
            return self._conn

    @property
    def _db(self) -> Connection:
        if self._conn is not None and self._pid != os.getpid():
            # a forked child: the parent's connection must not be used or closed here
            # (closing may checkpoint the WAL under the parent, or end the parent's server
            # session); keep it alive, unused
            _INHERITED.append((self._engine, self._conn))
            self._conn = None
        return self._conn if self._conn is not None else self._connect()

    def _run(self, statement: Any, take: Callable[[Result], Any] = lambda r: None, *,
             unless: Any = None) -> Any:
        """Execute ``statement`` (it commits at once) and ``take`` from its result, both under
        the lock. A server connection found dead is replaced and the statement run once
        more: the upserts and selects here are safe to repeat, and an insert that is not
        names ``unless``, the select that finds its row if the first try committed it."""
        with self._lock:
            try:
                return take(self._db.execute(statement))
            except DBAPIError as e:
                if not e.connection_invalidated or self.dialect != "postgresql":
                    raise
                self._drop_connection()
                log.warning("tuning database %s: the server dropped the connection (%s); "
                            "reconnecting", self.location, " ".join(str(e.orig).split()))
            if unless is not None and self._db.execute(unless).first() is not None:
                return None
            return take(self._db.execute(statement))

    def _all(self, statement: Any) -> list[Any]:
        return self._run(statement, lambda r: r.all())

    def _first(self, statement: Any) -> Any:
        return self._run(statement, lambda r: r.first())

    def _scalar(self, statement: Any) -> Any:
        return self._run(statement, lambda r: r.scalar())

    def _execute(self, sql: str | Any, params: dict[str, Any] | None = None) -> Result:
        """Run SQL text (identical on both dialects, named ``:params``) or a Core statement;
        the rows come back buffered. For tests and one-off maintenance: tilefx's own
        queries are the methods below."""
        statement = text(sql) if isinstance(sql, str) else sql
        if params:
            statement = statement.bindparams(**params)
        return self._run(statement, lambda r: r.freeze()() if r.returns_rows else r)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """Several statements as one (SQLite: holding the write lock from the start)."""
        with self._lock:
            conn = self._db
            conn.exec_driver_sql(_BEGIN[self.dialect])
            try:
                yield conn
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                try:
                    conn.exec_driver_sql("ROLLBACK")
                except Exception:  # noqa: BLE001 - a dead connection: report the first error
                    self._drop_connection()
                raise

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # an invalidated connection is discarded by the pool
            except Exception:  # noqa: BLE001
                pass

    def _upsert(self, table: Any, values: dict[str, Any], keys: Sequence[str],
                replace: Sequence[str] = ()) -> Any:
        """INSERT; on a key already present keep the row (no ``replace``) or set the
        ``replace`` columns to the new values."""
        stmt = self._insert(table).values(**values)
        if not replace:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={col: stmt.excluded[col] for col in replace})

    # -- writing ----------------------------------------------------------------------------

    def add_workload(self, key: str, ir_text: str, functional_hash: str) -> None:
        """Record a workload (idempotent: a known key keeps its first IR text)."""
        self._run(self._upsert(workloads, dict(key=key, ir_text=ir_text, created=time.time(),
                                               functional_hash=functional_hash), ["key"]))

    def add_target(self, target_key: str, target_json: str) -> None:
        """Remember what a target key stands for (cores, vector width, caches: cost-model
        features); idempotent."""
        self._run(self._upsert(targets, dict(key=target_key,
                                             target_json=_canonical_json(target_json)), ["key"]))

    def add_candidate(self, workload_key: str, target_key: str, schedule_json: str,
                      fingerprint: str, features_version: int = 0) -> int:
        """The id of this candidate, inserting it if new (idempotent, also between processes:
        the unique key makes a second insert a no-op, and the select then finds the first)."""
        key = dict(workload_key=workload_key, target_key=target_key, fingerprint=fingerprint,
                   schedule_json=_canonical_json(schedule_json),
                   features_version=int(features_version))
        stmt = self._upsert(candidates, {**key, "created": time.time()}, list(key))
        returning = self._engine.dialect.insert_returning  # SQLite >= 3.35, PostgreSQL
        with self._lock:
            row = self._first(stmt.returning(_c.c.id)) if returning else self._run(stmt)
            if row is None:  # it was there already (or no RETURNING): one select finds it
                row = self._first(select(_c.c.id).where(*(_c.c[k] == v for k, v in key.items())))
        return int(row[0])

    def add_measurement(self, candidate_id: int, samples: Sequence[float], status: str,
                        error: str = "", *, created: float | None = None) -> None:
        """Store one run of a candidate; committed before this returns."""
        created = time.time() if created is None else created  # fixed: a retry finds this row
        self._run(self._measurement_insert(candidate_id, samples, status, error, created),
                  unless=self._same_measurement(candidate_id, json.dumps([float(s) for s in samples]),
                                                status, created))

    def _measurement_insert(self, candidate_id: int, samples: Sequence[float], status: str,
                            error: str, created: float) -> Any:
        if status not in STATUSES:
            raise ValueError(f"measurement status {status!r} is not one of {STATUSES}")
        samples = [float(s) for s in samples]
        if status == "ok" and not samples:
            raise ValueError(f"candidate {candidate_id}: an 'ok' measurement needs latency samples")
        return measurements.insert().values(
            candidate_id=int(candidate_id), samples=json.dumps(samples), median=_median(samples),
            status=status, error=str(error), created=created)

    def add_measurement_once(self, candidate_id: int, samples: Sequence[float], status: str,
                             error: str = "", *, created: float) -> bool:
        """Store this measurement unless the same one (candidate, samples, status, time) is
        there; True if added. Check and insert are one step for every process (SQLite: the
        write lock; PostgreSQL: an advisory lock on the candidate), so two importers of one
        file add it once."""
        stmt = self._measurement_insert(candidate_id, samples, status, error, created)
        samples_json = json.dumps([float(s) for s in samples])
        with self._transaction() as conn:
            if self.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(int(candidate_id))))
            if conn.execute(self._same_measurement(candidate_id, samples_json, status,
                                                   float(created))).first() is not None:
                return False
            conn.execute(stmt)
        return True

    def remember_workload_key(self, ir_hash: str, workload_key: str) -> None:
        self._run(self._upsert(kernel_keys, dict(ir_hash=ir_hash, workload_key=workload_key),
                               ["ir_hash"], replace=["workload_key"]))

    def set_tuning_state(self, workload_key: str, target_key: str, trials: int,
                         exhausted: bool) -> None:
        """Record that the workload was searched with ``trials`` (kept if larger before) and
        whether its space ran out of new code."""
        t = tuning_state
        stmt = self._insert(t).values(workload_key=workload_key, target_key=target_key,
                                      trials=int(trials), exhausted=int(bool(exhausted)))
        new = stmt.excluded
        # the larger of old and new, in one statement (CASE: SQLite's MAX(a, b) is GREATEST elsewhere)
        self._run(stmt.on_conflict_do_update(
            index_elements=["workload_key", "target_key"],
            set_={"trials": case((new.trials > t.c.trials, new.trials), else_=t.c.trials),
                  "exhausted": case((new.exhausted > t.c.exhausted, new.exhausted),
                                    else_=t.c.exhausted)}))

    def set_graph_decision(self, graph_key: str, target_key: str, keep_tuned: bool,
                           tuned_ms: float, default_ms: float) -> None:
        self._run(self._upsert(
            graph_decisions, dict(graph_key=graph_key, target_key=target_key,
                                  keep_tuned=int(keep_tuned), tuned_ms=tuned_ms,
                                  default_ms=default_ms, created=time.time()),
            ["graph_key", "target_key"], replace=["keep_tuned", "tuned_ms", "default_ms", "created"]))

    def set_pass_decision(self, kind: str, key: str, target_key: str, payload: str) -> None:
        """Store (or replace) a pass's decision for one layer: ``payload`` is JSON the pass
        reads back and validates itself (``kind`` names the pass, e.g. ``"sparsity"``)."""
        self._run(self._upsert(
            pass_decisions, dict(kind=kind, key=key, target_key=target_key, json=str(payload),
                                 created=time.time()),
            ["kind", "key", "target_key"], replace=["json", "created"]))

    def set_kernel_check(self, check: KernelCheck) -> None:
        """Store (or replace) what the check of one built kernel found."""
        if check.status not in CHECK_STATUSES:
            raise ValueError(f"kernel check status {check.status!r} is not one of {CHECK_STATUSES}")
        schedule = _canonical_json(check.schedule_json) if check.schedule_json else ""
        values = dict(code_key=check.code_key, target_key=check.target_key, status=check.status,
                      build_key=check.build_key, workload_key=check.workload_key,
                      schedule_json=schedule, fingerprint=check.fingerprint, error=check.error,
                      created=time.time())
        keys = ["code_key", "target_key"]
        self._run(self._upsert(kernel_checks, values, keys,
                               replace=[k for k in values if k not in keys]))

    # -- reading ----------------------------------------------------------------------------

    def kernel_check(self, code_key: str, target_key: str) -> KernelCheck | None:
        """The check of this built code on this target, or None (never checked)."""
        row = self._first(_CHECK_SELECT.where(_k.c.code_key == code_key,
                                              _k.c.target_key == target_key))
        return KernelCheck(*row) if row else None

    def failed_build(self, build_key: str, target_key: str) -> KernelCheck | None:
        """A failed check of a kernel built for ``build_key`` (the latest), or None."""
        row = self._first(_CHECK_SELECT.where(_k.c.build_key == build_key,
                                              _k.c.target_key == target_key, _k.c.status != "ok")
                          .order_by(_k.c.created.desc()).limit(1))
        return KernelCheck(*row) if row else None

    def bad_fingerprints(self, workload_key: str, target_key: str) -> set[str]:
        """Tuner fingerprints of this workload whose built kernel failed the compile's check."""
        return {r[0] for r in self._all(select(_k.c.fingerprint).where(
            _k.c.workload_key == workload_key, _k.c.target_key == target_key,
            _k.c.status != "ok", _k.c.fingerprint != ""))}

    def pass_decision(self, kind: str, key: str, target_key: str) -> str | None:
        """The JSON text stored by ``set_pass_decision``, or None."""
        p = pass_decisions
        return self._scalar(select(p.c.json).where(p.c.kind == kind, p.c.key == key,
                                                   p.c.target_key == target_key))

    def known_workload_key(self, ir_hash: str) -> str | None:
        """The workload key remembered for a kernel with this IR hash, or None."""
        return self._scalar(select(kernel_keys.c.workload_key)
                            .where(kernel_keys.c.ir_hash == ir_hash))

    def tuning_state(self, workload_key: str, target_key: str) -> tuple[int, bool] | None:
        """(largest trials searched with, space exhausted) of a workload, or None."""
        t = tuning_state
        row = self._first(select(t.c.trials, t.c.exhausted).where(
            t.c.workload_key == workload_key, t.c.target_key == target_key))
        return (int(row[0]), bool(row[1])) if row else None

    def target_keys(self) -> list[str]:
        """Every target with measured candidates, sorted."""
        return sorted({r[0] for r in self._all(select(_c.c.target_key).distinct())})

    def graph_decision(self, graph_key: str, target_key: str) -> tuple[bool, float, float] | None:
        """(keep tuned, tuned ms, default ms) of an earlier whole-graph check, or None."""
        g = graph_decisions
        row = self._first(select(g.c.keep_tuned, g.c.tuned_ms, g.c.default_ms).where(
            g.c.graph_key == graph_key, g.c.target_key == target_key))
        return (bool(row[0]), row[1], row[2]) if row else None

    def lookup_schedule(self, workload_key: str, target_key: str,
                        schedule_json: str) -> Record | None:
        """The fastest ok measurement of this schedule (no fingerprint needed), else the latest."""
        row = self._first(_RECORD_SELECT.where(
            _c.c.workload_key == workload_key, _c.c.target_key == target_key,
            _c.c.schedule_json == _canonical_json(schedule_json))
            .order_by(*_OK_FASTEST_ELSE_LATEST).limit(1))
        return _record(row) if row else None

    def lookup_fingerprint(self, workload_key: str, target_key: str,
                           fingerprint: str) -> Record | None:
        """A measurement of code with this fingerprint: the fastest ok one, else the latest."""
        row = self._first(_RECORD_SELECT.where(
            _c.c.workload_key == workload_key, _c.c.target_key == target_key,
            _c.c.fingerprint == fingerprint).order_by(*_OK_FASTEST_ELSE_LATEST).limit(1))
        return _record(row) if row else None

    def best(self, workload_key: str, target_key: str) -> Record | None:
        """The ok measurement with the lowest median latency, or None; a candidate whose
        built kernel failed the compile's check (``kernel_checks``) is never returned."""
        row = self._first(_RECORD_SELECT.where(
            _c.c.workload_key == workload_key, _c.c.target_key == target_key,
            _m.c.status == "ok", _not_bad()).order_by(_m.c.median, _m.c.id).limit(1))
        return _record(row) if row else None

    def records(self, workload_key: str | None = None, target_key: str | None = None) -> list[Record]:
        """Every measurement (all statuses), oldest first, optionally filtered."""
        stmt = _RECORD_SELECT
        if workload_key is not None:
            stmt = stmt.where(_c.c.workload_key == workload_key)
        if target_key is not None:
            stmt = stmt.where(_c.c.target_key == target_key)
        return [_record(r) for r in self._all(stmt.order_by(_m.c.id))]

    def workload(self, key: str) -> tuple[str, str] | None:
        """(IR text, functional hash) of a workload, or None."""
        w = workloads
        row = self._first(select(w.c.ir_text, w.c.functional_hash).where(w.c.key == key))
        return (row[0], row[1]) if row else None

    def target_json(self, target_key: str) -> str | None:
        """The JSON of a target added with ``add_target`` (``Target.from_json`` reads it)."""
        return self._scalar(select(targets.c.target_json).where(targets.c.key == target_key))

    def workload_keys(self) -> list[str]:
        # sorted here, not by ORDER BY: a server's text collation may order otherwise
        return sorted(r[0] for r in self._all(select(workloads.c.key)))

    def count(self) -> dict[str, int]:
        """Row counts of workloads, candidates and measurements (for reports and tests)."""
        return {t.name: int(self._scalar(select(func.count()).select_from(t)))
                for t in (workloads, candidates, measurements)}

    def summary(self) -> str:
        """A few lines for people: counts, statuses, and the best latency per workload."""
        counts = self.count()
        lines = [f"tuning database {self.location}: {counts['workloads']} workloads, "
                 f"{counts['candidates']} candidates, {counts['measurements']} measurements"]
        # sorted here, not by ORDER BY: a server's text collation may order otherwise
        statuses = sorted(self._all(select(_m.c.status, func.count()).group_by(_m.c.status)))
        if statuses:
            lines.append("  " + ", ".join(f"{n} {status}" for status, n in statuses))
        for workload, target, median, n in sorted(self._all(
                select(_c.c.workload_key, _c.c.target_key, func.min(_m.c.median), func.count())
                .select_from(_m.join(_c, _c.c.id == _m.c.candidate_id)).where(_m.c.status == "ok")
                .group_by(_c.c.workload_key, _c.c.target_key))):
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
        return self._first(self._same_measurement(candidate_id, samples_json, status,
                                                   created)) is not None

    @staticmethod
    def _same_measurement(candidate_id: int, samples_json: str, status: str, created: float) -> Any:
        return select(literal(1)).where(
            _m.c.candidate_id == int(candidate_id), _m.c.samples == samples_json,
            _m.c.status == status, _m.c.created == created).limit(1)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connection (a server's goes back to the pool); a later call reopens."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
                if self.dialect == "sqlite":
                    self._engine.dispose()
            self._conn = None

    def __enter__(self) -> TuningDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __reduce__(self) -> tuple[Any, ...]:
        # a worker process gets the location (password included: it must connect) and opens it
        return (TuningDatabase, (self.location.url.render_as_string(hide_password=False)
                                 if self.path is None else str(self.path),))

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.location)!r})"


def __getattr__(name: str) -> Any:
    if name == "_SCHEMA":  # the SQLite DDL text (tests/old_database.py), built on first use
        return db_schema.sqlite_ddl()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _canonical_json(text: str) -> str:
    # the same schedule written with other spacing or key order is the same candidate
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError as e:
        raise ValueError(f"schedule_json is not JSON ({e}): {text[:80]!r}") from e
