"""The Triton backend object (NVIDIA GPU): what ``Target.backend()`` returns for ``cuda``.

Each method delegates to the module that does the work (``templates`` emits and
builds, ``measure`` holds the space with its library candidate, the
fingerprint, the in-process builder and the CUDA-event runner). Triton itself is
imported on first build; TVM never is.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from tilefx.codegen import timing
from tilefx.codegen.backend import Backend, CheckPlacement, FeatureSet, PassDefaults
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import EXTERN, SearchSpace
from tilefx.codegen.triton import gpu_present, semi24
from tilefx.codegen.triton.measure import (CudaRunner, TritonBuilder, TuningState, check_dtype, device,
                                           extern_fingerprint, fingerprint, resolve, triton_space)
from tilefx.codegen.triton.sparse import measure_layer
from tilefx.codegen.triton.templates import build_kernel, default_schedule
from tilefx.ir.graph import Op
from tilefx.ir.identity import symbol_bindings
from tilefx.ir.types import DType
from tilefx.passes.sparsity import CUDA_BREAK_EVEN, AnalyticalChooser, MeasuredChooser


class TritonBackend(Backend):
    name = "triton"
    feature_set = FeatureSet.TILING
    cost_model_arch = "cuda"
    writes_artifacts = False

    def build(self, op: Op, schedule: Schedule | None = None,
              bindings: Mapping[Any, int] | None = None) -> Any:
        # the tuner's extern schedule is the template's library implementation
        return build_kernel(op, self.target, resolve(schedule), bindings=symbol_bindings(bindings))

    def build_library(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Any:
        return self.build(op, EXTERN, bindings)

    def default_schedule(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Schedule:
        return default_schedule(op, self.target, bindings=symbol_bindings(bindings))

    def space(self, op: Op, bindings: Mapping[Any, int] | None = None) -> SearchSpace:
        return triton_space(op, bindings)

    def prebuild(self, work: Sequence[tuple[Op, Mapping[Any, int]]],
                 build: Callable[[Op, Mapping[Any, int]], Any]) -> dict[str, str] | None:
        """Triton compiles on the first launch, one kernel at a time: on a GPU, launch each
        generated module once in a pool of processes first (``prewarm.py``), so the builds
        that follow load compiled binaries. The library candidate needs no compile."""
        if not gpu_present() or len(work) < 2:
            return None
        from tilefx.codegen.triton.prewarm import prewarm_built

        return prewarm_built((op.attr("name"), lambda op=op, b=bindings: build(op, b), op, symbol_bindings(bindings))
                             for op, bindings in work)

    def fingerprint(self, op: Op, schedule: Schedule,
                    bindings: Mapping[Any, int] | None = None) -> str:
        return fingerprint(op, schedule, self.target, bindings)

    def extern_fingerprint(self) -> str:
        return extern_fingerprint(self.target)

    def tuning_pair(self, *, workers: int, timeout: float, repeats: int,
                    min_repeat_seconds: float) -> tuple[Any, Any]:
        """On a GPU: candidates compiled in parallel processes, checked and timed in a child
        process (``isolated.py``). Under the interpreter both in this process, sharing the
        workload's data and built kernels."""
        if gpu_present():  # a candidate that hangs or faults takes only the runner's child down
            from tilefx.codegen.triton.isolated import IsolatedCudaRunner

            return TritonBuilder(launch=False), IsolatedCudaRunner(repeats=repeats,
                                                                   timeout=max(timeout, 120.0))
        state = TuningState()
        return TritonBuilder(state=state), CudaRunner(repeats=repeats, state=state)

    def timer(self) -> Callable[[Callable[..., Any], Sequence[Any]], float]:
        return timing.median_ms

    def check_placement(self, op: Op) -> CheckPlacement:
        return CheckPlacement(device(), tuple(check_dtype(op, r.type.dtype) for r in op.results))

    def pass_defaults(self) -> PassDefaults:
        # fused attention template; the matmul and conv templates read plain layouts
        return PassDefaults(decompose_attention=False, pack_weights=False,
                            blocked_conv_layout=False, sparsity=True,
                            fusion_advisor=False, pad_columns=True, channels_last=True,
                            rms_norm=True, merge_projections=True, epilogue_flags=True,
                            row_epilogues=True)

    def sparse_chooser(self, *, estimate: Callable[[], Any], store: Any = None) -> Any:
        """The GPU's blocks (>= 16x16) and dtypes (fp16, bf16 too); a 2:4 weight also has the
        semi24 library candidate. With a GPU both are timed (decisions kept in ``store``);
        without one (TRITON_INTERPRET=1) the analytical estimate alone, which never picks
        2:4. (The CPU latency model's ``estimate`` does not apply to GPU kernels.)"""
        gpu = gpu_present()

        def semi24_runs(layer: Any) -> bool:  # without a GPU: whether it could (reported, not picked)
            return (semi24.available if gpu else semi24.fits)(layer.dtype, *layer.kn)

        analytical = AnalyticalChooser(dict(CUDA_BREAK_EVEN), dtypes=(
            DType.float32, DType.float16, DType.bfloat16), semi24=semi24_runs)
        if not gpu:
            return analytical

        def measure(layer: Any, block: tuple[int, int]) -> tuple[float, float]:
            return measure_layer(layer, block, self.target)

        def measure_2to4(layer: Any) -> tuple[float, float]:
            from tilefx.codegen.triton.sparse import measure_2to4  # looked up per call: tests monkeypatch it

            return measure_2to4(layer, self.target)
        return MeasuredChooser(measure, target=self.target.key(), estimate=analytical,
                               measure_2to4=measure_2to4, store=store)

