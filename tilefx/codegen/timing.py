"""Timing: the one place tilefx measures how long a kernel or a model takes.

- ``host_samples``: seconds per call on the CPU, each sample looped long enough
  to be above the clock's resolution (the TVM runner, the sparse-layer timings);
- ``cuda_samples``: seconds per call between CUDA events with a cold L2
  (``triton.testing.do_bench``-style; the Triton runner and GPU benchmarks);
- ``median_ms``: a whole model's median wall time, synchronizing a GPU when the
  inputs live on one (the tuned-vs-default decision, ``tilefx run``).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

FLUSH_BYTES = 256 * 1024 * 1024    # zeroed before each timed GPU call: larger than any L2 (50 MB on H100)


def host_samples(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 7,
                 min_seconds: float = 0.01, warmup: int = 1) -> list[float]:
    """``repeats`` samples of seconds per call of ``fn(*args)``, each looped to ``min_seconds``."""
    for _ in range(max(1, warmup)):
        fn(*args)
    t0 = time.perf_counter()
    fn(*args)
    once = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(min_seconds / once)) if min_seconds > 0 else 1
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(*args)
        samples.append(max(time.perf_counter() - t0, 1e-9) / loops)
    return samples


def host_median(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 7,
                min_seconds: float = 0.01) -> float:
    return statistics.median(host_samples(fn, args, repeats=repeats, min_seconds=min_seconds))


def cuda_samples(fn: Callable[..., Any], args: Sequence[Any] = (), *, repeats: int = 10,
                 warmup_seconds: float = 0.025, rep_seconds: float = 0.1, max_repeats: int = 200,
                 flush: Any = None) -> list[float]:
    """Seconds per call of ``fn(*args)`` on the GPU: warm-up, then each call between two
    CUDA events after zeroing ``flush`` (a buffer larger than L2; one of ``FLUSH_BYTES``
    is made when not given) so L2 starts cold."""
    import torch

    if flush is None:
        flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
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


def median_ms(fn: Callable[..., Any], inputs: Sequence[Any], repeats: int = 9) -> float:
    """Median milliseconds of ``fn(*inputs)``, waiting for a GPU to finish (inputs on cuda)."""
    import torch

    # GPU kernels run asynchronously: time until they are done, not until they are queued
    on_gpu = any(getattr(t, "is_cuda", False) for t in inputs)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*inputs)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
