"""Ahead-of-time artifacts: a compiled model saved as a directory, loadable without a compiler.

    art = compile_artifact(model, (x,), "out/")       # capture, passes, TVM build, save
    m = tilefx.load("out/")                            # no tracing, no passes, no TVM build
    y = m(x)

An artifact directory holds everything the runtime (``CompiledGraph``) needs:

    manifest.json        format and tilefx versions, target and required CPU features,
                         input signature, output structure, kernels (file, sha256,
                         schedule, bindings), fallback regions, sha256 of every file
    graph.tir            the optimized IR (``print_graph``): kernel ops with their
                         bodies, fallback ops, free reshapes, consts by name
    weights.safetensors  the constants of the optimized IR, i.e. after compile-time
                         rewrites such as BN folding and weight re-layout
    kernels/<fp>.so      one TVM ``export_library`` shared object per distinct kernel
    tuning.jsonl         the tuning records the schedules came from (empty: no tuning)
    state.safetensors    only for a model that updates buffers in place (a counter, a
                         KV cache): their values at save time; the loaded module owns
                         them and updates them at every call (format version 2)

One ``.so`` per kernel, named by its fingerprint (structural hash of the scheduled
TIR + target + TVM version): kernels that repeat (ResNet stages, transformer
layers) are stored once; the file is the very one the kernel disk cache holds,
so saving copies instead of re-linking; and each file is checked against its
own sha256 before it is dlopen-ed, so a corrupt kernel is named precisely.
A combined library would save a few dlopen calls (~0.1 ms each) but needs a
second link step and gives up the sharing with the cache.

Fallback regions need nothing special: a ``fallback`` op is plain data in the
IR (the ATen overload name plus JSON arguments), so ``graph.tir`` plus the
weights describe it fully and ``interpreter.run_fallback`` runs it after load.

With a dynamic batch the IR is symbolic and kernels are specialized per batch
size: the artifact holds the sizes given at compile time. ``load(..., build_missing=True)``
builds the kernels of an unseen size from the saved IR (TVM codegen only: no
capture, no passes); by default an unseen size is an error naming the sizes
available. The loading side lives in ``artifact_load.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.tvm import cache
from tilefx.compiler.api import compile as tilefx_compile
from tilefx.compiler.mutation import snapshot_buffers, state_tensors
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.runtime import InterpretedKernel, KernelStep
from tilefx.ir.identity import fused_op_names, kernel_symbols
from tilefx.ir.interpreter import check_fallback_target
from tilefx.ir.printer import print_graph
from tilefx.version import __version__

if TYPE_CHECKING:
    import torch

    from tilefx.codegen.target import Target
    from tilefx.compiler.api import CompiledModule

log = logging.getLogger("tilefx.artifact")

FORMAT = "tilefx-artifact"
FORMAT_VERSION = 1
# Version 2 adds in-place updates ("state", "mutations", state.safetensors). A model without
# them is still written as version 1, which older tilefx reads; one with them is refused
# there rather than loaded with its updates dropped.
STATEFUL_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (FORMAT_VERSION, STATEFUL_FORMAT_VERSION)
STATE_FILE = "state.safetensors"
MANIFEST = "manifest.json"
GRAPH_FILE = "graph.tir"
WEIGHTS_FILE = "weights.safetensors"
TUNING_FILE = "tuning.jsonl"
KERNEL_DIR = "kernels"

class ArtifactError(Exception):
    """An artifact directory that cannot be written, read, trusted or run on this machine."""


class ArtifactInputError(ArtifactError, ValueError):
    """A call of a loaded artifact with tensors that do not match its input signature."""


@dataclass
class SaveInfo:
    """What ``save`` wrote, for the CLI summary."""

    path: Path
    kernels: int = 0             # kernel entries (kernel op x batch size)
    kernel_files: int = 0        # distinct .so files
    bytes: int = 0
    batch_sizes: tuple[int, ...] = ()
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def all_constants(graph: Any) -> dict[str, Any]:
    """Constants of the graph and of every kernel body, by name (what the parser looks up)."""
    out: dict[str, Any] = {}
    for op in graph.ops:
        if op.body is not None:
            out.update(all_constants(op.body))
    out.update(graph.constants)
    return out


def _json_leaf(x: Any, where: str) -> Any:
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise ArtifactError(f"{where}: the model returns a non-tensor value of type "
                        f"{type(x).__name__} ({x!r:.60}); an artifact can only keep None, "
                        "bool, int, float and str next to its tensors")


def _copy_kernel(built: Any, dest: Path) -> None:
    """Write a built kernel's shared object: a copy of its disk-cache file, else export it."""
    cached = cache.verified_path(built.fingerprint)  # never copy an entry its hash disowns
    if cached is not None:
        shutil.copyfile(cached, dest)
    else:
        built.module.export_library(str(dest))


