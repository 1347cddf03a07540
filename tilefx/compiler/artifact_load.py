"""Loading an artifact directory (see ``artifact.py`` for the format) into a callable module.

    m = tilefx.load("out/")
    y = m(x)

Loading reads and checks, in this order, so that a bad artifact fails with an
``ArtifactError`` that names the problem before anything is executed:

1. ``manifest.json`` parses and has the expected fields and types;
2. the artifact is for this software and machine: same format version, same
   tilefx major version, same TVM major.minor (the kernels' ABI), a CPU target
   of this architecture, and every ISA feature the kernels were compiled with
   (``avx512f``...) present on this CPU (read from ``/proc/cpuinfo``);
3. every file has the size and sha256 the manifest lists (a truncated or edited
   ``.so`` is never dlopen-ed) and lies inside the directory: no file or folder is
   read through a symbolic link; with ``key=``, ``manifest.sig`` is checked first
   (``signing.py``), so the manifest and through it every file is the signer's;
4. weights (safetensors) and the IR (``parse_graph`` + ``verify``) load, every
   ``fallback`` naming an ATen operator (``interpreter.resolve_target``);
5. kernels are dlopen-ed with ``tvm_ffi.load_module`` after loading TVM's C++
   runtime library: the ``tvm`` Python package (and its compiler) is never
   imported, which keeps a load well under a second.

The module then runs on the same runtime as a fresh compile (``CompiledGraph``),
whose kernel builder here only looks kernels up; plans for every saved batch
size are made at load time. Nothing is traced, optimized or built, except with
``build_missing=True``, where an unseen batch size gets its kernels built from
the saved IR by the TVM backend (codegen only). A model that updates buffers in
place gets them from ``state.safetensors``: the loaded module owns them
(``LoadedModule.state``) and updates them at each call, as the model would.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import sympy
import torch
import torch.utils._pytree as pytree

from tilefx.codegen.measure import LibraryKernel
from tilefx.codegen.target import Target
from tilefx.codegen.tvm import configure_tvm_threads
from tilefx.compiler.artifact import (FORMAT, GRAPH_FILE, MANIFEST, READABLE_FORMAT_VERSIONS,
                                      STATE_FILE, WEIGHTS_FILE, ArtifactError, ArtifactInputError,
                                      sha256_file)
from tilefx.compiler.check import run_check
from tilefx.compiler.mutation import Mutation, write_back
from tilefx.compiler.runtime import CompiledGraph, InterpretedKernel
from tilefx.compiler.session import CompileSession
from tilefx.compiler.signing import verify_manifest
from tilefx.ir.identity import kernel_symbols
from tilefx.ir.interpreter import resolve_target
from tilefx.ir.parser import parse_graph
from tilefx.ir.verifier import verify
from tilefx.version import __version__

if TYPE_CHECKING:
    import torch

    from tilefx.ir.graph import Graph, Op

log = logging.getLogger("tilefx.artifact")

# LLVM feature name -> /proc/cpuinfo flag, where they differ (else "." becomes "_").
_CPUINFO_NAMES = {"sse3": "pni", "bmi": "bmi1", "lzcnt": "abm", "pclmul": "pclmulqdq",
                  "sha": "sha_ni", "avx512bf16": "avx512_bf16", "avx512bitalg": "avx512_bitalg",
                  "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni",
                  "avx512vpopcntdq": "avx512_vpopcntdq", "avx512fp16": "avx512_fp16",
                  "avx512vp2intersect": "avx512_vp2intersect", "avxvnni": "avx_vnni",
                  "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16"}

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "format_version": int, "tilefx_version": str, "tvm_version": str,
    "target": dict, "cpu_features": list, "inputs": list, "symbols": dict, "outputs": dict,
    "kernels": list, "fallbacks": list, "files": dict}


def host_cpu_flags() -> set[str] | None:
    """This CPU's feature flags from /proc/cpuinfo; None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def missing_cpu_features(required: list[str], flags: set[str] | None) -> list[str]:
    if flags is None:  # not Linux: nothing to compare against; dlopen is the judge
        log.debug("no /proc/cpuinfo: CPU features of the artifact are not checked")
        return []
    return [f for f in required if _CPUINFO_NAMES.get(f, f.replace(".", "_")) not in flags]


