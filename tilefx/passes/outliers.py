"""Outlier grouping: reorder hidden channels so that outlier channels share quantization blocks.

In LLMs a few hidden channels are far larger than the rest (x20-x100). In a
block format (``block_quant``: one scale per ``b`` consecutive values along the
reduction axis) every small channel that shares a block with an outlier is
rounded on the outlier's scale and loses its bits. Reordering the channels by
magnitude puts the outliers into blocks of their own. The reorderings used are
exact (``permute.py``, ``permute_heads.py``), so the function is unchanged
until the weights are rounded; only the rounding gets better. (As in "Accurate
Block Quantization in LLMs with Outliers", Trukhanov & Soloveychik, 2024, which
does this for the K cache through Q/K.)

Where, and by what magnitude (all from the weights; no activations are measured):

- hidden axis between two contractions (``permute.find_chains``: MLP up/down,
  conv pairs): the rows of the consumer weight, the axis its blocks run along;
  magnitude = the row's L2 norm. Kept only if ``output_weighted_error`` drops:
  the consumer's quantization error weighted per channel by the channel's RMS,
  estimated from the producer (``|W1[:, c]|`` for unit-variance inputs; the
  activation between is ignored). An outlier weight row usually meets a small
  activation (the scale moved from one side to the other), so the plain weight
  error, ruled by the outlier rows, would judge wrongly.
- attention V/O (``permute_heads``, kind (ii)): within each head, the rows of Wo
  (its reduction axis), magnitude = row norm; judged as above with V's column
  norms as the channel RMS.
- attention Q/K (kind (i)): within each head, the key channels, magnitude = the
  RMS of ``k_c = x @ Wk[:, c] + bk[c]`` for unit-variance ``x``, i.e.
  ``sqrt(|Wk[:, c]|^2 + bk[c]^2)``; its rounding noise counts by q's RMS in the
  same channel (the score sums q_c k_c). Weights are not changed by this one (Wq/Wk
  columns are not their reduction axis); it is for a block-quantized K cache.
  Kept only if the block-noise proxy (``block_noise``: each key channel rounded
  on its block's largest magnitude, weighted by q's RMS) drops. The weight-only
  simulation of ``block_quant`` cannot show its effect;
  ``benchmarks/outliers.py`` quantizes K activations to show it.

Heads themselves are not reordered: blocks of ``b <= D`` never cross a head, so
within-head orders are all the grouping needs (kind (iii) is available in
``apply_head_orders`` for block sizes above the head dimension).
"""

from __future__ import annotations

import logging

import numpy as np

from tilefx.ir.graph import Graph
from tilefx.passes.cleanup import dce
from tilefx.passes.block_quant import BlockQuant, QuantLog, quantize_weight, relative_error
from tilefx.passes.manager import graph_pass
from tilefx.passes.permute import find_chains, permute_constants
from tilefx.passes.permute_heads import (HeadOrders, HeadSite, HeadView, apply_head_orders, find_heads,
                                         site_weights)

log = logging.getLogger("tilefx.passes.quantize")


def magnitude_order(mag: np.ndarray) -> np.ndarray:
    """Channels from the largest magnitude down (stable: equal ones keep their order)."""
    return np.argsort(-mag, kind="stable")


def block_noise(mag: np.ndarray, block: int, weight: np.ndarray | None = None) -> float:
    """Relative rounding noise of channels with RMS ``mag`` in blocks of ``block`` consecutive
    channels: each is rounded on its block's largest magnitude, and its noise counts by
    ``weight`` (the RMS of what it is multiplied with: q's channel for a key channel)."""
    wt = np.ones_like(mag) if weight is None else weight
    pad = (-len(mag)) % block
    m = np.concatenate([mag, np.zeros(pad)]).reshape(-1, block)
    w2 = np.concatenate([wt, np.zeros(pad)]).reshape(-1, block) ** 2
    noise = (w2 * m.max(axis=1, keepdims=True) ** 2).sum()
    return float(noise / max((w2 * m ** 2).sum(), 1e-300))


