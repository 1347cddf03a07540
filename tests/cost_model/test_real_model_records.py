"""The H200 records of real models' kernels that the shipped cuda model was boosted on
(``benchmarks/results/gpu-sweep-records-h200-2026-12-03.jsonl``): they load, the shipped model
ranks them as a model trained on them should, and leave-one-model-out models beat random."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "benchmarks/results/gpu-sweep-records-h200-2026-12-03.jsonl"


def test_shipped_cuda_model_ranks_the_real_model_records(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "gpu"))
    import cost_model_lomo

    assert cost_model_lomo.main([str(RECORDS), "--rounds", "20"]) == 0
    out = capsys.readouterr().out
    assert "695 measured schedules of 39 kernels from 8 models" in out
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \| ([\d.]+) \|", out, re.M)}
    assert rows["shipped model as it is"] > 0.8  # trained on all of them
    assert rows["from scratch, other models' kernels"] > rows["random"] + 0.15
    assert rows["shipped + 20 rounds on the other models' kernels"] > rows["random"] + 0.15
    sys.modules.pop("cost_model_lomo", None)
