"""Tuning Triton kernels: the cuda half of the tuner's space, fingerprint, builder and runner.

``tuner.Tuner`` is one loop for both backends. On a target of kind ``cuda``
it takes these pieces instead of the TVM ones (``space``, ``fingerprint``,
``measure.LocalBuilder``/``LocalRunner``); the workload keys (functional
hash), the database, the search strategies and the correctness guard are
the same.

- ``triton_space``: the Triton template's knobs (``codegen/triton``). Where
  the template has a library implementation (``impl="library"``: cuBLAS,
  cuDNN or torch SDPA through torch, plus the epilogue as one generated
  pointwise kernel) it is the space's *extern candidate*: the tuner's
  ``EXTERN`` schedule builds as ``LIBRARY`` (``resolve``), is measured
  first like on CPU, and the compiler builds it the same way, so a tuned
  kernel is never slower than the library.
- ``fingerprint``: sha256 of the generated module after the template has
  clamped block sizes to the problem, normalized (comments, blank lines and
  the kernel's name removed; the constexprs are literals in the launch
  line), plus the launch meta (num_warps, num_stages), the Triton version,
  the target key and whether Triton interprets. Equal fingerprint, equal
  code: measured once. Code equal to the library candidate's takes the
  extern fingerprint, so the library is measured once whichever schedule
  asks for it.
- ``TritonBuilder`` builds in this process (emitting the source is cheap;
  Triton compiles on the first launch, so on a GPU the builder launches
  each candidate once on the workload's inputs: a compile error or too
  much shared memory is a ``build_error``, never raised).
- ``CudaRunner`` runs each candidate once on ``reference_inputs`` (on the
  device) into NaN-filled outputs and compares them with
  ``reference_outputs`` (``wrong_result`` on a mismatch: never chosen),
  then times it with ``timing.cuda_samples`` (like ``triton.testing.do_bench``):
  warm-up for ``warmup_seconds``, then ``repeats`` or more calls (enough
  for ``rep_seconds``, at most ``max_repeats``), each between two CUDA
  events and after zeroing a 256 MB buffer so L2 starts cold; the samples
  are stored, their median is the latency.

Under ``TRITON_INTERPRET=1`` (CI: no GPU) the same kernels run on CPU
tensors in Triton's interpreter and are timed with ``time.perf_counter``
(``timing.host_samples``, single calls); every such measurement says so in
its note (the record's ``error`` field), and the fingerprints differ from
compiled code's, so interpreter timings never stand for GPU ones.

On a GPU the tuner takes ``isolated.IsolatedCudaRunner`` instead: the same
checks and timings in a child process that is killed and restarted when a
candidate hangs or faults, with ``TritonBuilder(launch=False)`` (candidates
compiled in parallel processes, ``prewarm.py``, never launched here). Under
the interpreter both stay in the tuning process. fp32 contractions
checked while ``torch.backends.cuda.matmul.allow_tf32`` is on (the user
opted into TF32), and fp32 convolutions while ``torch.backends.cudnn.allow_tf32``
is (torch's default), are compared at fp16 tolerance.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from tilefx import settings
from tilefx.codegen import timing
from tilefx.codegen.measure import (OUT_OF_TIME, BuildResult, MeasureResult, RunsInOrder,
                                    Workload, past)
from tilefx.codegen.space import SearchSpace, is_extern
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import build_kernel, default_schedule as default
from tilefx.codegen.triton.source import fingerprint as source_fingerprint
from tilefx.codegen.triton.templates import emit_source, space, template_for
from tilefx.ir.functional_hash import outputs_match, reference_inputs, reference_outputs
from tilefx.ir.identity import symbol_bindings
from tilefx.ir.types import DType

log = logging.getLogger("tilefx.autotune.cuda")

# the library implementation of the matmul, conv and attention templates (what EXTERN builds)
LIBRARY = Schedule.of(impl="library", EPILOGUE_BLOCK=1024)
FINGERPRINT_VERSION = 1
INTERPRETER_NOTE = "TRITON_INTERPRET=1: timed with time.perf_counter on CPU tensors, not GPU time"
PREWARM_SECONDS = 120.0  # one batch's parallel compiles; past it the pool is killed (a hang)


def interpreting() -> bool:
    return settings.triton_interprets()


def resolve(schedule: Schedule | None) -> Schedule | None:
    """The Triton schedule a tuner schedule builds: ``EXTERN`` is the template's library impl."""
    return LIBRARY if is_extern(schedule) else schedule


# ------------------------------------------------------------------ space, fingerprint

