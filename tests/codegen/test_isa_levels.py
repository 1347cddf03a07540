"""Every instruction-set level tilefx targets computes the right numbers.

Users run tilefx on AVX2-only x86 machines (most laptops and servers) and on
generic x86-64; the development machine has AVX-512. An AVX-512 machine runs
AVX2 and SSE code, so each case here is built for the host (native), for an
AVX2 CPU (``haswell``, ``znver2``: 32-byte vectors) and for generic ``x86-64``
(16-byte vectors), and run here.

The first case is the one users saw go wrong: ``q @ k.T`` at sizes with no
power-of-two divisor (the register tile shrank to 1 x 1, and the template
vectorized the loop around the whole reduction: relative error 1.5).
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import tilefx
from tilefx.ir.functional_hash import outputs_match, reference_inputs, reference_outputs
from tilefx.codegen.space import SearchSpace
from tilefx.codegen.target import Target

LEVELS = ["cpu", "cpu:znver2", "cpu:haswell", "cpu:x86-64"]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed * 131 + sum(shape)))


def _ints(*shape: int, seed: int, high: int = 50) -> torch.Tensor:
    return torch.randint(-high, high, shape, generator=torch.Generator().manual_seed(seed))


def _qkT(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.bmm(q, k.transpose(1, 2))


# The differential regressions (tests/differential/test_regressions.py) run the users'
# cases on native, haswell and x86-64; here the first of them on znver2 too, and the ops
# LLVM cannot build as they were written (bool add, integer pow) on every level.
CASES = {
    "bmm_kT_6x37x64": (_qkT, lambda: (_randn(6, 37, 64), _randn(6, 37, 64, seed=1))),
    "matmul_add_tanh": (lambda a, b, c: torch.tanh(a @ b + c),
                        lambda: (_randn(37, 33), _randn(33, 97, seed=1), _randn(97, seed=2))),
    # LLVM has no bool add and no integer pow: these failed to build and ran interpreted
    "bool_add_mul": (lambda a, b: (a + b) * a, lambda: (_ints(7, 13, seed=3) > 0, _ints(7, 13, seed=4) > 0)),
    "int_pow": (lambda a, b: (a + b) ** 2 + a ** b.abs(), lambda: (_ints(7, 13, seed=5, high=4),
                                                                  _ints(7, 13, seed=6, high=4))),
}


def test_named_cpus_get_their_own_vector_width():
    assert Target.parse("cpu:haswell").vector_bytes == 32
    assert Target.parse("cpu:znver2").vector_bytes == 32
    assert Target.parse("cpu:x86-64").vector_bytes == 16
    assert Target.parse("cpu:skylake-avx512").vector_bytes == 64
    assert Target.parse("cpu:haswell").key() != Target.parse("cpu:x86-64").key()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_matches_eager(case: str, level: str):
    fn, make = CASES[case]
    if isinstance(fn, nn.Module):
        fn.eval()
    inputs = make()
    compiled = tilefx.compile(fn, target=level)
    got, want = compiled(*inputs), fn(*inputs)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)
    record = compiled.records[0]
    assert not [k.name for k in record.kernels if k.backend == "interpreter"], record.report()


@pytest.mark.parametrize("level", LEVELS[1:])
def test_every_sampled_schedule_of_qkT_is_right(level: str):
    """The tuner may pick any point of the space: a seeded sample of them, on each level."""
    from tilefx.codegen.tvm import build_kernel

    target = Target.parse(level)
    compiled = tilefx.compile(_qkT, target=target)
    compiled(_randn(6, 37, 64), _randn(6, 37, 64, seed=1))
    (op,) = [o for o in compiled.records[0].optimized_ir.ops if o.name == "kernel"]
    space = SearchSpace.for_kernel(op, target)
    rng = random.Random(14)
    inputs = reference_inputs(op)
    want = reference_outputs(op, inputs)
    for schedule in [space.sample(rng) for _ in range(8)]:
        built = build_kernel(op, target, schedule)
        out = [torch.empty_like(w) for w in want]
        built(*inputs, *out)
        assert outputs_match(out, want), (level, schedule)
        assert "T.vectorized(37)" not in built.lowered  # the loop around the reduction stays serial
