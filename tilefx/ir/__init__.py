"""The tilefx tensor IR: the contract between every stage of the compiler.

``types`` (dtypes, symbolic shapes), ``graph`` (Value, Op, Graph), ``ops`` (the
op registry with shape inference and fusion categories), ``builder``
(GraphBuilder), ``verifier``, ``printer`` / ``parser`` (IR text, round-trip
exact) and ``interpreter`` (the reference semantics, in PyTorch).
"""

from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph, Op, Value, structural_equal
from tilefx.ir.ops import OPS, Category, get_op
from tilefx.ir.interpreter import run_fallback, run_graph
from tilefx.ir.parser import parse_graph
from tilefx.ir.printer import print_graph
from tilefx.ir.types import DType, TensorType, symbol
from tilefx.ir.verifier import VerificationError, verify

__all__ = ["Graph", "Op", "Value", "structural_equal", "GraphBuilder", "OPS", "Category",
           "get_op", "DType", "TensorType", "symbol", "verify", "VerificationError",
           "print_graph", "parse_graph", "run_graph", "run_fallback"]
