"""The public API: ``tilefx.compile``.

    cm = tilefx.compile(model, target="cpu")   # an nn.Module or a function
    y = cm(x)                                   # compiles on the first call per signature
    print(cm.report())

    @tilefx.compile(target="cpu")               # on a function or an nn.Module class
    def f(x, w): ...

A ``CompiledModule`` compiles lazily: on each call the arguments are flattened
(``signature.py``) and looked up in a cache keyed by the call's signature; a
miss captures the model for those arguments, runs the pipeline (``pipeline.py``) and builds the
kernels, a hit just runs them. Outputs are rebuilt into the structure eager
returns.

Semantics worth knowing:
- Inference only: the model is captured with eval-mode semantics (dropout off,
  batch norm uses running stats; the module's own train/eval flags are left as
  they were) and outputs do not track gradients.
- Weights are baked into the compiled graph as constants: changing a parameter
  after the first call needs a new ``tilefx.compile``.
- In-place updates happen as in eager: a buffer the model updates
  (``self.n.add_(1)``, a KV-cache write) is read from the module at each call
  and written back after it; an argument updated in place (``x.add_(1)``) is
  written back into the caller's tensor (``mutation.py``). A BatchNorm in
  training mode, whose running stats eager would update, is refused with a
  ``TrainingModeError``: call ``model.eval()`` first.
- Non-tensor arguments (ints, flags, None) are part of the signature: a new
  value compiles anew.
- ``dynamic=True`` captures dim 0 of every input as a symbol, so one capture
  serves every batch size; kernels are still specialized (and cached) per size.
- A compiled module is not re-entrant across threads (buffers are reused).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from tilefx import settings
from tilefx.compiler.capture import capture, capture_mode, capturing
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import compile_graph
from tilefx.compiler.session import CompileSession
from tilefx.compiler.mutation import (Mutation, check_not_training, running_stat_modules,
                                      state_tensors, write_back)
from tilefx.compiler.signature import FlatCall, Signature, flatten_call

log = logging.getLogger("tilefx.api")

@dataclass
class _OutputSpec:
    """How to rebuild the user's output from the graph's flat tensor outputs."""

    spec: Any = None
    leaves: tuple = ()  # non-tensor leaves kept as they were; tensors marked None

    def rebuild(self, tensors: list) -> Any:
        it = iter(tensors)
        leaves = [next(it) if x is None else x for x in self.leaves]
        return pytree.tree_unflatten(leaves, self.spec)


def _input_names(inner: Callable, call: FlatCall) -> list[str]:
    """Readable names for the call's tensors: ``x``, ``mask``, ``inputs_0``..."""
    try:
        params = [p.name for p in inspect.signature(inner).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    args_kwargs = pytree.tree_unflatten(list(call.leaves), call.spec)
    names: list[str] = []
    for path, leaf in pytree.tree_flatten_with_path(args_kwargs)[0]:
        if not isinstance(leaf, torch.Tensor):
            continue
        # path = (0 = args | 1 = kwargs, position or keyword, nested keys...)
        keys = [getattr(k, "idx", getattr(k, "key", "")) for k in path]
        head = keys[1]
        if keys[0] == 0:
            head = params[head] if head < len(params) else f"arg{head}"
        name = re.sub(r"\W", "_", "_".join(str(k) for k in [head, *keys[2:]]))
        if not name.isidentifier():
            name = f"t_{name}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def _flat_module(model: Any, call: FlatCall, out: _OutputSpec) -> Any:
    """A module whose forward takes only the call's tensors and returns flat tensors.

    For an nn.Module this is a shallow copy that shares the parameters (so the
    captured constants keep their names, ``fc1.weight``) with ``forward``
    replaced on the instance; a function gets an empty module around it. The
    forward gets an explicit signature (one parameter per tensor) because
    torch.export matches dynamic shapes against it.
    """
    if isinstance(model, torch.nn.Module):
        wrapper = copy.copy(model)
        func = getattr(model.forward, "__func__", None)
        inner = functools.partial(func, wrapper) if func is not None else model.forward
    else:
        wrapper = torch.nn.Module()
        inner = model

    def forward(*tensors: torch.Tensor) -> tuple:
        args, kwargs = call.rebuild(tensors)
        leaves, out.spec = pytree.tree_flatten(inner(*args, **kwargs))
        out.leaves = tuple(None if isinstance(x, torch.Tensor) else x for x in leaves)
        return tuple(x for x in leaves if isinstance(x, torch.Tensor))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, kind) for n in _input_names(inner, call)])
    wrapper.forward = forward
    return wrapper


