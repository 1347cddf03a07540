"""Functional hashing: the identity of the computation a kernel performs.

Two kernels built differently (``relu(x)`` and ``maximum(x, 0)``, ``x * 2``
and ``x + x``, one linear layer traced twice with other value names) compute
the same function; their tuning records should be shared, and a kernel whose
records exist need not be tuned again (Gillard et al., "Unified Functional
Hashing in AutoML", 2023). So the workload key of a kernel is not its IR
text but a hash of what it *computes*:

    inputs = reference_inputs(kernel_op, bindings)   # fixed, seeded random tensors
    functional_hash(kernel_op, bindings)             # hash of the rounded outputs
    workload_key(kernel_op, bindings)                # kind + signature + functional hash

- Inputs are random with a fixed seed per position, chosen by type only
  (floats normal, integers in [0, 4), bools fair), so equal signatures get
  equal inputs. Weights are inputs of a kernel, so they are random too: the
  workload is the function of all its inputs.
- The reference runs the kernel body in the IR interpreter with every float
  value widened to float64 (explicit ``cast`` ops still round), so graphs
  that differ only by float reassociation agree to ~1e-15, far below the
  rounding below.
- Each float output is divided by its scale (largest finite magnitude),
  rounded to 4 decimal digits of that scale and hashed with the scale itself
  (4 significant digits), its shape and dtype; NaN and +-inf hash as
  themselves. Integer and bool outputs hash exactly.

The same reference is the tuner's correctness guard: ``outputs_match``
compares a candidate's outputs with ``reference_outputs`` at the tolerance
of the output dtype, and a candidate that disagrees is rejected. The compiler
checks every newly built kernel the same way (``compiler/check.py``), on the
same run: ``reference_run`` computes inputs and outputs once for both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from tilefx.ir import reference_ops  # noqa: F401  (registers every op's reference)
from tilefx.ir.graph import Graph, Op, Value
from tilefx.ir.identity import specialize
from tilefx.ir.interpreter import InterpreterError, _run_op, bind_shapes, torch_dtype
from tilefx.ir.types import DType, TensorType

if TYPE_CHECKING:
    import torch

HASH_VERSION = 1          # bumped when the recipe changes: old keys must not match new ones
DIGITS = 4                # decimal digits kept, relative to each output's scale
INT_HIGH = 4              # integer inputs are drawn from [0, INT_HIGH): safe as small indices

# (rtol, atol relative to the reference's scale) per output dtype
TOLERANCES: dict[DType, tuple[float, float]] = {
    DType.float64: (1e-7, 1e-9),
    DType.float32: (1e-4, 1e-5),
    DType.float16: (1e-2, 1e-3),
    DType.bfloat16: (4e-2, 1e-2),
}

_WIDE = (DType.float32, DType.float16, DType.bfloat16)


def _body(kernel_op: Op, bindings: Mapping[Any, int] | None) -> Graph:
    if kernel_op.name != "kernel" or kernel_op.body is None:
        raise ValueError(f"functional hashing expects a 'kernel' op with a body, got {kernel_op.name!r}")

    body = specialize(kernel_op.body, bindings or {})
    for v in (*body.inputs, *body.outputs):
        if not v.type.is_static:
            raise ValueError(f"kernel {kernel_op.attr('name')!r}: %{v.name} has symbolic shape "
                             f"{v.type}; pass bindings (e.g. {{'s0': 8}}) to hash one specialization")
    return body


def reference_inputs(kernel_op: Op, bindings: Mapping[Any, int] | None = None,
                     seed: int = 0) -> list[torch.Tensor]:
    """Fixed random inputs for the kernel's body: the same for the same input types."""
    body = _body(kernel_op, bindings)
    tensors = []
    for i, v in enumerate(body.inputs):
        gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * i + 17)
        shape, dtype = tuple(int(d) for d in v.type.shape), v.type.dtype
        if dtype == DType.bool:
            t = torch.rand(shape, generator=gen) < 0.5
        elif dtype.is_int:
            t = torch.randint(0, INT_HIGH, shape, generator=gen, dtype=torch_dtype(dtype))
        elif dtype.is_float:
            # drawn in float32 then converted, so f16/bf16/f64 inputs hold the same numbers
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(torch_dtype(dtype))
        else:
            raise ValueError(f"kernel {kernel_op.attr('name')!r}: cannot make a random input of "
                             f"dtype {dtype.short} for %{v.name}")
        tensors.append(t.contiguous())
    _valid_sparse_structure(body, tensors)
    _indices_inside_tables(body, tensors)
    return tensors


