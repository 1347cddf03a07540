"""Regressions: every wrong result or failed build the differential tests have found,
kept as explicit cases (checked in the default run, on every CPU target).

Module cases compile ``case(...)`` with ``tilefx.compile`` and compare with eager;
schedule cases build one kernel of a case with one schedule of its space and compare
with the IR reference (``outputs_match``), as the tuner's guard would.
The first ones are those that started this folder (AVX2/generic CPUs computing wrong
numbers silently; two build failures).
"""

from __future__ import annotations

import pytest

from tests.differential.harness import OK, Stats, check_module, check_schedule, describe_kernel, kernel_ops
from tests.differential.patterns import Case, case

CPU_TARGETS = ("native", "avx2", "generic")

MODULE_CASES: list[tuple[str, Case]] = [
    # q @ k^T: rel err 1.5 on AVX2, also wrong on the AVX-512 host
    ("bmm_qkT_6x37x64", case("bmm", b=6, m=37, n=37, k=64, ta=False, tb=True)),
    ("bmm_both_transposed", case("bmm", b=3, m=13, n=33, k=17, ta=True, tb=True)),
    # [B,H,M,K] @ [H,K,N]
    ("bcast_matmul_bhmk_hkn", case("bcast_matmul", b=2, h=3, m=37, k=33, n=65, rhs="hkn")),
    ("bcast_matmul_b1kn", case("bcast_matmul", b=3, h=2, m=7, k=13, n=31, rhs="b1kn")),
    ("sdpa_odd_lengths", case("attention", b=2, h=3, lq=37, lk=13, d=7, dv=5, mask="none", scale=0.0)),
    ("sdpa_causal_odd", case("attention", b=1, h=2, lq=17, lk=17, d=13, dv=13, mask="causal", scale=0.0)),
    ("sdpa_bool_mask_odd", case("attention", b=1, h=1, lq=31, lk=33, d=5, dv=7, mask="bool", scale=0.3)),
    # Linear on a 3-D input: [129, 7, 2] -> 97
    ("linear_3d_129x7x2_to_97", case("linear", m=7, k=2, n=97, batch=129, bias=True, act="none",
                                     residual=False)),
    ("linear_chain_odd_widths", case("linear_chain", m=13, batch=0, widths=(33, 97, 7, 65), act="relu")),
    # failed to build: "Let cannot bind the same var to two different values"
    ("matmul_add_tanh", case("matmul_epilogue", m=37, k=97, n=33, bias=(33,), act="tanh")),
    ("matmul_bias_gelu_37x97x33", case("matmul_epilogue", m=37, k=97, n=33, bias=(33,), act="gelu")),
    # failed to build: t.MatchesCode(kDLFloat)
    ("int_add", case("int_elementwise", shape_a=(4, 7), shape_b=(4, 7), dtype="int64", op="add")),
    ("int32_add_broadcast", case("int_elementwise", shape_a=(3, 13), shape_b=(13,), dtype="int32", op="add")),
]