@dataclass
class _Entry:
    signature: Signature
    compiled: Any  # runtime.CompiledGraph
    output: _OutputSpec
    capture_seconds: float
    static_shapes: tuple | None = None  # set when a dynamic capture came back static
    # Buffers the model updates in place (graph inputs after the call's tensors) and every
    # tensor updated in place, with the graph output holding its new value.
    state_names: tuple[str, ...] = ()
    mutations: tuple[Mutation, ...] = ()

    def run(self, model: Any, call: FlatCall) -> list:
        """The graph's user outputs for ``call``, with in-place updates written back."""
        if not self.mutations:
            return self.compiled(*call.tensors)
        inputs = (*call.tensors, *state_tensors(model, self.state_names))
        return write_back(self.mutations, inputs, self.compiled(*inputs))

    def accepts(self, call: FlatCall) -> bool:
        return self.static_shapes is None or \
            self.static_shapes == tuple(tuple(t.shape) for t in call.tensors)


class CompiledModule:
    """A model (nn.Module or function) compiled per call signature; see the module doc."""

    def __init__(self, model: Callable, target: str | Any = "cpu", *, dynamic: bool = False,
                 options: CompileOptions | None = None, passes: Any = None,
                 tune: int | str = 0, prune: float = 0.0, prune_block: tuple[int, int] = (1, 1),
                 quantize: Any = None, check: bool | None = None,
                 recompile_limit: int | None = None, session: CompileSession | None = None,
                 cluster: str | None = None) -> None:
        if options is None:
            options = CompileOptions(target=target, passes=passes, tune_trials=tune,
                                     prune=prune, prune_block=tuple(prune_block), quantize=quantize,
                                     check_builds=check, cluster=cluster)
        self.model = model
        self.options = options
        self.dynamic = dynamic
        # built kernels, tuners and database handles of every signature's compile
        self.session = session if session is not None else CompileSession()
        self._cache: dict[Signature, _Entry] = {}
        self._lock = threading.Lock()
        self.num_compiles = 0
        # like dynamo's cache size limit: a shape or Python scalar that changes on every
        # call would otherwise compile (seconds each) forever, silently
        self.recompile_limit = recompile_limit if recompile_limit is not None else \
            settings.recompile_limit()
        self.eager_calls = 0  # calls past the limit, run by the model itself
        # checked at every call: eager in training mode would update their running stats
        self._batchnorms = running_stat_modules(model)
        if not hasattr(model, "forward"):
            functools.update_wrapper(self, model)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        check_not_training(self._batchnorms)
        call = flatten_call(args, kwargs, self.dynamic)
        entry = self._cache.get(call.signature)
        if entry is not None and not entry.accepts(call):
            # torch.export refused the dynamic batch: fall back to one entry per shape
            call = flatten_call(args, kwargs, dynamic=False)
            entry = self._cache.get(call.signature)
        if entry is None:
            with self._lock:
                entry = self._cache.get(call.signature)
                if entry is None and len(self._cache) >= self.recompile_limit:
                    return self._run_eager(call, args, kwargs)
                entry = entry or self._compile(call)
        return entry.output.rebuild(entry.run(self.model, call))

    def _run_eager(self, call: FlatCall, args: tuple, kwargs: dict) -> Any:
        """A new signature past ``recompile_limit``: the model runs as it is, with one warning."""
        if self.eager_calls == 0:
            name = getattr(self.model, "__name__", None) or type(self.model).__name__
            log.warning("tilefx: %s reached its recompile limit (%d signatures; the newest is %s): "
                        "new input shapes or Python scalars now run in eager PyTorch. Pass "
                        "dynamic=True for a varying batch, tensors instead of changing Python "
                        "numbers, or a larger recompile_limit / TILEFX_RECOMPILE_LIMIT.",
                        name, self.recompile_limit, call.signature)
        self.eager_calls += 1
        return self.model(*args, **kwargs)

    def _compile(self, call: FlatCall) -> _Entry:
        name = getattr(self.model, "__name__", None) or type(self.model).__name__
        log.info("tilefx: compiling %s for %s", name, call.signature)
        out = _OutputSpec()
        t0 = time.perf_counter()
        with capture_mode(self.model):
            captured = capture(_flat_module(self.model, call, out), tuple(call.tensors),
                               dynamic_batch=self.dynamic)
        seconds = time.perf_counter() - t0
        state = state_tensors(self.model, captured.state_names)
        compiled = compile_graph(captured, self.options, self.session, name=name,
                                 example_inputs=(*call.tensors, *state))
        compiled.record.seconds = {"capture": seconds, **compiled.record.seconds}
        entry = _Entry(call.signature, compiled, out, seconds, state_names=captured.state_names,
                       mutations=captured.mutations)
        if self.dynamic and not any(v.type.free_symbols() for v in compiled.graph.inputs):
            entry.static_shapes = tuple(tuple(t.shape) for t in call.tensors)
        self._cache[call.signature] = entry
        self.num_compiles += 1
        return entry

    @property
    def records(self) -> list:
        """The ``CompileRecord`` of each compiled signature, oldest first."""
        return [e.compiled.record for e in self._cache.values()]

    def report(self) -> str:
        """Kernels (kind, fused ops), fallbacks with reasons and compile times per signature."""
        if not self._cache:
            return "tilefx: nothing compiled yet (call the module once)"
        parts = []
        for e in self._cache.values():
            parts.append(f"== signature {e.signature}\n{e.compiled.record.report()}")
        if self.eager_calls:
            parts.append(f"recompile limit ({self.recompile_limit}) reached: {self.eager_calls} "
                         "call(s) with new signatures ran in eager PyTorch")
        return "\n".join(parts)

    def __repr__(self) -> str:
        name = getattr(self.model, "__name__", None) or type(self.model).__name__
        return f"CompiledModule({name}, {len(self._cache)} signature(s) compiled)"


