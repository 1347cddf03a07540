"""One table from many device runs: issue 17's bar (tilefx vs reduce-overhead untuned, tilefx
tuned vs max-autotune) per model and dtype, from ``models.py``'s results files.

The device's 30 minutes a session measure a few models at a time, so each results file holds a
few rows; this reads them oldest first and takes, for each model and dtype and each of the two
ratios, the newest file whose rows hold *both* columns of the ratio (columns measured in one
session, on one machine, usually in one process tree). A ratio whose two columns were only ever
measured in different files is still shown, marked, from the newest of each.

    python benchmarks/gpu/summary.py benchmarks/results/gpu-models-h200-2026-12-0*.json \\
        --out benchmarks/results/gpu-models-h200-summary.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from statistics import geometric_mean

from models_rows import resumable

PAIRS = {"untuned": ("tilefx", "reduce-overhead"), "tuned": ("tilefx tuned", "max-autotune")}
GOALS = {"untuned": "every <= 1.00, geomean <= 0.87 (>= 1.15x)", "tuned": "every <= 1.00"}


def _ms(row: dict, column: str) -> float | None:
    value = row.get("ms", {}).get(column)
    return float(value) if isinstance(value, (int, float)) else None  # a timeout is a string


def file_rows(path: Path) -> dict[tuple[str, str], dict]:
    """A results file's finished rows by (model, dtype), its calls' columns merged, each row
    tagged with the file and the code it measured."""
    data = json.loads(path.read_text())
    commit = data.get("commit") or next((c.get("commit") for c in data.get("calls", []) if c.get("commit")), "")
    name = path.stem.removeprefix("gpu-models-")
    # a row copied from an earlier file keeps the code it measured; the first word is the commit
    return {(r["model"], r["dtype"]): dict(r, source=name, commit=(r.get("commit") or commit or "?").split()[0])
            for r in resumable(data)["rows"]}


def pick(files: list[dict[tuple[str, str], dict]], key: tuple[str, str], pair: tuple[str, str]) -> dict | None:
    """The ratio's two columns from the newest file holding both, else from the newest of each."""
    for rows in reversed(files):
        row = rows.get(key)
        if row is not None and all(_ms(row, c) is not None for c in pair):
            return dict(ours=_ms(row, pair[0]), peer=_ms(row, pair[1]), source=row["source"],
                        commit=row["commit"], row=row, split=False)
    newest = [next((rows[key] for rows in reversed(files) if key in rows and _ms(rows[key], c) is not None), None)
              for c in pair]
    if None in newest:
        return None
    return dict(ours=_ms(newest[0], pair[0]), peer=_ms(newest[1], pair[1]), row=newest[0], split=True,
                source=f"{newest[0]['source']} + {newest[1]['source']}", commit=newest[0]["commit"])


def tuning_seconds(row: dict) -> tuple[float, float] | None:
    """(used, given) from the tuned column's budget line, if the run wrote one."""
    for note in row.get("notes", []):
        m = re.match(r"tuned: budget (\d+(?:\.\d+)?)s for the model: (\d+(?:\.\d+)?)s used", note)
        if m:
            return float(m.group(2)), float(m.group(1))
    return None


def shown(ratio: float) -> str:
    """Two decimals, three near 1: 0.996 is not shown as 1.00 against a goal of <= 1."""
    return f"{ratio:.2f}" if abs(ratio - 1) >= 0.005 else f"{ratio:.3f}"


NOT_MEASURED = ["-", "-", "not measured", "-", "-", "-", "-"]


def ratio_cells(what: str, model: str, got: dict, notes: dict[str, list[str]]) -> tuple[list[str], bool]:
    """One ratio's cells of a model's row and whether its error and counts pass; ``notes`` gathers
    what the dtype's lines name (counts a run did not record, tuning past its budget)."""
    row, ratio = got["row"], got["ours"] / got["peer"]
    cells = [f"{got['ours']:.3f}", f"{got['peer']:.3f}", f"**{shown(ratio)}**" + "*" * got["split"]]
    err, limit = row.get("err", {}).get(PAIRS[what][0]), row.get("limit")
    passed = isinstance(err, (int, float)) and isinstance(limit, (int, float)) and err <= limit
    cells.append(f"{err:.1e} ({limit:.1e})" if passed else f"FAILED: {err} ({limit})")
    report = row.get("report", {})
    prefix = "" if what == "untuned" else "tuned_"
    missed = [report.get(prefix + k) for k in ("fallbacks", "interpreted")]
    if None in missed:  # an older --only run did not record them
        notes["unrecorded"].append(f"{model} {what}")
    passed &= all(n in (0, None) for n in missed)
    if what == "untuned":
        cells.append(str(report.get("kernels", "-")))
    else:
        spent = tuning_seconds(row)
        cells.append("-" if spent is None else f"{spent[0]:.1f} s")
        if spent is not None and spent[0] > spent[1] + 1:  # a second: the deadline's granularity
            notes["over"].append(f"{model} {spent[0]:.1f} s of {spent[1]:.0f} ({got['commit']})")
    cells.append(" / ".join("-" if n is None else str(n) for n in missed))
    return cells + [f"{got['source']} ({got['commit']})"], passed


