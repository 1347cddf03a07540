"""Pass options for one compile: what the pipeline needs from outside the graph.

The passes are graph rewrites; some decisions need the target or the tuning
database, and those are made here from ``CompileOptions``:

- sparsity: the dense-vs-sparse chooser (the latency model's estimate, a
  timing of both kernels on the target to confirm, kept in the tuning DB);
- packing and blocked conv layouts: the panel width / channel block of each
  kernel is the register width of the schedule it will be built with (tuned if
  tuning is on, else the default), so the pass and the template agree;
- the opt-in lossy rewrites (pruning, simulated block quantization) and the
  fusion advisor.

``configure_passes(options)`` returns them as a ``PassSetup``; after the
pipeline ran, ``PassSetup.notes()`` gives one report line per decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tilefx import settings
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.ir.graph import Op


@dataclass
class PassSetup:
    passes: Any                       # passes.pipeline.PassOptions
    chooser: Any = None               # passes.sparsity chooser (its .decisions)
    advisor: Any = None               # cost_model.advisor.FusionAdvisor
    early_notes: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        p = self.passes
        out = list(self.early_notes)
        if p.pack_log is not None:
            out += [f"packing: {ln}" for ln in p.pack_log.lines]
        if p.permute_log is not None:
            out += [f"permute: {d.line()}" for d in p.permute_log.decisions]
        if p.quant_log is not None:
            out += [f"quantize (simulated): {ln}" for ln in p.quant_log.lines]
        if self.chooser is not None:
            out += [f"sparsity: {d.line()}" for d in self.chooser.decisions]
        if self.advisor is not None:
            out += [f"fusion: {ln}" for ln in self.advisor.lines()]
        return out


def configure_passes(options: Any) -> PassSetup:
    """The pass options of a compile with ``options`` (a ``driver.CompileOptions``)."""
    target = options.resolved_target()
    passes = options.passes
    if passes is None and target.kind == "cuda":
        from tilefx.passes.pipeline import PassOptions

        passes = PassOptions(decompose_attention=False)  # the Triton backend has fused attention
    passes, chooser = _sparsity_options(passes, options)
    if passes.sparsity and passes.permute and passes.permute_log is None:
        from tilefx.passes.permute import PermutationLog

        passes = replace(passes, permute_log=PermutationLog())  # per-layer block counts, reported
    passes = _packing_options(passes, options)
    if options.quantize is not None and passes.quantize is None:  # opt-in, lossy: block_quant.py
        from tilefx.passes.block_quant import QuantLog, parse_quant

        passes = replace(passes, quantize=parse_quant(options.quantize), quant_log=QuantLog())
    setup = PassSetup(passes, chooser)
    if options.fusion_check and target.kind == "cpu" and passes.fusion_advisor is None:
        from tilefx.cost_model.advisor import default_advisor

        setup.advisor = default_advisor(target)
        if setup.advisor is None:
            setup.early_notes.append("fusion: no latency model (xgboost or the model file missing); rules only")
        setup.passes = replace(passes, fusion_advisor=setup.advisor)
    return setup


def _schedule_to_build(op: Op, target: Target, options: Any) -> Schedule | None:
    """The TVM schedule ``op`` will get (tuned if tuning is on, else the default);
    None when the library call won (it reads plain layouts)."""
    schedule = None
    if options.tune_trials:
        from tilefx.autotune.tuner import tuned_schedule

        schedule, _ = tuned_schedule(op, target, None, options)
    if schedule is not None and schedule.get("extern"):
        return None
    if schedule is None:
        from tilefx.codegen.tvm import default_schedule

        schedule = default_schedule(op, target)
    return schedule


def _sparsity_options(passes: Any, options: Any) -> tuple[Any, Any]:
    """Pass options with pruning and the sparse/dense chooser: on the CPU a measured
    one (both kernels timed); on cuda the same with the GPU's blocks (>= 16x16), fp16
    weights too, and the Triton kernels timed on the device (an estimate when there is
    no GPU, e.g. under TRITON_INTERPRET=1); elsewhere sparsity is off."""
    from tilefx.passes.pipeline import PassOptions
    from tilefx.passes.sparsity import MeasuredChooser

    passes = passes or PassOptions()
    if options.prune:
        passes = replace(passes, prune=options.prune, prune_block=tuple(options.prune_block))
    target = options.resolved_target()
    if target.kind not in ("cpu", "cuda"):
        return replace(passes, sparsity=False), None
    if not passes.sparsity or passes.sparse_chooser is not None:
        return passes, passes.sparse_chooser
    if target.kind == "cuda":
        chooser = _cuda_sparse_chooser(target, options.tune_db)
        return replace(passes, sparse_chooser=chooser), chooser

    def measure(layer: Any, block: tuple[int, int]) -> tuple[float, float]:
        from tilefx.codegen.tvm.schedules.sparse import measure_layer

        return measure_layer(layer, block, target)
    from tilefx.cost_model.advisor import sparse_estimate
    from tilefx.passes.sparsity import TuningDBStore

    # the latency model picks the block and whether it is worth a look; a timing confirms,
    # and is kept in the tuning database so a later compile does not time it again
    estimate = sparse_estimate(target)
    store = TuningDBStore(options.tune_db, target.key())
    chooser = MeasuredChooser(measure, target=target.key(), store=store) if estimate is None else \
        MeasuredChooser(measure, target=target.key(), estimate=estimate, store=store)
    return replace(passes, sparse_chooser=chooser), chooser


def _packing_options(passes: Any, options: Any) -> Any:
    """Weight packing (CPU, on by default): the panel width of each linear kernel is the register width
    of the schedule it would be built with (tuned if tuning is on, else the default)."""
    passes = _layout_options(passes, options)
    if not passes.pack_weights or passes.pack_factor is not None:
        return passes
    if options.resolved_target().kind != "cpu":
        return replace(passes, pack_weights=False)  # the Triton template does not read panels
    from tilefx.passes.packing import PackingLog

    target = options.resolved_target()

    def pack_factor(op: Op) -> int | None:
        from tilefx.codegen.tvm.schedules.matmul import register_n

        schedule = _schedule_to_build(op, target, options)
        return None if schedule is None else register_n(int(op.results[0].type.shape[-1]), schedule, target)
    return replace(passes, pack_factor=pack_factor, pack_log=passes.pack_log or PackingLog())


def _layout_options(passes: Any, options: Any) -> Any:
    """Blocked conv layouts (CPU, on by default): each conv's channel block is the register height
    ``reg_oc`` of the schedule it would be built with (tuned if tuning is on, else the
    default); its lines join the packing notes."""
    if not passes.layout or passes.block_factor is not None:
        return passes
    target = options.resolved_target()
    if target.kind != "cpu":
        return replace(passes, layout=False)  # the Triton conv reads NCHW
    from tilefx.passes.layout import LayoutLog

    def block_factor(op: Op) -> int | None:
        from tilefx.codegen.tvm.schedules.conv import register_oc

        schedule = _schedule_to_build(op, target, options)
        return None if schedule is None else register_oc(int(op.results[0].type.shape[1]), schedule, target)
    # the layout lines are reported with the packing notes (one log for both passes)
    log = passes.layout_log or passes.pack_log or LayoutLog()
    return replace(passes, block_factor=block_factor, layout_log=log, pack_log=passes.pack_log or log)


def _cuda_sparse_chooser(target: Target, tune_db: str | None = None) -> Any:
    """The GPU's blocks (>= 16x16) and dtypes (fp16, bf16 too); a 2:4 weight also has the
    semi24 library candidate. With a GPU both are timed (decisions kept in the tuning
    database); without one (TRITON_INTERPRET=1) the estimate alone, which never picks 2:4."""

    from tilefx.ir.types import DType
    from tilefx.passes.sparsity import CUDA_BREAK_EVEN, AnalyticalChooser, MeasuredChooser, TuningDBStore

    try:
        import torch

        gpu = torch.cuda.is_available() and not settings.triton_interprets()
    except ImportError:
        gpu = False

    def semi24_runs(layer: Any) -> bool:  # without a GPU: whether it could (reported, not picked)
        from tilefx.codegen.triton import semi24

        return (semi24.available if gpu else semi24.fits)(layer.dtype, *layer.kn)

    estimate = AnalyticalChooser(dict(CUDA_BREAK_EVEN), dtypes=(DType.float32, DType.float16,
                                                                DType.bfloat16), semi24=semi24_runs)
    if not gpu:
        return estimate

    def measure(layer: Any, block: tuple[int, int]) -> tuple[float, float]:
        from tilefx.codegen.triton.sparse import measure_layer

        return measure_layer(layer, block, target)

    def measure_2to4(layer: Any) -> tuple[float, float]:
        from tilefx.codegen.triton.sparse import measure_2to4

        return measure_2to4(layer, target)
    return MeasuredChooser(measure, target=target.key(), estimate=estimate, measure_2to4=measure_2to4,
                           store=TuningDBStore(tune_db, target.key()))
