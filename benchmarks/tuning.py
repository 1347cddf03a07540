"""Autotuning on CPU: untuned vs tuned kernels, vs torch eager and the library call,
random vs evolutionary search, and what fingerprints / functional hashes skip.

    python benchmarks/tuning.py                          # every case, 8 trials each
    python benchmarks/tuning.py --cases mm512,ln_gelu --trials 16 --workers 1

Per case (one kernel op) and strategy (evolutionary, random), a fresh tuning
database: the tuner measures the default schedule and the extern library
candidate first, then ``--trials`` candidates in all. Reported: default and
best latency (runner medians), the library candidate, torch eager timed in
this process, trials until the best-so-far is within 5% of the final best,
duplicates skipped by fingerprint (count and estimated share of wall time
saved). Finally every case is "tuned" again as a differently named kernel of
another model: the functional hash finds the records and nothing is built or
measured (the whole tuning time is saved). Writes a markdown table to
``benchmarks/results/tuning-cpu-<date>.md``. The machine may be shared: say
so next to the numbers.
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

from tilefx.ir import DType, GraphBuilder, Op, TensorType, Value  # noqa: E402
from tilefx.ir.graph import freeze_attrs  # noqa: E402


def _f32(*shape: int) -> TensorType:
    return TensorType(DType.float32, shape)


def _kernel(kind: str, types: list[TensorType], body: Callable, name: str) -> Op:
    b = GraphBuilder(name)
    outs = body(b, *[b.input(t, f"a{i}") for i, t in enumerate(types)])
    outs = [outs] if isinstance(outs, Value) else list(outs)
    g = b.finish(outs)
    return Op("kernel", tuple(Value(f"x{i}", t) for i, t in enumerate(types)),
              tuple(Value(f"y{i}", v.type) for i, v in enumerate(outs)),
              freeze_attrs({"kind": kind, "name": name}), g)


def _mm(n: int) -> tuple[Op, Callable, list]:
    op = _kernel("contraction", [_f32(n, n), _f32(n, n)], lambda b, x, w: b.op("matmul", x, w),
                 f"matmul{n}")
    return op, lambda x, w: x @ w, [(n, n), (n, n)]


def _conv() -> tuple[Op, Callable, list]:
    op = _kernel("contraction", [_f32(1, 64, 56, 56), _f32(64, 64, 3, 3)],
                 lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1)), "conv3x3_64")
    return op, lambda x, w: F.conv2d(x, w, padding=1), [(1, 64, 56, 56), (64, 64, 3, 3)]


def _dwconv() -> tuple[Op, Callable, list]:
    op = _kernel("contraction", [_f32(1, 96, 56, 56), _f32(96, 1, 3, 3)],
                 lambda b, x, w: b.op("conv2d", x, w, padding=(1, 1), groups=96), "dwconv3x3_96")
    return op, lambda x, w: F.conv2d(x, w, padding=1, groups=96), [(1, 96, 56, 56), (96, 1, 3, 3)]


def _ln_gelu() -> tuple[Op, Callable, list]:
    op = _kernel("reduction", [_f32(512, 768), _f32(768), _f32(768)],
                 lambda b, x, w, c: b.op("gelu", b.op("layer_norm", x, w, c, normalized_ndim=1),
                                         approximate="none"), "layernorm_gelu")
    return op, lambda x, w, c: F.gelu(F.layer_norm(x, (768,), w, c)), [(512, 768), (768,), (768,)]


CASES: dict[str, Callable[[], tuple[Op, Callable, list]]] = {
    "mm512": lambda: _mm(512), "mm1024": lambda: _mm(1024), "conv3x3": _conv,
    "dwconv": _dwconv, "ln_gelu": _ln_gelu}


def eager_seconds(fn: Callable, shapes: list, repeats: int = 20) -> float:
    args = [torch.randn(s) for s in shapes]
    with torch.no_grad():
        for _ in range(3):
            fn(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def trials_to_95(history: list[float]) -> int | None:
    finite = [h for h in history if h < float("inf")]
    if not finite:
        return None
    final = finite[-1]
    for i, h in enumerate(history):
        if h <= final / 0.95:
            return i + 1
    return None


def _ms(s: float | None) -> str:
    return f"{s * 1e3:.3f}" if s else "-"


def run_case(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tilefx.autotune.tuner import TuneOptions, Tuner
    from tilefx.codegen.target import Target

    op, eager, shapes = CASES[name]()
    target = Target.host_cpu()
    row: dict[str, Any] = {"case": name, "eager": eager_seconds(eager, shapes)}
    for strategy in args.strategies:
        db = str(workdir / f"{name}-{strategy}.db")
        opts = TuneOptions(trials=args.trials, strategy=strategy, batch=args.batch,
                           workers=args.workers, db_path=db, seed=args.seed,
                           progress=not args.no_progress, repeats=args.repeats)
        tuner = Tuner(target, opts)
        try:
            res = tuner.tune_kernel(op)
        finally:
            tuner.close()
        row[strategy] = res
        if res.interrupted:
            break
    # another model's kernel with the same computation: found by functional hash
    first = row[args.strategies[0]]
    renamed = Op(op.name, op.inputs, op.results, freeze_attrs({"kind": op.attr("kind"),
                                                               "name": "other_model_kernel"}),
                 op.body)
    tuner = Tuner(target, TuneOptions(trials=args.trials, workers=0, progress=False,
                                      db_path=str(workdir / f"{name}-{args.strategies[0]}.db")))
    t0 = time.perf_counter()
    again = tuner.tune_kernel(renamed)
    tuner.close()
    row["rehash"] = (again.from_db, first.trials, time.perf_counter() - t0, first.seconds)
    return row


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, target: Any) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    ev, rnd = args.strategies[0], (args.strategies[1] if len(args.strategies) > 1 else None)
    out = [f"# tilefx autotuning on CPU ({datetime.date.today()})", "",
           f"Machine: {cpu}, {os.cpu_count()} logical cores visible, target `{target.key()}`; "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads). "
           f"**Shared machine: other jobs ran at the same time, numbers are noisy.**", "",
           f"Command: `python benchmarks/tuning.py --trials {args.trials} --cases "
           f"{','.join(args.cases)}` ({args.trials} measured candidates per kernel and strategy, "
           "default schedule and library candidate included).", "",
           f"| case | default ms | tuned ms ({ev}) | speedup | library ms | torch eager ms "
           f"| tuned / eager | trials to 95% {ev} | " + (f"tuned ms ({rnd}) | trials to 95% "
                                                          f"{rnd} | " if rnd else "")
           + "dup skipped | wall saved | failed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if rnd else "")
           + "---:|---:|---:|"]
    for r in rows:
        e = r[ev]
        sp = f"{e.speedup:.2f}x" if e.speedup else "-"
        ratio = f"{e.best_seconds / r['eager']:.2f}" if e.best_seconds else "-"
        res_all = [r[s] for s in args.strategies if s in r]
        dups = sum(x.dup_skipped for x in res_all)
        saved = sum(x.saved_seconds for x in res_all)
        spent = sum(x.seconds for x in res_all)
        failed = sum(n for x in res_all for s, n in x.statuses.items() if s != "ok")
        line = (f"| {r['case']} | {_ms(e.default_seconds)} | {_ms(e.best_seconds)} | {sp} | "
                f"{_ms(e.library_seconds)} | {_ms(r['eager'])} | {ratio} | "
                f"{trials_to_95(e.history) or '-'} | ")
        if rnd and rnd in r:
            line += f"{_ms(r[rnd].best_seconds)} | {trials_to_95(r[rnd].history) or '-'} | "
        line += (f"{dups} | {saved:.1f}s ({100 * saved / max(spent + saved, 1e-9):.0f}%) | "
                 f"{failed} |")
        out.append(line)
    out += ["", "Functional hash: each case tuned again as a renamed kernel of another model.", "",
            "| case | found in db | candidates not rebuilt/remeasured | lookup s | tuning s saved |",
            "|---|---|---:|---:|---:|"]
    for r in rows:
        hit, n, lookup, saved = r["rehash"]
        out.append(f"| {r['case']} | {'yes' if hit else 'no'} | {n if hit else 0} | "
                   f"{lookup:.2f} | {saved if hit else 0:.1f} |")
    out += ["", "Best schedules:", ""]
    for r in rows:
        out.append(f"- {r['case']}: `{r[ev].best}`")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--strategies", default="evolutionary,random")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
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
