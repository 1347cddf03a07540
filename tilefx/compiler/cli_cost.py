"""``tilefx collect`` and ``tilefx train-cost-model``: the cost model's data and training.

    tilefx collect --db /tmp/cm.db --trials 24 --zoo benchmarks/cost_model_workloads.py:zoo_kernels
    tilefx collect --db /tmp/cm.db --trials 8 --workloads sparse
    tilefx train-cost-model --db /tmp/cm.db --target cpu -o model.json

``collect`` measures random schedules (the tuner with ``RandomSearch``, so
fingerprint deduplication, correctness checks and resumability come with it;
``--strategy evolutionary`` adds guided ones near each kernel's best)
of every kernel of a workload set (``cost_model.workloads``: generated
families, plus a model zoo's kernels when ``--zoo`` names where they come
from; the kernels of ``benchmarks/tuning.py`` are held out) into a tuning
database. ``--zoo REF`` is ``path/to/file.py:function`` or
``package.module:function``, a function ``(model names or None, target
text) -> kernel ops``; the zoo of ``benchmarks/models`` is not installed with
tilefx, so in a source checkout it is ``benchmarks/cost_model_workloads.py:zoo_kernels``
(loaded by path). Contractions get ``--trials`` candidates,
reductions two thirds and pointwise kernels half of that (their spaces are
small). A rerun skips the workloads the database already has enough of.

``train-cost-model`` reads the database, splits by workload, trains the
XGBoost model, prints held-out metrics and writes the model JSON.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from tilefx.autotune.tuner import TuneOptions, Tuner
from tilefx.codegen.target import Target
from tilefx.compiler.cli import CLIError, ray_pair, resolve_reference
from tilefx.cost_model.train import ROUNDS, DatasetTooSmall, train_from_db
from tilefx.cost_model.workloads import workload_set
from tilefx.storage.database import TuningDatabase


def add_parser(sub: Any) -> None:
    """Register ``collect`` and ``train-cost-model`` on ``cli.py``'s subparsers."""
    p = sub.add_parser("collect", help="measure random schedules of a workload set into a "
                       "tuning database (cost-model training data)")
    p.add_argument("--db", required=True, help="tuning database to fill: a file, or postgresql://user@host:port/db")
    p.add_argument("--trials", type=int, default=24, help="candidates per contraction kernel")
    p.add_argument("--workloads", default=None,
                   help="comma list of family, sparse, zoo or zoo model names (default: "
                   "zoo,family with --zoo, else family)")
    p.add_argument("--zoo", metavar="REF", default=None,
                   help="where zoo workloads come from: path/to/file.py:function or "
                   "package.module:function, called with (model names or None, target text); "
                   "in a source checkout benchmarks/cost_model_workloads.py:zoo_kernels")
    p.add_argument("--target", default="cpu", help="cpu (the host), cpu:<llvm mcpu> or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="operand dtype of the generated family (GPU models run float16)")
    p.add_argument("--repeats", type=int, default=5, help="timing windows per candidate")
    p.add_argument("--strategy", choices=("random", "evolutionary"), default="random",
                   help="random schedules (an unbiased sample of the space), or the cost-model "
                   "guided search from the database's best (samples near the top, where a ranking "
                   "must tell close schedules apart)")
    p.add_argument("--limit", type=int, default=0, help="at most this many workloads (0: all)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ray", nargs="?", const="ray", default=None, metavar="ADDRESS",
                   help="build and measure on Ray: a local one (no ADDRESS) or the cluster at "
                   "ADDRESS (host:port); the database stays here")
    p.set_defaults(func=cmd_collect)

    t = sub.add_parser("train-cost-model", help="train the learned cost model on a tuning database")
    t.add_argument("--db", required=True, help="tuning database with measurements: a file, or postgresql://user@host:port/db")
    t.add_argument("--target", default="cpu",
                   help="cpu (the host), cuda (the db's cuda target) or a target key in the db")
    t.add_argument("-o", "--output", required=True, help="model JSON to write")
    t.add_argument("--objective", choices=("rank", "regression"), default="rank",
                   help="pairwise ranking (default) or regression on log latency")
    t.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of workloads held out for the printed metrics")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", metavar="MODEL", help="a model JSON to go on boosting from (its trees kept, "
                   "--rounds more fitted to --db): new measurements refine it, its own data need not be at hand")
    t.add_argument("--rounds", type=int, default=ROUNDS, help=f"boosting rounds (default {ROUNDS})")
    t.set_defaults(func=cmd_train)


def _trials(kind: str, trials: int) -> int:
    if kind == "pointwise":
        return max(4, trials // 2)
    if kind == "reduction":
        return max(6, 2 * trials // 3)
    return trials


def load_zoo(ref: str, target_text: str) -> Callable[[Sequence[str] | None], list[Any]]:
    """The ``--zoo`` function, bound to the target the kernels are formed for."""
    fn = resolve_reference(ref, "--zoo")
    if not callable(fn):
        raise CLIError(f"--zoo {ref!r} is not a function")
    return lambda names: fn(names, target_text)


def cmd_collect(args: argparse.Namespace) -> int:
    if args.trials < 2:
        raise CLIError(f"--trials must be at least 2, got {args.trials}")
    zoo = load_zoo(args.zoo, args.target) if args.zoo else None
    spec = args.workloads or ("zoo,family" if zoo else "family")
    try:
        target = Target.parse(args.target)
        kernels = workload_set(spec, args.dtype, zoo)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    # a fixed shuffle: a collection stopped early still covers every kind and source
    random.Random(0).shuffle(kernels)
    if args.limit:
        kernels = kernels[:args.limit]
    options = TuneOptions(trials=args.trials, strategy=args.strategy, repeats=args.repeats,
                          progress=False, cluster=args.ray)
    pair = ray_pair(target, options, args.ray) if args.ray else {}
    db = TuningDatabase(args.db)
    print(f"tilefx collect: {len(kernels)} workloads on {target.key()} into {args.db}", flush=True)
    tuner = Tuner(target, options, db=db, **pair)
    bar = None
    if not args.no_progress:
        bar = tqdm(total=len(kernels), desc="collect", unit="workload")
    try:
        for op in kernels:
            # one tuner (builder pool, runner child) for all; the budget depends on the kind
            tuner.options.trials = _trials(op.attr("kind"), args.trials)
            res = tuner.tune_kernel(op)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{res.name}: {res.trials} new" + (" (db)" if res.from_db else ""))
            if res.interrupted:
                print("interrupted: measurements so far are saved; rerun to resume")
                return 130
    finally:
        if bar is not None:
            bar.close()
        tuner.close()
    print(db.summary().splitlines()[0])
    if tuner.time_summary():
        print(tuner.time_summary())
    db.close()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        if args.rounds < 1:
            raise ValueError(f"--rounds {args.rounds}: expected at least 1")
        report = train_from_db(args.db, args.target, args.output, objective=args.objective,
                               test_fraction=args.test_fraction, seed=args.seed, init=args.init,
                               rounds=args.rounds)
    except (DatasetTooSmall, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    print(report)
    return 0
