"""How far each real model's costliest contractions are from their best schedule:
tilefx default vs the library (cuBLAS/cuDNN + epilogue) vs a sweep of the template's space.

    python benchmarks/gpu/schedule_sweep.py                         # the models.py set, fp16
    python benchmarks/gpu/schedule_sweep.py --models vit_b_16,convnext_tiny --top 6 --samples 24
    python benchmarks/gpu/schedule_sweep.py --dry-run               # CPU, Triton interpreter, tiny model

Per model: its fused kernels exactly as ``tilefx.compile`` makes them (capture, lowering,
passes for cuda), each distinct contraction (matmul, conv, attention) timed at its default
schedule; the ``--top`` costliest (time x uses) are then timed at the library candidate and
at a set of the template's schedules (for the matmul and implicit-GEMM tiles a fixed list of
Hopper tiles, for the others a seeded sample of the space). Every schedule is checked first
against the library's output (the default's where there is no library): a mismatch is
reported and not timed. Times: CUDA-event median over a CUDA graph of ``--calls`` calls
(inputs stay in L2 where they fit, for every row alike). Candidates are compiled in parallel
processes first (``tilefx.codegen.triton.prewarm``), so a sweep costs seconds, not minutes.

Markdown to stdout and ``$OUT/schedule_sweep.md``; every timing in ``$OUT/schedule_sweep.json``;
with ``--db PATH`` every timing is also a tuning record (the GPU cost model's training data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter
from typing import Any, Callable

from common import DTYPES, Report, environment, progress

import torch

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): Hopper tiles a matmul sweep always tries
TILES: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
    (128, 128, 32, 4, 4), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
    (64, 256, 64, 4, 3), (64, 64, 64, 4, 4), (128, 256, 32, 8, 4), (64, 128, 32, 4, 5),
    (256, 64, 64, 8, 3), (128, 64, 32, 4, 5), (32, 64, 64, 4, 4), (64, 64, 32, 2, 5),
    (128, 32, 64, 4, 4), (64, 32, 64, 4, 4),
)
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 4e-2}


def candidates(op: Any, samples: int, seed: int) -> list[Any]:
    """The library candidate (if any) and the schedules a sweep of ``op`` tries."""
    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.space import SearchSpace
    from tilefx.codegen.triton.templates import space

    knobs = space(op)
    out = [Schedule.of(impl="library", EPILOGUE_BLOCK=1024)] if "library" in knobs.get("impl", []) else []
    tiled = "BLOCK_K" in knobs and "triton" in knobs.get("impl", [])
    if tiled:  # matmul, implicit-GEMM conv: the fixed Hopper tiles that are in the space
        for bm, bn, bk, w, st in TILES:
            point = dict(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=st)
            if all(v in knobs.get(k, [v]) for k, v in point.items()):
                out.append(Schedule.of(**point))
    if samples:
        knobs = {k: v for k, v in knobs.items()}
        knobs["impl"] = [i for i in knobs.get("impl", ["triton"]) if i != "library"] or knobs["impl"]
        pts = SearchSpace.of(knobs).enumerate()
        rng = random.Random(seed)
        pool = list(pts)
        out += rng.sample(pool, min(samples if not tiled else samples // 3, len(pool)))
    return out


def tensors_for(op: Any, device: str, seed: int) -> list[torch.Tensor]:
    from tilefx.compiler.runtime import torch_dtype

    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for v in (*op.inputs, *op.results):
        shape = [int(d) for d in v.type.shape]
        dtype = torch_dtype(v.type.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(device, dtype))
        else:
            out.append(torch.zeros(shape, dtype=dtype, device=device))
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.float().abs().max().item() or 1.0
    return (out.float() - ref.float()).abs().nan_to_num(1e9).max().item() / scale


class Records:
    """``--db``: every checked schedule's time (and every mismatch) as a tuning-database record
    under the kernel's workload key, as the tuner stores them: ``tilefx train-cost-model --db``
    then learns from these models' kernels. (Timed here from a CUDA graph without an L2 flush,
    which the error field says; the tuner's own records flush L2 before each call.)"""

    NOTE = "schedule_sweep.py: CUDA graph of calls, no L2 flush"

    def __init__(self, url: str, target: Any) -> None:
        from tilefx.storage.database import TuningDatabase

        self.db, self.target = TuningDatabase(url), target
        self.db.add_target(target.key(), target.to_json())

    def add(self, op: Any, built: dict[str, Any], times: dict[str, Any]) -> None:
        from tilefx.codegen.space import EXTERN
        from tilefx.codegen.triton.measure import fingerprint
        from tilefx.ir.functional_hash import functional_hash, workload_key
        from tilefx.ir.printer import print_graph

        key = workload_key(op)
        self.db.add_workload(key, print_graph(op.body), functional_hash(op))
        for name, t in times.items():
            k = built.get(name)
            if isinstance(k, str) or k is None or not (isinstance(t, float) or str(t).startswith("wrong")):
                continue
            schedule = EXTERN if k.schedule.get("impl") == "library" else k.schedule
            cid = self.db.add_candidate(key, self.target.key(), schedule.to_json(),
                                        fingerprint(op, schedule, self.target))
            if isinstance(t, float):
                self.db.add_measurement(cid, [t / 1e3], "ok", self.NOTE)
            else:
                self.db.add_measurement(cid, [], "wrong_result", f"{self.NOTE}: {t}")