def _major(version: str) -> str:
    return version.split(".")[0]


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def read_manifest(root: Path, key: Any = None) -> dict[str, Any]:
    """The manifest, parsed from the bytes that ``key`` (a public key, see ``signing.py``),
    if given, verified as signed."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; tilefx.load expects the OUT_DIR that "
                            "`tilefx compile -o OUT_DIR` wrote")
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}: not a tilefx artifact (or incomplete)")
    data = inside(root, MANIFEST).read_bytes()  # read once: what is verified is what is parsed
    if key is not None:
        verify_manifest(root, data, key)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, a huge int, deep nesting
        raise ArtifactError(f"{path} is not valid JSON ({e}); the artifact is damaged: "
                            "compile it again") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise ArtifactError(f"{path}: field {key!r} is missing; the artifact is damaged")
        if not isinstance(manifest[key], kind):
            raise ArtifactError(f"{path}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                                f"got {type(manifest[key]).__name__}")
    return manifest


def check_compatible(manifest: dict[str, Any], *, flags: set[str] | None = None) -> None:
    """Raise ``ArtifactError`` naming the first thing that keeps this machine from running it."""
    if manifest["format_version"] not in READABLE_FORMAT_VERSIONS:
        raise ArtifactError(
            f"artifact format version {manifest['format_version']} is not supported by tilefx "
            f"{__version__} (it reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}); recompile the model with this tilefx")
    if _major(manifest["tilefx_version"]) != _major(__version__):
        raise ArtifactError(
            f"artifact was made by tilefx {manifest['tilefx_version']}, this is tilefx "
            f"{__version__}: major versions differ; recompile with this tilefx")
    tvm_version = _installed_tvm_version()
    if tvm_version and _major_minor(manifest["tvm_version"]) != _major_minor(tvm_version):
        raise ArtifactError(
            f"artifact kernels were built with TVM {manifest['tvm_version']}, this machine has "
            f"TVM {tvm_version}; their runtime ABI may differ: recompile here")
    target = manifest["target"]
    if target.get("kind") != "cpu":
        raise ArtifactError(f"artifact target kind is {target.get('kind')!r}; only 'cpu' "
                            "artifacts can be loaded")
    arch = str(target.get("mtriple", "")).split("-")[0]
    here = platform.machine() or "x86_64"
    if arch and arch != here:
        raise ArtifactError(f"artifact is for {arch} ({target.get('mtriple')}), this machine is "
                            f"{here}; recompile on (or for) this machine")
    missing = missing_cpu_features([str(f) for f in manifest["cpu_features"]],
                                   host_cpu_flags() if flags is None else flags)
    if missing:
        raise ArtifactError(
            f"this CPU lacks feature(s) {', '.join(missing)} that the artifact's kernels were "
            f"compiled for (target mcpu {target.get('mcpu')!r}); running them would crash with "
            "an illegal instruction. Recompile with `--target cpu` on this machine, or for an "
            "older CPU such as `--target cpu:x86-64-v2`")


def _installed_tvm_version() -> str:
    for dist in ("apache-tvm", "tvm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return ""


def inside(root: Path, rel: str) -> Path:
    """``root / rel``, refused unless it stays inside the artifact: no ``..``, no absolute
    path, no symbolic link (the file or a folder on the way), nothing resolving outside."""
    if not isinstance(rel, str) or not rel or ".." in Path(rel).parts or Path(rel).is_absolute():
        raise ArtifactError(f"{root / MANIFEST}: file {rel!r} points outside the artifact")
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            raise ArtifactError(f"artifact file {root / rel}: {path} is a symbolic link; files of "
                                "an artifact are never read through links (copy them in)")
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"artifact file {root / rel} resolves outside the artifact")
    return path


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    needed = {GRAPH_FILE, WEIGHTS_FILE} | {k["file"] for k in manifest["kernels"]
                                          if isinstance(k, dict) and k.get("file")}
    if manifest.get("state"):
        needed.add(STATE_FILE)
    for rel in sorted(needed - set(files)):
        raise ArtifactError(f"{root / MANIFEST}: file {rel!r} is used but has no sha256 entry")
    for rel, meta in files.items():
        if not isinstance(meta, dict) or "sha256" not in meta or "bytes" not in meta:
            raise ArtifactError(f"{root / MANIFEST}: entry for file {rel!r} needs 'sha256' and 'bytes'")
        path = inside(root, rel)
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} is missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ArtifactError(f"artifact file {path} has {size} bytes, the manifest says "
                                f"{meta['bytes']}: it is truncated or was replaced")
        if sha256_file(path) != meta["sha256"]:
            raise ArtifactError(f"artifact file {path} does not match its sha256 in the manifest: "
                                "it was modified or is corrupt")


def _read_weights(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file  # heavy: loaded on first use

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"cannot read weights {path}: {type(e).__name__}: {e}") from None


def _read_graph(path: Path, weights: Mapping[str, Any]) -> Graph:
    try:
        graph = parse_graph(path.read_text(), weights)
        verify(graph)
        for op in _ops_within(graph):  # only ATen operators: refused here, before any call
            if op.name == "fallback":
                resolve_target(op.attr("target"))
    except Exception as e:  # noqa: BLE001 - a parse or verify error of a damaged artifact
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise ArtifactError(f"the optimized IR in {path} is invalid ({type(e).__name__}: "
                            f"{first})") from None
    return graph


def _ops_within(graph: Graph) -> list[Op]:
    """The ops of ``graph`` and of every kernel body in it."""
    out: list[Op] = []
    for op in graph.ops:
        out.append(op)
        if op.body is not None:
            out.extend(_ops_within(op.body))
    return out


_RUNTIME_LOADED = False


def _load_tvm_runtime() -> None:
    """Make TVM's C++ runtime (thread pool, workspace allocator) visible to the kernels.

    Kernels call into it through symbols resolved at dlopen time; without it a
    parallel kernel crashes. Loading only ``libtvm_runtime.so`` costs a few ms,
    where ``import tvm`` costs ~2 s.
    """
    global _RUNTIME_LOADED
    if _RUNTIME_LOADED:
        return

    configure_tvm_threads()
    spec = importlib.util.find_spec("tvm")
    lib = Path(spec.origin).parent / "lib" / "libtvm_runtime.so" if spec and spec.origin else None
    if lib is not None and lib.is_file():
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    else:  # an unusual install: let the tvm package find its own library
        import tvm.runtime  # noqa: F401
    _RUNTIME_LOADED = True


class LoadedKernel:
    """A kernel from an artifact's shared object: ``fn(*inputs, *outputs)``."""

    __slots__ = ("name", "file", "_func")

    def __init__(self, name: str, file: str, func: Any) -> None:
        self.name, self.file, self._func = name, file, func

    def __call__(self, *tensors: Any) -> None:
        self._func(*tensors)

    def __repr__(self) -> str:
        return f"LoadedKernel({self.name}, {self.file})"


