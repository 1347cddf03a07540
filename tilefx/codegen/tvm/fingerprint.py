"""Fingerprints: the identity of the code a candidate schedule generates.

Many points of a schedule space generate the same code: a tile at least as
large as its loop, an unroll or a vector width over an extent-1 loop, a
``parallel`` annotation on a loop of one iteration, knobs a template clamps
to a divisor of the extent. Measuring each of them again wastes tuning time,
so the tuner measures one per fingerprint.

    fp = fingerprint(kernel_op, schedule, target, bindings)

The kernel is lowered with the schedule exactly as ``codegen/tvm`` would
build it, then taken through TVM's own TIR lowering pipeline (the passes
``tvm.compile`` runs before LLVM: loop canonicalization, buffer flattening,
vectorize/unroll lowering, simplification, no-op removal, CSE, packed API) —
but no machine code is made. What LLVM would receive is structurally hashed
together with the target key and the TVM version. Equal fingerprint ⇒ equal
TIR handed to the code generator ⇒ identical code. The hash is structural,
so names of loops and buffers do not matter; a few milliseconds per
candidate against ~100 ms or more for a real build.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.codegen.tvm.kernel import to_prim_func
from tilefx.codegen.tvm.schedules import apply_schedule, default_schedule
from tilefx.ir.graph import Op

log = logging.getLogger("tilefx.codegen.tvm.fingerprint")

# Bumped when what goes into the hash changes, so old database rows do not match new ones.
FINGERPRINT_VERSION = 1


def scheduled_module(kernel_op: Op, target: Target, schedule: Schedule | None = None,
                     bindings: Mapping[Any, int] | None = None) -> Any:
    """The scheduled ``IRModule`` that ``build_kernel`` would compile (no codegen)."""
    func = to_prim_func(kernel_op, bindings)
    if schedule is None:
        schedule = default_schedule(kernel_op, target, bindings=bindings)
    return apply_schedule(func, kernel_op.attr("kind"), schedule, target).mod


def lowered_module(mod: Any, target: Target) -> Any:
    """``mod`` after TVM's default TIR pipeline for ``target``: what LLVM code generation gets."""
    import tvm  # heavy: loaded on first use

    # the same steps as tvm.tirx.build, in the caller's PassContext as build_kernel's
    # tvm.compile is, so that no pass runs here that the real build would skip
    tvm_target = target.to_tvm()
    mod = tvm.tirx.transform.BindTarget(tvm_target.with_host(tvm_target))(mod)
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(tvm_target)
    mod = pipeline(mod)
    # CPU targets have no device part: everything is the host module
    return finalize_host()(mod)


# scheduled-TIR hash + target key -> fingerprint: lowering is deterministic, so code
# already lowered in this process (a large share of a space, see the tests) is not again
_MEMO: dict[tuple[int, str], str] = {}
_MEMO_LIMIT = 8192


def fingerprint_module(mod: Any, target: Target) -> str:
    """The fingerprint of a scheduled module (lowered here) for ``target``."""
    import tvm  # heavy: loaded on first use
    import tvm_ffi  # heavy: loaded on first use

    # map_free_vars: lowered modules hold buffers as free variables in attributes, which
    # would otherwise hash by identity and make every lowering unique
    memo_key = (tvm_ffi.structural_hash(mod, map_free_vars=True), target.key())
    known = _MEMO.get(memo_key)
    if known is not None:
        return known
    try:
        lowered = lowered_module(mod, target)
    except Exception as e:  # noqa: BLE001 - fall back to the simplified scheduled TIR
        log.debug("TIR pipeline failed for fingerprinting (%s); hashing simplified TIR", e)
        lowered = tvm.ir.transform.Sequential([
            tvm.tirx.transform.StmtSimplify(), tvm.tirx.transform.RemoveNoOp()])(mod)
    shash = tvm_ffi.structural_hash(lowered, map_free_vars=True)
    text = f"v{FINGERPRINT_VERSION}|{shash}|{target.key()}|{tvm.__version__}"
    result = hashlib.sha256(text.encode()).hexdigest()[:32]
    if len(_MEMO) >= _MEMO_LIMIT:
        _MEMO.clear()
    _MEMO[memo_key] = result
    return result


def fingerprint(kernel_op: Op, schedule: Schedule | None, target: Target,
                bindings: Mapping[Any, int] | None = None) -> str:
    """Identity of the code ``schedule`` generates for ``kernel_op`` on ``target`` (hex)."""
    return fingerprint_module(scheduled_module(kernel_op, target, schedule, bindings), target)
