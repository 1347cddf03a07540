"""TVM backend (CPU via LLVM): IR kernel ops -> TE -> scheduled TIR -> compiled function.

    from tilefx.codegen.tvm import build_kernel, default_schedule
    built = build_kernel(kernel_op, Target.host_cpu())
    built(*inputs, *outputs)

Importing this package does not import TVM; the functions below do on first use.
"""

from __future__ import annotations

import os
from typing import Any


def configure_tvm_threads() -> None:
    """Size TVM's CPU thread pool like torch's, unless the user chose.

    The pool reads these variables once, at its first parallel launch. Left alone,
    TVM runs one worker on these 2-vCPU machines while torch uses both, and its
    default thread pinning made a tuned matmul 1.7x slower here. Called by whatever
    is about to run TVM code (the backend when it is made, the tuner's runner
    process, the artifact loader), not at import.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    os.environ.setdefault("TVM_BIND_THREADS", "0")



def build_kernel(kernel_op: Any, target: Any = None, schedule: Any = None, **kwargs: Any) -> Any:
    from tilefx.codegen.tvm.kernel import build_kernel as build

    return build(kernel_op, target, schedule, **kwargs)


def default_schedule(kernel_op: Any, target: Any, **kwargs: Any) -> Any:
    from tilefx.codegen.tvm.schedules import default_schedule as default

    return default(kernel_op, target, **kwargs)


def schedule_space(kernel_op: Any, target: Any) -> dict[str, list[Any]]:
    from tilefx.codegen.tvm.schedules import space

    return space(kernel_op, target)


__all__ = ["build_kernel", "default_schedule", "schedule_space"]
