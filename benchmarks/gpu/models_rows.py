"""models.py's rows across runs: reading a finished table back (``--resume``), merging an
``--only`` run's columns into a finished row, and how long a model's columns took before
(``--expect``), so that a run under ``--deadline`` starts no model it would have to kill."""

from __future__ import annotations

from typing import Any, Iterable

LOAD_SECONDS = 30.0   # a model's child: imports, building the model, eager and its reference
TIMING_SECONDS = 15.0  # a column past its compile: warm-up and the timed calls


def resumable(data: Any) -> dict:
    """``--resume``'s file as {"commands", "rows"}: a run's ``models.json``, or a results file that
    keeps several device calls' tables (``{"calls": [{"data": models.json}, ...]}``, as in
    ``benchmarks/results/``): a later call's columns are merged into the earlier row of the same
    model and dtype (calls made with ``--only`` each add columns), its own winning."""
    if "calls" not in data:
        return {"commands": data.get("commands", []), "rows": list(data["rows"])}
    rows: dict[tuple[str, str], dict] = {}
    commands: list[str] = []
    for call in data["calls"]:
        part = resumable(call.get("data", call))
        commands += part["commands"]
        for r in part["rows"]:
            if r.get("status") == "ok":
                key = (r["model"], r["dtype"])
                rows[key] = merged(rows.get(key), r)
    return {"commands": commands, "rows": list(rows.values())}


def merged(old: dict | None, new: dict) -> dict:
    """An ``--only`` run's row over the finished row it adds columns to (same model and dtype)."""
    if old is None or new.get("status") != "ok":
        return new if old is None else {**old, "notes": old.get("notes", []) + [
            f"--only run: {new.get('status')}"]}
    out = {**old, "notes": old.get("notes", []) + new.get("notes", [])}
    for key in ("ms", "compile_s", "err", "errors", "report"):
        out[key] = {**old.get(key, {}), **new.get(key, {})}
    return out


def expected_seconds(priors: Iterable[dict], model: str, columns: Iterable[str]) -> float | None:
    """Seconds a run of ``columns`` of ``model`` is expected to take, from the compile seconds
    of the same model and columns in ``priors`` (finished rows, any dtype: a model's bf16
    compile takes about its fp16's), the longest seen per column; None when a column was never
    seen (then nothing is known)."""
    seen: dict[str, float] = {}
    for row in priors:
        if row.get("model") == model:
            for col, s in (row.get("compile_s") or {}).items():
                if isinstance(s, (int, float)):
                    seen[col] = max(seen.get(col, 0.0), float(s))
    columns = list(columns)
    if not columns or any(c not in seen for c in columns):
        return None
    return LOAD_SECONDS + sum(seen[c] + TIMING_SECONDS for c in columns)