def _entry_of(compiled: CompiledModule) -> Any:
    entries = list(compiled._cache.values())
    if not entries:
        raise ArtifactError("nothing to save: the compiled module was never called; call it on "
                            "example inputs first (or use compile_artifact)")
    if len(entries) > 1:
        sigs = ", ".join(str(e.signature) for e in entries)
        raise ArtifactError(
            f"the compiled module holds {len(entries)} signatures ({sigs}); an artifact holds one "
            "graph. With a dynamic batch this means torch.export specialized the batch dim "
            "(e.g. batch 1 compiled first): compile the sizes >= 2 first or one artifact per size")
    return entries[0]


def _kernel_table(graph: Any, compiled_graph: Any, kdir: Path) -> tuple[list[dict], set[str]]:
    """One manifest row per (kernel op, binding of the symbols it uses); files written."""
    kernel_ops = [op for op in graph.ops if op.name == "kernel"]
    rows: dict[tuple, dict] = {}
    files: set[str] = set()
    for key, plan in compiled_graph.plans.items():
        steps = [s for s in plan.steps if isinstance(s, KernelStep)]
        assert len(steps) == len(kernel_ops), "the plan's kernel steps follow the graph's kernel ops"
        bound = dict(key)
        for op, step in zip(kernel_ops, steps):
            used = {s.name for s in kernel_symbols(op)}
            bindings = {k: v for k, v in sorted(bound.items()) if k in used}
            row_key = (op.results[0].name, tuple(bindings.items()))
            if row_key in rows:
                continue
            row: dict[str, Any] = {
                "op": op.results[0].name, "name": op.attr("name"), "kind": op.attr("kind"),
                "fused_ops": list(fused_op_names(op)), "bindings": bindings}
            fn = step.fn
            sched = getattr(fn, "schedule", None)
            if isinstance(fn, InterpretedKernel):
                row.update(backend="interpreter", reason=fn.reason)
            elif sched is not None and sched.get("extern") or not hasattr(fn, "fingerprint"):
                # the tuner chose the library call: torch runs the body, rebuilt from the IR
                row.update(backend="library", schedule=sched.as_dict() if sched else {})
            else:
                row.update(backend="tvm", fingerprint=fn.fingerprint,
                           schedule=json.loads(sched.to_json()) if sched is not None else {},
                           file=f"{KERNEL_DIR}/{fn.fingerprint}.so")
                if row["file"] not in files:
                    _copy_kernel(fn, kdir / f"{fn.fingerprint}.so")
                    files.add(row["file"])
            rows[row_key] = row
    return list(rows.values()), files


def _tuning_lines(record: Any) -> list[str]:
    """One JSON line per kernel the autotuner handled (``CompileRecord.tuning``)."""
    def plain(x: Any) -> Any:
        if isinstance(x, Schedule):
            return x.as_dict()
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x if x is None or isinstance(x, (bool, int, float, str)) else str(x)

    return [json.dumps(plain(t), sort_keys=True) for t in getattr(record, "tuning", None) or ()]


