"""Build-and-compare helpers of the differential tests (one copy, used by every test here
and by ``benchmarks/fuzz.py``).

Two levels of checking, each returning an ``Outcome`` instead of raising, so a property
test can assert on it and the fuzz script can count it:

- ``check_module(case, target)``: ``tilefx.compile`` the case's function for ``target``
  and compare with eager PyTorch on two seeded input sets (the one it was compiled
  with and a fresh one). A kernel that failed to build runs in the reference
  interpreter (the driver's non-strict mode) and is reported as a build failure, so one
  bad kernel doesn't hide the numbers of the others.
- ``check_schedule(kernel_op, target, schedule)``: build one kernel with one schedule
  of its search space and compare its outputs on ``reference_inputs`` with the IR
  reference (``outputs_match``, the tuner's own correctness guard). Every point of a
  space must be right: the tuner may pick any of them, and the default schedule is not
  checked by the tuner at all.

Targets: the host CPU, an AVX2 CPU (``haswell``, 32-byte vectors), generic ``x86-64``
(16-byte vectors; the host runs both) and Triton (``cuda``) under ``TRITON_INTERPRET=1``.
Targets are named as a user names them (``Target.parse("cpu:haswell")``), which gives
the named CPU its own vector width.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when a Triton kernel is defined

import torch  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

TARGET_NAMES = ("native", "avx2", "generic", "triton")


def make_target(name: str) -> Any:
    from tilefx.codegen.target import Target, cuda_target

    host = Target.host_cpu()
    if name == "native":
        return host
    if name == "avx2":
        return Target.parse("cpu:haswell")
    if name == "generic":
        return Target.parse("cpu:x86-64")
    if name == "triton":
        return cuda_target()
    raise ValueError(f"unknown differential target {name!r} (one of {TARGET_NAMES})")


# ---- outcomes and counts ---------------------------------------------------------------

OK, WRONG, BUILD, CRASH, FALLBACK = "ok", "wrong", "build failure", "crash", "fallback"


@dataclass
class Outcome:
    status: str                 # OK, WRONG, BUILD, CRASH or FALLBACK
    detail: str = ""
    kernels: int = 0            # kernels the case compiled to (module level)

    @property
    def ok(self) -> bool:
        return self.status in (OK, FALLBACK)  # a fallback runs eager: slow, never wrong


@dataclass
class Stats:
    """Counts per target of what a (fuzz) run checked; printed at the end of the run."""

    counts: dict[str, Counter] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # first lines, to reproduce by hand
    max_failures: int = 40

    def add(self, target: str, what: str, outcome: Outcome, repro: str) -> None:
        c = self.counts.setdefault(target, Counter())
        c[what] += 1
        c["kernels"] += outcome.kernels
        if outcome.status != OK:
            c[outcome.status] += 1
            if outcome.status != FALLBACK and len(self.failures) < self.max_failures:
                first = outcome.detail.strip().splitlines()[0][:240] if outcome.detail else ""
                self.failures.append(f"[{target}] {outcome.status}: {repro}\n      {first}")

    def summary(self) -> str:
        cols = ("cases", "kernels", "schedules", WRONG, BUILD, CRASH, FALLBACK)
        lines = ["differential: " + " ".join(f"{c:>13}" for c in ("target",) + cols)]
        for target, c in sorted(self.counts.items()):
            lines.append("              " + f"{target:>13} " + " ".join(f"{c[k]:>13}" for k in cols))
        if self.failures:
            lines.append("failures (first of each; rerun with pytest -m fuzz to shrink):")
            lines += [f"  {f}" for f in self.failures]
        return "\n".join(lines)


# ---- comparing ---------------------------------------------------------------------------

def compare(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], rtol: float, atol: float) -> str | None:
    """None if equal within ``|g - w| <= atol * scale + rtol * |w|`` (``scale`` the
    largest finite ``|w|``, so the tolerance follows the output's magnitude, as
    ``outputs_match`` does), integers and bools exactly; else what differs."""
    if len(got) != len(want):
        return f"{len(got)} outputs, eager has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if g.dtype != w.dtype or tuple(g.shape) != tuple(w.shape):
            return f"output {i}: {g.dtype}{tuple(g.shape)} vs eager {w.dtype}{tuple(w.shape)}"
        if not w.is_floating_point():
            if not torch.equal(g, w):
                bad = int((g != w).sum())
                return f"output {i}: {bad}/{w.numel()} integer elements differ"
            continue
        g64, w64 = g.double(), w.double()
        if not torch.equal(torch.isnan(g64), torch.isnan(w64)):
            return f"output {i}: NaN where eager has none (or the reverse)"
        inf = torch.isinf(w64)
        if not torch.equal(torch.isinf(g64), inf) or not torch.equal(g64[inf], w64[inf]):
            return f"output {i}: +-Inf where eager has none, or of the other sign"
        fin = torch.isfinite(w64)
        scale = float(w64[fin].abs().max()) if bool(fin.any()) else 1.0
        err = (g64 - w64).abs().nan_to_num(0.0)
        bad = err > atol * max(scale, 1e-30) + rtol * w64.abs()
        if bool(bad.any()):
            where = tuple(int(j) for j in torch.nonzero(bad)[0])
            return (f"output {i} {tuple(w.shape)}: {int(bad.sum())}/{w.numel()} wrong, max |err| "
                    f"{float(err.max()):.3g} (rel to max |eager| {float(err.max()) / (scale or 1):.3g}); "
                    f"first at {where}: {float(g64[where]):.6g} vs eager {float(w64[where]):.6g}")
    return None


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    # TVM errors put the message last, after the C++ stack
    useful = [ln for ln in lines if "Check failed" in ln or "Error" in ln] or lines
    return useful[-1][:300] if useful else type(e).__name__


# ---- module level ------------------------------------------------------------------------

def check_module(case: Any, target_name: str) -> Outcome:
    """Compile ``case`` (a ``patterns.Case``) for the target and compare with eager."""
    import tilefx
    from tilefx.compiler.options import CompileOptions

    fn = case.build()
    inputs0, inputs1 = case.inputs(0), case.inputs(1)
    if case.special == "index_out_of_range":
        return _check_index_error(fn, case, target_name)
    eager = _eager_in_float64 if case.special else _eager
    try:
        want0, want1 = eager(fn, inputs0), eager(fn, inputs1)
    except Exception as e:  # noqa: BLE001 - a pattern eager rejects is a bug of the pattern
        raise AssertionError(f"eager PyTorch rejects {case}: {e}") from e
    options = CompileOptions(target=make_target(target_name), strict=False)
    try:
        compiled = tilefx.compile(fn, options=options)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # Triton interpreter: masked lanes
            got0 = _tensors(compiled(*inputs0))
            got1 = _tensors(compiled(*inputs1))
    except Exception as e:  # noqa: BLE001 - any exception is the finding
        return Outcome(CRASH, _first_line(e) + "\n" + traceback.format_exc(limit=-4))
    record = compiled.records[-1]
    n = len(record.kernels)
    failed = [k for k in record.kernels if k.backend == "interpreter"]
    for got, want in ((got0, want0), (got1, want1)):
        problem = compare(got, want, case.rtol, case.atol)
        if problem:
            return Outcome(WRONG, problem, n)
    if failed:
        return Outcome(BUILD, "; ".join(f"{k.name} ({'+'.join(k.fused_ops)}): {k.error}" for k in failed), n)
    if record.fallbacks:
        return Outcome(FALLBACK, "; ".join(f"{f.target}: {f.reason}" for f in record.fallbacks), n)
    return Outcome(OK, "", n)


def _eager(fn: Any, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return _tensors(fn(*inputs))


def _eager_in_float64(fn: Any, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eager's answer on NaN/Inf inputs, computed in float64 and cast back. Eager float32
    is not one answer there: its vectorized gelu gives NaN at +inf where its scalar loop
    and float64 give inf, depending on the tensor's length. float64 runs the plain math."""
    import copy

    wide = copy.deepcopy(fn).double() if isinstance(fn, torch.nn.Module) else fn
    with torch.no_grad():
        narrow_out = _tensors(fn(*inputs))
        wide_out = _tensors(wide(*[t.double() if t.dtype == torch.float32 else t for t in inputs]))
    return [w.to(n.dtype) for w, n in zip(wide_out, narrow_out)]


