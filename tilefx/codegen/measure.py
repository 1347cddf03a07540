"""Builder pool and isolated runner: turning candidate schedules into latencies.

- ``LocalBuilder`` compiles candidates in a ``ProcessPoolExecutor`` (spawn
  context: TVM and fork do not mix; ``workers.py``: the children never run the
  user's ``__main__`` and die with the tuning process). A worker builds with
  ``codegen.tvm.build_kernel``, which stores the library in the kernel disk
  cache; only the cache key travels back. A compile error is recorded as
  ``build_error``, never raised; a worker that dies or hangs is replaced.
  ``workers=0`` builds in this process (handy when the builds are cached).
- ``LocalRunner`` runs candidates in long-lived child processes (spawn; one
  for TVM kernels, one for the library candidate so their thread pools do
  not disturb each other), so a kernel that segfaults or hangs takes only
  its child down: the
  candidate is recorded as ``run_error`` / ``timeout``, the child is
  restarted, and tuning goes on. The child loads each library from the disk
  cache, runs it once on the workload's ``reference_inputs`` and checks the
  outputs against ``reference_outputs`` (``wrong_result`` on a mismatch: a
  miscompile, never chosen), then warm-up, ``repeats`` timed samples (each
  repeating the call enough times to last ``min_repeat_seconds``) whose
  median is the candidate's latency.
- The extern (library) candidate needs no build: the runner executes the
  kernel body through torch (``LibraryKernel``).
- Under a time limit the tuner passes a ``deadline`` (``time.perf_counter()``
  seconds): builds not finished by then and runs not started by then are
  ``OUT_OF_TIME``, neither measured nor recorded (a later run may try them).

A ``Workload`` (kernel op, target, bindings, workload key) is what both need.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from tilefx.codegen import timing
from tilefx.codegen.space import is_extern
from tilefx.codegen.target import Target
from tilefx.codegen.tvm import build_kernel, cache, configure_tvm_threads
from tilefx.codegen.workers import serve, worker_context
from tilefx.codegen.schedule import Schedule
from tilefx.ir import reference_ops  # noqa: F401  (registers every op's reference)
from tilefx.ir.functional_hash import outputs_match, reference_inputs, reference_outputs
from tilefx.ir.interpreter import REFERENCES, RefContext, torch_dtype

log = logging.getLogger("tilefx.autotune")

EXTERN_ARTIFACT = "extern"
OUT_OF_TIME = "out_of_time"  # a build or run the deadline cut: no measurement, no record


def past(deadline: float | None) -> bool:
    """Whether ``deadline`` (``time.perf_counter()`` seconds; None: none) has passed."""
    return deadline is not None and time.perf_counter() >= deadline


@dataclass(frozen=True)
class Workload:
    kernel: Any                                 # the ``kernel`` Op
    target: Any                                 # codegen Target
    bindings: tuple[tuple[str, int], ...] = ()  # symbol name -> size
    key: str = ""                               # workload key (functional hash)

    @property
    def name(self) -> str:
        return self.kernel.attr("name") or "kernel"

    def bindings_dict(self) -> dict[str, int]:
        return dict(self.bindings)


@dataclass(frozen=True)
class BuildResult:
    schedule: Schedule
    status: str               # "ok" | "build_error" | "timeout" | OUT_OF_TIME
    artifact: str = ""        # kernel disk-cache key, or EXTERN_ARTIFACT
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class MeasureResult:
    schedule: Schedule
    status: str               # "ok" | "build_error" | "run_error" | "timeout" | "wrong_result"
    #                           | OUT_OF_TIME
    samples: tuple[float, ...] = ()
    error: str = ""
    build_seconds: float = 0.0
    run_seconds: float = 0.0

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.samples) if self.status == "ok" and self.samples else None


class LibraryKernel:
    """The extern candidate: the kernel body as the bare torch calls eager would make.

    Contraction bodies are one ``matmul``/``conv2d`` plus an elementwise
    prologue/epilogue, so this is "the library call" (``torch.matmul``,
    ``F.conv2d``) with the epilogue in eager PyTorch. The body is turned into
    a list of steps once (attributes bound, constants made tensors), so a
    call costs what eager's calls cost: no interpreter (per-op sympy
    substitution, shape binding) and no extra copy where torch can write the
    result in place (``torch.matmul(a, b, out=y)``, ``torch.add(.., out=y)``);
    other final ops are computed and copied into the destination. The compiler
    runs a kernel whose tuned schedule ``is_extern`` through this same class,
    so what was measured is what runs.
    """

    def __init__(self, kernel_op: Any, bindings: dict[str, int] | None = None) -> None:
        self.schedule = Schedule.of(extern="torch")
        self.from_cache = False
        self.lowered = "extern: torch (the kernel body as eager torch calls)"
        self.op = kernel_op
        self._steps, self._n_in, self._outputs = _library_steps(kernel_op, bindings or {})

    def __call__(self, *tensors: Any) -> None:
        env: dict[str, Any] = dict(zip(self._n_in, tensors))
        outs = tensors[len(self._n_in):]
        for fn, ctx, args, results, out_index in self._steps:
            got = fn(ctx, outs[out_index], *[env[a] for a in args]) if out_index is not None \
                else fn(ctx, *[env[a] for a in args])
            if len(results) == 1:
                env[results[0]] = got
            else:
                env.update(zip(results, got))
        for (name, direct), out in zip(self._outputs, outs):
            if not direct:
                out.copy_(env[name])


def _out_variants() -> dict[str, Callable]:
    """Ops whose torch call can write straight into the kernel's output buffer."""
    def binary(f: Callable) -> Callable:
        return lambda ctx, out, a, b: f(a, b, out=out)

    def unary(f: Callable) -> Callable:
        return lambda ctx, out, x: f(x, out=out)

    table = {name: binary(f) for name, f in (
        ("matmul", torch.matmul), ("add", torch.add), ("sub", torch.sub), ("mul", torch.mul),
        ("maximum", torch.maximum), ("minimum", torch.minimum))}
    table.update({name: unary(f) for name, f in (
        ("exp", torch.exp), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
        ("neg", torch.neg), ("abs", torch.abs), ("sqrt", torch.sqrt), ("erf", torch.erf))})
    table["relu"] = lambda ctx, out, x: torch.clamp_min(x, 0, out=out)
    table["gelu"] = lambda ctx, out, x: torch._C._nn.gelu(
        x, approximate=ctx.attrs["approximate"], out=out)
    return table


