"""Disk cache of compiled kernels: ``$TILEFX_CACHE_DIR/kernels/<key>.so``.

The key is the structural hash of the scheduled PrimFunc together with the
target and the TVM version, so equal code is compiled once across processes.
Files are written atomically (temp file + rename); a file that fails to load
is reported and rebuilt, never a crash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tilefx.codegen.target import Target

log = logging.getLogger("tilefx.codegen.tvm")


def cache_dir() -> Path:
    root = os.environ.get("TILEFX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tilefx")
    return Path(root) / "kernels"


def kernel_key(mod: Any, target: Target) -> str:
    import tvm
    import tvm_ffi

    shash = tvm_ffi.structural_hash(mod)
    text = f"{shash}|{target.key()}|{tvm.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(key: str) -> Any | None:
    import tvm

    path = cache_dir() / f"{key}.so"
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise ValueError("not an ELF shared library")
        return tvm.runtime.load_module(str(path))
    except Exception as e:  # noqa: BLE001 - a bad cache entry must never break a build
        log.warning("kernel cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None


def store(key: str, module: Any) -> None:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        module.export_library(tmp)
        os.replace(tmp, directory / f"{key}.so")
    except Exception as e:  # noqa: BLE001 - caching is an optimization only
        log.warning("could not store kernel %s in the cache at %s: %s", key, directory, e)
