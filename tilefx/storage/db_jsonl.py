"""The tuning database as JSON lines: what ``tilefx compile -o`` ships as ``tuning.jsonl``.

One JSON object a line: workloads, then targets, then measurements (each with its
candidate's schedule and fingerprint). Importing merges: a measurement already
present (same candidate, samples, status and time) is skipped, so importing the same
file twice adds nothing. The file is the same whichever dialect wrote it, so it also
moves records between a SQLite file and a PostgreSQL server. Used through
``TuningDatabase.export_jsonl`` / ``import_jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from tilefx.storage.db_schema import targets, workloads

if TYPE_CHECKING:
    from tilefx.storage.database import TuningDatabase


def export_jsonl(db: TuningDatabase, path: str | Path) -> int:
    """Write ``db`` to ``path``; returns the number of measurement records written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        # sorted here, not by ORDER BY: the file is the same whichever dialect (and text
        # collation) it comes from
        w = workloads
        for key, ir_text, fhash in sorted(db._all(select(w.c.key, w.c.ir_text, w.c.functional_hash))):
            f.write(json.dumps({"type": "workload", "key": key, "ir_text": ir_text,
                                "functional_hash": fhash}, sort_keys=True) + "\n")
        for key, target_json in sorted(db._all(select(targets.c.key, targets.c.target_json))):
            f.write(json.dumps({"type": "target", "key": key, "target_json": target_json},
                               sort_keys=True) + "\n")
        for record in db.records():
            f.write(json.dumps({"type": "record", **record.to_json()}, sort_keys=True) + "\n")
            n += 1
    return n


def import_jsonl(db: TuningDatabase, path: str | Path) -> int:
    """Merge an exported file into ``db``; returns the measurement records added."""
    added = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if d.get("type") == "workload":
                    db.add_workload(d["key"], d["ir_text"], d["functional_hash"])
                elif d.get("type") == "target":
                    db.add_target(d["key"], d["target_json"])
                elif d.get("type") == "record":
                    added += _import_record(db, d)
                else:
                    raise ValueError(f"unknown line type {d.get('type')!r}")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a tuning record ({e}); expected a "
                                 "file written by TuningDatabase.export_jsonl") from e
    return added


def _import_record(db: TuningDatabase, d: dict[str, Any]) -> int:
    cid = db.add_candidate(d["workload_key"], d["target_key"], d["schedule_json"],
                           d["fingerprint"], int(d.get("features_version", 0)))
    # check and insert as one step: two importers (threads, processes, machines) add it once
    return int(db.add_measurement_once(cid, d["samples"], d["status"], d.get("error", ""),
                                       created=float(d["created"])))
