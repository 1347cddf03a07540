"""Triton backend (NVIDIA GPU): IR kernel ops -> readable Triton source -> launchable kernels.

    from tilefx.codegen.triton import build_kernel, default_schedule, schedule_space
    built = build_kernel(kernel_op, Target.parse("cuda"))
    built(x, w, out)            # destination passing, like the TVM backend
    print(built.source)         # the generated module (also a file in the cache dir)

Templates: ``pointwise``, ``reduction`` (row reductions, softmax,
layer_norm; persistent or looped), ``matmul`` (grouped tiles, fused
epilogue; or cuBLAS + epilogue), ``attention`` (FlashAttention-style; or
torch SDPA), ``conv`` (torch conv2d + fused epilogue; implicit GEMM;
``depthwise``: direct depthwise/grouped conv). Each declares its
knobs next to its code. Under ``TRITON_INTERPRET=1`` the same kernels run on
CPU tensors, which is how CI tests this backend without a GPU.

Importing this package imports neither Triton nor TVM; building does.
"""

from __future__ import annotations

from typing import Any

from tilefx import settings


def build_kernel(kernel_op: Any, target: Any = None, schedule: Any = None, **kwargs: Any) -> Any:
    from tilefx.codegen.triton.templates import build_kernel as build

    return build(kernel_op, target, schedule, **kwargs)


def default_schedule(kernel_op: Any, target: Any = None, **kwargs: Any) -> Any:
    from tilefx.codegen.triton.templates import default_schedule as default

    return default(kernel_op, target, **kwargs)


def schedule_space(kernel_op: Any, target: Any = None, **kwargs: Any) -> dict[str, list[Any]]:
    from tilefx.codegen.triton.templates import space

    return space(kernel_op, **kwargs)


def kernel_source(kernel_op: Any, schedule: Any = None, **kwargs: Any) -> str:
    """The generated module text of ``kernel_op`` (builds nothing)."""
    from tilefx.codegen.triton.templates import emit_source

    return emit_source(kernel_op, schedule, **kwargs)[0].text


def gpu_present() -> bool:
    """Whether Triton kernels run on a GPU here (torch sees CUDA and Triton is not interpreting)."""
    if settings.triton_interprets():
        return False
    try:
        import torch  # heavy: only asked when a decision needs the device
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


__all__ = ["gpu_present", "build_kernel", "default_schedule", "schedule_space", "kernel_source"]
