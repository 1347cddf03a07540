"""Module level: hypothesis draws a small program from the pattern table
(``patterns.py``: contractions + epilogues, reductions, attention, convolutions, layout
chains, index ops, integer elementwise, the op table) at awkward sizes, compiles it
with ``tilefx.compile`` for one target and compares with eager PyTorch.

Why: CPU kernels once computed wrong numbers silently on targets other than the one
they were written on (AVX2, generic x86-64) and at sizes no hand-written test used.
A failure shrinks to a minimal ``case(...)``; keep it in ``test_regressions.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from tests.differential.budget import DEFAULT_EXAMPLES, fuzz_examples, hypothesis_settings
from tests.differential.harness import TARGET_NAMES, Stats, check_module
from tests.differential.patterns import cases_of


def check_modules(target: str, max_examples: int, fuzz: bool, stats: Stats) -> None:
    @hypothesis_settings(max_examples, fuzz)
    @given(c=cases_of(small=target == "triton"))
    def prop(c: object) -> None:
        outcome = check_module(c, target)
        stats.add(target, "cases", outcome, repr(c))
        assert outcome.ok, f"{outcome.status} on {target}: {c!r}\n{outcome.detail}"

    prop()


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_compiled_matches_eager(target: str, diff_stats: Stats) -> None:
    check_modules(target, DEFAULT_EXAMPLES[target], False, diff_stats)


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_compiled_matches_eager_fuzz(target: str, diff_stats: Stats) -> None:
    n = fuzz_examples() if target != "triton" else max(1, fuzz_examples() // 5)
    check_modules(target, n, True, diff_stats)


def test_compare_catches_a_wrong_element() -> None:
    """The harness itself: one element off by more than the tolerance is reported."""
    import torch

    from tests.differential.harness import compare

    want = torch.randn(37, 13, generator=torch.Generator().manual_seed(0))
    got = want.clone()
    assert compare([got], [want], 1e-4, 1e-4) is None
    got[36, 12] += 1e-2 * float(want.abs().max())
    assert "1/481 wrong" in (compare([got], [want], 1e-4, 1e-4) or "")
    assert compare([want.to(torch.int64)], [want.to(torch.int32)], 0, 0) is not None
