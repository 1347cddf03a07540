"""Schedule level: every point of a kernel's search space must compute the same function.

The tuner may pick any schedule of ``SearchSpace.for_kernel`` (and the driver runs the
default one unchecked), so a template that is wrong for one knob combination, e.g. a
register tile that does not divide an odd extent, is a silent wrong result waiting
for a tuning run. Each kernel of a compiled graph is built with schedules drawn from
its space (and the extern library candidate) and compared on the tuner's seeded
``reference_inputs`` with ``reference_outputs`` by ``outputs_match``.

- ``test_drawn_schedules``: hypothesis draws a case from the pattern table, then a
  few schedules per kernel, knob by knob (so a failure shrinks to small knob values).
- ``test_fixed_kernel_space``: a few small awkward kernels, each with a deterministic
  sample that covers every value of every knob (default run); under ``fuzz`` their
  whole space when it has at most ``TILEFX_FUZZ_SPACE_LIMIT`` points (default 400),
  else a fixed random sample of that many.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, strategies as st

from tests.differential.budget import (DEFAULT_SCHEDULE_CASES, SCHEDULES_PER_KERNEL, fuzz_examples,
                                         hypothesis_settings)
from tests.differential.harness import (OK, TARGET_NAMES, Outcome, Stats, check_schedule, describe_kernel,
                                        kernel_ops, kernel_space)
from tests.differential.patterns import Case, case, cases_of

# patterns whose kernels have real schedule spaces (the op table's are mostly pointwise)
SCHEDULED = ("linear", "matmul_epilogue", "linear_chain", "bmm", "bcast_matmul", "reduction",
             "attention", "conv", "layout")


def check_schedules(target: str, max_examples: int, per_kernel: int, fuzz: bool, stats: Stats) -> None:
    @hypothesis_settings(max_examples, fuzz)
    @given(c=cases_of(SCHEDULED, small=target == "triton", specials_drawn=False), data=st.data())
    def prop(c: Case, data: st.DataObject) -> None:
        kernels = kernel_ops(c, target)
        stats.add(target, "cases", Outcome(OK, kernels=len(kernels)), repr(c))
        for i, k in enumerate(kernels):
            space = kernel_space(k, target)
            schedules = [data.draw(st.fixed_dictionaries({name: st.sampled_from(values)
                                                          for name, values in space.knobs}),
                                   label=f"kernel {i} schedule {j}") for j in range(per_kernel)]
            from tilefx.codegen.schedule import Schedule

            for s in map(lambda d: Schedule.of(**d), schedules):
                outcome = check_schedule(k, target, s)
                stats.add(target, "schedules", outcome, f"{c!r} kernel {i}, {s}")
                assert outcome.status == OK, (f"{outcome.status} on {target}, kernel {i} of {c!r} "
                                              f"({describe_kernel(k)}), {s}:\n{outcome.detail}")
            if space.has_extern:
                from tilefx.codegen.space import EXTERN

                outcome = check_schedule(k, target, EXTERN)
                stats.add(target, "schedules", outcome, f"{c!r} kernel {i}, EXTERN")
                assert outcome.status == OK, f"extern candidate on {target}, kernel {i} of {c!r}: {outcome.detail}"

    prop()


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_drawn_schedules(target: str, diff_stats: Stats) -> None:
    check_schedules(target, DEFAULT_SCHEDULE_CASES[target], SCHEDULES_PER_KERNEL, False, diff_stats)


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_drawn_schedules_fuzz(target: str, diff_stats: Stats) -> None:
    n = fuzz_examples() if target != "triton" else max(1, fuzz_examples() // 5)
    check_schedules(target, n, 6, True, diff_stats)


# ---- fixed small awkward kernels -------------------------------------------------------------

FIXED: dict[str, Case] = {
    "bmm_tb_6x37x64": case("bmm", b=6, m=37, n=37, k=64, ta=False, tb=True),
    "matmul_bias_gelu_37x97x33": case("matmul_epilogue", m=37, k=97, n=33, bias=(33,), act="gelu"),
    "conv3x3_s2_g2": case("conv", n=1, cin=4, cout=6, h=13, w=11, kernel=(3, 3), stride=2, pad=1, dil=1,
                          groups=2, bias=True, bn=False, act="none"),
    "softmax_37": case("reduction", shape=(5, 37), op="softmax", dim=-1, keepdim=False),
    "layer_norm_97": case("reduction", shape=(7, 97), op="layer_norm", dim=-1, keepdim=False),
}
# the Triton reduction template's row epilogues (on cuda only): a middle axis, a looped row
FIXED_TRITON: dict[str, Case] = {
    "center_max_3x7x5_dim1": case("reduction", shape=(3, 7, 5), op="center_max", dim=1, keepdim=False),
    "l2_normalize_1x4100": case("reduction", shape=(1, 4100), op="l2_normalize", dim=-1, keepdim=False),
}


def covering_sample(space: object, n: int, seed: int = 0) -> list:
    """Schedules in which every value of every knob appears (the diagonal of the knob
    lists), topped up with seeded random points to ``n``; all of them if fewer."""
    from tilefx.codegen.schedule import Schedule

    if space.size <= n:  # type: ignore[attr-defined]
        return list(space.enumerate())  # type: ignore[attr-defined]
    knobs = space.knobs  # type: ignore[attr-defined]
    out = [Schedule.of(**{k: v[i % len(v)] for k, v in knobs}) for i in range(max(len(v) for _, v in knobs))]
    rng = random.Random(seed)
    seen = set(out)
    while len(out) < n:
        s = space.sample(rng)  # type: ignore[attr-defined]
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def check_fixed(name: str, target: str, limit: int, stats: Stats) -> list[str]:
    """Problems with the sampled (or every) schedule of each kernel of ``FIXED[name]``
    (``FIXED_TRITON[name]`` on triton)."""
    from tilefx.codegen.space import EXTERN

    problems = []
    fixed = FIXED_TRITON if target == "triton" else FIXED
    for i, k in enumerate(kernel_ops(fixed[name], target)):
        space = kernel_space(k, target)
        schedules = covering_sample(space, limit) + ([EXTERN] if space.has_extern else [])
        for s in schedules:
            outcome = check_schedule(k, target, s)
            stats.add(target, "schedules", outcome, f"FIXED[{name!r}] kernel {i}, {s}")
            if outcome.status != OK:
                problems.append(f"kernel {i} ({describe_kernel(k)}) {s}: {outcome.status}: {outcome.detail}")
    return problems


CPU_TARGETS = ("native", "avx2", "generic")


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name", FIXED)
def test_fixed_kernel_space(name: str, target: str, diff_stats: Stats) -> None:
    problems = check_fixed(name, target, 6, diff_stats)
    assert not problems, f"{len(problems)} wrong schedules of {name} on {target}:\n" + "\n".join(problems[:10])


@pytest.mark.parametrize("name", FIXED_TRITON)
def test_fixed_kernel_space_triton(name: str, diff_stats: Stats) -> None:
    problems = check_fixed(name, "triton", 8, diff_stats)
    assert not problems, f"{len(problems)} wrong schedules of {name} on triton:\n" + "\n".join(problems[:10])


@pytest.mark.fuzz
@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name", FIXED)
def test_fixed_kernel_space_fuzz(name: str, target: str, diff_stats: Stats) -> None:
    limit = int(os.environ.get("TILEFX_FUZZ_SPACE_LIMIT", "400"))
    problems = check_fixed(name, target, limit, diff_stats)
    assert not problems, f"{len(problems)} wrong schedules of {name} on {target}:\n" + "\n".join(problems[:10])
