"""The backend interface: one object per code generator, returned by ``Target.backend()``.

Everything above ``codegen/`` that depends on which code generator a target
uses asks its ``Backend`` instead of comparing the target's kind:

- code: ``build`` (a ``kernel`` op + schedule + bindings -> a callable taking
  inputs then outputs), ``build_library`` (the extern candidate: the library
  call plus epilogue), ``default_schedule``, ``space`` (a ``SearchSpace``,
  with the extern candidate where the template has one), ``fingerprint``
  (identity of the generated code, ``extern_fingerprint`` for the library's);
- measuring: ``tuning_pair`` (the builder and runner the tuner builds and times
  candidates with), ``timer`` (whole-model timing), ``check_placement``
  (device and tolerance dtypes of a checked build); ``ship`` / ``unship``
  (``ships_builds``): a built candidate packed on the machine that built it and
  installed on the one that times it (the Ray cluster, ``autotune/cluster.py``);
- the passes' hooks: ``pass_defaults`` (which passes apply to this code
  generator), ``pack_factor`` / ``block_factor`` (the weight panel and channel
  block a schedule reads), ``sparse_timers`` (timing dense vs sparse layers);
- facts: ``name`` (reports), ``feature_set`` (what the cost model reads from a
  candidate), ``cost_model_arch`` (which shipped model fits), ``cpu_features``
  (what an artifact requires of a machine), ``writes_artifacts``.

``backend_for(target)`` is the one place a target kind picks a backend. Each
backend module imports its heavy dependency (TVM, Triton) only when it builds.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from tilefx.codegen.schedule import Schedule
    from tilefx.codegen.space import SearchSpace
    from tilefx.codegen.target import Target
    from tilefx.ir.graph import Op


class FeatureSet(enum.Enum):
    """What the learned cost model reads from a candidate of this backend."""

    LOOP_NEST = "loop_nest"      # the scheduled TVM loop nest (cost_model/features.py)
    TILING = "tiling"            # the Triton template's tiling (cost_model/gpu_features.py)


@dataclass(frozen=True)
class PassDefaults:
    """Which target-dependent passes apply to this code generator's kernels."""

    decompose_attention: bool    # False where a fused attention template exists
    pack_weights: bool           # the contraction template reads packed weight panels
    blocked_conv_layout: bool    # the conv template reads NCHWc blocked layouts
    sparsity: bool               # block-sparse kernels exist for this target
    fusion_advisor: bool         # the learned latency model can vet fusions (opt-in)
    pad_columns: bool            # matmuls with unaligned rows (N % 8 != 0) are several times slower
    channels_last: bool = False  # conv regions in NHWC (the library's tensor-core convs want it)
    rms_norm: bool = False       # a written-out RMSNorm becomes one row op (the template has it)
    merge_projections: bool = False  # q, k, v of one input packed into one matmul (GPU waves)
    epilogue_flags: bool = False  # any/all of a matmul's epilogue value computed in that kernel (atomics)
    row_epilogues: bool = False  # a keepdim reduction's kernel computes ops on its input's shape after it


class KernelFn(Protocol):
    def __call__(self, *tensors: Any) -> None: ...


@dataclass(frozen=True)
class CheckPlacement:
    """Where a checked build runs and which dtype's tolerance judges each output."""

    device: str
    dtypes: tuple[Any, ...]


@dataclass(frozen=True)
class Shipment:
    """A built candidate packed to travel to another machine (``Backend.ship``)."""

    artifact: str                            # what the builder returned (TVM: the cache key)
    payload: bytes = field(repr=False)       # what travels (TVM: the kernel's .so)
    digest: str                              # what the receiver checks the payload against


