"""The ``tilefx`` command line (also ``python -m tilefx``).

    tilefx inspect examples/mlp.py:build --input 64x1024:float32 [--target cpu] [--source]

prints the IR after the frontend and after each pass, the kernels (kind, fused
ops, default schedule), the fallbacks, and with ``--source`` the lowered TVM
code of each kernel.

MODEL is ``path/to/file.py:attr`` or ``package.module:attr``; ``attr`` is a
factory function called with no arguments, an nn.Module class (instantiated),
an nn.Module instance, or a plain function of tensors. Each ``--input`` SPEC is
``64x1024`` or ``64x1024:float32`` (the default dtype); integer inputs (token
ids) are random ints in [0, 100), floats are standard normal.

Subcommands are argparse subparsers: ``compile``, ``tune``, ``run`` and
``train-cost-model`` will sit next to ``inspect``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect as pyinspect
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from tilefx import settings
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import build_kernels, model_kernels
from tilefx.compiler.session import CompileSession, KernelBuilder
from tilefx.ir.graph import structural_equal
from tilefx.ir.identity import fused_op_names
from tilefx.ir.printer import print_graph

SPEC_HELP = "SHAPExSHAPE[:dtype] like 64x1024:float32"
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
          "uint8", "bool")


class CLIError(Exception):
    """A user mistake on the command line: printed as ``error: ...``, exit code 2."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``: what a one-line error shows of an exception
    (torch's shape errors run to hundreds of lines)."""
    if isinstance(e, SyntaxError):  # the message alone lacks where
        return f"SyntaxError: {e.msg} ({os.path.basename(e.filename or '?')}, line {e.lineno})"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.shape))}:{self.dtype}"

    def make(self, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed)
        dtype = getattr(torch, self.dtype)
        try:
            if self.dtype == "bool":
                return torch.rand(self.shape, generator=g) > 0.5
            if not dtype.is_floating_point:
                return torch.randint(0, 100, self.shape, generator=g, dtype=dtype)
            return torch.randn(self.shape, generator=g).to(dtype)
        except RuntimeError as e:  # e.g. 100000x100000: name the input, not the allocator
            numel = 1
            for d in self.shape:
                numel *= d
            raise CLIError(f"cannot make input {self} ({numel * 4 / 1e9:.1f} GB): "
                           f"{first_line(e)}") from None


def parse_input_spec(text: str) -> InputSpec:
    """``64x1024:float32`` -> InputSpec; argparse shows the error under ``--input``."""
    shape_text, _, dtype = text.partition(":")
    dims = shape_text.split("x")
    if not shape_text or not all(d.isdigit() and int(d) > 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected {SPEC_HELP}, got {text!r}")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {dtype!r} in {text!r}; expected one of {', '.join(DTYPES)}")
    return InputSpec(tuple(int(d) for d in dims), dtype)


def load_model(ref: str) -> Any:
    """Resolve ``file.py:attr`` / ``package.module:attr`` to a module or function."""
    return instantiate(resolve_reference(ref, "MODEL"), ref)


def resolve_reference(ref: str, what: str) -> Any:
    """The object ``file.py:attr`` or ``package.module:attr`` names (``what``: the argument,
    for errors); a file is loaded as a module of its own."""
    path, sep, attr = ref.rpartition(":")
    if not sep or not path or not attr:
        raise CLIError(f"{what} must be path/to/file.py:attr or package.module:attr, got {ref!r}")
    if path.endswith(".py") or os.sep in path:
        if not os.path.isfile(path):
            raise CLIError(f"no such file: {path!r} (from {what} {ref!r})")
        name = "_tilefx_model_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - the user's file: a syntax or import error in it
            raise CLIError(f"cannot load {path!r} (from {what} {ref!r}): {first_line(e)}") from e
    else:
        try:
            module = importlib.import_module(path)
        except Exception as e:  # noqa: BLE001 - ModuleNotFoundError, or an error inside it
            raise CLIError(f"cannot import module {path!r} (from {what} {ref!r}): "
                           f"{first_line(e)}") from e
    if not hasattr(module, attr):
        raise CLIError(f"{path!r} has no attribute {attr!r}")
    return getattr(module, attr)


