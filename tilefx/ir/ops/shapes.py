"""Shape arithmetic shared by the op definitions; works on ints and sympy dims."""

from __future__ import annotations

from typing import Sequence

import sympy

from tilefx.ir.types import Dim, dims_equal, normalize_dim


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting, symbolic-aware: a 1 stretches, equal dims match."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dim: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif not dims_equal(dim, d):
                raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(dim)
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def product(dims: Sequence[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return normalize_dim(out)


def resolve_reshape(in_shape: Sequence[Dim], new_shape: Sequence[Dim]) -> tuple[Dim, ...]:
    """Fill in one ``-1`` in ``new_shape`` and check the element counts agree."""
    total = product(in_shape)
    known = [d for d in new_shape if not (isinstance(d, int) and d == -1)]
    n_infer = len(new_shape) - len(known)
    if n_infer > 1:
        raise ValueError(f"reshape to {tuple(new_shape)}: more than one -1")
    if n_infer == 1:
        rest = normalize_dim(sympy.sympify(total) / sympy.sympify(product(known)))
        new_shape = [rest if (isinstance(d, int) and d == -1) else d for d in new_shape]
    out = tuple(normalize_dim(d) for d in new_shape)
    if not dims_equal(product(out), total):
        raise ValueError(f"cannot reshape {tuple(in_shape)} to {tuple(new_shape)}")
    return out


def pool_out_dim(size: Dim, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> Dim:
    """Output length of a sliding window (conv and pooling), PyTorch's formula."""
    span = dilation * (kernel - 1) + 1
    num = size + 2 * pad - span
    if isinstance(num, int):
        out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
        # PyTorch: the last window must start inside the input or left padding
        if ceil_mode and (out - 1) * stride >= size + pad:
            out -= 1
        return out
    return normalize_dim(sympy.floor((num + (stride - 1 if ceil_mode else 0)) / stride) + 1)
