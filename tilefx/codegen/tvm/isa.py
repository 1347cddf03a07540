"""Instruction-set features of a CPU target: what an artifact's kernels require of a machine."""

from __future__ import annotations

from typing import Sequence

from tilefx.codegen.target import Target

# LLVM feature names that change which instructions a kernel may contain. Tuning
# flags (fast-*, slow-*, macrofusion...) do not, so a host without them is fine.
_ISA_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "bmi", "popcnt", "lzcnt", "movbe", "amx",
                 "aes", "pclmul", "vaes", "gfni", "vpclmulqdq", "sha", "adx", "cx16", "cmov",
                 "neon", "sve", "fp-armv8", "dotprod", "fullfp16", "i8mm", "bf16")



def isa_features(features: Sequence[str]) -> list[str]:
    """The instruction-set features among LLVM's feature names, sorted."""
    return sorted(f for f in features if f.startswith(_ISA_PREFIXES))


def target_cpu_features(target: Target) -> list[str]:
    """The ISA features LLVM enables for ``target`` (imports TVM: compile side only)."""
    from tvm.target import codegen  # heavy: loaded on first use

    enabled = set(codegen.llvm_get_cpu_features(target.to_tvm()))
    for attr in target.mattr:  # explicit "+avx512f" / "-avx512f" on top of the CPU's own
        (enabled.add if attr.startswith("+") else enabled.discard)(attr[1:])
    return isa_features(enabled)
