"""``tilefx compile`` and ``tilefx run``: ahead-of-time artifacts from the command line.

    tilefx compile examples/mlp.py:build --input 64x1024:float32 -o out/mlp
    tilefx compile model.py:Net --input Bx1024:float32 --dynamic batch --batch-sizes 1,8,32 -o out/
    tilefx compile model.py:Net --input 8x3x64x64 --trials 32 -o out/      # autotune 32/kernel
    tilefx run out/mlp [--input 64x1024:float32] [--model examples/mlp.py:build]

``compile`` captures, optimizes, builds (and with ``--trials``/``--time-budget``
autotunes) the model, writes the artifact directory (``artifact.py``) and
prints a summary: kernels, fusions, fallbacks, tuning time, and the latency of
the compiled model against eager PyTorch on the example inputs.

``run`` loads an artifact (no tracing, tuning or building), runs it on random
inputs and prints the median latency; with ``--model`` it also runs the eager
model on the same inputs and prints its latency and the largest difference.

A SPEC is ``64x1024:float32``; a symbolic batch dim is written as a name
(``Bx1024``) and needs ``--dynamic batch``: kernels are built for each size of
``--batch-sizes``, and the artifact serves exactly those sizes.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.utils._pytree as pytree

from tilefx.codegen import timing
from tilefx.compiler.artifact import MANIFEST, ArtifactError
from tilefx.compiler.artifact_load import load
from tilefx.compiler.cli import DTYPES, CLIError, InputSpec, load_model
from tilefx.compiler.mutation import snapshot_buffers
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.signing import add_parser as add_keygen, sign_artifact

AOT_SPEC_HELP = "SHAPE[:dtype] like 64x1024:float32, or Bx1024:float32 with a symbolic batch dim B"
BUDGET_HELP = "a duration like 90s, 10m or 1h"


@dataclass(frozen=True)
class AotSpec:
    shape: tuple[int | str, ...]   # a str is the name of the symbolic batch dim
    dtype: str = "float32"

    @property
    def batch_name(self) -> str | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], str) else None

    def concrete(self, batch: int | None) -> Any:
        return InputSpec(tuple(batch if isinstance(d, str) else d for d in self.shape), self.dtype)

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.shape))}:{self.dtype}"


def parse_aot_spec(text: str) -> AotSpec:
    shape_text, _, dtype = text.partition(":")
    dims: list[int | str] = []
    for d in shape_text.split("x") if shape_text else []:
        if d.isdigit() and int(d) > 0:
            dims.append(int(d))
        elif d.isidentifier() and d != "x":
            dims.append(d)
        else:
            raise argparse.ArgumentTypeError(f"expected {AOT_SPEC_HELP}; {d!r} in {text!r} is "
                                             "neither a positive size nor a dim name")
    if not dims:
        raise argparse.ArgumentTypeError(f"expected {AOT_SPEC_HELP}, got {text!r}")
    if any(isinstance(d, str) for d in dims[1:]):
        raise argparse.ArgumentTypeError(f"in {text!r} only the first (batch) dim may be symbolic")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {dtype!r} in {text!r}; expected one of {', '.join(DTYPES)}")
    return AotSpec(tuple(dims), dtype)


def parse_time_budget(text: str) -> str:
    """``10m`` -> ``"600s"``, the tuner's form; rejects anything that is not a duration."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected {BUDGET_HELP}, got {text!r}")
    scale = {"s": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return f"{float(m.group(1)) * scale:g}s"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive sizes like 1,8,32, "
                                         f"got {text!r}")
    return tuple(sorted({int(p) for p in parts}))


def max_abs_diff(a: Any, b: Any) -> float:
    diffs = [(x.double() - y.double()).abs().max().item() if x.numel() else 0.0
             for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b))
             if isinstance(x, torch.Tensor)]
    return max(diffs, default=0.0)


def _batch_plan(specs: Sequence[AotSpec], dynamic: str | None,
                batch_sizes: tuple[int, ...] | None) -> tuple[str | None, tuple[int, ...]]:
    """(name of the batch dim, sizes to build) from the specs and flags; CLIError if they clash."""
    names = {s.batch_name for s in specs if s.batch_name}
    if len(names) > 1:
        raise CLIError(f"--input: inputs name the batch dim differently ({', '.join(sorted(names))});"
                       " use one name, e.g. Bx1024 and Bx16")
    if dynamic is None:
        if names:
            raise CLIError(f"--input: symbolic dim {names.pop()!r} needs --dynamic batch")
        if batch_sizes:
            raise CLIError("--batch-sizes needs --dynamic batch")
        return None, ()
    sizes = set(batch_sizes or ())
    sizes |= {s.shape[0] for s in specs if not s.batch_name and isinstance(s.shape[0], int)}
    if not sizes:
        raise CLIError("--dynamic batch with a symbolic batch dim needs --batch-sizes, e.g. "
                       "--batch-sizes 1,8,32")
    return (names.pop() if names else "batch"), tuple(sorted(sizes))