def _check_index_error(fn: Any, case: Any, target_name: str) -> Outcome:
    """An index past the table: eager raises IndexError, so must the compiled module (it
    once returned heap contents, or segfaulted). Compiled on good indices, then called
    with the bad ones, as a user's model meets them."""
    import tilefx
    from tilefx.compiler.options import CompileOptions

    good, bad = case.inputs(0), case.inputs(1)
    good = tuple(t.clamp(0, 0) if not t.is_floating_point() else t for t in good)
    with torch.no_grad():
        try:
            fn(*bad)
            raise AssertionError(f"eager accepts the out-of-range index of {case}")
        except IndexError:
            pass
        except RuntimeError as e:  # gather says "index ... out of bounds" as a RuntimeError
            if "out of bounds" not in str(e) and "out of range" not in str(e):
                raise
    compiled = tilefx.compile(fn, options=CompileOptions(target=make_target(target_name)))
    try:
        with torch.no_grad():
            compiled(*good)
            compiled(*bad)
    except (IndexError, RuntimeError) as e:
        if isinstance(e, IndexError) or "out of bounds" in str(e) or "out of range" in str(e):
            return Outcome(OK, "", len(compiled.records[-1].kernels))
        return Outcome(CRASH, _first_line(e))
    return Outcome(WRONG, "an out-of-range index gave a result instead of an IndexError")


