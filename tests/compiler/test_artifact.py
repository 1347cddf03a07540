"""AOT artifacts: save -> load in a fresh process -> same outputs as eager, with no compiler.

Every zoo model is compiled and saved once (module fixture); one subprocess
then loads each artifact with tracing, the passes and every kernel build
patched to raise, runs it on fresh inputs and compares with the eager model;
it also checks that the ``tvm`` Python package (the compiler) was never
imported. The rest checks what a user or a damaged file can get wrong: input
shape/dtype/batch errors, edited or truncated files, version and CPU-feature
mismatches, each an ``ArtifactError`` naming the problem, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import tilefx
from benchmarks.models import ZOO
from tilefx.compiler.artifact import ArtifactError, ArtifactInputError, compile_artifact, sha256_file
from tilefx.compiler.artifact_load import (_installed_tvm_version, check_compatible, host_cpu_flags, load,
                                          missing_cpu_features, read_manifest)

os.environ.setdefault("TVM_BIND_THREADS", "0")
ROOT = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-3, 1e-4
DYNAMIC = {"mlp": (2, 3)}  # saved with a symbolic batch, kernels for both sizes


@pytest.fixture(scope="module")
def zoo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo_artifacts")
    out = {}
    for name, entry in sorted(ZOO.items()):
        batches = DYNAMIC.get(name, ())
        inputs = entry.make_inputs(batches[0] if batches else entry.batches[0], seed=0)
        compile_artifact(entry.build(), inputs, root / name, batch_sizes=batches, batch_name="B")
        out[name] = root / name
    return out


LOADER = textwrap.dedent('''
    import json, sys
    import torch

    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} was called while loading or running an artifact")
        return fail

    import torch.export
    import tilefx.codegen.tvm, tilefx.compiler.capture, tilefx.compiler.session
    import tilefx.compiler.frontend, tilefx.passes
    torch.export.export = forbidden("torch.export.export")
    tilefx.compiler.capture.capture = forbidden("capture")
    tilefx.compiler.frontend.lower_to_ir = forbidden("lower_to_ir")
    tilefx.passes.optimize = forbidden("passes.optimize")
    tilefx.compiler.session.CompileSession.build = forbidden("CompileSession.build")
    tilefx.codegen.tvm.build_kernel = forbidden("build_kernel")

    import tilefx
    from benchmarks.models import ZOO

    report = {}
    for name, path, batches in json.loads(sys.argv[1]):
        entry = ZOO[name]
        model = entry.build()
        m = tilefx.load(path)
        for b in batches:
            x = entry.make_inputs(b, seed=700 + b)
            with torch.no_grad():
                ref = model(*x)
            got = m(*x)
            torch.testing.assert_close(got, ref, rtol=%g, atol=%g,
                                       msg=lambda s, n=name, b=b: f"{n} batch {b}: {s}")
            assert ref.abs().max() > 1e-3, f"{name}: reference ~0, check is void"
        report[name] = {"load_seconds": m.load_seconds, "kernels": len(m.manifest["kernels"])}
    report["tvm_imported"] = "tvm" in sys.modules
    print(json.dumps(report))
''' % (RTOL, ATOL))


def test_zoo_artifacts_load_in_fresh_process_without_compiler(zoo_artifacts):
    jobs = [[name, str(path), list(DYNAMIC.get(name, ZOO[name].batches[:1]))]
            for name, path in zoo_artifacts.items()]
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TVM_BIND_THREADS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("tvm_imported") is False, "loading imported the TVM compiler"
    assert set(report) == set(ZOO)
    assert all(r["kernels"] > 0 for r in report.values())


def test_manifest_describes_the_artifact(zoo_artifacts):
    m = read_manifest(zoo_artifacts["resnet18"])
    assert m["format_version"] == 1 and m["tilefx_version"] == tilefx.__version__
    assert m["target"]["kind"] == "cpu" and "sse2" in m["cpu_features"]
    assert m["inputs"] == [{"name": m["inputs"][0]["name"], "dtype": "float32",
                            "shape": [1, 3, 64, 64]}]
    assert m["fallbacks"] == [] and m["symbols"] == {}
    tvm_rows = [k for k in m["kernels"] if k["backend"] == "tvm"]
    assert tvm_rows and all(k["schedule"] and k["file"] in m["files"] for k in tvm_rows)
    # repeated blocks share one library: fewer files than kernel ops
    assert len({k["file"] for k in tvm_rows}) < len(tvm_rows)
    root = zoo_artifacts["resnet18"]
    assert (root / "tuning.jsonl").read_text() == ""
    assert "kernel(" in (root / "graph.tir").read_text()
    dyn = read_manifest(zoo_artifacts["mlp"])
    (sym,) = dyn["symbols"].values()
    assert sym == {"name": "B", "sizes": [2, 3]}


@pytest.fixture(scope="module")
def mlp_dir(zoo_artifacts) -> Path:
    return zoo_artifacts["mlp"]


def test_input_errors_name_the_input(mlp_dir):
    m = load(mlp_dir)
    good = ZOO["mlp"].make_inputs(2, seed=1)[0]
    with pytest.raises(ArtifactInputError, match=r"expects dtype float32, got float64"):
        m(good.double())
    with pytest.raises(ArtifactInputError, match=r"expects size 1024 at dim 1"):
        m(good[:, :100])
    with pytest.raises(ArtifactInputError, match=r"takes 1 tensor input\(s\) \(Bx1024:float32\), got 2"):
        m(good, good)
    with pytest.raises(ArtifactInputError, match=r"B = 5 has no kernels .* B in \[2, 3\]"):
        m(torch.cat([good, good, good])[:5])
    assert m(good).shape == (2, 1024)


def test_build_missing_builds_an_unseen_batch_from_the_saved_ir(mlp_dir):
    m = load(mlp_dir, build_missing=True)
    entry = ZOO["mlp"]
    x = entry.make_inputs(4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(m(*x), entry.build()(*x), rtol=RTOL, atol=ATOL)


class Spectral(nn.Module):
    """An rfft (no lowering: a fallback region) between two linears; returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(9, 4)

    def forward(self, x):
        h = self.a(x)
        return {"out": self.b(torch.fft.rfft(h, dim=-1).abs()), "h": (h, 3)}


