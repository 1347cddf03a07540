"""The optimization pipeline: one line per pass, read top to bottom.

``optimize(graph, options)`` is what the compiler pipeline calls (``compiler/pipeline.py``);
``optimize_with_trace`` also returns the graph after each pass (for
``tilefx inspect``). Options are a frozen record passed explicitly, never read
from globals; the environment only controls instruments (``TILEFX_VERIFY``,
``TILEFX_PRINT_AFTER``, see ``manager``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tilefx.ir.graph import Graph
from tilefx.passes.attention_masks import attention_masks
from tilefx.passes.block_quant import BlockQuant, QuantLog, block_quantize
from tilefx.passes.canonicalize import canonicalize
from tilefx.passes.channels_last import channels_last
from tilefx.passes.cleanup import cse, dce
from tilefx.passes.fold import fold_batch_norm, fold_constants
from tilefx.passes.fusion import FusionAdvisor, fuse
from tilefx.passes.layout import BlockFactor, block_layout
from tilefx.passes.manager import GraphPass, Instrument, PassManager, TraceInstrument, env_instruments
from tilefx.passes.merge_projections import merge_projections
from tilefx.passes.outliers import group_outliers
from tilefx.passes.packing import PackFactor, PackingLog, pack_weights
from tilefx.passes.pad_columns import pad_columns
from tilefx.passes.permute import PermutationLog, permute_channels
from tilefx.passes.prune import prune_weights
from tilefx.passes.rms_norm import fuse_rms_norm
from tilefx.passes.sink_reshapes import sink_reshapes
from tilefx.passes.sparsity import SparseChooser, mark_sparse_kernels, sparsify
from tilefx.passes.split_reduction import split_reduction


@dataclass(frozen=True)
class PassOptions:
    """What the pipeline runs and with what: switches, the caller's hooks, the run's logs.

    Frozen: no field is rebound during a run (``dataclasses.replace`` makes a new one).
    Hooks are the caller's (the compiler's, ``compiler/pass_setup.py``): ``sparse_chooser``,
    ``pack_factor``, ``block_factor`` and ``fusion_advisor`` let a pass ask what only the
    target knows; None leaves the pass to its rules. Logs are outputs of the run: typed
    records the passes append to and the caller reads afterwards (the compile record's
    notes), as are ``sparse_chooser.decisions``. Give each run its own logs and chooser.
    """

    fuse: bool = True
    decompose_attention: bool = True  # False keeps `attention` whole (its own kernel)
    fold_constants: bool = True
    verify: bool | None = None  # None: TILEFX_VERIFY decides
    sparsity: bool = True       # constant weights >= half zeros may become bsr_matmul (exact)
    sparse_chooser: SparseChooser | None = None  # dense or sparse, per layer; None: the analytical estimate
    prune: float = 0.0          # opt-in magnitude pruning: fraction of weights zeroed (lossy)
    prune_block: tuple[int, int] = (1, 1)  # (bk, bn) blocks of W[K, N] pruned together
    quantize: BlockQuant | None = None  # opt-in simulated block quantization (lossy)
    quant_log: QuantLog | None = None   # output: per-layer errors of quantize, for reports
    permute: bool = True        # hidden-channel permutation clustering sparse weights (exact)
    permute_log: PermutationLog | None = None  # output: per-layer block counts, for reports
    pack_weights: bool = True   # linear weights stored as [N/bn, K, bn] panels (exact; the compiler
    #                             turns it off where the backend's template reads plain weights)
    pack_factor: PackFactor | None = None  # kernel op -> panel width (the compiler's: from its schedule)
    pack_log: PackingLog | None = None     # output: a line per packed weight
    layout: bool = True         # conv weights OIHW{i}i{o}o, activations NCHW{c}c between convs (exact;
    #                             the compiler turns it off where the backend's conv reads NCHW)
    block_factor: BlockFactor | None = None  # conv kernel op -> channel block (the compiler's: its reg_oc)
    # output: the layout pass's lines; a LayoutLog also gets the transform counts before/after.
    # May be the same object as pack_log (the compiler reports both passes' lines together).
    layout_log: PackingLog | None = None
    fusion_advisor: FusionAdvisor | None = None  # .should_fuse(fused, separate); None: rules only
    pad_columns: bool = False   # constant matmul weights padded to 8k columns, result sliced (exact;
    #                             the compiler turns it on where the backend's matmul wants aligned rows)
    channels_last: bool = False  # fp16/bf16 conv regions in NHWC, NCHW at their edges (exact; the
    #                              compiler turns it on where the backend's convs want NHWC: cuda)
    rms_norm: bool = False      # x * rsqrt(mean(x^2) + eps) -> one rms_norm row op (exact; the compiler
    #                             turns it on where the backend has the row op: cuda)
    merge_projections: bool = False  # q, k, v projections of one input -> one packed matmul (exact; the
    #                                  compiler turns it on where part-filled GEMM waves cost: cuda)
    epilogue_flags: bool = False  # any/all of a matmul's epilogue value computed in that matmul's kernel
    #                               (exact; the compiler turns it on where the templates have flags: cuda)
    row_epilogues: bool = False  # ops on a keepdim reduction's input shape after it join its kernel
    #                              (exact; the compiler turns it on where the template has them: cuda)


def pipeline(options: PassOptions | None = None) -> list[GraphPass]:
    o = options or PassOptions()
    passes = [
        canonicalize.bind(decompose_attention=o.decompose_attention),  # batch_norm -> x*s+t, attention -> softmax
        fold_constants if o.fold_constants else None,                   # all-const ops -> new consts
        fold_batch_norm if o.fold_constants else None,                  # conv [+b] * s -> conv(W*s) [+b*s]
        attention_masks,                                                # a constant causal mask -> causal=True
        prune_weights.bind(amount=o.prune, block=tuple(o.prune_block)) if o.prune else None,  # opt-in, lossy
        group_outliers.bind(spec=o.quantize, report=o.quant_log)        # outliers share blocks (exact)
        if o.quantize is not None and o.quantize.group else None,
        block_quantize.bind(spec=o.quantize, report=o.quant_log)        # opt-in, lossy (simulated)
        if o.quantize is not None else None,
        permute_channels.bind(report=o.permute_log) if o.sparsity and o.permute else None,  # fewer blocks
        sparsify.bind(chooser=o.sparse_chooser) if o.sparsity else None,  # sparse weights -> bsr_matmul
        channels_last if o.channels_last else None,                     # conv regions NHWC, NCHW at edges
        merge_projections if o.merge_projections else None,             # x@Wq, x@Wk, x@Wv -> x@[Wq Wk Wv]
        pad_columns if o.pad_columns else None,                         # W[K, N] -> W[K, 8k], then slice
        split_reduction.bind(epilogue_flags=o.epilogue_flags),          # any/max of 2M -> of 1024 partial rows
        sink_reshapes,                                                  # gelu(view(mm)) -> view(gelu(mm))
        cse,                                                            # equal ops and equal weights once
        fuse_rms_norm if o.rms_norm else None,                          # RMSNorm written out -> one row op
        dce,                                                            # unused ops and weights dropped
        fuse.bind(advisor=o.fusion_advisor, flags=o.epilogue_flags,       # ops -> kernel ops
                  row_epilogues=o.row_epilogues) if o.fuse else None,
        mark_sparse_kernels if o.fuse and o.sparsity else None,         # bsr kernels -> sparse_contraction
        pack_weights.bind(pack_factor=o.pack_factor, report=o.pack_log)  # weights in the kernel's layout
        if o.fuse and o.pack_weights else None,
        block_layout.bind(block_factor=o.block_factor, report=o.layout_log)  # blocked conv layouts
        if o.fuse and o.layout else None,
    ]
    return [p for p in passes if p is not None]


def optimize(graph: Graph, options: PassOptions | None = None,
             instruments: list[Instrument] | None = None) -> Graph:
    options = options or PassOptions()
    if instruments is None:
        instruments = env_instruments(options.verify)
    return PassManager(pipeline(options), instruments, verify=options.verify).run(graph)


def optimize_with_trace(graph: Graph, options: PassOptions | None = None) -> tuple[Graph, list[tuple[str, Graph]]]:
    options = options or PassOptions()
    trace = TraceInstrument()
    out = optimize(graph, options, env_instruments(options.verify) + [trace])
    return out, trace.trace
