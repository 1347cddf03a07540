"""tilefx: a deep-learning compiler for PyTorch models (capture -> IR -> passes -> TVM/Triton).

The public API is loaded on first use, so ``import tilefx`` stays fast and
imports neither torch nor tvm:

    import tilefx
    cm = tilefx.compile(model, target="cpu")
    torch.compile(model, backend="tilefx")
    m = tilefx.load("out/")   # an artifact written by `tilefx compile -o out/`
"""

from __future__ import annotations

from typing import Any

from tilefx.version import __version__

_LAZY = {
    "compile": ("tilefx.compiler.api", "compile"),
    "CompiledModule": ("tilefx.compiler.api", "CompiledModule"),
    "CompileOptions": ("tilefx.compiler.options", "CompileOptions"),
    "CompileSession": ("tilefx.compiler.session", "CompileSession"),
    "load": ("tilefx.compiler.artifact_load", "load"),
    "ArtifactError": ("tilefx.compiler.artifact", "ArtifactError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'tilefx' has no attribute {name!r}")