def dtype_lines(ratios: dict[str, list[float]], base: list[float], notes: dict[str, list[str]]) -> tuple[list[str], bool]:
    """The lines under a dtype's table, and whether its ratios meet their goals."""
    lines, met_all = [], True
    for what, values in ratios.items():
        if not values:
            continue
        g, worst = geometric_mean(values), max(values)
        met = worst <= 1.0 and (what != "untuned" or g <= 1 / 1.15)
        met_all &= met
        lines.append(f"- {what}: {len(values)} models, geomean {g:.2f} ({1 / g:.2f}x faster), worst "
                     f"{shown(worst)}: {'goal met' if met else 'goal MISSED'}")
    if base:
        lines.append(f"- untuned tilefx / max-autotune (for comparison): {len(base)} models, geomean "
                     f"{geometric_mean(base):.2f}, worst {shown(max(base))}")
    if notes["over"]:
        lines.append(f"- tuning over its budget: {', '.join(notes['over'])}")
    if notes["unrecorded"]:
        lines.append(f"- fallbacks / interpreted not recorded by the run: {', '.join(notes['unrecorded'])}")
    return lines, met_all


def render(files: list[dict[tuple[str, str], dict]], names: list[str]) -> tuple[str, bool]:
    """The markdown, and whether every measured ratio meets its goal."""
    keys = sorted({k for rows in files for k in rows}, key=lambda k: (k[1], k[0]))
    out = ["# tilefx vs torch.compile on real models: every device run in one table", "",
           "Made by `python benchmarks/gpu/summary.py " + " ".join(names) + "`. Ratio = tilefx ms / "
           "peer ms (< 1: tilefx faster); each ratio from the newest results file holding both of its "
           "columns (* = the two columns from different files). Goals: untuned / reduce-overhead "
           f"{GOALS['untuned']}; tuned (60 s) / max-autotune {GOALS['tuned']}. Measured on: "
           + (", ".join(sorted({r["device"] for rows in files for r in rows.values() if r.get("device")}))
              or "(not recorded)") + "; each file says its software and commands.", ""]
    ok = True
    kernels: dict[tuple[str, str], tuple[int | None, str]] = {}
    for dtype in sorted({k[1] for k in keys}, key=lambda d: ("fp16", "bf16", "fp32").index(d)
                        if d in ("fp16", "bf16", "fp32") else 9):
        out += [f"## {dtype}", "",
                "| model | tilefx ms | reduce-overhead ms | **untuned ratio** | error vs eager (limit) | kernels "
                "| fallbacks / interpreted | from (code) | tilefx tuned ms | max-autotune ms | **tuned ratio** "
                "| error vs eager (limit) | tuning used | fallbacks / interpreted | from (code) |",
                "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        ratios: dict[str, list[float]] = {"untuned": [], "tuned": []}
        notes: dict[str, list[str]] = {"unrecorded": [], "over": []}
        for key in (k for k in keys if k[1] == dtype):
            cells = [key[0]]
            for what, pair in PAIRS.items():
                got = pick(files, key, pair)
                if got is None:
                    cells += NOT_MEASURED
                    continue
                ratios[what].append(got["ours"] / got["peer"])
                if what == "untuned":
                    kernels[key] = (got["row"].get("report", {}).get("kernels"), got["commit"])
                more, passed = ratio_cells(what, key[0], got, notes)
                cells += more
                ok &= passed
            out.append("| " + " | ".join(cells) + " |")
        # what tuning starts from: untuned tilefx against max-autotune (columns of two runs, mostly)
        base = [got["ours"] / got["peer"] for key in keys if key[1] == dtype
                for got in [pick(files, key, ("tilefx", "max-autotune"))] if got is not None]
        lines, met = dtype_lines(ratios, base, notes)
        ok &= met
        out += ["", *lines, ""]
    differ = [f"{m} {kernels[(m, 'fp16')][0]} ({kernels[(m, 'fp16')][1]}) vs {d} {n} ({c})"
              for (m, d), (n, c) in kernels.items() if d != "fp16" and (m, "fp16") in kernels
              and n != kernels[(m, "fp16")][0]]
    if differ:
        out += ["Kernel counts that differ from fp16 in these rows (each row's own code; a later "
                "compile of both dtypes, `kernel_counts.py` and `benchmarks/results/kernel-counts-*.md`, says what "
                "the current code does): "
                + "; ".join(differ) + ".", ""]
    return "\n".join(out), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="models.py results (.json), oldest first")
    p.add_argument("--out", type=Path, help="write the markdown here (else print it)")
    args = p.parse_args(argv)
    files = []
    for path in args.files:
        try:
            files.append(file_rows(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{path}: not a models.py results file ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    text, ok = render(files, [str(f) for f in args.files])
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
