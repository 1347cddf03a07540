"""The tuning database: API semantics, durability under kill -9, concurrent
writer processes, corrupt/foreign files moved aside, JSONL round trip.

The API cases that take ``tuning_db_url`` run on both backends: a SQLite file and a
database on a throwaway PostgreSQL server (tests/storage/pg_server.py; skipped where
PostgreSQL is not installed, except on CI). The file cases are SQLite's own."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.storage.pg_server import tuning_db_url  # noqa: F401 - fixture: both backends
from tilefx.storage.database import SCHEMA_VERSION, DatabaseError, Record, TuningDatabase

ROOT = Path(__file__).resolve().parents[2]
SCHED = [json.dumps({"tile_m": m, "vectorize": v}) for m in (16, 32, 64) for v in (4, 8)]


def _filled(path: Path | str) -> TuningDatabase:
    from tilefx.codegen.target import Target

    db = TuningDatabase(path)
    db.add_workload("w1", "kernel @k ...", "fh1")
    db.add_target("cpu-a", Target(cores=4, vector_bytes=32).to_json())
    for i, s in enumerate(SCHED):
        cid = db.add_candidate("w1", "cpu-a", s, f"fp{i % 4}")  # two pairs share code
        db.add_measurement(cid, [1e-3 * (i + 1), 1.1e-3 * (i + 1), 0.9e-3 * (i + 1)], "ok")
    bad = db.add_candidate("w1", "cpu-a", json.dumps({"tile_m": 128}), "fp-bad")
    db.add_measurement(bad, [], "build_error", "LLVM said no")
    other = db.add_candidate("w1", "cpu-b", SCHED[0], "fp0")
    db.add_measurement(other, [5e-4], "ok")
    return db


def test_default_path_is_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("TILEFX_TUNING_DB", raising=False)  # it would name another default
    with TuningDatabase() as db:
        assert db.path == tmp_path / "c" / "tuning.db"
        assert db.count() == {"workloads": 0, "candidates": 0, "measurements": 0}
    conn = sqlite3.connect(tmp_path / "c" / "tuning.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_add_and_query(tuning_db_url):  # noqa: F811
    db = _filled(tuning_db_url("t.db"))
    db.add_workload("w1", "other text", "fh-other")  # idempotent: the first one stays
    assert db.workload("w1") == ("kernel @k ...", "fh1")
    # same schedule written differently, same fingerprint: the same candidate
    cid = db.add_candidate("w1", "cpu-a", SCHED[0], "fp0")
    assert cid == db.add_candidate("w1", "cpu-a", ' {"vectorize":4, "tile_m":16} ', "fp0")
    best = db.best("w1", "cpu-a")
    assert isinstance(best, Record) and best.ok and best.median == pytest.approx(1e-3)
    assert best.schedule.as_dict() == {"tile_m": 16, "vectorize": 4}
    assert db.best("w1", "cpu-b").median == pytest.approx(5e-4)
    assert db.best("w1", "cpu-c") is None and db.best("nope", "cpu-a") is None
    # fp1 was measured for schedules 1 and 5: the faster one is returned
    hit = db.lookup_fingerprint("w1", "cpu-a", "fp1")
    assert hit.fingerprint == "fp1" and hit.median == pytest.approx(2e-3)
    failed = db.lookup_fingerprint("w1", "cpu-a", "fp-bad")
    assert failed.status == "build_error" and failed.error == "LLVM said no" and failed.median is None
    assert db.lookup_fingerprint("w1", "cpu-b", "fp3") is None
    assert len(db.records()) == 8 and len(db.records("w1", "cpu-a")) == 7
    assert len(db.records(target_key="cpu-b")) == 1 and db.records("w2") == []
    assert [r.status for r in db.records()].count("ok") == 7
    text = db.summary()
    assert "1 workloads, 8 candidates, 8 measurements" in text and "1 build_error, 7 ok" in text
    assert "w1 on cpu-a: best 1.0000 ms of 6 measured" in text
    db.close()


def test_targets_are_remembered(tuning_db_url):  # noqa: F811
    from tilefx.codegen.target import Target

    db = TuningDatabase(tuning_db_url("t.db"))
    target = Target(cores=8, vector_bytes=64, mcpu="skylake-avx512")
    db.add_target(target.key(), target.to_json())
    db.add_target(target.key(), Target().to_json())  # idempotent: the first one stays
    assert Target.from_json(db.target_json(target.key())) == target
    assert db.target_json("cuda-sm_90") is None


def test_older_file_without_targets_table_gains_it(tmp_path):
    path = tmp_path / "t.db"
    _filled(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE targets")
    conn.commit()
    conn.close()
    db = TuningDatabase(path)
    assert len(db.records()) == 8 and db.target_json("cpu-a") is None
    db.add_target("cpu-a", "{}")
    assert _aside(path) == []


def test_bad_arguments_are_reported(tuning_db_url):  # noqa: F811
    db = TuningDatabase(tuning_db_url("t.db"))
    cid = db.add_candidate("w", "t", "{}", "fp")
    with pytest.raises(ValueError, match="status 'fine'"):
        db.add_measurement(cid, [1.0], "fine")
    with pytest.raises(ValueError, match="needs latency samples"):
        db.add_measurement(cid, [], "ok")
    with pytest.raises(ValueError, match="not JSON"):
        db.add_candidate("w", "t", "tile=3", "fp")
    db.add_measurement(cid, [2.0], "timeout", "killed after 10 s")  # samples optional otherwise
    assert db.records()[0].status == "timeout"


def test_jsonl_round_trip(tmp_path, tuning_db_url):  # noqa: F811
    db = _filled(tuning_db_url("a.db"))
    assert db.export_jsonl(tmp_path / "x.jsonl") == 8
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines[:2]] == ["workload", "target"]
    assert len(lines) == 10
    fresh = TuningDatabase(tuning_db_url("b.db"))
    assert fresh.import_jsonl(tmp_path / "x.jsonl") == 8
    assert fresh.import_jsonl(tmp_path / "x.jsonl") == 0  # merging twice adds nothing
    assert [r.to_json() for r in fresh.records()] == [r.to_json() for r in db.records()]
    assert fresh.best("w1", "cpu-a").to_json() == db.best("w1", "cpu-a").to_json()
    assert fresh.workload("w1") == db.workload("w1")
    assert fresh.target_json("cpu-a") == db.target_json("cpu-a") is not None
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{\"type\": \"nonsense\"}\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a tuning record"):
        fresh.import_jsonl(tmp_path / "bad.jsonl")


def _aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name
                  and not p.name.endswith(("-wal", "-shm")))


def test_garbage_file_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "tuning.db"
    garbage = b"\x00not a database at all\xff" * 200
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.database"):
        db = TuningDatabase(path)
    assert "not a tilefx tuning database" in caplog.text and "SQLite header" in caplog.text
    (moved,) = _aside(path)
    assert moved.read_bytes() == garbage  # kept intact, never overwritten
    cid = db.add_candidate("w", "t", "{}", "fp")
    db.add_measurement(cid, [1.0], "ok")
    assert db.count()["measurements"] == 1


def test_sqlite_file_of_another_app_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "tuning.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    other.execute("INSERT INTO contacts VALUES ('ada', '123')")
    other.commit()
    other.close()
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.database"):
        db = TuningDatabase(path)
    assert "another application" in caplog.text
    (moved,) = _aside(path)
    assert sqlite3.connect(moved).execute("SELECT * FROM contacts").fetchall() == [("ada", "123")]
    assert db.count() == {"workloads": 0, "candidates": 0, "measurements": 0}


def test_truncated_database_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "tuning.db"
    _filled(path).close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xde\xad" * 3000)  # a valid header, then rubbish
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.database"):
        db = TuningDatabase(path)
    assert "not a tilefx tuning database" in caplog.text
    assert len(_aside(path)) == 1 and db.records() == []


def test_a_damaged_data_page_is_found_at_open_and_moved_aside(tmp_path, caplog):
    """Page 1 (the header and schema) intact, a table page overwritten: SQLite opens it
    happily and fails only on the query that reads the page, as a raw DatabaseError."""
    path = tmp_path / "tuning.db"
    db = _filled(path)
    for i in range(400):  # enough rows that the tables span several pages
        cid = db.add_candidate("w1", "cpu-a", json.dumps({"tile_m": i}), f"fp-many-{i}")
        db.add_measurement(cid, [1e-3], "ok")
    db.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 4 * page
    data[2 * page:3 * page] = b"\xa5" * page  # the third page: a table page, not the schema
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.database"):
        fresh = TuningDatabase(path)
    assert "quick_check" in caplog.text and "moved to" in caplog.text
    assert len(_aside(path)) == 1 and fresh.records() == []  # usable, empty, the old one kept


def test_a_cache_dir_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatabaseError, match="is a file, not a folder; point TILEFX_CACHE_DIR"):
        TuningDatabase()


def test_newer_schema_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "tuning.db"
    _filled(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this tilefx"):
        TuningDatabase(path)
    assert _aside(path) == []


def test_empty_file_becomes_a_database(tmp_path, caplog):
    path = tmp_path / "tuning.db"
    path.touch()
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.database"):
        TuningDatabase(path).add_workload("w", "ir", "fh")
    assert caplog.text == "" and TuningDatabase(path).workload("w") == ("ir", "fh")


WRITER = textwrap.dedent("""
    import sys
    from tilefx.storage.database import TuningDatabase
    path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = TuningDatabase(path)
    db.add_workload("w", "ir", "fh")
    for i in range(n):
        cid = db.add_candidate("w", "t", '{"i": %d}' % (i % 7), "fp%d" % (i % 7))
        db.add_measurement(cid, [i * 1e-6 + 1e-6], "ok", name)
        print(i + 1, flush=True)   # printed only after the commit returned
