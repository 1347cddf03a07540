"""Capture: turn a PyTorch model into one ATen-level ``torch.fx`` graph.

Two entry points produce the same ``Captured`` record:

- ``capture(module_or_fn, example_args)`` uses ``torch.export`` (non-strict),
  then ``run_decompositions`` with torch's default table *minus* every op the
  frontend lowers whole (``scaled_dot_product_attention`` stays one op so it
  becomes one IR ``attention``; ``silu``, ``hardswish``... stay one op).
- ``capture_dynamo(gm, example_inputs)`` is the ``torch.compile`` backend path:
  dynamo hands us its graph with the parameters and buffers of inlined modules
  as extra inputs. We classify them, bake them in as constants (like inductor's
  freezing: mutating a weight after compiling needs a recompile) and export the
  rest the same way. Weights the graph itself updates in place (running stats,
  caches) stay inputs, fed and written back through dynamo's arguments.

In both, parameters, buffers and lifted constant tensors become ``constants``
(placeholder name -> tensor); the user's tensors are the graph's inputs, in the
order ``flatten_inputs`` produces them. A buffer or parameter that the model
updates in place is the exception: it becomes a graph input after the user's
tensors and its new value a graph output after the user's outputs
(``mutation.py`` says why and how the runtime copies it back).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import re
import warnings
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.export.graph_signature import InputKind, OutputKind
from torch.utils import _pytree as pytree

from tilefx.compiler.lowerings import LOWERINGS
from tilefx.compiler.mutation import Mutation, MutationError

log = logging.getLogger("tilefx.capture")


@dataclass(frozen=True)
class Captured:
    graph_module: torch.fx.GraphModule  # ATen-level, placeholders for weights and inputs
    input_names: tuple[str, ...]  # placeholders of the user's tensors, in flat order, then state
    constants: Mapping[str, torch.Tensor]  # weight placeholder -> value
    constant_names: Mapping[str, str]  # weight placeholder -> readable name ("fc1.weight")
    output_names: tuple[str, ...]  # fx nodes of the tensor outputs, in flat order
    out_spec: pytree.TreeSpec  # rebuilds the user's output structure
    # Non-tensor leaves of the flat output (position, value): export bakes them in.
    output_constants: tuple[tuple[int, Any], ...] = ()
    in_spec: pytree.TreeSpec | None = None  # structure of (args, kwargs)
    # Positions among the flattened call arguments that are graph inputs (the others
    # were non-tensors baked in at capture, or weights on the dynamo path).
    input_positions: tuple[int, ...] = ()
    baked_inputs: Mapping[str, Any] = field(default_factory=dict)  # non-tensor placeholders
    # Buffers/parameters updated in place: the last len(state_names) graph inputs, by name
    # ("cache", "bn.running_mean"); on the export path the runtime reads them off the module.
    state_names: tuple[str, ...] = ()
    # Every tensor updated in place; their new values are the last graph outputs.
    mutations: tuple[Mutation, ...] = ()

    def flatten_inputs(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None
                       ) -> list[torch.Tensor]:
        """The graph inputs for a call with ``args``/``kwargs`` (export path)."""
        leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
        if self.in_spec is not None and spec != self.in_spec:
            raise TypeError(f"inputs do not have the structure seen at capture:\n{spec}\nvs\n{self.in_spec}")
        return [leaves[i] for i in self.input_positions]

    def unflatten_outputs(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The user's output structure from the graph outputs (in ``output_names`` order;
        the new values of updated tensors, if still there at the end, are left out)."""
        flat: list[Any] = list(tensors)
        if self.mutations and len(flat) == len(self.output_names):
            flat = flat[:len(flat) - len(self.mutations)]
        for pos, value in self.output_constants:
            flat.insert(pos, value)
        return pytree.tree_unflatten(flat, self.out_spec)