def _bind_attr(value: Any, sizes: dict[str, int]) -> Any:
    """An attribute with its symbolic dims replaced by the bound sizes (matched by name)."""
    if isinstance(value, tuple):
        return tuple(_bind_attr(v, sizes) for v in value)
    free = getattr(value, "free_symbols", None)
    if free is not None and hasattr(value, "subs"):
        missing = sorted(str(s) for s in free if str(s) not in sizes)
        if missing:
            raise ValueError(f"extern library kernel: attribute {value} needs sizes for "
                             f"{missing}; pass them in bindings")
        return int(value.subs({s: sizes[str(s)] for s in free}))
    return value


def _library_steps(kernel_op: Any, bindings: dict[str, int]) -> tuple[list, list, list]:
    """(steps, input names, [(output name, written in place)]) of a kernel body."""
    body = kernel_op.body
    sizes = {str(k.name if hasattr(k, "name") else k): int(v) for k, v in bindings.items()}
    outputs = [v.name for v in body.outputs]
    inputs = {v.name for v in body.inputs}
    first_out = {name: i for i, name in reversed(list(enumerate(outputs)))}
    variants = _out_variants()
    direct: set[str] = set()
    steps: list = []
    for op in body.ops:
        fn = REFERENCES.get(op.name)
        if fn is None:
            raise ValueError(f"extern library kernel: no torch call for op {op.name!r} in "
                             f"kernel {kernel_op.attr('name')!r}")
        ctx = RefContext(op, body, {k: _bind_attr(v, sizes) for k, v in op.attrs}, {})
        results = [r.name for r in op.results]
        if op.name == "const":  # made once: weights are not re-read per call
            tensor = fn(ctx)
            steps.append((lambda c, t=tensor: t, ctx, [], results, None))
            continue
        dtype = torch_dtype(op.results[0].type.dtype)
        in_dtypes = {torch_dtype(v.type.dtype) for v in op.inputs}
        out_index = first_out.get(results[0]) if len(results) == 1 else None
        if (out_index is not None and op.name in variants and in_dtypes == {dtype}
                and dtype.is_floating_point and results[0] not in inputs):
            steps.append((variants[op.name], ctx, [v.name for v in op.inputs], results, out_index))
            direct.add(results[0])
            continue
        want = [torch_dtype(r.type.dtype) for r in op.results]
        steps.append((_cast_results(fn, want), ctx, [v.name for v in op.inputs], results, None))
    written = set()
    out_plan = []
    for name in outputs:  # an output listed twice is written directly once, copied after
        out_plan.append((name, name in direct and name not in written))
        written.add(name)
    return steps, [v.name for v in body.inputs], out_plan


