"""Does the latency model choose sparse vs dense (and the block) the way measurements do?

    python benchmarks/sparse_choice.py                 # linear 4096x4096 (batch 1/16/128), conv1x1

For layers of ``benchmarks/sparsity.py``'s shapes with random block-sparse weights, the
learned estimate (``cost_model.advisor.SparseEstimate``, the model shipped as
``default_x86_latency.json``) predicts the default dense kernel and the sparse kernel of each
block; ``measure_layer`` builds and times both. Printed per case: predicted and measured ms,
whether each says sparse wins, and at the end the agreement, and per layer the block the model
picks, the block the chooser keeps (it times the model's best two blocks and keeps the faster)
and the block that measured fastest.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _weight(k: int, n: int, block: tuple[int, int], zeros: float, rng: np.random.Generator) -> np.ndarray:
    keep = rng.random((k // block[0], n // block[1])) >= zeros
    keep[0, 0] = True
    mask = np.kron(keep, np.ones(block, dtype=bool))
    return (rng.standard_normal((k, n)) * mask).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm.schedules.sparse import measure_layer
    from tilefx.cost_model.advisor import sparse_estimate
    from tilefx.passes.sparsity import SparseLayer, block_density

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    target = Target.host_cpu()
    est = sparse_estimate(target)
    if est is None:
        print("no latency model (xgboost missing or not an x86 target)")
        return 1
    rng = np.random.default_rng(0)
    layers = [("linear", (m, 4096), 1, 4096, 4096) for m in (1, 16, 128)] + \
        [("conv1x1", (1, 256, 28, 28), 1, 256, 256)]
    blocks = [(1, 1), (4, 4), (4, 16)]
    agree = total = 0
    print("| layer | x | block | zeros | predicted dense / sparse ms | measured dense / sparse ms "
          "| model: sparse? | measured: sparse? |")
    print("|---|---|---|---|---|---|---|---|")
    picks = []
    for kind, x, axis, k, n in layers:
        axis = len(x) - 1 if kind == "linear" else 1
        for zeros in (0.5, 0.7, 0.9, 0.95):
            measured_best, cands = None, []
            for block in blocks:
                w = _weight(k, n, block, zeros, rng)
                layer = SparseLayer("w", kind, x, axis, w, ((block, block_density(w, block)),))
                _, _, pd, ps = est.estimate(layer)
                md, ms = (t * 1e3 for t in measure_layer(layer, block, target, args.repeats))
                total += 1
                agree += (ps < pd) == (ms < md)
                cands.append((block, ps, ms))
                if measured_best is None or ms < measured_best[1]:
                    measured_best = (block, ms)
                print(f"| {kind} | {list(x)} | {block[0]}x{block[1]} | {zeros:.0%} | {pd:.3f} / {ps:.3f} "
                      f"| {md:.3f} / {ms:.3f} | {'yes' if ps < pd else 'no'} | {'yes' if ms < md else 'no'} |",
                      flush=True)
            ranked = sorted(cands, key=lambda c: c[1])
            # the chooser times the model's best and runner-up blocks; the faster one is kept
            timed_pick = min(ranked[:2], key=lambda c: c[2])[0]
            picks.append((kind, x, zeros, ranked[0][0], timed_pick, measured_best[0]))
    print(f"\nsparse-vs-dense decisions agreeing with the measurement: {agree}/{total}")
    same = sum(m == b for *_, m, _, b in picks)
    timed = sum(t == b for *_, t, b in picks)
    print(f"block picked by the model = fastest measured block: {same}/{len(picks)}")
    print(f"block kept by the chooser (model's best two timed) = fastest measured block: {timed}/{len(picks)}")
    for kind, x, zeros, m, t, b in picks:
        print(f"- {kind} {list(x)} {zeros:.0%} zeros: model picks {m[0]}x{m[1]}, chooser keeps "
              f"{t[0]}x{t[1]}, fastest measured {b[0]}x{b[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