def test_fallback_regions_and_output_structure_survive(tmp_path):
    model = Spectral().eval()
    compile_artifact(model, (torch.randn(3, 16),), tmp_path / "a")
    manifest = read_manifest(tmp_path / "a")
    assert any("fft_rfft" in f["target"] for f in manifest["fallbacks"])
    assert "fallback" in (tmp_path / "a" / "graph.tir").read_text()
    m = load(tmp_path / "a")
    x = torch.randn(3, 16)
    got = m(x)
    with torch.no_grad():
        ref = model(x)
    assert set(got) == {"out", "h"} and got["h"][1] == 3
    torch.testing.assert_close(got["out"], ref["out"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got["h"][0], ref["h"][0], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------- damaged artifacts

@pytest.fixture
def copy(mlp_dir, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(mlp_dir, dest)
    return dest


def edit_manifest(root: Path, **changes) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))


def a_kernel_file(root: Path) -> Path:
    return sorted((root / "kernels").glob("*.so"))[0]


def a_feature_this_cpu_lacks() -> str:
    """amx-tile on most machines; AMD's sse4a on an Intel CPU with AMX (a Sapphire Rapids)."""
    flags = host_cpu_flags() or set()
    return next(f for f in ("amx-tile", "sse4a", "xop", "fma4") if missing_cpu_features([f], flags))


LACKED = a_feature_this_cpu_lacks()


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, r"format version 99 is not supported"),
    ({"tilefx_version": "7.0.0"}, r"tilefx 7.0.0.*major versions differ"),
    ({"tvm_version": "0.1.0"}, r"built with TVM 0.1.0"),
    ({"format": "onnx"}, r"'format' is 'onnx'"),
    ({"kernels": "all"}, r"field 'kernels' must be list"),
    ({"target": {"kind": "cpu", "mtriple": "aarch64-linux-gnu"}}, r"artifact is for aarch64"),
    ({"cpu_features": ["sse2", LACKED]}, rf"lacks feature\(s\) {LACKED}"),
])
def test_edited_manifest_is_refused_with_a_clear_message(copy, change, message):
    edit_manifest(copy, **change)
    with pytest.raises(ArtifactError, match=message):
        load(copy)