def _cast_results(fn: Callable, dtypes: list[Any]) -> Callable:
    """``fn`` with its results cast to the IR dtypes, as the interpreter does."""
    def run(ctx: Any, *args: Any) -> Any:
        out = fn(ctx, *args)
        if isinstance(out, (list, tuple)):
            return [t if t.dtype == d else t.to(d) for t, d in zip(out, dtypes)]
        return out if out.dtype == dtypes[0] else out.to(dtypes[0])
    return run


# ------------------------------------------------------------------------------- builder

def _ignore_sigint() -> None:
    """Children leave Ctrl-C to the tuning process, which stops them cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ready() -> None:
    """A worker's first job under ``warm_up``: imports what a build needs (torch, TVM)."""
    import tvm  # noqa: F401


def _build_worker(kernel_bytes: bytes, target_json: str, bindings: dict[str, int],
                  schedule_json: str, cache_dir: str | None,
                  fault: str | None = None) -> tuple[str, str, str, float]:
    """(status, artifact, error, seconds) of one build; runs in a pool worker."""
    if fault == "crash":  # test hook: a compiler that segfaults
        os.kill(os.getpid(), signal.SIGSEGV)
    if cache_dir:
        os.environ["TILEFX_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    try:
        built = build_kernel(pickle.loads(kernel_bytes), Target.from_json(target_json),
                             Schedule.from_json(schedule_json), bindings=bindings or None,
                             use_cache=True)
        return "ok", built.fingerprint, "", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - a failed candidate is data, not a crash
        msg = f"{type(e).__name__}: {e}".strip().splitlines()
        return "build_error", "", (msg[0] if msg else type(e).__name__)[:500], \
            time.perf_counter() - t0


class LocalBuilder:
    """Compile candidates in a spawn process pool (``workers=0``: in this process)."""

    def __init__(self, workers: int = 1, timeout: float = 300.0,
                 fault: Callable[[Schedule], str | None] | None = None) -> None:
        self.workers = workers
        self.timeout = timeout
        self.fault = fault  # test hook: fault(schedule) == "crash" kills the worker building it
        self._pool: ProcessPoolExecutor | None = None
        self._idle = False  # the pool was started by warm_up and has built nothing

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=worker_context(),
                                             initializer=_ignore_sigint)
        return self._pool

    def build(self, workload: Workload, schedules: Sequence[Schedule],
              deadline: float | None = None) -> list[BuildResult]:
        """Build ``schedules``; those not built by ``deadline`` are ``OUT_OF_TIME``."""
        kernel_bytes = pickle.dumps(workload.kernel)
        target_json = workload.target.to_json()
        cache_dir = os.environ.get("TILEFX_CACHE_DIR")
        jobs = [(s, (kernel_bytes, target_json, workload.bindings_dict(), s.to_json(), cache_dir,
                     self.fault(s) if self.fault else None))
                for s in schedules if not is_extern(s)]
        done: dict[Schedule, BuildResult] = {s: BuildResult(s, "ok", EXTERN_ARTIFACT)
                                             for s in schedules if is_extern(s)}
        self._idle = False
        if self.workers <= 0:
            for s, args in jobs:
                done[s] = BuildResult(s, OUT_OF_TIME) if past(deadline) else \
                    BuildResult(s, *_build_worker(*args))
        else:
            self._pool_build(jobs, done, deadline)
        return [done[s] for s in schedules]

    def warm_up(self) -> None:
        """Start the workers now, in the background: each imports torch and TVM (seconds),
        which a time-limited tuning run would otherwise wait for at its first build."""
        if self.workers > 0 and self._pool is None:
            self._idle = True
            for _ in range(self.workers):
                self._executor().submit(_ready)

    def _pool_build(self, jobs: list, done: dict[Schedule, BuildResult],
                    deadline: float | None = None) -> None:
        """Build ``jobs`` in the pool. When a worker dies or hangs, the first unfinished
        candidate is blamed; the others lost with the pool are submitted again. At the
        ``deadline`` the unfinished ones are ``OUT_OF_TIME``: the pool keeps them (a build
        that outlives it is not a hang) and drops those not started."""
        while jobs:
            futures = [(s, args, self._executor().submit(_build_worker, *args)) for s, args in jobs]
            jobs = []
            for i, (s, _, fut) in enumerate(futures):
                wait = self.timeout if deadline is None else \
                    min(self.timeout, max(0.0, deadline - time.perf_counter()))
                try:
                    done[s] = BuildResult(s, *fut.result(timeout=wait))
                    continue
                except FutureTimeout:
                    if wait < self.timeout:  # the deadline, not a hang
                        for s2, _, f2 in futures[i:]:
                            ok = f2.done() and not f2.cancelled() and f2.exception() is None
                            done[s2] = BuildResult(s2, *f2.result()) if ok else \
                                BuildResult(s2, OUT_OF_TIME)
                            f2.cancel()
                        return
                    error = f"build timed out after {self.timeout:.0f}s"
                except Exception as e:  # noqa: BLE001 - BrokenProcessPool: a worker died
                    error = f"builder process failed: {type(e).__name__}: {e}"[:500]
                done[s] = BuildResult(s, "build_error", error=error)
                for s2, args2, f2 in futures[i + 1:]:
                    if f2.done() and not f2.cancelled() and f2.exception() is None:
                        done[s2] = BuildResult(s2, *f2.result())
                    else:
                        jobs.append((s2, args2))
                self._restart()
                break

    def _restart(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for p in list(getattr(pool, "_processes", {}).values()):
                p.kill()  # only this pool's own workers
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._idle:  # warmed up, never used: stop it now, not after its imports
            self._restart()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# -------------------------------------------------------------------------------- runner

def _runner_main(conn: Any, cache_dir: str | None, preload_tvm: bool = False) -> None:
    """The runner child: serve ("workload", ...) and ("run", ...) requests until EOF."""
    _ignore_sigint()
    configure_tvm_threads()  # the measured kernels run on a pool sized like torch's, unpinned
    if cache_dir:
        os.environ["TILEFX_CACHE_DIR"] = cache_dir
    if preload_tvm:  # the TVM child will load a kernel: import now, not in the first timing
        import tvm  # noqa: F401

    state: dict[str, Any] = {}

    def handle(msg: tuple) -> tuple:
        if msg[0] == "workload":
            _, key, kernel_bytes, bindings = msg
            op = pickle.loads(kernel_bytes)
            inputs = [t.contiguous().clone() for t in reference_inputs(op, bindings or None)]
            want = reference_outputs(op, inputs, bindings or None)
            state.clear()
            state.update(key=key, op=op, bindings=bindings, inputs=inputs, want=want,
                         dtypes=[r.type.dtype for r in op.results])
            return "ok", (), ""
        _, artifact, fault, repeats, warmup, min_repeat = msg
        return _run_one(state, artifact, fault, repeats, warmup, min_repeat, torch, outputs_match)

    serve(conn, handle, lambda e: ("run_error", (), f"{type(e).__name__}: {e}"[:500]))


def _run_one(state: dict, artifact: str, fault: str | None, repeats: int, warmup: int,
             min_repeat: float, torch: Any, outputs_match: Callable) -> tuple:
    if fault == "crash":  # test hook: a kernel that segfaults
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang":   # test hook: a kernel that never returns
        time.sleep(3600)
    if artifact == EXTERN_ARTIFACT:
        fn: Callable = LibraryKernel(state["op"], state["bindings"])
    else:
        module = cache.load(artifact)
        if module is None:
            return "run_error", (), f"kernel {artifact} is not in the disk cache {cache.cache_dir()}"
        fn = module["main"]
    inputs, want = state["inputs"], state["want"]
    outs = [torch.full_like(w, float("nan")) if w.dtype.is_floating_point else torch.zeros_like(w)
            for w in want]
    fn(*inputs, *outs)
    for i, (got, ref, dtype) in enumerate(zip(outs, want, state["dtypes"])):
        if not outputs_match(got, ref, dtype):
            err = (got.double() - ref.double()).abs().max().item() if got.dtype.is_floating_point \
                else "-"
            return "wrong_result", (), f"output {i} differs from the reference (max abs err {err})"
    # warm-up for a while, not a count (thread pools settle after the previous candidate),
    # then samples looped to min_repeat seconds
    samples = timing.settled_samples(fn, [*inputs, *outs], repeats=repeats,
                                     min_seconds=min_repeat, warmup=warmup)
    return "ok", tuple(samples), ""


class _Child:
    """One runner process and its pipe; the workload it has loaded."""

    def __init__(self, role: str = "tvm") -> None:
        ctx = worker_context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_runner_main, name="tilefx-runner",
                                args=(child, os.environ.get("TILEFX_CACHE_DIR"), role == "tvm"),
                                daemon=True)
        self.proc.start()
        child.close()
        self.loaded = ""

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def close(self) -> None:
        if not self.loaded:  # started by warm_up and never used: maybe still importing
            self.kill()
            return
        self.conn.close()  # the child sees EOF and exits
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class RunsInOrder:
    """``run`` for a runner that measures one build at a time (its ``_run_one``)."""

    def run(self, workload: Workload, builds: Sequence[BuildResult],
            on_result: Callable[[MeasureResult], None] | None = None,
            deadline: float | None = None) -> list[MeasureResult]:
        """Measure ``builds`` in order; ``on_result`` sees each result as soon as it exists.
        Builds cut by the builder's deadline, and those not started by ``deadline``, are
        ``OUT_OF_TIME`` results that ``on_result`` does not see."""
        results = []
        for b in builds:
            if b.status == OUT_OF_TIME or past(deadline):
                results.append(MeasureResult(b.schedule, OUT_OF_TIME, (), "out of time",
                                             b.seconds))
                continue
            results.append(self._run_one(workload, b))  # type: ignore[attr-defined]
            if on_result is not None:
                on_result(results[-1])
        return results


