"""A hand-written cost model: ranks schedules before anything is measured.

Until the learned (XGBoost) model exists, the evolutionary search ranks its
candidates with this one. It estimates a kernel's time from what dominates
on a CPU, per template kind:

- pointwise / reduction: elements / effective vector width, an unroll bonus,
  and parallel speed-up only when the kernel is big enough to pay for waking
  the threads; reductions computed per row (``fuse_rows``) make one pass;
- contraction (matmul, conv2d): peak FMA rate times the register-tile
  efficiency (FMAs per load of the ``reg_m`` x ``reg_n`` / ``reg_oc`` x
  ``vec_ow`` micro-kernel, a spill penalty once the accumulators exceed the
  register file, a small bonus for ``unroll_k``), a penalty by the cache level
  the micro-kernel's B panel lives in (``pack_b``: contiguous; unpacked: rows
  a power-of-two stride apart alias to few cache sets) plus the cost of
  packing, and the parallel speed-up of the outer tiles over the cores (with
  load imbalance, after the template's own tile shrinking).

The numbers are relative: only the order matters. ``predict`` returns scores
where higher is better (1 / estimated seconds), the convention of every
``CostModel`` (``autotune/search.py``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from tilefx.codegen.space import is_extern
from tilefx.codegen.schedule import Schedule
from tilefx.ir.identity import specialize

THREAD_WAKE_S = 5e-6     # cost of starting a parallel loop
CLOCK_HZ = 3e9
PACK_BYTES_PER_S = 8e9   # copying B (or conv weights) into panels, once per call


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(max(1, min(n, cap)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _pow2_divisor_at_most(n: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


def _static_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape) if t.is_static else tuple(64 for _ in t.shape)


class AnalyticalModel:
    """Estimated latency from vectorization, register tiling, cache fit and parallelism."""

    def __init__(self, bindings: Mapping[Any, int] | None = None) -> None:
        self.bindings = dict(bindings or {})

    def predict(self, kernel: Any, schedules: Sequence[Schedule], target: Any) -> list[float]:
        body = kernel.body
        if self.bindings:
            body = specialize(body, self.bindings)
        return [1.0 / max(self.estimate_seconds(kernel.attr("kind"), body, s, target), 1e-12)
                for s in schedules]

    def estimate_seconds(self, kind: str, body: Any, schedule: Schedule, target: Any) -> float:
        if is_extern(schedule):  # a library call: assume a well-tuned 60% of peak
            flops = _contraction_flops(body)
            return flops / (_peak_flops(target) * 0.6) if flops else 1e-3
        anchor = next((op for op in body.ops if op.name in ("matmul", "conv2d")), None)
        if kind == "contraction" and anchor is not None:
            if anchor.name == "matmul":
                return _matmul_seconds(anchor, schedule, target)
            return _conv_seconds(anchor, schedule, target)
        return _elementwise_seconds(kind, body, schedule, target)


def _peak_flops(target: Any) -> float:
    lanes = target.vector_lanes(4)
    return 2 * 2 * lanes * CLOCK_HZ  # two FMA units, 2 flops each per lane


def _registers(target: Any) -> int:
    return 32 if target.vector_bytes >= 64 else 16


def _parallel_speedup(tiles: int, cores: int) -> float:
    if tiles <= 1 or cores <= 1:
        return 1.0
    rounds = math.ceil(tiles / cores)
    return tiles / rounds


def _contraction_flops(body: Any) -> float:
    anchor = next((op for op in body.ops if op.name in ("matmul", "conv2d")), None)
    if anchor is None:
        return 0.0
    out = math.prod(_static_shape(anchor.result.type))
    w = _static_shape(anchor.inputs[1].type)
    if anchor.name == "matmul":
        return 2.0 * out * _static_shape(anchor.inputs[0].type)[-1]
    return 2.0 * out * math.prod(w[1:])


def _elementwise_seconds(kind: str, body: Any, s: Schedule, target: Any) -> float:
    n = max(math.prod(_static_shape(v.type)) for v in body.outputs)
    inner = _static_shape(body.outputs[0].type)[-1] if body.outputs[0].type.rank else 1
    lanes = target.vector_lanes(4)
    vec = _pow2_divisor_at_most(n if kind == "pointwise" else inner, int(s.get("vectorize", 1)))
    # wider than a register is split by LLVM: fine, a bit of extra pressure
    per_elem = 1.0 / min(vec, lanes) * (1.1 if vec > lanes else 1.0)
    per_elem *= 1.0 - 0.08 * math.log2(max(1, int(s.get("unroll", 1))))
    ops = max(1, sum(1 for op in body.ops if op.name != "const"))
    cycles = n * per_elem * (1 + 0.5 * ops)
    if kind == "reduction":
        cycles *= 1.0 if s.get("fuse_rows", True) else 1.6
    seconds = cycles / CLOCK_HZ
    if s.get("parallel", False):
        rows = n // max(inner, 1) if kind == "reduction" else n // max(vec, 1)
        seconds = seconds / _parallel_speedup(rows, target.cores) + THREAD_WAKE_S
    return seconds


def _matmul_seconds(anchor: Any, s: Schedule, target: Any) -> float:
    a, b = _static_shape(anchor.inputs[0].type), _static_shape(anchor.inputs[1].type)
    out = _static_shape(anchor.result.type)
    M, K, N = a[-2], a[-1], b[-1]
    batch = math.prod(out[:-2]) if len(out) > 2 else 1
    lanes = target.vector_lanes(4)
    reg_m = _largest_divisor_at_most(M, int(s.get("reg_m", 4)))
    reg_n = _pow2_divisor_at_most(N, int(s.get("reg_n", 32)))
    tile_m = min(M, max(reg_m, int(s.get("tile_m", 64))))
    tile_n = min(N, max(reg_n, int(s.get("tile_n", 128))))
    acc = reg_m * max(1, reg_n // lanes)
    fmas, loads = acc, reg_m + max(1, reg_n // lanes)
    eff = fmas / (fmas + 0.5 * loads) * min(1.0, reg_n / lanes)
    budget = _registers(target) - 2
    if acc > budget:
        eff /= 1 + 3 * (acc - budget) / budget
    eff *= 1.0 + 0.03 * math.log2(max(1, int(s.get("unroll_k", 1))))
    cache = _b_panel_penalty(K, N, reg_n, bool(s.get("pack_b", False)), target)
    # a panel is fetched once per cache tile and reused by tile_m / reg_m micro-kernels;
    # A's tile_m x K rows and B's K x tile_n tile should stay in L2 across the tile
    cache += 0.1 * reg_m / min(M, tile_m)
    cache += 0.15 * (4 * min(M, tile_m) * K > target.l2_bytes / 2)
    cache += 0.1 * (4 * min(N, tile_n) * K > target.l2_bytes / 2)
    if s.get("pack_b", False):  # B is copied once per call; small M does not amortize it
        cache += (4.0 * K * N / PACK_BYTES_PER_S) / max(
            2.0 * M * N * K / (_peak_flops(target) * eff), 1e-12)
    flops = 2.0 * batch * M * N * K
    seconds = flops / (_peak_flops(target) * eff) * cache
    if s.get("parallel", True):
        tiles = lambda: batch * math.ceil(M / tile_m) * math.ceil(N / tile_n)  # noqa: E731
        while tiles() < 2 * target.cores and tile_m > reg_m:  # as the template shrinks them
            tile_m = max(reg_m, tile_m // 2)
        while tiles() < target.cores and tile_n > reg_n:
            tile_n = max(reg_n, tile_n // 2)
        tiles = tiles()
        seconds = seconds / _parallel_speedup(tiles, target.cores) + THREAD_WAKE_S
    return seconds


def _effective_cache(size: int, stride_bytes: int, ways: int = 8) -> float:
    """Bytes of a cache usable by rows ``stride_bytes`` apart (one line per row).

    Rows a power-of-two stride apart map to a fraction of the sets: at a
    4 KiB stride only one set in 64 of an 8-way L1 is used (4 KiB aliasing).
    """
    way = max(64, size // ways)
    alias = max(1, math.gcd(stride_bytes, way) // 64)
    return size / alias


def _b_panel_penalty(K: int, N: int, reg_n: int, packed: bool, target: Any) -> float:
    """Slowdown from where the micro-kernel's B panel (K rows x reg_n columns) lives.

    Each micro-kernel streams its panel once per reg_m rows of A. Packed, the
    panel is contiguous; unpacked, its K rows are N floats apart, so each row
    is another cache line and power-of-two strides leave most sets unused.
    """
    panel = 4 * K * reg_n
    line_rows = K * 64 * max(1, math.ceil(reg_n * 4 / 64))
    if packed:
        l1, l2, touched = target.l1_bytes, target.l2_bytes, panel
    else:
        stride = 4 * N
        l1 = _effective_cache(target.l1_bytes, stride)
        l2 = _effective_cache(target.l2_bytes, stride)
        touched = line_rows
    if touched <= l1 / 2:
        return 1.0
    if touched <= l2 / 2:
        return 1.1 if packed else 1.25
    return 1.3 if packed else 2.0  # from L3 / memory on every reuse


def _conv_seconds(anchor: Any, s: Schedule, target: Any) -> float:
    n, oc, oh, ow = _static_shape(anchor.result.type)
    w = _static_shape(anchor.inputs[1].type)
    lanes = target.vector_lanes(4)
    depthwise = w[1] == 1 and oc > 1 and dict(anchor.attrs).get("groups", 1) != 1
    reg_oc = _largest_divisor_at_most(oc, int(s.get("reg_oc", 4)))
    tile_oh = _largest_divisor_at_most(oh, int(s.get("tile_oh", 2)))
    vec_ow = _largest_divisor_at_most(ow, int(s.get("vec_ow", 8)))
    if depthwise:  # no channel reduction to share: vectors run along the output width
        vregs = max(1, math.ceil(vec_ow / lanes))
        acc = reg_oc * tile_oh * vregs
        loads = acc + reg_oc
        eff = acc / (acc + loads) * min(1.0, vec_ow / (vregs * lanes))
    else:          # vectors along output channels, one broadcast input per column
        vregs = max(1, math.ceil(reg_oc / lanes))
        acc = vregs * tile_oh * vec_ow
        loads = vregs + tile_oh * vec_ow
        eff = acc / (acc + 0.5 * loads) * min(1.0, reg_oc / (vregs * lanes))
    budget = _registers(target) - 2
    if acc > budget:
        eff /= 1 + 3 * (acc - budget) / budget
    if not depthwise and not s.get("pack_w", True):
        eff *= 0.85  # strided weight loads
    flops = 2.0 * n * oc * oh * ow * math.prod(w[1:])
    seconds = flops / (_peak_flops(target) * eff)
    if s.get("parallel", True):
        tiles = n * (oc // reg_oc) * (oh // tile_oh) * (ow // vec_ow)
        seconds = seconds / _parallel_speedup(tiles, target.cores) + THREAD_WAKE_S
    return seconds
