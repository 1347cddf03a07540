"""Nothing in an artifact, IR text or the kernel cache is code: each exploit seen, refused.

- IR dim expressions: a Python payload in ``{...}`` never runs (parser and
  ``tilefx.load``); ``{10**10**10}``, 5000-deep nesting and a 10^6-digit integer
  fail fast with ``IRParseError``.
- ``fallback`` targets: only ATen-style operators (no ``load_library::__call__``,
  ``import_module::__call__``), refused at parse, load and run.
- Files of an artifact are never read through a symbolic link.
- A kernel-cache entry swapped for another's is detected, reported and rebuilt.
- Signed artifacts: ``tilefx.load(dir, key=...)`` refuses unsigned, wrongly
  signed or tampered ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tilefx.compiler.artifact import ArtifactError, compile_artifact, sha256_file
from tilefx.compiler.artifact_load import load
from tilefx.compiler.cli import main
from tilefx.compiler.signing import generate_keypair, sign_artifact
from tilefx.ir.interpreter import InterpreterError, resolve_target, run_fallback
from tilefx.ir.parser import IRParseError, parse_graph

os.environ.setdefault("TVM_BIND_THREADS", "0")


def payload(marker: Path) -> str:
    """Python that creates ``marker`` if anything evaluates it (no double quotes: DIMEXPR)."""
    return f"__import__('pathlib').Path('{marker}').touch()"


def one_dim_graph(dim: str) -> str:
    return "graph @g(%x: f32[" + dim + "]) {\n  return %x\n}"


# ------------------------------------------------------------------ IR text

def test_dim_expression_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(IRParseError, match=r"line 1, column \d+: bad dim expression"):
        parse_graph(one_dim_graph("{max(4, " + payload(marker) + ")}"))
    assert not marker.exists()


def test_dim_expressions_round_trip_as_built():
    g = parse_graph(one_dim_graph("{floor(s0/2 - 3/2) + 1}") + "\n")
    (d,) = g.inputs[0].type.shape
    assert str(d) == "floor(s0/2 - 3/2) + 1" and all(s.is_positive for s in d.free_symbols)
    text = "graph @g(%x: f32[{Max(4, B*s0)}, {Mod(s0, 3)}, {ceiling(s0/3)}, {(s0 + 1)**2}, {1 - s0//2}]) {\n"
    shape = parse_graph(text + "  return %x\n}").inputs[0].type.shape
    assert [str(d) for d in shape] == ["Max(4, B*s0)", "Mod(s0, 3)", "ceiling(s0/3)", "(s0 + 1)**2",
                                       "1 - floor(s0/2)"]


def _nested_kernels(depth: int) -> str:
    body = "graph @k(%a: f32[4]) {\n return %a\n}"
    for _ in range(depth):
        body = ('graph @k(%a: f32[4]) {\n %b = kernel(%a) {kind = "pointwise", name = "k"} : f32[4] {\n'
                + body + "\n}\n return %b\n}")
    return body


HOSTILE = {
    "tower of powers": (one_dim_graph("{10**10**10}"), "exponent"),
    "5000-deep parentheses": (one_dim_graph("{" + "(" * 5000 + "s0" + ")" * 5000 + "}"), "characters"),
    "5000-deep lists": ("graph @g(%x: f32[4]) {\n  %y = relu(%x) {a = " + "[" * 5000 + "]" * 5000
                        + "} : f32[4]\n  return %y\n}", "nested deeper"),
    "5000-deep kernel bodies": (_nested_kernels(5000), "nested deeper"),
    "10^6-digit dim": (one_dim_graph("7" * 10**6), "integer of 1000000 digits"),
    "10^6-digit integer in an expression": (one_dim_graph("{s0 + " + "7" * 10**6 + "}"), "characters"),
    "10^6-digit attribute": ("graph @g(%x: f32[4]) {\n  %y = relu(%x) {a = " + "7" * 10**6
                             + "} : f32[4]\n  return %y\n}", "integer of 1000000 digits"),
    "huge polynomial": (one_dim_graph("{(s0 + B + 1)**8*(s0 + 2)**8}"), "terms"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_text_fails_fast_with_a_parse_error(case):
    text, message = HOSTILE[case]
    t0 = time.perf_counter()
    with pytest.raises(IRParseError, match=rf"^line \d+, column \d+: .*{message}"):
        parse_graph(text)
    assert time.perf_counter() - t0 < 1.0


def fallback_graph(target: str) -> str:
    return ('graph @g(%x: f32[4]) {\n'
            '  %y = fallback(%x) {args = "{\\"args\\": [{\\"%\\": 0}], \\"kwargs\\": {}}", '
            f'target = "{target}"}} : f32[4]\n  return %y\n}}')


@pytest.mark.parametrize("target", ["load_library::__call__", "import_module::__call__",
                                    "aten::__call__", "aten::relu.__call__", "aten::from_file",
                                    "builtins::eval", "aten::relu.default.extra"])
def test_fallback_target_must_name_an_aten_operator(target):
    with pytest.raises(IRParseError, match=rf"line 2, column 8: fallback target '{target}'"):
        parse_graph(fallback_graph(target))
    with pytest.raises(InterpreterError, match=f"fallback target '{target}'"):
        resolve_target(target)


def test_run_fallback_never_calls_anything_but_an_operator(monkeypatch):
    called = []
    monkeypatch.setattr(torch.ops, "load_library", lambda *a: called.append(a))
    op = parse_graph(fallback_graph("aten::relu.default")).ops[0]
    bad = op.__class__(op.name, op.inputs, op.results,
                       (("args", json.dumps({"args": ["/tmp/x.so"], "kwargs": {}})),
                        ("target", "load_library::__call__")))
    with pytest.raises(InterpreterError, match="namespace 'load_library' is not allowed"):
        run_fallback(bad, [torch.ones(4)])
    assert not called
    with pytest.raises(InterpreterError, match="not a PyTorch operator"):
        resolve_target("aten::relu.overloads")  # an attribute of the op, not an op
    dtype_attr = op.__class__(op.name, op.inputs, op.results, (
        ("args", json.dumps({"args": [{"%": 0}], "kwargs": {"dtype": {"dtype": "load"}}})),
        ("target", "aten::sum.default")))
    with pytest.raises(InterpreterError, match="not a torch.dtype"):
        run_fallback(dtype_attr, [torch.ones(4)])
    assert torch.equal(run_fallback(op, [-torch.ones(4)])[0], torch.zeros(4))


# ------------------------------------------------------------------ artifacts

class Tiny(nn.Module):
    """A kernel (linear + relu) and two fallbacks (rfft, abs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.fft.rfft(torch.relu(self.fc(x)), dim=-1).abs()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("security") / "tiny"
    compile_artifact(Tiny().eval(), (torch.randn(2, 8),), out)
    return out


@pytest.fixture
def art(tiny_dir, tmp_path) -> Path:
    dest = tmp_path / "art"
    shutil.copytree(tiny_dir, dest)
    return dest


def rehash(root: Path, rel: str) -> None:
    """What an attacker does after editing a file: fix its sha256 in the manifest."""
    m = json.loads((root / "manifest.json").read_text())
    m["files"][rel] = {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
    (root / "manifest.json").write_text(json.dumps(m))


def edit_graph(root: Path, old: str, new: str) -> None:
    text = (root / "graph.tir").read_text()
    assert old in text
    (root / "graph.tir").write_text(text.replace(old, new, 1))
    rehash(root, "graph.tir")


def test_dim_payload_in_an_artifact_never_runs(art, tmp_path, capsys):
    marker = tmp_path / "pwned"
    edit_graph(art, "%x: f32[2, 8]", "%x: f32[{max(2, " + payload(marker) + ")}, 8]")
    with pytest.raises(ArtifactError, match=r"graph\.tir is invalid \(IRParseError: line 1, column \d+"):
        load(art)
    assert main(["run", str(art), "--repeats", "1"]) == 2
    assert "graph.tir is invalid" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("target", ["load_library::__call__", "import_module::__call__"])
def test_hostile_fallback_in_an_artifact_is_refused_at_load(art, target, monkeypatch):
    called = []
    monkeypatch.setattr(torch.ops, "load_library", lambda *a: called.append(a))
    monkeypatch.setattr(torch.ops, "import_module", lambda *a: called.append(a))
    edit_graph(art, 'target = "aten::abs.default"', f'target = "{target}"')
    with pytest.raises(ArtifactError, match=rf"graph\.tir is invalid .*line \d+, column \d+: "
                                            rf"fallback target '{target}'"):
        load(art)
    assert not called


def test_run_counts_the_fallbacks_of_the_ir(art, capsys):
    m = json.loads((art / "manifest.json").read_text())
    m["fallbacks"] = []  # the manifest's word is not what runs
    (art / "manifest.json").write_text(json.dumps(m))
    assert main(["run", str(art), "--repeats", "1"]) == 0
    assert "2 fallbacks" in capsys.readouterr().out


def _outside_copy(path: Path, tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / path.name
    outside.parent.mkdir(exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, outside)
        shutil.rmtree(path)
    else:
        shutil.copyfile(path, outside)
        path.unlink()
    return outside


@pytest.mark.parametrize("victim", ["kernel", "kernels", "graph.tir", "weights.safetensors",
                                    "manifest.json"])
def test_symlinks_are_never_followed(art, tmp_path, victim):
    # the same bytes, so every sha256 still matches: only the link itself is wrong
    path = (sorted((art / "kernels").glob("*.so"))[0] if victim == "kernel" else art / victim)
    path.symlink_to(_outside_copy(path, tmp_path))
    with pytest.raises(ArtifactError, match=rf"{path.name} is a symbolic link"):
        load(art)


def test_a_link_inside_the_artifact_is_refused_too(art):
    so = sorted((art / "kernels").glob("*.so"))[0]
    (art / "kernels" / "real.so").write_bytes(so.read_bytes())
    so.unlink()
    so.symlink_to("real.so")
    with pytest.raises(ArtifactError, match="is a symbolic link"):
        load(art)


# ------------------------------------------------------------------ kernel cache

class Act(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) * 2.0


def test_swapped_cache_entry_is_detected_reported_and_rebuilt(tmp_path, monkeypatch, caplog):
    import tilefx
    from tilefx.codegen.tvm.cache import verified_path

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    kernels = tmp_path / "cache" / "kernels"
    x = torch.randn(4, 16)
    torch.testing.assert_close(tilefx.compile(Act(torch.relu))(x), torch.relu(x) * 2.0)
    relu_entries = {p.name for p in kernels.glob("*.so")}
    torch.testing.assert_close(tilefx.compile(Act(torch.sigmoid))(x), torch.sigmoid(x) * 2.0)
    (sig,) = {p.name for p in kernels.glob("*.so")} - relu_entries
    (victim,) = relu_entries
    for suffix in (".so", ".sha256"):  # the library and its hash, copied over relu's entry
        shutil.copyfile(kernels / sig.replace(".so", suffix), kernels / victim.replace(".so", suffix))

    # a fresh compile (its own session: no kernels in memory), saved as an artifact
    with caplog.at_level(logging.WARNING, logger="tilefx.codegen.tvm"):
        cm, _ = compile_artifact(Act(torch.relu), (x,), tmp_path / "art")
    torch.testing.assert_close(cm(x), torch.relu(x) * 2.0)
    torch.testing.assert_close(load(tmp_path / "art")(x), torch.relu(x) * 2.0)
    lines = [r.getMessage() for r in caplog.records if victim in r.getMessage()]
    assert len(lines) == 1 and "does not match its recorded sha256" in lines[0]
    assert verified_path(victim.removesuffix(".so")) is not None  # rebuilt and re-recorded


def test_cache_entry_without_a_recorded_hash_is_rebuilt(tmp_path, monkeypatch, caplog):
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel
    from tilefx.ir.builder import GraphBuilder
    from tilefx.ir.types import DType, TensorType

    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    t = TensorType(DType.float32, (8,))
    body = GraphBuilder("k")
    a = body.input(t, "a")
    outer = GraphBuilder("g")
    x = outer.input(t, "x")
    (k,) = outer.op_typed("kernel", [x], [t], body=body.finish([body.op("relu", a)]),
                          kind="pointwise", name="k")
    op = outer.ops[-1]
    first = build_kernel(op, Target.host_cpu())
    (tmp_path / "cache" / "kernels" / f"{first.fingerprint}.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="tilefx.codegen.tvm"):
        second = build_kernel(op, Target.host_cpu())
    assert not second.from_cache and "has no recorded sha256" in caplog.text
    assert build_kernel(op, Target.host_cpu()).from_cache


# ------------------------------------------------------------------ signing

@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    priv, pub = generate_keypair(tmp_path / "mine")
    other_priv, other_pub = generate_keypair(tmp_path / "other")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    return {"priv": priv, "pub": pub, "other_priv": other_priv, "other_pub": other_pub}


def test_signed_artifact_loads_only_with_its_key(art, keys, capsys):
    with pytest.raises(ArtifactError, match="is not signed"):
        load(art, key=keys["pub"])
    sign_artifact(art, keys["priv"])
    m = load(art, key=keys["pub"])
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), Tiny().eval()(x), rtol=1e-3, atol=1e-4)
    load(art, key=keys["pub"].read_bytes())  # PEM bytes work too
    with pytest.raises(ArtifactError, match="not a valid signature .* by the given key"):
        load(art, key=keys["other_pub"])
    assert main(["run", str(art), "--key", str(keys["pub"]), "--repeats", "1"]) == 0
    assert main(["run", str(art), "--key", str(keys["other_pub"]), "--repeats", "1"]) == 2
    assert "not a valid signature" in capsys.readouterr().err


def test_tampered_signed_artifact_is_refused(art, keys):
    sign_artifact(art, keys["priv"])
    edit_graph(art, 'target = "aten::abs.default"', 'target = "aten::neg.default"')  # rehashes
    with pytest.raises(ArtifactError, match="modified after signing"):
        load(art, key=keys["pub"])
    (art / "manifest.sig").write_text("not base64!\n")
    with pytest.raises(ArtifactError, match="not a valid signature"):
        load(art, key=keys["pub"])
    with pytest.raises(ArtifactError, match="not Ed25519|cannot read the public key"):
        load(art, key=keys["priv"])  # a private key is not a public key


def test_keygen_and_compile_sign_on_the_command_line(tmp_path, capsys):
    model = tmp_path / "signed_model.py"
    model.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(4, 4).eval()\n")
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert main(["keygen", str(tmp_path / "k")]) == 2  # never overwrites a key
    out = tmp_path / "signed"
    assert main(["compile", f"{model}:build", "--input", "2x4", "-o", str(out), "--sign",
                 str(tmp_path / "k.key"), "--repeats", "1"]) == 0
    assert "signed:" in capsys.readouterr().out
    assert load(out, key=tmp_path / "k.pub")(torch.randn(2, 4)).shape == (2, 4)
    assert main(["compile", f"{model}:build", "--input", "2x4", "-o", str(tmp_path / "x"),
                 "--sign", str(tmp_path / "nokey.key")]) == 2
    assert "no such key file" in capsys.readouterr().err