def _indices_inside_tables(body: Graph, tensors: list[torch.Tensor]) -> None:
    """Integer inputs are drawn from [0, INT_HIGH): as ``take`` indices into a table of
    fewer rows (an embedding of 1 to 3 rows) they would be out of range, and the
    reference run would raise. Fold them into the table (unchanged where it has >= INT_HIGH
    rows, so the hash of every other kernel stays what it was)."""
    where = {v.name: i for i, v in enumerate(body.inputs)}
    for op in body.ops:
        if op.name != "take" or op.inputs[1].name not in where:
            continue
        table = op.inputs[0].type
        size = int(table.shape[op.attr("axis") % max(table.rank, 1)]) if table.rank else 1
        i = where[op.inputs[1].name]
        if size < INT_HIGH:
            tensors[i] = (tensors[i] % max(size, 1)).contiguous()


def _valid_sparse_structure(body: Graph, tensors: list[torch.Tensor]) -> None:
    """Random indices would point outside a ``bsr_matmul``'s weight: give its ``indices`` and
    ``indptr`` inputs a valid block structure instead (blocks spread evenly over the block
    columns, at distinct seeded K positions)."""
    where = {v.name: i for i, v in enumerate(body.inputs)}
    for op in body.ops:
        if op.name != "bsr_matmul" or not all(v.name in where for v in op.inputs[2:4]):
            continue
        x, data = op.inputs[0].type, op.inputs[1].type
        nnzb, bk = int(data.shape[0]), int(data.shape[1])
        axis = op.attr("axis") % x.rank
        k_blocks = int(x.shape[axis]) // bk
        n_blocks = int(op.inputs[3].type.shape[0]) - 1
        gen = torch.Generator().manual_seed(nnzb * 31 + n_blocks)
        indptr = torch.tensor([j * nnzb // n_blocks for j in range(n_blocks + 1)], dtype=torch.int32)
        indices = torch.cat([torch.randperm(k_blocks, generator=gen)[:int(indptr[j + 1] - indptr[j])]
                             .sort().values for j in range(n_blocks)]).to(torch.int32)
        tensors[where[op.inputs[2].name]] = indices.contiguous()
        tensors[where[op.inputs[3].name]] = indptr.contiguous()
        if op.attr("impl") == "semi24" and op.inputs[1].name in where:
            # the 2:4 kernel reads at most 2 nonzeros in every 4 along K: so do its inputs
            data = tensors[where[op.inputs[1].name]]
            k = torch.arange(bk).view(1, bk, 1)
            n = torch.arange(data.shape[2]).view(1, 1, -1)
            keep = ((k - n) % 4 == 0) | ((k - n - 1) % 4 == 0)
            tensors[where[op.inputs[1].name]] = (data * keep.to(data.dtype)).contiguous()


def _widen(t: TensorType, to: DType = DType.float64) -> TensorType:
    return t.with_dtype(to) if t.dtype in _WIDE else t


def _run_wide(body: Graph, inputs: Sequence[torch.Tensor],
              to: DType = DType.float64) -> list[torch.Tensor]:
    """The body's outputs computed with every float value in float64 (or in ``to``:
    float32 widens only half-precision values)."""
    if len(inputs) != len(body.inputs):
        raise ValueError(f"kernel body @{body.name} takes {len(body.inputs)} inputs, got {len(inputs)}")
    bound: dict[Any, int] = {}
    bind_shapes([v.type for v in body.inputs], [tuple(t.shape) for t in inputs], bound,
                what=f"kernel body @{body.name} inputs")
    wide = torch_dtype(to)
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor) and t.device.type != "cpu"), None)
    env = {v.name: (t.to(wide) if t.is_floating_point() and v.type.dtype in _WIDE else t)
           for v, t in zip(body.inputs, inputs)}
    for op in body.ops:
        # only the declared result types widen; attributes (a cast's target dtype) keep
        # their meaning, and no Graph is built, so nothing here needs to verify
        wide_op = replace(op, results=tuple(Value(r.name, _widen(r.type, to)) for r in op.results))
        try:
            results = _run_op(wide_op, body, [env[v.name] for v in op.inputs], bound)
        except InterpreterError:
            raise
        except Exception as e:
            raise InterpreterError(f"kernel body @{body.name}: op {op.name} -> "
                                   f"{[str(r) for r in op.results]} failed in the reference run: "
                                   f"{type(e).__name__}: {e}") from e
        for r, t in zip(op.results, results):
            # a const or iota inside the body is made on the CPU: where the inputs are on a
            # GPU it joins them there (else its consumer mixes devices and the check's
            # reference falls back to the host)
            env[r.name] = t.to(device) if device is not None and isinstance(t, torch.Tensor) else t
    return [env[v.name] for v in body.outputs]