def instantiate(obj: Any, ref: str) -> Any:
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise CLIError(f"{ref!r} has type {type(obj).__name__}; expected an nn.Module, an nn.Module "
                       "class or a function")
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        try:
            needs_args = any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                  p.POSITIONAL_OR_KEYWORD)
                             for p in pyinspect.signature(obj).parameters.values())
        except (TypeError, ValueError):
            needs_args = False
        if needs_args:  # a function of tensors
            return obj
    try:
        return obj()  # a factory or an nn.Module class
    except Exception as e:  # noqa: BLE001 - the user's code
        raise CLIError(f"MODEL {ref!r} raised when called with no arguments: "
                       f"{first_line(e)}") from e


def _header(title: str) -> str:
    return f"\n# ---- {title}"


def cmd_inspect(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    tensors = tuple(spec.make(seed=i) for i, spec in enumerate(args.input))
    options = CompileOptions(target=args.target)
    with CompileSession() as session:
        found = model_kernels(model, tensors, options, session, dynamic=args.dynamic, trace=True)
        record, graph, target = found.record, found.graph, found.target
        out = [f"# tilefx inspect {args.model} --input {' '.join(map(str, args.input))} "
               f"--target {record.target}"]
        out += [_header("IR after frontend"), print_graph(record.frontend_ir)]
        previous = record.frontend_ir
        for pass_name, g in record.pass_trace:
            if structural_equal(g, previous):
                out.append(_header(f"IR after {pass_name}: unchanged"))
            else:
                out += [_header(f"IR after {pass_name}"), print_graph(g)]
            previous = g
        kernels = [op for op in graph.ops if op.name == "kernel"]
        out.append(_header(f"kernels ({len(kernels)})"))
        for op in kernels:
            out.append(f"{op.attr('name')}: {op.attr('kind')} <- {' + '.join(fused_op_names(op))}")
            out.append(f"    schedule {_default_schedule_text(op, target)}")
        out.append(_header(f"fallbacks ({len(record.fallbacks)})"))
        for f in record.fallbacks:
            out.append(f"{f.target} runs in PyTorch: {f.reason}")
        if args.source:
            build_kernels(graph, found.bindings,
                          KernelBuilder(session, target, options, record, keep_source=True))
            for kr in record.kernels:
                out += [_header(f"source of {kr.name} ({kr.status()})"), kr.source or "<none>"]
    print("\n".join(out))
    return 0


def _default_schedule_text(op: Any, target: Any) -> str:
    try:
        return str(target.backend().default_schedule(op))
    except Exception as e:  # noqa: BLE001 - the schedule is only shown, never needed here
        return f"<no default schedule: {e}>"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilefx", description="the tilefx deep-learning compiler")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log compiler decisions; show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("inspect", help="print the IR after each stage and the kernels of a model")
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:attr or package.module:attr")
    p.add_argument("--input", metavar="SPEC", type=parse_input_spec, action="append",
                   required=True, help=f"one per model input: {SPEC_HELP}")
    p.add_argument("--target", default="cpu", help="cpu (the host), cpu:<llvm mcpu> or cuda")
    p.add_argument("--source", action="store_true", help="also build and print each kernel's code")
    p.add_argument("--dynamic", action="store_true", help="capture dim 0 of inputs as a symbol")
    p.set_defaults(func=cmd_inspect)
    # cycle: the subcommand modules import this module (CLIError, load_model, ...)
    from tilefx.compiler.cli_aot import add_subcommands  # compile, run

    add_subcommands(sub)
    from tilefx.compiler.cli_tune import add_parser as add_tune  # tune

    add_tune(sub)
    from tilefx.compiler.cli_cost import add_parser as add_cost  # collect, train-cost-model

    add_cost(sub)
    for verb in sub.choices.values():  # -v after the verb too (SUPPRESS: keeps the top-level one)
        verb.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="log compiler decisions; show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed "error: ..." already
        return int(e.code or 0)
    if args.verbose or settings.debug_log():
        logging.basicConfig(level=logging.DEBUG)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line; -v shows the traceback
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (run with --verbose for the traceback)"
        print(f"{parser.prog}: error: {first_line(e)}{hint}", file=sys.stderr)
        return 2


def ray_pair(target: Any, options: Any, address: str) -> dict:
    """``--ray [ADDRESS]``: the tuner's Ray builder and runner, connected now, so a bad
    address is reported (naming ``--ray``) before anything is tuned or measured."""
    from tilefx.autotune.cluster import ClusterError, describe, ray_tuning_pair  # imports ray

    builder, runner = ray_tuning_pair(target, options, where=describe(address, "--ray"))
    try:
        runner.cluster.connect()
    except ClusterError as e:
        raise CLIError(str(e)) from None
    return dict(builder=builder, runner=runner)
