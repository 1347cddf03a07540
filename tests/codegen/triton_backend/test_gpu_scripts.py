"""The GPU scripts' dry runs (CPU, Triton interpreter): the device's 30 minutes are not spent
finding a script's bugs. ``schedule_sweep.py`` on the tiny CNN: every swept schedule checked
against the library, a table, and with ``--db`` the timings as tuning records."""

import argparse
import json
import sys
from pathlib import Path

import pytest

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


def test_depthwise_bench_dry_run_both_layouts(tmp_path, monkeypatch, capsys):
    """``depthwise_bench.py --layout both``: ConvNeXt's 7x7 as NCHW code and as a channels-last
    region's kernel (its own tiling), each checked against torch before it is timed."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    import depthwise_bench

    assert depthwise_bench.main(["--dry-run", "--models", "convnext", "--layout", "both"]) == 0
    table = (tmp_path / "out" / "depthwise_bench.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| convnext")]
    assert [r.split(" | ")[0].split()[-1] for r in rows] == ["nchw", "nhwc"], table
    assert "wrong" not in table and "WRONG" not in capsys.readouterr().err, table
    sys.modules.pop("depthwise_bench", None)


def test_models_only_measures_the_asked_columns_and_merges_them(monkeypatch):
    """``models.py --only 'max-autotune,tilefx tuned' --resume``: the device's minutes go to the
    missing columns; the new ones join the finished row, the old ones stay."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    args = argparse.Namespace(max_autotune=False, cm_default=False, tune="60s", only="max-autotune,tilefx tuned")
    assert models.wanted(args) == {"max-autotune", "tilefx tuned"}
    args.only = ""
    assert models.wanted(args) == {"inductor", "reduce-overhead", "tilefx", "tilefx tuned"}
    old = dict(model="m", dtype="fp16", status="ok", ms={"eager": 2.0, "tilefx": 1.0}, err={"tilefx": 0.01},
               compile_s={}, errors={}, notes=["a"], report={"kernels": 3})
    new = dict(model="m", dtype="fp16", status="ok", ms={"eager": 2.1, "max-autotune": 1.2, "tilefx tuned": 0.9},
               err={}, compile_s={"max-autotune": 90.0}, errors={}, notes=["b"],
               report={"tuned_fallbacks": 0, "tuned_interpreted": 0})
    row = models.merged(old, new)
    assert row["ms"] == {"eager": 2.1, "tilefx": 1.0, "max-autotune": 1.2, "tilefx tuned": 0.9}
    assert row["report"] == {"kernels": 3, "tuned_fallbacks": 0, "tuned_interpreted": 0}
    assert row["notes"] == ["a", "b"]
    from models_report import both
    assert both(row["report"], "fallbacks") == "- / tuned 0" and both({"fallbacks": 2}, "fallbacks") == "2"
    failed = models.merged(old, dict(new, status="timeout after 60 s during max-autotune"))
    assert failed["ms"] == old["ms"] and failed["notes"][-1].startswith("--only run: timeout")
    assert models.main(["--device", "cpu", "--only", "bogus"]) == 2
    assert models.main(["--device", "cpu", "--only", "tilefx tuned"]) == 2  # needs --tune
    sys.modules.pop("models", None)


