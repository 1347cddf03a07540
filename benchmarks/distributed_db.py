"""The database part of ``benchmarks/distributed.py``: what a trial's record costs to commit
to SQLite and to PostgreSQL, alone and with concurrent writers, and what a warm compile's
reads cost.

- one record as the tuner commits it: ``add_candidate`` + ``add_measurement``, two
  autocommit statements (``Tuner._measure``);
- a batch in one transaction, two ways: the tuner's two statements a record with only
  the commit shared, and one multi-row INSERT for the candidates (``RETURNING`` their
  ids) plus one for the measurements: what a batching writer would do;
- 1, 2 and 4 writer processes (each its own workload, as separate tuners would),
  for a few seconds: records/s in all, and the CPUs the writers kept busy;
- ``best`` and the reads ``Tuner.tune_kernel`` makes for a finished workload, in a
  database of 16 workloads x 256 records.

PostgreSQL is the throwaway server of ``tests/storage/pg_server.py`` (fsync off;
tilefx sets ``synchronous_commit=off`` on its connections anyway, so a commit waits
for no disk flush there, as SQLite's WAL + ``synchronous=NORMAL`` does not).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measured import Row, say, timed

TARGET_KEY = "cpu-x86_64-linux-gnu-znver4--2c"
Rec = tuple[str, str, list[float]]  # schedule JSON, fingerprint, samples


def _fake_record(rng: random.Random, i: int) -> Rec:
    """A record shaped like a matmul candidate's: schedule, 64-hex fingerprint, 10 samples."""
    schedule = json.dumps({"pack_b": bool(i % 2), "parallel": True, "reg_m": 4 + i % 5,
                           "reg_n": 16 * (1 + i % 3), "tile_k": 0, "tile_m": 32, "tile_n": 64 + i,
                           "unroll_k": 4}, sort_keys=True)
    return schedule, f"{rng.getrandbits(256):064x}", [rng.lognormvariate(-7, 0.3)
                                                      for _ in range(10)]


def commit_one(db: Any, wkey: str, schedule: str, fp: str, samples: list[float]) -> None:
    """As ``Tuner._measure``'s commit: one candidate, one measurement, each committed."""
    cid = db.add_candidate(wkey, TARGET_KEY, schedule, fp)
    db.add_measurement(cid, samples, "ok")


def commit_batch(db: Any, wkey: str, batch: list[Rec], many: bool = True) -> None:
    """The batch's candidates and measurements in one transaction (``db._transaction``,
    the database's own). ``many``: one multi-row INSERT for each table; else the
    tuner's two statements a record. The candidates are new (the tuner skips known
    fingerprints before building); a real batching writer would upsert and select the
    few that another writer added first."""
    from tilefx.storage.db_schema import candidates, measurements

    now = time.time()
    with db._transaction() as conn:
        if not many:
            for schedule, fp, samples in batch:
                stmt = db._upsert(candidates, dict(workload_key=wkey, target_key=TARGET_KEY,
                                                   schedule_json=schedule, fingerprint=fp,
                                                   features_version=0, created=now),
                                  ["workload_key", "target_key", "schedule_json", "fingerprint",
                                   "features_version"])
                cid = conn.execute(stmt.returning(candidates.c.id)).scalar()
                conn.execute(db._measurement_insert(cid, samples, "ok", "", now))
            return
        rows = [dict(workload_key=wkey, target_key=TARGET_KEY, schedule_json=schedule,
                     fingerprint=fp, features_version=0, created=now)
                for schedule, fp, _ in batch]
        ids = conn.execute(candidates.insert().returning(candidates.c.id,
                                                         sort_by_parameter_order=True),
                           rows).scalars().all()
        conn.execute(measurements.insert(), [
            dict(candidate_id=cid, samples=json.dumps(samples),
                 median=statistics.median(samples), status="ok", error="", created=now)
            for cid, (_, _, samples) in zip(ids, batch)])


def _writer(url: str, wid: int, batch: int, seconds: float, ready: Any, start: Any,
            out: Any) -> None:
    """A writer process: open the database, wait for the start, commit for ``seconds``."""
    from tilefx.storage.database import TuningDatabase

    db = TuningDatabase(url)
    rng = random.Random(wid)
    wkey = f"writer{wid}-{os.getpid()}"
    db.add_workload(wkey, "graph", "hash")
    ready.set()
    start.wait()
    done, i, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        recs = [_fake_record(rng, i + j) for j in range(batch)]
        i += batch
        if batch == 1:
            commit_one(db, wkey, *recs[0])
        else:
            commit_batch(db, wkey, recs)
        done += batch
    out.put((done, time.perf_counter() - t0, time.process_time() - c0))
    db.close()


