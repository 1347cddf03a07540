"""``tilefx tune``: autotune every kernel of a model and store the results.

    tilefx tune examples/mlp.py:build --input 64x1024 --trials 32
    tilefx tune mypkg.models:resnet --input 1x3x224x224 --time 30s --strategy random
    tilefx tune mypkg.models:resnet --input 1x3x224x224 --budget 60s

Captures and optimizes the model like ``tilefx compile``, then tunes each
distinct kernel (kernels with equal computation are tuned once) with a
progress bar per kernel, and prints the summary table (kernel, trials,
duplicates skipped, default / best / library latency, speedup). ``--trials``
and ``--time`` limit each kernel; ``--budget`` limits the whole model, shared
among its kernels by expected gain (``autotune/budget.py``): the plan is printed
first, and the table gets a budget column (seconds used / given). Results go
to the tuning database (``--db``, default ``$TILEFX_CACHE_DIR/tuning.db``),
so a later ``tilefx.compile(model, tune=N)`` measures nothing. Ctrl-C stops
cleanly; a rerun resumes.

``--ray`` builds and measures on a local Ray (attached, or started here);
``--ray ADDRESS`` on a Ray cluster (``autotune/cluster.py``: measuring nodes offer
the target's ``tilefx-measure:<hash>`` resource). Put it after MODEL, or write
``--ray=ADDRESS``. Records are written by this process only, to ``--db`` (a file here,
or a ``postgresql://`` server a team shares). ``tilefx ray-resources`` prints the
resource a node offers: ``ray start ... --resources="$(tilefx ray-resources)"``.
"""

from __future__ import annotations

import argparse
from typing import Any

from tilefx.autotune.model_tune import tune_model
from tilefx.autotune.search import STRATEGIES
from tilefx.autotune.tuner import TuneOptions, Tuner, format_summary
from tilefx.codegen.target import Target
from tilefx.compiler.cli import SPEC_HELP, CLIError, load_model, parse_input_spec, ray_pair
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import model_kernels
from tilefx.compiler.session import CompileSession


def add_parser(sub: Any) -> None:
    """Register the ``tune`` subcommand on ``cli.py``'s subparsers."""
    p = sub.add_parser("tune", help="autotune the kernels of a model into the tuning database")
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:attr or package.module:attr")
    p.add_argument("--input", metavar="SPEC", type=parse_input_spec, action="append",
                   required=True, help=f"one per model input: {SPEC_HELP}")
    p.add_argument("--target", default="cpu", help="cpu (the host), cpu:<llvm mcpu> or cuda")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, default=32, help="new candidates per kernel (32)")
    budget.add_argument("--time", metavar="BUDGET", help="time budget per kernel, e.g. 30s, 2m")
    budget.add_argument("--budget", metavar="TIME", help="time budget for the whole model, e.g. "
                        "60s, 5m: shared among the kernels by expected gain")
    p.add_argument("--strategy", choices=STRATEGIES, default="evolutionary")
    p.add_argument("--workers", type=int, default=1, help="builder processes (0: in process)")
    p.add_argument("--batch", type=int, default=8, help="candidates per round")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per candidate run")
    p.add_argument("--db", help="tuning database: a file or postgresql://user@host:port/db (default: "
                   "$TILEFX_TUNING_DB, else the cache dir's tuning.db)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="ray", default=None, metavar="ADDRESS",
                   help="build and measure on Ray: a local one (no ADDRESS) or the cluster at "
                   "ADDRESS (host:port); --workers is then the cluster's business")
    p.set_defaults(func=cmd_tune)

    r = sub.add_parser("ray-resources", help="the Ray resource this machine offers to measure for a "
                       "target: ray start --resources=\"$(tilefx ray-resources)\"")
    r.add_argument("--target", default="cpu", help="cpu (the host), cpu:<llvm mcpu> or cuda")
    r.add_argument("--devices", type=int, default=1,
                   help="measurements at once on this node: 1 per device (a CPU is one device)")
    r.set_defaults(func=cmd_ray_resources)


def cmd_ray_resources(args: argparse.Namespace) -> int:
    """Print ``{"tilefx-measure:<hash>": N}``: a node started with it measures for ``--target``.

    The hash is of the target key (CPU model features or GPU name), so only nodes whose
    hardware gives the same key can take a measurement; builds go anywhere."""
    import json

    from tilefx.autotune.cluster import measure_resource  # imports no ray at module level

    if args.devices < 1:
        raise CLIError(f"--devices must be at least 1, got {args.devices}")
    try:
        target = Target.parse(args.target)
    except ValueError as e:
        raise CLIError(f"--target: {e}") from None
    print(json.dumps({measure_resource(target): args.devices}))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    if args.trials is not None and args.trials < 1:
        raise CLIError(f"--trials must be at least 1, got {args.trials}")
    try:
        options = TuneOptions.from_tune(args.budget or args.time or args.trials,
                                        strategy=args.strategy, workers=args.workers,
                                        batch=args.batch, timeout=args.timeout, db_path=args.db,
                                        progress=not args.no_progress)
        if (args.budget or args.time) and options.seconds is None:
            raise ValueError("a time, not a number of trials")
    except ValueError:
        flag, value = ("--budget", args.budget) if args.budget else ("--time", args.time)
        raise CLIError(f"{flag} {value!r}: give a time, e.g. 30s, 2m") from None
    if args.budget:  # the whole model's: model_tune.py shares it among the kernels
        options.model_seconds, options.seconds = options.seconds, None
    model = load_model(args.model)
    tensors = tuple(spec.make(seed=i) for i, spec in enumerate(args.input))
    with CompileSession() as session:
        found = model_kernels(model, tensors, CompileOptions(target=args.target), session)
    kernels, bindings, target = found.kernels, found.bindings, found.target
    if args.ray:
        options.cluster = args.ray
    pair = ray_pair(target, options, args.ray) if args.ray else {}
    print(f"tilefx tune {args.model}: {len(kernels)} distinct kernels on {target.key()}")
    tuner = Tuner(target, options, **pair)
    report = None
    try:
        if options.model_seconds is not None:
            report = tune_model(tuner, [op for op in found.graph.ops if op.name == "kernel"],
                                bindings, echo=print)
        else:
            for op in kernels:
                tuner.tune_kernel(op, bindings)
    finally:
        tuner.close()
    print(format_summary(tuner.results))
    if report is not None:
        print(report.line())
    if tuner.time_summary():
        print(tuner.time_summary())
    if tuner.interrupted:
        print("interrupted: measurements so far are saved; run the same command to resume")
        return 130
    return 0
