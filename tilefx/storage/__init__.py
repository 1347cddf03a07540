"""Storage: what tilefx keeps between runs, in the tuning database.

``database.TuningDatabase`` (a SQLite file, or a PostgreSQL server a team shares, through
SQLAlchemy Core: tables in ``db_schema``, opening and checking in ``db_connect``, SQLite
file checks in ``db_file``, JSON-lines export in ``db_jsonl``) holds every
measurement the tuner made, the workload keys, finished searches, the
sparse/dense and whole-graph decisions and which built kernels passed or failed
their check. The tuner writes it, the cost model learns from it and the compiler
reads it; no pass imports it (a pass that keeps a decision is handed a store).

Floor: above ``codegen`` (records hold a ``Schedule``), below ``cost_model``.
"""
