"""ATen -> IR lowering rules, one file per op family; importing this package registers them.

See ``registry.py`` for the rule signature and ``context.py`` for what a rule can use.
"""

from tilefx.compiler.lowerings import creation, elementwise, nn, reduction, shape  # noqa: F401
from tilefx.compiler.lowerings.context import ConstTensor, LoweringContext, ir_dtype, torch_dtype
from tilefx.compiler.lowerings.registry import LOWERINGS, LoweringFn, Unsupported, lowers

__all__ = ["LOWERINGS", "LoweringFn", "Unsupported", "lowers", "LoweringContext", "ConstTensor",
           "ir_dtype", "torch_dtype"]
