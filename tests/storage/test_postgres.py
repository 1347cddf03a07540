"""The tuning database on a PostgreSQL server: the same API as the SQLite file, the schema
version in ``tilefx_meta``, concurrent writer processes, JSONL between the two dialects,
a compile on a fresh machine (cache folder) that finds its kernels tuned on the server,
and the errors a user sees (an unreachable server, a password never shown).

The server is the throwaway one of ``pg_server.py`` (skipped without PostgreSQL binaries,
except on CI).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.autotune.test_database import _filled
from tests.storage.pg_server import postgres_url, tuning_db_url  # noqa: F401 - fixtures
from tilefx.storage.database import (SCHEMA_VERSION, DatabaseError, KernelCheck, Record,
                                     TuningDatabase)

ROOT = Path(__file__).resolve().parents[2]


def _fill_everything(db: TuningDatabase) -> None:
    """Every kind of row the database holds, beyond ``_filled``'s records."""
    db.remember_workload_key("irhash", "w1")
    db.set_tuning_state("w1", "cpu-a", 8, False)
    db.set_tuning_state("w1", "cpu-a", 4, True)  # trials stay the larger, exhausted turns on
    db.set_graph_decision("g", "cpu-a", True, 1.5, 2.5)
    db.set_graph_decision("g", "cpu-a", False, 3.0, 2.0)  # replaced
    db.set_pass_decision("sparsity", "layer", "cpu-a", '{"a": 1}')
    db.set_pass_decision("sparsity", "layer", "cpu-a", '{"a": 2}')  # replaced
    db.set_kernel_check(KernelCheck("ok-code", "cpu-a", "ok", "b-ok"))
    db.set_kernel_check(KernelCheck("bad-code", "cpu-a", "wrong_result", "b-bad", "w1",
                                    json.dumps({"tile_m": 32, "vectorize": 4}), "fp2", "off by 1"))


def _answers(db: TuningDatabase) -> dict:
    """What every reading method answers, ids left out (they are local to a database)."""
    def rec(r: Record | None) -> dict | None:
        return None if r is None else r.to_json() | {"created": None}

    return {
        "count": db.count(), "targets": db.target_keys(), "workloads": db.workload_keys(),
        "workload": db.workload("w1"), "target_json": db.target_json("cpu-a"),
        "records": [rec(r) for r in db.records()], "a": len(db.records("w1", "cpu-a")),
        "best": rec(db.best("w1", "cpu-a")), "best_b": rec(db.best("w1", "cpu-b")),
        "fp1": rec(db.lookup_fingerprint("w1", "cpu-a", "fp1")),
        "fp_bad": rec(db.lookup_fingerprint("w1", "cpu-a", "fp-bad")),
        "schedule": rec(db.lookup_schedule("w1", "cpu-a", '{"vectorize": 8, "tile_m": 16}')),
        "state": db.tuning_state("w1", "cpu-a"), "no_state": db.tuning_state("w1", "x"),
        "graph": db.graph_decision("g", "cpu-a"), "pass": db.pass_decision("sparsity", "layer", "cpu-a"),
        "key": db.known_workload_key("irhash"), "no_key": db.known_workload_key("nope"),
        "check": db.kernel_check("bad-code", "cpu-a"), "failed": db.failed_build("b-bad", "cpu-a"),
        "not_failed": db.failed_build("b-ok", "cpu-a"), "bad": db.bad_fingerprints("w1", "cpu-a"),
        "summary": db.summary().splitlines()[1:],
    }


def test_every_method_answers_the_same_on_both_dialects(tmp_path, postgres_url):  # noqa: F811
    lite = _filled(tmp_path / "t.db")
    pg = _filled(postgres_url)
    for db in (lite, pg):
        _fill_everything(db)
    expected = _answers(lite)
    assert _answers(pg) == expected
    # and the answers are the right ones, not just equal
    assert expected["state"] == (8, True) and expected["graph"] == (False, 3.0, 2.0)
    assert expected["pass"] == '{"a": 2}' and expected["bad"] == {"fp2"}
    assert expected["best"]["fingerprint"] == "fp0" and expected["fp1"]["median"] == pytest.approx(2e-3)
    assert expected["count"] == {"workloads": 1, "candidates": 8, "measurements": 8}
    assert pg.dialect == "postgresql" and pg.path is None and "***" not in repr(pg)
    # SQLite's durability (a killed client loses nothing; no WAL flush per commit), unless asked
    assert pg._execute("SHOW synchronous_commit").scalar() == "off"
    durable = TuningDatabase(postgres_url + "?options=-csynchronous_commit%3Don")
    assert durable._execute("SHOW synchronous_commit").scalar() == "on" and durable.count() == pg.count()
    # a candidate whose kernel failed its check is never the best, on either
    pg.set_kernel_check(KernelCheck("c0", "cpu-a", "wrong_result", "b0", "w1", "", "fp0"))
    assert pg.best("w1", "cpu-a").fingerprint not in ("fp0", "fp2")
    pg.close()
    assert pg.count()["measurements"] == 8  # a closed database reopens on use
    for db in (lite, pg):  # a worker process is handed the location and opens it
        again = pickle.loads(pickle.dumps(db))
        assert again.dialect == db.dialect and _answers(again) == _answers(db)


