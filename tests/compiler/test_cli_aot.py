"""``tilefx compile`` / ``tilefx run``: end to end, help texts, argument errors."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path

import pytest

from tilefx.compiler.cli import main
from tilefx.compiler.cli_aot import parse_aot_spec, parse_batch_sizes, parse_time_budget

os.environ.setdefault("TVM_BIND_THREADS", "0")

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc, self.out = nn.Linear(8, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x))).softmax(-1)

    def build():
        return Net().eval()
''')


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "aot_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_compile_then_run_prints_summary_and_latency(model_file, tmp_path, capsys):
    out = tmp_path / "art"
    ref = f"{model_file}:build"
    assert main(["compile", ref, "--input", "Bx8:float32", "--dynamic", "batch",
                 "--batch-sizes", "2,5", "-o", str(out), "--repeats", "3"]) == 0
    text = capsys.readouterr().out
    assert "kernels:" in text and "fusions" in text and "fallbacks: 0" in text
    assert "tuning: none" in text
    assert "latency on 5x8:float32 (median of 3): tilefx" in text and "eager" in text
    assert f"artifact: {out}" in text and "B in [2, 5]" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == ref and manifest["compile"]["latency_ms"] > 0
    assert manifest["inputs"][0]["shape"][1] == 8

    assert main(["run", str(out), "--model", ref, "--repeats", "3"]) == 0
    text = capsys.readouterr().out
    assert "loaded" in text and "tilefx:" in text and "on 5x8:float32" in text
    diff = float(text.split("max |diff|")[1].split()[0])
    assert diff < 1e-5 and "eager:" in text

    assert main(["run", str(out), "--input", "2x8", "--repeats", "2"]) == 0
    assert "on 2x8:float32" in capsys.readouterr().out
    assert main(["run", str(out), "--input", "3x8", "--repeats", "2"]) == 2
    err = capsys.readouterr().err
    assert "--input" in err and "B = 3 has no kernels" in err and "[2, 5]" in err
    assert main(["compile", ref, "--input", "2x8", "-o", str(out)]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert main(["compile", ref, "--input", "2x8", "-o", str(model_file.parent), "--force"]) == 2
    assert "is not a tilefx artifact" in capsys.readouterr().err


def test_run_reports_a_damaged_artifact(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{oops")
    assert main(["run", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command, options", [
    ("compile", ["MODEL", "--input", "SPEC", "--target", "--trials", "--time-budget",
                 "--dynamic", "--batch-sizes", "-o OUT_DIR, --output OUT_DIR", "--force",
                 "--repeats", "Bx1024:float32"]),
    ("run", ["OUT_DIR", "--input", "--model", "--repeats"]),
])
def test_help_lists_every_option(command, options, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, f"{command} --help lacks {option}"


@pytest.mark.parametrize("argv, message", [
    (["--input", "4xq!:float32"], "argument --input: expected SHAPE"),
    (["--input", "4x8:float99"], "unknown dtype 'float99'"),
    (["--input", "4xB"], "only the first (batch) dim may be symbolic"),
    (["--input", "4x8", "--trials", "0"], "argument --trials: expected a positive integer"),
    (["--input", "4x8", "--time-budget", "10 parsecs"], "argument --time-budget: expected a "
                                                        "duration like 90s, 10m or 1h"),
    (["--input", "4x8", "--trials", "3", "--time-budget", "1m"], "not allowed with argument"),
    (["--input", "4x8", "--dynamic", "time"], "argument --dynamic: invalid choice"),
    (["--input", "4x8", "--dynamic", "batch", "--batch-sizes", "1,x"],
     "argument --batch-sizes: expected comma-separated positive sizes"),
    (["--input", "4x8"], "the following arguments are required: -o/--output"),
])
def test_bad_compile_arguments_name_the_argument(argv, message, model_file, tmp_path, capsys):
    extra = [] if "-o/--output" in message else ["-o", str(tmp_path / "o")]
    assert main(["compile", f"{model_file}:build", *argv, *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--input", "Bx8"], "symbolic dim 'B' needs --dynamic batch"),
    (["--input", "Bx8", "--dynamic", "batch"], "needs --batch-sizes"),
    (["--input", "4x8", "--batch-sizes", "2"], "--batch-sizes needs --dynamic batch"),
    (["--input", "4x8", "--target", "cuda"], "artifacts are CPU-only"),
    (["--input", "Bx8", "--input", "Nx8", "--dynamic", "batch", "--batch-sizes", "2"],
     "name the batch dim differently"),
])
def test_inconsistent_compile_options_are_errors(argv, message, model_file, tmp_path, capsys):
    assert main(["compile", f"{model_file}:build", *argv, "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tuning_options_reach_compile_options(model_file, tmp_path, monkeypatch, capsys):
    import tilefx.compiler.artifact as artifact

    seen = []

    def fake_compile_artifact(model, inputs, out, **kw):
        seen.append(kw["options"].tune_trials)
        raise artifact.ArtifactError("stop here")

    monkeypatch.setattr(artifact, "compile_artifact", fake_compile_artifact)
    for flags in (["--trials", "7"], ["--time-budget", "2m"], []):
        assert main(["compile", f"{model_file}:build", "--input", "2x8", *flags,
                     "-o", str(tmp_path / "o")]) == 2
        assert "stop here" in capsys.readouterr().err
    assert seen == [7, "120s", 0]


def test_parsers():
    assert parse_aot_spec("Bx3x64x64:float16").shape == ("B", 3, 64, 64)
    assert parse_aot_spec("64x1024").dtype == "float32"
    assert parse_time_budget("10m") == "600s" and parse_time_budget("1.5h") == "5400s"
    assert parse_time_budget("90s") == "90s"
    assert parse_batch_sizes("8,1,8,32") == (1, 8, 32)
    for bad in ("10", "-1m", "m", "0s"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time_budget(bad)
