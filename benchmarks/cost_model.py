"""The learned cost model on CPU or GPU: held-out ranking metrics, ablation, and guided search.

    python benchmarks/cost_model.py --db /tmp/cm.db                  # metrics + plots + search
    python benchmarks/cost_model.py --db /tmp/cm.db --no-search      # metrics only
    python benchmarks/cost_model.py --db gpu.db --target cuda        # a cuda database (GPU search)

1. **Ranking** (TenSet's evaluation): the database's workloads are split into
   ``--folds`` groups (sklearn ``GroupKFold``: no workload in both train and
   test); per fold the models are trained on the others and scored on it.
   Reported per model, averaged over held-out workloads: pairwise accuracy,
   Kendall tau, top-1 and top-5 score. Models: XGBoost pairwise-rank and
   log-latency regression, the random model, the hand-written analytical
   model (on cuda: what the tuner ranked with before the GPU features); ablation
   of the feature groups (knobs + kernel shape only; all but the analytical or
   roofline estimate; all).
2. **Predicted vs measured** latency of the held-out candidates (regression
   model, PNG).
3. **Search**: the kernels of ``benchmarks/tuning.py`` (held out of the
   training data by ``cost_model.workloads.HELD_OUT``) are tuned from nothing
   (no default schedule, no database seed, as TenSet's search experiments) by
   random search, the evolutionary search ranked by the analytical model and
   by the learned model (trained on the whole database, retrained online),
   ``--trials`` trials each, ``--seeds`` seeds. A trial is a program new to the
   run: a proposal whose fingerprint the run already measured is skipped, as the
   Tuner does (its summary's "dup skipped"), not counted. Measurements are shared
   through a fingerprint cache (equal code is measured once for all
   strategies, so they see the same noise). The searches decide on those
   timings, as the tuner does; the score uses a second one: after a case's
   runs every program measured is timed again, in a shuffled order, and its
   faster timing counts (``--no-retime``: the first only). One timing per
   program let a single slow timing of the learned model's first pick swing
   mm1024 from 1.2 to 4.8 trials between two runs of the same seeds, while
   the CPU's slowdowns (other tenants) last seconds and only ever add time.
   Curves of best-so-far vs trials (normalized to the best any run found) go
   to PNG; the table gives trials to 95% of that best. On cuda the cases are
   cast to ``--dtype`` (float16: what GPU models run), Triton builds and times
   them on the GPU, and ``dwconv`` (no Triton template: cuDNN only) is skipped.

Writes ``benchmarks/results/cost-model-<cpu|gpu>-<date>.md`` and PNGs beside it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _tiling(target: Any) -> bool:
    """Whether ``target``'s backend is featurized by its tiling (Triton on cuda)."""
    from tilefx.codegen.backend import FeatureSet

    return target.backend().feature_set is FeatureSet.TILING


