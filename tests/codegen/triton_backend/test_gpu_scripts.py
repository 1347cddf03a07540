"""The GPU scripts' dry runs (CPU, Triton interpreter): the device's 30 minutes are not spent
finding a script's bugs. ``schedule_sweep.py`` on the tiny CNN: every swept schedule checked
against the library, a table, and with ``--db`` the timings as tuning records."""

import sys
from pathlib import Path

from tilefx.storage.database import TuningDatabase

GPU_SCRIPTS = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu"


def test_schedule_sweep_dry_run_writes_a_table_and_records(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    import schedule_sweep

    db = tmp_path / "sweep.db"
    assert schedule_sweep.main(["--dry-run", "--db", str(db)]) == 0
    table = (tmp_path / "out" / "schedule_sweep.md").read_text()
    # which conv is costliest is a timing under the interpreter: any of the two may lead
    assert "| tiny_cnn | fused_conv2d_add_relu_" in table, table
    records = TuningDatabase(str(db)).records()
    assert records and all(r.ok for r in records)
    assert {r.error for r in records} == {schedule_sweep.Records.NOTE}
    sys.modules.pop("schedule_sweep", None)


def test_kernel_counts_tables_both_dtypes(tmp_path, monkeypatch, capsys):
    """``kernel_counts.py`` on the torch-only zoo models: fp16 and bf16 counted alike."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    import kernel_counts

    assert kernel_counts.main(["--models", "tiny_cnn,tiny_attn", "--dtype", "fp16,bf16"]) == 0
    table = (tmp_path / "out" / "kernel_counts.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny_")]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows), table
    assert kernel_counts.main(["--dtype", "fp8"]) == 2
    sys.modules.pop("kernel_counts", None)
