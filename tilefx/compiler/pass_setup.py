"""Pass options for one compile: what the pipeline needs from outside the graph.

The passes are graph rewrites; some decisions need the target's backend or the
tuning database, and those are handed to them here (as typed hooks on
``PassOptions``) from ``CompileOptions`` and the target's ``Backend``:

- sparsity: the dense-vs-sparse chooser (the latency model's estimate, a
  timing of both kernels on the target to confirm, kept in the tuning DB);
- packing and blocked conv layouts: the panel width / channel block of each
  kernel is the register width of the schedule it will be built with (tuned if
  tuning is on, else the default), so the pass and the template agree;
- the opt-in lossy rewrites (pruning, simulated block quantization) and the
  fusion advisor.

``configure_passes(options, target, session)`` returns them as a ``PassSetup``; after the
pipeline ran, ``PassSetup.notes()`` gives one report line per decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tilefx.autotune.tuner import tune_or_default
from tilefx.codegen.backend import Backend
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import is_extern
from tilefx.codegen.target import Target
from tilefx.compiler.options import CompileOptions
from tilefx.cost_model.advisor import FusionAdvisor, default_advisor, sparse_estimate
from tilefx.ir.graph import Op
from tilefx.passes.block_quant import QuantLog, parse_quant
from tilefx.passes.layout import LayoutLog
from tilefx.passes.packing import PackingLog
from tilefx.passes.permute import PermutationLog
from tilefx.passes.pipeline import PassOptions
from tilefx.passes.sparsity import SparseChooser

if TYPE_CHECKING:
    from tilefx.compiler.session import CompileSession


@dataclass
class PassSetup:
    passes: PassOptions
    chooser: SparseChooser | None = None  # the sparse/dense chooser (its .decisions)
    advisor: FusionAdvisor | None = None
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


def configure_passes(options: CompileOptions, target: Target, session: CompileSession) -> PassSetup:
    """The pass options of a compile with ``options`` for ``target``."""
    backend = target.backend()
    defaults = backend.pass_defaults()
    passes = options.passes
    if passes is None:
        passes = PassOptions(decompose_attention=defaults.decompose_attention,
                             pad_columns=defaults.pad_columns, channels_last=defaults.channels_last,
                             rms_norm=defaults.rms_norm, merge_projections=defaults.merge_projections,
                             epilogue_flags=defaults.epilogue_flags,
                             row_epilogues=defaults.row_epilogues)
    if options.prune:
        passes = replace(passes, prune=options.prune, prune_block=tuple(options.prune_block))
    passes, chooser = _sparsity_options(passes, options, backend, session)
    if passes.sparsity and passes.permute and passes.permute_log is None:
        passes = replace(passes, permute_log=PermutationLog())  # per-layer block counts, reported
    passes = _layout_options(passes, options, backend, session)
    passes = _packing_options(passes, options, backend, session)
    if options.quantize is not None and passes.quantize is None:  # opt-in, lossy: block_quant.py
        passes = replace(passes, quantize=parse_quant(options.quantize), quant_log=QuantLog())
    setup = PassSetup(passes, chooser)
    if options.fusion_check and defaults.fusion_advisor and passes.fusion_advisor is None:
        setup.advisor = default_advisor(target)
        if setup.advisor is None:
            setup.early_notes.append("fusion: no latency model for this target (xgboost or "
                                     "the model file missing); rules only")
        setup.passes = replace(passes, fusion_advisor=setup.advisor)
    return setup


def _schedule_to_build(op: Op, options: CompileOptions, backend: Backend,
                       session: CompileSession) -> Schedule | None:
    """The schedule ``op`` will get (tuned if tuning is on, else the default); None when
    the library call won (it reads plain layouts)."""
    schedule = None
    tuner = session.tuner(backend.target, options)
    if tuner is not None:
        schedule, _ = tune_or_default(tuner, op, None)
    if is_extern(schedule):
        return None
    return schedule if schedule is not None else backend.default_schedule(op)


def _sparsity_options(passes: PassOptions, options: CompileOptions, backend: Backend,
                      session: CompileSession) -> tuple[PassOptions, SparseChooser | None]:
    """Pass options with the sparse/dense chooser of the target's backend: the latency
    model's estimate, confirmed by timing both kernels on the target (decisions kept in
    the tuning database)."""
    if not backend.pass_defaults().sparsity:
        return replace(passes, sparsity=False), None
    if not passes.sparsity or passes.sparse_chooser is not None:
        return passes, passes.sparse_chooser
    target = backend.target
    store = session.decision_store(options.tune_db, target.key())
    chooser = backend.sparse_chooser(estimate=lambda: sparse_estimate(target), store=store)
    return replace(passes, sparse_chooser=chooser), chooser


def _packing_options(passes: PassOptions, options: CompileOptions, backend: Backend,
                     session: CompileSession) -> PassOptions:
    """Weight packing (on where the backend's contraction template reads panels): the panel
    width of each linear kernel is the register width of the schedule it will be built with."""
    if not passes.pack_weights or passes.pack_factor is not None:
        return passes
    if not backend.pass_defaults().pack_weights:
        return replace(passes, pack_weights=False)

    def pack_factor(op: Op) -> int | None:
        schedule = _schedule_to_build(op, options, backend, session)
        return None if schedule is None else backend.pack_factor(op, schedule)
    return replace(passes, pack_factor=pack_factor, pack_log=passes.pack_log or PackingLog())


def _layout_options(passes: PassOptions, options: CompileOptions, backend: Backend,
                    session: CompileSession) -> PassOptions:
    """Blocked conv layouts (on where the backend's conv template reads them): each conv's
    channel block is the register height of the schedule it will be built with; its lines
    join the packing notes (one log for both passes)."""
    if not passes.layout or passes.block_factor is not None:
        return passes
    if not backend.pass_defaults().blocked_conv_layout:
        return replace(passes, layout=False)

    def block_factor(op: Op) -> int | None:
        schedule = _schedule_to_build(op, options, backend, session)
        return None if schedule is None else backend.block_factor(op, schedule)
    log = passes.layout_log or passes.pack_log or LayoutLog()
    return replace(passes, block_factor=block_factor, layout_log=log, pack_log=passes.pack_log or log)
