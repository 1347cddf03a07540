"""Every CLI failure is one line naming its cause, exit code 2; ``--verbose`` adds the
traceback. Each case is one a user hit and got a traceback (rc 1) for."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tilefx.compiler.cli import main

GOOD = textwrap.dedent('''
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Linear(8, 16)

    def broken():
        raise RuntimeError("the factory needs a checkpoint\\nsecond line")
''')


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {"good": GOOD, "syntax": "def build(:\n    pass\n",
             "imports": "import no_such_module_here\n\ndef build():\n    pass\n"}
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name}_model.py"
        out[name].write_text(text)
    return out


CASES = {
    "syntax error in the model file": (["inspect", "{syntax}:build", "--input", "2x8"],
                                       ["syntax_model.py", "SyntaxError", "line 1"]),
    "import error in the model file": (["inspect", "{imports}:build", "--input", "2x8"],
                                       ["imports_model.py", "no_such_module_here"]),
    "a factory that raises": (["inspect", "{good}:broken", "--input", "2x8"],
                              ["broken", "the factory needs a checkpoint"]),
    "unknown --target on inspect": (["inspect", "{good}:build", "--input", "2x8", "--target", "tpu"],
                                    ["tpu"]),
    "unknown --target on tune": (["tune", "{good}:build", "--input", "2x8", "--target", "tpu",
                                  "--trials", "1"], ["tpu"]),
    "an input shape the model rejects": (["inspect", "{good}:build", "--input", "2x9"],
                                         ["Error"]),
    "an input too large to make": (["inspect", "{good}:build", "--input", "100000x100000"],
                                   ["100000x100000", "GB"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_failure_is_one_line_rc_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    files = _files(tmp_path)
    argv, expected = CASES[case]
    rc = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("tilefx: error: "), err
    assert len(lines[-1]) < 400, lines[-1]
    for word in expected:
        assert word in lines[-1], (word, lines[-1])


def test_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TILEFX_CACHE_DIR", str(tmp_path / "cache"))
    files = _files(tmp_path)
    rc = main(["inspect", f"{files['good']}:build", "--input", "2x9", "--verbose"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("tilefx: error: ")
