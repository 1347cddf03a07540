"""Frontend: lower a captured ATen graph into a tilefx IR ``Graph``.

Nodes are visited in order; each maps to what it lowered to (see
``lowerings/registry.py``). Three things happen before a rule is asked:

- **constant evaluation**: a node whose tensor inputs are all known at compile
  time (weights, folded values, or none at all) and that is not random runs
  eagerly in torch; its result stays a lazy ``ConstTensor`` and becomes a
  ``const`` op only if a lowered op reads it (so ``permute(fc.weight)`` leaves
  one pre-transposed constant, not two);
- **symbolic ints** (``sym_size`` and arithmetic on sizes) map to sympy dims;
- ``operator.getitem`` picks one result of a multi-result node.

Then the node's rule runs. If there is none, or it raises ``Unsupported`` (or
fails, or produces a type that disagrees with torch's), the ops it emitted are
rolled back and the node becomes one ``fallback`` op that runs the ATen
overload in PyTorch; each kind of fallback is logged once and reported.
"""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch.fx.node import map_aggregate

from tilefx.compiler.capture import Captured
from tilefx.compiler.lowerings import LOWERINGS, ConstTensor, LoweringContext, Unsupported
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph, Value
from tilefx.ir.types import TensorType, dims_equal

log = logging.getLogger("tilefx.frontend")

# Keyword arguments that only choose a memory layout; IR values have no strides,
# so a fallback drops them (its result is made contiguous by the runtime anyway).
_LAYOUT_KWARGS = ("layout", "memory_format", "pin_memory")


@dataclass(frozen=True)
class FallbackInfo:
    target: str  # "aten._fft_r2c.default"
    nodes: tuple[str, ...]  # fx node names that run in PyTorch
    reason: str

    def __str__(self) -> str:
        return (f"{len(self.nodes)} x {self.target} will run in PyTorch ({self.reason}): "
                f"nodes {', '.join(self.nodes)}")


@dataclass(frozen=True)
class LoweringResult:
    graph: Graph
    fallbacks: list[FallbackInfo]
    symbols: dict[str, str]  # torch symbol -> IR symbol ("s17" -> "s0")


def lower_to_ir(captured: Captured, name: str = "main") -> LoweringResult:
    lowering = _Lowering(captured, GraphBuilder(name))
    graph = lowering.run()
    fallbacks = lowering.report()
    return LoweringResult(graph, fallbacks, lowering.ctx.symbol_map)


