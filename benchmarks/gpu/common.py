"""Shared pieces of the GPU scripts: CUDA-event timing, the environment line, zoo
models moved to a device and dtype, hand-built kernel ops. (Tuning goes through the
real tuner: ``tilefx.compile(..., tune=N)``, or ``tune_check.py``.)

Nothing here imports TVM: the GPU machine may not have it.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tilefx.ir.builder import kernel_op  # noqa: E402,F401  (the scripts import it from here)

DEVICE = "cuda"  # the scripts run on the GPU; a dry run on CPU (interpreter) patches this
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Report:
    """Markdown lines to stdout and, when ``$OUT`` is set (the lead's GPU machine
    collects that folder), appended to ``$OUT/<name>`` as well."""

    def __init__(self, name: str) -> None:
        import os

        out = os.environ.get("OUT")
        self.path = Path(out) / name if out else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(text + "\n")


def progress(text: str) -> None:
    """A timestamped progress line on stderr (never in the tables)."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence everything written to fds 1 and 2 (max-autotune prints its tables from
    C++ and subprocesses too, so ``sys.stdout`` redirection is not enough)."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def environment() -> str:
    import triton

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (f"{dev}; torch {torch.__version__}, triton {triton.__version__}, python "
            f"{platform.python_version()}; tf32 matmul {torch.backends.cuda.matmul.allow_tf32}")


def cuda_time_ms(fn: Callable[[], Any], warmup: int = 10, repeats: int = 50) -> float:
    """Median of ``repeats`` calls, each timed with CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def zoo_model(name: str, dtype: torch.dtype, batch: int | None = None, bench: bool = False,
              seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from benchmarks.models import ZOO

    entry = ZOO[name]
    model = entry.build().eval().to(DEVICE, dtype)
    batch = batch if batch is not None else entry.bench_batch if bench else entry.batches[0]
    inputs = tuple(x.to(DEVICE, dtype) if x.is_floating_point() else x.to(DEVICE)
                   for x in entry.make_inputs(batch, seed, bench=bench))
    return model, inputs


def first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out
