"""The TVM backend object (CPU through LLVM): what ``Target.backend()`` returns for ``cpu``.

Each method delegates to the module that does the work (``kernel`` builds,
``schedules`` holds the templates and their spaces, ``fingerprint`` lowers a
candidate for its identity, ``codegen/measure`` builds in a process pool and
times in an isolated runner). TVM itself is imported by those modules, on first
use.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from tilefx.codegen import timing
from tilefx.codegen.backend import Backend, FeatureSet, PassDefaults, Shipment
from tilefx.codegen.measure import LibraryKernel, LocalBuilder, LocalRunner
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import EXTERN_KINDS, SearchSpace, is_extern
from tilefx.codegen.tvm import cache, configure_tvm_threads
from tilefx.codegen.tvm.fingerprint import fingerprint
from tilefx.codegen.tvm.isa import target_cpu_features
from tilefx.codegen.tvm.kernel import build_kernel
from tilefx.codegen.tvm.schedules import default_schedule, space
from tilefx.codegen.tvm.schedules.conv import register_oc
from tilefx.codegen.tvm.schedules.matmul import register_n
from tilefx.ir.graph import Op
from tilefx.passes.sparsity import MeasuredChooser


class TVMBackend(Backend):
    name = "tvm"
    feature_set = FeatureSet.LOOP_NEST
    writes_artifacts = True
    ships_builds = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        configure_tvm_threads()  # before TVM's pool starts: sized like torch's, not pinned

    @property
    def cost_model_arch(self) -> str:  # type: ignore[override]
        return self.target.mtriple.split("-")[0]

    def build(self, op: Op, schedule: Schedule | None = None,
              bindings: Mapping[Any, int] | None = None) -> Any:
        return build_kernel(op, self.target, schedule, bindings=dict(bindings) if bindings else None)

    def build_library(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Any:
        return LibraryKernel(op, {getattr(s, "name", s): v for s, v in (bindings or {}).items()})

    def default_schedule(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Schedule:
        return default_schedule(op, self.target, bindings=bindings)

    def space(self, op: Op, bindings: Mapping[Any, int] | None = None) -> SearchSpace:
        return SearchSpace.of(space(op, self.target), has_extern=op.attr("kind") in EXTERN_KINDS)

    def fingerprint(self, op: Op, schedule: Schedule,
                    bindings: Mapping[Any, int] | None = None) -> str:
        if is_extern(schedule):
            return self.extern_fingerprint()
        return fingerprint(op, schedule, self.target, bindings)

    def extern_fingerprint(self) -> str:
        return f"extern-torch-{self.target.key()}"

    def tuning_pair(self, *, workers: int, timeout: float, repeats: int,
                    min_repeat_seconds: float) -> tuple[Any, Any]:
        """A spawn pool builds (into the kernel disk cache), an isolated child process runs."""
        return LocalBuilder(workers=workers), LocalRunner(
            timeout=timeout, repeats=repeats, min_repeat_seconds=min_repeat_seconds)

    def ship(self, artifact: str) -> Shipment:
        """A build is a kernel disk-cache entry (``cache.py``): its ``.so`` and digest."""
        payload, digest = cache.export_built(artifact)
        return Shipment(artifact, payload, digest)

    def unship(self, shipment: Shipment) -> str:
        cache.install_built(shipment.artifact, shipment.payload, shipment.digest)
        return shipment.artifact

    def timer(self) -> Callable[[Callable[..., Any], Sequence[Any]], float]:
        return timing.median_ms

    def pass_defaults(self) -> PassDefaults:
        return PassDefaults(decompose_attention=True, pack_weights=True,
                            blocked_conv_layout=True, sparsity=True,
                            fusion_advisor=True, pad_columns=False)

    def pack_factor(self, op: Op, schedule: Schedule) -> int | None:
        return register_n(int(op.results[0].type.shape[-1]), schedule, self.target)

    def block_factor(self, op: Op, schedule: Schedule) -> int | None:
        return register_oc(int(op.results[0].type.shape[1]), schedule, self.target)

    def sparse_chooser(self, *, estimate: Callable[[], Any], store: Any = None) -> Any:
        """The dense-vs-sparse chooser: the latency model's estimate (``estimate()``, None
        without a model) picks the block and whether a layer is worth a look, a timing of
        both TVM kernels confirms; decisions are kept in ``store``."""
        def measure(layer: Any, block: tuple[int, int]) -> tuple[float, float]:
            from tilefx.codegen.tvm.schedules.sparse import measure_layer  # imports TVM

            return measure_layer(layer, block, self.target)
        estimate = estimate()
        if estimate is None:
            return MeasuredChooser(measure, target=self.target.key(), store=store)
        return MeasuredChooser(measure, target=self.target.key(), estimate=estimate, store=store)

    def cpu_features(self) -> list[str]:
        return target_cpu_features(self.target)