def test_missing_cpu_feature_is_named():
    manifest = {"format_version": 1, "tilefx_version": tilefx.__version__, "tvm_version": _installed_tvm_version(),
                "target": {"kind": "cpu", "mtriple": "", "mcpu": "znver4"},
                "cpu_features": ["sse4.2", "avx2", "avx512f"]}
    with pytest.raises(ArtifactError, match=r"lacks feature\(s\) avx512f .*'znver4'"):
        check_compatible(manifest, flags={"sse4_2", "avx2"})
    check_compatible(manifest, flags={"sse4_2", "avx2", "avx512f"})


def test_bad_json_missing_dir_and_missing_manifest(copy, tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path)
    (copy / "manifest.json").write_text('{"format": "tilefx-artifact", ')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load(copy)


@pytest.mark.parametrize("victim", ["kernel", "weights.safetensors", "graph.tir"])
def test_truncated_or_modified_files_are_refused_before_use(copy, victim):
    path = a_kernel_file(copy) if victim == "kernel" else copy / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load(copy)
    path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # same size
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        load(copy)
    path.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        load(copy)


def test_file_without_hash_or_outside_the_artifact(copy):
    m = json.loads((copy / "manifest.json").read_text())
    rel = next(k["file"] for k in m["kernels"] if k.get("file"))
    files = dict(m["files"])
    del files[rel]
    edit_manifest(copy, files=files)
    with pytest.raises(ArtifactError, match="has no sha256 entry"):
        load(copy)
    edit_manifest(copy, files={**m["files"], "../x.so": {"sha256": "0", "bytes": 1}})
    with pytest.raises(ArtifactError, match="points outside the artifact"):
        load(copy)


REHASHED = textwrap.dedent('''
    import sys
    from tilefx.compiler.artifact import ArtifactError
    from tilefx.compiler.artifact_load import load
    try:
        load(sys.argv[1])
    except ArtifactError as e:
        print("ArtifactError:", e)
''')


@pytest.mark.parametrize("victim", ["kernel", "weights.safetensors", "graph.tir"])
def test_damaged_file_with_a_matching_hash_is_an_error_not_a_crash(copy, victim):
    # Someone truncated a file and "fixed" the manifest: the reader itself must
    # still fail cleanly (dlopen, safetensors, the IR parser), never segfault.
    path = a_kernel_file(copy) if victim == "kernel" else copy / victim
    path.write_bytes(path.read_bytes()[:300])
    m = json.loads((copy / "manifest.json").read_text())
    rel = str(path.relative_to(copy))
    m["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(m))
    proc = subprocess.run([sys.executable, "-c", REHASHED, str(copy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "ArtifactError:" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_save_refuses_a_non_artifact_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    model = nn.Linear(4, 4).eval()
    with pytest.raises(ArtifactError, match="not a tilefx artifact"):
        compile_artifact(model, (torch.randn(2, 4),), tmp_path)
    assert (tmp_path / "keep.txt").exists()
    compile_artifact(model, (torch.randn(2, 4),), tmp_path / "a")
    with pytest.raises(ArtifactError, match="holds an artifact already; pass overwrite=True"):
        compile_artifact(model, (torch.randn(2, 4),), tmp_path / "a")
    compile_artifact(model, (torch.randn(2, 4),), tmp_path / "a", overwrite=True)
    assert load(tmp_path / "a")(torch.randn(2, 4)).shape == (2, 4)