def cmd_compile(args: argparse.Namespace) -> int:
    from tilefx.compiler.artifact import compile_artifact  # looked up per call: tests monkeypatch it

    if not args.target.startswith(("cpu", "llvm")):
        raise CLIError(f"--target {args.target!r}: artifacts are CPU-only for now; use cpu or "
                       "cpu:<llvm mcpu>")
    batch_name, sizes = _batch_plan(args.input, args.dynamic, args.batch_sizes)
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "manifest.json").is_file():
            raise CLIError(f"-o {out}: exists and is not a tilefx artifact; choose a new or "
                           "empty directory")
        if not args.force:
            raise CLIError(f"-o {out}: exists and is not empty; pass --force to replace it")
    if args.sign and not Path(args.sign).is_file():  # before the compile, not after it
        raise CLIError(f"--sign {args.sign}: no such key file (make one with `tilefx keygen NAME`)")
    model = load_model(args.model)
    if hasattr(model, "eval"):
        model.eval()  # an artifact is inference code: BatchNorm uses (and keeps) its running stats
    first = max((s for s in sizes if s > 1), default=sizes[0]) if sizes else None
    inputs = tuple(s.concrete(first).make(seed=i) for i, s in enumerate(args.input))
    tune: int | str = args.trials or args.time_budget or 0
    options = CompileOptions(target=args.target, tune_trials=tune)
    t0 = time.perf_counter()
    try:
        cm, info = compile_artifact(model, inputs, out, batch_sizes=sizes, options=options,
                                    batch_name=batch_name or "batch", model_ref=args.model,
                                    overwrite=True)
    except ArtifactError as e:
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - t0
    record = cm.records[0]
    diff = _compiled_vs_eager(cm, model, inputs)
    with torch.no_grad():
        compiled_ms = timing.median_ms(cm, inputs, args.repeats, warmup=2)
        eager_ms = timing.median_ms(model, inputs, args.repeats, warmup=2)
    fused = sum(1 for k in record.kernels if len(k.fused_ops) > 1)
    tuning_s = sum(getattr(t, "seconds", 0.0) for t in getattr(record, "tuning", None) or ())
    lines = [record.report(), "",
             f"compiled {args.model} in {seconds:.1f}s: {len(record.kernels)} kernels "
             f"({fused} fusions), {len(record.fallbacks)} fallbacks, {len(record.interpreted)} interpreted",
             f"tuning: {_tuning_text(tune, tuning_s)}",
             f"latency on {', '.join(str(s.concrete(first)) for s in args.input)} (median of "
             f"{args.repeats}): tilefx {compiled_ms:.3f} ms, eager {eager_ms:.3f} ms, "
             f"speedup {eager_ms / compiled_ms:.2f}x; max |diff| {diff:.2e}",
             f"artifact: {out} ({info.kernel_files} kernel libraries, {info.bytes / 1e6:.1f} MB)"
             + (f", {batch_name} in {list(sizes)}" if sizes else "")]
    if sizes and not info.batch_sizes:
        lines.append(f"note: torch.export specialized the batch dim (sizes {list(sizes)}), so the "
                     "artifact is static; give sizes >= 2 for a dynamic batch")
    _update_compile_info(out, seconds=seconds, tuning_seconds=tuning_s, latency_ms=compiled_ms,
                         eager_ms=eager_ms, max_abs_diff=diff)
    if args.sign:  # last: the signature covers the manifest as finally written
        try:
            lines.append(f"signed: {sign_artifact(out, args.sign)}")
        except ArtifactError as e:
            raise CLIError(str(e)) from None
    print("\n".join(lines))
    return 0


def _compiled_vs_eager(compiled: Callable[..., Any], model: Any, inputs: Sequence[Any]) -> float:
    """The largest difference of one call of each from the same state: a model that updates
    buffers or inputs in place gets its buffers restored and fresh copies of the inputs."""
    restore = snapshot_buffers(model)
    with torch.no_grad():
        got = compiled(*[t.clone() for t in inputs])
        restore()
        want = model(*[t.clone() for t in inputs])
        restore()
    return max_abs_diff(got, want)


def _tuning_text(tune: int | str, seconds: float) -> str:
    if not tune:
        return "none (default schedules; pass --trials N or --time-budget 10m to autotune)"
    if isinstance(tune, int):
        return f"{tune} trials per kernel, {seconds:.1f}s spent"
    return f"budget {tune} for the model (each batch size), {seconds:.1f}s spent"


