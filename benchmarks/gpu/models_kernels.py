"""tilefx's kernels in a torch.profiler trace: which tilefx kernel a launch belongs to, and how
near its roofline it ran (for ``models.py``).

tilefx names each generated Triton function after its kernel op (``codegen/triton/source.py``:
``identifier(op.attr("name"))``); a pointwise kernel with several output groups launches
``<name>_<group>``, a library kernel with an epilogue ``<name>_epilogue``. The compile
session builds kernels with equal ``kernel_key`` once, under the first one's name, so one
profiled name stands for every op sharing that build. FLOPs and bytes come from the kernel
op's IR (matmul, conv2d, attention; else one per output element; bytes of its inputs and
outputs); launches that are not tilefx's (cuBLAS, cuDNN, flash attention, PyTorch fallback
regions) have no FLOPs to read and are reported as "library".
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

PROFILED_CALLS = 5
TOP = 10


def kernel_cost(op: Any) -> tuple[float, float, float]:
    """(FLOPs, bytes, epilogue bytes) of one kernel op: matmul/conv/attention FLOPs (else one
    per output element); bytes of its inputs and outputs; for a library anchor, the bytes its
    Triton epilogue moves (the anchor's result, the inputs used after it, the outputs)."""
    def size(v: Any) -> int:
        return math.prod(int(d) for d in v.type.shape) * v.type.dtype.itemsize

    def shape(v: Any) -> tuple[int, ...]:
        return tuple(int(d) for d in v.type.shape)

    body = list(op.body.ops)
    flops = 0.0
    for o in body:
        if o.name == "matmul":
            flops += 2.0 * math.prod(shape(o.results[0])) * shape(o.inputs[0])[-1]
        elif o.name == "conv2d":
            flops += 2.0 * math.prod(shape(o.results[0])) * math.prod(shape(o.inputs[1])[1:])
        elif o.name == "attention":
            flops += 4.0 * math.prod(shape(o.results[0])) * shape(o.inputs[1])[-2] / \
                (2 if o.attr("causal") else 1)
    if not flops:
        flops = float(sum(math.prod(shape(v)) for v in op.results))
    nbytes = sum(size(v) for v in (*op.inputs, *op.results))
    anchor = next((i for i, o in enumerate(body) if o.name in ("matmul", "conv2d", "attention")), None)
    epilogue = 0
    if anchor is not None:
        used_after = {v.name for o in body[anchor + 1:] for v in o.inputs}
        epilogue = size(body[anchor].results[0]) + sum(size(v) for v in op.results) + sum(
            size(outer) for inner, outer in zip(op.body.inputs, op.inputs) if inner.name in used_after)
    return flops, float(nbytes), float(epilogue)


def runs_in_library(kr: Any) -> bool:
    """A kernel record run by cuBLAS/cuDNN/SDPA: chosen by tuning (extern), or the template's
    ``impl="library"`` schedule (conv's default: cuDNN, then a Triton epilogue)."""
    from tilefx.compiler.records import KernelImpl

    return kr.impl is KernelImpl.LIBRARY or "impl='library'" in kr.schedule


def kernel_index(records: list[Any]) -> dict[str, dict[str, Any]]:
    """Triton function name -> the tilefx kernel it belongs to, with the FLOPs and bytes per
    model call of every kernel op sharing its build (the session builds equal kernels once,
    under the first one's name)."""
    from tilefx.codegen.triton.source import identifier
    from tilefx.ir.identity import fused_op_names, kernel_key

    index: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec is None or rec.optimized_ir is None:
            continue
        library = {k.name for k in rec.kernels if runs_in_library(k)}
        groups: dict[str, list[Any]] = {}
        for op in rec.optimized_ir.ops:
            if op.name == "kernel":
                groups.setdefault(kernel_key(op), []).append(op)
        for ops in groups.values():
            flops, nbytes, epilogue = kernel_cost(ops[0])
            info = dict(name=ops[0].attr("name"), ops="+".join(fused_op_names(ops[0])), n=len(ops),
                        flops=flops * len(ops), bytes=nbytes * len(ops), epilogue_bytes=epilogue * len(ops),
                        library=ops[0].attr("name") in library)
            for op in ops:
                index.setdefault(identifier(op.attr("name")), info)
    return index


def owner(kernel: str, index: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The tilefx kernel of a profiled name: itself, or ``<name>_<group>``/``<name>_epilogue``."""
    if kernel in index:
        return index[kernel]
    prefixes = [k for k in index if kernel.startswith(k + "_")]
    return index[max(prefixes, key=len)] if prefixes else None


def profile_kernels(fn: Callable[[], Any], device: str, calls: int) -> dict[str, list[float]]:
    """Kernel name -> [µs, launches] over ``calls`` calls (CPU dry run: top-level CPU ops)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if cuda and e.device_type != DeviceType.CUDA or not cuda and e.cpu_parent is not None:
            continue
        a = agg.setdefault(e.name, [0.0, 0])
        a[0] += e.device_time_total if cuda else e.cpu_time_total
        a[1] += 1
    return agg


def top_kernels(agg: dict[str, list[float]], index: dict[str, dict[str, Any]], calls: int,
                peaks: tuple[float, float] | None) -> dict[str, Any]:
    total = sum(us for us, _ in agg.values())
    groups: dict[str, dict[str, Any]] = {}
    for name, (us, count) in agg.items():
        info = owner(name, index)
        key = info["name"] if info else name
        g = groups.setdefault(key, dict(info=info, names=[], us=0.0, count=0))
        g["names"].append(name)
        g["us"] += us
        g["count"] += count
    rows = []
    for key, g in sorted(groups.items(), key=lambda kv: -kv[1]["us"])[:TOP]:
        info, us = g["info"], g["us"] / calls
        row = dict(kernel=", ".join(sorted(g["names"])), launches=g["count"] / calls, us=us,
                   pct=100 * g["us"] / total if total else 0.0)
        if info is None:
            copy_ = key.startswith(("Memcpy", "Memset"))
            row.update(tilefx="copy" if copy_ else "library / PyTorch", roofline="library")
        else:
            row.update(tilefx=f"{info['name']}: {info['ops']}" + (f" (x{info['n']})" if info["n"] > 1 else "")
                       + (" (library + epilogue)" if info["library"] else ""))
            s = us * 1e-6
            if info["library"] and peaks and us > 0 and all(n.endswith("_epilogue") for n in g["names"]):
                row.update(gbs=info["epilogue_bytes"] / s / 1e9,  # the library's kernels are rows apart
                           roofline=f"{100 * info['epilogue_bytes'] / peaks[1] / s:.0f}% (epilogue)")
            elif info["library"]:
                row["roofline"] = "library"
            elif peaks and us > 0:
                row.update(tflops=info["flops"] / s / 1e12, gbs=info["bytes"] / s / 1e9,
                           roofline=f"{100 * max(info['flops'] / peaks[0], info['bytes'] / peaks[1]) / s:.0f}%")
            else:
                row["roofline"] = "-"
        rows.append(row)
    return dict(us_per_call=total / calls, rows=rows)