def _load_kernels(root: Path, manifest: dict[str, Any], graph: Graph) -> dict[tuple, Callable]:
    """(op result name, ((symbol, size), ...)) -> kernel callable."""
    import tvm_ffi  # heavy: loaded on first use

    ops = {op.results[0].name: op for op in graph.ops if op.name == "kernel"}
    modules: dict[str, Any] = {}
    table: dict[tuple, Callable] = {}
    for row in manifest["kernels"]:
        try:
            op = ops[row["op"]]
            key = (row["op"], tuple(sorted((str(k), int(v)) for k, v in row["bindings"].items())))
            backend = row["backend"]
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ArtifactError(f"{root / MANIFEST}: kernel entry {row!r:.200} is invalid "
                                f"({type(e).__name__}: {e}); the artifact is damaged") from None
        if backend == "library":  # the tuner chose the library call: the same torch calls
            table[key] = LibraryKernel(op, dict(key[1]))
            continue
        if backend == "interpreter":  # torch runs the kernel body, as at compile
            table[key] = InterpretedKernel(op, str(row.get("reason", "interpreted kernel")))
            continue
        file = row.get("file")
        if backend != "tvm" or not isinstance(file, str):
            raise ArtifactError(f"{root / MANIFEST}: kernel {row['op']!r} has backend "
                                f"{backend!r} / file {file!r}; expected 'tvm' with a file")
        if file not in modules:
            _load_tvm_runtime()
            try:
                modules[file] = tvm_ffi.load_module(str(inside(root, file)))["main"]
            except Exception as e:  # noqa: BLE001 - dlopen / symbol errors
                raise ArtifactError(f"cannot load kernel library {root / file}: {e}") from None
        table[key] = LoadedKernel(str(row.get("name", row["op"])), file, modules[file])
    return table


def _read_state(root: Path, manifest: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                                 tuple[Mutation, ...]]:
    """The buffers the model updates in place (name -> tensor, in graph input order) and
    every in-place update; empty for a model without them."""
    rows = manifest.get("state") or []
    try:
        mutations = tuple(Mutation.from_json(m) for m in manifest.get("mutations") or [])
        names = [str(r["name"]) for r in rows]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArtifactError(f"{root / MANIFEST}: 'state'/'mutations' are invalid ({e}); the "
                            "artifact is damaged") from None
    if not rows:
        return {}, mutations
    values = _read_weights(root / STATE_FILE)
    missing = [n for n in names if n not in values]
    if missing:
        raise ArtifactError(f"{root / STATE_FILE} lacks the state tensor(s) {missing}")
    # our own copies: the loaded module owns its state and updates it in place
    return {n: torch.from_numpy(values[n].copy()) for n in names}, mutations


