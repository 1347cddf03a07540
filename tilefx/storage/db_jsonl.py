"""The tuning database as JSON lines: what ``tilefx compile -o`` ships as ``tuning.jsonl``.

One JSON object a line: workloads, then targets, then measurements (each with its
candidate's schedule and fingerprint). Importing merges: a measurement already
present (same candidate, samples, status and time) is skipped, so importing the same
file twice adds nothing. Used through ``TuningDatabase.export_jsonl`` / ``import_jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tilefx.storage.database import TuningDatabase


def export_jsonl(db: TuningDatabase, path: str | Path) -> int:
    """Write ``db`` to ``path``; returns the number of measurement records written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for key, ir_text, fhash in db._execute(
                "SELECT key, ir_text, functional_hash FROM workloads ORDER BY key").fetchall():
            f.write(json.dumps({"type": "workload", "key": key, "ir_text": ir_text,
                                "functional_hash": fhash}, sort_keys=True) + "\n")
        for key, target_json in db._execute(
                "SELECT key, target_json FROM targets ORDER BY key").fetchall():
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
    samples = json.dumps([float(s) for s in d["samples"]])
    with db._lock:  # check and insert as one step: two importers must not both add it
        if db.has_measurement(cid, samples, d["status"], float(d["created"])):
            return 0
        db.add_measurement(cid, d["samples"], d["status"], d.get("error", ""),
                           created=float(d["created"]))
    return 1
