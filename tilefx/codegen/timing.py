"""Timing: the one place tilefx measures how long a kernel or a model takes.

Every timer returns seconds per call (``median_ms``: milliseconds), never raises on
its own account, and keeps no state between calls.

- ``host_samples`` / ``host_median``: seconds per call on the CPU clock
  (``time.perf_counter``), in-process (the sparse-layer timings, the fusion
  advisor, the Triton interpreter's CPU timings). A single call of a small
  kernel is near the clock's resolution and its overhead, so each sample loops
  the call enough times to last ``min_seconds`` and is divided by the loop count;
  ``min_seconds=0`` times single calls.
- ``settled_samples``: the same looped samples for the isolated TVM runner
  (``codegen/measure.py``), which measures one candidate right after another:
  thread pools (TVM's, torch's) and caches need a few calls to settle after the
  previous candidate ran, so it warms up for a time, not a count, and sizes the
  loop from the median of three single calls (one call right after a switch
  can be an outlier), rounded up so every sample lasts ``min_seconds``.
- ``cuda_samples`` / ``cuda_median``: seconds per call between two CUDA events,
  ``triton.testing.do_bench``-style (the Triton runner, the GPU sparse-layer
  timings and benchmarks). GPU work is asynchronous, so the host clock would
  time the launch, not the kernel; the events time the GPU itself. Before each
  call a buffer larger than any L2 (``FLUSH_BYTES``, ``flush_buffer``) is zeroed,
  outside the events, so L2 starts cold: a weight read from L2 in a loop would
  look faster than it is in a model whose other layers evict it.
- ``median_ms``: a whole model's median wall time in milliseconds, synchronizing
  the GPU after each call when the inputs live on one (time until the kernels
  are done, not until they are queued): the tuned-vs-default decision of the
  compiler, ``tilefx compile`` / ``tilefx run``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch

FLUSH_BYTES = 256 * 1024 * 1024    # zeroed before each timed GPU call: larger than any L2 (50 MB on H100)


def _looped(fn: Callable[..., Any], args: Sequence[Any], loops: int, repeats: int) -> list[float]:
    """``repeats`` samples of seconds per call, each ``loops`` back-to-back calls."""
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(*args)
        samples.append(max(time.perf_counter() - t0, 1e-9) / loops)
    return samples


def host_samples(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 7,
                 min_seconds: float = 0.01, warmup: int = 1) -> list[float]:
    """``repeats`` samples of seconds per call of ``fn(*args)`` after ``warmup`` calls, each
    sample looped to about ``min_seconds`` (sized from one timed call; ``min_seconds=0``:
    one call per sample, no sizing call)."""
    for _ in range(max(1, warmup)):
        fn(*args)
    loops = 1
    if min_seconds > 0:
        t0 = time.perf_counter()
        fn(*args)
        once = max(time.perf_counter() - t0, 1e-7)
        loops = max(1, int(min_seconds / once))
    return _looped(fn, args, loops, repeats)


def host_median(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 7,
                min_seconds: float = 0.01) -> float:
    """Median of ``host_samples``: seconds per call."""
    return statistics.median(host_samples(fn, args, repeats=repeats, min_seconds=min_seconds))


def settled_samples(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 5,
                    min_seconds: float = 0.01, warmup: int = 1,
                    max_warmup: int = 200) -> list[float]:
    """``repeats`` samples of seconds per call of ``fn(*args)``, as the isolated runner takes
    them: warm-up calls for ``3 * min_seconds`` (at least ``warmup``, at most ``max_warmup``
    calls), then each sample ``ceil(min_seconds / t)`` calls, ``t`` the median of three
    timed calls (``min_seconds=0``: one call per sample)."""
    t_end = time.perf_counter() + 3 * min_seconds
    for i in range(max_warmup):
        if i >= warmup and time.perf_counter() >= t_end:
            break
        fn(*args)
    once = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(*args)
        once.append(max(time.perf_counter() - t0, 1e-7))
    loops = max(1, math.ceil(min_seconds / statistics.median(once))) if min_seconds > 0 else 1
    return _looped(fn, args, loops, repeats)


def flush_buffer() -> Any:
    """A GPU buffer of ``FLUSH_BYTES`` for ``cuda_samples`` to zero before each timed call
    (a caller timing many kernels makes it once and passes it in)."""
    return torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")


def cuda_samples(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 10,
                 warmup_seconds: float = 0.025, rep_seconds: float = 0.1, max_repeats: int = 200,
                 flush: Any = None) -> list[float]:
    """Seconds per call of ``fn(*args)`` on the GPU: one call, a 5-call estimate, warm-up
    for ``warmup_seconds``, then ``repeats`` or more calls (enough for ``rep_seconds``, at
    most ``max_repeats``), each between two CUDA events after zeroing ``flush`` (made by
    ``flush_buffer`` when not given) so L2 starts cold."""
    if flush is None:
        flush = flush_buffer()
    fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5 * 1e-3, 1e-7)  # seconds, flush included
    for _ in range(max(1, math.ceil(warmup_seconds / estimate))):
        fn(*args)
    n = min(max_repeats, max(repeats, math.ceil(rep_seconds / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()  # before the start event: not timed
        s.record()
        fn(*args)
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


def cuda_median(fn: Callable[..., Any], args: Sequence[Any] = (), **kwargs: Any) -> float:
    """Median of ``cuda_samples`` (same keywords): seconds per call on the GPU, cold L2."""
    return statistics.median(cuda_samples(fn, args, **kwargs))


def median_ms(fn: Callable[..., Any], inputs: Sequence[Any], repeats: int = 9, *,
              warmup: int = 0) -> float:
    """Median milliseconds of ``fn(*inputs)`` over ``repeats`` calls after ``warmup`` untimed
    ones, waiting for a GPU to finish after each (inputs on cuda)."""
    # GPU kernels run asynchronously: time until they are done, not until they are queued
    on_gpu = any(getattr(t, "is_cuda", False) for t in inputs)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    for _ in range(warmup):
        fn(*inputs)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*inputs)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