class _FunctionModule(torch.nn.Module):
    """Lets torch.export trace a plain function."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """torch's default decompositions minus the ops the frontend lowers whole.

    ``torch.fft.*`` also stays whole: it runs in PyTorch either way, and one
    fallback named ``fft_rfft`` reads better in reports than its ATen pieces.
    """
    table = torch.export.default_decompositions()
    for op in list(table):
        if op in LOWERINGS or str(op).startswith("aten.fft_"):
            del table[op]
    return table


def capture(fn_or_module: Callable[..., Any], example_args: tuple, dynamic_batch: bool = False,
            example_kwargs: Mapping[str, Any] | None = None) -> Captured:
    """Export ``fn_or_module(*example_args)`` to an ATen graph (module in eval mode)."""
    is_module = isinstance(fn_or_module, torch.nn.Module)
    module = fn_or_module if is_module else _FunctionModule(fn_or_module)
    args, kwargs = tuple(example_args), dict(example_kwargs or {})
    # Restore each submodule's own flag afterwards (train(True) would recurse).
    modes = [(m, m.training) for m in module.modules()]
    if any(training for _, training in modes):
        log.info("capture: %s is in training mode; capturing it in eval mode",
                 type(module).__name__)
    module.eval()
    try:
        with _quiet_export():
            ep = _export_refusing_globals(module, args, kwargs, dynamic_batch, not is_module)
    finally:
        for m, training in modes:
            m.training = training
    return _from_exported(ep)


@contextlib.contextmanager
def _quiet_export() -> Any:
    """torch.export's internals warn about their own pytree use (``LeafSpec``) on every
    call; the user can do nothing about it, so it is not shown. When the model rejects the
    inputs (a shape mismatch), fake tensors log the whole traceback (~270 lines) before
    export raises the same error: the raised error is what the user sees."""
    fake = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake.level
    fake.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Tt]ree[Ss]pec.*", category=FutureWarning)
            yield
    finally:
        fake.setLevel(level)


def _export_refusing_globals(module: torch.nn.Module, args: tuple, kwargs: dict,
                             dynamic_batch: bool, varargs: bool) -> torch.export.ExportedProgram:
    """``_export`` then the decompositions; export's refusal of an in-place update of a
    tensor from outside the model (it names only ``lifted_tensor_0``) becomes a
    ``MutationError`` that says what to do."""
    try:
        ep = _export(module, args, kwargs, dynamic_batch, varargs)
        return ep.run_decompositions(decomposition_table())
    except RuntimeError as e:
        if "is mutated in the forward method" not in str(e):
            raise
        raise MutationError(
            f"the model updates a tensor in place that is neither an argument nor a buffer or "
            f"parameter of the model (a global or a closure variable; export says: {e}); "
            "register it with register_buffer (or pass it as an argument)") from None


def _export(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_batch: bool,
            varargs: bool) -> torch.export.ExportedProgram:
    if not dynamic_batch:
        return torch.export.export(module, args, kwargs, strict=False)
    tensors = [isinstance(a, torch.Tensor) and a.dim() > 0 for a in args]
    # First one batch symbol shared by every input (the common case, and it lets
    # shapes that mix inputs stay consistent); then one automatic dim per input,
    # which export keeps static where the model needs it; then static shapes.
    batch = torch.export.Dim("batch")
    attempts = [tuple({0: batch} if t else None for t in tensors),
                tuple({0: torch.export.Dim.AUTO} if t else None for t in tensors)]
    errors = []
    for specs in attempts:
        try:
            return torch.export.export(module, args, kwargs, strict=False,
                                       dynamic_shapes=(specs,) if varargs else specs)
        except Exception as e:  # export refuses (shapes tied to a constant, size 1...)
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    log.warning("capture: torch.export refused a dynamic batch dimension (%s); capturing "
                "static shapes", errors[-1])
    return torch.export.export(module, args, kwargs, strict=False)


def _from_exported(ep: torch.export.ExportedProgram,
                   readable: Mapping[str, str] | None = None) -> Captured:
    gm = ep.graph_module
    placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_args = out_node.args[0]
    # Buffers/parameters (by fqn) whose new value the graph returns.
    updated = {spec.target for spec in ep.graph_signature.output_specs
               if spec.kind in _MUTATION_KINDS and spec.kind != OutputKind.USER_INPUT_MUTATION}
    constants: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    inputs: list[str] = []
    state: list[str] = []  # placeholders of updated buffers/parameters
    state_names: list[str] = []
    baked: dict[str, Any] = {}
    positions: list[int] = []
    user_index = 0
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in updated:
            state.append(name)  # a live tensor at every call, never a baked constant
            state_names.append(spec.target)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target
            value = ep.state_dict[target] if target in ep.state_dict else ep.constants[target]
            constants[name] = value.detach()
            names[name] = (readable or {}).get(target, target)
        elif spec.kind == InputKind.USER_INPUT:
            val = placeholders[name].meta.get("val")
            if isinstance(val, torch.Tensor):
                inputs.append(name)
                positions.append(user_index)
            else:  # ints/floats/None: export specialized the graph on their value
                baked[name] = getattr(spec.arg, "value", val)
            user_index += 1
        else:
            raise NotImplementedError(f"capture: input {name!r} of kind {spec.kind.name} is not supported")
    if state:  # the graph's inputs: the user's tensors first, then the state (see mutation.py)
        last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        for name in state:
            last.append(placeholders[name])
            last = placeholders[name]
        gm.recompile()

    outputs: list[str] = []
    out_consts: list[tuple[int, Any]] = []
    pos = 0
    for spec, arg in zip(ep.graph_signature.output_specs, out_args):
        if spec.kind in _MUTATION_KINDS:
            continue
        if spec.kind != OutputKind.USER_OUTPUT:
            raise NotImplementedError(f"capture: output {spec.arg.name!r} of kind {spec.kind.name} "
                                      "is not supported by tilefx")
        if isinstance(arg, torch.fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor):
            outputs.append(arg.name)
        elif isinstance(arg, torch.fx.Node):
            raise NotImplementedError(f"capture: output {arg.name!r} is not a tensor")
        else:
            out_consts.append((pos, arg))
        pos += 1
    graph_inputs = inputs + state
    mutations = []
    for spec, arg in zip(ep.graph_signature.output_specs, out_args):
        if spec.kind not in _MUTATION_KINDS:
            continue
        if spec.kind == OutputKind.USER_INPUT_MUTATION:
            kind, where, name = "input", graph_inputs.index(spec.target), spec.target
        elif spec.target in state_names:
            where = len(inputs) + state_names.index(spec.target)
            kind, name = "buffer", (readable or {}).get(spec.target, spec.target)
        else:  # export lifted a tensor from outside the model (a global) and updates it
            raise MutationError(f"the model updates tensor {spec.target!r} in place, but it is "
                                "not a buffer or parameter of the model: register it with "
                                "register_buffer (or pass it as an argument)")
        mutations.append(Mutation(kind, name, where, len(outputs)))
        outputs.append(arg.name)
        log.debug("capture: %s %r is updated in place (new value %s)", kind, name, arg.name)
    return Captured(gm, tuple(graph_inputs), constants, names, tuple(outputs), ep.call_spec.out_spec,
                    tuple(out_consts), ep.call_spec.in_spec, tuple(positions), baked,
                    tuple(state_names), tuple(mutations))


def _mutation_kinds() -> frozenset[Any]:
    kinds = {OutputKind.BUFFER_MUTATION, OutputKind.USER_INPUT_MUTATION}
    if hasattr(OutputKind, "PARAMETER_MUTATION"):  # newer torch tells parameters apart
        kinds.add(OutputKind.PARAMETER_MUTATION)
    return frozenset(kinds)


_MUTATION_KINDS = _mutation_kinds()


# ---- dynamo backend path ---------------------------------------------------------

_SOURCE_NOISE = {"_modules", "_parameters", "_buffers", "modules", "parameters", "buffers",
                 "__closure__", "cell_contents"}


def _source_name(node: torch.fx.Node) -> str:
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None) or node.meta.get("_dynamo_source")
    if source is None:
        return ""
    name = source.name
    return name() if callable(name) else str(name)


def is_weight_placeholder(node: torch.fx.Node, example: Any) -> bool:
    """Dynamo lifts the parameters/buffers of inlined modules to graph inputs.

    Signs, strongest first: an ``nn.Parameter``; dynamo's static-input mark
    (params and buffers of inlined modules); a ``_parameters``/``_buffers``
    source, spelled in the placeholder's name when no source is kept.
    """
    if isinstance(example, torch.nn.Parameter):
        return True
    if (node.meta.get("tensor_dict") or {}).get("_dynamo_static_input_type"):
        return True
    source = _source_name(node)
    if "_parameters" in source or "_buffers" in source:
        return True
    return re.search(r"_(parameters|buffers)_", node.name) is not None


def readable_weight_name(node: torch.fx.Node) -> str:
    """``fc1.weight`` for ``L['self']._modules['fc1']._parameters['weight']`` (from the
    source, else from dynamo's placeholder name ``l_self_modules_fc1_parameters_weight_``)."""
    source = _source_name(node)
    if source:
        parts = re.findall(r"\[['\"]([^'\"]+)['\"]\]|\.([A-Za-z_][A-Za-z0-9_]*)", source)
        words = [a or b for a, b in parts]
        words = [w for w in words if w not in _SOURCE_NOISE][1:]  # [0] is the local ("self")
        if words:
            return ".".join(words)
    m = re.match(r"^(.*)_(?:parameters|buffers)_(.+?)_?$", node.name)
    if not m:
        return node.name
    path = m.group(1).split("_modules_")[1:]
    return ".".join(path + [m.group(2)])


class _DynamoWrapper(torch.nn.Module):
    """Calls dynamo's graph with the weights (now buffers) spliced back in."""

    def __init__(self, gm: torch.fx.GraphModule, slots: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.gm = gm
        self.slots = slots  # per gm input: ("user", None) | ("weight", buffer name) | ("baked", value)

    def forward(self, *user_args: Any) -> Any:
        it = iter(user_args)
        full = [next(it) if kind == "user" else getattr(self, v) if kind == "weight" else v
                for kind, v in self.slots]
        return self.gm(*full)


def capture_dynamo(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Captured:
    """Capture the graph dynamo gives a backend. ``input_positions`` tells which of
    dynamo's call arguments are graph inputs: the user tensors, then the weights the
    graph updates in place (the other weights and ints are baked in)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ValueError(f"capture_dynamo: {len(placeholders)} placeholders but "
                         f"{len(example_inputs)} example inputs")
    slots: list[tuple[str, Any]] = []
    weights: dict[str, torch.Tensor] = {}
    weight_position: dict[str, int] = {}
    readable: dict[str, str] = {}
    user_args: list[torch.Tensor] = []
    positions: list[int] = []
    for i, (node, example) in enumerate(zip(placeholders, example_inputs)):
        if isinstance(example, torch.Tensor) and is_weight_placeholder(node, example):
            buf = f"w{len(weights)}"
            weights[buf] = example.detach()
            weight_position[buf] = i
            readable[buf] = readable_weight_name(node)
            slots.append(("weight", buf))
        elif isinstance(example, torch.Tensor):
            slots.append(("user", None))
            user_args.append(example)
            positions.append(i)
        else:  # a SymInt/int size argument: specialize on the example's value
            slots.append(("baked", int(example) if isinstance(example, torch.SymInt) else example))
    wrapper = _DynamoWrapper(gm, slots)
    for buf, tensor in weights.items():
        wrapper.register_buffer(buf, tensor)
    log.debug("capture_dynamo: %d user inputs, %d weights baked in", len(user_args), len(weights))
    with _quiet_export():
        ep = torch.export.export(wrapper, tuple(user_args), strict=False)
        ep = ep.run_decompositions(decomposition_table())
    captured = _from_exported(ep, readable)
    # A weight the graph updates in place is fed from dynamo's argument (the live tensor)
    # and written back there; the others stay baked in.
    positions += [weight_position[buf] for buf in captured.state_names]
    return Captured(captured.graph_module, captured.input_names, captured.constants,
                    captured.constant_names, captured.output_names, captured.out_spec,
                    captured.output_constants, None, tuple(positions), captured.baked_inputs,
                    tuple(readable[buf] for buf in captured.state_names), captured.mutations)


_state = threading.local()  # .capturing > 0 while a decorated class is being captured


def capturing() -> bool:
    return getattr(_state, "capturing", 0) > 0


@contextmanager
def capture_mode(model: Any) -> Iterator[None]:
    """Eval mode and no grad for the capture, restoring each submodule's flag; a class
    decorated with ``tilefx.compile`` runs eagerly while it is being captured (``capturing``)."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    _state.capturing = getattr(_state, "capturing", 0) + 1
    try:
        for m in modules:
            m.training = False
        with torch.no_grad():
            yield
    finally:
        _state.capturing -= 1
        for m, flag in zip(modules, flags):
            m.training = flag