def triton_space(kernel_op: Any, bindings: Mapping[Any, int] | None = None) -> SearchSpace:
    """The Triton template's space; ``impl="library"`` becomes the extern candidate."""
    try:
        knobs = space(kernel_op, symbol_bindings(bindings))
    except NotImplementedError:  # symbolic shapes and no bindings: the knobs alone
        module = template_for(kernel_op)
        knobs = {k: list(v) for k, v in module.SPACE.items()}
    impl = list(knobs.get("impl", ()))
    has_extern = "library" in impl
    if has_extern and len(impl) > 1:  # measured once as EXTERN, not sampled over and over
        knobs["impl"] = [v for v in impl if v != "library"]
    return SearchSpace.of(knobs, has_extern=has_extern)


def default_schedule(kernel_op: Any, target: Any, bindings: Mapping[Any, int] | None) -> Schedule:
    return default(kernel_op, target, bindings=symbol_bindings(bindings))


def extern_fingerprint(target: Any) -> str:
    return f"extern-library-{target.key()}" + ("-interpret" if interpreting() else "")


def _code_fingerprint(kernel_op: Any, schedule: Schedule, target: Any,
                      bindings: Mapping[Any, int] | None) -> str:
    import triton  # heavy: loaded on first use

    source, _ = emit_source(kernel_op, schedule, target, symbol_bindings(bindings))
    text = (f"triton-fp{FINGERPRINT_VERSION}|{source_fingerprint(source)}|{target.key()}|"
            f"triton {triton.__version__}|interpret {interpreting()}")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# id(kernel op), bindings -> (the op, fingerprint of its library code or ""); the op is
# kept so that its id cannot be reused while the entry lives
_LIBRARY_FP: dict[tuple, tuple[Any, str]] = {}


def _library_fingerprint(kernel_op: Any, target: Any, bindings: Mapping[Any, int] | None) -> str:
    key = (id(kernel_op), target.key(), interpreting(),
           tuple(sorted((str(k), int(v)) for k, v in (bindings or {}).items())))
    hit = _LIBRARY_FP.get(key)
    if hit is not None and hit[0] is kernel_op:
        return hit[1]
    try:
        fp = _code_fingerprint(kernel_op, LIBRARY, target, bindings) \
            if triton_space(kernel_op, bindings).has_extern else ""
    except Exception:  # noqa: BLE001 - no library code: nothing is equal to it
        fp = ""
    if len(_LIBRARY_FP) > 256:
        _LIBRARY_FP.clear()
    _LIBRARY_FP[key] = (kernel_op, fp)
    return fp


def fingerprint(kernel_op: Any, schedule: Schedule, target: Any,
                bindings: Mapping[Any, int] | None = None) -> str:
    """Identity of the Triton code ``schedule`` generates (see the module docstring)."""
    if is_extern(schedule):
        return extern_fingerprint(target)
    try:
        fp = _code_fingerprint(kernel_op, schedule, target, bindings)
    except Exception as e:  # noqa: BLE001 - the builder reports it as a build_error
        log.debug("cannot emit %s for fingerprinting: %s", schedule, e)
        return "emit-error-" + hashlib.sha256(schedule.to_json().encode()).hexdigest()[:24]
    if fp == _library_fingerprint(kernel_op, target, bindings):
        return extern_fingerprint(target)
    return fp


# ---------------------------------------------------------------------- device data

@dataclass
class _DeviceData:
    """A workload's reference inputs on the device and its reference outputs (on CPU)."""

    key: str
    device: str
    inputs: list
    want: list
    dtypes: list


@dataclass
class TuningState:
    """What one tuner's builder and runner share: the workload being tuned on the device
    (its reference inputs and outputs, made once) and the kernels built for it, so the
    runner times the very object the builder compiled. One workload at a time: the tuner
    finishes a kernel before the next, so a new workload replaces both."""

    data: _DeviceData | None = None
    kernels: dict[str, Any] = field(default_factory=dict)  # schedule JSON -> built kernel

    def device_data(self, workload: Workload) -> _DeviceData:
        dev = device()
        if self.data is None or (self.data.key, self.data.device) != (workload.key, dev):
            self.data, self.kernels = _make_device_data(workload, dev), {}
        return self.data

    def kernel(self, workload: Workload, schedule: Schedule) -> Any:
        self.device_data(workload)
        key = schedule.to_json()
        if key not in self.kernels:
            self.kernels[key] = _kernel(workload, schedule)
        return self.kernels[key]

    def clear(self) -> None:
        self.data, self.kernels = None, {}