def test_models_resumes_from_a_results_file(monkeypatch, tmp_path, capsys):
    """``--resume`` takes a run's ``models.json`` or a results file keeping several device calls
    (``{"calls": [{"data": ...}]}``: once a ``KeyError: 'rows'`` traceback); anything else is
    refused in one line."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    row = dict(model="m", dtype="fp16", status="ok", ms={"tilefx": 1.0})
    plain = {"commands": ["a"], "rows": [row, dict(row, model="n", status="timeout")]}
    assert models.resumable(plain) == {"commands": ["a"], "rows": plain["rows"]}
    newer = dict(row, ms={"tilefx": 0.9, "max-autotune": 2.0}, compile_s={"max-autotune": 45.0})
    calls = {"calls": [{"commit": "x", "data": plain}, {"commands": ["b"], "rows": [newer]}]}
    both = models.resumable(calls)
    assert both["commands"] == ["a", "b"] and len(both["rows"]) == 1
    assert both["rows"][0]["ms"] == {"tilefx": 0.9, "max-autotune": 2.0}  # the later call wins
    # calls made with --only each add columns to the same row: a later call keeps the earlier's
    # (a lost 'tilefx tuned' compile time once let --expect start a model its deadline killed)
    tuned = dict(row, ms={"tilefx tuned": 1.5}, compile_s={"tilefx tuned": 83.0})
    three = {"calls": [*calls["calls"], {"commands": ["c"], "rows": [tuned]}]}
    (merged,) = models.resumable(three)["rows"]
    assert merged["ms"] == {"tilefx": 0.9, "max-autotune": 2.0, "tilefx tuned": 1.5}
    assert merged["compile_s"] == {"max-autotune": 45.0, "tilefx tuned": 83.0}
    assert models.expected_seconds([merged], "m", ["max-autotune", "tilefx tuned"]) is not None
    # a results file with every asked row finished: nothing runs, and the file keeps its calls
    kept = tmp_path / "results.json"
    kept.write_text(json.dumps({"calls": [{"data": {"commands": ["a"], "rows": [
        dict(row, model="tiny_cnn", dtype="fp32")]}}]}))
    before = kept.read_text()
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--dtype", "fp32", "--resume", str(kept)]) == 0
    assert kept.read_text() == before
    assert json.loads((tmp_path / "out" / "models.json").read_text())["rows"][0]["model"] == "tiny_cnn"
    bad = tmp_path / "bad.json"
    bad.write_text('{"something": 1}')
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--resume", str(bad)]) == 2
    assert "not a models.py table" in capsys.readouterr().err
    sys.modules.pop("models", None)


def test_models_second_command_keeps_the_firsts_table(monkeypatch, tmp_path):
    """Two commands in one device call, the second with its own ``--resume FILE``: FILE (and its
    .md) get the second's rows, ``$OUT/models.json`` keeps the first's (it once held the second
    command's rows only, the first's T5 row lost)."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setattr(models, "child_row", lambda name, dtype, *a, **k: dict(
        model=name, dtype=dtype, status="ok", ms={"eager": 1.0 if name == "tiny_cnn" else 2.0}))
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--dtype", "fp32", "--only", "eager"]) == 0
    second = out / "models2.json"
    assert models.main(["--device", "cpu", "--models", "tiny_attn", "--dtype", "fp32", "--only", "eager",
                        "--resume", str(second)]) == 0
    assert [r["model"] for r in json.loads((out / "models.json").read_text())["rows"]] == ["tiny_cnn"]
    assert [r["model"] for r in json.loads(second.read_text())["rows"]] == ["tiny_attn"]
    assert "tiny_attn" in second.with_suffix(".md").read_text()
    assert "tiny_attn" not in (out / "models.md").read_text()
    sys.modules.pop("models", None)


