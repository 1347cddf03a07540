"""Disk cache of compiled kernels: ``$TILEFX_CACHE_DIR/kernels/<key>.so``.

The key is the structural hash of the scheduled PrimFunc together with the
target and the TVM version, so equal code is compiled once across processes.
Files are written atomically (temp file + rename); a file that fails to load
is reported and rebuilt, never a crash.

A cached ``.so`` is code that gets dlopen-ed, so it is never trusted by name
alone: ``store`` records ``sha256(key, bytes)`` in ``<key>.sha256`` beside it,
and ``load`` recomputes it before loading. Binding the key into the hash means
a valid library copied over another entry (with or without its ``.sha256``)
does not pass as that entry. A missing or wrong hash is reported in one
warning line, the entry deleted and the kernel rebuilt. This guards against
mix-ups and damage, not against someone who can write the cache folder (they
could compute the hash too): the folder must be writable by its user only.

An entry travels to another machine's cache (the Ray cluster's measuring nodes)
as ``export_built`` -> ``install_built``: the bytes with their digest, checked
again against the received bytes before anything is written there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tilefx import settings
from tilefx.codegen.target import Target

log = logging.getLogger("tilefx.codegen.tvm")

_HASH_SUFFIX = ".sha256"


def cache_dir() -> Path:
    return settings.cache_root() / "kernels"


def kernel_key(mod: Any, target: Target) -> str:
    import tvm  # heavy: loaded on first use
    import tvm_ffi  # heavy: loaded on first use

    shash = tvm_ffi.structural_hash(mod)
    text = f"{shash}|{target.key()}|{tvm.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _digest(key: str, chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256(f"tilefx-kernel-cache|{key}|".encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def entry_digest(key: str, path: Path) -> str:
    """sha256 of the key and the file's bytes: what ``<key>.sha256`` must hold."""
    with open(path, "rb") as f:
        return _digest(key, iter(lambda: f.read(1 << 20), b""))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the cache folder's lock, so a ``.so`` and its hash are replaced and read as a
    pair by concurrent processes (where ``fcntl`` exists; elsewhere a race only costs a
    rebuild)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def verified_path(key: str) -> Path | None:
    """The entry's ``.so`` if it exists and matches its recorded hash, else None; a bad
    entry (no hash, a wrong one, a symlink) is reported and deleted."""
    directory = cache_dir()
    path = directory / f"{key}.so"
    if not path.exists() and not path.is_symlink():
        return None
    sidecar = directory / f"{key}{_HASH_SUFFIX}"
    with _locked(directory):
        problem = None
        if path.is_symlink() or not path.is_file():
            problem = "is not a regular file"
        elif not sidecar.is_file() or sidecar.is_symlink():
            problem = "has no recorded sha256"
        elif sidecar.read_text().strip() != entry_digest(key, path):
            problem = "does not match its recorded sha256 (replaced or corrupt)"
        if problem is None:
            return path
        log.warning("kernel cache entry %s is unreadable: it %s; deleting and rebuilding it",
                    path, problem)
        for p in (path, sidecar):
            with contextlib.suppress(OSError):
                p.unlink()
    return None


def load(key: str) -> Any | None:
    import tvm  # heavy: loaded on first use

    path = verified_path(key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise ValueError("not an ELF shared library")
        return tvm.runtime.load_module(str(path))
    except Exception as e:  # noqa: BLE001 - a bad cache entry must never break a build
        log.warning("kernel cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None


def _commit(directory: Path, key: str, tmp: str, digest: str) -> None:
    """Move a written ``.so`` (temp file ``tmp`` in ``directory``) into place with its
    hash: the pair is replaced as one under the folder's lock."""
    fd, tmp_hash = tempfile.mkstemp(suffix=_HASH_SUFFIX, dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    with _locked(directory):
        os.replace(tmp, directory / f"{key}.so")
        os.replace(tmp_hash, directory / f"{key}{_HASH_SUFFIX}")


def store(key: str, module: Any) -> None:
    directory = cache_dir()
    tmp = ""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        module.export_library(tmp)
        _commit(directory, key, tmp, entry_digest(key, Path(tmp)))
    except Exception as e:  # noqa: BLE001 - caching is an optimization only
        log.warning("could not store kernel %s in the cache at %s: %s", key, directory, e)
        with contextlib.suppress(OSError):
            if tmp:
                os.unlink(tmp)


# ------------------------------------------------------------- to another machine's cache

def export_built(key: str) -> tuple[bytes, str]:
    """The entry's ``.so`` bytes and its digest, to ``install_built`` elsewhere; the entry
    is verified first (a bad one is not sent: ``FileNotFoundError``)."""
    path = verified_path(key)
    if path is None:
        raise FileNotFoundError(f"kernel {key} is not in this machine's kernel cache "
                                f"{cache_dir()}")
    blob = path.read_bytes()  # read once: the digest sent is that of the bytes sent
    digest = _digest(key, (blob,))
    if (path.parent / f"{key}{_HASH_SUFFIX}").read_text().strip() != digest:
        raise FileNotFoundError(f"kernel {key} changed in the cache {cache_dir()} while "
                                "it was read; not sent")
    return blob, digest


def install_built(key: str, blob: bytes, digest: str) -> None:
    """Put an exported entry into this machine's cache, as ``store`` would have. The
    digest is recomputed over the received bytes first: bytes that do not match it
    (damaged or swapped on the way) are refused with ``ValueError``. An entry already
    here that verifies is kept."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", key):
        raise ValueError(f"not a kernel cache key: {key!r}")
    if _digest(key, (blob,)) != digest:
        raise ValueError(f"kernel {key} arrived damaged: its bytes do not match the sha256 "
                         "sent with them; it was not installed")
    if verified_path(key) is not None:
        return  # built or received here before
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        _commit(directory, key, tmp, digest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