class NoDeviceError(RuntimeError):
    """Tuning for cuda without a GPU (and without the interpreter): nothing can be measured."""


def device() -> str:
    """Where candidates run: the GPU, or the CPU when Triton interprets."""
    if interpreting():
        return "cpu"

    if not torch.cuda.is_available():
        raise NoDeviceError("tuning for target cuda needs a CUDA device (torch sees none); set "
                           "TRITON_INTERPRET=1 to run the Triton kernels on CPU instead")
    return "cuda"


def _make_device_data(workload: Workload, dev: str) -> _DeviceData:
    bindings = workload.bindings_dict() or None
    inputs = [t.contiguous() for t in reference_inputs(workload.kernel, bindings)]
    want = reference_outputs(workload.kernel, inputs, bindings)
    dtypes = [check_dtype(workload.kernel, r.type.dtype) for r in workload.kernel.results]
    return _DeviceData(workload.key, dev, [t.to(dev) for t in inputs], want, dtypes)


def check_dtype(kernel_op: Any, dtype: Any) -> Any:
    """The dtype whose tolerance checks an output: fp16's for fp32 contractions under TF32
    (matmuls when ``torch.backends.cuda.matmul.allow_tf32`` is on; convolutions also when
    ``torch.backends.cudnn.allow_tf32`` is, torch's default: cuDNN, the library candidate,
    then computes in TF32 as eager PyTorch does)."""
    if dtype == DType.float32 and kernel_op.attr("kind") == "contraction":
        conv = any(op.name == "conv2d" for op in kernel_op.body.ops)
        if torch.backends.cuda.matmul.allow_tf32 or (conv and torch.backends.cudnn.allow_tf32):
            return DType.float16
    return dtype


def _fresh_outputs(data: _DeviceData) -> list:
    return [torch.full_like(w, float("nan"), device=data.device) if w.is_floating_point()
            else torch.zeros_like(w, device=data.device) for w in data.want]


def _kernel(workload: Workload, schedule: Schedule) -> Any:
    return build_kernel(workload.kernel, workload.target, resolve(schedule),
                        bindings=symbol_bindings(workload.bindings_dict()))


def _call(fn: Callable, args: Sequence[Any]) -> None:
    with warnings.catch_warnings():  # the interpreter's numpy warns on masked-off lanes
        warnings.simplefilter("ignore", RuntimeWarning)
        fn(*args)


def _error(e: BaseException) -> str:
    lines = f"{type(e).__name__}: {e}".strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:500]


# ------------------------------------------------------------------------- builder

@dataclass
class TritonBuilder:
    """Emit, load and (on a GPU) compile candidates in this process.

    ``fault`` is a test hook: ``fault(schedule) == "build"`` makes that build fail.
    """

    fault: Callable[[Schedule], str | None] | None = None
    state: TuningState = field(default_factory=TuningState)  # shared with the tuner's runner
    # launch each candidate once here (compiling it); False with a runner in a child process
    # (``isolated.py``): then nothing of a candidate runs in the tuning process
    launch: bool = True

    def build(self, workload: Workload, schedules: Sequence[Schedule],
              deadline: float | None = None) -> list[BuildResult]:
        """Build ``schedules``; on a GPU those still compiling at ``deadline`` are
        ``OUT_OF_TIME`` (a compile takes seconds there: a round must not outlive its time)."""
        failed = self._prewarm(workload, schedules, deadline)
        return [failed.get(s.to_json()) or (BuildResult(s, OUT_OF_TIME) if past(deadline)
                                            else self._build_one(workload, s))
                for s in schedules]

    def _prewarm(self, workload: Workload, schedules: Sequence[Schedule],
                 deadline: float | None = None) -> dict[str, BuildResult]:
        """On a GPU, compile the batch's candidates in parallel processes first (``prewarm.py``);
        ``_build_one``'s launch then loads the binary. A candidate that failed to compile
        there is a ``build_error`` with that error, not compiled a second time; one still
        compiling at the ``deadline`` is ``OUT_OF_TIME``."""
        if len(schedules) < (1 if deadline is not None else 2) or self.fault is not None \
                or interpreting() or device() != "cuda":
            return {}
        from tilefx.codegen.triton.prewarm import STILL_COMPILING, prewarm_built

        t0 = time.perf_counter()
        bindings = symbol_bindings(workload.bindings_dict())
        build = (lambda s: self.state.kernel(workload, s)) if self.launch else (lambda s: _kernel(workload, s))
        errors = prewarm_built(((s, lambda s=s: build(s), workload.kernel, bindings) for s in schedules),
                               timeout=PREWARM_SECONDS, deadline=deadline)
        seconds = (time.perf_counter() - t0) / max(1, len(schedules))
        return {s.to_json(): BuildResult(s, OUT_OF_TIME, "", err, seconds) if err == STILL_COMPILING
                else BuildResult(s, "build_error", "", err, seconds) for s, err in errors.items()}

    def _build_one(self, workload: Workload, schedule: Schedule) -> BuildResult:
        t0 = time.perf_counter()
        try:
            if self.fault is not None and self.fault(schedule) == "build":
                raise RuntimeError("injected build failure (test hook)")
            if not self.launch:  # emitted and loaded; compiled by prewarm or the runner's child
                built = _kernel(workload, schedule)
                return BuildResult(schedule, "ok", built.fingerprint, "", time.perf_counter() - t0)
            built = self.state.kernel(workload, schedule)
            data = self.state.device_data(workload)
            if data.device == "cuda":  # Triton compiles on the first launch

                built(*data.inputs, *_fresh_outputs(data))
                torch.cuda.synchronize()
            return BuildResult(schedule, "ok", built.fingerprint, "", time.perf_counter() - t0)
        except NoDeviceError:
            raise  # no GPU at all: nothing to record, every candidate would fail
        except Exception as e:  # noqa: BLE001 - a failed candidate is data, not a crash
            return BuildResult(schedule, "build_error", "", _error(e), time.perf_counter() - t0)

    def close(self) -> None:
        self.state.clear()


