"""What one tuning trial costs the system, part by part, and the zoo's tuning wall time
on no Ray, a 1-worker and a 2-worker local Ray: the inputs of the scaling model in
``benchmarks/results/distributed-cpu-<date>.md``.

    python benchmarks/distributed.py                 # ~8 min on 2 shared cores
    python benchmarks/distributed.py --quick         # fewer repetitions, zoo on ray2 only (~3 min)
    python benchmarks/distributed.py --parts db,driver --out /tmp/d.md

Parts (``--parts``):

- ``ray``: a local Ray (``ray.init(num_cpus=2)``): round trip (submit + ``ray.get``)
  of an empty task, of a task taking a measurement request and returning a
  measurement record (the sizes of the cluster runner's request and result dicts,
  and a 4 KB one), of a task returning / receiving a built kernel's bytes (the
  size of a real ``.so``, measured in ``unit``); then throughput of many tiny
  tasks, all submitted at once and through a window of 2 or 16 in flight (as the
  cluster's dispatcher keeps one task per slot), with the driver's own CPU time
  per task: at scale the workers are elsewhere and only that stays on the driver.
- ``db``: one record as the tuner commits it (``add_candidate`` +
  ``add_measurement``, two autocommit statements) to SQLite (a file in tmp) and to
  PostgreSQL 15 (the throwaway server of ``tests/storage/pg_server.py``); the same
  records batched into transactions (what a batching writer would do); records/s
  of 1, 2 and 4 writer processes (each its own workloads, as separate tuners);
  and the reads of a warm compile (``benchmarks/distributed_db.py``).
- ``driver``: on the mlp's first kernel (what ``zoo`` tunes) and on a 512^3 matmul
  (a space of 1536 schedules, so longer histories fit), with the shipped learned
  cost model: the fingerprint of one proposal (the tuner lowers every proposal
  before building), the features of one new schedule, loading a history of
  64 / 256 / 512 / 4096 records into the search (a resume), one search step
  (``propose(8)``) and one online cost-model update (``observe`` of a batch of 8).
- ``unit``: the work of one trial: TVM build and timing of real candidates of
  that matmul, in process (``backend.tuning_pair(workers=0)``), and the ``.so`` size.
- ``zoo``: ``tilefx tune``'s loop on a zoo model (default mlp at 64x1024) in a
  fresh process each: local (builder pool of 1), Ray with 1 CPU, Ray with 2 CPUs
  (a Ray this process starts with the measure resource; the tuner attaches with
  ``cluster="ray"``); capture and tuning timed apart, plus the cluster's own
  "where the time went" line.

Every time is a median with its spread (p10-p90, or min-max under 10 samples) and
this process's CPU time beside it (``benchmarks/measured.py``).
The machine may be shared: the load average before and after, and the share of
CPU other processes used, are written beside the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import pickle
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TVM_BIND_THREADS", "0")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.distributed_db import bench_db  # noqa: E402
from benchmarks.measured import Row, Timing, per_s, say, table, timed  # noqa: E402

PARTS = ("unit", "ray", "db", "driver", "zoo")
SO_BYTES_DEFAULT = 25_000  # a matmul kernel's .so, when ``unit`` did not measure one


# ------------------------------------------------------------------------ the matmul

def _matmul() -> tuple[Any, Any, Any]:
    """(kernel op, target, backend) of the 512^3 matmul that ``benchmarks/tuning.py`` tunes."""
    from benchmarks.tuning import CASES
    from tilefx.codegen.target import Target

    target = Target.host_cpu()
    return CASES["mm512"]()[0], target, target.backend()


def _timing(pairs: list[tuple[float, float]], cpu: bool = True) -> Timing:
    return Timing(tuple(w for w, _ in pairs), tuple(c for _, c in pairs) if cpu else ())


# ------------------------------------------------------------------------------- unit

def bench_unit(quick: bool, rows: list[Row]) -> int:
    """Build and time real candidates; returns the median ``.so`` size in bytes."""
    from tilefx.codegen.measure import Workload
    from tilefx.codegen.tvm.cache import cache_dir

    kernel, target, backend = _matmul()
    space = backend.space(kernel, None)
    builder, runner = backend.tuning_pair(workers=0, timeout=30.0, repeats=10,
                                          min_repeat_seconds=0.005)  # TuneOptions' defaults
    workload = Workload(kernel, target, (), "bench-mm512")
    rng = random.Random(0)
    schedules = list(dict.fromkeys([backend.default_schedule(kernel, None)] +
                                   [space.sample(rng) for _ in range(6 if quick else 14)]))
    builds: list[tuple[float, float]] = []  # (wall, CPU) of each
    runs: list[tuple[float, float]] = []
    setup: list[tuple[float, float]] = []
    sizes = []
    try:
        for i, s in enumerate(schedules):
            c0, t0 = time.process_time(), time.perf_counter()
            b = builder.build(workload, [s])[0]
            c1, t1 = time.process_time(), time.perf_counter()
            r = runner.run(workload, [b])[0]
            c2, t2 = time.process_time(), time.perf_counter()
            if b.status != "ok" or r.status != "ok":
                say(f"unit: candidate {s} {b.status}/{r.status}: {b.error or r.error}")
                continue
            builds.append((t1 - t0, c1 - c0))
            # the first run loads the workload (reference outputs); the runner is a child
            # process, so this process's CPU time says nothing of it
            (setup if i == 0 else runs).append((t2 - t1, c2 - c1))
            so = cache_dir() / f"{b.artifact}.so"
            if so.exists():
                sizes.append(so.stat().st_size)
    finally:
        builder.close()
        runner.close()
    size = int(statistics.median(sizes)) if sizes else SO_BYTES_DEFAULT
    build, run = _timing(builds), _timing(runs, cpu=False)
    rows.append(Row("unit", "TVM build of one matmul 512^3 candidate (in process)", build,
                    per_s(build.median, " builds/s a core")))
    rows.append(Row("unit", "timing of one candidate (10 repeats, >=5 ms each, isolated runner)",
                    run, per_s(run.median, " timings/s a device")))
    rows.append(Row("unit", "first timing of a kernel on a runner (workload + reference outputs)",
                    _timing(setup, cpu=False), note="once a kernel a runner process"))
    rows.append(Row("unit", f"built kernel .so size: {size / 1e3:.1f} KB (median of {len(sizes)})"))
    return size


# -------------------------------------------------------------------------------- ray

def _request(target: Any, schedule: Any, pad: int = 0) -> dict:
    """What the cluster runner sends a measuring task besides the workload (its keys)."""
    return {"version": "0.0.0", "target": target.to_json(), "schedule": schedule.to_json(),
            "fault": None, "split_caches": False, "artifact": "0" * 32, "digest": "0" * 64,
            "build_seconds": 0.12, "runner": (30.0, 10, 0.005, 300.0), "skew": None,
            "attempt": 1, "pad": "x" * pad}


def _record(pad: int = 0) -> dict:
    """What a measuring task returns (its keys, 10 samples)."""
    return {"status": "ok", "samples": [1.234e-3 + i * 1e-6 for i in range(10)], "error": "x" * pad,
            "run_seconds": 0.11, "node": "f" * 56, "exec_seconds": 0.12}


def bench_ray(quick: bool, so_bytes: int, rows: list[Row]) -> None:
    import ray

    kernel, target, backend = _matmul()
    schedule = backend.default_schedule(kernel, None)
    n = 100 if quick else 300
    # address="local": a Ray of our own, never one that another process on this machine runs
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        empty = ray.remote(max_retries=0)(lambda: None)
        echo = ray.remote(max_retries=0)(lambda request, reply: reply)
        blob = os.urandom(so_bytes)
        send = ray.remote(max_retries=0)(lambda: blob)
        take = ray.remote(max_retries=0)(lambda data: len(data))
        ray.get([empty.remote() for _ in range(50)])  # both worker processes up

        def one(fn: Any, *args: Any) -> Callable[[], Any]:
            return lambda: ray.get(fn.remote(*args))

        t = timed(one(empty), n, 20)
        rows.append(Row("ray", "empty task: submit + ray.get, one at a time", t,
                        per_s(t.median, " tasks/s")))
        for pad in (0, 4000):
            req, rec = _request(target, schedule, pad), _record(pad)
            size = len(pickle.dumps(req)) + len(pickle.dumps(rec))
            rows.append(Row("ray", f"measurement request + record ({size / 1e3:.1f} KB in all)",
                            timed(one(echo, req, rec), n, 10)))
        rows.append(Row("ray", f"task returning a built kernel ({so_bytes / 1e3:.1f} KB)",
                        timed(one(send), n, 10)))
        rows.append(Row("ray", f"task receiving a built kernel ({so_bytes / 1e3:.1f} KB argument)",
                        timed(one(take, blob), n, 10)))
        tasks = 1000 if quick else 3000
        for window in (None, 2, 16):
            if window is None:
                t = timed(lambda: ray.get([empty.remote() for _ in range(tasks)]), 3).per(tasks)
            else:
                t = timed(functools.partial(_windowed, ray, empty, tasks, window), 3).per(tasks)
            how = "all submitted at once" if window is None else f"{window} in flight, ray.wait"
            cpu = statistics.median(t.cpu)
            rows.append(Row("ray", f"throughput: {tasks} empty tasks, {how}; per task", t,
                            f"{1 / t.median:,.0f} tasks/s",
                            f"driver CPU alone would allow {1 / cpu:,.0f} tasks/s"))
    finally:
        ray.shutdown()


def _windowed(ray: Any, remote: Any, tasks: int, window: int) -> None:
    """Keep ``window`` tasks in flight, collect each as it ends (the dispatcher's loop)."""
    running, left = [], tasks
    while left or running:
        while left and len(running) < window:
            running.append(remote.remote())
            left -= 1
        ready, running = ray.wait(running, num_returns=1)
        ray.get(ready)


# ----------------------------------------------------------------------------- driver

def _zoo_kernels(model: str) -> Any:
    """The zoo model's kernels as ``tilefx tune`` forms them (``model_kernels``' result)."""
    from benchmarks.models import ZOO
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import model_kernels
    from tilefx.compiler.session import CompileSession

    entry = ZOO[model]
    with CompileSession() as session:
        return model_kernels(entry.build(), entry.make_inputs(batch=entry.bench_batch, seed=0),
                             CompileOptions(target="cpu"), session)


def bench_driver(quick: bool, rows: list[Row]) -> None:
    """The driver's own work per proposal and per batch, on the mlp's first kernel (what
    part zoo tunes) and on a 512^3 matmul (a larger space: longer histories fit)."""
    from tilefx.cost_model import default_model

    if default_model(_matmul()[1], None) is None:
        rows.append(Row("driver", "no learned cost model (xgboost missing): search not measured"))
        return
    found = _zoo_kernels("mlp")
    mlp = found.kernels[0]
    mm, target, backend = _matmul()
    kernels = [(f"mlp {mlp.attr('name')}", mlp, (64,) if quick else (64, 256)),
               ("matmul 512^3", mm, (64, 512) if quick else (64, 512, 4096))]
    for label, kernel, histories in kernels:
        _driver_kernel(label, kernel, target, backend, histories, quick, rows)


def _driver_kernel(label: str, kernel: Any, target: Any, backend: Any, histories: tuple[int, ...],
                   quick: bool, rows: list[Row]) -> None:
    from tilefx.autotune.search import make_strategy
    from tilefx.codegen.measure import MeasureResult
    from tilefx.cost_model import default_model
    from tilefx.cost_model.features import FeatureCache, feature_matrix

    space = backend.space(kernel, None)
    rng = random.Random(0)
    say(f"driver: {label} (space {space.size})")
    fresh = list(dict.fromkeys(space.sample(rng) for _ in range(20 if quick else 40)))
    fps = iter(fresh)
    rows.append(Row("driver", f"{label}: fingerprint of one proposal (lowering; every proposal)",
                    timed(lambda: backend.fingerprint(kernel, next(fps), None), len(fresh) - 3,
                          warmup=3)))
    cache = FeatureCache()
    feature_matrix(kernel, fresh[:1], target, {}, cache=cache)  # the default's features, once
    feats = iter(fresh[1:])
    rows.append(Row("driver", f"{label}: features of one new schedule (cost-model input)",
                    timed(lambda: feature_matrix(kernel, [next(feats)], target, {}, cache=cache),
                          len(fresh) - 4, warmup=3)))

    def measured(s: Any) -> MeasureResult:
        return MeasureResult(s, "ok", tuple(rng.lognormvariate(-7, 0.4) for _ in range(10)))

    reps = 3 if quick else 5
    for n in histories:
        model = default_model(target, None)  # a fresh model and feature cache per kernel search
        strategy = make_strategy("evolutionary", space, kernel=kernel, target=target, model=model)
        history = [measured(space.sample(rng)) for _ in range(n)]
        # what the tuner does with the database's records when it resumes a kernel
        load = timed(functools.partial(strategy.update, history), 1)
        rows.append(Row("driver", f"{label}, history {n}: load it into the search "
                        "(features + 1 model update)", load,
                        note=f"{len(strategy.measured)} distinct schedules of {space.size}"))
        batches: list[list[Any]] = []
        step = timed(lambda s=strategy, out=batches: out.append(s.propose(8)), reps)
        rows.append(Row("driver", f"{label}, history {n}: one search step, propose(8)", step,
                        note="ranks a pool of 512; the first steps compute its features"))
        results = iter([[measured(s) for s in b] for b in batches])
        update = timed(lambda m=model, r=results: m.observe(kernel, next(r), target), reps)
        rows.append(Row("driver", f"{label}, history {n}: one cost-model update, observe(8)",
                        update, note=f"20 trees boosted on all {n}+ measurements"))


# -------------------------------------------------------------------------------- zoo

ZOO_CONFIGS = {"local": "no Ray: builder pool of 1 + isolated runner",
               "ray1": "local Ray, 1 CPU (builds and the measurement share it)",
               "ray2": "local Ray, 2 CPUs (2 builds at once, 1 measurement)"}


def _clock(cls: type, name: str, key: str, spent: dict[str, float]) -> None:
    """Add the wall time of every call of ``cls.name`` to ``spent[key]`` (the zoo run's
    breakdown of the driver's own work; nothing else changes). A method the tuner no
    longer has is left out of the breakdown, not an error."""
    fn = getattr(cls, name, None)
    if fn is None:
        say(f"zoo: {cls.__name__}.{name} not found; '{key}' is missing from the breakdown")
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0

    setattr(cls, name, wrapped)


def zoo_child(config: str, model: str, trials: int, db: str) -> None:
    """One tuning run in this (fresh) process; prints one JSON line."""
    from tilefx.autotune.search import EvolutionarySearch
    from tilefx.autotune.tuner import TuneOptions, Tuner
    from tilefx.storage.database import TuningDatabase

    t0 = time.perf_counter()
    found = _zoo_kernels(model)
    capture = time.perf_counter() - t0
    spent: dict[str, float] = {}
    for cls, name, key in ((EvolutionarySearch, "propose", "search"),
                           (EvolutionarySearch, "update", "model update"),
                           (type(found.target.backend()), "fingerprint", "fingerprint"),
                           (Tuner, "_workload_key", "workload key"),
                           (Tuner, "_measure", "build+measure"),
                           (TuningDatabase, "add_candidate", "db writes"),
                           (TuningDatabase, "add_measurement", "db writes")):
        _clock(cls, name, key, spent)
    options = TuneOptions(trials=trials, db_path=db, progress=False, workers=1)
    ray_start = 0.0
    if config.startswith("ray"):
        import ray

        from tilefx.autotune.cluster import measure_resource

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=int(config[3:]),  # our own, with the measure resource
                 resources={measure_resource(found.target): 1}, include_dashboard=False,
                 log_to_driver=False)
        ray_start = time.perf_counter() - t0
        options.cluster = "ray"  # attaches to the Ray just started
    tuner = Tuner(found.target, options)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for op in found.kernels:
            tuner.tune_kernel(op, found.bindings)
    finally:
        tune, cpu = time.perf_counter() - t0, time.process_time() - c0
        summary = tuner.time_summary()
        tuner.close()
    print(json.dumps({"capture_s": capture, "ray_start_s": ray_start, "tune_s": tune,
                      "driver_cpu_s": cpu, "kernels": len(found.kernels),
                      "measured": sum(r.trials for r in tuner.results),
                      "per_kernel_s": [round(r.seconds, 1) for r in tuner.results],
                      "spent": spent, "summary": summary}))


