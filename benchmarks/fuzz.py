"""Differential fuzzing of tilefx against eager PyTorch, counting instead of stopping.

    python benchmarks/fuzz.py --examples 500                   # every target, both levels
    python benchmarks/fuzz.py --examples 200 --targets avx2,generic --level schedule
    python benchmarks/fuzz.py --patterns bmm,attention --seed 3

Draws cases from the pattern table of ``tests/differential/patterns.py`` with hypothesis
and checks them with ``tests/differential/harness.py``, as ``pytest -m fuzz
tests/differential`` does, but a failure does not stop the run (nor is it shrunk): at
the end it prints per target the cases, kernels and schedules checked, wrong results,
build failures, crashes and fallbacks, and one line per failure (``case(...)`` rebuilds
it; shrink it with ``pytest -m fuzz`` or by hand, then keep it in
``tests/differential/test_regressions.py``). The Triton interpreter is slow, so Triton
draws a fifth of the examples, at small sizes. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.differential
os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=int(os.environ.get("TILEFX_FUZZ_EXAMPLES", "100")))
    parser.add_argument("--targets", default="native,avx2,generic,triton")
    parser.add_argument("--level", choices=("module", "schedule", "both"), default="both")
    parser.add_argument("--patterns", default="", help="comma-separated pattern names (default: all)")
    parser.add_argument("--schedules", type=int, default=6, help="schedules drawn per kernel")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    from hypothesis import HealthCheck, given, seed, settings, strategies as st

    from tests.differential.harness import OK, Outcome, Stats, check_module, check_schedule, kernel_ops, \
        kernel_space
    from tilefx.codegen.space import EXTERN
    from tilefx.codegen.schedule import Schedule
    from tests.differential.patterns import cases_of

    warnings.filterwarnings("ignore")
    logging.getLogger("tilefx").setLevel(logging.ERROR)  # fallbacks and failed builds: counted below
    names = tuple(p for p in args.patterns.split(",") if p) or None
    stats = Stats(max_failures=200)
    started = time.perf_counter()

    def run(target: str, level: str) -> None:
        n = args.examples if target != "triton" else max(1, args.examples // 5)
        conf = settings(max_examples=n, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))

        def module_case(c: object) -> None:
            stats.add(target, "cases", check_module(c, target), repr(c))

        def schedule_case(c: object, data: st.DataObject) -> None:
            try:
                kernels = kernel_ops(c, target)
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                stats.add(target, "cases", Outcome("crash", f"lowering: {type(e).__name__}: {e}"), repr(c))
                return
            stats.add(target, "cases", Outcome(OK, kernels=len(kernels)), repr(c))
            for i, k in enumerate(kernels):
                space = kernel_space(k, target)
                for _ in range(args.schedules):
                    s = Schedule.of(**data.draw(st.fixed_dictionaries(
                        {name: st.sampled_from(values) for name, values in space.knobs})))
                    stats.add(target, "schedules", check_schedule(k, target, s), f"{c!r} kernel {i}, {s}")
                if space.has_extern:
                    stats.add(target, "schedules", check_schedule(k, target, EXTERN), f"{c!r} kernel {i}, EXTERN")

        small = target == "triton"
        if level == "module":
            test = given(cases_of(names, small))(module_case)
        else:
            test = given(cases_of(names, small, specials_drawn=False), st.data())(schedule_case)
        test = conf(test)
        if args.seed is not None:
            test = seed(args.seed)(test)
        t0 = time.perf_counter()
        test()
        print(f"{target} {level}: {n} examples in {time.perf_counter() - t0:.0f}s", flush=True)

    levels = ("module", "schedule") if args.level == "both" else (args.level,)
    for target in args.targets.split(","):
        for level in levels:
            run(target, level)
    print(f"\n{stats.summary()}\ntotal {time.perf_counter() - started:.0f}s")
    bad = sum(c[k] for c in stats.counts.values() for k in ("wrong", "build failure", "crash"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
