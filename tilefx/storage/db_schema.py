"""The tuning database's schema: its tables, their version, and how a file gets them.

``database.py`` says what each table is for and how the file is opened, checked,
upgraded and written; this module is only the SQL layout. Tables are only ever
added (an older file gains the missing ones in place, see ``_check_or_create``);
``SCHEMA_VERSION`` says which tables a file has, and a file of a newer version is
refused.
"""

from __future__ import annotations

import sqlite3

# 2: kernel_keys, tuning_state, graph_decisions; 3: pass_decisions; 4: kernel_checks (added in place)
SCHEMA_VERSION = 4
APPLICATION_ID = 0x74667462  # "tftb": marks the file as a tilefx tuning database
STATUSES = ("ok", "build_error", "run_error", "timeout", "wrong_result")
CHECK_STATUSES = ("ok", "wrong_result", "run_error")  # of a built kernel's check

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workloads (
    key TEXT PRIMARY KEY,
    ir_text TEXT NOT NULL,
    functional_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    workload_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    schedule_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    features_version INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    UNIQUE (workload_key, target_key, schedule_json, fingerprint, features_version)
);
CREATE INDEX IF NOT EXISTS candidates_by_fingerprint
    ON candidates (workload_key, target_key, fingerprint);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    candidate_id INTEGER NOT NULL REFERENCES candidates (id),
    samples TEXT NOT NULL,
    median REAL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_by_candidate ON measurements (candidate_id);
CREATE TABLE IF NOT EXISTS targets (
    key TEXT PRIMARY KEY,
    target_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kernel_keys (
    ir_hash TEXT PRIMARY KEY,
    workload_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tuning_state (
    workload_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    trials INTEGER NOT NULL,
    exhausted INTEGER NOT NULL,
    PRIMARY KEY (workload_key, target_key)
);
CREATE TABLE IF NOT EXISTS graph_decisions (
    graph_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    keep_tuned INTEGER NOT NULL,
    tuned_ms REAL,
    default_ms REAL,
    created REAL NOT NULL,
    PRIMARY KEY (graph_key, target_key)
);
CREATE TABLE IF NOT EXISTS pass_decisions (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key, target_key)
);
CREATE TABLE IF NOT EXISTS kernel_checks (
    code_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    status TEXT NOT NULL,
    build_key TEXT NOT NULL,
    workload_key TEXT NOT NULL DEFAULT '',
    schedule_json TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (code_key, target_key)
);
CREATE INDEX IF NOT EXISTS kernel_checks_by_build ON kernel_checks (build_key, target_key);
CREATE INDEX IF NOT EXISTS kernel_checks_by_workload ON kernel_checks (workload_key, target_key);
"""
_TABLES = {"workloads", "candidates", "measurements", "targets", "kernel_keys", "tuning_state",
           "graph_decisions", "pass_decisions", "kernel_checks"}


def _create_schema(conn: sqlite3.Connection) -> None:
    # statement by statement: executescript would COMMIT the caller's BEGIN IMMEDIATE first
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