def test_models_stops_at_once_when_tilefx_cannot_import(monkeypatch, capsys):
    """A machine missing one of tilefx's own needs (the GPU image had no ``sqlalchemy``) is told in
    one line before any model runs, instead of after every peer column of every model."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    assert models.missing_module() == ""
    real = models.importlib.import_module

    def without_sqlalchemy(name, *a, **k):
        if name == "tilefx.autotune.model_tune":
            raise ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")
        return real(name, *a, **k)
    monkeypatch.setattr(models.importlib, "import_module", without_sqlalchemy)
    monkeypatch.setattr(models, "driver", lambda args: pytest.fail("no model may run"))
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--dtype", "fp32"]) == 1
    assert "no module named 'sqlalchemy'" in capsys.readouterr().err
    # the peers alone need no tilefx
    monkeypatch.setattr(models, "driver", lambda args: 0)
    assert models.main(["--device", "cpu", "--only", "inductor"]) == 0
    sys.modules.pop("models", None)


def test_models_does_not_start_a_model_its_deadline_would_kill(monkeypatch, tmp_path):
    """``--expect``: a model whose columns took longer in an earlier run (compile seconds, any
    dtype) than the deadline leaves is not started (efficientnet_b0's max-autotune was killed at
    164 s of ~280, three device minutes lost); one without a record starts as before."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    rows = [dict(model="tiny_cnn", dtype="fp16", status="ok", compile_s={"max-autotune": 250.0}),
            dict(model="tiny_cnn", dtype="bf16", status="ok", compile_s={"max-autotune": 280.0,
                                                                         "tilefx tuned": 90.0})]
    seconds = models.expected_seconds(rows, "tiny_cnn", ["max-autotune", "tilefx tuned"])
    from models_rows import LOAD_SECONDS, TIMING_SECONDS
    assert seconds == LOAD_SECONDS + 280 + 90 + 2 * TIMING_SECONDS  # the longest per column
    assert models.expected_seconds(rows, "tiny_cnn", ["inductor"]) is None  # never seen
    assert models.expected_seconds(rows, "other", ["max-autotune"]) is None
    # a child killed during a column: that column took at least the child's time less loading
    killed = dict(model="swin_t", dtype="fp16", status="timeout after 307 s during max-autotune",
                  ms={"eager": 7.7, "max-autotune": "timeout after 307 s"}, compile_s={})
    assert models.expected_seconds([killed], "swin_t", ["max-autotune"]) == \
        LOAD_SECONDS + (307 - LOAD_SECONDS) + TIMING_SECONDS
    assert models.expected_seconds([killed], "swin_t", ["max-autotune", "tilefx tuned"]) is None
    in_a_file = {"calls": [{"commands": ["a"], "rows": [killed]}, {"data": {"commands": [], "rows": rows}}]}
    assert len(models.all_rows(in_a_file)) == 3 and len(models.resumable(in_a_file)["rows"]) == 2
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"calls": [{"data": {"commands": [], "rows": rows}}]}))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(models, "child_row", lambda *a, **k: pytest.fail("must not start"))
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--dtype", "fp32", "--only",
                        "max-autotune,tilefx tuned", "--tune", "60s", "--deadline", "300",
                        "--expect", str(earlier)]) == 0
    (row,) = json.loads((tmp_path / "out" / "models.json").read_text())["rows"]
    assert row["status"].startswith("not run: --deadline reached (expected ~")
    started = []
    monkeypatch.setattr(models, "child_row", lambda name, *a, **k: started.append(name) or dict(
        model=name, dtype="fp32", status="ok", ms={}))
    assert models.main(["--device", "cpu", "--models", "tiny_cnn", "--dtype", "fp32", "--only",
                        "inductor", "--deadline", "300", "--expect", str(earlier)]) == 0
    assert started == ["tiny_cnn"]
    sys.modules.pop("models", None)