def save(compiled: CompiledModule, out_dir: str | os.PathLike, *, batch_name: str = "batch",
         model_ref: str = "", extra: Mapping[str, Any] | None = None,
         overwrite: bool = False) -> SaveInfo:
    """Write the one compiled signature of ``compiled`` as an artifact directory.

    ``batch_name`` is the user's name for the symbolic batch dim (``B`` of
    ``Bx1024``), used in messages; ``extra`` is stored under ``manifest["compile"]``.
    Buffers the model updates in place are saved with their current values.
    """
    from safetensors.numpy import save_file  # heavy: loaded on first use

    t0 = time.perf_counter()
    entry = _entry_of(compiled)
    cg = entry.compiled
    graph = cg.graph
    if not cg.plans:
        raise ArtifactError("the compiled graph has no kernels built yet: call it once first")
    _only_aten_fallbacks(graph)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST).is_file():  # never delete what we did not write
            raise ArtifactError(f"output directory {out} exists and is not a tilefx artifact; "
                                "choose an empty or new directory")
        if not overwrite:
            raise ArtifactError(f"{out} holds an artifact already; pass overwrite=True "
                                "(--force) to replace it")
        shutil.rmtree(out)
    kdir = out / KERNEL_DIR
    kdir.mkdir(parents=True, exist_ok=True)
    target = compiled.options.resolved_target()

    constants = all_constants(graph)
    weights = {name: _storable(name, array) for name, array in constants.items()}
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    state = _save_state(compiled, entry, graph, out)
    (out / GRAPH_FILE).write_text(print_graph(graph))
    kernels, kernel_files = _kernel_table(graph, cg, kdir)
    (out / TUNING_FILE).write_text("".join(line + "\n" for line in _tuning_lines(cg.record)))

    symbols = sorted({s.name for v in graph.inputs for s in v.type.free_symbols()})
    sizes = {s: sorted({dict(k)[s] for k in cg.plans if s in dict(k)}) for s in symbols}
    names = {str(v.type.shape[0]): batch_name for v in graph.inputs
             if v.type.rank and not isinstance(v.type.shape[0], int)}
    inputs = [{"name": v.name, "dtype": v.type.dtype.name,
               "shape": [d if isinstance(d, int) else str(d) for d in v.type.shape]}
              for v in graph.inputs[:len(graph.inputs) - len(state)]]

    leaves = [_json_leaf(x, "outputs") for x in entry.output.leaves]
    outputs = {"treespec": pytree.treespec_dumps(entry.output.spec),
               "leaves": leaves,  # None marks a tensor
               "tensors": [{"name": v.name, "dtype": v.type.dtype.name,
                            "shape": [d if isinstance(d, int) else str(d) for d in v.type.shape]}
                           for v in graph.outputs]}
    record = cg.record
    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
             for rel in [GRAPH_FILE, WEIGHTS_FILE, TUNING_FILE, *sorted(kernel_files),
                         *([STATE_FILE] if state else [])]}
    manifest = {
        "format": FORMAT,
        "format_version": STATEFUL_FORMAT_VERSION if entry.mutations else FORMAT_VERSION,
        "tilefx_version": __version__,
        "tvm_version": _tvm_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_ref or (record.name if record else ""),
        "target": json.loads(target.to_json()),
        "cpu_features": target.backend().cpu_features(),
        "inputs": inputs,
        "symbols": {s: {"name": names.get(s, s), "sizes": sizes[s]} for s in symbols},
        "outputs": outputs,
        "kernels": kernels,
        "fallbacks": [{"target": f.target, "reason": f.reason, "nodes": list(f.nodes)}
                      for f in (record.fallbacks if record else [])],
        "tuning": {"budget": compiled.options.tune_trials, "records": TUNING_FILE,
                   "seconds": sum(getattr(t, "seconds", 0.0) for t in
                                  (getattr(record, "tuning", None) or ()))},
        "compile": dict(extra or {}),
        "files": files,
    }
    if entry.mutations:
        manifest["state"] = state
        manifest["mutations"] = [m.as_json() for m in entry.mutations]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    size = sum(f["bytes"] for f in files.values())
    info = SaveInfo(out, len(kernels), len(kernel_files), size,
                    tuple(sizes[symbols[0]]) if symbols else (), time.perf_counter() - t0)
    log.info("tilefx: saved artifact %s: %d kernels in %d files, %.1f MB", out, len(kernels),
             len(kernel_files), size / 1e6)
    return info


