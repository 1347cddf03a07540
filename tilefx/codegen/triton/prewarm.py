"""Compiling Triton candidates in parallel processes before they are timed.

Triton compiles a kernel on its first launch, in the launching process, one
at a time: 1-3 s of single-threaded MLIR/ptxas work per candidate on an
H200 host, while the GPU idles and the other CPU cores do nothing. Tuning a
model's kernels spent most of its budget there.

``prewarm`` hands each generated module (a file under
``$TILEFX_CACHE_DIR/triton``) to a pool of spawn processes (``workers.py``:
they never run the user's ``__main__`` and die with the parent). A worker
imports the module and launches it once on scratch tensors of the kernel's
shapes (random floats, zero indices: every access is masked), which puts the
compiled binary in Triton's on-disk cache. The tuning process's own first
launch of the same module then loads the binary instead of compiling it.

A candidate that fails to compile in a worker is reported back with its
error, so the caller can record a ``build_error`` without compiling it a
second time. A worker that dies (a fault in the driver), scratch tensors
that do not fit in device memory, or a batch that outlives ``timeout`` (the
pool is killed: a launch that never returns) only lose the warm cache: those
compile where they run, as before, so prewarming never changes a result.
A tuning round under a time limit passes a ``deadline``: compiles still running
then are ``STILL_COMPILING`` (the tuner measures them not at all); they finish
in the pool, which is kept.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from tilefx import settings
from tilefx.codegen.workers import worker_context

log = logging.getLogger("tilefx.codegen.triton")

_POOLS: dict[int, ProcessPoolExecutor] = {}
STILL_COMPILING = "still compiling at the deadline"


@dataclass(frozen=True)
class PrewarmJob:
    """One generated module and the tensors its ``launch`` takes (inputs, then outputs)."""

    path: str
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]          # torch dtype names: "float16", "int64", ...


def job_for(built: Any, kernel_op: Any, bindings: Any = None) -> PrewarmJob:
    """The job of a ``BuiltKernel`` of ``kernel_op`` (static shapes after ``bindings``)."""
    from tilefx.ir.interpreter import torch_dtype

    values = (*kernel_op.inputs, *kernel_op.results)
    shapes = tuple(tuple(int(d.subs(bindings)) if hasattr(d, "subs") and bindings else int(d)
                         for d in v.type.shape) for v in values)
    dtypes = tuple(str(torch_dtype(v.type.dtype)).removeprefix("torch.") for v in values)
    return PrewarmJob(built.path, shapes, dtypes)


def prewarm_built(entries: Iterable[tuple[Any, Callable[[], Any], Any, Any]],
                  timeout: float = 600.0, deadline: float | None = None) -> dict[Any, str]:
    """Build each ``(key, build, kernel_op, bindings)`` (``build()`` gives the ``BuiltKernel``)
    and compile them side by side; key -> error for those that failed to compile (or
    ``STILL_COMPILING`` at the ``deadline``). Builds that raise are skipped (the caller's
    own build reports them); the library candidate has nothing to compile; keys whose code
    is one file share its verdict."""
    keys: dict[str, list[Any]] = {}
    jobs = []
    for key, build, kernel_op, bindings in entries:
        try:
            built = build()
        except Exception:  # noqa: BLE001 - the caller's build reports it
            continue
        if (built.schedule or {}).get("impl") != "library":
            keys.setdefault(built.path, []).append(key)
            jobs.append(job_for(built, kernel_op, bindings))
    return {key: err for path, err in prewarm(jobs, timeout=timeout, deadline=deadline).items()
            if err for key in keys[path]}


def prewarm(jobs: Sequence[PrewarmJob], workers: int | None = None,
            timeout: float = 600.0, deadline: float | None = None) -> dict[str, str]:
    """Compile ``jobs`` in ``workers`` processes; path -> "" (compiled) or the error, or
    ``STILL_COMPILING`` for those the ``deadline`` (``time.perf_counter()`` seconds) cut.
    Paths missing from the result were not compiled (a dead worker, the timeout). Without
    a deadline one job is left to compile where it runs (no faster here); with one, it is
    compiled here, where the deadline can leave it."""
    workers = settings.compile_workers() if workers is None else workers
    jobs = list({j.path: j for j in jobs}.values())
    if workers <= 0 or len(jobs) < (1 if deadline is not None else 2):
        return {}
    pool = _pool(workers)
    futures = {pool.submit(_compile, job): job.path for job in jobs}
    left = timeout if deadline is None else min(timeout, max(0.0, deadline - time.perf_counter()))
    done, late = wait(futures, timeout=left)
    if late and left < timeout:  # the deadline, not a hang: the compiles finish in the pool
        return {**_verdicts(done, futures, workers), **{futures[f]: STILL_COMPILING for f in late}}
    out = _verdicts(done, futures, workers)
    if late:  # a launch that never returns holds its worker: the pool goes, not the caller
        log.info("prewarm: %d compiles still running after %.0f s; they compile where they run",
                 len(late), timeout)
        _kill(_POOLS.pop(workers, pool))
    return out


def _verdicts(done: Iterable[Any], futures: dict[Any, str], workers: int) -> dict[str, str]:
    """path -> "" or the error, for the finished compiles."""
    out: dict[str, str] = {}
    for f in done:
        try:
            result = f.result()
        except Exception as e:  # noqa: BLE001 - a worker died: the caller compiles it itself
            log.info("prewarm: a compile worker died (%s); the rest compile where they run", e)
            _POOLS.pop(workers, None)
            continue
        if result is not None:  # None: no room for its scratch tensors, not a verdict
            out[futures[f]] = result
    return out


def shutdown() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def _kill(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())  # the executor has no kill
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.kill()


def _pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context())
    return pool


def _compile(job: PrewarmJob) -> str | None:
    """In a worker: import the module and launch it once on scratch tensors; "" or the
    error, None when the scratch tensors did not fit (the caller compiles it itself)."""
    import torch

    tensors: list = []
    try:
        name = "tilefx_prewarm_" + os.path.basename(job.path).removesuffix(".py")
        spec = importlib.util.spec_from_file_location(name, job.path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton looks the function's module up by name
        spec.loader.exec_module(module)
        tensors += [_scratch(shape, getattr(torch, dtype)) for shape, dtype in zip(job.shapes, job.dtypes)]
        module.launch(*tensors)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return ""
    except torch.OutOfMemoryError:
        return None
    except Exception as e:  # noqa: BLE001 - reported to the caller as the candidate's build error
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:500]
    finally:
        tensors.clear()  # a worker serves many jobs: give the device memory back
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _scratch(shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the interpreter (tests)
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    return torch.zeros(shape, device=device, dtype=dtype)
