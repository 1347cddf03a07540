"""IR op definitions, one file per family; importing this package registers them all."""

from tilefx.ir.ops import elementwise, nn, shape_ops, sparse, special  # noqa: F401  (registration)
from tilefx.ir.ops.registry import OPS, REQUIRED, Category, OpDef, get_op, infer_types
from tilefx.ir.ops.special import GIVEN_TYPE_OPS

__all__ = ["OPS", "REQUIRED", "Category", "OpDef", "get_op", "infer_types", "GIVEN_TYPE_OPS"]