class Sweep:
    def __init__(self, args: argparse.Namespace, device: str, timer: Callable[[Callable[[], Any]], float]):
        from tilefx.codegen.target import Target

        self.args, self.device, self.timer = args, device, timer
        self.target = Target.parse("cuda")
        self.tol = TOLERANCE[args.dtype]
        self.records = Records(args.db, self.target) if args.db else None

    def build(self, op: Any, schedules: list[Any]) -> dict[str, Any]:
        """schedule string -> BuiltKernel (or the error), distinct code once, compiled in parallel."""
        from tilefx.codegen.triton import build_kernel
        from tilefx.codegen.triton.prewarm import job_for, prewarm

        built: dict[str, Any] = {}
        seen: set[str] = set()
        for s in schedules:
            try:
                k = build_kernel(op, self.target, s)
            except Exception as e:  # noqa: BLE001 - a point the template refuses: reported
                built[str(s)] = f"{type(e).__name__}: {e}"[:200]
                continue
            if k.fingerprint not in seen:
                seen.add(k.fingerprint)
                built[str(k.schedule)] = k
        if self.device == "cuda":
            jobs = [job_for(k, op) for k in built.values() if not isinstance(k, str)
                    and k.schedule.get("impl") != "library"]
            errors = prewarm(jobs, self.args.jobs)
            for key, k in list(built.items()):
                if not isinstance(k, str) and errors.get(k.path):
                    built[key] = errors[k.path]
        return built

    def run(self, op: Any, built: dict[str, Any], ref: torch.Tensor | None) -> dict[str, Any]:
        """schedule -> ms, or "wrong (err)" / the build error; and the reference output."""
        args = tensors_for(op, self.device, self.args.seed)
        n_in = len(op.inputs)
        times: dict[str, Any] = {}
        for key, k in built.items():
            if isinstance(k, str):
                times[key] = k
                continue
            for t in args[n_in:]:
                t.fill_(float("nan"))
            try:
                k(*args)
                if self.device == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                times[key] = f"{type(e).__name__}: {str(e)[:160]}"
                continue
            out = args[n_in].clone()
            if ref is None:
                ref = out
            err = rel_err(out, ref)
            if not err <= self.tol:
                times[key] = f"wrong ({err:.2g})"
                progress(f"  {op.attr('name')}: {key} is WRONG (rel err {err:.3g})")
                continue
            times[key] = self.timer(lambda k=k: k(*args))
        return {"times": times, "ref": ref}

    def model(self, name: str) -> list[dict[str, Any]]:
        import models_zoo
        from tilefx.compiler.options import CompileOptions
        from tilefx.compiler.pipeline import model_kernels
        from tilefx.compiler.session import CompileSession
        from tilefx.ir.identity import fused_op_names, kernel_key
        from tilefx.codegen.triton import default_schedule
        from models_kernels import kernel_cost

        spec = models_zoo.SPECS[name]
        notes: list[str] = []
        model, inputs = models_zoo.build(spec, self.device, DTYPES[self.args.dtype], notes)
        if self.args.dry_run:
            inputs = tuple(t[:1] for t in inputs)
        with torch.no_grad():
            mk = model_kernels(model, inputs, CompileOptions(target="cuda", cuda_graphs=False), CompileSession())
        del model
        uses = Counter(kernel_key(op) for op in mk.graph.ops if op.name == "kernel")
        ops = [op for op in mk.kernels if op.attr("kind") == "contraction"]
        progress(f"{name}: {len(mk.kernels)} distinct kernels, {len(ops)} contractions")
        defaults = {}
        for op in ops:  # every contraction at its default, compiled side by side
            defaults[kernel_key(op)] = self.build(op, [default_schedule(op, self.target)])
        rows = []
        for op in ops:
            built = defaults[kernel_key(op)]
            res = self.run(op, built, None)
            t = next(iter(res["times"].values()), None)
            rows.append({"model": name, "kernel": op.attr("name"), "ops": "+".join(fused_op_names(op)),
                         "uses": uses[kernel_key(op)], "default_schedule": next(iter(built), ""),
                         "default_ms": t if isinstance(t, float) else None, "error": None if isinstance(t, float) else t,
                         "cost": kernel_cost(op)[:2], "key": kernel_key(op)})
        rows.sort(key=lambda r: -(r["default_ms"] or 0) * r["uses"])
        by_key = {kernel_key(op): op for op in ops}
        for r in rows[:self.args.top]:
            op = by_key[r["key"]]
            scheds = candidates(op, self.args.samples, self.args.seed)
            built = self.build(op, scheds)
            lib = [k for k, b in built.items() if not isinstance(b, str) and b.schedule.get("impl") == "library"]
            ref = self.run(op, {k: built[k] for k in lib}, None) if lib else {"times": {}, "ref": None}
            if ref["ref"] is None:  # no library: the default is the reference
                ref = self.run(op, defaults[r["key"]], None)
            res = self.run(op, {k: v for k, v in built.items() if k not in lib}, ref["ref"])
            if self.records is not None:
                self.records.add(op, built, {**ref["times"], **res["times"]})
            r["library_ms"] = ref["times"].get(lib[0]) if lib else None
            r["sweep"] = res["times"]
            timed = {k: v for k, v in res["times"].items() if isinstance(v, float)}
            if r["library_ms"] is not None and isinstance(r["library_ms"], float):
                timed[lib[0]] = r["library_ms"]
            if r["default_ms"] is not None:  # the same code as a swept point: the faster timing
                timed[r["default_schedule"]] = min(r["default_ms"], timed.get(r["default_schedule"], math.inf))
            best = min(timed, key=timed.get) if timed else None
            r["best_schedule"], r["best_ms"] = best, timed.get(best) if best else None
            progress(f"  {r['kernel']} x{r['uses']}: default {r['default_ms']} best {r['best_ms']} ({best})")
            if time.monotonic() > self.args.deadline_at:
                break
        for r in rows:
            r.pop("key")
        torch.cuda.empty_cache() if self.device == "cuda" else None
        return rows


def fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v)[:40])


def report_rows(rows: list[dict[str, Any]], report: Report, peak_flops: float, peak_bw: float) -> None:
    report("| model | kernel: fused ops | uses | default ms | % roofline | library ms | best ms | "
           "best / default | best schedule | default schedule |")
    report("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        if "sweep" not in r:
            continue
        flops, nbytes = r["cost"]
        d, b = r["default_ms"], r["best_ms"]
        roof = max(flops / peak_flops, nbytes / peak_bw) * 1e3
        pct = f"{100 * roof / d:.0f}%" if d else "-"
        ratio = f"{b / d:.2f}" if d and b else "-"
        report(f"| {r['model']} | {r['kernel']}: {r['ops'][:40]} | {r['uses']} | {fmt(d)} | {pct} | "
               f"{fmt(r.get('library_ms'))} | {fmt(b)} | {ratio} | {r['best_schedule']} | {r['default_schedule']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated models.py names (default: its default set)")
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--top", type=int, default=4, help="contractions swept per model (costliest first)")
    p.add_argument("--samples", type=int, default=12, help="random points of the space per kernel")
    p.add_argument("--calls", type=int, default=10, help="calls per CUDA graph replay")
    p.add_argument("--jobs", type=int, default=12, help="parallel compile processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--db", default="", help="also store every timing as a tuning record (path or URL): "
                   "training data for `tilefx train-cost-model --db`")
    p.add_argument("--deadline", type=float, default=0, help="stop starting models after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="CPU under the Triton interpreter: tiny_cnn, 2 schedules")
    args = p.parse_args(argv)
    import models_zoo

    device = "cuda"
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        device, args.dtype, args.samples, args.top, args.jobs = "cpu", "fp32", 2, 1, 0
        args.models = args.models or "tiny_cnn"
    elif not torch.cuda.is_available():
        print("no CUDA device (--dry-run checks the script on CPU)")
        return 1
    names = [n for n in args.models.split(",") if n] or [n for n, s in models_zoo.SPECS.items() if s.default]
    args.deadline_at = time.monotonic() + (args.deadline or math.inf)
    report = Report("schedule_sweep.md")
    report(f"# Schedule sweep of real models' contractions ({args.dtype})\n\n{environment()}\n"
           f"\n`python benchmarks/gpu/schedule_sweep.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    if device == "cuda":
        from roofline import graphed_ms, measured_peaks

        timer: Callable[[Callable[[], Any]], float] = lambda fn: graphed_ms(fn, args.calls)  # noqa: E731
        peak_flops, peak_bw = measured_peaks()
    else:
        def timer(fn: Callable[[], Any]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        peak_flops, peak_bw = 1e12, 1e11
    sweep = Sweep(args, device, timer)
    rows: list[dict[str, Any]] = []
    for name in names:
        if time.monotonic() > args.deadline_at:
            progress(f"deadline: {name} and later not run")
            break
        spec = models_zoo.SPECS[name]
        if not spec.available():
            progress(f"{name}: {spec.package} is not installed")
            continue
        try:
            rows += sweep.model(name)
        except Exception as e:  # noqa: BLE001 - one model's failure does not end the sweep
            progress(f"{name}: FAILED {type(e).__name__}: {e}")
    report_rows(rows, report, peak_flops, peak_bw)
    if report.path is not None:
        report.path.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
