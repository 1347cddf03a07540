"""Generated Triton modules: assembly, fingerprint, loading from a real file.

A template produces a ``KernelSource``: one Python module as text holding the
``@triton.jit`` function(s) and a plain ``launch(*inputs, *outputs)`` that
computes the grid and calls them (or calls a library function). Every size
is a literal, so the text alone says what runs.

The module is written to ``$TILEFX_CACHE_DIR/triton/<fingerprint>.py`` and
imported from there: Triton's JIT reads the function's source with
``inspect`` and tracebacks point at real lines of a file you can open.

The *fingerprint* is the sha256 of the normalized source (comments, blank
lines and the kernel's own name removed) plus the launch meta (num_warps,
num_stages). Templates clamp block sizes to the problem before emitting, so
two schedules that generate the same code have the same fingerprint and are
measured once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tilefx.codegen.schedule import Schedule
from tilefx.settings import cache_root

log = logging.getLogger("tilefx.codegen.triton")

HEADER = "import torch\nimport triton\nimport triton.language as tl\n"


@dataclass(frozen=True)
class KernelSource:
    name: str                       # a Python identifier naming the kernel
    text: str                       # the whole module
    meta: tuple[tuple[str, Any], ...] = ()   # launch meta (num_warps, num_stages...)
    schedule: Schedule | None = None         # the schedule after clamping to the problem


def one_kernel_module(name: str, params: list[str], lines: list[str], grid: str,
                      constexprs: dict[str, int], launch_meta: dict[str, int],
                      workspace: list[str] | None = None) -> str:
    """Source of a module with one ``@triton.jit`` kernel (block sizes as constexprs) and the
    ``launch(*params)`` that runs it on ``grid``. ``workspace``: the module's ``_workspace``
    lines (``emit.workspace_source``), passed to the kernel as its last pointer ``ws``."""
    args = ", ".join(params)
    kargs = args + (", ws" if workspace else "")
    consts = ", ".join(f"{k}: tl.constexpr" for k in constexprs)
    values = ", ".join(f"{k}={v}" for k, v in {**constexprs, **launch_meta}.items())
    get_ws = [f"    ws = _workspace({params[-1]})"] if workspace else []
    return "\n".join([HEADER, *(workspace or []), "@triton.jit", f"def {name}({kargs}, {consts}):",
                      *lines, "", f"def launch({args}):", *get_ws, f"    {name}[{grid}]({kargs}, {values})", ""])


def normalized(text: str, name: str) -> str:
    lines = []
    for line in text.replace(name, "K").splitlines():
        line = line.split("#", 1)[0].rstrip() if "#" in line and '"' not in line else line.rstrip()
        if line:
            lines.append(line)
    return "\n".join(lines)


def fingerprint(source: KernelSource) -> str:
    payload = normalized(source.text, source.name) + "\n" + json.dumps(source.meta, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def source_dir() -> Path:
    return cache_root() / "triton"


def load_module(source: KernelSource, fp: str) -> Any:
    """Write ``source`` to the cache dir (once, atomically) and import it."""
    folder = source_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.name}_{fp[:16]}.py"
    if not path.exists() or path.read_text() != source.text:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source.text)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(f"tilefx_triton_{source.name}_{fp[:16]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # like a normal import: Triton and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


@dataclass
class BuiltKernel:
    """A Triton kernel ready to call: ``built(*inputs, *outputs)`` (destination passing)."""

    name: str
    kind: str
    schedule: Schedule
    source: str
    fingerprint: str
    path: str = ""
    launch: Callable[..., Any] = field(default=lambda *a: None, repr=False)

    @property
    def lowered(self) -> str:  # the report and the CLI show ``lowered`` for TVM kernels
        return self.source

    def __call__(self, *tensors: Any) -> None:
        self.launch(*tensors)

    @property
    def fast_call(self) -> Callable[..., Any]:
        """The generated ``launch`` itself: the runtime calls it directly, one frame less."""
        return self.launch


def build(source: KernelSource, kind: str, schedule: Schedule) -> BuiltKernel:
    fp = fingerprint(source)
    module = load_module(source, fp)
    return BuiltKernel(source.name, kind, source.schedule or schedule, source.text, fp,
                       str(module.__file__), module.launch)


def identifier(name: str) -> str:
    out = re.sub(r"\W", "_", name)
    return out if out and not out[0].isdigit() else f"k_{out}"


def indent(lines: list[str], n: int = 1) -> list[str]:
    return ["    " * n + line if line else line for line in lines]
