"""Graph passes: every transformation from the frontend's IR to a graph of kernels.

Each pass is a named ``Graph -> Graph`` function (``manager.graph_pass``); the
pipeline (``pipeline.py``) lists them in order: canonicalize -> fold constants
and batch norms -> (opt-in) prune, quantize -> permute channels -> sparsify ->
pad matmul columns (GPU) -> CSE -> DCE -> fusion -> mark sparse kernels -> pack weights -> blocked conv
layouts. Passes know nothing of TVM, Triton or the tuning database: what only
the target knows comes in through ``PassOptions``' hooks (typed in the pass
modules: ``SparseChooser``, ``PackFactor``, ``BlockFactor``, ``FusionAdvisor``),
and a pass that keeps a measured decision is handed a ``decisions.DecisionStore``.
"""

from tilefx.passes.fusion import kernels
from tilefx.passes.manager import GraphPass, PassManager, graph_pass
from tilefx.passes.pipeline import PassOptions, optimize, optimize_with_trace, pipeline

__all__ = ["optimize", "optimize_with_trace", "PassOptions", "pipeline", "kernels", "PassManager",
           "GraphPass", "graph_pass"]