def reference_outputs(kernel_op: Op, inputs: Sequence[torch.Tensor],
                      bindings: Mapping[Any, int] | None = None) -> list[torch.Tensor]:
    """The kernel's true outputs on ``inputs`` (computed wide, returned in the IR dtypes)."""
    if bindings:
        body = _body(kernel_op, bindings)
    else:  # symbolic dims are bound from the inputs' shapes by the interpreter
        if kernel_op.name != "kernel" or kernel_op.body is None:
            raise ValueError(f"reference_outputs expects a 'kernel' op, got {kernel_op.name!r}")
        body = kernel_op.body
    return [t.to(torch_dtype(v.type.dtype)).contiguous()
            for v, t in zip(body.outputs, _run_wide(body, inputs))]


def _signature(types: Sequence[TensorType]) -> str:
    return ",".join(f"{t.dtype.short}[{'x'.join(str(int(d)) for d in t.shape)}]" for t in types)


def _digest_tensor(h: Any, t: torch.Tensor, declared: DType) -> None:
    h.update(f"|{declared.short}{tuple(t.shape)}|".encode())
    if not t.is_floating_point():
        h.update(t.contiguous().to(torch.int64 if t.dtype != torch.bool else torch.uint8)
                 .numpy().tobytes())
        return
    x = t.to(torch.float64)
    finite = torch.isfinite(x)
    scale = float(x[finite].abs().max()) if bool(finite.any()) else 0.0
    scale = scale or 1.0
    h.update(f"{scale:.{DIGITS - 1}e}".encode())
    q = torch.round(torch.where(finite, x, 0.0) / scale * 10**DIGITS).to(torch.int64)
    # non-finite values get codes no finite value can take (|q| <= 10**DIGITS)
    big = 10**DIGITS + 1
    q = torch.where(torch.isnan(x), big, q)
    q = torch.where(x == float("inf"), big + 1, q)
    q = torch.where(x == float("-inf"), big + 2, q)
    h.update(q.contiguous().numpy().tobytes())


def functional_hash(kernel_op: Op, bindings: Mapping[Any, int] | None = None) -> str:
    """Hex hash of what the kernel computes: equal for equal functions (same signature)."""
    # the tuner asks for the hash and the key of the same kernel: run the reference once
    key = tuple(sorted((str(k), int(v)) for k, v in (bindings or {}).items()))
    try:
        return _functional_hash_cached(kernel_op, key)
    except TypeError as e:  # an unhashable attribute value: compute without the cache
        if "unhashable" not in str(e):
            raise
        return _functional_hash_cached.__wrapped__(kernel_op, key)


@functools.lru_cache(maxsize=256)
def _functional_hash_cached(kernel_op: Op, bindings: tuple[tuple[str, int], ...]) -> str:
    body = _body(kernel_op, dict(bindings))
    _, outputs = reference_run(kernel_op, dict(bindings))
    h = hashlib.sha256(f"fh{HASH_VERSION}|{_signature([v.type for v in body.inputs])}".encode())
    for v, t in zip(body.outputs, outputs):
        _digest_tensor(h, t, v.type.dtype)
    return h.hexdigest()[:32]


