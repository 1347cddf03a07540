"""models.py's rows across runs: reading a finished table back (``--resume``), merging an
``--only`` run's columns into a finished row, and how long a model's columns took before
(``--expect``), so that a run under ``--deadline`` starts no model it would have to kill."""

from __future__ import annotations

import re
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


def all_rows(data: Any) -> list[dict]:
    """Every row of a run's ``models.json`` or of each call of a results file, unfinished ones
    too (what ``--expect`` learns from: a column that was killed took at least that long)."""
    if "calls" not in data:
        return list(data["rows"])
    return [r for call in data["calls"] for r in all_rows(call.get("data", call))]


def _timed_out(row: dict) -> tuple[str, float] | None:
    """(column, seconds it ran at least) of a row whose child was killed during a column:
    ``timeout after 307 s during max-autotune`` -> ("max-autotune", 277.0), the child's time
    less what loading a model takes."""
    m = re.fullmatch(r"timeout after (\d+(?:\.\d+)?) s during (.+)", str(row.get("status", "")))
    return None if m is None else (m.group(2), max(0.0, float(m.group(1)) - LOAD_SECONDS))


def expected_seconds(priors: Iterable[dict], model: str, columns: Iterable[str]) -> float | None:
    """Seconds a run of ``columns`` of ``model`` is expected to take, from the compile seconds
    of the same model and columns in ``priors`` (rows of earlier runs, any dtype: a model's bf16
    compile takes about its fp16's), the longest seen per column; a column whose child was
    killed by its timeout counts as the time it ran (at least that: swin_t's max-autotune passed
    307 s); None when a column was never seen (then nothing is known)."""
    seen: dict[str, float] = {}
    for row in priors:
        if row.get("model") != model:
            continue
        spent = dict((row.get("compile_s") or {}).items())
        if (killed := _timed_out(row)) is not None:
            spent[killed[0]] = killed[1]
        for col, s in spent.items():
            if isinstance(s, (int, float)):
                seen[col] = max(seen.get(col, 0.0), float(s))
    columns = list(columns)
    if not columns or any(c not in seen for c in columns):
        return None
    return LOAD_SECONDS + sum(seen[c] + TIMING_SECONDS for c in columns)