class Backend:
    """The interface; ``codegen/tvm/backend.py`` and ``codegen/triton/backend.py`` implement it."""

    name: str = ""
    feature_set: FeatureSet = FeatureSet.LOOP_NEST
    cost_model_arch: str = ""
    writes_artifacts: bool = False
    ships_builds: bool = False   # ship/unship exist: a build can be timed on another machine
    # untuned kernels take the learned cost model's pick over the fixed default (measured to pay
    # on this backend; TILEFX_DEFAULT_SCHEDULE / CompileOptions.default_schedules override)
    default_from_cost_model: bool = False

    def __init__(self, target: Target) -> None:
        self.target = target

    # -- code
    def build(self, op: Op, schedule: Schedule | None = None,
              bindings: Mapping[Any, int] | None = None) -> Any:
        raise NotImplementedError

    def build_library(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Any:
        raise NotImplementedError

    def default_schedule(self, op: Op, bindings: Mapping[Any, int] | None = None) -> Schedule:
        raise NotImplementedError

    def prebuild(self, work: Sequence[tuple[Op, Mapping[Any, int]]],
                 build: Callable[[Op, Mapping[Any, int]], Any]) -> dict[str, str] | None:
        """Compile each (op, bindings) of ``work`` ahead of the one-by-one builds, side by side
        where the backend can (Triton: parallel processes). ``build`` is the compile's own
        (cached) build, so nothing is emitted twice. What failed, by kernel name, or None when the backend does
        nothing here (the default: it compiles in ``build``)."""
        return None

    def space(self, op: Op, bindings: Mapping[Any, int] | None = None) -> SearchSpace:
        raise NotImplementedError

    def fingerprint(self, op: Op, schedule: Schedule,
                    bindings: Mapping[Any, int] | None = None) -> str:
        raise NotImplementedError

    def extern_fingerprint(self) -> str:
        raise NotImplementedError

    def source(self, built: Any) -> str:
        """The generated code of a built kernel, for ``tilefx inspect --source``."""
        return str(getattr(built, "lowered", "") or getattr(built, "source", ""))

    # -- measuring
    def tuning_pair(self, *, workers: int, timeout: float, repeats: int,
                    min_repeat_seconds: float) -> tuple[Any, Any]:
        """The builder and runner one tuner builds and times candidates with."""
        raise NotImplementedError

    def timer(self) -> Callable[[Callable[..., Any], Sequence[Any]], float]:
        """Median milliseconds of ``fn(*inputs)`` for whole-model comparisons."""
        raise NotImplementedError

    def check_placement(self, op: Op) -> CheckPlacement:
        return CheckPlacement("cpu", tuple(r.type.dtype for r in op.results))

    def ship(self, artifact: str) -> Shipment:
        """The build ``artifact`` (from this machine's ``tuning_pair`` builder), packed
        for another machine of the same target."""
        raise NotImplementedError(f"the {self.name} backend's builds live in the process "
                                  "that made them: build where you measure")

    def unship(self, shipment: Shipment) -> str:
        """Install a ``ship``-ped build here, so this machine's runner finds it; returns
        its artifact. A payload that does not match its digest is refused (``ValueError``)."""
        raise NotImplementedError(f"the {self.name} backend's builds live in the process "
                                  "that made them: build where you measure")

    # -- the passes' hooks
    def pass_defaults(self) -> PassDefaults:
        raise NotImplementedError

    def pack_factor(self, op: Op, schedule: Schedule) -> int | None:
        """The weight panel width ``op`` built with ``schedule`` reads (None: plain layout)."""
        return None

    def block_factor(self, op: Op, schedule: Schedule) -> int | None:
        """The channel block of a conv built with ``schedule`` (None: plain NCHW)."""
        return None

    def sparse_chooser(self, *, estimate: Callable[[], Any], store: Any = None) -> Any:
        """The pass's dense-vs-sparse chooser for this backend (``passes.sparsity``)."""
        raise NotImplementedError

    def cpu_features(self) -> list[str]:
        """The instruction-set features code for this target needs of a machine."""
        return []


@lru_cache(maxsize=32)
def backend_for(target: Target) -> Backend:
    """The backend that generates code for ``target`` (one object per target)."""
    module, cls = _BACKENDS[target.kind]
    return getattr(importlib.import_module(module), cls)(target)


# target kind -> the backend class; the only place a kind picks a code generator
_BACKENDS = {"cpu": ("tilefx.codegen.tvm.backend", "TVMBackend"),
             "cuda": ("tilefx.codegen.triton.backend", "TritonBackend")}
