"""Build one fused ``kernel`` op into a callable CPU function with TVM.

    built = build_kernel(kernel_op, Target.host_cpu())      # default schedule
    built(x, w, out)                                        # destination passing

Steps: the kernel's body Graph -> TE tensors (``te_ops`` registry; body
inputs become placeholders, scalar ``const`` ops TE constants) ->
``te.create_prim_func(inputs + outputs)`` -> ``s_tir.Schedule`` -> the
template of the kernel's ``kind`` applies the ``Schedule`` knobs ->
``tvm.compile``. Compiled libraries are cached on disk (``cache.py``) keyed
by the structural hash of the scheduled PrimFunc and the target, so a second
process pays only for the lowering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.target import Target
from tilefx.codegen.tvm import cache, configure_tvm_threads
from tilefx.codegen.tvm.schedules import apply_schedule, default_schedule
from tilefx.ir.identity import specialize
from tilefx.ir.graph import Op

log = logging.getLogger("tilefx.codegen.tvm")


@dataclass
class BuiltKernel:
    """A compiled kernel: call it with contiguous torch tensors, inputs then outputs."""

    name: str
    kind: str
    schedule: Schedule
    fingerprint: str           # structural hash of the scheduled PrimFunc + target
    lowered: str               # TVMScript of the scheduled PrimFunc
    module: Any = field(repr=False)
    from_cache: bool = False

    def __post_init__(self) -> None:
        self._func = self.module["main"]

    def __call__(self, *tensors: Any) -> None:
        self._func(*tensors)

    @property
    def source(self) -> str:
        """LLVM IR of the compiled module ("" when it was loaded from the disk cache)."""
        try:
            return str(getattr(self.module, "mod", self.module).inspect_source())
        except Exception:  # noqa: BLE001 - loaded .so modules carry no source
            return ""


def to_prim_func(kernel_op: Op, bindings: Mapping[Any, int] | None = None) -> Any:
    """The unscheduled PrimFunc of a kernel op (arguments: body inputs, then outputs)."""
    from tvm import te, tirx  # heavy: loaded on first use

    from tilefx.codegen.tvm import te_nn  # noqa: F401  (registers the nn computes)
    from tilefx.codegen.tvm.te_ops import TE_OPS, TeContext, shape_of, tvm_dtype  # imports TVM

    if kernel_op.name != "kernel" or kernel_op.body is None:
        raise ValueError(f"build_kernel expects a 'kernel' op with a body, got {kernel_op.name!r}")
    body = specialize(kernel_op.body, bindings or {})
    env: dict[str, Any] = {}
    placeholders = []
    for i, v in enumerate(body.inputs):
        if not v.type.is_static:
            raise ValueError(f"kernel {kernel_op.attr('name')!r}: input %{v.name} has symbolic "
                             f"shape {v.type}; pass bindings to specialize it")
        env[v.name] = te.placeholder(tuple(v.type.shape), tvm_dtype(v.type.dtype), name=f"in{i}")
        placeholders.append(env[v.name])
    ctx = TeContext()
    for op in body.ops:
        if op.name == "const":
            if op.attr("value") is None:
                raise NotImplementedError(
                    f"kernel {kernel_op.attr('name')!r}: tensor const %{op.result.name} inside a "
                    "kernel body; tensor constants must be kernel inputs")
            value = tirx.const(op.attr("value"), tvm_dtype(op.result.type.dtype))
            env[op.result.name] = te.compute(shape_of(op), _constant_fn(value),
                                             name=ctx.name("scalar"))
            continue
        fn = TE_OPS.get(op.name)
        if fn is None:
            raise NotImplementedError(f"TVM backend has no compute for op {op.name!r} "
                                      f"(in kernel {kernel_op.attr('name')!r})")
        outs = fn(ctx, op, [env[v.name] for v in op.inputs])
        for r, t in zip(op.results, outs):
            env[r.name] = t
    outputs = []
    for v in body.outputs:
        t = env[v.name]
        # an output that is an input or already an output needs its own buffer
        if any(t is p for p in placeholders) or any(t is o for o in outputs):
            t = te.compute(t.shape, _copy_fn(t), name=ctx.name("copy"))
        outputs.append(t)
    return te.create_prim_func(placeholders + outputs)


def _constant_fn(value: Any) -> Any:
    return lambda *idx: value  # te.compute rejects default arguments, so close over value


def _copy_fn(t: Any) -> Any:
    return lambda *idx: t[idx]


def build_kernel(kernel_op: Op, target: Target | None = None, schedule: Schedule | None = None,
                 *, bindings: Mapping[Any, int] | None = None, use_cache: bool = True) -> BuiltKernel:
    """Compile a ``kernel`` op with its template's schedule (the default one if None)."""
    import tvm  # heavy: loaded on first use

    configure_tvm_threads()  # before the kernel's first parallel launch (idempotent)

    target = target or Target.host_cpu()
    func = to_prim_func(kernel_op, bindings)
    if schedule is None:
        schedule = default_schedule(kernel_op, target, bindings=bindings)
    kind = kernel_op.attr("kind")
    sch = apply_schedule(func, kind, schedule, target)
    mod = sch.mod
    key = cache.kernel_key(mod, target)
    name = kernel_op.attr("name") or "kernel"
    module = cache.load(key) if use_cache else None
    from_cache = module is not None
    if module is None:
        module = tvm.compile(mod, target=target.to_tvm())
        if use_cache:
            cache.store(key, module)
    log.debug("built kernel %s (%s) %s%s", name, kind, schedule, " [cache]" if from_cache else "")
    return BuiltKernel(name, kind, schedule, key, mod.script(), module, from_cache)
