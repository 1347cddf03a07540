"""What a warm tuning database costs at compile time: tuned recompile vs untuned compile.

    python benchmarks/warm_compile.py --tune 12                  # the default tuning database
    python benchmarks/warm_compile.py --tune 4 --db /tmp/t.db --models mlp

Per zoo model: one compile with ``tune=N`` fills the database (tunes whatever it lacks,
remembers workload keys and the whole-graph decision), then, timed, an untuned compile and
a tuned recompile (both with the built kernels in the disk cache). The goal of issue 3:
the tuned recompile measures nothing and costs < 1 s more than the untuned one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import tilefx  # noqa: E402
from benchmarks.models import ZOO  # noqa: E402
from tilefx.compiler.options import CompileOptions  # noqa: E402


def _compile_seconds(model: torch.nn.Module, inputs: tuple, options: CompileOptions) -> tuple[float, object]:
    t0 = time.perf_counter()
    cm = tilefx.compile(model, options=options)
    with torch.no_grad():
        cm(*inputs)  # compiles here, for these shapes
    return time.perf_counter() - t0, cm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--tune", type=int, default=12, help="trials per kernel")
    p.add_argument("--db", default=None, help="tuning database (default: the user cache's)")
    args = p.parse_args(argv)
    print("| model | untuned compile s | tuned recompile s | extra s | kernels from db | "
          "candidates measured | whole-graph check |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        entry = ZOO[name]
        model = entry.build().eval()
        inputs = entry.make_inputs(entry.bench_batch, 0, bench=True)
        tuned = CompileOptions(tune_trials=args.tune, tune_db=args.db)
        _compile_seconds(model, inputs, tuned)  # fills the database where it lacks anything
        plain_s, _ = _compile_seconds(model, inputs, CompileOptions())
        warm_s, cm = _compile_seconds(model, inputs, tuned)
        rec = cm.records[-1]
        from_db = sum(1 for t in rec.tuning if t.from_db)
        measured = sum(t.trials for t in rec.tuning)
        check = "from db" if "decided earlier" in (rec.tuning_check or "") else "timed"
        print(f"| {name} | {plain_s:.2f} | {warm_s:.2f} | {warm_s - plain_s:+.2f} | "
              f"{from_db}/{len(rec.tuning)} | {measured} | {check} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