def bench_zoo(model: str, trials: int, configs: list[str], rows: list[Row]) -> None:
    for config in configs:
        say(f"zoo: {model}, {trials} trials a kernel, {config} ({ZOO_CONFIGS[config]})")
        with tempfile.TemporaryDirectory(prefix="tilefx-bench-zoo-") as tmp:
            env = {**os.environ, "TILEFX_CACHE_DIR": tmp, "TVM_BIND_THREADS": "0",
                   "PYTHONPATH": str(ROOT)}
            env.pop("TILEFX_TUNING_DB", None)
            cmd = [sys.executable, __file__, "--zoo-child", config, "--zoo-model", model,
                   "--trials", str(trials), "--zoo-db", str(Path(tmp) / "tuning.db")]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            rows.append(Row("zoo", f"{model}, {config}: failed",
                            note=" ".join(out.stderr.split()[-40:])[:300]))
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_trial = r["tune_s"] / max(1, r["measured"])
        spent = ", ".join(f"{k} {v:.1f}s" for k, v in r["spent"].items())
        note = (f"{r['measured']} measured over {r['kernels']} kernels (per kernel "
                f"{', '.join(f'{x:.0f}' for x in r['per_kernel_s'])} s); driver CPU "
                f"{r['driver_cpu_s']:.1f}s; driver calls: {spent}; capture "
                f"{r['capture_s']:.1f}s")
        if r["ray_start_s"]:
            note += f", ray.init {r['ray_start_s']:.1f}s"
        if r["summary"]:
            note += f"; {r['summary']}"
        rows.append(Row("zoo", f"{model}, {ZOO_CONFIGS[config]}: tuning wall time",
                        Timing((r["tune_s"],), (r["driver_cpu_s"],)),
                        f"{1 / per_trial:.2f} trials/s ({per_trial:.2f} s each)", note))


