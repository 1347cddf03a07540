"""The runtime: executes an optimized IR graph as a flat list of steps.

After the passes, the top level of a graph holds only ``const``, ``kernel``,
``fallback``, free ``reshape`` and constant ``cast`` ops. For one concrete input
signature (the symbolic dims bound to sizes) ``CompiledGraph`` makes an ``ExecutionPlan``:

- every value gets a *slot* in a flat environment list; constants are turned
  into torch tensors once and sit in their slots for good;
- a ``kernel`` op becomes a call of its built kernel in destination-passing
  style (``fn(*inputs, *outputs)``) into preallocated buffers;
- a ``fallback`` op runs its PyTorch op (``interpreter.run_fallback``);
- a ``reshape`` is a free view of its input, and so is a step-1 ``slice`` the graph
  returns (fusion leaves only those at the top level: GPT-2's logits sliced back from
  their padded columns are handed out as a strided view, as eager would);
- a ``cast`` of a constant (a bf16 weight, held as f32 in the IR: numpy has no
  bfloat16) is cast once with the constants, and the f32 copy is dropped;
- anything else left at the top level (e.g. with fusion turned off) runs in the
  reference interpreter, so an unfused graph still executes.

Intermediate buffers are planned once per signature by liveness: a kernel
result's storage is released after its last use (views extend the lifetime of
the storage they look at) and a later result of the same dtype and element
count reuses it. Graph outputs are allocated fresh on every call, so what the
caller gets never aliases an internal buffer. Because buffers are reused
between calls, one ``CompiledGraph`` must not be called from two threads at
once. On a CUDA device a static plan is recorded once in a CUDA graph and
replayed (``cuda_graph.py``), so Python launches nothing per kernel.

Every tensor handed to a kernel is contiguous and 64-byte aligned: TVM's
generated code assumes aligned buffers (vector loads on a misaligned pointer
crash). torch's allocator aligns to 64 bytes; numpy arrays, offset views
(``x[1:]``) and some fallback results are not, so those are copied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import sympy
import torch

from tilefx.compiler.bounds import kernel_index_checks
from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.interpreter import run_fallback, run_graph
from tilefx.ir.ops.shape_ops import is_narrow
from tilefx.ir.types import DType, TensorType

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tilefx.runtime")

# A built kernel: called with the input tensors then the preallocated outputs.
KernelFn = Callable[..., Any]
# Builds (or fetches) the kernel of one kernel op for concrete symbol bindings. One that has
# a ``prepare(kernel_ops, bindings)`` method sees a binding's kernels all at once first (the
# session's builder tunes them there under a model budget: autotune/model_tune.py).
KernelBuilder = Callable[[Op, Mapping[sympy.Symbol, int]], KernelFn]


class RuntimeInputError(ValueError):
    """The call's tensors do not match what the graph was compiled for."""


def torch_dtype(dtype: DType) -> torch.dtype:
    return getattr(torch, dtype.name)


def concrete_shape(t: TensorType, bindings: Mapping[sympy.Symbol, int]) -> tuple[int, ...]:
    shape = t.specialize(dict(bindings)).shape if not t.is_static else t.shape
    for d in shape:
        if not isinstance(d, int):
            raise RuntimeInputError(f"dimension {d} of {t} is not bound by the inputs")
    return tuple(shape)  # type: ignore[return-value]


def bind_symbols(graph: Graph, tensors: Sequence[torch.Tensor]) -> dict[sympy.Symbol, int]:
    """Bind the symbols of the graph inputs' shapes to the sizes of ``tensors``."""
    if len(tensors) != len(graph.inputs):
        raise RuntimeInputError(
            f"graph @{graph.name} takes {len(graph.inputs)} tensors, got {len(tensors)}")
    bindings: dict[sympy.Symbol, int] = {}
    for v, t in zip(graph.inputs, tensors):
        if t.dim() != v.type.rank:
            raise RuntimeInputError(f"input %{v.name} expects rank {v.type.rank} ({v.type}), "
                                    f"got shape {tuple(t.shape)}")
        for d, size in zip(v.type.shape, t.shape):
            if isinstance(d, sympy.Symbol):
                if bindings.setdefault(d, int(size)) != int(size):
                    raise RuntimeInputError(
                        f"symbol {d} is {bindings[d]} for one input but {int(size)} for %{v.name}")
    for v, t in zip(graph.inputs, tensors):  # expressions like 2*s0 must agree too
        if concrete_shape(v.type, bindings) != tuple(t.shape):
            raise RuntimeInputError(f"input %{v.name} expects {v.type}, got shape {tuple(t.shape)}")
    return bindings


