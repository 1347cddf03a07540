"""Ranking metrics of a cost model on held-out workloads (TenSet's definitions).

Every metric is computed per workload (only the order of one kernel's
schedules matters to the tuner) and averaged over workloads:

- **pairwise accuracy**: of the pairs of schedules with different latency,
  the share the model orders correctly; also over the pairs more than 5% apart
  only ("pairwise > 5%"): closer pairs are within the timing noise of a CPU;
- **Kendall tau** (scipy's tau-b);
- **top-k score**: best true latency / the best true latency among the
  model's k highest-scored schedules (1.0: the model's top k contain the best).

Scores are "higher = faster" (the ``CostModel`` convention).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pairwise_accuracy(seconds: np.ndarray, scores: np.ndarray, min_ratio: float = 1.0) -> float:
    """Share of pairs ordered right, among pairs whose slower one takes > ``min_ratio`` x longer."""
    secs = np.asarray(seconds, dtype=float)
    s = np.asarray(scores)[:, None] - np.asarray(scores)[None, :]
    mask = secs[:, None] * min_ratio < secs[None, :]  # i truly faster than j, by the margin
    if not mask.any():
        return float("nan")
    return float(((s[mask] > 0) + 0.5 * (s[mask] == 0)).mean())


def kendall_tau(seconds: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import kendalltau

    tau = kendalltau(-np.asarray(seconds), np.asarray(scores)).statistic
    return float(tau) if tau == tau else 0.0


def top_k_score(seconds: np.ndarray, scores: np.ndarray, k: int) -> float:
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(np.min(seconds) / np.min(np.asarray(seconds)[order]))


def evaluate(seconds: np.ndarray, scores: np.ndarray, groups: np.ndarray,
             ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """The metrics averaged over the workloads in ``groups`` (each with >= 2 schedules)."""
    per: dict[str, list[float]] = {"pairwise": [], "pairwise>5%": [], "kendall": [],
                                   **{f"top{k}": [] for k in ks}}
    for g in np.unique(groups):
        m = groups == g
        if m.sum() < 2:
            continue
        t, s = seconds[m], scores[m]
        for name, ratio in (("pairwise", 1.0), ("pairwise>5%", 1.05)):
            pa = pairwise_accuracy(t, s, ratio)
            if pa == pa:  # nan: no such pair in this workload
                per[name].append(pa)
        per["kendall"].append(kendall_tau(t, s))
        for k in ks:
            per[f"top{k}"].append(top_k_score(t, s, k))
    out = {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()}
    out["workloads"] = float(len(per["kendall"]))
    return out


def format_metrics(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per model."""
    cols = ["pairwise", "pairwise>5%", "kendall", "top1", "top5"]
    lines = ["| model | pairwise acc | pairwise acc, pairs > 5% apart | Kendall tau | top-1 | top-5 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in cols) + " |")
    return "\n".join(lines)
