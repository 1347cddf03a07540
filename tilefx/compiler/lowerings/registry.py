"""The lowering registry: one rule per ATen overload, one decorator per op.

A rule is ``fn(ctx, node, args, kwargs) -> Value | list[Value]``. ``args`` and
``kwargs`` are the fx node's arguments with every fx ``Node`` replaced by what
it lowered to: an IR ``Value`` for a tensor, a list of them for a tuple result,
a sympy ``Dim`` for a symbolic int and a plain Python value otherwise. A rule
that meets a form it does not handle raises ``Unsupported``; the frontend then
emits a ``fallback`` op for that node (it never fails the compile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from tilefx.compiler.lowerings.context import LoweringContext

LoweringFn = Callable[["LoweringContext", "torch.fx.Node", tuple, dict], Any]

LOWERINGS: dict[Any, LoweringFn] = {}  # torch OpOverload -> rule


class Unsupported(Exception):
    """Raised by a rule for a form it cannot lower; the node runs in PyTorch instead."""


def lowers(*targets: Any) -> Callable[[LoweringFn], LoweringFn]:
    """``@lowers(torch.ops.aten.gelu.default, ...)``: register ``fn`` for these overloads.

    An ``OpOverloadPacket`` (``torch.ops.aten.gelu``) registers all its overloads.
    """
    def wrap(fn: LoweringFn) -> LoweringFn:
        for target in targets:
            overloads = [target]
            if hasattr(target, "overloads") and not hasattr(target, "_schema"):
                overloads = [getattr(target, name) for name in target.overloads()]
            for ov in overloads:
                if ov in LOWERINGS:
                    raise ValueError(f"lowering for {ov} registered twice")
                LOWERINGS[ov] = fn
        return fn
    return wrap