# ---- schedule level -----------------------------------------------------------------------

def kernel_ops(case: Any, target_name: str) -> list[Any]:
    """The ``kernel`` ops of the case's optimized IR for the target (nothing is built)."""
    from tilefx.compiler.capture import capture
    from tilefx.compiler.options import CompileOptions
    from tilefx.compiler.pipeline import lower, optimize
    from tilefx.compiler.records import CompileRecord
    from tilefx.compiler.session import CompileSession

    fn = case.build()
    captured = capture(fn, case.inputs(0))
    options = CompileOptions(target=make_target(target_name))
    record = CompileRecord(case.name)
    with CompileSession() as session:
        graph = optimize(lower(captured, record), options, options.resolved_target(), session, record)
    return [op for op in graph.ops if op.name == "kernel"]


def kernel_space(kernel_op: Any, target_name: str) -> Any:
    from tilefx.codegen.space import SearchSpace

    return SearchSpace.for_kernel(kernel_op, make_target(target_name))


def _builder(target_name: str) -> Callable[..., Any]:
    if target_name == "triton":
        from tilefx.codegen.triton import build_kernel
    else:
        from tilefx.codegen.tvm.kernel import build_kernel
    return build_kernel


def check_schedule(kernel_op: Any, target_name: str, schedule: Any) -> Outcome:
    """Build ``kernel_op`` with ``schedule`` (``EXTERN``: the library candidate) and
    compare with the IR reference on the tuner's seeded inputs."""
    from tilefx.ir.functional_hash import outputs_match, reference_inputs, reference_outputs
    from tilefx.codegen.space import is_extern

    try:  # the tuner draws the same inputs: a reference that cannot run them is a finding too
        inputs = reference_inputs(kernel_op)
        want = reference_outputs(kernel_op, inputs)
    except Exception as e:  # noqa: BLE001
        return Outcome(CRASH, "reference run: " + _first_line(e))
    try:
        if is_extern(schedule):
            if target_name == "triton":
                from tilefx.codegen.triton.measure import resolve

                built = _builder(target_name)(kernel_op, make_target(target_name), resolve(schedule))
            else:
                from tilefx.codegen.measure import LibraryKernel

                built = LibraryKernel(kernel_op)
        else:
            built = _builder(target_name)(kernel_op, make_target(target_name), schedule)
    except Exception as e:  # noqa: BLE001
        return Outcome(BUILD, _first_line(e))
    outs = [torch.empty(tuple(w.shape), dtype=w.dtype) for w in want]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            built(*inputs, *outs)
    except Exception as e:  # noqa: BLE001
        return Outcome(CRASH, _first_line(e))
    if outputs_match(outs, want):
        return Outcome(OK)
    # say how wrong, with the same tolerance rule as outputs_match (float32: 1e-4, 1e-5)
    return Outcome(WRONG, compare(outs, want, rtol=1e-4, atol=1e-5) or "outputs_match is False")


def describe_kernel(kernel_op: Any) -> str:
    body = kernel_op.body
    ins = ", ".join(str(v.type) for v in body.inputs)
    ops = "+".join(op.name for op in body.ops if op.name != "const")
    return f"{kernel_op.attr('kind')} {ops} ({ins})"
