"""The fusion advisor: does fusing an epilogue/prologue into an anchor kernel pay?

``passes/fusion.py`` asks ``advisor.should_fuse(fused, separate)`` where it
would merge elementwise/injective ops into a contraction or reduction group
(``fused`` is the would-be ``kernel`` op, ``separate`` the kernels it replaces).
The advisor predicts each kernel's latency at its default schedule with a
**regression** model (``-log2 seconds``; a rank model's scores compare only
within one workload, never a fused kernel with its parts) and fuses when

    predicted fused <= sum(predicted separate) * (1 - margin).

When the ratio fused / separate falls in the ``unsure`` band (0.8..1.25 by
default) and a measurer is set, both sides are built at the target backend's
default schedules and timed in-process on the host (``codegen.timing.host_median``),
and the measurement decides: fuse unless the separate
kernels measure faster by more than ``tolerance`` (3%: isolated timings on a
shared machine wobble by that much, and the fused kernel's saved round trip
through memory shows less in isolation than inside the model). Decisions are cached by
the kernels' computation (``ir.identity.kernel_key``: name-blind IR text), so a
transformer's repeated layers cost one decision. ``decisions`` keeps every
one for the compile report (``FusionDecision.line``).

Latency models exist per backend ``cost_model_arch`` (``LATENCY_MODELS``: x86 CPUs
only); other targets get no advisor. The shipped model ``default_x86_latency.json``
(feature version 3) was trained with

    tilefx collect --db cm5.db --workloads sparse --trials 8      # added to the quiet cm2.db
    tilefx train-cost-model --db cm5.db --target cpu --objective regression \
        -o tilefx/cost_model/default_x86_latency.json

on a copy of the quiet-machine database of ``benchmarks/results/cost-model-cpu-2026-11-26.md``
plus 88 ``bsr_matmul`` kernels and their dense counterparts (175 workloads, 4080 candidates;
every workload used for the final model). ``SparseEstimate`` (below) is the sparsity pass's
use of it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import sympy

from tilefx.codegen.timing import host_median
from tilefx.cost_model.model import LearnedModel
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tilefx.ir.functional_hash import reference_inputs
from tilefx.ir.identity import kernel_key
from tilefx.ir.interpreter import torch_dtype

log = logging.getLogger("tilefx.cost_model.advisor")

# the shipped regression (latency) models, by the backend's cost_model_arch
LATENCY_MODELS = {"x86_64": Path(__file__).with_name("default_x86_latency.json")}
UNSURE = (0.8, 1.25)   # predicted fused/separate ratios the model is not trusted on
SYMBOL_SIZE = 8        # a dynamic dim's size when the advisor is given no binding

Measurer = Callable[[Any, Any, Mapping[Any, int]], float]   # (kernel, target, bindings) -> seconds


@dataclass(frozen=True)
class FusionDecision:
    fused: str                      # the fused kernel's ops, e.g. "matmul+add+gelu"
    parts: int                      # how many separate kernels it replaces
    predicted_fused_ms: float
    predicted_separate_ms: float
    fuse: bool
    measured_fused_ms: float | None = None
    measured_separate_ms: float | None = None

    @property
    def measured(self) -> bool:
        return self.measured_fused_ms is not None

    def line(self) -> str:
        s = (f"{self.fused}: predicted {self.predicted_fused_ms:.4f} ms fused vs "
             f"{self.predicted_separate_ms:.4f} ms in {self.parts} kernels")
        if self.measured:
            s += f"; measured {self.measured_fused_ms:.4f} vs {self.measured_separate_ms:.4f} ms"
        return s + (" -> fuse" if self.fuse else " -> keep separate")


def _ops_of(kernel: Any) -> str:
    return "+".join(op.name for op in kernel.body.ops if op.name != "const")


def _free_symbols(kernel: Any) -> set[Any]:
    out: set[Any] = set()
    for v in (*kernel.inputs, *kernel.results):
        out |= set(v.type.free_symbols())
    return out


def measure_kernel(kernel: Any, target: Any, bindings: Mapping[Any, int]) -> float:
    """Median seconds of ``kernel`` built by ``target``'s backend at its default schedule, on
    its reference inputs, timed on the host (the advisor's targets are CPUs)."""
    import torch  # heavy, and only needed when a fusion is measured

    fn = target.backend().build(kernel, None, dict(bindings) or None)
    inputs = reference_inputs(kernel, dict(bindings) or None)
    outs = [torch.empty([int(sympy.sympify(d).subs(bindings)) for d in r.type.shape],
                        dtype=torch_dtype(r.type.dtype)) for r in kernel.results]
    return host_median(fn, [*inputs, *outs], repeats=5, min_seconds=0.005)


class FusionAdvisor:
    """``should_fuse(fused, separate)`` for ``passes.fusion``: a model's word, measured when unsure."""

    def __init__(self, target: Any, model: Any, *, measurer: Measurer | None = measure_kernel,
                 margin: float = 0.0, unsure: tuple[float, float] = UNSURE, tolerance: float = 0.03,
                 bindings: Mapping[Any, int] | None = None) -> None:
        self.target, self.model, self.measurer = target, model, measurer
        self.margin, self.unsure, self.tolerance = margin, unsure, tolerance
        self.bindings = dict(bindings or {})
        self.decisions: list[FusionDecision] = []
        self._cache: dict[tuple[str, ...], bool] = {}
        self.asked = 0

    def _bindings(self, kernel: Any) -> dict[Any, int]:
        by_name = {str(k): int(v) for k, v in self.bindings.items()}
        return {s: by_name.get(str(s), SYMBOL_SIZE) for s in _free_symbols(kernel)}

    def predict_seconds(self, kernel: Any) -> float:
        """Predicted seconds of ``kernel`` at its default schedule (regression model)."""
        b = self._bindings(kernel)
        schedule = self.target.backend().default_schedule(kernel, b or None)
        model = self.model.with_bindings(b) if hasattr(self.model, "with_bindings") else self.model
        score = model.predict(kernel, [schedule], self.target)[0]
        return float(2.0 ** (-score))

    def _measure(self, kernels: Sequence[Any]) -> float:
        assert self.measurer is not None
        return sum(self.measurer(k, self.target, self._bindings(k)) for k in kernels)

    def should_fuse(self, fused: Any, separate: Sequence[Any]) -> bool:
        self.asked += 1
        key = (kernel_key(fused), *sorted(kernel_key(k) for k in separate))
        if key in self._cache:
            return self._cache[key]
        pf = self.predict_seconds(fused)
        ps = sum(self.predict_seconds(k) for k in separate)
        fuse = pf <= ps * (1.0 - self.margin)
        mf = ms = None
        lo, hi = self.unsure
        if self.measurer is not None and lo <= pf / ps <= hi:
            try:
                mf, ms = self._measure([fused]), self._measure(separate)
                fuse = mf <= ms * (1.0 + self.tolerance)
            except Exception as e:  # noqa: BLE001 - a kernel that does not build: trust the model
                log.warning("fusion advisor: could not measure %s (%s); deciding by the model",
                            _ops_of(fused), e)
                mf = ms = None
        d = FusionDecision(_ops_of(fused), len(separate), pf * 1e3, ps * 1e3, fuse,
                           None if mf is None else mf * 1e3, None if ms is None else ms * 1e3)
        log.debug("fusion advisor: %s", d.line())
        self.decisions.append(d)
        self._cache[key] = fuse
        return fuse

    def lines(self) -> list[str]:
        """Report lines: one per rejected or measured fusion, then a count."""
        out = [d.line() for d in self.decisions if not d.fuse or d.measured]
        rejected = sum(not d.fuse for d in self.decisions)
        measured = sum(d.measured for d in self.decisions)
        out.append(f"{len(self.decisions)} fusions considered ({self.asked} asked), "
                   f"{rejected} rejected, {measured} measured")
        return out


def latency_model(target: Any) -> Any:
    """The shipped regression model for ``target``'s backend ``cost_model_arch`` (x86 CPUs),
    or None (no xgboost, no model for that arch)."""
    path = LATENCY_MODELS.get(target.backend().cost_model_arch)
    if path is None or not path.is_file() or importlib.util.find_spec("xgboost") is None:
        return None
    try:
        return LearnedModel.load(path)
    except Exception as e:  # noqa: BLE001 - an old feature version: no advice, rules only
        log.warning("latency model %s not used (%s); fusion follows the rules", path, e)
        return None


def default_advisor(target: Any, bindings: Mapping[Any, int] | None = None) -> FusionAdvisor | None:
    model = latency_model(target)
    return None if model is None else FusionAdvisor(target, model, bindings=bindings)


# ------------------------------------------------------------- sparse or dense

def predicted_seconds(model: Any, kernel: Any, target: Any) -> float:
    """Seconds the regression ``model`` predicts for a static ``kernel`` at its default schedule."""
    schedule = target.backend().default_schedule(kernel)
    return float(2.0 ** (-model.predict(kernel, [schedule], target)[0]))


class SparseEstimate:
    """The sparsity pass's estimate from the latency model: for a layer, the dense kernel and
    a ``bsr_matmul`` kernel per candidate block (with that block's nonzero count) are predicted;
    the cheapest block is returned with both times. ``MeasuredChooser`` then times the two
    kernels it names when the prediction is close enough to matter, so the model chooses and a
    measurement confirms. Same contract as ``AnalyticalChooser.estimate``."""

    def __init__(self, target: Any, model: Any) -> None:
        self.target, self.model = target, model

    def estimate(self, layer: Any) -> tuple[Any, float, float, float]:
        """(best block, its density, dense ms, sparse ms)."""
        ranked, dense_ms = self.rank_blocks(layer)
        block, density, ms = ranked[0] if ranked else (None, 1.0, float("inf"))
        return block, density, dense_ms, ms

    def rank_blocks(self, layer: Any) -> tuple[list[tuple[Any, float, float]], float]:
        """Every block as (block, density, predicted sparse ms), fastest first; dense ms."""
        k, n = layer.kn
        dense_ms = predicted_seconds(self.model, _dense_kernel(layer), self.target) * 1e3
        ranked = []
        for block, density in layer.densities:
            nnzb = max(1, round(density * (k // block[0]) * (n // block[1])))
            ms = predicted_seconds(self.model, _sparse_kernel(layer, block, nnzb), self.target) * 1e3
            ranked.append((block, density, ms))
        return sorted(ranked, key=lambda r: r[2]), dense_ms


def _dense_kernel(layer: Any) -> Any:
    k, n = layer.kn
    f32 = lambda *s: TensorType(DType.float32, s)  # noqa: E731
    if layer.kind == "conv1x1":
        return kernel_op("contraction", [f32(*layer.x_shape), f32(n, k, 1, 1)],
                         lambda b, x, w: b.op("conv2d", x, w), "dense_conv1x1")
    return kernel_op("contraction", [f32(layer.rows, k), f32(k, n)],
                     lambda b, x, w: b.op("matmul", x, w), "dense_matmul")


def _sparse_kernel(layer: Any, block: tuple[int, int], nnzb: int) -> Any:
    k, n = layer.kn
    x = layer.x_shape if layer.kind == "conv1x1" else (layer.rows, k)
    axis = 1 if layer.kind == "conv1x1" else -1
    types = [TensorType(DType.float32, tuple(x)), TensorType(DType.float32, (nnzb, *block)),
             TensorType(DType.int32, (nnzb,)), TensorType(DType.int32, (n // block[1] + 1,))]
    return kernel_op("sparse_contraction", types,
                     lambda b, a, d, i, p: b.op("bsr_matmul", a, d, i, p, axis=axis), "bsr")


def sparse_estimate(target: Any) -> SparseEstimate | None:
    """The learned estimate for ``target``, or None (no model: the analytical one is used)."""
    model = latency_model(target)
    return None if model is None else SparseEstimate(target, model)
