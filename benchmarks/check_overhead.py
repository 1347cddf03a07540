"""What checked builds cost at compile time: cold compiles of the zoo with checks on and off.

    python benchmarks/check_overhead.py                        # every model, 1 round
    python benchmarks/check_overhead.py --models mlp,resnet18 --rounds 2

Every compile runs in a fresh process with a fresh, empty ``TILEFX_CACHE_DIR`` (no
kernel disk cache, no tuning database, nothing memoized), so each builds every kernel
from nothing: the cold compile that pays for the checks. Per model and round the two
compiles run back to back, in alternating order, so load drift on a shared machine hits
both alike. Reported per model: compile wall time (``tilefx.compile`` + the first call,
which compiles) with checks off and on, the difference, and the time the compile record
gives the ``check`` stage (the reference run and one kernel run per kernel; measured
inside the compile, so it does not depend on the other's noise). A markdown table with
the machine and the command goes to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _one(model_name: str) -> dict:
    """In the child: compile one zoo model once (checks per TILEFX_CHECK_BUILDS)."""
    import torch

    import tilefx
    from benchmarks.models import ZOO

    entry = ZOO[model_name]
    model = entry.build().eval()
    inputs = entry.make_inputs(entry.bench_batch, 0, bench=True)
    t0 = time.perf_counter()
    cm = tilefx.compile(model)
    with torch.no_grad():
        cm(*inputs)
    seconds = time.perf_counter() - t0
    rec = cm.records[-1]
    return {"seconds": seconds, "stages": rec.seconds, "kernels": len(rec.kernels),
            "rejected": sum(k.check.startswith("rejected") for k in rec.kernels),
            "unchecked": sum(k.check.startswith("unchecked") for k in rec.kernels)}


def _run_child(model_name: str, check: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="tfx-check-overhead-") as cache:
        env = {**os.environ, "TILEFX_CACHE_DIR": cache, "TILEFX_CHECK_BUILDS": "1" if check else "0"}
        out = subprocess.run([sys.executable, __file__, "--child", model_name], env=env,
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{model_name} (check={check}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs usable, load {os.getloadavg()[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.models import ZOO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--rounds", type=int, default=1, help="compiles per model and setting")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" /
                                           f"checked-builds-cpu-{dt.date.today()}.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.child)))
        return 0

    rows = ["| model | kernels | compile s, checks off | compile s, checks on | difference "
            "| check stage s | check stage share | rejected | unchecked |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total_off = total_on = total_check = 0.0
    for name in args.models.split(","):
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for check in ((False, True) if r % 2 == 0 else (True, False)):
                runs[check].append(_run_child(name, check))
        off = statistics.median(x["seconds"] for x in runs[False])
        on = statistics.median(x["seconds"] for x in runs[True])
        chk = statistics.median(x["stages"].get("check", 0.0) for x in runs[True])
        last = runs[True][-1]
        total_off, total_on, total_check = total_off + off, total_on + on, total_check + chk
        rows.append(f"| {name} | {last['kernels']} | {off:.2f} | {on:.2f} | "
                    f"{(on - off) / off:+.1%} | {chk:.2f} | {chk / on:.1%} | {last['rejected']} "
                    f"| {last['unchecked']} |")
        print(rows[-1], flush=True)
    rows.append(f"| **all** | | {total_off:.2f} | {total_on:.2f} | "
                f"{(total_on - total_off) / total_off:+.1%} | {total_check:.2f} | "
                f"{total_check / total_on:.1%} | | |")
    print(rows[-1])
    text = "\n".join([
        f"# Checked builds: compile-time overhead (CPU, {dt.date.today()})", "",
        f"Machine: {_machine()}; Python {platform.python_version()}.", "",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`", "",
        "Each compile: a fresh process and an empty `TILEFX_CACHE_DIR` (cold: every kernel "
        "built by LLVM), `tilefx.compile(model)` then the first call at the zoo's bench "
        f"inputs; median of {args.rounds} round(s), checks off/on in alternating order. "
        "*check stage*: the time the compile record gives the checks (reference run + one "
        "kernel run per kernel, database writes).", "", *rows, ""])
    Path(args.output).write_text(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
