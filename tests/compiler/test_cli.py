"""``tilefx inspect``: the IR after each stage, kernels, sources; argument errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tilefx.compiler.cli import main, parse_input_spec

ROOT = Path(__file__).resolve().parents[2]

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 16)

        def forward(self, x):
            return torch.relu(self.fc(x)).sum(dim=-1)

    def build():
        torch.manual_seed(0)
        return Net()

    def embed(ids):
        return torch.nn.functional.one_hot(ids, 100).float().sum(dim=0)

    not_a_model = 3
''')


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_inspect_prints_ir_passes_and_kernels(model_file, capsys):
    assert main(["inspect", f"{model_file}:build", "--input", "4x8:float32"]) == 0
    out = capsys.readouterr().out
    assert "IR after frontend" in out and "IR after fusion" in out
    assert "matmul" in out and "kernel(" in out
    assert "# ---- kernels (" in out and "schedule" in out
    assert "# ---- fallbacks (0)" in out


def test_inspect_class_and_source(model_file, capsys):
    assert main(["inspect", f"{model_file}:Net", "--input", "2x8", "--source"]) == 0
    out = capsys.readouterr().out
    assert "# ---- source of" in out
    assert "T.prim_func" in out or "define" in out  # TVMScript (or LLVM IR) of each kernel


@pytest.mark.parametrize("spec", ["64y", "x3", "0x4", "4x:float32", ""])
def test_bad_input_spec_is_an_argparse_error(spec, capsys):
    assert main(["inspect", "m.py:build", "--input", spec]) == 2
    err = capsys.readouterr().err
    assert (f"error: argument --input: expected SHAPExSHAPE[:dtype] like 64x1024:float32, "
            f"got {spec!r}") in err


def test_bad_dtype_and_missing_things_are_named(model_file, capsys):
    assert main(["inspect", f"{model_file}:build", "--input", "4x8:float33"]) == 2
    assert "unknown dtype 'float33'" in capsys.readouterr().err
    assert main(["inspect", "no/such/file.py:build", "--input", "4x8"]) == 2
    assert "no such file: 'no/such/file.py'" in capsys.readouterr().err
    assert main(["inspect", f"{model_file}:nope", "--input", "4x8"]) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err
    assert main(["inspect", f"{model_file}:not_a_model", "--input", "4x8"]) == 2
    assert "has type int" in capsys.readouterr().err
    assert main(["inspect", "no_such_pkg.mod:build", "--input", "4x8"]) == 2
    assert "cannot import module 'no_such_pkg.mod'" in capsys.readouterr().err
    assert main([]) == 2  # a command is required


def test_int_specs_draw_token_ids():
    ids = parse_input_spec("3x5:int64").make(seed=0)
    assert ids.dtype.is_floating_point is False and ids.shape == (3, 5)
    assert 0 <= int(ids.min()) and int(ids.max()) < 100


def test_python_dash_m_tilefx_inspect(model_file):
    out = subprocess.run([sys.executable, "-m", "tilefx", "inspect", f"{model_file}:build",
                          "--input", "4x8"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "IR after frontend" in out.stdout and "kernels (" in out.stdout


def test_ray_resources_names_the_measure_resource_of_a_target(capsys):
    """``ray start --resources="$(tilefx ray-resources)"``: the same resource the cluster's
    measuring tasks ask for, one per device; other CPUs get other resources."""
    import json

    from tilefx.autotune.cluster import measure_resource
    from tilefx.codegen.target import Target

    assert main(["ray-resources"]) == 0
    host = json.loads(capsys.readouterr().out)
    assert host == {measure_resource(Target.parse("cpu")): 1}
    assert main(["ray-resources", "--target", "cpu:haswell", "--devices", "2"]) == 0
    avx2 = json.loads(capsys.readouterr().out)
    assert list(avx2.values()) == [2] and avx2.keys() != host.keys()
    assert main(["ray-resources", "--devices", "0"]) == 2
    assert "--devices" in capsys.readouterr().err