ALIGNMENT = 64  # bytes; what TVM's kernels assume of every buffer


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 64-byte aligned, copied only when it is not."""
    t = t.contiguous()
    if t.data_ptr() % ALIGNMENT:
        t = t.clone()  # a fresh allocation from torch's (aligned) allocator
    return t


class InterpretedKernel:
    """A kernel run by the reference interpreter: the stand-in when a build fails."""

    def __init__(self, op: Op, reason: str = "") -> None:
        self.op = op
        self.reason = reason

    def __call__(self, *tensors: torch.Tensor) -> None:
        n = len(self.op.inputs)
        for out, value in zip(tensors[n:], run_graph(self.op.body, list(tensors[:n]))):
            out.copy_(value)


# ---------------------------------------------------------------- plan steps
# Each step reads and writes slots of the environment list ``env``.

@dataclass(frozen=True, slots=True)
class KernelStep:
    name: str
    fn: KernelFn
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    fresh: tuple[tuple[int, tuple[int, ...], Any], ...]  # (slot, shape, dtype) allocated per call
    device: Any = None  # where the inputs live (a cuda graph's buffers live there too)
    # precomputed for the hot path (see plan_graph): the slots of inputs then outputs, and
    # the kernel's innermost launch function (``fast_call``) when it has one
    args: tuple[int, ...] = ()
    launch: KernelFn | None = None

    def __post_init__(self) -> None:
        if not self.args:
            object.__setattr__(self, "args", self.inputs + self.outputs)

    def __call__(self, env: list) -> None:
        if self.fresh:
            for slot, shape, dtype in self.fresh:
                env[slot] = torch.empty(shape, dtype=dtype, device=self.device)
        (self.launch or self.fn)(*[env[i] for i in self.args])


@dataclass(frozen=True, slots=True)
class ViewStep:
    source: int
    target: int
    shape: tuple[int, ...]

    def __call__(self, env: list) -> None:
        env[self.target] = env[self.source].reshape(self.shape)


@dataclass(frozen=True, slots=True)
class NarrowStep:
    """A graph output that is a slice of another value: a strided view, as eager returns."""
    source: int
    target: int
    axis: int
    start: int
    length: int

    def __call__(self, env: list) -> None:
        env[self.target] = env[self.source].narrow(self.axis, self.start, self.length)


@dataclass(frozen=True, slots=True)
class FallbackStep:
    op: Op
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def __call__(self, env: list) -> None:
        # custom operator libraries too (torchvision::nms): a graph here was built from the
        # user's model in this process, or loaded from an artifact whose every fallback was
        # held to the ATen allow-list at load (artifact_load)
        results = run_fallback(self.op, [env[i] for i in self.inputs], custom_ops=True)
        for slot, value in zip(self.outputs, results):
            env[slot] = aligned(value)  # what kernels downstream expect


@dataclass(frozen=True, slots=True)
class InterpretStep:
    """A top-level compute op the passes left unfused: run it as a one-op graph."""

    graph: Graph
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def __call__(self, env: list) -> None:
        results = run_graph(self.graph, [env[i] for i in self.inputs])
        for slot, value in zip(self.outputs, results):
            env[slot] = aligned(value)


Step = KernelStep | ViewStep | FallbackStep | InterpretStep


@dataclass
class BufferStats:
    intermediates: int = 0  # kernel results that live in planned buffers
    buffers: int = 0        # distinct buffers allocated for them
    bytes: int = 0

    def __str__(self) -> str:
        return (f"{self.intermediates} intermediates in {self.buffers} buffers "
                f"({self.bytes / 1e6:.2f} MB)")


@dataclass
class ExecutionPlan:
    """Everything needed to run the graph for one binding of its symbols."""

    steps: list[Step]
    template: list  # the environment with constants and planned buffers filled in
    input_slots: tuple[int, ...]
    output_slots: tuple[int, ...]
    clone_outputs: frozenset[int]  # output positions that would alias an input or a constant
    check_outputs: frozenset[int]  # fallback-made outputs: clone if they alias an input
    const_storages: frozenset[int] = frozenset()
    buffer_stats: BufferStats = field(default_factory=BufferStats)
    # bounds checks of index tensors that are graph inputs (bounds.py), by input position:
    # run before the plan (or its CUDA graph's replay)
    input_checks: tuple[Callable[[Sequence[Any]], None], ...] = ()

    def run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        env = list(self.template)
        for slot, t in zip(self.input_slots, tensors):
            env[slot] = t
        for step in self.steps:
            step(env)
        outs = [env[s] for s in self.output_slots]
        for i in self.clone_outputs:
            outs[i] = outs[i].clone()
        if self.check_outputs:
            shared = {t.untyped_storage().data_ptr() for t in tensors} | self.const_storages
            for i in self.check_outputs:
                if outs[i].untyped_storage().data_ptr() in shared:
                    outs[i] = outs[i].clone()
        return outs


def plan_graph(graph: Graph, bindings: Mapping[sympy.Symbol, int], kernels: Mapping[str, KernelFn],
               constants: Mapping[str, torch.Tensor], device: Any = None) -> ExecutionPlan:
    """Lay out slots, steps and the liveness-based buffer plan for ``graph``.

    ``kernels`` maps each kernel op's first result name to its built kernel;
    ``constants`` maps each const op's result name to its tensor.
    """
    slots: dict[str, int] = {}

    def slot(v: Value) -> int:
        return slots.setdefault(v.name, len(slots))

    input_slots = tuple(slot(v) for v in graph.inputs)
    # Alias roots: the storages a value may look at. Inputs, constants and kernel
    # results own a storage; a reshape looks at its input's; a fallback (or an
    # interpreted op) may return a view of any of its inputs.
    roots: dict[str, frozenset[str]] = {v.name: frozenset({v.name}) for v in graph.inputs}
    external = {v.name for v in graph.inputs}
    kernel_results: dict[str, Value] = {}
    last_use: dict[str, int] = {}
    maybe_view: set[str] = set()
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            for r in roots[v.name]:
                last_use[r] = i
        if op.name == "const" or made_once(op, constants):
            roots[op.result.name] = frozenset({op.result.name})
            external.add(op.result.name)
        elif op.name == "kernel":
            for r in op.results:
                roots[r.name] = frozenset({r.name})
                kernel_results[r.name] = r
        elif op.name == "reshape" or is_narrow(op):
            roots[op.result.name] = roots[op.inputs[0].name]
        else:
            shared = frozenset().union(*(roots[v.name] for v in op.inputs))
            for r in op.results:
                roots[r.name] = shared
                maybe_view.add(r.name)
    fresh_roots = {r for v in graph.outputs for r in roots[v.name]} & set(kernel_results)

    # Greedy buffer assignment in execution order; a buffer freed after step i is
    # reusable from step i + 1 (never by the same kernel: in-place is not safe).
    free: dict[tuple[Any, int], list[torch.Tensor]] = {}
    assigned: dict[str, torch.Tensor] = {}
    stats = BufferStats()
    releases: dict[int, list[str]] = {}
    for name, i in last_use.items():
        releases.setdefault(i, []).append(name)
    for i, op in enumerate(graph.ops):
        if op.name == "kernel":
            for r in op.results:
                if r.name in fresh_roots:
                    continue
                shape = concrete_shape(r.type, bindings)
                dtype = torch_dtype(r.type.dtype)
                numel = 1
                for d in shape:
                    numel *= d
                pool = free.setdefault((dtype, numel), [])
                if pool:
                    buf = pool.pop()
                else:
                    buf = torch.empty(numel, dtype=dtype, device=device)
                    stats.buffers += 1
                    stats.bytes += numel * buf.element_size()
                stats.intermediates += 1
                assigned[r.name] = buf
                if r.name not in last_use:  # never read: free right away
                    releases.setdefault(i, []).append(r.name)
        for name in releases.get(i, []):
            if name in assigned:
                buf = assigned[name]
                free.setdefault((buf.dtype, buf.numel()), []).append(buf)

    steps: list[Step] = []
    consts: dict[int, torch.Tensor] = {}
    input_checks: list = []
    view_of: dict[int, int] = {}  # a reshape's slot -> the slot it views
    for op in graph.ops:
        if op.name == "const" or made_once(op, constants):
            if op.result.name in constants:  # not an f32 array held for its bf16 cast only
                consts[slot(op.result)] = constants[op.result.name]
        elif op.name == "kernel":
            fresh = tuple((slot(r), concrete_shape(r.type, bindings), torch_dtype(r.type.dtype))
                          for r in op.results if r.name in fresh_roots)
            fn = kernels[op.results[0].name]
            ins, outs = tuple(slot(v) for v in op.inputs), tuple(slot(r) for r in op.results)
            steps.extend(_index_checks(op, ins, bindings, consts, view_of, input_slots, input_checks))
            steps.append(KernelStep(op.attr("name"), fn, ins, outs, fresh, device, ins + outs,
                                    getattr(fn, "fast_call", None)))
        elif op.name == "reshape":
            view_of[slot(op.result)] = view_of.get(slot(op.inputs[0]), slot(op.inputs[0]))
            steps.append(ViewStep(slot(op.inputs[0]), slot(op.result),
                                  concrete_shape(op.result.type, bindings)))
        elif is_narrow(op):
            axis = op.attr("axis") % op.result.type.rank
            steps.append(NarrowStep(slot(op.inputs[0]), slot(op.result), axis, op.attr("start"),
                                    concrete_shape(op.result.type, bindings)[axis]))
        elif op.name == "fallback":
            steps.append(FallbackStep(op, tuple(slot(v) for v in op.inputs),
                                      tuple(slot(r) for r in op.results)))
        else:
            one = Graph(op.name, op.inputs, (op,), op.results, graph.constants)
            steps.append(InterpretStep(one, tuple(slot(v) for v in op.inputs),
                                       tuple(slot(r) for r in op.results)))
    output_slots = tuple(slot(v) for v in graph.outputs)
    template = [None] * len(slots)
    for s, t in consts.items():
        template[s] = t
    for name, buf in assigned.items():
        r = kernel_results[name]
        template[slots[name]] = buf.view(concrete_shape(r.type, bindings))

    clone, check = set(), set()
    for i, v in enumerate(graph.outputs):
        if v.name in maybe_view:
            check.add(i)  # decided per call: clone only if it shares an input's storage
        elif roots[v.name] & external:
            clone.add(i)  # an input, a constant or a view of one: never hand those out
    const_storages = frozenset(t.untyped_storage().data_ptr() for t in consts.values())
    return ExecutionPlan(steps, template, input_slots, output_slots, frozenset(clone),
                         frozenset(check), const_storages, stats, tuple(input_checks))


def _index_checks(op: Op, ins: tuple[int, ...], bindings: Mapping[sympy.Symbol, int],
                  consts: Mapping[int, torch.Tensor], view_of: Mapping[int, int],
                  input_slots: tuple[int, ...], input_checks: list) -> list:
    """The bounds checks of a kernel's index tensors (bounds.py): a constant's now, a graph
    input's before the plan runs (into ``input_checks``); the others as steps, returned."""
    steps = []
    size_of = lambda v, axis: concrete_shape(v.type, bindings)[axis]  # noqa: E731
    for check in kernel_index_checks(op, ins, size_of):
        root = view_of.get(check.slot, check.slot)
        if check.graph is None and root in consts:
            check({check.slot: consts[root]})  # raises now: every call would
        elif check.graph is None and root in input_slots:  # a reshape checks as its source
            input_checks.append(replace(check, slot=input_slots.index(root)))
        else:
            steps.append(check)
    return steps