def test_schema_version_is_kept_in_tilefx_meta_and_a_newer_one_is_refused(postgres_url):  # noqa: F811
    from tilefx.storage.db_connect import dispose_engines

    with TuningDatabase(postgres_url) as db:
        db.add_workload("w", "ir", "fh")
        assert db._execute("SELECT value FROM tilefx_meta WHERE name = 'schema_version'"
                           ).scalar() == str(SCHEMA_VERSION)
        db._execute("UPDATE tilefx_meta SET value = :v WHERE name = 'schema_version'",
                    {"v": str(SCHEMA_VERSION + 1)})
    dispose_engines()  # as a new process would: the schema is checked once per engine
    with pytest.raises(DatabaseError, match="newer than this tilefx.*TILEFX_TUNING_DB"):
        TuningDatabase(postgres_url)


def test_an_older_server_database_gains_the_new_tables(postgres_url):  # noqa: F811
    from tilefx.storage.db_connect import dispose_engines

    with TuningDatabase(postgres_url) as db:
        db.add_workload("w", "ir", "fh")
        db._execute("DROP TABLE kernel_checks")
        db._execute("UPDATE tilefx_meta SET value = '3' WHERE name = 'schema_version'")
    dispose_engines()
    with TuningDatabase(postgres_url) as db:
        assert db.workload("w") == ("ir", "fh")  # kept
        db.set_kernel_check(KernelCheck("c", "t", "ok", "b"))
        assert db.kernel_check("c", "t").ok
        assert db._execute("SELECT value FROM tilefx_meta").scalar() == str(SCHEMA_VERSION)


def test_tables_tilefx_did_not_make_are_left_alone(postgres_url):  # noqa: F811
    import psycopg

    dsn = postgres_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE workloads (name TEXT)")
    with pytest.raises(DatabaseError, match="tilefx did not make them.*empty database"):
        TuningDatabase(postgres_url)


def _writer(url: str, name: str, jsonl: str, start, n: int) -> None:
    """A writer process: shared and own candidates, a measurement of each, an import."""
    start.wait(60)
    db = TuningDatabase(url)  # the first open of an empty database: creation races too
    db.add_workload("w", "ir", "fh")
    db.add_target("t", "{}")
    for i in range(n):
        shared = db.add_candidate("w", "t", json.dumps({"i": i}), f"fp{i}")
        own = db.add_candidate("w", "t", json.dumps({"i": i, "by": name}), f"fp{i}-{name}")
        db.add_measurement(shared, [1e-6 * (i + 1)], "ok", name)
        db.add_measurement(own, [2e-6], "ok", name)
        db.set_tuning_state("w", "t", i, False)
        db.set_pass_decision("sparsity", f"k{i % 3}", "t", json.dumps({"by": name}))
    db.import_jsonl(jsonl)  # both import the same file: each of its records once
    db.close()


def test_two_processes_write_every_row_exactly_once(tmp_path, tuning_db_url):  # noqa: F811
    """On each backend; both processes start on a database without tables."""
    url = tuning_db_url("shared.db")
    src = _filled(tmp_path / "src.db")
    assert src.export_jsonl(tmp_path / "x.jsonl") == 8
    n = 40
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(url, f"p{k}", str(tmp_path / "x.jsonl"), start, n))
             for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    db = TuningDatabase(url)
    # w and w1; n shared + 2n own candidates, + the 8 imported; 2 per loop and writer + 8
    assert db.count() == {"workloads": 2, "candidates": 3 * n + 8, "measurements": 4 * n + 8}
    mine = [r for r in db.records("w") if r.fingerprint.endswith(("-p0", "-p1"))]
    assert len(mine) == 2 * n and len({r.candidate_id for r in mine}) == 2 * n
    shared = [r for r in db.records("w") if r not in mine]
    assert len(shared) == 2 * n and len({r.candidate_id for r in shared}) == n
    assert [r.to_json() for r in db.records("w1")] == [r.to_json() for r in src.records()]
    assert db.tuning_state("w", "t") == (n - 1, False) and set(db.target_keys()) == {"t", "cpu-a", "cpu-b"}


def test_jsonl_from_sqlite_into_postgres_and_back_is_equal(tmp_path, postgres_url):  # noqa: F811
    lite = _filled(tmp_path / "a.db")
    assert lite.export_jsonl(tmp_path / "a.jsonl") == 8
    pg = TuningDatabase(postgres_url)
    assert pg.import_jsonl(tmp_path / "a.jsonl") == 8
    assert pg.import_jsonl(tmp_path / "a.jsonl") == 0  # merging twice adds nothing
    assert pg.export_jsonl(tmp_path / "b.jsonl") == 8
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    back = TuningDatabase(tmp_path / "b.db")
    assert back.import_jsonl(tmp_path / "b.jsonl") == 8
    for db in (pg, back):
        assert [r.to_json() for r in db.records()] == [r.to_json() for r in lite.records()]
        assert db.workload("w1") == lite.workload("w1") and db.target_json("cpu-a") == lite.target_json("cpu-a")
        assert db.best("w1", "cpu-a").to_json() == lite.best("w1", "cpu-a").to_json()