# (name, case, kernel index, schedule knobs): one schedule of one kernel's space
SCHEDULE_CASES: list[tuple[str, Case, int, dict]] = [
    # tile_m larger than M = 37 (the template clamps it): wrong on the host and on AVX2
    ("bmm_qkT_tile_m128", case("bmm", b=6, m=37, n=37, k=64, ta=False, tb=True), 0,
     dict(pack_b=False, parallel=False, reg_m=2, reg_n=16, tile_k=0, tile_m=128, tile_n=64, unroll_k=8)),
    # the seeded reference indices (0..3) were past a one-row table: the reference run (the
    # functional hash, the tuner's guard, the checked build) raised
    ("embedding_of_one_row", case("index", kind="embedding", num=1, dim=1, idx=(3,)), 0,
     dict(parallel=False, unroll=1, vectorize=1)),
]


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name,c", MODULE_CASES, ids=[n for n, _ in MODULE_CASES])
def test_module_regression(name: str, c: Case, target: str, diff_stats: Stats) -> None:
    outcome = check_module(c, target)
    diff_stats.add(target, "cases", outcome, repr(c))
    assert outcome.ok, f"{outcome.status} on {target}: {c!r}\n{outcome.detail}"


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name,c,index,knobs", SCHEDULE_CASES, ids=[s[0] for s in SCHEDULE_CASES])
def test_schedule_regression(name: str, c: Case, index: int, knobs: dict, target: str,
                             diff_stats: Stats) -> None:
    from tilefx.codegen.schedule import Schedule

    from tests.differential.harness import kernel_space

    kernel = kernel_ops(c, target)[index]
    space = kernel_space(kernel, target)
    # knob lists depend on the target's vector width: take the nearest listed value
    schedule = Schedule.of(**{k: (knobs[k] if knobs.get(k) in v else
                                  min(v, key=lambda x, w=knobs.get(k): abs(x - w)
                                      if isinstance(x, (int, float)) and isinstance(w, (int, float)) else 0))
                              for k, v in space.knobs})
    outcome = check_schedule(kernel, target, schedule)
    diff_stats.add(target, "schedules", outcome, f"{c!r} kernel {index}, {schedule}")
    assert outcome.status == OK, f"{outcome.status} on {target}: {describe_kernel(kernel)} {schedule}\n{outcome.detail}"


# ---- found with NaN / Inf inputs ------------------------------------------------------------

def _compiled_vs_eager(fn, inputs, target: str) -> None:
    import torch

    import tilefx
    from tests.differential.harness import make_target

    got = tilefx.compile(fn, target=make_target(target))(*inputs)
    torch.testing.assert_close(got, fn(*inputs), rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_attention_row_masked_from_every_key_is_zero(target: str) -> None:
    """torch's attention softmax is a safe one: a query masked from every key gives 0s
    (a padding row). The decomposed softmax gave NaN."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    keep = torch.rand(2, 3, 5, 5, generator=g) > 0.3
    keep[0, 1, 2] = False
    keep[1, 2, 4] = False
    _compiled_vs_eager(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                       (q, k, v, keep), target)


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_times_zero_and_minus_itself_keep_nan_and_inf(target: str) -> None:
    """TVM's simplifier folds x * 0.0 and x - x to 0: for inf and NaN, IEEE (and torch)
    say NaN."""
    import torch

    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.5, -2.0, 0.25, 7.0])
    _compiled_vs_eager(lambda t: (t * 0, 0 * t + 1, t - t), (x,), target)


@pytest.mark.parametrize("c,knobs", [
    (case("reduction", shape=(1,), op="sum", dim=0, keepdim=False),
     dict(RBLOCK=64, XBLOCK=1, num_warps=1, persistent=True)),
    (case("reduction", shape=(1, 1), op="log_softmax", dim=1, keepdim=False),
     dict(RBLOCK=64, XBLOCK=16, num_warps=16, persistent=False)),
], ids=["sum_of_one", "log_softmax_of_one"])
def test_triton_reduction_of_one_element(c: Case, knobs: dict, diff_stats: Stats) -> None:
    """A one-element input was loaded as a scalar and tl.sum(x, 1) has no axis 1: the
    Triton reduction failed to build at size 1 (found by the long run, Triton interpreted)."""
    from tilefx.codegen.schedule import Schedule

    (kernel,) = kernel_ops(c, "triton")
    outcome = check_schedule(kernel, "triton", Schedule.of(**knobs))
    diff_stats.add("triton", "schedules", outcome, f"{c!r}")
    assert outcome.status == OK, outcome.detail


def test_triton_layer_norm_of_a_one_element_table_gather(diff_stats: Stats) -> None:
    """The same at module level: a 1x1 embedding then layer_norm over its one column."""
    c = case("index", kind="embedding_ln", num=1, dim=1, idx=(3, 2))
    outcome = check_module(c, "triton")
    diff_stats.add("triton", "cases", outcome, repr(c))
    assert outcome.ok, outcome.detail