def test_models_keeps_a_finished_row_whose_child_was_killed_ending(monkeypatch):
    """swin_t bf16's max-autotune child printed its last row (2.333 ms) and was killed while its
    compile workers ended: the row is complete and stays ``ok``; a child killed mid-column is not."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import models

    args = argparse.Namespace(repeats=30, device="cpu", batch=0, max_autotune=False, skip_kernels=True,
                              cm_default=False, tune="", only="max-autotune")
    finished = dict(model="swin_t", dtype="bf16", stage="done", status="ok",
                    ms={"eager": 15.0, "max-autotune": 2.333}, notes=[])
    monkeypatch.setattr(models, "run_child", lambda *a, **k: (dict(finished), "timeout after 560 s"))
    row = models.child_row("swin_t", "bf16", args, 560, None)
    assert row["status"] == "ok" and row["ms"]["max-autotune"] == 2.333
    assert row["notes"] == ["child timeout after 560 s after its last row; the row is complete"]
    midway = dict(finished, stage="max-autotune", status="running", ms={"eager": 15.0})
    monkeypatch.setattr(models, "run_child", lambda *a, **k: (dict(midway), "timeout after 560 s"))
    row = models.child_row("swin_t", "bf16", args, 560, None)
    assert row["status"] == "timeout after 560 s during max-autotune"
    assert row["ms"]["max-autotune"] == "timeout after 560 s"
    sys.modules.pop("models", None)


def test_summary_takes_each_ratio_from_the_newest_file_with_both_columns(monkeypatch, tmp_path, capsys):
    """``summary.py`` over several results files: a ratio's two columns come from one file (the
    newest holding both), else from two files and marked; the goals are checked (a ratio over 1, an
    error over its limit or a fallback fail the run); a count an old run did not record is named."""
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    import summary

    def row(model, ms, **extra):
        return dict(model=model, dtype="fp16", status="ok", ms=ms, limit=0.01,
                    err={c: 0.001 for c in ms}, **extra)
    untuned = {"kernels": 5, "fallbacks": 0, "interpreted": 0}
    old = {"commands": [], "rows": [row("a", {"tilefx": 1.0, "reduce-overhead": 2.0}, report=untuned),
                                    row("b", {"tilefx": 1.5, "reduce-overhead": 2.0}, report=untuned)]}
    new = {"commit": "abc1234", "calls": [
        {"commands": [], "rows": [row("a", {"tilefx": 0.5}, report=untuned),  # no peer in this file
                                  row("a", {"tilefx tuned": 0.6, "max-autotune": 1.2},
                                      report={"tuned_fallbacks": 0, "tuned_interpreted": 0},
                                      notes=["tuned: budget 60.0s for the model: 68.5s used (+8.5s)"])]},
        {"commands": [], "rows": [row("b", {"tilefx tuned": 0.9})]}]}
    last = {"commands": [], "rows": [row("b", {"max-autotune": 1.0, "tilefx tuned": "timeout after 9 s"})]}
    paths = []
    for i, data in enumerate((old, new, last)):
        paths.append(tmp_path / f"gpu-models-{i}.json")
        paths[-1].write_text(json.dumps(data))
    out = tmp_path / "summary.md"
    assert summary.main([*map(str, paths), "--out", str(out)]) == 0
    text = out.read_text()
    a_row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert "| 1.000 | 2.000 | **0.50** |" in a_row and "| 0.600 | 1.200 | **0.50** |" in a_row  # 0.5 / 2.0 not taken
    assert "0 (abc1234)" not in a_row and "1 (abc1234)" in a_row  # each ratio names its file and code
    b_row = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "**0.90*** " in b_row and "1 + 2" in b_row  # tuned from file 1, max-autotune from file 2
    assert "- untuned: 2 models, geomean 0.61" in text and "goal met" in text
    assert "not recorded by the run: b tuned" in text
    assert "| 68.5 s |" in a_row and "tuning over its budget: a 68.5 s of 60 (abc1234)" in text
    assert "untuned tilefx / max-autotune (for comparison): 2 models, geomean 0.79, worst 1.50" in text
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"commands": [], "rows": [row("c", {"tilefx": 2.2, "reduce-overhead": 2.0},
                                                            report=untuned)]}))
    assert summary.main([str(paths[0]), str(slow)]) == 1
    assert "worst 1.10: goal MISSED" in capsys.readouterr().out
    wrong = dict(row("c", {"tilefx": 1.0, "reduce-overhead": 2.0}, report=untuned), err={"tilefx": 0.5})
    slow.write_text(json.dumps({"commands": [], "rows": [wrong]}))
    assert summary.main([str(slow)]) == 1 and "FAILED: 0.5" in capsys.readouterr().out
    slow.write_text(json.dumps({"commands": [], "rows": [row("c", {"tilefx": 1.0, "reduce-overhead": 2.0},
                                                            report=dict(untuned, fallbacks=2))]}))
    assert summary.main([str(slow)]) == 1
    slow.write_text('{"nothing": 1}')
    assert summary.main([str(slow)]) == 2
    sys.modules.pop("summary", None)