def reference_run(kernel_op: Op, bindings: Mapping[Any, int] | None = None, *,
                  cached_only: bool = False
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """``reference_inputs`` and the wide reference outputs (floats in float64) on them.

    Computed once per kernel and bindings: the functional hash and the compiler's
    check of a newly built kernel both need this run, the slow part of either.
    ``cached_only``: None unless it was computed already. The tensors are shared:
    callers copy before anything may write to them.
    """
    key = tuple(sorted((str(k), int(v)) for k, v in (bindings or {}).items()))
    try:
        hit = _RUNS.get((kernel_op, key))
    except TypeError as e:  # an unhashable attribute value: compute without the cache
        if "unhashable" not in str(e):
            raise
        return None if cached_only else _reference_run(kernel_op, key)
    if hit is not None:
        _RUNS.move_to_end((kernel_op, key))
        return hit
    if cached_only:
        return None
    run = _RUNS[(kernel_op, key)] = _reference_run(kernel_op, key)
    if len(_RUNS) > _RUNS_LIMIT:
        _RUNS.popitem(last=False)
    return run


# small: the tensors of a large conv's run are megabytes, and the hash and the check of a
# kernel ask for its run one right after the other
_RUNS: OrderedDict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
_RUNS_LIMIT = 8


def _reference_run(kernel_op: Op, bindings: tuple[tuple[str, int], ...]
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    body = _body(kernel_op, dict(bindings))
    inputs = reference_inputs(kernel_op, dict(bindings))
    return inputs, _run_wide(body, inputs)


def check_reference(kernel_op: Op, bindings: Mapping[Any, int] | None = None, device: str = "cpu"
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs and reference outputs (in the output dtypes) to check a built kernel with.

    The functional hash's wide run when it was computed (tuning computes it); else the
    same inputs through the interpreter with floats in at least float32, not float64:
    float64 convolutions have no fast path in torch on CPU (resnet18's reference took
    2.4 s of a 35 s compile), while float32 rounding (~1e-6 of the scale for these sizes)
    stays far inside the float32 tolerance of ``outputs_match``.
    """
    run = reference_run(kernel_op, bindings, cached_only=True)
    if run is None:
        body = _body(kernel_op, bindings)
        inputs = reference_inputs(kernel_op, bindings)
        if device != "cpu":  # the same seeded inputs, the interpreter's torch ops on the device
            on_device = [t.to(device) for t in inputs]
            with no_tf32():
                return on_device, narrow(kernel_op, _run_wide(body, on_device, DType.float32))
        run = inputs, _run_wide(body, inputs, DType.float32)
    return run[0], narrow(kernel_op, run[1])


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """A float32 reference on a GPU computes in float32: cuDNN's TF32 (torch's default for
    convolutions) keeps 10 mantissa bits, no better than the fp16 kernels it judges."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def narrow(kernel_op: Op, wide: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Wide reference outputs in the kernel's output dtypes (what ``reference_outputs`` gives)."""
    assert kernel_op.body is not None
    return [t.to(torch_dtype(v.type.dtype)).contiguous()
            for v, t in zip(kernel_op.body.outputs, wide)]


def workload_key(kernel_op: Op, bindings: Mapping[Any, int] | None = None) -> str:
    """The database key of a kernel: template kind, signature and functional hash.

    The kind is part of the key because a schedule only makes sense for the
    template (space of knobs) it was written for.
    """
    body = _body(kernel_op, bindings)
    sig = (_signature([v.type for v in body.inputs]) + "->"
           + _signature([v.type for v in body.outputs]))
    if len(sig) > 160:  # many-input kernels: keep keys short, the hash still identifies
        sig = "sig" + hashlib.sha256(sig.encode()).hexdigest()[:16]
    return f"{kernel_op.attr('kind')}:{sig}:{functional_hash(kernel_op, bindings)}"


def _dtype_of(dtype: DType | str | Any) -> DType:
    if isinstance(dtype, DType):
        return dtype
    name = str(dtype).removeprefix("torch.")
    return DType.from_short(name)


def outputs_match(got: Sequence[torch.Tensor] | torch.Tensor, want: Sequence[torch.Tensor] | torch.Tensor,
                  dtype: DType | str | Any | None = None) -> bool:
    """Whether a candidate's outputs agree with the reference (NaN/inf where it has them).

    Floats: ``|got - want| <= atol * scale + rtol * |want|`` with the tolerance of
    ``dtype`` (default: each output's own dtype) and ``scale`` the reference's
    largest finite magnitude; integers and bools exactly.
    """
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if tuple(g.shape) != tuple(w.shape):
            return False
        dt = _dtype_of(dtype if dtype is not None else w.dtype)
        if not (w.is_floating_point() and dt.is_float):
            if not torch.equal(g.to(w.dtype), w):
                return False
            continue
        g64, w64 = g.to(torch.float64), w.to(torch.float64)
        if not torch.equal(torch.isnan(g64), torch.isnan(w64)):
            return False
        inf = torch.isinf(w64)
        if not torch.equal(torch.isinf(g64), inf) or not torch.equal(g64[inf], w64[inf]):
            return False
        ok = torch.isfinite(w64)
        if not bool(ok.any()):
            continue
        rtol, atol = TOLERANCES.get(dt, TOLERANCES[DType.float32])
        scale = float(w64[ok].abs().max()) or 1.0
        if not bool(((g64[ok] - w64[ok]).abs() <= atol * scale + rtol * w64[ok].abs()).all()):
            return False
    return True