def constant_tensors(graph: Graph) -> dict[str, torch.Tensor]:
    """Every constant of the top level as a torch tensor, made once per graph: each
    ``const`` op's value, and each constant ``cast`` (how a bf16 weight is held: numpy
    has no bfloat16) cast now. An f32 array read only by its casts is not kept, so a
    bf16 weight sits in memory once, as bf16."""
    out: dict[str, torch.Tensor] = {}
    casts: set[str] = set()
    read = {v.name for v in graph.outputs}  # what something other than a constant cast reads
    for op in graph.ops:
        if op.name == "const":
            # a copy into torch's aligned memory; the graph's arrays stay untouched
            array = np.ascontiguousarray(graph.const_data(op))
            out[op.result.name] = aligned(torch.from_numpy(array).clone())
        elif is_constant_cast(op, out):
            out[op.result.name] = aligned(out[op.inputs[0].name].to(torch_dtype(op.result.type.dtype)))
            casts.add(op.result.name)
        else:
            read.update(v.name for v in op.inputs)
    return {k: t for k, t in out.items() if k in read or k in casts}


def is_constant_cast(op: Op, constants: Mapping[str, Any]) -> bool:
    """A top-level ``cast`` of a constant: made once with the constants, not run per call."""
    return op.name == "cast" and op.inputs[0].name in constants


