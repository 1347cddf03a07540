"""Fusion checked by the latency model: zoo models compiled with and without ``fusion_check``.

For each zoo model: compile with the rule-based fusion and with
``CompileOptions(fusion_check=True)`` (``cost_model.advisor``: the regression
model's word, measured when the predicted ratio is in the unsure band), then
print the fusions considered / rejected / measured, the kernel counts, and the
model latency both ways (median of ``--repeats`` timed calls, each looped to
``--min-ms``; the two variants are timed interleaved so load drifts hit both).

    python benchmarks/fusion_advice.py [--models mlp,resnet18] [--batch N] [--out results.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TVM_BIND_THREADS", "0")  # before anything imports TVM

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.models import ZOO  # noqa: E402


def _window(fn: Callable[[], Any], min_s: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def time_both(a: Callable[[], Any], b: Callable[[], Any], repeats: int, min_s: float) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_window(a, min_s))
        tb.append(_window(b, min_s))
    return statistics.median(ta), statistics.median(tb)


def run_model(name: str, batch: int, repeats: int, min_s: float) -> dict[str, Any]:
    import tilefx
    from tilefx.compiler.options import CompileOptions

    entry = ZOO[name]
    model = entry.build()
    inputs = entry.make_inputs(batch=batch, seed=0)
    with torch.no_grad():
        ref = model(*inputs)
    row: dict[str, Any] = {"model": name, "batch": batch}
    compiled = {}
    for label, check in (("rules", False), ("checked", True)):
        t0 = time.perf_counter()
        c = tilefx.compile(model, options=CompileOptions(fusion_check=check))
        out = c(*inputs)
        row[f"compile_s_{label}"] = time.perf_counter() - t0
        row[f"err_{label}"] = (out - ref).abs().max().item()
        rec = c.records[-1]
        row[f"kernels_{label}"] = len(rec.kernels)
        compiled[label] = c
        if check:
            ds = rec.fusion_decisions
            row["considered"] = len(ds)
            row["rejected"] = sum(not d.fuse for d in ds)
            row["measured"] = sum(d.measured for d in ds)
            row["lines"] = [n for n in rec.notes if n.startswith("fusion:")]
    with torch.no_grad():
        row["ms_rules"], row["ms_checked"] = (1e3 * t for t in time_both(
            lambda: compiled["rules"](*inputs), lambda: compiled["checked"](*inputs), repeats, min_s))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--batch", type=int, default=0, help="0: each model's bench batch")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-ms", type=float, default=50.0)
    p.add_argument("--out", default="", help="also write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for name in args.models.split(","):
        batch = args.batch or ZOO[name].bench_batch
        try:
            row = run_model(name, batch, args.repeats, args.min_ms / 1e3)
        except Exception as e:  # noqa: BLE001 - one model failing is a row, not the end
            print(f"{name}: FAILED {type(e).__name__}: {e}")
            continue
        rows.append(row)
        print(f"{name} (batch {batch}): {row['considered']} considered, {row['rejected']} rejected, "
              f"{row['measured']} measured; kernels {row['kernels_rules']} -> {row['kernels_checked']}; "
              f"{row['ms_rules']:.3f} ms rules vs {row['ms_checked']:.3f} ms checked; "
              f"compile {row['compile_s_rules']:.1f} s vs {row['compile_s_checked']:.1f} s", flush=True)
        for ln in row["lines"]:
            print("   ", ln)
    table = ["| model | batch | considered | rejected | measured | kernels rules -> checked | "
             "ms rules | ms checked | checked/rules | compile s rules / checked | max err checked |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['batch']} | {r['considered']} | {r['rejected']} | {r['measured']} | "
                     f"{r['kernels_rules']} -> {r['kernels_checked']} | {r['ms_rules']:.3f} | "
                     f"{r['ms_checked']:.3f} | {r['ms_checked'] / r['ms_rules']:.3f} | "
                     f"{r['compile_s_rules']:.1f} / {r['compile_s_checked']:.1f} | {r['err_checked']:.1e} |")
    print("\n".join(table))
    if args.out:
        details = [f"- {r['model']}: {ln[len('fusion: '):]}" for r in rows for ln in r["lines"]]
        Path(args.out).write_text("\n".join(table) + "\n\nDecisions (rejected or measured, then counts):\n\n"
                                  + "\n".join(details) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
