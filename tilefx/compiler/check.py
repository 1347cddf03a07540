"""Checked builds: a newly built kernel runs once against the reference before it is used.

A template that miscomputes on one machine (an AVX2 code path the author's AVX-512
machine never ran) gives wrong numbers without any error. So the compiler runs every
kernel it has just built one time, on the functional hash's seeded inputs, and
compares its outputs with the reference interpreter's (``outputs_match``, at the
output dtype's tolerance). The reference is ``functional_hash.check_reference``: the
very run the functional hash makes when it was made (tuning), so the check costs one
kernel run; otherwise the same seeded inputs through the interpreter in float32
rather than float64 (the float64 run, a quarter of the check's time on resnet18, is
only needed for a stable hash). A mismatch against that float32 reference is judged
again against the float64 one, allowing as much error as the float32 reference itself
has there: an output that cancels (``x - 1.0001 * x`` keeps 4 digits) would otherwise
reject a right kernel.

- Match: the kernel is used, and (code, target) is remembered as checked, in this
  process and in the tuning database (``kernel_checks``): a warm recompile runs
  nothing.
- Mismatch, or the kernel raises: never used. It runs in PyTorch (the reference
  interpreter), a warning is logged, the compile report says so in one line, and
  the database marks it bad under its workload, target, schedule and tuner
  fingerprint: the tuner never measures, seeds from or picks it again, and a later
  compile asking for the same kernel and schedule goes to PyTorch without
  building it.
- No reference (the interpreter raises, an input cannot be drawn, no device to run
  on): the kernel is used and the report says ``unchecked: <why>``.

On by default; off with ``CompileOptions(check_builds=False)``,
``tilefx.compile(..., check=False)`` or ``TILEFX_CHECK_BUILDS=0``.

Two keys. ``code_key`` names the code that ran: the backend's fingerprint of the
built kernel (TVM: its disk-cache key, the structural hash of the scheduled module
with the target and TVM version; Triton: its source), or for a library kernel the
kernel's structure. It decides "checked already". ``build_key`` names what was asked
for: the kernel's structure, its bindings, the target, the schedule (or "default")
and a hash of tilefx's own sources. It only serves to skip building a kernel known
bad; a change to any template makes it miss, so a fixed template is built and then
judged by its code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch

from tilefx import settings
from tilefx.storage.database import KernelCheck, TuningDatabase
from tilefx.ir.graph import Op
from tilefx.ir.functional_hash import outputs_match, workload_key

if TYPE_CHECKING:
    from tilefx.codegen.target import Target

log = logging.getLogger("tilefx.check")

ENV = "TILEFX_CHECK_BUILDS"


def checks_enabled(option: bool | None) -> bool:
    """``CompileOptions.check_builds``; None: on unless ``TILEFX_CHECK_BUILDS=0``."""
    if option is not None:
        return bool(option)
    return settings.check_builds()


@dataclass(frozen=True)
class CheckOutcome:
    """What became of one kernel's check: ``ok``, ``rejected`` or ``unchecked``."""

    status: str
    detail: str = ""       # why it was rejected or is unchecked
    earlier: bool = False  # known from an earlier check (this process or the database)

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"

    @property
    def note(self) -> str:
        """The report's words for it ("" for a kernel that passed)."""
        if self.rejected:
            return (f"rejected{' earlier' if self.earlier else ''}: {self.detail} "
                    "— runs in PyTorch")
        return f"unchecked: {self.detail}" if self.status == "unchecked" else ""


@dataclass
class CheckMemory:
    """What one compile session knows of checks: (code key, target key) -> outcome, and the
    build keys of kernels found bad; ``checks_run`` counts kernels actually run against the
    reference. A check is a fact about fixed code, so the session keeps it for its life;
    the tuning database keeps it across processes."""

    checked: dict[tuple[str, str], CheckOutcome] = field(default_factory=dict)
    bad_builds: dict[tuple[str, str], CheckOutcome] = field(default_factory=dict)
    checks_run: int = 0


