"""Test helper: a tuning database as an older tilefx wrote it (for in-place upgrade tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def old_database(path: Path, first_new_table: str, version: int) -> sqlite3.Connection:
    """An open SQLite file holding today's schema up to ``first_new_table`` (excluded),
    stamped as ``version``: what a tilefx of that schema version left on disk."""
    from tilefx.storage import database

    conn = sqlite3.connect(path)
    for statement in database._SCHEMA.split(f"CREATE TABLE IF NOT EXISTS {first_new_table}")[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {database.APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def old_database_with_workload(path: Path, first_new_table: str, version: int) -> None:
    """``old_database`` holding one workload ``w`` (IR ``ir``, hash ``fh``), closed: what an
    upgrade test opens to see that the upgrade keeps it."""
    conn = old_database(path, first_new_table, version)
    conn.execute("INSERT INTO workloads VALUES ('w', 'ir', 'fh', 0)")
    conn.commit()
    conn.close()
