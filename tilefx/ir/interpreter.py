"""The reference interpreter: what every IR op means, written in PyTorch.

``run_graph(graph, inputs)`` executes a graph op by op in eager PyTorch. It
is the ground truth the other stages are tested against: a pass must not
change ``run_graph``'s results, a generated kernel must match the reference
run of its ``kernel`` op.

- One function per op, registered with ``@reference("add")``; a test checks
  that every op in ``OPS`` has one. A reference gets a ``RefContext`` (the op,
  its graph, its attributes with symbols replaced by sizes) and the input
  tensors, and returns a tensor or a sequence of tensors.
- Symbolic dims are bound from the actual tensors: the graph inputs' types
  are matched against the given shapes (``s0`` = 8), and so are the results
  of every op, which binds the symbols a fallback introduces and checks that
  shape inference agrees with what PyTorch computed.
- The result dtype declared in the IR is the meaning: a reference whose torch
  call promotes (``sum`` of ``i32`` gives ``i64`` in torch) is cast back.
  Integer ``div`` truncates toward zero.
- ``kernel`` ops run their body; ``fallback`` ops run the named PyTorch op
  (``run_fallback``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import sympy
import torch

from tilefx.ir.graph import Graph, Op
from tilefx.ir.printer import print_op
from tilefx.ir.types import DType, TensorType

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tilefx.ir.interpreter")


class InterpreterError(RuntimeError):
    """The reference run failed; the message names the graph, op or input at fault."""


@dataclass(frozen=True)
class RefContext:
    op: Op
    graph: Graph
    attrs: dict[str, Any]  # the op's attributes, symbolic dims replaced by ints
    bindings: Mapping[sympy.Symbol, int]


RefFn = Callable[..., Any]
REFERENCES: dict[str, RefFn] = {}


def reference(*names: str) -> Callable[[RefFn], RefFn]:
    """Register ``fn(ctx, *inputs)`` as the meaning of the named op(s)."""
    def wrap(fn: RefFn) -> RefFn:
        for name in names:
            if name in REFERENCES:
                raise ValueError(f"reference for op {name!r} registered twice")
            REFERENCES[name] = fn
        return fn
    return wrap


def torch_dtype(dtype: DType) -> torch.dtype:
    return getattr(torch, dtype.name)


def run_graph(graph: Graph, inputs: Sequence[torch.Tensor],
              bindings: Mapping[sympy.Symbol, int] | None = None) -> list[torch.Tensor]:
    """Run ``graph`` on ``inputs`` with the reference semantics; returns its outputs."""
    # registers every op's reference; lazy: a cycle, reference_ops imports this module
    from tilefx.ir import reference_ops  # noqa: F401

    if len(inputs) != len(graph.inputs):
        raise InterpreterError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    bound: dict[sympy.Symbol, int] = dict(bindings or {})
    env: dict[str, torch.Tensor] = {}
    for value, tensor in zip(graph.inputs, inputs):
        if torch_dtype(value.type.dtype) != tensor.dtype:
            raise InterpreterError(f"graph @{graph.name} input %{value.name} is {value.type} "
                                   f"but got a {tensor.dtype} tensor")
        env[value.name] = tensor
    bind_shapes([v.type for v in graph.inputs], [tuple(t.shape) for t in inputs], bound,
                what=f"graph @{graph.name} inputs")
    for op in graph.ops:
        args = [env[v.name] for v in op.inputs]
        try:
            results = _run_op(op, graph, args, bound)
        except InterpreterError:
            raise
        except Exception as e:
            raise InterpreterError(f"graph @{graph.name}: op `{print_op(op)}` failed: "
                                   f"{type(e).__name__}: {e}") from e
        for value, tensor in zip(op.results, results):
            env[value.name] = tensor
    return [env[v.name] for v in graph.outputs]


def _run_op(op: Op, graph: Graph, args: list[torch.Tensor],
            bound: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
    fn = REFERENCES.get(op.name)
    if fn is None:
        raise InterpreterError(f"no reference semantics for op {op.name!r}")
    ctx = RefContext(op, graph, {k: substitute(v, bound) for k, v in op.attrs}, bound)
    out = fn(ctx, *args)
    results = [out] if not isinstance(out, (list, tuple)) else list(out)
    if len(results) != len(op.results):
        raise InterpreterError(f"op {op.name} produced {len(results)} tensors for "
                               f"{len(op.results)} results")
    bind_shapes([r.type for r in op.results], [tuple(t.shape) for t in results], bound,
                what=f"op {op.name} results {[str(r) for r in op.results]}")
    return [t if t.dtype == torch_dtype(r.type.dtype) else t.to(torch_dtype(r.type.dtype))
            for t, r in zip(results, op.results)]


def substitute(value: Any, bindings: Mapping[sympy.Symbol, int]) -> Any:
    """An attribute value with its symbolic dims replaced by the bound sizes."""
    if isinstance(value, tuple):
        return tuple(substitute(v, bindings) for v in value)
    if isinstance(value, sympy.Expr):
        out = value.subs(bindings)
        if not out.is_Integer:
            raise InterpreterError(f"symbolic value {value} has unbound symbols {sorted(map(str, out.free_symbols))}")
        return int(out)
    return value


def bind_shapes(types: Sequence[TensorType], shapes: Sequence[tuple[int, ...]],
                bound: dict[sympy.Symbol, int], what: str) -> None:
    """Bind the symbols in ``types`` to the sizes in ``shapes`` and check every dim.

    Plain symbols bind directly; an expression dim (``{2*s0}``) whose only
    unbound symbol appears nowhere else is solved for that symbol.
    """
    pending: list[tuple[Any, int, str]] = []
    for i, (t, shape) in enumerate(zip(types, shapes)):
        where = f"{what}[{i}]: expected {t}, got shape {list(shape)}"
        if len(shape) != t.rank:
            raise InterpreterError(f"{where} (rank differs)")
        for d, size in zip(t.shape, shape):
            if isinstance(d, int):
                if d != size:
                    raise InterpreterError(where)
            elif isinstance(d, sympy.Symbol):
                if bound.setdefault(d, size) != size:
                    raise InterpreterError(f"{where} ({d} is already {bound[d]})")
            else:
                pending.append((d, size, where))
    for d, size, where in pending:
        value = d.subs(bound)
        free = value.free_symbols
        if len(free) == 1:
            (sym,) = free
            solutions = [s for s in sympy.solve(sympy.Eq(value, size), sym) if s.is_Integer and s > 0]
            if len(solutions) == 1:
                bound[sym] = int(solutions[0])
                value = d.subs(bound)
        if value.free_symbols or int(value) != size:
            raise InterpreterError(f"{where} ({d} = {value})")


def run_fallback(op: Op, tensors: Sequence[torch.Tensor], custom_ops: bool = False) -> list[torch.Tensor]:
    """Run a ``fallback`` op: call its PyTorch target on the decoded args.

    ``target`` is a qualified overload name (``aten::fft_rfft.default``, or
    ``aten::relu`` for the default overload); ``args`` is JSON
    ``{"args": [...], "kwargs": {...}}`` in which ``{"%": i}`` is the op's
    i-th input, ``{"dtype": "float32"}`` a dtype, ``{"device": "cpu"}`` a
    device. Tensor results are flattened in order.
    """
    fn = resolve_target(op.attr("target"), custom_ops)
    try:
        call = json.loads(op.attr("args"))
        args = _decode(call["args"], tensors)
        # decoded per value: the kwargs dict itself is a container, never a marker
        # (``{"dtype": {"dtype": "float64"}}`` is the kwarg dtype=torch.float64)
        kwargs = {k: _decode(v, tensors) for k, v in call["kwargs"].items()}
    except (TypeError, KeyError, ValueError, IndexError, RecursionError) as e:
        raise InterpreterError(f"fallback {op.attr('target')}: bad args {op.attr('args')!r}: {e}") from None
    out = fn(*args, **kwargs)
    return _flatten_tensors(out)


# A fallback target is data from IR text (maybe an artifact someone else made), so it may
# only name an operator of these namespaces: ``torch.ops.<anything>`` also reaches
# ``torch.ops.load_library`` (dlopen) and ``torch.ops.import_module``.
FALLBACK_NAMESPACES = ("aten", "prims", "quantized")
# Operators of those namespaces that touch files or the process, not tensors.
_DENIED_OPS = frozenset({"from_file", "save", "load", "_print"})
# Dunder names that are real ATen operators (``a & b``...); every other dunder is refused.
_DUNDER_OPS = frozenset(f"__{n}__" for n in (
    "and", "or", "xor", "lshift", "rshift", "iand", "ior", "ixor", "ilshift", "irshift"))
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_fallback_target(target: Any, custom_ops: bool = False) -> str | None:
    """What is wrong with a qualified fallback target, from its text alone; None if fine.

    A name without ``::`` is left to the verifier ("not a qualified op name"); it
    resolves to nothing. Used by the parser, so bad text fails before any torch import.
    ``custom_ops``: any namespace (an operator library the process has loaded, such as
    ``torchvision::nms``), for graphs this process built from the user's own model;
    text and artifacts from disk get the ATen allow-list.
    """
    if not isinstance(target, str):
        return f"fallback target {target!r} is not a string"
    namespace, sep, rest = target.partition("::")
    if not sep:
        return None
    parts = rest.split(".")
    if namespace not in FALLBACK_NAMESPACES and not (custom_ops and _PART.match(namespace)):
        return (f"fallback target {target!r}: namespace {namespace!r} is not allowed (only "
                f"{', '.join(FALLBACK_NAMESPACES)} operators run as fallbacks)")
    if not 1 <= len(parts) <= 2 or not all(_PART.match(p) for p in parts):
        return f"fallback target {target!r} is not like 'aten::add.Tensor'"
    if any(p.startswith("__") and p not in _DUNDER_OPS for p in parts) or parts[0] in _DENIED_OPS:
        return f"fallback target {target!r} is not an operator a fallback may run"
    return None


def resolve_target(target: str, custom_ops: bool = False) -> Callable[..., Any]:
    """The ATen operator (``OpOverload`` / ``OpOverloadPacket``) a fallback names, nothing else
    (``custom_ops``: or another loaded library's operator, see ``check_fallback_target``)."""
    problem = check_fallback_target(target, custom_ops)
    if problem is None and "::" not in str(target):
        problem = f"fallback target {target!r} is not like 'aten::add.Tensor'"
    if problem:
        raise InterpreterError(problem)
    namespace, _, rest = str(target).partition("::")
    try:
        obj: Any = getattr(torch.ops, namespace)
        for part in rest.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # noqa: BLE001 - torch raises AttributeError or RuntimeError
        raise InterpreterError(f"fallback target {target!r} is not a PyTorch op: {e}") from None
    # only an operator is ever called: any other attribute on the way is refused
    if not isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        raise InterpreterError(f"fallback target {target!r} is not a PyTorch operator "
                               f"(it is a {type(obj).__name__})")
    return obj


def _decode(x: Any, tensors: Sequence[torch.Tensor]) -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors) for v in x]
    if isinstance(x, dict):
        if set(x) == {"%"}:
            return tensors[x["%"]]
        if set(x) == {"dtype"} and isinstance(x["dtype"], str):
            return _torch_constant(x["dtype"], torch.dtype)
        if set(x) == {"device"} and isinstance(x["device"], str):
            return torch.device(x["device"])
        if set(x) in ({"layout"}, {"memory_format"}) and isinstance(next(iter(x.values())), str):
            (name,) = x.values()
            kind = torch.layout if "layout" in x else torch.memory_format
            return _torch_constant(str(name).removeprefix("torch."), kind)
        return {k: _decode(v, tensors) for k, v in x.items()}
    return x


def _torch_constant(name: str, kind: type) -> Any:
    """``torch.<name>`` when it is a ``kind`` (a dtype, a layout...): args are data, not code."""
    value = getattr(torch, name, None) if _PART.match(name) and not name.startswith("_") else None
    if not isinstance(value, kind):
        raise ValueError(f"{name!r} is not a torch.{kind.__name__}")
    return value


def _flatten_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten_tensors(item)]
    if out is None:
        return []
    if isinstance(out, (bool, int, float)):
        log.debug("fallback returned a Python scalar %r; passed on as a 0-d tensor", out)
        return [torch.tensor(out)]
    raise InterpreterError(f"fallback returned {type(out).__name__}, not tensors")