# ------------------------------------------------------------------------------- main

def machine_lines(argv: list[str], load_before: tuple[float, ...], other: Any) -> list[str]:
    import tilefx
    from benchmarks.run import cpu_model, version
    from tilefx.codegen.target import Target

    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text()
                  .splitlines() if ln.startswith("flags")), [])
    isa = " ".join(f for f in ("sse4_2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                   if f in flags)
    load_after = os.getloadavg()
    return [
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/distributed.py', *argv])}`",
        f"- machine: {cpu_model()} ({Target.host_cpu().key()}), {os.cpu_count()} logical cores, "
        f"ISA {isa}; {platform.system()} {platform.release()}",
        f"- load average (1/5/15 min) before {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' / '.join(f'{x:.2f}' for x in load_after)}; other processes' CPU use "
        f"during the run: {other.describe()}",
        f"- python {platform.python_version()}, ray {version('ray')}, sqlalchemy "
        f"{version('sqlalchemy')}, psycopg {version('psycopg')}, xgboost {version('xgboost')}, "
        f"apache-tvm {version('apache-tvm')}, torch {version('torch')}, tilefx {tilefx.__version__}; "
        "PostgreSQL 15 (throwaway server: fsync off; tilefx sets synchronous_commit=off "
        "itself), SQLite WAL + synchronous=NORMAL",
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (~3 min)")
    p.add_argument("--out", help="also write the table with the machine and command here")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--zoo-model", default="mlp", help="the zoo model tuned in part zoo")
    p.add_argument("--zoo-configs", default=None,
                   help=f"comma-separated, from {', '.join(ZOO_CONFIGS)} (all; quick: ray2)")
    p.add_argument("--trials", type=int, default=None,
                   help="per kernel in part zoo (default 12; quick 8: the first batch holds the "
                        "default, the library call and 6 proposals)")
    p.add_argument("--zoo-child", help=argparse.SUPPRESS)
    p.add_argument("--zoo-db", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.zoo_child:
        zoo_child(args.zoo_child, args.zoo_model, args.trials, args.zoo_db)
        return 0
    from benchmarks.run import OtherLoad

    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"unknown part {unknown[0]!r}; have {', '.join(PARTS)}", file=sys.stderr)
        return 2
    load_before, other, t_start = os.getloadavg(), OtherLoad(), time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tilefx-bench-cache-") as cache:
        os.environ["TILEFX_CACHE_DIR"] = cache  # fresh kernels; the shipped cost model
        so_bytes = SO_BYTES_DEFAULT
        if "unit" in parts:
            say("unit: build and time real matmul candidates")
            so_bytes = bench_unit(args.quick, rows)
        if "ray" in parts:
            say("ray: task round trips and throughput on ray.init(num_cpus=2)")
            bench_ray(args.quick, so_bytes, rows)
        if "db" in parts:
            bench_db(args.quick, rows)
        if "driver" in parts:
            say("driver: fingerprint, features, search step, cost-model update")
            bench_driver(args.quick, rows)
    if "zoo" in parts:
        trials = args.trials or (8 if args.quick else 12)
        configs = args.zoo_configs or ("ray2" if args.quick else ",".join(ZOO_CONFIGS))
        bench_zoo(args.zoo_model, trials, configs.split(","), rows)
    text = table(rows)
    took = time.perf_counter() - t_start
    print(text)
    if args.out:
        lines = ["# Distributed tuning: what a trial costs (measured)", "",
                 *machine_lines(argv, load_before, other), f"- benchmark wall time: {took:.0f} s",
                 "", text, ""]
        Path(args.out).write_text("\n".join(lines))
        say(f"wrote {args.out}")
    say(f"done in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
