"""What tilefx compiles for: a ``Target`` names the backend and carries the
hardware facts that schedules and the cost model use (cores, vector width,
cache sizes).

``Target.host_cpu()`` detects the machine we run on. The LLVM CPU name comes
from LLVM itself when TVM is importable (``tvm.codegen.llvm.GetHostCPUName``),
otherwise from ``/proc/cpuinfo`` flags; the triple is always given explicitly
because the conda-built LLVM rejects ``-mcpu=native`` for its default triple.
Sizes come from sysfs, so detection costs no TVM import unless asked.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from tilefx import settings
from tilefx.codegen.backend import backend_for

if TYPE_CHECKING:
    from tilefx.codegen.backend import Backend

log = logging.getLogger("tilefx.codegen")

# cpuinfo flags -> (llvm mcpu) from the most to the least capable, for hosts
# where TVM/LLVM cannot tell us its own CPU name.
_FLAG_LADDER = (
    ({"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"}, "znver4", "sapphirerapids"),
    ({"avx512f", "avx512bw", "avx512vl"}, "skylake-avx512", "skylake-avx512"),
    ({"avx2", "fma"}, "znver2", "haswell"),
    ({"avx"}, "sandybridge", "sandybridge"),
)


@dataclass(frozen=True, slots=True)
class Target:
    kind: str = "cpu"                  # "cpu" (LLVM via TVM) | "cuda"
    mtriple: str = "x86_64-linux-gnu"
    mcpu: str = "generic"
    mattr: tuple[str, ...] = ()        # extra LLVM features, e.g. ("+avx512f",)
    cores: int = 1
    vector_bytes: int = 16             # widest SIMD register
    l1_bytes: int = 32 * 1024
    l2_bytes: int = 1024 * 1024
    l3_bytes: int = 8 * 1024 * 1024
    arch: str = ""                     # cuda: "sm_90"; cpu: unused

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"unknown target kind {self.kind!r}: use 'cpu' or 'cuda'")
        object.__setattr__(self, "mattr", tuple(self.mattr))

    def backend(self) -> Backend:
        """The code generator for this target (TVM for ``cpu``, Triton for ``cuda``)."""
        return backend_for(self)

    def vector_lanes(self, itemsize: int = 4) -> int:
        """Elements of ``itemsize`` bytes in one SIMD register (16 for fp32 on AVX-512)."""
        return max(1, self.vector_bytes // itemsize)

    @staticmethod
    def host_cpu() -> Target:
        return _detect_host()

    @staticmethod
    def parse(text: str) -> Target:
        """``"cpu"`` (the host), ``"cpu:skylake-avx512"`` (a named LLVM CPU) or a JSON object."""
        text = text.strip()
        if text.startswith("{"):
            return Target.from_json(text)
        kind, _, cpu = text.partition(":")
        if kind in ("cpu", "llvm"):
            host = Target.host_cpu()
            return host if not cpu else for_mcpu(host, cpu)
        if kind == "cuda":
            return cuda_target(cpu or None)
        raise ValueError(f"cannot parse target {text!r}: expected 'cpu', 'cpu:<mcpu>' or 'cuda'")

    def to_tvm(self) -> Any:
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm  # heavy: loaded on first use

        if self.kind == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.arch or "sm_80"})
        spec: dict[str, Any] = {"kind": "llvm", "mtriple": self.mtriple, "mcpu": self.mcpu,
                                "num-cores": self.cores}
        if self.mattr:
            spec["mattr"] = list(self.mattr)
        return tvm.target.Target(spec)

    def key(self) -> str:
        """A short stable string for cache keys and database rows."""
        return f"{self.kind}-{self.mtriple}-{self.mcpu}-{'+'.join(self.mattr)}-{self.cores}c"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Target:
        data = json.loads(text)
        data["mattr"] = tuple(data.get("mattr", ()))
        return Target(**data)


# LLVM CPU names by their widest vector register, for targets named below the host's
# level ("cpu:haswell" on an AVX-512 machine): schedules size their vectors from
# ``vector_bytes``, so an AVX2 target must not keep the host's 64-byte width.
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
                "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
                "graniterapids", "graniterapids-d", "diamondrapids", "znver4", "znver5",
                "x86-64-v4", "knl", "knm")
_AVX_CPUS = ("sandybridge", "ivybridge", "haswell", "broadwell", "skylake", "alderlake",
             "raptorlake", "meteorlake", "arrowlake", "arrowlake-s", "lunarlake", "pantherlake",
             "gracemont", "sierraforest", "grandridge", "clearwaterforest", "znver1", "znver2",
             "znver3", "x86-64-v3", "bdver1", "bdver2", "bdver3", "bdver4", "btver2")


def vector_bytes_of(mcpu: str) -> int | None:
    """The widest SIMD register of an x86 LLVM CPU name, or None if it is not one we know."""
    if mcpu in _AVX512_CPUS:
        return 64
    if mcpu in _AVX_CPUS:
        return 32
    if mcpu in ("x86-64", "x86-64-v2", "generic", "nehalem", "westmere", "core2", "penryn",
                "silvermont", "goldmont", "goldmont-plus", "tremont", "btver1", "k8", "amdfam10"):
        return 16
    return None


def for_mcpu(host: Target, mcpu: str) -> Target:
    """``host`` compiled for another LLVM CPU: its vector width follows the CPU's, so a
    ``cpu:haswell`` target builds the AVX2 code an AVX2-only machine runs. An unknown name
    keeps the host's width and says so."""
    width = vector_bytes_of(mcpu)
    if width is None:
        log.warning("target cpu:%s: unknown LLVM CPU name for the vector width; assuming "
                    "the host's %d-byte vectors", mcpu, host.vector_bytes)
        width = host.vector_bytes
    return replace(host, mcpu=mcpu, vector_bytes=width)


