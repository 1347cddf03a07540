"""Opt-in magnitude pruning of contraction weights (lossy: it changes the outputs).

``tilefx.compile(model, prune=0.9, prune_block=(4, 4))`` zeroes the 90% of each
contraction weight with the smallest magnitude, element by element
(``prune_block=(1, 1)``) or by ``bk x bn`` blocks of the ``W[K, N]`` view
(ranked by the blocks' L2 norm), so that ``passes/sparsity.py`` can then run the
layer block-sparse. It never happens by default, and every pruned weight is
reported (``log.warning``: shown without any logging setup) with the change.

The same rule is exposed for eager models (``prune_module``), so a test or a
user can compare the compiled model with eager PyTorch on the pruned weights.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from tilefx.ir.graph import Graph
from tilefx.passes.manager import graph_pass

log = logging.getLogger("tilefx.passes.prune")

MIN_SIZE = 256  # weights smaller than this are left alone (no kernel would gain)


def prune_kn(w: np.ndarray, amount: float, block: tuple[int, int] = (1, 1)) -> np.ndarray:
    """``w[K, N]`` with the ``amount`` fraction of smallest-magnitude elements/blocks zeroed."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"prune amount must be in [0, 1), got {amount}")
    bk, bn = block
    k, n = w.shape
    if k % bk or n % bn:
        raise ValueError(f"prune_block {block} does not tile a weight of shape [{k}, {n}]; "
                         "pick a block that divides both dims")
    score = np.sqrt((w.astype(np.float64).reshape(k // bk, bk, n // bn, bn) ** 2).sum(axis=(1, 3)))
    drop = int(round(amount * score.size))
    if drop == 0:
        return w.copy()
    order = np.argsort(score, axis=None, kind="stable")[:drop]
    keep = np.ones(score.size, dtype=bool)
    keep[order] = False
    mask = np.repeat(np.repeat(keep.reshape(score.shape), bk, 0), bn, 1)
    return np.where(mask, w, np.zeros((), w.dtype))


def prune_weight(weight: np.ndarray, amount: float, block: tuple[int, int]) -> np.ndarray:
    """A matmul ``W[K, N]`` or conv ``[O, I, kh, kw]`` weight pruned in its ``[K, N]`` view."""
    if weight.ndim == 2:
        return prune_kn(weight, amount, block)
    kn = weight.reshape(weight.shape[0], -1).T
    return np.ascontiguousarray(prune_kn(kn, amount, block).T).reshape(weight.shape)


def _prunable(w: np.ndarray | None, block: tuple[int, int]) -> bool:
    if w is None or w.ndim not in (2, 4) or w.size < MIN_SIZE or w.dtype.kind != "f":
        return False
    k, n = (w.shape if w.ndim == 2 else (w.size // w.shape[0], w.shape[0]))
    return k % block[0] == 0 and n % block[1] == 0


@graph_pass("prune")
def prune_weights(graph: Graph, amount: float = 0.0, block: tuple[int, int] = (1, 1)) -> Graph:
    if not amount:
        return graph
    producers = graph.producers()
    constants = dict(graph.constants)
    done: set[str] = set()
    for op in graph.ops:
        if op.name not in ("matmul", "conv2d") or len(op.inputs) != 2:
            continue
        src = producers.get(op.inputs[1].name)
        name = src.attr("name") if src is not None and src.name == "const" else None
        if name is None or name in done:
            continue
        w = constants[name]
        if not _prunable(w, block):
            log.warning("prune: %s %s left dense (too small or not tiled by %s)", name, list(w.shape),
                        block)
            continue
        new = prune_weight(w, amount, block)
        change = float(np.linalg.norm((new - w).ravel()) / max(np.linalg.norm(w.ravel()), 1e-30))
        log.warning("prune: %s %s %dx%d blocks: zeros %.1f%% -> %.1f%%, relative L2 change %.3f",
                    name, list(w.shape), block[0], block[1], 100 * (1 - np.count_nonzero(w) / w.size),
                    100 * (1 - np.count_nonzero(new) / new.size), change)
        constants[name] = new
        done.add(name)
    return graph.replace(constants=constants) if done else graph


def prune_module(module: Any, amount: float, block: tuple[int, int] = (1, 1)) -> Any:
    """Prune an eager module's Linear / attention projection / Conv2d weights in place by the
    same rule as the pass (the IR prunes each contraction weight as its own tensor)."""
    with torch.no_grad():
        for m in module.modules():
            # linear weights [N, K] (attention's packed q/k/v projection too: one matmul in the IR)
            linear = [m.weight] if isinstance(m, torch.nn.Linear) else \
                [m.in_proj_weight] if isinstance(m, torch.nn.MultiheadAttention) and \
                m.in_proj_weight is not None else []
            for p in linear:
                w = p.detach().numpy().T  # [K, N]
                if _prunable(w, block):
                    p.copy_(torch.from_numpy(np.ascontiguousarray(prune_kn(w, amount, block).T)))
            if isinstance(m, torch.nn.Linear):
                continue
            elif isinstance(m, torch.nn.Conv2d):
                w = m.weight.detach().numpy()
                if _prunable(w, block):
                    m.weight.copy_(torch.from_numpy(prune_weight(w, amount, block)))
    return module