def test_a_dropped_connection_is_replaced_and_nothing_is_written_twice(postgres_url):  # noqa: F811
    db = TuningDatabase(postgres_url)
    cid = db.add_candidate("w", "t", "{}", "fp")
    db.add_measurement(cid, [1.0], "ok")
    kill = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tilefx' AND pid <> pg_backend_pid()")
    with TuningDatabase(postgres_url) as other:  # a second pooled connection kills the first
        assert other._execute(kill).scalar() is True
    db.add_measurement(cid, [2.0], "ok")  # on a dead connection: reconnects, writes once
    assert [r.median for r in db.records()] == [1.0, 2.0]
    with TuningDatabase(postgres_url) as other:  # pool_pre_ping: not handed a killed connection
        other._execute(kill)
    assert db.lookup_fingerprint("w", "t", "fp").median == 1.0  # reads reconnect too


def test_the_environment_variable_picks_the_default_database(postgres_url, monkeypatch, tmp_path):  # noqa: F811
    from tilefx import settings

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TILEFX_TUNING_DB", postgres_url)
    assert settings.tuning_db() == postgres_url
    with TuningDatabase() as db:
        assert db.dialect == "postgresql"
        db.add_workload("w", "ir", "fh")
    assert TuningDatabase(postgres_url).workload("w") == ("ir", "fh")
    assert not (tmp_path / "cache" / "tuning.db").exists()
    monkeypatch.setenv("TILEFX_TUNING_DB", "sqlite:///" + str(tmp_path / "u.db"))
    assert TuningDatabase().path == tmp_path / "u.db"
    monkeypatch.delenv("TILEFX_TUNING_DB")
    assert TuningDatabase().path == tmp_path / "cache" / "tuning.db"


def test_an_unreachable_server_is_a_clear_error_without_the_password(monkeypatch, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://alice:hunter2secret@127.0.0.1:{port}/tuning"
    with pytest.raises(DatabaseError) as info:
        TuningDatabase(url)
    message = str(info.value)
    assert message.startswith(f"cannot connect to the tuning database postgresql://alice:***@"
                              f"127.0.0.1:{port}/tuning: ")
    assert message.endswith("; check the URL or unset TILEFX_TUNING_DB") and "hunter2" not in message
    # the default database, and a pass's store that treats the database as absent, say the same
    from tilefx.storage.decisions import DatabaseDecisionStore

    monkeypatch.setenv("TILEFX_TUNING_DB", url)
    with pytest.raises(DatabaseError, match="cannot connect"):
        TuningDatabase()
    with caplog.at_level(logging.WARNING, logger="tilefx.storage.decisions"):
        assert DatabaseDecisionStore(None, "t").get("k") is None
    assert "cannot connect" in caplog.text and "hunter2" not in caplog.text


def test_urls_that_are_not_a_tuning_database_are_named(tmp_path):
    with pytest.raises(DatabaseError, match="not 'mysql'"):
        TuningDatabase("mysql://u:pw@host/db")
    with pytest.raises(DatabaseError, match="in-memory database keeps nothing"):
        TuningDatabase("sqlite://")
    with pytest.raises(DatabaseError, match="names no database"):
        TuningDatabase("postgresql://u@host:5432")
    db = TuningDatabase(f"sqlite:///{tmp_path}/u.db")
    assert db.path == tmp_path / "u.db" and db.dialect == "sqlite"


def test_psycopg_is_imported_only_for_a_server(tmp_path):
    code = ("import sys, tilefx\n"
            "from tilefx.storage.database import TuningDatabase\n"
            f"TuningDatabase({str(tmp_path / 't.db')!r}).add_workload('w', 'ir', 'fh')\n"
            "print('psycopg' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"


def test_a_fresh_cache_dir_compiles_against_a_warm_server_measuring_nothing(
        tmp_path, postgres_url, monkeypatch):  # noqa: F811
    """Machine A tunes into the server; machine B (another cache folder: no kernels, no
    local database) compiles the same model against it and measures 0 candidates."""
    pytest.importorskip("tvm")
    import torch

    import tilefx
    from tilefx.compiler.options import CompileOptions

    monkeypatch.setenv("TILEFX_TUNE_WORKERS", "0")  # builds in process: no pool start-up
    model, x = (lambda t: torch.relu(t * 0.5 + 1.0)), torch.randn(8, 32)
    tuned = []
    for machine in ("a", "b"):
        monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / machine))
        cm = tilefx.compile(model, options=CompileOptions(tune_trials=2, tune_db=postgres_url))
        torch.testing.assert_close(cm(x), model(x))
        tuned.append([(t.from_db, t.trials) for t in cm.records[0].tuning])
    assert tuned == [[(False, 2)], [(True, 0)]]
    assert not (tmp_path / "b" / "tuning.db").exists()  # nothing came from a local file
    with TuningDatabase(postgres_url) as db:
        assert db.count()["measurements"] == 2
        assert db._execute("SELECT COUNT(*) FROM kernel_checks").scalar() >= 1