def cuda_target(arch: str | None = None) -> Target:
    """A cuda target: facts of the current device when torch sees one (SM count as
    ``cores``, shared memory per block as ``l1_bytes``, L2 size), else an H100's sizes (what
    the Triton templates' defaults are tuned for) under the name sm_80 unless ``arch`` is given."""
    facts: dict[str, Any] = {"cores": 132, "l1_bytes": 227 * 1024, "l2_bytes": 50 * 1024 * 1024}
    try:
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            facts = {"arch": f"sm_{p.major}{p.minor}", "cores": p.multi_processor_count,
                     "l2_bytes": int(getattr(p, "L2_cache_size", 0)) or 50 * 1024 * 1024,
                     "l1_bytes": int(getattr(p, "shared_memory_per_block_optin", 0)) or 48 * 1024}
    except Exception as e:  # noqa: BLE001 - no usable CUDA: plain defaults
        log.debug("no CUDA device facts: %s", e)
    arch = arch or facts.pop("arch", "sm_80")
    facts.pop("arch", None)
    return Target(kind="cuda", mcpu=arch, arch=arch, vector_bytes=16, **facts)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _parse_size(text: str | None) -> int | None:
    if not text:
        return None
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1].upper(), 1)
    try:
        return int(text.rstrip("KMGkmg")) * mult
    except ValueError:
        return None


def _cache_sizes() -> dict[int, int]:
    """Per-level data/unified cache size of cpu0, from sysfs."""
    out: dict[int, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for i in range(8):
        level = _read(f"{base}/index{i}/level")
        if level is None:
            break
        if _read(f"{base}/index{i}/type") == "Instruction":
            continue
        size = _parse_size(_read(f"{base}/index{i}/size"))
        if size:
            out[int(level)] = size
    return out


def _cpu_flags() -> set[str]:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _llvm_host_cpu() -> str | None:
    """LLVM's own name for this CPU, if TVM is installed (it is the most accurate)."""
    try:
        import tvm_ffi  # heavy: loaded on first use

        name = str(tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUName")())
        return name if name and name != "generic" else None
    except Exception:  # noqa: BLE001 - any failure means "ask cpuinfo instead"
        return None


@lru_cache(maxsize=1)
def _detect_host() -> Target:
    flags = _cpu_flags()
    vendor_amd = "AuthenticAMD" in (_read("/proc/cpuinfo") or "")
    forced = settings.forced_mcpu()
    mcpu = forced or _llvm_host_cpu()
    if mcpu is None:
        mcpu = "generic"
        for needed, amd, intel in _FLAG_LADDER:
            if needed <= flags:
                mcpu = amd if vendor_amd else intel
                break
    vector_bytes = 64 if "avx512f" in flags else 32 if "avx2" in flags or "avx" in flags else 16
    caches = _cache_sizes()
    machine = platform.machine() or "x86_64"
    target = Target(kind="cpu", mtriple=f"{machine}-linux-gnu", mcpu=mcpu,
                    cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                    vector_bytes=vector_bytes,
                    l1_bytes=caches.get(1, 32 * 1024), l2_bytes=caches.get(2, 1024 * 1024),
                    l3_bytes=caches.get(3, 8 * 1024 * 1024))
    if forced:  # a CPU below the host's level (tests of AVX2 / generic code) gets its width
        target = for_mcpu(target, forced)
    log.debug("host target: %s", target)
    return target
