"""Shared pieces of the GPU scripts: CUDA-event timing, the environment line, zoo
models moved to a device and dtype, hand-built kernel ops, and a small per-kernel
tuner over the Triton schedule spaces (library candidates included).

Nothing here imports TVM: the GPU machine may not have it.
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import time
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




# --------------------------------------------------------------------- tuning

def candidates(op: Any, bindings: dict, limit: int) -> list[Any]:
    """The default schedule, the library candidate, then a spread of the space."""
    from tilefx.codegen.triton import default_schedule, schedule_space

    default = default_schedule(op, bindings=bindings)
    space = schedule_space(op, bindings=bindings)
    out = [default]
    if "library" in space.get("impl", []):
        out.append(default.with_(impl="library"))
    kind = op.attr("kind")
    if "BLOCK_M" in space and "BLOCK_K" in space:  # matmul: the Hopper defaults, then Inductor-like
        from tilefx.codegen.triton.matmul import HOPPER_CONFIGS

        for bm, bn, bk, w, s in [*HOPPER_CONFIGS, (128, 128, 32, 4, 3), (128, 64, 32, 4, 4),
                                 (64, 64, 32, 4, 5), (64, 32, 32, 2, 5)]:
            out.append(default.with_(impl="triton", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                     num_warps=w, num_stages=s))
    elif "BLOCK_D" in space or ("BLOCK_M" in space and "BLOCK_N" in space):  # attention
        for bm, bn, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
            out.append(default.with_(impl="triton", BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s))
    elif kind == "reduction" and "RBLOCK" in space:
        for xb, w in ((1, 4), (2, 4), (4, 8), (8, 8)):
            out.append(default.with_(XBLOCK=xb, num_warps=w))
        out.append(default.with_(persistent=False, XBLOCK=1, RBLOCK=1024, num_warps=8))
    elif "BLOCK" in space:
        for blk, w in ((256, 2), (512, 4), (1024, 4), (2048, 8)):
            out.append(default.with_(BLOCK=blk, num_warps=w))
    return out[:limit]


def random_like(v: Any, bindings: dict) -> torch.Tensor:
    from tilefx.compiler.runtime import concrete_shape, torch_dtype

    shape, dtype = concrete_shape(v.type, bindings), torch_dtype(v.type.dtype)
    if dtype == torch.bool:
        return torch.rand(shape, device=DEVICE) > 0.5
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype, device=DEVICE)
    return torch.randn(shape, device=DEVICE).to(dtype)


def tuned_build(limit: int = 8, budget_s: float = 60.0, log: list[str] | None = None) -> Callable[..., Any]:
    """A kernel builder for ``CompiledGraph``: measure up to ``limit`` candidates per
    kernel, keep the fastest. Identical kernels (a repeated block) are tuned once;
    once ``budget_s`` seconds are spent, the remaining kernels take their default
    schedule (each Triton candidate costs a compile, ~1 s)."""
    from tilefx.codegen.triton import build_kernel
    from tilefx.compiler.driver import kernel_key

    start = time.perf_counter()
    memo: dict[tuple, Any] = {}

    def build(op: Any, bindings: dict) -> Any:
        key = (kernel_key(op), tuple(sorted((str(s), v) for s, v in bindings.items())))
        if key in memo:
            return memo[key]
        if time.perf_counter() - start > budget_s:
            memo[key] = build_kernel(op, None, None, bindings=bindings)
            return memo[key]
        ins = [random_like(v, bindings) for v in op.inputs]
        outs = [random_like(v, bindings) for v in op.results]
        seen, best = set(), None
        for schedule in candidates(op, bindings, limit):
            try:
                k = build_kernel(op, None, schedule, bindings=bindings)
                if k.fingerprint in seen:
                    continue
                seen.add(k.fingerprint)
                ms = cuda_time_ms(lambda k=k: k(*ins, *outs), warmup=3, repeats=10)
            except Exception as e:  # noqa: BLE001 - a candidate that fails is skipped
                if log is not None:
                    log.append(f"{op.attr('name')} {schedule}: {type(e).__name__}: {e}"[:200])
                continue
            if best is None or ms < best[0]:
                best = (ms, k)
        if best is None:
            best = (0.0, build_kernel(op, None, None, bindings=bindings))
        if log is not None:
            log.append(f"{op.attr('name')}: {best[1].schedule} {best[0]:.3f} ms")
        memo[key] = best[1]
        return best[1]
    return build


def compile_tuned(model: torch.nn.Module, inputs: tuple, log: list[str] | None = None,
                  cuda_graphs: bool | None = None, limit: int = 8, budget_s: float = 60.0) -> Callable[..., Any]:
    """tilefx for cuda with every kernel tuned over a few candidates (flat tensor inputs)."""
    from tilefx.compiler.capture import capture
    from tilefx.compiler.driver import CompileOptions, CompileRecord, lower_and_optimize
    from tilefx.compiler.runtime import CompiledGraph

    options = CompileOptions(target="cuda")
    record = CompileRecord(type(model).__name__, target="cuda")
    graph = lower_and_optimize(capture(model, inputs), options, record)
    compiled = CompiledGraph(graph, tuned_build(limit, budget_s, log=log), cuda_graphs=cuda_graphs)
    compiled(*inputs)  # builds (tunes) now
    return compiled
