"""Autotuning on CPU: untuned vs tuned kernels, vs torch eager and the library call,
random vs evolutionary search, and what fingerprints / functional hashes skip.

    python benchmarks/tuning.py                          # every case, 8 trials, 3 seeds
    python benchmarks/tuning.py --cases mm512,ln_gelu --trials 16 --seeds 2

Per case (one kernel op), strategy (evolutionary, random) and seed
(``--seeds``), a fresh tuning database: the tuner measures the default
schedule and the extern library candidate first, then ``--trials``
candidates in all. Trials to 95% count until the best-so-far is within 5% of
the best that *any* run of the case found (median over seeds), so a strategy
that stalls early scores badly. Then default, tuned and torch (the kernel body
as bare torch calls, timed in the runner like a TVM candidate: the library
call for matmul/conv, eager's unfused ops for a fused kernel) are measured
again in interleaved rounds, so load drift hits them alike. Also reported:
duplicates skipped by fingerprint (count and estimated share of wall time
saved), and every case "tuned" again as a differently named
kernel of another model: the functional hash finds the records and nothing is
built or measured. Writes a markdown table to
``benchmarks/results/tuning-cpu-<date>.md``. The machine may be shared: the
load average is printed next to the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TVM_BIND_THREADS", "0")


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.stats import steady_malloc  # noqa: E402

from tilefx.ir import DType, Op, TensorType  # noqa: E402
from tilefx.ir.builder import kernel_op  # noqa: E402
from tilefx.ir.graph import freeze_attrs  # noqa: E402

steady_malloc()


def _f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)


def _mm(n: int) -> tuple[Op, Callable, list]:
    op = kernel_op("contraction", [_f32(n, n), _f32(n, n)], lambda b, x, w: b.op("matmul", x, w),
                   f"matmul{n}")
    return op, lambda x, w: x @ w, [(n, n), (n, n)]


def _conv() -> tuple[Op, Callable, list]:
    op = kernel_op("contraction", [_f32(1, 64, 56, 56), _f32(64, 64, 3, 3)],
                 lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1)), "conv3x3_64")
    return op, lambda x, w: F.conv2d(x, w, padding=1), [(1, 64, 56, 56), (64, 64, 3, 3)]


def _dwconv() -> tuple[Op, Callable, list]:
    op = kernel_op("contraction", [_f32(1, 96, 56, 56), _f32(96, 1, 3, 3)],
                 lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1), groups=96), "dwconv3x3_96")
    return op, lambda x, w: F.conv2d(x, w, padding=1, groups=96), [(1, 96, 56, 56), (96, 1, 3, 3)]


def _ln_gelu() -> tuple[Op, Callable, list]:
    op = kernel_op("reduction", [_f32(512, 768), _f32(768), _f32(768)],
                 lambda b, x, w, c: b.op("gelu", b.op("layer_norm", x, w, c, normalized_ndim=1),
                                         approximate="none"), "layernorm_gelu")
    return op, lambda x, w, c: F.gelu(F.layer_norm(x, (768,), w, c)), [(512, 768), (768,), (768,)]


CASES: dict[str, Callable[[], tuple[Op, Callable, list]]] = {
    "mm512": lambda: _mm(512), "mm1024": lambda: _mm(1024), "conv3x3": _conv,
    "dwconv": _dwconv, "ln_gelu": _ln_gelu}


def trials_to(history: list[float], goal: float) -> int | None:
    """Trials until the best-so-far is within 5% of ``goal`` (None: never)."""
    for i, h in enumerate(history):
        if h <= goal / 0.95:
            return i + 1
    return None


def _ms(s: float | None) -> str:
    return f"{s * 1e3:.3f}" if s else "-"


def run_case(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tilefx.autotune.tuner import TuneOptions, Tuner
    from tilefx.codegen.target import Target

    op = CASES[name]()[0]
    target = Target.host_cpu()
    row: dict[str, Any] = {"case": name, "op": op, "runs": {}}
    for strategy in args.strategies:
        for seed in range(args.seeds):
            db = str(workdir / f"{name}-{strategy}-{seed}.db")
            opts = TuneOptions(trials=args.trials, strategy=strategy, batch=args.batch,
                               workers=args.workers, db_path=db, seed=seed,
                               progress=not args.no_progress, repeats=args.repeats)
            tuner = Tuner(target, opts)
            try:
                res = tuner.tune_kernel(op)
            finally:
                tuner.close()
            row["runs"].setdefault(strategy, []).append(res)
            if res.interrupted:
                return row
    # another model's kernel with the same computation: found by functional hash
    first = row["runs"][args.strategies[0]][0]
    renamed = Op(op.name, op.inputs, op.results, freeze_attrs({"kind": op.attr("kind"),
                                                               "name": "other_model_kernel"}),
                 op.body)
    tuner = Tuner(target, TuneOptions(trials=args.trials, workers=0, progress=False,
                                      db_path=str(workdir / f"{name}-{args.strategies[0]}-0.db")))
    t0 = time.perf_counter()
    again = tuner.tune_kernel(renamed)
    tuner.close()
    row["rehash"] = (again.from_db, first.trials, time.perf_counter() - t0, first.seconds)
    row["final"] = final_comparison(row, args, target)
    return row


def final_comparison(row: dict[str, Any], args: argparse.Namespace, target: Any) -> dict:
    """Default, tuned and torch, measured again in turns, in the runner.

    The tuning runs took minutes under a drifting load, so the default
    schedule, the best TVM schedules of every run (up to 3 distinct; "tuned"
    is the fastest of them and the default) and torch are measured again,
    ``--rounds`` rounds in turn, each the median of ``--repeats`` windows;
    shown is the median over rounds, with the fastest window beside it.
    "torch" is the kernel body as bare torch calls (``LibraryKernel``) in the
    runner's torch-only child: for a contraction the library candidate, for a
    fused kernel eager's unfused ops. It is not timed in this process, where
    TVM has built kernels (see ``benchmarks.stats.steady_malloc``).
    """
    from tilefx.codegen.measure import (EXTERN_ARTIFACT, BuildResult, LocalBuilder,
                                         LocalRunner, Workload)
    from tilefx.codegen.space import EXTERN, is_extern
    from tilefx.codegen.tvm import default_schedule

    op = row["op"]
    results = [r for runs in row["runs"].values() for r in runs]
    bests = sorted((r for r in results if r.best is not None and r.best_seconds
                    and not is_extern(r.best)), key=lambda r: r.best_seconds)
    schedules = {"default": default_schedule(op, target)}
    for r in bests:
        if r.best not in schedules.values() and len(schedules) < 4:
            schedules[f"tuned{len(schedules)}"] = r.best
    wl = Workload(op, target, (), results[0].workload_key)
    builds = dict(zip(schedules, LocalBuilder(workers=0).build(wl, list(schedules.values()))))
    builds["torch"] = BuildResult(EXTERN, "ok", EXTERN_ARTIFACT)
    runner = LocalRunner(repeats=args.repeats, min_repeat_seconds=0.005)
    samples: dict[str, list[list[float]]] = {k: [] for k in builds}
    try:
        for i in range(args.rounds):
            for name in (list(builds) if i % 2 == 0 else list(builds)[::-1]):
                r = runner.run(wl, [builds[name]])[0]
                if r.status == "ok":
                    samples[name].append(list(r.samples))
    finally:
        runner.close()
    out: dict[str, Any] = {}
    for name, rounds in samples.items():
        if rounds:
            out[name] = (statistics.median(statistics.median(x) for x in rounds),
                         min(min(x) for x in rounds))
    tvm = [k for k in schedules if k in out]
    if tvm:
        fastest = min(tvm, key=lambda k: out[k][0])
        out["tuned"], out["tuned_schedule"] = out[fastest], schedules[fastest]
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _t95(runs: list[Any], goal: float, budget: int) -> str:
    """'median (per seed)' of trials to 95% of ``goal``; '>N' where never reached."""
    got = [trials_to(r.history, goal) for r in runs]
    keyed = [t if t is not None else budget + 1 for t in got]
    med = statistics.median(keyed)
    each = ",".join(str(t) if t is not None else f">{budget}" for t in got)
    return (f"{med:g}" if med <= budget else f">{budget}") + f" ({each})"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, target: Any) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    strategies = args.strategies
    out = [f"# tilefx autotuning on CPU ({datetime.date.today()})", "",
           f"Machine: {cpu}, {os.cpu_count()} logical cores visible, target `{target.key()}`; "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads). Load average at the "
           f"end (1/5/15 min): {load}. **On a shared machine the numbers are noisy.**", "",
           f"Command: `python benchmarks/tuning.py {' '.join(sys.argv[1:])}` "
           f"({args.trials} measured candidates per kernel, strategy and seed, default schedule "
           f"and library candidate included; {args.seeds} seeds per strategy).", "",
           "Latencies: after tuning, the default schedule, the best TVM schedules of all runs "
           "(tuned: the fastest of them and the default) and torch (the kernel body as bare "
           "torch calls in the runner's torch-only child: for matmul/conv the library call, "
           "for LayerNorm+GELU eager's unfused ops) are measured again in "
           f"{args.rounds} interleaved rounds, each the median of the runner's timing windows; "
           "the median over rounds is shown. For contractions tilefx runs min(tuned, torch).",
           "",
           "| case | default ms | tuned ms | tuned speedup | torch ms | tuned / torch "
           "| tilefx (best of both) / torch | "
           + " | ".join(f"trials to 95%: {s}" for s in strategies)
           + " | dup skipped | wall saved | failed |",
           "|---|" + "---:|" * (6 + len(strategies) + 3)]
    for r in rows:
        f = r.get("final", {})
        ms = {k: v[0] for k, v in f.items() if isinstance(v, tuple)}
        res_all = [x for runs in r["runs"].values() for x in runs]
        # a common goal: the best any run found, so a stalled strategy scores badly
        goal = min((x.best_seconds for x in res_all if x.best_seconds), default=None)
        dups = sum(x.dup_skipped for x in res_all)
        saved = sum(x.saved_seconds for x in res_all)
        spent = sum(x.seconds for x in res_all)
        failed = sum(n for x in res_all for st, n in x.statuses.items() if st != "ok")
        contraction = r["op"].attr("kind") == "contraction"
        best_of = min((v for k, v in ms.items() if k == "tuned" or k == "torch" and contraction),
                      default=None)
        t95 = [(_t95(r["runs"][s], goal, args.trials) if goal and s in r["runs"] else "-")
               for s in strategies]
        out.append(f"| {r['case']} | {_ms(ms.get('default'))} | {_ms(ms.get('tuned'))} | "
                   f"{_ratio(ms.get('default'), ms.get('tuned'))}x | {_ms(ms.get('torch'))} | "
                   f"{_ratio(ms.get('tuned'), ms.get('torch'))} | "
                   f"{_ratio(best_of, ms.get('torch'))} | " + " | ".join(t95) + " | "
                   f"{dups} | {saved:.1f}s ({100 * saved / max(spent + saved, 1e-9):.0f}%) | "
                   f"{failed} |")
    out += ["", "Fastest window of the same measurements (ms; less sensitive to load):", "",
            "| case | default | tuned | torch |", "|---|---:|---:|---:|"]
    for r in rows:
        f = r.get("final", {})
        out.append(f"| {r['case']} | " + " | ".join(
            _ms(f[k][1]) if k in f else "-" for k in ("default", "tuned", "torch"))
            + " |")
    out += ["", "Best found per strategy and seed (ms, tuner's own measurements):", "",
            "| case | " + " | ".join(strategies) + " |", "|---|" + "---:|" * len(strategies)]
    for r in rows:
        out.append(f"| {r['case']} | " + " | ".join(
            ", ".join(_ms(x.best_seconds) for x in r["runs"].get(s, [])) for s in strategies)
            + " |")
    out += ["", "Functional hash: each case tuned again as a renamed kernel of another model.", "",
            "| case | found in db | candidates not rebuilt/remeasured | lookup s | tuning s saved |",
            "|---|---|---:|---:|---:|"]
    for r in rows:
        if "rehash" not in r:
            continue
        hit, n, lookup, saved = r["rehash"]
        out.append(f"| {r['case']} | {'yes' if hit else 'no'} | {n if hit else 0} | "
                   f"{lookup:.2f} | {saved if hit else 0:.1f} |")
    out += ["", "Best TVM schedules:", ""]
    for r in rows:
        out.append(f"- {r['case']}: `{r.get('final', {}).get('tuned_schedule')}`")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--strategies", default="evolutionary,random")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3, help="search seeds per strategy (median)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the final timing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; have {', '.join(CASES)}")
    from tilefx.codegen.target import Target

    rows = []
    with tempfile.TemporaryDirectory(prefix="tilefx-tuning-") as tmp:
        for name in args.cases:
            print(f"== {name}", flush=True)
            rows.append(run_case(name, args, Path(tmp)))
    text = markdown(rows, args, Target.host_cpu())
    out = Path(args.out) if args.out else \
        ROOT / "benchmarks" / "results" / f"tuning-cpu-{datetime.date.today()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