class LoadedModule:
    """A model loaded from an artifact; call it with tensors like the compile's inputs.

    A model that updates buffers in place (a counter, a KV cache) keeps them here:
    ``state`` (also ``state_dict()``) maps each buffer's name to the tensor that every
    call reads and updates, starting from the values saved in the artifact;
    ``load_state_dict`` sets them (e.g. back to the start).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], runtime: Any,
                 load_seconds: float = 0.0, build_missing: bool = False,
                 state: dict[str, torch.Tensor] | None = None,
                 mutations: tuple[Mutation, ...] = ()) -> None:
        self.path = path
        self.state: dict[str, torch.Tensor] = dict(state or {})
        self._mutations = mutations
        self._build_missing = build_missing  # unseen batch sizes are built, not refused
        self.manifest = manifest
        self.runtime = runtime                 # the same CompiledGraph a compile makes
        self.graph = runtime.graph
        self.load_seconds = load_seconds
        outs = manifest["outputs"]
        try:
            self._out_spec = pytree.treespec_loads(outs["treespec"])
            self._out_leaves = list(outs["leaves"])
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path / MANIFEST}: the output structure is invalid ({e})") from None

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def batch_sizes(self) -> dict[str, list[int]]:
        """Each symbolic dim's user name -> the sizes with kernels in the artifact."""
        return {s["name"]: list(s["sizes"]) for s in self.manifest["symbols"].values()}

    def input_specs(self) -> list[str]:
        """The inputs as CLI specs, a symbolic dim shown by its name: ``Bx1024:float32``."""
        names = {k: v["name"] for k, v in self.manifest["symbols"].items()}
        return ["x".join(str(names.get(d, d)) if isinstance(d, str) else str(d) for d in i["shape"])
                + f":{i['dtype']}" for i in self.inputs]

    def check_inputs(self, tensors: tuple) -> None:
        specs = self.inputs
        if len(tensors) != len(specs):
            raise ArtifactInputError(f"{self.path.name} takes {len(specs)} tensor input(s) "
                                     f"({', '.join(self.input_specs())}), got {len(tensors)}")
        symbols = self.manifest["symbols"]
        bound: dict[str, int] = {}
        for i, (t, spec, text) in enumerate(zip(tensors, specs, self.input_specs())):
            where = f"input {i} ({spec['name']}: {text})"
            if not isinstance(t, torch.Tensor):
                raise ArtifactInputError(f"{where} must be a torch.Tensor, got {type(t).__name__}")
            if str(t.dtype).removeprefix("torch.") != spec["dtype"]:
                raise ArtifactInputError(f"{where} expects dtype {spec['dtype']}, got "
                                         f"{str(t.dtype).removeprefix('torch.')}")
            if t.dim() != len(spec["shape"]) or t.device.type != "cpu":
                raise ArtifactInputError(f"{where} expects a CPU tensor of shape {text.split(':')[0]}, "
                                         f"got {t.device.type} shape {tuple(t.shape)}")
            for axis, (d, size) in enumerate(zip(spec["shape"], t.shape)):
                if isinstance(d, int):
                    if d != size:
                        raise ArtifactInputError(f"{where} expects size {d} at dim {axis}, got "
                                                 f"shape {tuple(t.shape)}")
                elif d in symbols:
                    if bound.setdefault(d, int(size)) != int(size):
                        raise ArtifactInputError(f"{where}: dim {axis} ({symbols[d]['name']}) is "
                                                 f"{size} but {bound[d]} in an earlier input")
        if self._build_missing:
            return
        for s, size in bound.items():
            sizes = symbols[s]["sizes"]
            if size not in sizes:
                raise ArtifactInputError(
                    f"{symbols[s]['name']} = {size} has no kernels in {self.path}: it was compiled "
                    f"for {symbols[s]['name']} in {sizes}. Pass one of those, recompile with "
                    f"`--batch-sizes` including {size}, or load with build_missing=True")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The buffers this module updates in place, by name (the live tensors)."""
        return dict(self.state)

    def load_state_dict(self, values: Mapping[str, torch.Tensor]) -> None:
        """Copy ``values`` into the state (same names, shapes and dtypes)."""
        unknown = set(values) - set(self.state)
        if unknown:
            raise KeyError(f"{self.path.name} has no state named {sorted(unknown)}; it has "
                           f"{sorted(self.state)}")
        with torch.no_grad():
            for name, value in values.items():
                self.state[name].copy_(value)

    def __call__(self, *tensors: torch.Tensor) -> Any:
        self.check_inputs(tensors)
        inputs = (*tensors, *self.state.values())
        outs = iter(write_back(self._mutations, inputs, self.runtime(*inputs)))
        leaves = [next(outs) if x is None else x for x in self._out_leaves]
        return pytree.tree_unflatten(leaves, self._out_spec)

    def __repr__(self) -> str:
        return (f"LoadedModule({str(self.path)!r}, inputs {', '.join(self.input_specs())}, "
                f"{len(self.manifest['kernels'])} kernels)")


def load(path: str | os.PathLike, *, build_missing: bool = False,
         key: Any = None) -> LoadedModule:
    """Load an artifact directory written by ``tilefx compile -o`` / ``artifact.save``.

    Its kernels are native code that runs in this process: load only artifacts you
    trust. ``key`` (a public key file, PEM bytes or an Ed25519 public key; see
    ``signing.py``) refuses any artifact not signed by that key's owner."""
    t0 = time.perf_counter()
    root = Path(path)
    manifest = read_manifest(root, key)
    check_compatible(manifest)
    verify_files(root, manifest)
    weights = _read_weights(root / WEIGHTS_FILE)
    graph = _read_graph(root / GRAPH_FILE, weights)
    state, mutations = _read_state(root, manifest)
    names = [v.name for v in graph.inputs]
    listed = [i.get("name") for i in manifest["inputs"] if isinstance(i, dict)]
    listed += [r.get("input") for r in manifest.get("state") or [] if isinstance(r, dict)]
    if names != listed:
        raise ArtifactError(f"{root / MANIFEST}: inputs {listed!r:.200} do not match "
                            f"the IR's inputs {names}")
    for m in mutations:
        if not (0 <= m.input < len(graph.inputs) and 0 <= m.output < len(graph.outputs)):
            raise ArtifactError(f"{root / MANIFEST}: the in-place update of {m.name!r} names "
                                "an input or output the IR does not have; the artifact is damaged")
    table = _load_kernels(root, manifest, graph)
    target = manifest["target"]

    def lookup(op: Op, bindings: Mapping[sympy.Symbol, int]) -> Callable:
        used = {s.name for s in kernel_symbols(op)}
        key = (op.results[0].name, tuple(sorted((s.name, int(v)) for s, v in bindings.items()
                                                if s.name in used)))
        fn = table.get(key)
        if fn is not None:
            return fn
        if not build_missing:
            raise ArtifactInputError(f"artifact {root} has no kernel for {op.attr('name')} at "
                                     f"{dict(key[1])}")

        log.info("tilefx: building kernel %s for %s (not in the artifact)", op.attr("name"),
                 dict(key[1]))
        built_for = Target.from_json(json.dumps(target))
        with CompileSession() as session:  # one kernel, for a size the artifact lacks
            fn = session.build(op, built_for, bindings)
        # a kernel built here is new code: checked against the reference like any compile's
        status, why = run_check(op, bindings, fn, built_for)
        if status in ("wrong_result", "run_error"):
            log.warning("tilefx: kernel %s built for %s is wrong (%s); it runs in PyTorch",
                        op.attr("name"), dict(key[1]), why)
            fn = InterpretedKernel(op, f"rejected: {why}")
        table[key] = fn
        return fn

    runtime = CompiledGraph(graph, lookup)
    symbols = manifest["symbols"]
    try:  # plan every saved batch size now, so the first call pays nothing
        if not symbols:
            runtime.plan_for({})
        else:
            first = next(iter(symbols.values()))
            for i in range(len(first["sizes"])):
                runtime.plan_for({sympy.Symbol(s, integer=True, positive=True): int(v["sizes"][i])
                                  for s, v in symbols.items()})
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. shapes in the IR that the manifest contradicts
        raise ArtifactError(f"artifact {root} cannot be planned: {type(e).__name__}: {e}") from None
    module = LoadedModule(root, manifest, runtime, time.perf_counter() - t0, build_missing,
                          state, mutations)
    log.info("tilefx: loaded %s in %.3fs", root, module.load_seconds)
    return module
