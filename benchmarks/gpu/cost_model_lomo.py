"""The GPU cost model on real models' kernels, leave one model out (runs on the CPU).

    python benchmarks/gpu/cost_model_lomo.py benchmarks/results/gpu-sweep-records-h200-2026-12-03.jsonl

Reads tuning records of real models' kernels (``schedule_sweep.py --db``, exported as JSON
lines; each measurement's note names its model) and ranks every kernel's measured schedules with
(a) the shipped model as it is, (b) a model trained from scratch on the other models' kernels and
(c) the shipped model boosted ``--rounds`` more on the other models' kernels (what
``tilefx train-cost-model --init`` does). Holding out a whole model is the honest split: kernels of
one model share shapes, so a split by kernel would flatter (b) and (c). Metrics as
``tilefx train-cost-model`` prints them (top-1: best time / time of the model's first pick).
Rows (a) and (c) are only a held-out measure for a ``--model`` not trained on these records (the
shipped model now is: its row (a) says how well it fits them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tilefx.cost_model.dataset import load_dataset  # noqa: E402
from tilefx.cost_model.metrics import evaluate, format_metrics  # noqa: E402
from tilefx.cost_model.model import LearnedModel  # noqa: E402
from tilefx.storage.database import TuningDatabase  # noqa: E402


def model_of_workloads(db: TuningDatabase, target_key: str) -> dict[str, str]:
    """workload key -> the model its measurements name (``schedule_sweep <model> <kernel>``)."""
    out = {}
    for r in db.records(target_key=target_key):
        words = r.error.split()
        if len(words) >= 2 and words[0] == "schedule_sweep":
            out[r.workload_key] = words[1]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", help="JSON lines of tuning records (TuningDatabase.export_jsonl)")
    p.add_argument("--model", default=str(ROOT / "tilefx/cost_model/default_cuda.json"),
                   help="the model to evaluate and boost (default: the shipped cuda model)")
    p.add_argument("--rounds", type=int, default=100, help="boosting rounds added in (c)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = TuningDatabase(str(Path(tmp) / "records.db"))
        db.import_jsonl(args.records)
        key = db.target_keys()[0]
        ds = load_dataset(db, key)
        owner = model_of_workloads(db, key)
        db.close()
    X, t, g = ds.features(), ds.seconds(), ds.groups()
    models = np.array([owner.get(ds.workloads[i], "?") for i in g])
    shipped = LearnedModel.load(args.model)
    scratch, boosted = np.zeros(len(t)), np.zeros(len(t))
    for m in sorted(set(models)):
        train, test = models != m, models == m
        for scores, init, rounds in ((scratch, None, 300), (boosted, shipped, args.rounds)):
            fit = LearnedModel.train(X[train], t[train], g[train], key, feature_set=ds.feature_set,
                                     init=init, rounds=rounds, columns=shipped.columns)
            scores[test] = fit.score_matrix(X[test])
    rows = {"shipped model as it is": evaluate(t, shipped.score_matrix(X), g),
            "from scratch, other models' kernels": evaluate(t, scratch, g),
            f"shipped + {args.rounds} rounds on the other models' kernels": evaluate(t, boosted, g),
            "random": evaluate(t, np.random.default_rng(0).random(len(t)), g)}
    print(f"{len(t)} measured schedules of {len(ds.workloads)} kernels from {len(set(models))} models "
          f"({', '.join(sorted(set(models)))}) on {key}; each model's kernels held out in turn\n")
    print(format_metrics(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
