"""Time the model zoo: PyTorch eager vs torch.compile (inductor) vs tilefx, in one process.

    python benchmarks/run.py                                  # every model, CPU
    python benchmarks/run.py --models mlp,gpt2_block --repeats 50
    python benchmarks/run.py --tune 16 --models mlp        # + tilefx tuned, 16 trials/kernel

For each model: build it, make its benchmark inputs (``bench_batch``, bench
image/sequence size), compile with inductor and tilefx and check both against
eager on fresh inputs, then time all three: warm-up calls, then the median of
``--repeats`` calls each, taken in interleaved rounds (``time.perf_counter``,
torch's default thread count), and print one table row. The
table, with the machine and the command, is written to ``--output``
(``benchmarks/results/<target>-<date>.md`` by default). A runner that fails is
reported in its row; it never stops the other models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Set before anything imports TVM: pinned TVM threads fight with torch's pool.
os.environ.setdefault("TVM_BIND_THREADS", "0")



ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `tilefx` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from benchmarks.models import ZOO, ZooModel  # noqa: E402
from benchmarks.stats import compile_stats, steady_malloc  # noqa: E402

steady_malloc()

RTOL, ATOL = 1e-3, 1e-4
ROUNDS = 5  # timing rounds; see time_interleaved


@dataclass
class Row:
    model: str
    batch: int
    ms: dict[str, float] = field(default_factory=dict)       # runner -> median ms
    compile_s: dict[str, float] = field(default_factory=dict)
    check: dict[str, str] = field(default_factory=dict)      # runner -> "ok" / "max err ..."
    errors: dict[str, str] = field(default_factory=dict)     # runner -> one-line error
    kernels: str = "-"
    fallbacks: str = "-"


def device_of(target: str) -> torch.device:
    return torch.device("cuda" if target.split(":")[0] == "cuda" else "cpu")


def synchronize(device: torch.device) -> None:
    # CUDA calls return before the kernels finish: wait, or the clock measures the launch only.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: dict[str, Callable[..., Any]], inputs: tuple, warmup: int,
                     repeats: int) -> dict[str, float]:
    """Median ms per runner, the ``repeats`` calls of each split into rounds taken in turn.

    On a shared machine the load drifts over a run; interleaving the runners
    makes the drift hit all of them alike instead of whichever ran last. Each
    round starts with one untimed call, so one runner's leftover threads (TVM's
    pool spins a while after a parallel job) are not billed to the next.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn(*inputs)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    device = inputs[0].device
    per_round = max(1, -(-repeats // ROUNDS))
    for _ in range(ROUNDS):
        for name, fn in runners.items():
            fn(*inputs)
            synchronize(device)
            for _ in range(per_round):
                t = time.perf_counter()
                fn(*inputs)
                synchronize(device)
                samples[name].append(time.perf_counter() - t)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def compare(out: Any, ref: Any) -> str:
    got, want = tree_leaves(out), tree_leaves(ref)
    if len(got) != len(want):
        return f"{len(got)} outputs, eager has {len(want)}"
    errors = []
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return f"shape {tuple(g.shape)} != {tuple(w.shape)}"
        if not torch.allclose(g, w, rtol=RTOL, atol=ATOL):  # NaN never compares close
            errors.append(float((g.double() - w.double()).abs().max()))
    return "ok" if not errors else f"MISMATCH max err {max(errors):.2e}"


def compile_inductor(model: torch.nn.Module, target: str) -> Callable[..., Any]:
    return torch.compile(model)


def compile_tilefx(model: torch.nn.Module, target: str) -> Callable[..., Any]:
    import tilefx

    return tilefx.compile(model, target=target)


def compile_tilefx_tuned(model: torch.nn.Module, target: str, tune: int | str) -> Callable[..., Any]:
    import tilefx

    return tilefx.compile(model, target=target, tune=tune)


COMPILERS: dict[str, Callable[[torch.nn.Module, str], Callable[..., Any]]] = {
    "inductor": compile_inductor,
    "tilefx": compile_tilefx,
}
TUNED = "tilefx_tuned"  # with --tune N: tilefx.compile(tune=N), beside untuned tilefx


def bench_model(entry: ZooModel, batch: int, args: argparse.Namespace) -> Row:
    row = Row(entry.name, batch)
    device = device_of(args.target)
    model = entry.build().to(device)
    inputs = tuple(t.to(device) for t in entry.make_inputs(batch, seed=0, bench=True))
    # Checked on inputs never seen while compiling.
    fresh = tuple(t.to(device) for t in entry.make_inputs(batch, seed=1, bench=True))
    runners: dict[str, Callable[..., Any]] = {"eager": model}
    with torch.no_grad():
        ref = model(*fresh)
        for name in args.compilers:
            try:
                t = time.perf_counter()
                fn = compile_tilefx_tuned(model, args.target, args.tune) if name == TUNED \
                    else COMPILERS[name](model, args.target)
                fn(*inputs)  # compilers may finish their work on the first call
                row.compile_s[name] = time.perf_counter() - t
                row.check[name] = compare(fn(*fresh), ref)
                runners[name] = fn
                if name == "tilefx":
                    stats = compile_stats(fn)
                    row.kernels = str(stats.kernels) + (f" ({stats.interpreted} interp)"
                                                        if stats.interpreted else "")
                    row.fallbacks = str(stats.fallbacks)
            except Exception as e:  # one broken compiler must not hide the others' numbers
                row.errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:160]
                if args.verbose:
                    traceback.print_exc()
        try:
            row.ms = time_interleaved(runners, inputs, args.warmup, args.repeats)
        except Exception as e:  # a runner that compiled but fails on a later call
            row.errors["timing"] = f"{type(e).__name__}: {e}".splitlines()[0][:160]
            if args.verbose:
                traceback.print_exc()
    return row


def fmt_ms(row: Row, name: str) -> str:
    if name in row.errors:
        return "error"
    ms = row.ms.get(name)
    if ms is None:
        return "-"
    return f"{ms:.3f}" + ("" if row.check.get(name, "ok") == "ok" else " (wrong)")


def speedup(row: Row, base: str, name: str) -> str:
    a, b = row.ms.get(base), row.ms.get(name)
    return f"{a / b:.2f}x" if a and b and name not in row.errors else "-"


def table(rows: list[Row]) -> str:
    tuned = any(TUNED in r.compile_s or TUNED in r.errors for r in rows)
    header = ["model", "batch", "eager ms", "inductor ms", "tilefx ms", "tilefx/eager",
              "tilefx/inductor"]
    header += ["tilefx tuned ms", "tuned/eager", "tuned/untuned"] if tuned else []
    header += ["kernels", "fallbacks",
               "compile s (tilefx / inductor" + (" / tilefx tuned)" if tuned else ")")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        compile_s = " / ".join(f"{r.compile_s[n]:.1f}" if n in r.compile_s else "-"
                               for n in ("tilefx", "inductor", TUNED)[:3 if tuned else 2])
        cells = [r.model, str(r.batch), fmt_ms(r, "eager"), fmt_ms(r, "inductor"), fmt_ms(r, "tilefx"),
                 speedup(r, "eager", "tilefx"), speedup(r, "inductor", "tilefx")]
        if tuned:
            cells += [fmt_ms(r, TUNED), speedup(r, "eager", TUNED), speedup(r, "tilefx", TUNED)]
        cells += [r.kernels, r.fallbacks, compile_s]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        for name, check in r.check.items():
            if check != "ok":
                out.append(f"- {r.model}: {name} output differs from eager ({check}, rtol {RTOL}, atol {ATOL})")
        for name, err in r.errors.items():
            out.append(f"- {r.model}: {name} failed: {err}")
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OtherLoad:
    """The share of the machine's CPU time that other processes used while we ran.

    On a shared machine this is what makes numbers noisy (multi-threaded eager
    suffers most: its threads wait for each other at every barrier). Load
    average can't tell our own threads from the others'; /proc/stat minus our
    own rusage can.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        ours = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # inductor's compiler processes
        own = ours.ru_utime + ours.ru_stime + kids.ru_utime + kids.ru_stime
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own

    def describe(self) -> str:
        end = self._sample()
        if self.start is None or end is None:
            return "unknown"
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        share = max(0.0, others) / (wall * (os.cpu_count() or 1))
        return f"{100 * share:.0f}% of all cores"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tilefx_version() -> str:
    import tilefx

    return tilefx.__version__


def machine_lines(args: argparse.Namespace, other_load: OtherLoad) -> list[str]:
    gpu = []
    if device_of(args.target).type == "cuda":
        gpu = [f"- gpu: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"]
    return [*gpu,
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`",
        f"- target: {args.target}; cpu: {cpu_model()}, {os.cpu_count()} logical cores, "
        f"torch threads {torch.get_num_threads()}; other processes' CPU use during the run: {other_load.describe()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, apache-tvm {version('apache-tvm')}, "
        f"apache-tvm-ffi {version('apache-tvm-ffi')}, tilefx {tilefx_version()}",
        f"- timing: {args.warmup} warm-up calls each, then the median of {args.repeats} calls per runner taken "
        f"in {ROUNDS} interleaved rounds; fp32, torch.no_grad; "
        f"outputs checked against eager on fresh inputs (rtol {RTOL}, atol {ATOL})",
        "- compile s: first call included, with whatever kernel caches the machine already had "
        "(`TILEFX_CACHE_DIR`, inductor's); a cold cache costs more",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(ZOO), help=f"comma-separated, from: {', '.join(ZOO)}")
    p.add_argument("--batch", type=int, default=None, help="override every model's bench batch")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--target", default="cpu", help="tilefx target: cpu, cpu:<mcpu> or cuda (runs everything on GPU)")
    p.add_argument("--compilers", default="inductor,tilefx", help="subset of: inductor, tilefx")
    p.add_argument("--output", type=Path, default=None,
                   help="markdown file (default benchmarks/results/<target>-<date>.md); '-' for none")
    p.add_argument("--tune", default=None, metavar="N",
                   help="also time tilefx.compile(tune=N): N trials per kernel, or a time "
                        "budget per kernel such as 30s (column 'tilefx tuned', beside untuned)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.tune is not None:
        args.tune = int(args.tune) if args.tune.isdigit() else args.tune
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {unknown}; the zoo has {list(ZOO)}")
    args.compilers = [c.strip() for c in args.compilers.split(",") if c.strip()]
    bad = [c for c in args.compilers if c not in COMPILERS]
    if bad:
        p.error(f"unknown compiler(s) {bad}; choose from {list(COMPILERS)}")
    if args.tune and "tilefx" in args.compilers:
        args.compilers.append(TUNED)
    if args.output is None:
        args.output = ROOT / "benchmarks" / "results" / f"{args.target}-{dt.date.today().isoformat()}.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    other_load = OtherLoad()
    rows = []
    for name in args.models:
        entry = ZOO[name]
        batch = args.batch or entry.bench_batch
        print(f"[bench] {name} batch {batch} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(entry, batch, args))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(rows)
    problems = notes(rows)
    print(text)
    for line in problems:
        print(line)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        body = ["# tilefx benchmark", "", *machine_lines(args, other_load), "", text, ""]
        if problems:
            body += ["## Problems", "", *problems, ""]
        args.output.write_text("\n".join(body))
        print(f"wrote {args.output}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
