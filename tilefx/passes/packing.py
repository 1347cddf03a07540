"""Weight packing: store a linear layer's constant weight in the layout its kernel reads.

The matmul template's register tile reads B ``reg_n`` columns at a time, for
every k: from a row-major ``W[K, N]`` that is a strided walk down K, so the
schedule can copy B into panels ``[N / reg_n, K, reg_n]`` first (``pack_b``),
on every call. A weight is a constant: this pass packs it once, at compile
time, and the kernel reads the panels directly.

After fusion, for each ``contraction`` kernel whose anchor is
``matmul(x, W)`` with ``W`` a named 2-D constant read by this kernel only, the
pass asks ``pack_factor(kernel)`` for the panel width ``bn`` (``None``: leave
it), then

- adds the constant ``Wp = W.reshape(K, N/bn, bn).transpose(1, 0, 2)``
  (``<name>_packed<bn>``) and passes it to the kernel instead of ``W``;
- inside the kernel body reads it back as ``reshape(permute(Wp, [1, 0, 2]),
  [K, N])``. The backend inlines these index maps into the matmul's read, so
  the loop nest reads ``Wp[n // bn, k, n % bn]``: with ``reg_n == bn`` each
  register-tile load is one contiguous vector of a panel streamed along k.

The packing factor is the schedule's register width, so pass and schedule
agree in both directions: the compiler's ``pack_factor`` hook computes ``bn`` from the
schedule the kernel would get (tuned if the database has one, else the
default), and the matmul template recognizes a pre-packed B and pins
``reg_n = bn`` (and ``pack_b = False``) in its default schedule and its tuning
space (``codegen/tvm/schedules/matmul.py: prepacked_b``). The result is
bitwise the same computation (same loop order, same summation order).

Not packed here: conv weights (``passes/layout.py`` stores them blocked as
``OIHW{i}i{o}o`` with ``NCHW{c}c`` activations),
weights shared by several kernels, and widths that ``bn`` does not divide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tilefx.ir.graph import Graph, Op, Value, freeze_attrs
from tilefx.ir.types import TensorType
from tilefx.passes.manager import graph_pass
from tilefx.passes.rewrite import all_names, unique_name, use_counts

log = logging.getLogger("tilefx.passes.packing")

PackFactor = Callable[[Op], int | None]  # kernel op -> panel width bn (None: do not pack)


def pack_panels(w: np.ndarray, bn: int) -> np.ndarray:
    """``W[K, N]`` -> ``[N / bn, K, bn]``: panel ``j`` holds columns ``j*bn .. j*bn+bn-1``."""
    k, n = w.shape
    if n % bn:
        raise ValueError(f"panel width {bn} does not divide the weight's {n} columns")
    return np.ascontiguousarray(w.reshape(k, n // bn, bn).transpose(1, 0, 2))


def unpack_panels(wp: np.ndarray) -> np.ndarray:
    nb, k, bn = wp.shape
    return np.ascontiguousarray(wp.transpose(1, 0, 2).reshape(k, nb * bn))


@dataclass
class PackingLog:
    """What the pass did, a line per packed weight: an output of the run (the pass appends,
    the compile record reads it)."""

    lines: list[str] = field(default_factory=list)


def _anchor(body: Graph) -> Op | None:
    for op in body.ops:
        if op.name in ("matmul", "conv2d"):
            return op
    return None


def _packable(graph: Graph, producers: dict[str, Op], uses: dict[str, int], op: Op
              ) -> tuple[int, str] | None:
    """(kernel input index, constant name) of the weight to pack, or None."""
    if op.name != "kernel" or op.attr("kind") != "contraction" or op.body is None:
        return None
    anchor = _anchor(op.body)
    if anchor is None or anchor.name != "matmul" or anchor.inputs[1].type.rank != 2:
        return None
    params = [v.name for v in op.body.inputs]
    if anchor.inputs[1].name not in params or anchor.inputs[0] == anchor.inputs[1]:
        return None
    index = params.index(anchor.inputs[1].name)
    # the body must read W only in the matmul (else another op would see the panels)
    if sum(anchor.inputs[1] in o.inputs for o in op.body.ops) != 1 or anchor.inputs[1] in op.body.outputs:
        return None
    outer = op.inputs[index]
    src = producers.get(outer.name)
    name = src.attr("name") if src is not None and src.name == "const" else None
    if name is None or uses.get(outer.name, 0) != 1 or graph.constants[name].ndim != 2:
        return None
    return index, name


@graph_pass("pack_weights")
def pack_weights(graph: Graph, pack_factor: PackFactor | None = None,
                 report: PackingLog | None = None) -> Graph:
    if pack_factor is None:
        return graph
    producers, uses = graph.producers(), use_counts(graph)
    taken = all_names(graph) | {v.name for op in graph.ops if op.body is not None for v in _values(op.body)}
    constants = dict(graph.constants)
    ops: list[Op] = []
    dropped: set[str] = set()  # the unpacked weights: read by the packed kernel only
    for op in graph.ops:
        found = _packable(graph, producers, uses, op)
        bn = pack_factor(op) if found is not None else None
        if found is None or not bn:
            ops.append(op)
            continue
        index, name = found
        w = graph.constants[name]
        k, n = w.shape
        if bn <= 1 or bn >= n or n % bn:
            ops.append(op)
            continue
        packed_name = unique_name(f"{name}_packed{bn}", taken)
        constants[packed_name] = pack_panels(w, bn)
        ptype = TensorType(op.inputs[index].type.dtype, (n // bn, k, bn))
        pv = Value(packed_name, ptype)
        ops.append(Op("const", (), (pv,), freeze_attrs({"name": packed_name})))
        ops.append(_repack_kernel(op, index, pv, taken))
        if report is not None:
            report.lines.append(f"{op.attr('name')}: {name} [{k}, {n}] packed as [{n // bn}, {k}, {bn}]")
        log.info("packing: %s [%d, %d] -> panels of %d for %s", name, k, n, bn, op.attr("name"))
        dropped.add(op.inputs[index].name)
    if not dropped:
        return graph
    gone = {producers[v].attr("name") for v in dropped}
    ops = [o for o in ops if not (o.name == "const" and o.results[0].name in dropped)]
    still = {o.attr("name") for o in ops if o.name == "const"}
    constants = {k: v for k, v in constants.items() if k not in gone or k in still}
    return graph.replace(ops=tuple(ops), constants=constants)


def _repack_kernel(op: Op, index: int, packed: Value, taken: set[str]) -> Op:
    """``op`` reading ``packed`` as its input ``index``, unpacked by index maps in the body."""
    body = op.body
    old = body.inputs[index]
    new_in = Value(packed.name, packed.type)
    nb, k, bn = packed.type.shape
    t = Value(unique_name(f"{old.name}_panels", taken), TensorType(old.type.dtype, (k, nb, bn)))
    permute = Op("permute", (new_in,), (t,), freeze_attrs({"dims": [1, 0, 2]}))
    reshape = Op("reshape", (t,), (old,), freeze_attrs({"shape": [int(k), int(nb * bn)]}))
    inputs = body.inputs[:index] + (new_in,) + body.inputs[index + 1:]
    new_body = body.replace(inputs=inputs, ops=(permute, reshape) + tuple(body.ops))
    outer = op.inputs[:index] + (packed,) + op.inputs[index + 1:]
    return Op(op.name, outer, op.results, op.attrs, new_body)


def _values(body: Graph) -> list[Value]:
    return list(body.inputs) + [r for o in body.ops for r in o.results]




def packed_weights(graph: Graph) -> list[str]:
    """Names of the packed constants of ``graph`` (for tests and reports)."""
    return [op.attr("name") for op in graph.ops if op.name == "const" and
            "_packed" in str(op.attr("name") or "") and op.result.type.rank == 3]