@dataclass
class LocalRunner(RunsInOrder):
    """Measure built candidates in isolated child processes; see the module docstring.

    TVM kernels and the extern library candidate run in two different
    children: TVM's worker threads keep spinning for a while after a parallel
    kernel and would slow torch's own thread pool down, which would make the
    library look slower than it is; for the same reason a switch from one
    child to the other first waits ``switch_pause`` seconds.

    ``fault`` is a test hook: ``fault(schedule)`` may return "crash" or "hang"
    to make the child segfault or hang on that candidate.
    """

    timeout: float = 30.0           # per candidate
    setup_timeout: float = 300.0    # loading a workload (reference outputs)
    repeats: int = 5
    warmup: int = 1
    min_repeat_seconds: float = 0.01
    fault: Callable[[Schedule], str | None] | None = None
    restarts: int = 0
    # after the other child ran, wait until its thread pool sleeps: TVM's workers spin
    # ~50 ms after a parallel kernel and would steal the cores from torch's threads
    switch_pause: float = 0.2
    _children: dict[str, _Child] = field(default_factory=dict, repr=False)
    _last_role: str = field(default="", repr=False)

    def _ask(self, role: str, msg: tuple, timeout: float) -> tuple:
        """Send ``msg`` to the ``role`` child and wait; a dead or stuck child becomes a status."""
        child = self._children.get(role)
        if child is None or not child.alive():
            child = self._children[role] = _Child(role)
        try:
            child.conn.send(msg)
            if not child.conn.poll(timeout):
                self._drop(role)
                return "timeout", (), f"no result after {timeout:.1f}s (runner killed)"
            return child.conn.recv()
        except (EOFError, OSError):
            child.proc.join(5)
            code = child.proc.exitcode
            self._drop(role)
            return "run_error", (), f"runner process died (exit code {code})"

    def warm_up(self) -> None:
        """Start both children now, in the background (each imports torch and TVM: seconds);
        they load a workload when the first measurement asks."""
        for role in ("tvm", "library"):
            child = self._children.get(role)
            if child is None or not child.alive():
                self._children[role] = _Child(role)

    def _drop(self, role: str) -> None:
        self._children.pop(role).kill()
        self.restarts += 1

    def _run_one(self, workload: Workload, b: BuildResult) -> MeasureResult:
        if b.status != "ok":
            return MeasureResult(b.schedule, "build_error", (), b.error, b.seconds)
        t0 = time.perf_counter()
        role = "library" if b.artifact == EXTERN_ARTIFACT else "tvm"
        child = self._children.get(role)
        if child is None or not child.alive() or child.loaded != workload.key:
            status, _, error = self._ask(role, ("workload", workload.key,
                                                pickle.dumps(workload.kernel),
                                                workload.bindings_dict()), self.setup_timeout)
            if status != "ok":
                return MeasureResult(b.schedule, "run_error", (), f"workload setup failed: {error}",
                                     b.seconds)
            self._children[role].loaded = workload.key
        if self._last_role and self._last_role != role:
            time.sleep(self.switch_pause)
        self._last_role = role
        fault = self.fault(b.schedule) if self.fault else None
        status, samples, error = self._ask(
            role, ("run", b.artifact, fault, self.repeats, self.warmup, self.min_repeat_seconds),
            self.timeout)
        return MeasureResult(b.schedule, status, tuple(samples), error, b.seconds,
                             time.perf_counter() - t0)

    def close(self) -> None:
        while self._children:
            self._children.popitem()[1].close()
