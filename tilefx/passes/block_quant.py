"""Simulated block quantization of contraction weights (opt-in, lossy: accuracy, not speed).

``tilefx.compile(model, quantize="int4")`` (or ``"int8:16"``, ``BlockQuant(...)``)
rounds every constant contraction weight ``W[K, N]`` the way a block format
would store it: along the reduction axis K, each run of ``block`` consecutive
values of one column shares one scale, and the values become ``bits``-bit signed
integers (mantissas) times that scale. ``scale="absmax"`` uses the block's
max |w| / (2^(bits-1) - 1); ``scale="pow2"`` rounds that scale up to a power of
two, a shared exponent as in the MX / block floating point formats.

This is *fake* quantization: the weight is quantized and dequantized right
away, at compile time, and the model still runs in float32 with the rounded
values. It shows what the format would cost in accuracy; no kernel reads
int4/int8 data, and nothing gets faster. It never happens by default, and each
weight's relative L2 change is reported (``log.warning``: shown without any
logging setup), as is the relative output error on the example inputs when the
compile has them (``output_error``).

A few outlier channels (rows of ``W`` far larger than the rest) ruin the blocks
they share; ``outliers.group_outliers`` reorders the hidden channels first, an
exact permutation, so outliers share blocks with each other.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from tilefx.ir.graph import Graph
from tilefx.ir.interpreter import run_graph
from tilefx.passes.manager import graph_pass

log = logging.getLogger("tilefx.passes.quantize")

MIN_SIZE = 256  # weights smaller than this are left in float (as in prune)


@dataclass(frozen=True)
class BlockQuant:
    """What ``quantize=`` asks for; ``group`` runs the outlier grouping before rounding."""

    bits: int = 8
    block: int = 32
    scale: str = "absmax"         # "absmax" (a float scale per block) | "pow2" (shared exponent)
    group: bool = True            # reorder hidden channels so outliers share blocks (exact)

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16 or self.block < 1 or self.scale not in ("absmax", "pow2"):
            raise ValueError(f"quantize: bad spec {self}; want bits in [2, 16], block >= 1, "
                             "scale 'absmax' or 'pow2'")

    def label(self) -> str:
        return f"int{self.bits} blocks of {self.block} ({self.scale})"


SPEC = re.compile(r"int(\d+)(?:[:/]b?(\d+))?(?:[:/](absmax|pow2))?(?:[:/](nogroup))?")


def parse_quant(spec: str | BlockQuant | None) -> BlockQuant | None:
    """``"int4"``, ``"int8:16"`` (block 16), ``"int4:32:pow2"``, ``"int4:32:absmax:nogroup"``."""
    if spec is None or isinstance(spec, BlockQuant):
        return spec
    m = SPEC.fullmatch(str(spec).strip().lower())
    if m is None:
        raise ValueError(f"quantize={spec!r}: expected e.g. 'int4', 'int8:16', 'int4:32:pow2' "
                         "(bits, block along K, scale) or a BlockQuant")
    bits, block, scale, nogroup = m.groups()
    return BlockQuant(int(bits), int(block or 32), scale or "absmax", group=nogroup is None)


def fake_quant(x: np.ndarray, spec: BlockQuant, axis: int = 0) -> np.ndarray:
    """``x`` rounded as ``spec`` stores it, blocks of ``spec.block`` along ``axis`` (a last,
    shorter block when the axis does not divide), dequantized back to ``x``'s dtype."""
    moved = np.moveaxis(x.astype(np.float64), axis, 0)
    k = moved.shape[0]
    pad = (-k) % spec.block
    padded = np.concatenate([moved, np.zeros((pad,) + moved.shape[1:])]) if pad else moved
    blocks = padded.reshape((-1, spec.block) + moved.shape[1:])
    qmax = 2 ** (spec.bits - 1) - 1
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    if spec.scale == "pow2":
        scale = 2.0 ** np.ceil(np.log2(scale))
    q = np.clip(np.rint(blocks / scale), -qmax, qmax) * scale
    out = q.reshape(padded.shape)[:k]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis)).astype(x.dtype)


def relative_error(new: np.ndarray, old: np.ndarray) -> float:
    diff = np.linalg.norm((new.astype(np.float64) - old).ravel())
    return float(diff / max(np.linalg.norm(old.astype(np.float64).ravel()), 1e-30))


def quantize_weight(w: np.ndarray, spec: BlockQuant) -> np.ndarray:
    """A matmul ``W[K, N]`` (blocks along K) or conv ``[O, I, kh, kw]`` weight (blocks along
    its flattened ``I*kh*kw`` reduction) rounded by ``spec``."""
    if w.ndim == 2:
        return fake_quant(w, spec, axis=0)
    flat = w.reshape(w.shape[0], -1)
    return fake_quant(flat, spec, axis=1).reshape(w.shape)


@dataclass
class QuantLog:
    """What quantization did (reported by the compile record)."""

    lines: list[str] = field(default_factory=list)


def contraction_weights(graph: Graph) -> list[str]:
    """Names of the float constants read as the weight of a matmul (rank 2) or conv2d."""
    producers = graph.producers()
    names: list[str] = []
    for op in graph.ops:
        if op.name not in ("matmul", "conv2d") or len(op.inputs) != 2:
            continue
        if op.name == "matmul" and op.inputs[1].type.rank != 2:
            continue
        src = producers.get(op.inputs[1].name)
        name = src.attr("name") if src is not None and src.name == "const" else None
        if name is not None and name not in names and graph.constants[name].dtype.kind == "f":
            names.append(name)
    return names


@graph_pass("block_quantize")
def block_quantize(graph: Graph, spec: BlockQuant | None = None, report: QuantLog | None = None) -> Graph:
    if spec is None:
        return graph
    constants = dict(graph.constants)
    changed = False
    for name in contraction_weights(graph):
        w = constants[name]
        if w.size < MIN_SIZE:
            continue
        new = quantize_weight(w, spec)
        line = f"{name} {list(w.shape)} {spec.label()}: relative L2 change {relative_error(new, w):.4f}"
        log.warning("quantize (simulated): %s", line)
        if report is not None:
            report.lines.append(line)
        constants[name] = new
        changed = True
    return graph.replace(constants=constants) if changed else graph


def output_error(reference: Graph, outputs: Sequence[Any], inputs: Sequence[Any]) -> float:
    """Relative L2 error of ``outputs`` against the reference interpreter's run of the
    unquantized ``reference`` graph on the same ``inputs`` (all outputs together)."""
    want = run_graph(reference, [t.detach().cpu() for t in inputs])
    num = sum(float(torch.sum((g.detach().cpu().double() - w.double()) ** 2)) for g, w in zip(outputs, want))
    den = sum(float(torch.sum(w.double() ** 2)) for w in want)
    return float(np.sqrt(num / max(den, 1e-300)))