def overload_name(target: Any) -> str:
    """``aten::_fft_r2c.default``: the name ``fallback`` ops carry."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        raise Unsupported(f"{target} is not an ATen overload")
    return f"{schema.name}.{target._overloadname}"


class _Lowering:
    def __init__(self, captured: Captured, builder: GraphBuilder) -> None:
        self.captured = captured
        self.ctx = LoweringContext(builder)
        self.env: dict[str, Any] = {}
        self.fallbacks: dict[str, list[tuple[str, str]]] = {}  # target -> [(node, reason)]

    @property
    def b(self) -> GraphBuilder:
        return self.ctx.b

    # ---- driver ----------------------------------------------------------
    def run(self) -> Graph:
        cap = self.captured
        gm = cap.graph_module
        user = set(cap.input_names)
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if node.name in cap.constants:
                    self.env[node.name] = ConstTensor(cap.constants[node.name],
                                                      cap.constant_names.get(node.name, node.name))
                elif node.name in user:
                    self.env[node.name] = self.b.input(self.ctx.type_of(node.meta["val"]), node.name)
                else:
                    self.env[node.name] = cap.baked_inputs.get(node.name, node.meta.get("val"))
            elif node.op == "get_attr":
                self.env[node.name] = ConstTensor(_fetch_attr(gm, node.target), node.target)
            elif node.op == "call_function":
                if node.users:  # dead nodes and assertions (_assert_scalar...) emit nothing
                    self.env[node.name] = self.lower_node(node)
            elif node.op != "output":
                raise NotImplementedError(f"frontend: fx node {node.name!r} of kind {node.op}")
        outputs = [self.as_value(self.env[n], n) for n in cap.output_names]
        return self.b.finish(outputs)

    def as_value(self, x: Any, where: str) -> Value:
        if isinstance(x, ConstTensor):
            return self.ctx.materialize(x)
        if isinstance(x, Value):
            return x
        raise TypeError(f"frontend: {where!r} lowered to {type(x).__name__}, expected a tensor")

    def report(self) -> list[FallbackInfo]:
        out = []
        for target, entries in self.fallbacks.items():
            reasons = list(dict.fromkeys(r for _, r in entries))
            info = FallbackInfo(target, tuple(n for n, _ in entries), "; ".join(reasons))
            log.warning("tilefx: %s", info)
            out.append(info)
        return out

    # ---- one node -----------------------------------------------------------
    def lower_node(self, node: torch.fx.Node) -> Any:
        if node.target is operator.getitem:
            source, index = node.args
            return self.env[source.name][index]
        val = node.meta.get("val")
        if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return self.ctx.dim(val) if isinstance(val, torch.SymInt) else _sym_unsupported(node)
        args = map_aggregate(node.args, self._lookup)
        kwargs = map_aggregate(node.kwargs, self._lookup)
        if _is_constant((args, kwargs)) and not _is_random(node.target):
            return self.evaluate(node, args, kwargs)
        checkpoint = len(self.b.ops)
        try:
            rule = LOWERINGS.get(node.target)
            if rule is None:
                raise Unsupported("no lowering")
            if _touches_complex(node, (args, kwargs)):
                raise Unsupported("complex values are computed in PyTorch")
            vargs = map_aggregate(args, self._value_or_self)
            vkwargs = map_aggregate(kwargs, self._value_or_self)
            result = rule(self.ctx, node, vargs, vkwargs)
            self._check_types(node, result)
            return result
        except Unsupported as e:
            reason = str(e)
        except Exception as e:  # a rule's bug must not fail a model eager runs
            reason = f"lowering failed: {type(e).__name__}: {e}"
            log.warning("frontend: lowering %s at node %r failed (%s); it will run in PyTorch",
                        node.target, node.name, reason, exc_info=log.isEnabledFor(logging.DEBUG))
        del self.b.ops[checkpoint:]
        self.ctx.forget_after(checkpoint)
        return self.fallback(node, args, kwargs, reason)

    def _lookup(self, x: Any) -> Any:
        return self.env[x.name] if isinstance(x, torch.fx.Node) else x

    def _value_or_self(self, x: Any) -> Any:
        return self.ctx.materialize(x) if isinstance(x, ConstTensor) else x

    def evaluate(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        """Run a node with constant inputs in torch now; keep the result lazy."""
        hint = next((c.hint for c in _flat((args, kwargs)) if isinstance(c, ConstTensor)), None)
        tensors = map_aggregate((args, kwargs), lambda x: x.tensor if isinstance(x, ConstTensor) else x)
        with torch.no_grad():
            result = node.target(*tensors[0], **tensors[1])
        short = getattr(getattr(node.target, "_schema", None), "name", node.name).split("::")[-1]
        name = f"{hint}_{short}" if hint else node.name

        def wrap(r: Any) -> Any:
            return ConstTensor(r, name) if isinstance(r, torch.Tensor) else r
        return [wrap(r) for r in result] if isinstance(result, (tuple, list)) else wrap(result)

    def _check_types(self, node: torch.fx.Node, result: Any) -> None:
        """A lowering must produce exactly the types torch inferred."""
        val = node.meta.get("val")
        pairs = (list(zip(result, val)) if isinstance(result, list) and isinstance(val, (tuple, list))
                 else [(result, val)])
        for got, want in pairs:
            if got is None or not isinstance(want, torch.Tensor):
                continue
            if not isinstance(got, Value):
                raise Unsupported(f"rule returned {type(got).__name__}")
            expected = self.ctx.type_of(want)
            if not _same_type(got.type, expected):
                raise Unsupported(f"lowering produced {got.type}, torch says {expected}")

    # ---- fallback -----------------------------------------------------------
    def fallback(self, node: torch.fx.Node, args: Any, kwargs: Any, reason: str) -> Any:
        target = overload_name(node.target)
        inputs: list[Value] = []

        def encode(x: Any) -> Any:
            if isinstance(x, ConstTensor):
                x = self.ctx.materialize(x)
            if isinstance(x, Value):
                inputs.append(x)
                return {"%": len(inputs) - 1}
            if isinstance(x, (list, tuple)):
                return [encode(y) for y in x]
            if isinstance(x, torch.dtype):
                return {"dtype": str(x).removeprefix("torch.")}
            if isinstance(x, torch.device):
                return {"device": str(x)}
            if x is None or isinstance(x, (bool, int, float, str)):
                return x
            if isinstance(x, sympy.Basic):
                raise NotImplementedError(
                    f"node {node.name!r} ({node.target}) has no lowering and a symbolic argument "
                    f"{x}; capture with static shapes")
            raise NotImplementedError(f"node {node.name!r} ({node.target}): cannot pass {x!r} "
                                      f"to a PyTorch fallback")

        enc_args = encode(list(args))
        enc_kwargs = {k: encode(v) for k, v in kwargs.items() if k not in _LAYOUT_KWARGS}
        payload = json.dumps({"args": enc_args, "kwargs": enc_kwargs})
        val = node.meta.get("val")
        multi = isinstance(val, (tuple, list))
        vals = list(val) if multi else [val]
        tensor_pos = [i for i, v in enumerate(vals) if isinstance(v, torch.Tensor)]
        try:
            types = [self.ctx.type_of(vals[i]) for i in tensor_pos]
        except Unsupported as e:
            raise NotImplementedError(f"node {node.name!r} ({node.target}) cannot run in PyTorch "
                                      f"either: its result is not an IR tensor ({e})") from None
        results = self.b.op_typed("fallback", inputs, types, result_names=[node.name] * len(types),
                                  target=target, args=payload)
        self.fallbacks.setdefault(str(node.target), []).append((node.name, reason))
        if not multi:
            return results[0]
        out: list[Any] = [None] * len(vals)
        for i, r in zip(tensor_pos, results):
            out[i] = r
        return out


def _fetch_attr(gm: torch.nn.Module, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def _flat(tree: Any) -> list[Any]:
    out: list[Any] = []
    map_aggregate(tree, lambda x: out.append(x) or x)
    return out


def _is_constant(tree: Any) -> bool:
    """No runtime tensor (IR value) or symbolic size anywhere in the arguments."""
    return not any(isinstance(x, (Value, sympy.Basic)) for x in _flat(tree))


def _is_random(target: Any) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(target, "tags", ())


def _touches_complex(node: torch.fx.Node, tree: Any) -> bool:
    """IR kernels never compute on complex values: such nodes always fall back."""
    vals = node.meta.get("val")
    vals = list(vals) if isinstance(vals, (tuple, list)) else [vals]
    if any(isinstance(v, torch.Tensor) and v.is_complex() for v in vals):
        return True
    return any(isinstance(x, Value) and x.type.dtype.name.startswith("complex") for x in _flat(tree))


def _same_type(a: TensorType, b: TensorType) -> bool:
    return a.dtype == b.dtype and a.rank == b.rank and all(
        dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _sym_unsupported(node: torch.fx.Node) -> Any:
    raise NotImplementedError(f"frontend: node {node.name!r} computes a symbolic float/bool; "
                              f"capture with static shapes")
