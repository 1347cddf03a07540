"""The workloads the cost model learns from: generated kernel families, plus a zoo's kernels.

``tilefx collect`` measures random schedules of these into a tuning database;
``benchmarks/cost_model.py`` splits them by workload. The generated ``family``
covers the three template kinds at shapes the model zoo does not have
(square, skinny and transformer-large matmuls with and without epilogues,
dense / 1x1 / strided / depthwise convs, softmax, LayerNorm, row sums,
elementwise chains); ``sparse`` the block-sparse kernels and their dense
counterparts. The model zoo is not part of the installed package: its kernels
come from a ``zoo`` function the caller hands to ``workload_set`` (``tilefx
collect --zoo benchmarks/cost_model_workloads.py:zoo_kernels`` in a source
checkout).

The kernels of ``benchmarks/tuning.py`` (matmul 512 and 1024, conv3x3 64ch at
56x56, depthwise 96ch at 56x56, LayerNorm+GELU 512x768) are **held out**:
``HELD_OUT`` lists their anchor signatures and ``workload_set`` drops any
kernel with one, so the shipped model has never seen them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tilefx.ir.identity import kernel_key

# a zoo's kernels: model names (None: every model) -> their distinct kernel ops
Zoo = Callable[[Sequence[str] | None], list[Any]]

# (anchor op, input shapes) of benchmarks/tuning.py's cases: never trained on
HELD_OUT = {
    ("matmul", ((512, 512), (512, 512))),
    ("matmul", ((1024, 1024), (1024, 1024))),
    ("conv2d", ((1, 64, 56, 56), (64, 64, 3, 3))),
    ("conv2d", ((1, 96, 56, 56), (96, 1, 3, 3))),
    ("layer_norm", ((512, 768), (768,), (768,))),
}

ANCHORS = ("matmul", "conv2d", "layer_norm", "softmax", "sum", "mean", "amax", "max_pool2d")


def signature(kernel_op: Any) -> tuple[str, tuple] | None:
    """(anchor op name, input shapes) of a kernel: what ``HELD_OUT`` compares."""
    for op in kernel_op.body.ops:
        if op.name in ANCHORS:
            shapes = tuple(tuple(int(d) for d in v.type.shape) if v.type.is_static else ()
                           for v in op.inputs)
            return op.name, shapes
    return None


def _f32(*shape: int) -> Any:
    return TensorType(DType.float32, shape)


def _kernel_of(kind: str, shapes: list[tuple[int, ...]], body: Callable, name: str,
               dtype: str = "float32") -> Any:
    return kernel_op(kind, [TensorType(DType[dtype], s) for s in shapes], body, name)


def family_kernels(dtype: str = "float32") -> list[Any]:
    """Generated matmul / conv / reduction / pointwise kernels (fixed shapes, deterministic)
    with ``dtype`` operands (float16 / bfloat16: what GPU models run)."""
    ks: list[Any] = []
    _kernel = functools.partial(_kernel_of, dtype=dtype)
    for m, k, n in [(64, 256, 512), (128, 128, 1024), (256, 512, 256), (384, 384, 384),
                    (96, 768, 768), (256, 1024, 128), (16, 512, 2048), (768, 256, 256),
                    (200, 320, 640), (1024, 64, 1024), (48, 2048, 96), (640, 640, 64),
                    # transformer-large projections (hidden 1024/2048): K and N both large, B's
                    # rows 4 KiB apart; over <= 384 tokens copying B into panels does not pay back,
                    (384, 1024, 1024), (128, 1024, 4096), (128, 4096, 1024), (64, 2048, 2048),
                    # over 1024-2048 tokens (many row blocks read each packed panel) it does
                    (2048, 1024, 1024), (1024, 1024, 4096), (1024, 4096, 1024)]:
        ks.append(_kernel("contraction", [(m, k), (k, n)], lambda b, x, w: b.op("matmul", x, w),
                          f"mm_{m}x{k}x{n}"))
    for m, k, n in [(128, 512, 512), (320, 256, 768)]:  # with a bias + GELU epilogue
        ks.append(_kernel("contraction", [(m, k), (k, n), (n,)],
                          lambda b, x, w, c: b.op("gelu", b.op("add", b.op("matmul", x, w), c),
                                                  approximate="none"), f"mm_gelu_{m}x{k}x{n}"))
    convs = [((1, 32, 28, 28), (64, 32, 3, 3), 1, 1, 1), ((1, 128, 14, 14), (128, 128, 3, 3), 1, 1, 1),
             ((1, 16, 56, 56), (32, 16, 3, 3), 1, 1, 1), ((1, 64, 28, 28), (256, 64, 1, 1), 1, 0, 1),
             ((1, 256, 14, 14), (64, 256, 1, 1), 1, 0, 1), ((1, 32, 56, 56), (64, 32, 3, 3), 2, 1, 1),
             ((1, 64, 28, 28), (64, 1, 3, 3), 1, 1, 64), ((1, 192, 14, 14), (192, 1, 3, 3), 1, 1, 192),
             ((1, 32, 56, 56), (32, 1, 3, 3), 1, 1, 32), ((1, 48, 40, 40), (96, 48, 3, 3), 1, 1, 1)]
    for x, w, stride, pad, groups in convs:
        ks.append(_kernel("contraction", [x, w], lambda b, a, k, s=stride, p=pad, g=groups: b.op(
            "conv2d", a, k, stride=(s, s), padding=(p, p), groups=g),
            f"conv_{x[1]}x{x[2]}_{w[0]}k{w[2]}s{stride}g{groups}"))
    for r, c in [(256, 512), (1024, 128), (64, 2048)]:
        ks.append(_kernel("reduction", [(r, c)], lambda b, x: b.op("softmax", x, dim=-1),
                          f"softmax_{r}x{c}"))
    for r, c in [(128, 1024), (256, 384), (1024, 256)]:
        ks.append(_kernel("reduction", [(r, c), (c,), (c,)],
                          lambda b, x, w, c_: b.op("layer_norm", x, w, c_, normalized_ndim=1),
                          f"layernorm_{r}x{c}"))
    ks.append(_kernel("reduction", [(256, 1024), (1024,), (1024,)], lambda b, x, w, c: b.op(
        "gelu", b.op("layer_norm", x, w, c, normalized_ndim=1), approximate="none"),
        "layernorm_gelu_256x1024"))
    for r, c in [(512, 256), (64, 4096)]:
        ks.append(_kernel("reduction", [(r, c)], lambda b, x: b.op("sum", x, dims=(-1,)),
                          f"rowsum_{r}x{c}"))
    for n, c in [(64, 1024), (256, 3072), (128, 2048), (1024, 1000)]:
        ks.append(_kernel("pointwise", [(n, c), (c,)], lambda b, x, y: b.op(
            "relu", b.op("add", x, y)), f"add_relu_{n}x{c}"))
    ks.append(_kernel("pointwise", [(256, 3072)], lambda b, x: b.op("gelu", x, approximate="none"),
                      "gelu_256x3072"))
    ks.append(_kernel("pointwise", [(128, 2048), (128, 2048)], lambda b, x, y: b.op(
        "sigmoid", b.op("add", b.op("mul", x, y), x)), "mul_add_sigmoid_128x2048"))
    return ks


def sparse_kernels() -> list[Any]:
    """Block-sparse ``bsr_matmul`` kernels (linear and 1x1 conv) over densities and blocks, and
    the dense kernels of the same shapes: what the sparsity pass's dense-vs-sparse estimate
    (``advisor.SparseEstimate``) learns from. Reference inputs give them a valid structure."""
    def i32(n: int) -> Any:
        return TensorType(DType.int32, (n,))

    ks: list[Any] = []
    for (m, k, n) in [(1, 4096, 1024), (16, 1024, 2048), (128, 2048, 512), (4, 512, 4096)]:
        ks.append(_kernel_of("contraction", [(m, k), (k, n)], lambda b, x, w: b.op("matmul", x, w),
                             f"dense_mm_{m}x{k}x{n}"))
        for bk, bn in [(1, 1), (4, 4), (4, 16), (16, 16)]:
            for density in (0.05, 0.1, 0.25, 0.5):
                nnzb = max(1, int(density * (k // bk) * (n // bn)))
                ks.append(_sparse(f"bsr_mm_{m}x{k}x{n}_{bk}x{bn}_{density}", [(m, k)],
                                  (nnzb, bk, bn), i32(nnzb), i32(n // bn + 1), axis=-1))
    for (c, o, hw) in [(256, 256, 28), (128, 512, 14)]:
        ks.append(_kernel_of("contraction", [(1, c, hw, hw), (o, c, 1, 1)],
                             lambda b, x, w: b.op("conv2d", x, w), f"dense_conv1x1_{c}_{o}_{hw}"))
        for bk, bn in [(1, 1), (4, 4), (4, 16)]:
            for density in (0.05, 0.1, 0.25, 0.5):
                nnzb = max(1, int(density * (c // bk) * (o // bn)))
                ks.append(_sparse(f"bsr_conv_{c}_{o}_{hw}_{bk}x{bn}_{density}",
                                  [(1, c, hw, hw)], (nnzb, bk, bn), i32(nnzb),
                                  i32(o // bn + 1), axis=1))
    return ks


def _sparse(name: str, x: list[tuple[int, ...]], data: tuple[int, int, int], indices: Any,
            indptr: Any, axis: int) -> Any:
    return kernel_op("sparse_contraction", [_f32(*x[0]), _f32(*data), indices, indptr],
                     lambda b, a, d, i, p: b.op("bsr_matmul", a, d, i, p, axis=axis), name)


def workload_set(spec: str = "family", dtype: str = "float32", zoo: Zoo | None = None) -> list[Any]:
    """Kernels named by ``spec`` (comma list of ``family``, ``sparse``, ``zoo`` or zoo model
    names), the family's with ``dtype`` operands, without the held-out benchmark kernels,
    deduplicated by structure. ``zoo`` gives the zoo's kernels (``zoo(None)``: every model's,
    ``zoo([name])``: one model's), formed for the target they will be measured on."""
    kernels: list[Any] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == "family":
            kernels += family_kernels(dtype)
        elif part == "sparse":
            kernels += sparse_kernels()
        elif zoo is None:
            raise ValueError(f"workload {part!r} is not family or sparse: zoo workloads need a zoo "
                             "(tilefx collect --zoo REF, e.g. "
                             "benchmarks/cost_model_workloads.py:zoo_kernels)")
        else:
            kernels += zoo(None if part == "zoo" else [part])
    seen: set[Any] = set()
    out = []
    for k in kernels:
        key = kernel_key(k)
        if key in seen or signature(k) in HELD_OUT:
            continue
        seen.add(key)
        out.append(k)
    return out