def ablations(feature_set: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(label, feature columns) of the ablation rows for a feature layout (``FeatureSet``)."""
    from tilefx.codegen.backend import FeatureSet
    from tilefx.cost_model.features import NO_ANALYTICAL, NO_DELTA, SHAPE_AND_KNOBS, layout_of

    if feature_set is FeatureSet.LOOP_NEST:
        return (("knobs + shape only", SHAPE_AND_KNOBS), ("no analytical feature", NO_ANALYTICAL),
                ("no differences from the default schedule", NO_DELTA))
    names = layout_of(feature_set)[1]
    problem = ("itemsize", "flops", "bytes", "intensity", "m", "n", "k", "batch", "sms",
               "smem_per_block", "l2", "arch")
    knobs = tuple(i for i, n in enumerate(names) if n.startswith(("tpl_", "impl_", "knob_")) or n in problem)
    return (("knobs + shape only", knobs),
            ("no roofline feature", tuple(i for i, n in enumerate(names) if n != "roofline")))


def ranking(ds: Any, X: np.ndarray, folds: int, seed: int) -> tuple[dict, dict, Any]:
    from sklearn.model_selection import GroupKFold

    from tilefx.cost_model.metrics import evaluate
    from tilefx.cost_model.train import evaluate_split

    g, t = ds.groups(), ds.seconds()
    scores: dict[str, np.ndarray] = {}
    pred_log = np.zeros(len(t))
    for train, test in GroupKFold(n_splits=folds).split(X, groups=g):
        rows, models = evaluate_split(ds, X, train, test, seed=seed, baselines=False)
        for name, m in models.items():
            scores.setdefault(f"xgboost {name}", np.zeros(len(t)))[test] = m.score_matrix(X[test])
        pred_log[test] = models["regression"].score_matrix(X[test])
        for label, cols in ablations(ds.feature_set):
            _, ms = evaluate_split(ds, X, train, test, objectives=("rank",), columns=cols,
                                   seed=seed, baselines=False)
            scores.setdefault(f"rank, {label}", np.zeros(len(t)))[test] = ms["rank"].score_matrix(X[test])
    from tilefx.cost_model.train import baseline_scores

    rows_all = np.arange(len(t))
    scores["random"] = baseline_scores(ds, rows_all, "random", seed)
    scores["analytical"] = baseline_scores(ds, rows_all, "analytical")
    metrics = {name: evaluate(t, s, g) for name, s in scores.items()}
    return metrics, {"pred_log": pred_log}, scores


def per_kind(ds: Any, scores: np.ndarray) -> str:
    """Pairwise accuracy of one model's held-out scores per kernel kind."""
    from tilefx.cost_model.metrics import evaluate

    kinds = np.array([s.kernel.attr("kind") for s in ds.samples])
    t, g = ds.seconds(), ds.groups()
    parts = []
    for kind in ("contraction", "reduction", "pointwise"):
        m = kinds == kind
        if m.any():
            e = evaluate(t[m], scores[m], g[m])
            parts.append(f"{kind} {e['pairwise']:.3f} ({int(e['workloads'])} workloads)")
    return ", ".join(parts)


def pair_flips(db: Any, key: str) -> str:
    """The noise ceiling: how often two measurements of a workload's candidates order them
    differently (split halves of each run's timing windows; repeats across runs)."""
    from collections import defaultdict

    from tilefx.cost_model.metrics import pairwise_accuracy

    runs: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for r in db.records(target_key=key):
        if r.ok and len(r.samples) >= 2 and "extern" not in r.schedule_json:
            runs[(r.workload_key, r.schedule_json)].append(list(r.samples))
    by_w: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (w, _), rs in runs.items():
        by_w[w].append((min(min(x[0::2]) for x in rs), min(min(x[1::2]) for x in rs),
                        min(min(x) for x in rs)))
    halves = [pairwise_accuracy(np.array([a for a, _, _ in v]), -np.array([b for _, b, _ in v]))
              for v in by_w.values() if len(v) > 1]
    ratios = np.array([np.log(min(rs[0]) / min(rs[1])) for rs in runs.values() if len(rs) > 1])
    out = f"split-half agreement (windows 0,2,4 vs 1,3 of one run) {np.nanmean(halves):.3f}"
    if len(ratios):
        rng = np.random.default_rng(0)
        sims = []
        for _ in range(20):  # re-draw every label with the run-to-run ratios of the repeats
            acc = []
            for v in by_w.values():
                if len(v) > 1:
                    lat = np.array([x for _, _, x in v])
                    again = lat * np.exp(rng.choice(ratios, len(lat)) * rng.choice([-1, 1], len(lat)))
                    acc.append(pairwise_accuracy(lat, -again))
            sims.append(np.nanmean(acc))
        agree = float(np.mean(sims))
        ceiling = (1 + np.sqrt(max(2 * agree - 1, 0.0))) / 2
        out += (f"; two runs (labels re-drawn with the {len(ratios)} repeats' run-to-run ratios) "
                f"agree on {agree:.3f} of pairs, so a perfect model would score about {ceiling:.3f} "
                "against one run's labels (if a pair's flips are independent)")
    return out + "."


def repeat_noise(db: Any, key: str) -> str:
    """How far two measurements of the same template candidate disagree (the noise ceiling)."""
    from collections import defaultdict

    runs: dict[int, list[float]] = defaultdict(list)
    for r in db.records(target_key=key):
        if r.ok and r.samples and "extern" not in r.schedule_json:
            runs[r.candidate_id].append(min(r.samples))
    ratios = [max(v) / min(v) for v in runs.values() if len(v) > 1]
    if not ratios:
        return "no candidate was measured twice."
    q = np.percentile(ratios, [25, 50, 75, 90])
    return (f"{len(ratios)} candidates measured more than once (the tuner re-measures the best "
            f"against the library) differ between runs by a factor of {q[0]:.2f} / {q[1]:.2f} / "
            f"{q[2]:.2f} / {q[3]:.2f} (25th / 50th / 75th / 90th percentile, fastest window).")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_pred(ds: Any, pred_log: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    t = ds.seconds()
    kinds = np.array([s.kernel.attr("kind") for s in ds.samples])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for kind in ("contraction", "reduction", "pointwise"):
        m = kinds == kind
        if m.any():
            ax.scatter(t[m] * 1e3, 2.0 ** -pred_log[m] * 1e3, s=4, label=kind)
    lo, hi = t.min() * 1e3, t.max() * 1e3
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured ms", ylabel="predicted ms",
           title="predicted vs measured (held-out workloads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ search experiment

class SharedMeasurer:
    """Builds and runs candidates, measuring each fingerprint once for every strategy
    (TVM on CPU; Triton, checked and timed on the GPU, on cuda)."""

    def __init__(self, op: Any, target: Any, repeats: int) -> None:
        from tilefx.codegen.measure import LocalBuilder, LocalRunner, Workload

        self.op, self.target = op, target
        self.workload = Workload(op, target, (), op.attr("name"))
        if _tiling(target):
            from tilefx.codegen.triton.measure import CudaRunner, TritonBuilder, fingerprint

            self.builder, self.runner, self.fingerprint = TritonBuilder(), CudaRunner(), fingerprint
        else:
            from tilefx.codegen.tvm.fingerprint import fingerprint

            self.builder = LocalBuilder(workers=0)
            self.runner = LocalRunner(repeats=repeats, min_repeat_seconds=0.005)
            self.fingerprint = fingerprint
        self.cache: dict[str, float | None] = {}
        self.builds: dict[str, Any] = {}
        self.measured = 0

    def __call__(self, schedules: list[Any]) -> list[tuple[str, float | None]]:
        """(fingerprint, seconds) per schedule."""
        fps = [self.fingerprint(self.op, s, self.target) for s in schedules]
        todo = {fp: s for fp, s in zip(fps, schedules) if fp not in self.cache}
        if todo:
            builds = self.builder.build(self.workload, list(todo.values()))
            for fp, b, r in zip(todo, builds, self.runner.run(self.workload, builds)):
                self.cache[fp] = r.seconds
                self.builds[fp] = b
                self.measured += 1
        return [(fp, self.cache[fp]) for fp in fps]

    def retime(self, seed: int = 0) -> tuple[dict[str, float | None], float]:
        """Every program that ran timed once more, in a shuffled order: (fingerprint -> the
        faster of its two timings, share of programs whose two timings differ by > 5%)."""
        import random

        fps = [fp for fp, t in self.cache.items() if t]
        random.Random(seed).shuffle(fps)
        final = dict(self.cache)
        apart = 0
        for fp, r in zip(fps, self.runner.run(self.workload, [self.builds[fp] for fp in fps])):
            if r.seconds:
                first = final[fp]
                apart += max(first, r.seconds) > 1.05 * min(first, r.seconds)
                final[fp] = min(first, r.seconds)
        return final, apart / max(len(fps), 1)

    def close(self) -> None:
        self.builder.close()
        self.runner.close()


class _Result:
    def __init__(self, schedule: Any, seconds: float | None) -> None:
        self.schedule, self.seconds = schedule, seconds


def search_run(op: Any, target: Any, strategy: str, model: Any, seed: int, trials: int,
               batch: int, measure: SharedMeasurer, pool: int = 512) -> list[str]:
    """The fingerprints of the run's trials, in order (``best_so_far`` scores them)."""
    from tilefx.cost_model.analytical import AnalyticalModel
    from tilefx.autotune.search import EvolutionarySearch, make_strategy
    from tilefx.codegen.space import SearchSpace

    space = SearchSpace.for_kernel(op, target)
    if strategy == "random":
        strat = make_strategy("random", space, seed=seed)
    else:
        ranker = AnalyticalModel() if "analytical" in strategy else model.with_bindings(None)
        strat = EvolutionarySearch(space, ranker, op, target, pool=pool, seed=seed)
    order: list[str] = []
    seen: set[str] = set()  # this run's programs: a proposal equal to one is skipped, as the tuner does
    while len(order) < trials:
        props = strat.propose(min(batch, trials - len(order)))
        if not props:
            break
        measured = measure(props)
        strat.update([_Result(s, t) for s, (_, t) in zip(props, measured)])
        for fp, _ in measured:
            if fp not in seen:  # a duplicate costs no trial (Tuner: "dup skipped")
                seen.add(fp)
                order.append(fp)
    return order


def best_so_far(order: list[str], seconds: dict[str, float | None]) -> list[float]:
    history, best = [], float("inf")
    for fp in order:
        t = seconds.get(fp)
        best = min(best, t) if t else best
        history.append(best)
    return history


def plot_curves(curves: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 3.2), squeeze=False)
    for ax, (case, per) in zip(axes[0], curves.items()):
        best = min(min(h) for runs in per.values() for h in runs)
        for name, runs in per.items():
            n = min(len(h) for h in runs)
            mean = np.mean([[best / x for x in h[:n]] for h in runs], axis=0)
            ax.plot(np.arange(1, n + 1), mean, label=name)
        ax.axhline(0.95, color="gray", linestyle=":", linewidth=0.8)
        ax.set(title=case, xlabel="trials", ylim=(0.0, 1.02))
    axes[0][0].set_ylabel("best so far / best (mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def case_kernel(case: str, target: Any, dtype: str) -> Any:
    """``benchmarks/tuning.py``'s kernel; on cuda with ``dtype`` operands (None: no Triton
    template, only the library)."""
    from benchmarks.tuning import CASES

    op = CASES[case]()[0]
    if not _tiling(target):
        return op
    from tilefx.codegen.triton.measure import triton_space
    from tilefx.cost_model.dataset import kernel_from_ir
    from tilefx.ir.printer import print_graph

    short = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}[dtype]
    op = kernel_from_ir(print_graph(op.body).replace("f32[", f"{short}["), op.attr("name"))
    impl = dict(triton_space(op).knobs).get("impl", ("triton",))
    return op if any(v != "library" for v in impl) else None


def search(args: argparse.Namespace, model: Any, target: Any) -> tuple[dict, dict]:
    from benchmarks.tuning import trials_to

    strategies = ["random", "evolutionary (analytical)", "evolutionary (learned)"]
    curves: dict[str, dict[str, list[list[float]]]] = {}
    table: dict[str, dict[str, Any]] = {}
    for case in args.cases:
        op = case_kernel(case, target, args.dtype)
        if op is None:
            print(f"{case}: no Triton template on {target.key()} (library only); skipped", flush=True)
            continue
        measure = SharedMeasurer(op, target, args.repeats)
        t0 = time.perf_counter()
        try:
            orders = {s: [search_run(op, target, s, model, seed, args.trials, args.batch, measure,
                                     args.pool)
                          for seed in range(args.seeds)] for s in strategies}
            seconds, apart = measure.retime() if args.retime else (measure.cache, float("nan"))
        finally:
            measure.close()
        per = {s: [best_so_far(o, seconds) for o in runs] for s, runs in orders.items()}
        curves[case] = per
        best = min(min(h) for runs in per.values() for h in runs)
        table[case] = {"best": best, "measured": measure.measured, "apart": apart,
                       "seconds": time.perf_counter() - t0}
        for s, runs in per.items():
            got = [trials_to(h, best) for h in runs]
            table[case][s] = (statistics.mean(g if g else args.trials + 1 for g in got), got)
        print(case, {k: v for k, v in table[case].items()}, flush=True)
    return curves, table


def _machine(target: Any) -> str:
    return "GPU" if _tiling(target) else "CPU"


def _tag(target: Any) -> str:
    """File name part: the CPU files keep their names, the GPU ones say so."""
    return "gpu-" if _tiling(target) else ""


def eval_subset(ds: Any, scores: dict[str, np.ndarray], eval_db: str) -> list[str]:
    """The same held-out scores, counted only on the candidates ``eval_db`` also has: with a
    database of random schedules, the unbiased sample of each space TenSet evaluates on, while
    the models also trained on guided ones (``tilefx collect --strategy evolutionary``)."""
    from tilefx.storage.database import TuningDatabase
    from tilefx.cost_model.dataset import load_dataset
    from tilefx.cost_model.metrics import evaluate, format_metrics

    with TuningDatabase(eval_db) as db:
        ref = load_dataset(db, ds.target_key)
    keep = {(s.workload_key, s.schedule.to_json()) for s in ref.samples}
    mask = np.array([(s.workload_key, s.schedule.to_json()) in keep for s in ds.samples])
    t, g = ds.seconds(), ds.groups()
    sub = {name: evaluate(t[mask], sc[mask], g[mask]) for name, sc in scores.items()}
    return [f"The same held-out scores on the {int(mask.sum())} candidates that `{eval_db}` also has "
            "(random schedules only):", "", format_metrics(sub), ""]


def ranking_section(args: argparse.Namespace, argv: list[str] | None, ds: Any, key: str,
                    counts: dict, noise: str, flips: str, res: Path, date: Any
                    ) -> tuple[list[str], np.ndarray]:
    """Held-out ranking metrics (and the predicted-vs-measured plot) as markdown lines, and
    the feature matrix they were computed on."""
    from tilefx.cost_model.metrics import format_metrics

    t0 = time.perf_counter()
    X = ds.features()
    feat_s = (time.perf_counter() - t0) / max(len(ds.samples), 1)
    metrics, extra, all_scores = ranking(ds, X, args.folds, args.seed)
    subset = eval_subset(ds, all_scores, args.eval_db) if args.eval_db else []
    pred_png = f"cost-model-{_tag(ds.target)}pred-vs-measured-{date}.png"
    plot_pred(ds, extra["pred_log"], res / pred_png)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return ([f"# Learned cost model on {_machine(ds.target)} ({date})", "",
            f"Command: `python benchmarks/cost_model.py {' '.join(argv or sys.argv[1:])}`. "
            f"Database: {counts['workloads']} workloads, {counts['candidates']} candidates, "
            f"{counts['measurements']} measurements; {len(ds.samples)} ok template candidates over "
            f"{len(ds.workloads)} workloads used. Target `{key}`. Load average at the end: {load}.", "",
            f"Feature extraction: {feat_s * 1e3:.1f} ms per candidate (uncached).", "",
            f"Measurement noise: {noise}", "",
            f"## Ranking on held-out workloads ({args.folds}-fold GroupKFold by workload)", "",
            format_metrics(metrics), "",
            *subset,
            f"Per kernel kind (xgboost rank, pairwise): {per_kind(ds, all_scores['xgboost rank'])}.", "",
            f"Noise ceiling: {flips}", "",
            f"![predicted vs measured]({pred_png})", ""], X)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-search", action="store_true")
    p.add_argument("--no-ranking", action="store_true", help="search only (needs --model)")
    p.add_argument("--cases", default="mm512,mm1024,conv3x3,dwconv,ln_gelu")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pool", type=int, default=512, help="candidates ranked per round")
    p.add_argument("--no-retime", dest="retime", action="store_false",
                   help="score the searches on their own (single) timings, no second pass")
    p.add_argument("--model", help="model JSON for the search (default: train on --db)")
    p.add_argument("--target", default="cpu", help="cpu or cuda: whose measurements to rank, "
                   "where to search")
    p.add_argument("--dtype", default="float16", help="operand dtype of the search cases on cuda")
    p.add_argument("--eval-db", help="also report the held-out metrics on the candidates this "
                   "database has (e.g. the random-schedule database a guided one grew from)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]

    from tilefx.storage.database import TuningDatabase
    from tilefx.codegen.target import Target
    from tilefx.cost_model.dataset import load_dataset, resolve_target_key
    from tilefx.cost_model.model import LearnedModel

    target = Target.parse(args.target)
    tag = _tag(target)

    date = datetime.date.today()
    # plots go beside the markdown (benchmarks/results/ unless --out says elsewhere)
    res = Path(args.out).parent if args.out else ROOT / "benchmarks" / "results"
    with TuningDatabase(args.db) as db:
        key = resolve_target_key(db, args.target)
        ds = load_dataset(db, key)
        counts = db.count()
        noise = repeat_noise(db, key)
        flips = pair_flips(db, key)
    if args.no_ranking:
        if not args.model:
            p.error("--no-ranking needs --model (the model the search ranks with)")
        X, out = None, [f"# Learned cost model on {_machine(target)} ({date}): search only", "",
                        f"Command: `python benchmarks/cost_model.py {' '.join(argv or sys.argv[1:])}`.", ""]
    else:
        out, X = ranking_section(args, argv, ds, key, counts, noise, flips, res, date)
    if not args.no_search:
        model = LearnedModel.load(args.model) if args.model else LearnedModel.train(
            X, ds.seconds(), ds.groups(), key, feature_set=ds.feature_set, objective="rank",
            seed=args.seed)
        curves, table = search(args, model, target)
        plot_curves(curves, res / f"cost-model-{tag}search-{date}.png")
        strategies = ["random", "evolutionary (analytical)", "evolutionary (learned)"]
        out += ["## Search from nothing: trials to 95% of the best found (mean over seeds; "
                f"{args.trials} trials, {args.seeds} seeds, batch {args.batch}; scored on "
                f"{'the faster of two timings per program' if args.retime else 'single timings'})", "",
                "| case | best ms | " + " | ".join(strategies) + " | learned / random | distinct measured "
                "| two timings > 5% apart |",
                "|---|---:|" + "---:|" * (len(strategies) + 3)]
        for case, row in table.items():
            cells = [f"{row[s][0]:.1f} ({','.join(str(g) if g else '>' + str(args.trials) for g in row[s][1])})"
                     for s in strategies]
            ratio = row["evolutionary (learned)"][0] / row["random"][0]
            out.append(f"| {case} | {row['best'] * 1e3:.4g} | " + " | ".join(cells) +
                       f" | {ratio:.2f} | {row['measured']} | "
                       + (f"{row['apart']:.0%} |" if args.retime else "- |"))
        out += ["", f"![search curves](cost-model-{tag}search-{date}.png)", ""]
    text = "\n".join(out) + "\n"
    path = Path(args.out) if args.out else res / f"cost-model-{_machine(target).lower()}-{date}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