def concurrent(url: str, writers: int, batch: int, seconds: float) -> tuple[float, float]:
    """Records committed per second by ``writers`` processes together, and the CPUs they
    kept busy (CPU seconds per second: below the writer count, they waited for a lock or
    for a CPU that other processes held)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Event()
    readies = [ctx.Event() for _ in range(writers)]
    procs = [ctx.Process(target=_writer, args=(url, w, batch, seconds, readies[w], start, out))
             for w in range(writers)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(120)
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    wall = max(s for _, s, _ in results)
    return sum(n for n, _, _ in results) / wall, sum(c for _, _, c in results) / wall


def bench_one(label: str, url: str, quick: bool, rows: list[Row]) -> None:
    from tilefx.storage.database import TuningDatabase

    db = TuningDatabase(url)
    rng = random.Random(0)
    n = 300 if quick else 1000
    wkey = "bench-single"
    db.add_workload(wkey, "graph", "hash")
    recs = iter([_fake_record(rng, i) for i in range(n + 20)])
    one = timed(lambda: commit_one(db, wkey, *next(recs)), n, warmup=20)
    rows.append(Row("db", f"{label}: one record (add_candidate + add_measurement, 2 commits)",
                    one, f"{1 / one.median:,.0f} records/s"))
    for many, batch in ((False, 64), (True, 8), (True, 64), (True, 512)):
        k = max(10, min(60, n // batch)) // (2 if quick else 1)
        batches = iter([[_fake_record(rng, 10**6 * batch + i * batch + j) for j in range(batch)]
                        for i in range(k + 2)])
        t = timed(lambda b=batches, m=many: commit_batch(db, wkey, next(b), m), k,
                  warmup=2).per(batch)
        how = "multi-row INSERTs" if many else "2 statements a record"
        rows.append(Row("db", f"{label}: a record in a transaction of {batch}, {how}", t,
                        f"{1 / t.median:,.0f} records/s"))
    seconds = 1.5 if quick else 3.0
    for writers, batch in ((1, 1), (2, 1), (4, 1), (4, 64)):
        say(f"db {label}: {writers} writer process(es), {batch} record(s) a transaction")
        rate, busy = concurrent(url, writers, batch, seconds)
        how = "a commit a record" if batch == 1 else f"{batch} records a transaction, multi-row"
        rows.append(Row("db", f"{label}: {writers} writer process(es), {how}",
                        rate=f"{rate:,.0f} records/s in all",
                        note=f"writers kept {busy:.2f} of {os.cpu_count()} CPUs busy"))
    keys = [f"bench-warm-{w}" for w in range(16)]
    for w in keys:
        db.add_workload(w, "graph", "hash")
        for i in range(4):
            commit_batch(db, w, [_fake_record(rng, 10**7 + i * 64 + j) for j in range(64)])
    probe = iter([rng.choice(keys) for _ in range(2000)])
    best = timed(lambda: db.best(next(probe), TARGET_KEY), 100 if quick else 400, warmup=20)
    rows.append(Row("db", f"{label}: best(workload, target), 256 records a workload", best,
                    f"{1 / best.median:,.0f} lookups/s"))

    def warm_kernel() -> None:  # Tuner.tune_kernel on a finished workload: its reads
        w = next(probe)
        db.known_workload_key(w)
        db.records(w, TARGET_KEY)
        db.bad_fingerprints(w, TARGET_KEY)
        db.tuning_state(w, TARGET_KEY)
        db.best(w, TARGET_KEY)

    rows.append(Row("db", f"{label}: a warm kernel's reads (key, records, bad, state, best)",
                    timed(warm_kernel, 50 if quick else 200, warmup=5)))
    db.close()


def bench_db(quick: bool, rows: list[Row]) -> None:
    with tempfile.TemporaryDirectory(prefix="tilefx-bench-db-") as tmp:
        say("db: SQLite")
        bench_one("SQLite", str(Path(tmp) / "tuning.db"), quick, rows)
    try:
        from tests.storage.pg_server import Server

        server = Server()
    except Exception as e:  # noqa: BLE001 - no server binaries or psycopg: say so in the table
        rows.append(Row("db", "PostgreSQL: not measured", note=f"{type(e).__name__}: {e}"[:200]))
        return
    try:
        say(f"db: PostgreSQL 15 on 127.0.0.1:{server.port}")
        bench_one("PostgreSQL", server.new_database(), quick, rows)
    finally:
        from tilefx.storage.db_connect import dispose_engines

        dispose_engines()
        server.stop()