def made_once(op: Op, constants: Mapping[str, Any]) -> bool:
    """A constant ``cast`` that ``constant_tensors`` made (its f32 source may be gone)."""
    return op.name == "cast" and op.result.name in constants


class CompiledGraph:
    """An optimized graph ready to run: one execution plan per binding of its symbols.

    ``build_kernel(op, bindings)`` is called once per kernel op and binding (the
    pipeline passes the session's ``KernelBuilder``); static graphs have exactly one plan.
    """

    def __init__(self, graph: Graph, build_kernel: KernelBuilder,
                 on_specialize: Callable[[dict, ExecutionPlan], None] | None = None,
                 cuda_graphs: bool | None = None) -> None:
        self.graph = graph
        self.cuda_graphs = cuda_graphs  # None: on unless TILEFX_CUDA_GRAPHS=0 (cuda_graph.py)
        self._graphed: dict[int, Any] = {}  # id(plan) -> cuda_graph.GraphedPlan or Decision
        self._build_kernel = build_kernel
        self._constants = constant_tensors(graph)
        self._device_constants: dict[Any, dict[str, torch.Tensor]] = {}  # cuda copies of them
        self._plans: dict[tuple, ExecutionPlan] = {}
        self._on_specialize = on_specialize
        self.record: Any = None  # the pipeline's CompileRecord, for report()

    @property
    def plans(self) -> dict[tuple, ExecutionPlan]:
        return dict(self._plans)

    def plan_for(self, bindings: Mapping[sympy.Symbol, int], device: Any = None) -> ExecutionPlan:
        key = tuple(sorted((s.name, v) for s, v in bindings.items()))
        if device is not None and str(device) != "cpu":
            key += (("device", str(device)),)
        else:
            device = None
        plan = self._plans.get(key)
        if plan is None:
            ops = [op for op in self.graph.ops if op.name == "kernel"]
            prepare = getattr(self._build_kernel, "prepare", None)
            if prepare is not None:
                prepare(ops, bindings)
            kernels = {op.results[0].name: self._build_kernel(op, bindings) for op in ops}
            if device is not None and device not in self._device_constants:  # once per device
                self._device_constants[device] = {k: v.to(device) for k, v in self._constants.items()}
            constants = self._constants if device is None else self._device_constants[device]
            plan = plan_graph(self.graph, bindings, kernels, constants, device)
            self._plans[key] = plan
            log.debug("planned @%s for %s: %d steps, %s", self.graph.name, dict(key),
                      len(plan.steps), plan.buffer_stats)
            if self._on_specialize is not None:
                self._on_specialize(dict(bindings), plan)
        return plan

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        tensors = tuple(aligned(t) for t in tensors)
        for v, t in zip(self.graph.inputs, tensors):
            if t.dtype != torch_dtype(v.type.dtype):
                raise RuntimeInputError(f"input %{v.name} expects {v.type.dtype.name}, got {t.dtype}")
        device = tensors[0].device if tensors else None
        plan = self.plan_for(bind_symbols(self.graph, tensors), device)
        for check in plan.input_checks:
            check(tensors)
        with torch.no_grad():
            if device is not None and device.type == "cuda":  # replayed from a CUDA graph when it can
                from tilefx.compiler.cuda_graph import run_graphed  # cycle: cuda_graph imports this module

                return run_graphed(self, plan, tensors, device)
            return plan.run(tensors)