def _storable(name: str, array: Any) -> Any:
    array = np.ascontiguousarray(array).reshape(np.shape(array))  # keeps a 0-d array 0-d
    if array.dtype.kind not in "fiub" or array.dtype.itemsize > 8:
        raise ArtifactError(f"tensor {name!r} has dtype {array.dtype}, which safetensors "
                            "cannot store; such tensors cannot be saved yet")
    return array


def _save_state(compiled: CompiledModule, entry: Any, graph: Any, out: Path) -> list[dict]:
    """Write the values of the buffers the model updates in place (``STATE_FILE``); one
    manifest row per such buffer, in the order the graph takes them after the user's inputs."""
    from safetensors.numpy import save_file  # heavy: loaded on first use

    if not entry.state_names:
        return []
    values = state_tensors(compiled.model, entry.state_names)
    save_file({name: _storable(name, t.detach().cpu().numpy())
               for name, t in zip(entry.state_names, values)},
              str(out / STATE_FILE), metadata={"format": FORMAT})
    first = len(graph.inputs) - len(entry.state_names)
    return [{"name": name, "input": v.name, "dtype": v.type.dtype.name,
             "shape": [d if isinstance(d, int) else str(d) for d in v.type.shape]}
            for name, v in zip(entry.state_names, graph.inputs[first:])]


def _tvm_version() -> str:
    import tvm  # heavy: loaded on first use

    return str(tvm.__version__)


def _only_aten_fallbacks(graph: Any) -> None:
    """An artifact is loaded under the ATen allow-list (artifact_load): refuse to write one
    whose fallback names another library's operator, rather than one that cannot load."""
    for op in graph.ops:
        if op.name == "fallback":
            problem = check_fallback_target(op.attr("target"))
            if problem:
                raise ArtifactError(f"cannot save an artifact: {problem}; only ATen, prims and "
                                    "quantized operators may run as fallbacks in an artifact")


def compile_artifact(model: Any, example_inputs: Sequence[torch.Tensor], out_dir: str | os.PathLike,
                     *, target: str | Target = "cpu", batch_sizes: Sequence[int] = (),
                     batch_name: str = "batch", options: Any = None,
                     model_ref: str = "", extra: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> tuple[CompiledModule, SaveInfo]:
    """Compile ``model`` for ``example_inputs`` and save it to ``out_dir``.

    With ``batch_sizes`` the batch dim (dim 0 of every input) is symbolic and
    kernels are built for each size; the example inputs' dim 0 is resized
    (random data of the same dtype) for each. Larger sizes go first because
    torch.export specializes a batch dim it first sees as 1.
    """
    options = options or CompileOptions(target=target)
    dynamic = bool(batch_sizes)
    cm = tilefx_compile(model, options=options, dynamic=dynamic)
    inputs = tuple(example_inputs)
    # The example calls run the model: they must not change its buffers (a counter, a KV
    # cache: the artifact starts from the model's state as given) nor the caller's inputs.
    restore = snapshot_buffers(model)
    try:
        if not dynamic:
            cm(*[t.clone() for t in inputs])
        else:
            for b in sorted(set(batch_sizes), key=lambda b: (b == 1, -b)):
                cm(*[t.clone() for t in resize_batch(inputs, b)])
    finally:
        restore()
    info = save(cm, out_dir, batch_name=batch_name, model_ref=model_ref, extra=extra,
                overwrite=overwrite)
    return cm, info


def resize_batch(tensors: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
    """Tensors like ``tensors`` with dim 0 of size ``batch`` (rows repeated or cut)."""
    out = []
    for t in tensors:
        if t.dim() == 0 or t.shape[0] == batch:
            out.append(t)
            continue
        reps = -(-batch // t.shape[0])
        out.append(torch.cat([t] * reps)[:batch].contiguous())
    return tuple(out)
