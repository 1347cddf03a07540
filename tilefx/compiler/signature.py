"""Call signatures: what about a call decides whether a compiled graph can serve it.

A call ``model(*args, **kwargs)`` is flattened with PyTorch's pytree into
leaves. Tensor leaves become the compiled graph's inputs; everything else
(ints, floats, strings, None, the structure itself) is baked into the graph
at capture time. So the signature is the pytree structure, each tensor's
shape, dtype and device, and the value of every non-tensor leaf. With
``dynamic=True`` the batch dimension (dim 0) is left out of the key: one
capture serves every batch size and codegen specializes per size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

import torch
import torch.utils._pytree as pytree


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int | None, ...]  # None: a dynamic dimension
    dtype: str
    device: str

    def __str__(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"
        return f"{dims}:{self.dtype.removeprefix('torch.')}"


@dataclass(frozen=True)
class Signature:
    structure: str                         # the pytree spec of (args, kwargs)
    leaves: tuple[TensorSpec | Hashable, ...]

    def __str__(self) -> str:
        return "(" + ", ".join(str(x) if isinstance(x, TensorSpec) else repr(x)
                               for x in self.leaves) + ")"


@dataclass(frozen=True)
class FlatCall:
    """A call taken apart: tensors go to the graph, the rest rebuilds the call."""

    signature: Signature
    tensors: tuple[Any, ...]
    leaves: tuple[Any, ...]  # all leaves, tensors included, in pytree order
    spec: Any                # the TreeSpec of (args, kwargs)

    def rebuild(self, tensors: tuple[Any, ...]) -> tuple[tuple, dict]:
        """(args, kwargs) with ``tensors`` put back in place of the tensor leaves."""
        it = iter(tensors)
        leaves = [next(it) if isinstance(x, torch.Tensor) else x for x in self.leaves]
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return args, kwargs


def _static_key(x: Any) -> Hashable:
    try:
        hash(x)
        return (type(x).__name__, x)
    except TypeError:  # an unhashable leaf: its repr is the best key we have
        return (type(x).__name__, repr(x))


def flatten_call(args: tuple, kwargs: dict, dynamic: bool = False) -> FlatCall:
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    keys: list[TensorSpec | Hashable] = []
    tensors = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            shape: tuple[int | None, ...] = tuple(int(d) for d in x.shape)
            if dynamic and shape:
                shape = (None, *shape[1:])
            keys.append(TensorSpec(shape, str(x.dtype), str(x.device)))
            tensors.append(x)
        else:
            keys.append(_static_key(x))
    return FlatCall(Signature(str(spec), tuple(keys)), tuple(tensors), tuple(leaves), spec)