def _rows_norm(w: np.ndarray, axis: int) -> np.ndarray:
    """L2 norm of each slice of ``w`` along ``axis`` (one channel's weights)."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    return np.sqrt((w.astype(np.float64) ** 2).sum(axis=other))


def output_weighted_error(w: np.ndarray, rms: np.ndarray, axis: int, spec: BlockQuant) -> float:
    """Relative error of ``x @ W`` when ``W`` is block-quantized, for inputs whose channel ``c``
    (``W``'s ``axis``) has RMS ``rms[c]``, independent across channels: the weight error of
    each channel weighted by how much of it reaches the output. (The plain weight error would
    be ruled by the outlier rows themselves, which the small activations hide.)"""
    shape = [1] * w.ndim
    shape[axis] = -1
    a = rms.reshape(shape)
    return relative_error(quantize_weight(w, spec) * a, w * a)


def _const_name(graph: Graph, producers: dict, value) -> str:
    return producers[value.name].attr("name")


@graph_pass("group_outliers")
def group_outliers(graph: Graph, spec: BlockQuant | None = None, report: QuantLog | None = None) -> Graph:
    if spec is None:
        return graph
    graph = dce(graph)  # a dead reader (the frontend leaves some) would hide a head site
    producers = graph.producers()
    lines: list[str] = []
    sites = find_heads(graph)
    taken = {v for s in sites for v in site_weights(s)}

    todo: dict[str, list[tuple[int, np.ndarray]]] = {}
    for chain in find_chains(graph):
        values = {chain.producer.const.name, chain.consumer.const.name} | {v.name for v, _, _ in chain.extras}
        if values & taken:
            continue
        w = graph.constants[chain.consumer.name]
        axis = chain.consumer.in_axis
        rms = _rows_norm(graph.constants[chain.producer.name], chain.producer.out_axis)
        order = magnitude_order(_rows_norm(w, axis))
        before = output_weighted_error(w, rms, axis, spec)
        after = output_weighted_error(np.take(w, order, axis=axis), rms[order], axis, spec)
        if after >= before:
            continue
        taken |= values
        for value, ax in ((chain.producer.const, chain.producer.out_axis), (chain.consumer.const, axis)):
            todo.setdefault(value.name, []).append((ax, order))
        for v, _, ax in chain.extras:
            todo.setdefault(v.name, []).append((ax, order))
        lines.append(f"{chain.consumer.name} {list(w.shape)}: hidden channels by magnitude, "
                     f"{spec.label()} output-weighted error {before:.4f} -> {after:.4f}")
    graph = permute_constants(graph, todo)

    choices = []
    for site in sites:
        orders, notes = site_orders(graph, producers, site, spec)
        if orders is not None:
            choices.append((site, orders))
            lines += notes
    graph = apply_head_orders(graph, choices) if choices else graph
    for ln in lines:
        log.warning("quantize: outliers grouped: %s", ln)
    if report is not None:
        report.lines += [f"outliers grouped: {ln}" for ln in lines]
    return graph


def _column_rms(graph: Graph, producers: dict, view: HeadView) -> np.ndarray:
    """``[H, D]``: RMS of each projected channel for unit-variance inputs (|W[:, c]|, bias)."""
    w = graph.constants[_const_name(graph, producers, view.proj.weight)].astype(np.float64)
    ms = (w[:, view.labels] ** 2).sum(axis=0)
    if view.proj.bias is not None:
        ms = ms + graph.constants[_const_name(graph, producers, view.proj.bias)].astype(np.float64)[view.labels] ** 2
    return np.sqrt(ms)


def site_orders(graph: Graph, producers: dict, site: HeadSite,
                 spec: BlockQuant) -> tuple[HeadOrders | None, list[str]]:
    orders = HeadOrders.identity(site)
    notes: list[str] = []
    # Q/K: key channel RMS for unit-variance inputs, per head; its noise counts by q's RMS
    kmag, qmag = (_column_rms(graph, producers, view) for view in (site.k, site.q))
    qk = np.stack([magnitude_order(m) for m in kmag])
    before = np.mean([block_noise(m, spec.block, w) for m, w in zip(kmag, qmag)])
    after = np.mean([block_noise(m[o], spec.block, w[o]) for m, w, o in zip(kmag, qmag, qk)])
    if after < before:
        orders = HeadOrders(orders.heads, qk, orders.v)
        wk_name = _const_name(graph, producers, site.k.proj.weight)
        notes.append(f"{wk_name} key channels ({site.heads} heads x {site.qk_dim}): "
                     f"K-cache block noise proxy {before:.4f} -> {after:.4f}")
    # V/O: Wo rows (its reduction axis), per head
    name = _const_name(graph, producers, site.out_weight)
    wo = graph.constants[name]
    norms = _rows_norm(wo, 0)[site.out_rows]
    v = np.stack([magnitude_order(m) for m in norms])
    rows = np.arange(wo.shape[0])
    rows[site.out_rows.reshape(-1)] = site.out_rows[np.arange(site.heads)[:, None], v].reshape(-1)
    # RMS of O's channels ~ of V's (softmax rows are convex weights): V's column norms
    wv = graph.constants[_const_name(graph, producers, site.v.proj.weight)].astype(np.float64)
    rms = np.zeros(wo.shape[0])
    rms[site.out_rows.reshape(-1)] = np.sqrt((wv[:, site.v.labels.reshape(-1)] ** 2).sum(axis=0))
    err0 = output_weighted_error(wo, rms, 0, spec)
    err1 = output_weighted_error(wo[rows], rms[rows], 0, spec)
    if err1 < err0:
        orders = HeadOrders(orders.heads, orders.qk, v)
        notes.append(f"{name} {list(wo.shape)} rows by magnitude within heads: {spec.label()} "
                     f"output-weighted error {err0:.4f} -> {err1:.4f}")
    return (orders if notes else None), notes