# -------------------------------------------------------------------------- runner

@dataclass
class CudaRunner(RunsInOrder):
    """Check and time built candidates on the GPU (or in the interpreter); see the module doc.

    ``fault`` is a test hook: ``fault(schedule)`` may return "raise" (the run raises) or
    "wrong" (the outputs are corrupted after the call, as a miscompiled kernel would).
    """

    repeats: int = 10                # at least this many timed calls
    warmup_seconds: float = 0.025    # do_bench's warm-up
    rep_seconds: float = 0.1         # do_bench's measuring time
    max_repeats: int = 200           # samples stored per candidate, at most
    fault: Callable[[Schedule], str | None] | None = None
    state: TuningState = field(default_factory=TuningState)  # shared with the tuner's builder
    _flush: Any = field(default=None, repr=False)

    def _run_one(self, workload: Workload, b: BuildResult) -> MeasureResult:
        if b.status != "ok":
            return MeasureResult(b.schedule, "build_error", (), b.error, b.seconds)
        t0 = time.perf_counter()
        try:
            status, samples, note = self._measure(workload, b.schedule)
        except Exception as e:  # noqa: BLE001 - recorded as run_error; tuning goes on
            status, samples, note = "run_error", (), _error(e)
        return MeasureResult(b.schedule, status, tuple(samples), note, b.seconds,
                             time.perf_counter() - t0)

    def _measure(self, workload: Workload, schedule: Schedule) -> tuple[str, list[float], str]:
        data = self.state.device_data(workload)
        fn = self.state.kernel(workload, schedule)
        fault = self.fault(schedule) if self.fault is not None else None
        if fault == "raise":
            raise RuntimeError("injected run failure (test hook)")
        outs = _fresh_outputs(data)
        args = [*data.inputs, *outs]
        _call(fn, args)
        if fault == "wrong":
            outs[0].add_(1.0)
        for i, (got, ref, dtype) in enumerate(zip(outs, data.want, data.dtypes)):
            got = got.cpu()
            if not outputs_match(got, ref, dtype):
                err = (got.double() - ref.double()).abs().max().item() \
                    if got.is_floating_point() else "-"
                return "wrong_result", [], f"output {i} differs from the reference (max abs err {err})"
        if data.device == "cuda":
            if self._flush is None:  # one for all candidates: 256 MB
                self._flush = timing.flush_buffer()
            return "ok", timing.cuda_samples(
                fn, args, repeats=self.repeats, warmup_seconds=self.warmup_seconds,
                rep_seconds=self.rep_seconds, max_repeats=self.max_repeats, flush=self._flush), ""
        # single calls (min_seconds=0): interpreted kernels take milliseconds
        samples = timing.host_samples(lambda *a: _call(fn, a), args, repeats=self.repeats,
                                      min_seconds=0.0)
        return "ok", samples, INTERPRETER_NOTE

    def close(self) -> None:
        self._flush = None
        self.state.clear()