@functools.lru_cache(maxsize=1)
def sources_hash() -> str:
    """A hash of tilefx's own Python sources: any change to a template changes it."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _names(bindings: Mapping[Any, int]) -> dict[str, int]:
    return {str(getattr(s, "name", s)): int(v) for s, v in bindings.items()}


class BuildChecker:
    """Checks the kernels one compile builds; holds the database handle while it does."""

    def __init__(self, target: Target, db_path: str | None = None,
                 memory: CheckMemory | None = None) -> None:
        self.target = target
        self.memory = memory if memory is not None else CheckMemory()
        self.target_key = target.key()
        self.db_path = db_path
        self._db: TuningDatabase | None = None
        self._db_broken = False

    # -- before building -----------------------------------------------------------------

    def build_key(self, op_key: str, bindings: Mapping[Any, int], schedule: Any) -> str:
        text = (f"{op_key}|{sorted(_names(bindings).items())}|{self.target_key}|"
                f"{schedule.to_json() if schedule is not None else 'default'}|{sources_hash()}")
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def known_bad(self, op_key: str, bindings: Mapping[Any, int],
                  schedule: Any) -> CheckOutcome | None:
        """The outcome of an earlier failed check of this very request, or None."""
        bkey = self.build_key(op_key, bindings, schedule)
        known = self.memory.bad_builds.get((bkey, self.target_key))
        if known is None:
            row = self._query(lambda db: db.failed_build(bkey, self.target_key))
            if row is not None:
                known = CheckOutcome("rejected", row.error, earlier=True)
                self.memory.bad_builds[(bkey, self.target_key)] = known
        return known

    # -- after building ------------------------------------------------------------------

    def check(self, op: Op, op_key: str, bindings: Mapping[Any, int], built: Any,
              schedule: Any) -> CheckOutcome:
        """Run ``built`` once against the reference (unless its code was checked before)."""
        bkey = self.build_key(op_key, bindings, schedule)
        ckey = code_key(built, op_key, bindings)
        memo = (ckey, self.target_key)
        known = self.memory.checked.get(memo)
        if known is None:
            row = self._query(lambda db: db.kernel_check(ckey, self.target_key))
            if row is not None:
                known = CheckOutcome("ok" if row.ok else "rejected", row.error, earlier=True)
                if not row.ok and row.build_key != bkey:  # asked for otherwise (sources changed)
                    self._write(replace(row, build_key=bkey))
        if known is not None:
            known = known if known.earlier else CheckOutcome(known.status, known.detail, True)
        else:
            self.memory.checks_run += 1
            status, detail = run_check(op, bindings, built, self.target)
            if status == "unchecked":
                known = CheckOutcome("unchecked", detail)  # not stored: a later tilefx may do better
            elif status == "ok":
                known = CheckOutcome("ok")
                self._write(KernelCheck(ckey, self.target_key, "ok", bkey))
            else:
                known = CheckOutcome("rejected", detail)
                self._write(self._bad_row(op, bindings, built, schedule, ckey, bkey, status, detail))
        self.memory.checked[memo] = known
        if known.rejected:
            self.memory.bad_builds[(bkey, self.target_key)] = known
        return known

    def _bad_row(self, op: Op, bindings: Mapping[Any, int], built: Any, schedule: Any,
                 ckey: str, bkey: str, status: str, detail: str) -> KernelCheck:
        """The database row of a bad kernel, with what the tuner needs to skip it."""
        names = _names(bindings) or None
        sched = schedule if schedule is not None else getattr(built, "schedule", None)
        try:  # the reference ran just now: the functional hash reuses that run
            wkey = workload_key(op, names)
        except Exception as e:  # noqa: BLE001 - still marked by code, only not for the tuner
            log.debug("no workload key for %s: %s", op.attr("name"), e)
            wkey = ""
        try:
            fp = self.target.backend().fingerprint(op, sched, names) if sched is not None else ""
        except Exception as e:  # noqa: BLE001 - the schedule's JSON still marks it
            log.debug("no tuner fingerprint for %s: %s", op.attr("name"), e)
            fp = ""
        return KernelCheck(ckey, self.target_key, status, bkey, wkey,
                           sched.to_json() if sched is not None else "", fp, detail)

    # -- the database (an optimization: a broken one never fails a compile) ------------------

    def _query(self, fn: Callable[[TuningDatabase], Any]) -> Any:
        db = self._open()
        if db is None:
            return None
        try:
            return fn(db)
        except Exception as e:  # noqa: BLE001
            log.warning("tilefx: kernel checks not read from the tuning database: %s", e)
            return None

    def _write(self, row: KernelCheck) -> None:
        db = self._open()
        if db is None:
            return
        try:
            db.set_kernel_check(row)
        except Exception as e:  # noqa: BLE001 - the check's verdict holds in this process
            log.warning("tilefx: kernel check not stored in the tuning database: %s", e)

    def _open(self) -> TuningDatabase | None:
        if self._db is None and not self._db_broken:
            try:
                self._db = TuningDatabase(self.db_path)
            except Exception as e:  # noqa: BLE001 - e.g. a database of a newer tilefx
                log.warning("tilefx: kernel checks are not remembered across processes: %s", e)
                self._db_broken = True
        return self._db

    def close(self) -> None:
        """Close the database handle (a later check opens it again)."""
        if self._db is not None:
            self._db.close()
            self._db = None


def code_key(built: Any, op_key: str, bindings: Mapping[Any, int]) -> str:
    """The identity of the code ``built`` runs (see the module docstring)."""
    fp = getattr(built, "fingerprint", None)
    if fp:
        return f"{type(built).__module__}.{type(built).__name__}:{fp}"
    text = f"{type(built).__name__}|{op_key}|{sorted(_names(bindings).items())}"
    return "kernel:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def run_check(op: Op, bindings: Mapping[Any, int], built: Any, target: Target) -> tuple[str, str]:
    """Run ``built`` once on the reference inputs: (``ok`` | ``wrong_result`` |
    ``run_error`` | ``unchecked``, why)."""
    # looked up per call: tests monkeypatch reference_run
    from tilefx.ir.functional_hash import narrow, reference_run

    names = _names(bindings) or None
    try:
        wide = reference_run(op, names, cached_only=True) is not None
        device, dtypes = _device_and_dtypes(op, target)
        inputs, want = _reference(op, names, device)
    except Exception as e:  # noqa: BLE001 - the kernel is used, reported unchecked
        return "unchecked", _short(e)
    with _one_torch_thread():
        status, why = _run_and_compare(built, inputs, want, dtypes, device)
        if status == "wrong_result" and not wide:
            # a float32 reference rounds too: where the output cancels (x - 1.0001 * x)
            # its own error passes the tolerance, and so would eager's. Against the float64
            # reference a kernel may then err as much as float32 rounding does: 4x the
            # float32 reference's largest error on that output, never more.
            inputs, wide_out = reference_run(op, names)
            # the float32 reference was computed on the GPU, the float64 one on the host
            slack = [4 * float((w32.double().cpu() - w64.cpu()).abs().nan_to_num(0.0).max())
                     if w32.is_floating_point() and w32.numel() else None
                     for w32, w64 in zip(want, wide_out)]
            status, why = _run_and_compare(built, inputs, narrow(op, wide_out), dtypes, device,
                                           slack)
    return status, why


def _reference(op: Op, names: Mapping[str, int] | None, device: str) -> tuple[list, list]:
    """The check's inputs and float32 reference, computed where the kernel runs: on a GPU
    the interpreter's torch ops run there too (ResNet-50's checks took 48 s of a 62 s
    compile with the references on the host's CPU); a reference op the device cannot run
    falls back to the CPU."""
    from tilefx.ir.functional_hash import check_reference  # looked up per call: tests patch it

    if device.startswith("cuda"):
        try:
            return check_reference(op, names, device=device)
        except Exception as e:  # noqa: BLE001 - the CPU reference is the same computation
            log.debug("check reference of %s on %s failed (%s); on the CPU", op.attr("name"), device, e)
    return check_reference(op, names)


def _run_and_compare(built: Any, inputs: list, want: list, dtypes: list, device: str,
                     slack: list | None = None) -> tuple[str, str]:
    # copies: the reference inputs are shared with the functional hash, and a bad kernel
    # may write anywhere it can reach
    args = [t.to(device, copy=True) for t in inputs]
    outs = [torch.full_like(w, float("nan"), device=device) if w.is_floating_point()
            else torch.zeros_like(w, device=device) for w in want]
    try:
        built(*args, *outs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - a kernel that raises is never used
        return "run_error", f"fails to run on the reference inputs ({_short(e)})"
    for i, (got, ref, dtype) in enumerate(zip(outs, want, dtypes)):
        got = got.to(ref.device)
        extra = slack[i] if slack is not None else None
        if outputs_match(got, ref, dtype) or (extra is not None and _within(got, ref, extra, dtype)):
            continue
        which = f"output {i}: " if len(want) > 1 else ""
        if got.is_floating_point() and got.shape == ref.shape:
            err = (got.double() - ref.double()).abs().nan_to_num(float("inf")).max().item()
            return "wrong_result", f"wrong result vs reference, {which}max abs err {err:.3g}"
        return "wrong_result", f"wrong result vs reference, {which}values differ"
    return "ok", ""


def _within(got: Any, ref: Any, extra: Any, dtype: Any) -> bool:
    """``outputs_match``'s rule with ``extra`` added to the tolerance: each element moved
    toward the reference by up to ``extra`` must then pass it."""
    g, r = got.double(), ref.double()
    d = g - r
    nudged = r + torch.sign(d) * (d.abs() - extra).clamp(min=0)
    nudged = torch.where(torch.isfinite(g) & torch.isfinite(r), nudged, g)  # NaN/inf as they are
    return outputs_match(nudged, r, dtype)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread while a just-run kernel's pool may still spin.

    TVM's worker threads busy-wait a while after a kernel returns; torch's own pool
    started then fights them for the cores, and every barrier of its parallel ops
    waits on a descheduled thread: the comparison after a conv took 1.4 s instead
    of 10 ms on two cores. The copies and the comparison are memory-bound anyway.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _device_and_dtypes(op: Op, target: Target) -> tuple[str, list[Any]]:
    """Where the kernel runs and the dtype whose tolerance judges each output: the tuner's
    choices (on cuda, fp16's tolerance for fp32 contractions under TF32, as it measures)."""
    placement = target.backend().check_placement(op)
    return placement.device, list(placement.dtypes)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]