def _update_compile_info(out: Path, **info: Any) -> None:
    """Add the summary numbers to ``manifest["compile"]`` (the manifest is not hashed)."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["compile"].update(info)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        module = load(args.artifact, key=args.key)
    except ArtifactError as e:
        raise CLIError(str(e)) from None
    load_s = time.perf_counter() - t0
    specs = args.input or [parse_aot_spec(s) for s in module.input_specs()]
    sizes = next(iter(module.batch_sizes.values()), [None])
    if any(isinstance(d, str) for s in specs for d in s.shape[:1]) and sizes == [None]:
        raise CLIError("--input: this artifact has no symbolic dims; give concrete sizes")
    inputs = tuple(s.concrete(max(sizes) if sizes[0] else None).make(seed=1000 + i)
                   for i, s in enumerate(specs))
    try:
        module.check_inputs(inputs)
    except ArtifactError as e:
        raise CLIError(f"--input: {e}") from None
    shapes = ", ".join(f"{'x'.join(map(str, t.shape))}:{str(t.dtype).removeprefix('torch.')}"
                       for t in inputs)
    model = load_model(args.model) if args.model else None
    if model is not None:
        if hasattr(model, "eval"):
            model.eval()
        # before timing: both from their initial state (the artifact's saved buffers)
        diff = _compiled_vs_eager(module, model, inputs)
    with torch.no_grad():
        ms = timing.median_ms(module, inputs, args.repeats, warmup=2)
        eager = timing.median_ms(model, inputs, args.repeats, warmup=2) if model is not None else 0.0
    lines = [f"loaded {args.artifact} in {load_s * 1e3:.0f} ms "
             f"({len(module.manifest['kernels'])} kernels, "
             # counted in the IR that runs, not taken from the manifest's word
             f"{sum(op.name == 'fallback' for op in module.graph.ops)} fallbacks, "
             f"{sum(k.get('backend') == 'interpreter' for k in module.manifest['kernels'])} interpreted)",
             f"tilefx: {ms:.3f} ms (median of {args.repeats}) on {shapes}"]
    if model is not None:
        lines.append(f"eager:  {eager:.3f} ms; speedup {eager / ms:.2f}x; max |diff| {diff:.2e}")
    print("\n".join(lines))
    return 0


def add_subcommands(sub: Any) -> None:
    """Register ``compile`` and ``run`` on ``cli.py``'s subparsers."""
    p = sub.add_parser(
        "compile", help="compile a model ahead of time into an artifact directory",
        description="Capture, optimize, build (optionally autotune) MODEL for the given inputs "
                    "and write a loadable artifact to OUT_DIR (manifest.json, graph.tir, "
                    "weights.safetensors, kernels/*.so, tuning.jsonl). Load it with "
                    "tilefx.load(OUT_DIR) or `tilefx run OUT_DIR`.")
    p.add_argument("model", metavar="MODEL",
                   help="path/to/file.py:attr or package.module:attr (a factory, an nn.Module "
                        "class or instance, or a function of tensors)")
    p.add_argument("--input", metavar="SPEC", type=parse_aot_spec, action="append", required=True,
                   help=f"one per model input, in order: {AOT_SPEC_HELP}")
    p.add_argument("--target", default="cpu", help="cpu (this machine, default) or "
                   "cpu:<llvm mcpu> such as cpu:haswell")
    tune = p.add_mutually_exclusive_group()
    tune.add_argument("--trials", metavar="N", type=positive_int,
                      help="autotune: measure N candidate schedules per kernel")
    tune.add_argument("--time-budget", metavar="DURATION", type=parse_time_budget,
                      help=f"autotune within a time budget for the whole model (per batch size), "
                      f"shared among its kernels by expected gain: {BUDGET_HELP}")
    p.add_argument("--dynamic", choices=["batch"], help="make dim 0 of every input a symbol; "
                   "kernels are built for each of --batch-sizes")
    p.add_argument("--batch-sizes", metavar="SIZES", type=parse_batch_sizes,
                   help="with --dynamic batch: comma-separated batch sizes to build, like 1,8,32; "
                        "the artifact serves exactly these")
    p.add_argument("-o", "--output", metavar="OUT_DIR", required=True,
                   help="artifact directory to write (new or empty; see --force)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--sign", metavar="KEYFILE", help="sign the artifact with this Ed25519 "
                   "private key (PEM; `tilefx keygen NAME` makes one): manifest.sig")
    p.add_argument("--repeats", metavar="N", type=positive_int, default=20,
                   help="timed runs for the latency summary (median; default 20)")
    p.set_defaults(func=cmd_compile)

    r = sub.add_parser(
        "run", help="load an artifact and time it on random inputs",
        description="Load OUT_DIR (no tracing, tuning or building), run it on random inputs and "
                    "print the median latency; with --model also eager latency and the "
                    "largest difference.")
    r.add_argument("artifact", metavar="OUT_DIR", help="a directory written by tilefx compile")
    r.add_argument("--input", metavar="SPEC", type=parse_aot_spec, action="append",
                   help="one per input (default: the artifact's inputs at its largest batch "
                        f"size): {AOT_SPEC_HELP}; sizes must be ones the artifact was built for")
    r.add_argument("--model", metavar="MODEL", help="the source model, to compare with eager")
    r.add_argument("--repeats", metavar="N", type=positive_int, default=20,
                   help="timed runs (median; default 20)")
    r.add_argument("--key", metavar="PUBKEY", help="refuse the artifact unless it is signed "
                   "by this Ed25519 public key (PEM)")
    r.set_defaults(func=cmd_run)

    add_keygen(sub)
