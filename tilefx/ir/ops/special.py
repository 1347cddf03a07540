"""Structural ops whose result types are given by their creator, not inferred.

- ``const {name}``: a weight from ``Graph.constants``; ``const {value}``: a
  rank-0 scalar.
- ``kernel {kind, name}``: a fused group of ops; ``body`` is the subgraph whose
  inputs are bound to the op's inputs. ``kind`` is the template kind
  (pointwise, reduction, contraction, ...).
- ``fallback {target, args}``: one PyTorch op the frontend could not lower.
  ``target`` is the qualified overload name (``aten::fft_rfft``); ``args`` is
  the call's argument structure with tensors replaced by ``%i`` placeholders
  (see ``compiler/fallback.py``).
"""

from __future__ import annotations

from tilefx.ir.ops.registry import REQUIRED, Category, register_op


def _given(types, attrs):
    raise TypeError("result types of this op are given by its creator")


register_op("const", Category.opaque, inputs=0, attrs={"name": None, "value": None})(_given)
# (0, ...) inputs: a fused group may read nothing but iota/const ops of its own.
register_op("kernel", Category.opaque, inputs=(0, 1 << 30), attrs={"kind": REQUIRED, "name": REQUIRED})(_given)
register_op("fallback", Category.opaque, inputs=(0, 1 << 30),
            attrs={"target": REQUIRED, "args": REQUIRED})(_given)

GIVEN_TYPE_OPS = frozenset({"const", "kernel", "fallback"})
