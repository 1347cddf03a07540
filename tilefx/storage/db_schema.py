"""The tuning database's schema: its tables (SQLAlchemy Core), their version, and how a
database gets them.

``database.py`` says what each table is for and how it is written; ``db_connect.py`` opens
a database and calls ``ensure_schema`` here. The tables are defined once, below, and
SQLAlchemy writes the DDL of each dialect from them: on SQLite the layout (``TEXT``,
``INTEGER`` row ids, the same names and indexes) is the one tilefx always wrote, on
PostgreSQL ids are ``BIGSERIAL`` and floats ``DOUBLE PRECISION``.

Tables are only ever added: an older database gains the missing ones in place, so every
older version upgrades by the same step. ``SCHEMA_VERSION`` says which tables a database
has; SQLite keeps it in ``PRAGMA user_version`` (and marks the file with
``PRAGMA application_id``), PostgreSQL in the row ``schema_version`` of the small table
``tilefx_meta``. A database of a newer version is refused on both.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Double, ForeignKey, Index, Integer, MetaData,
                        PrimaryKeyConstraint, Table, Text, UniqueConstraint, text)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, CreateTable

# 2: kernel_keys, tuning_state, graph_decisions; 3: pass_decisions; 4: kernel_checks (added in place)
SCHEMA_VERSION = 4
APPLICATION_ID = 0x74667462  # "tftb": marks the file as a tilefx tuning database
STATUSES = ("ok", "build_error", "run_error", "timeout", "wrong_result")
CHECK_STATUSES = ("ok", "wrong_result", "run_error")  # of a built kernel's check

metadata = MetaData()

# INTEGER on SQLite (so the id is the row id, as in every file written so far), BIGINT
# (BIGSERIAL) on a server that a whole team fills
_ID = Integer().with_variant(BigInteger(), "postgresql")

workloads = Table(
    "workloads", metadata,
    Column("key", Text, primary_key=True),
    Column("ir_text", Text, nullable=False),
    Column("functional_hash", Text, nullable=False),
    Column("created", Double, nullable=False),
)
candidates = Table(
    "candidates", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("workload_key", Text, nullable=False),
    Column("target_key", Text, nullable=False),
    Column("schedule_json", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("features_version", Integer, nullable=False, server_default=text("0")),
    Column("created", Double, nullable=False),
    # each candidate once: add_candidate's upsert and every writer rely on it
    UniqueConstraint("workload_key", "target_key", "schedule_json", "fingerprint",
                     "features_version"),
)
Index("candidates_by_fingerprint", candidates.c.workload_key, candidates.c.target_key,
      candidates.c.fingerprint)
measurements = Table(
    "measurements", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("candidate_id", _ID, ForeignKey("candidates.id"), nullable=False),
    Column("samples", Text, nullable=False),
    Column("median", Double),
    Column("status", Text, nullable=False),
    Column("error", Text, nullable=False, server_default=text("''")),
    Column("created", Double, nullable=False),
)
Index("measurements_by_candidate", measurements.c.candidate_id)
targets = Table(
    "targets", metadata,
    Column("key", Text, primary_key=True),
    Column("target_json", Text, nullable=False),
)
kernel_keys = Table(
    "kernel_keys", metadata,
    Column("ir_hash", Text, primary_key=True),
    Column("workload_key", Text, nullable=False),
)
tuning_state = Table(
    "tuning_state", metadata,
    Column("workload_key", Text, nullable=False),
    Column("target_key", Text, nullable=False),
    Column("trials", Integer, nullable=False),
    Column("exhausted", Integer, nullable=False),  # 0/1 on both dialects (as files hold it)
    PrimaryKeyConstraint("workload_key", "target_key"),
)
graph_decisions = Table(
    "graph_decisions", metadata,
    Column("graph_key", Text, nullable=False),
    Column("target_key", Text, nullable=False),
    Column("keep_tuned", Integer, nullable=False),
    Column("tuned_ms", Double),
    Column("default_ms", Double),
    Column("created", Double, nullable=False),
    PrimaryKeyConstraint("graph_key", "target_key"),
)
pass_decisions = Table(
    "pass_decisions", metadata,
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("target_key", Text, nullable=False),
    Column("json", Text, nullable=False),
    Column("created", Double, nullable=False),
    PrimaryKeyConstraint("kind", "key", "target_key"),
)
kernel_checks = Table(
    "kernel_checks", metadata,
    Column("code_key", Text, nullable=False),
    Column("target_key", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("build_key", Text, nullable=False),
    Column("workload_key", Text, nullable=False, server_default=text("''")),
    Column("schedule_json", Text, nullable=False, server_default=text("''")),
    Column("fingerprint", Text, nullable=False, server_default=text("''")),
    Column("error", Text, nullable=False, server_default=text("''")),
    Column("created", Double, nullable=False),
    PrimaryKeyConstraint("code_key", "target_key"),
)
Index("kernel_checks_by_build", kernel_checks.c.build_key, kernel_checks.c.target_key)
Index("kernel_checks_by_workload", kernel_checks.c.workload_key, kernel_checks.c.target_key)

# in the order the versions added them (tests/old_database.py cuts this list to make old files)
SCHEMA_TABLES = (workloads, candidates, measurements, targets,       # 1
                 kernel_keys, tuning_state, graph_decisions,         # 2
                 pass_decisions,                                     # 3
                 kernel_checks)                                      # 4
_TABLES = {t.name for t in SCHEMA_TABLES}
_REQUIRED = {"workloads", "candidates", "measurements"}  # what any version has

# PostgreSQL only (SQLite keeps the same facts in its file header): name -> value
meta = Table(
    "tilefx_meta", MetaData(),
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)


def sqlite_ddl() -> str:
    """The SQLite DDL of every table and index, in version order, ``;``-separated (what
    ``tests/old_database.py`` cuts at a table to write the file an older tilefx left)."""
    dialect = sqlite.dialect()
    parts = []
    for table in SCHEMA_TABLES:
        parts.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        parts += [str(CreateIndex(ix, if_not_exists=True).compile(dialect=dialect))
                  for ix in sorted(table.indexes, key=lambda ix: ix.name)]
    return ";\n".join(p.strip() for p in parts) + ";\n"


def __getattr__(name: str) -> str:
    # _SCHEMA, the DDL text, is built on first use: compiling it costs an import nothing
    if name == "_SCHEMA":
        return sqlite_ddl()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_missing(conn: Connection) -> None:
    """Create the tables (with their indexes) this database lacks; existing ones are kept.

    Runs inside the caller's transaction (SQLite ``BEGIN IMMEDIATE``, PostgreSQL under
    an advisory lock), so two processes opening a new database at once create it once.
    """
    metadata.create_all(conn, tables=list(SCHEMA_TABLES), checkfirst=True)
    for table in SCHEMA_TABLES:  # an index added to a table an older version already had
        for ix in table.indexes:
            ix.create(conn, checkfirst=True)
