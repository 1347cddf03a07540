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
    assert "| tiny_cnn | fused_conv2d_add_relu_0" in table
    records = TuningDatabase(str(db)).records()
    assert records and all(r.ok for r in records)
    assert {r.error for r in records} == {schedule_sweep.Records.NOTE}
    sys.modules.pop("schedule_sweep", None)