def _compile_class(cls: type, kwargs: dict) -> type:
    """A subclass whose instances compile themselves on their first call."""
    def __call__(self: Any, *args: Any, **kw: Any) -> Any:
        if capturing():  # the capture of this very instance runs the eager module
            return super(compiled_cls, self).__call__(*args, **kw)
        cm = self.__dict__.get("_tilefx_compiled")
        if cm is None:
            cm = CompiledModule(self, **kwargs)
            self.__dict__["_tilefx_compiled"] = cm
        return cm(*args, **kw)

    def tilefx_report(self: Any) -> str:
        cm = self.__dict__.get("_tilefx_compiled")
        return cm.report() if cm is not None else "tilefx: nothing compiled yet"

    compiled_cls = type(cls.__name__, (cls,), {
        "__call__": __call__, "tilefx_report": tilefx_report,
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return compiled_cls


def compile(model: Any = None, target: str | Any = "cpu", *, dynamic: bool = False,
            options: CompileOptions | None = None, passes: Any = None,
            tune: int | str = 0, prune: float = 0.0, prune_block: tuple[int, int] = (1, 1),
            quantize: Any = None, check: bool | None = None,
            recompile_limit: int | None = None, session: CompileSession | None = None,
            cluster: str | None = None) -> Any:
    """Compile ``model`` (nn.Module, function, or nn.Module class) with tilefx.

    Without ``model`` it returns a decorator. On an nn.Module class it returns a
    subclass whose instances compile lazily on their first call. ``tune=N``
    autotunes each kernel with N candidate schedules; ``tune="60s"`` tunes the
    whole model within 60 seconds, shared among its kernels by expected gain
    (``tune="30s/kernel"``: 30 seconds per kernel); results go to the tuning database, so a second compile
    of the same model measures nothing. ``cluster="ray"`` (a local Ray) or a Ray
    cluster's address builds and measures the candidates there (``pip install
    'tilefx[cluster]'``); a cluster that cannot be reached leaves the default schedules.
    ``prune=0.9`` (opt-in, changes outputs) zeroes the smallest 90% of each
    contraction weight, by ``prune_block`` blocks, and reports the change; sparse
    weights then run as block-sparse kernels where that measures faster.
    ``quantize="int4"`` (opt-in, changes outputs; also ``"int8:16"``, ``BlockQuant``)
    rounds contraction weights as a block format would (simulated: accuracy, not
    speed), after grouping outlier channels, and reports weight and output errors.
    Every newly built kernel runs once against the reference before it is used; a
    wrong one runs in PyTorch instead, reported. ``check=False`` (or
    ``TILEFX_CHECK_BUILDS=0``) skips that check.
    Each new input signature (shapes, dtypes, Python scalars) compiles again, up to
    ``recompile_limit`` (default 8, ``TILEFX_RECOMPILE_LIMIT``); past it, new signatures
    run in eager PyTorch with one warning.
    ``session`` (a ``CompileSession``) shares built kernels, tuners and database handles
    between compiled models; by default each compiled model has its own.
    """
    kwargs = dict(target=target, dynamic=dynamic, options=options, passes=passes, tune=tune)
    if check is not None:
        kwargs.update(check=check)
    if recompile_limit is not None:
        kwargs.update(recompile_limit=recompile_limit)
    if session is not None:
        kwargs.update(session=session)
    if cluster is not None:
        kwargs.update(cluster=cluster)
    if prune:  # opt-in, lossy: passes/prune.py reports every weight it changes
        kwargs.update(prune=prune, prune_block=tuple(prune_block))
    if quantize is not None:  # opt-in, lossy: passes/block_quant.py reports the errors
        kwargs.update(quantize=quantize)
    if model is None:
        return lambda m: compile(m, **kwargs)

    if isinstance(model, type):
        if not issubclass(model, torch.nn.Module):
            raise TypeError(f"tilefx.compile: cannot compile class {model.__name__}: "
                            "only nn.Module classes, modules and functions are supported")
        return _compile_class(model, kwargs)
    if not callable(model):
        raise TypeError(f"tilefx.compile: expected an nn.Module or a function, got "
                        f"{type(model).__name__}")
    return CompiledModule(model, **kwargs)
