"""What a user asks of one compile: ``CompileOptions``, a frozen record.

``tilefx.compile(model, tune=..., check=...)``, the dynamo backend's options
and every CLI verb fill one of these; the pipeline reads it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from tilefx.codegen.target import Target

if TYPE_CHECKING:
    from tilefx.passes.block_quant import BlockQuant
    from tilefx.passes.pipeline import PassOptions


@dataclass(frozen=True)
class CompileOptions:
    target: str | Target = "cpu"
    passes: PassOptions | None = None  # None: the defaults for the target's backend
    # autotune: N trials per kernel, "60s" for the whole model (shared by expected gain),
    # or "30s/kernel"
    tune_trials: int | str = 0
    tune_db: str | None = None  # tuning database path (None: $TILEFX_CACHE_DIR/tuning.db)
    cluster: str | None = None  # tune on Ray: "ray" (a local one) or a cluster's address
    strict: bool = False      # raise on a kernel build failure instead of interpreting it
    cuda_graphs: bool | None = None  # replay static-shape cuda graphs; None: TILEFX_CUDA_GRAPHS
    prune: float = 0.0        # opt-in magnitude pruning (lossy, reported): fraction zeroed
    prune_block: tuple[int, int] = (1, 1)  # pruned together: (bk, bn) blocks of W[K, N]
    fusion_check: bool = False  # the latency model (measuring when unsure) vets each fusion
    # opt-in simulated block quantization (lossy): "int4", "int8:16" or a BlockQuant
    quantize: Union[str, BlockQuant, None] = None
    check_builds: bool | None = None  # run new kernels once vs the reference; None: TILEFX_CHECK_BUILDS
    # an untuned kernel's schedule: "template" (fixed default), "cost_model" (the learned model's
    # pick, cost_model/default_pick.py); None: TILEFX_DEFAULT_SCHEDULE, else the backend's choice
    default_schedules: str | None = None

    def resolved_target(self) -> Target:
        return self.target if isinstance(self.target, Target) else Target.parse(self.target)