""")


def _writer(path: Path, name: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_killed_writer_keeps_every_committed_measurement(tmp_path):
    path = tmp_path / "tuning.db"
    proc = _writer(path, "victim", 1_000_000)
    done = 0
    deadline = time.time() + 30
    while done < 150 and time.time() < deadline:
        done = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert done >= 150
    db = TuningDatabase(path)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = db.count()["measurements"]
    assert n >= done  # everything acknowledged is there (maybe one more)
    assert db.count()["candidates"] == 7 and db.best("w", "t").median == pytest.approx(1e-6)
    assert _aside(path) == []
    cid = db.add_candidate("w", "t", '{"i": 0}', "fp0")  # and it keeps working
    db.add_measurement(cid, [1.0], "ok")
    assert db.count()["measurements"] == n + 1


def test_concurrent_writer_processes(tmp_path):
    path = tmp_path / "tuning.db"  # all start on a missing file: creation races too
    procs = [_writer(path, f"p{k}", 120) for k in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.split()[-1] == "120"
    db = TuningDatabase(path)
    assert db.count() == {"workloads": 1, "candidates": 7, "measurements": 360}
    by_writer = {}
    for r in db.records():
        by_writer[r.error] = by_writer.get(r.error, 0) + 1
    assert by_writer == {"p0": 120, "p1": 120, "p2": 120}
    assert _aside(path) == []


def test_concurrent_writers_find_the_same_garbage_file(tmp_path):
    path = tmp_path / "tuning.db"
    garbage = b"definitely not sqlite" * 500
    path.write_bytes(garbage)
    procs = [_writer(path, f"p{k}", 60) for k in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.split()[-1] == "60"
    (moved,) = _aside(path)  # moved aside once, by one of them
    assert moved.read_bytes() == garbage
    db = TuningDatabase(path)
    assert db.count()["measurements"] == 180  # nobody moved the fresh database away


def _forked_child(db: TuningDatabase) -> None:
    cid = db.add_candidate("w", "t", '{"child": 1}', "fp-child")
    db.add_measurement(cid, [3e-6], "ok")


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_database_object_survives_fork(tmp_path):
    db = TuningDatabase(tmp_path / "tuning.db")
    db.add_workload("w", "ir", "fh")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_forked_child, args=(db,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    cid = db.add_candidate("w", "t", '{"parent": 1}', "fp-parent")  # parent's connection intact
    db.add_measurement(cid, [4e-6], "ok")
    assert {r.fingerprint for r in db.records()} == {"fp-child", "fp-parent"}


def test_locked_database_is_an_error_not_corruption(tmp_path, monkeypatch):
    import tilefx.storage.database as database

    path = tmp_path / "tuning.db"
    _filled(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. a stuck process holding the write lock
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 200)
    try:
        with pytest.raises(DatabaseError, match="cannot open the tuning database"):
            TuningDatabase(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _aside(path) == []
    assert len(TuningDatabase(path).records()) == 8


def test_threads_share_one_database_object(tuning_db_url):  # noqa: F811
    import threading

    db = TuningDatabase(tuning_db_url("tuning.db"))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                cid = db.add_candidate("w", "t", json.dumps({"i": i % 5}), f"fp{i % 5}")
                db.add_measurement(cid, [1e-6 * (k + 1)], "ok", f"thread{k}")
                db.lookup_fingerprint("w", "t", f"fp{i % 5}")
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.count() == {"workloads": 0, "candidates": 5, "measurements": 160}
    assert db.best("w", "t").error == "thread0"


def test_a_busy_journal_switch_is_tried_again_until_the_busy_timeout():
    """Two processes opening a new file at once: SQLite can answer the journal switch with
    "database is locked" at once, its busy handler not waiting; the open waits and retries."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from tilefx.storage.db_connect import _journal_wal

    class Conn:  # answers busy ``fails`` times, then "wal"
        def __init__(self, fails: int, error: Exception) -> None:
            self.fails, self.error, self.calls = fails, error, 0

        def exec_driver_sql(self, sql: str):
            self.calls += 1
            if self.calls <= self.fails:
                raise OperationalError(sql, None, self.error)
            return type("R", (), {"scalar": lambda _self: "wal"})()

    locked = sqlite3.OperationalError("database is locked")
    conn = Conn(3, locked)
    assert _journal_wal(conn, busy_timeout_ms=5000) == "wal" and conn.calls == 4
    with pytest.raises(OperationalError):  # past the busy timeout: the error stands
        _journal_wal(Conn(10**6, locked), busy_timeout_ms=50)
    other = Conn(1, sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(OperationalError):  # not busy: raised at once
        _journal_wal(other, busy_timeout_ms=5000)
    assert other.calls == 1
