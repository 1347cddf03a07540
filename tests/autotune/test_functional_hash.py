"""Functional hashing: equal functions hash equal (whatever the graph looks like),
different functions, shapes and dtypes do not; the correctness guard rejects
wrong results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilefx.ir.functional_hash import (functional_hash, outputs_match, reference_inputs,
                                             reference_outputs, workload_key)
from tilefx.ir import DType, Op, TensorType
from tilefx.ir.types import symbol
from tilefx.ir.builder import kernel_op


def f32(*shape) -> TensorType:
    return TensorType(DType.float32, shape)




def pointwise(fn, *types, **kw) -> Op:
    return kernel_op("pointwise", types or [f32(16, 24)], fn, **kw)


def test_relu_equals_maximum_with_zero():
    relu = pointwise(lambda b, x: b.op("relu", x))
    maximum = pointwise(lambda b, x: b.op("maximum", x, b.scalar(0.0, DType.float32)))
    assert functional_hash(relu) == functional_hash(maximum)
    assert workload_key(relu) == workload_key(maximum)


def test_times_two_equals_x_plus_x():
    twice = pointwise(lambda b, x: b.op("mul", x, b.scalar(2.0, DType.float32)))
    plus = pointwise(lambda b, x: b.op("add", x, x))
    assert functional_hash(twice) == functional_hash(plus)


def _linear(names, result_name):
    def body(b, x, w, c):
        return b.op("add", b.op("matmul", x, w, result_name=result_name + "_mm"), c,
                    result_name=result_name)
    return kernel_op("contraction", [f32(8, 32), f32(32, 12), f32(12)], body,
                     name=result_name, input_names=names)


def test_same_linear_layer_with_other_value_names():
    a = _linear(["x", "w", "b"], "fc1")
    b = _linear(["inp", "weight", "bias"], "layer3_linear")
    assert a.body.inputs != b.body.inputs  # really different graphs
    assert functional_hash(a) == functional_hash(b)
    assert workload_key(a) == workload_key(b)


def test_reassociated_float_math_hashes_equal():
    # (x @ w) * 0.1 vs (x * 0.1) @ w and (a + b) + c vs a + (b + c): equal in exact
    # arithmetic, not bit-equal in float32; the wide reference keeps them equal
    t = [f32(24, 64), f32(64, 40)]
    scale_after = kernel_op("contraction", t, lambda b, x, w: b.op(
        "mul", b.op("matmul", x, w), b.scalar(0.1, DType.float32)))
    scale_before = kernel_op("contraction", t, lambda b, x, w: b.op(
        "matmul", b.op("mul", x, b.scalar(0.1, DType.float32)), w))
    assert functional_hash(scale_after) == functional_hash(scale_before)
    t3 = [f32(32, 32)] * 3
    left = pointwise(lambda b, x, y, z: b.op("add", b.op("add", x, y), z), *t3)
    right = pointwise(lambda b, x, y, z: b.op("add", x, b.op("add", y, z)), *t3)
    assert functional_hash(left) == functional_hash(right)


def test_gelu_erf_and_tanh_differ():
    erf = pointwise(lambda b, x: b.op("gelu", x, approximate="none"))
    tanh = pointwise(lambda b, x: b.op("gelu", x, approximate="tanh"))
    assert functional_hash(erf) != functional_hash(tanh)


def test_small_real_differences_change_the_hash():
    same = pointwise(lambda b, x: b.op("identity", x))
    scaled = pointwise(lambda b, x: b.op("mul", x, b.scalar(1.002, DType.float32)))
    double = pointwise(lambda b, x: b.op("mul", x, b.scalar(2.0, DType.float32)))
    hashes = {functional_hash(op) for op in (same, scaled, double)}
    assert len(hashes) == 3


def test_shapes_dtypes_and_kind_are_part_of_the_identity():
    relu = lambda b, x: b.op("relu", x)  # noqa: E731
    a = pointwise(relu, f32(16, 24))
    b = pointwise(relu, f32(24, 16))
    c = pointwise(relu, TensorType(DType.float64, (16, 24)))
    assert len({functional_hash(a), functional_hash(b), functional_hash(c)}) == 3
    reduction = kernel_op("reduction", [f32(16, 24)], relu)
    assert functional_hash(reduction) == functional_hash(a)
    assert workload_key(reduction) != workload_key(a)
    assert workload_key(a).startswith("pointwise:f32[16x24]->f32[16x24]:")


def test_nan_outputs_hash_stably():
    log = lambda b, x: b.op("log", x)  # noqa: E731  (normal inputs: about half NaN)
    a, b = pointwise(log), pointwise(log)
    inputs = reference_inputs(a)
    assert torch.isnan(reference_outputs(a, inputs)[0]).any()
    assert functional_hash(a) == functional_hash(b)
    sqrt = pointwise(lambda b, x: b.op("sqrt", x))  # NaN in the same places, other values
    assert functional_hash(sqrt) != functional_hash(a)


def test_reference_inputs_are_fixed_and_typed():
    types = [f32(4, 8), TensorType(DType.int64, (6,)), TensorType(DType.bool, (3, 3)),
             TensorType(DType.float16, (4, 8))]
    op = kernel_op("pointwise", types, lambda b, x, i, m, h: [b.op("relu", x), b.op("abs", h)])
    first, again = reference_inputs(op), reference_inputs(op)
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    x, i, m, h = first
    assert x.dtype == torch.float32 and x.std() > 0.3
    assert i.dtype == torch.int64 and 0 <= int(i.min()) and int(i.max()) < 4
    assert m.dtype == torch.bool and h.dtype == torch.float16
    other = reference_inputs(op, seed=1)
    assert not torch.equal(other[0], x)


def test_reference_outputs_match_torch_eager():
    op = kernel_op("contraction", [f32(8, 32), f32(32, 12), f32(12)], lambda b, x, w, c: b.op(
        "gelu", b.op("add", b.op("matmul", x, w), c), approximate="none"))
    x, w, c = reference_inputs(op)
    (y,) = reference_outputs(op, [x, w, c])
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.gelu(x @ w + c), rtol=1e-5, atol=1e-5)


def test_symbolic_kernel_needs_bindings():
    s0 = symbol("s0")
    op = pointwise(lambda b, x: b.op("relu", x), f32(s0, 24))
    with pytest.raises(ValueError, match="bindings"):
        functional_hash(op)
    static = pointwise(lambda b, x: b.op("relu", x), f32(16, 24))
    assert functional_hash(op, {"s0": 16}) == functional_hash(static)
    assert workload_key(op, {s0: 16}) == workload_key(static)
    # the guard's reference binds symbols from the inputs' shapes
    (y,) = reference_outputs(op, [torch.randn(5, 24)])
    assert y.shape == (5, 24)


def test_outputs_match_is_a_real_guard():
    want = [torch.randn(64, 32, generator=torch.Generator().manual_seed(3)) * 10]
    assert outputs_match([want[0] * (1 + 1e-6)], want, DType.float32)
    wrong = want[0].clone()
    wrong[5, 7] += 0.05 * want[0].abs().max()
    assert not outputs_match([wrong], want, DType.float32)
    assert not outputs_match([torch.zeros_like(want[0])], want, DType.float32)
    assert not outputs_match([want[0].T.contiguous()], want, DType.float32)  # shape
    nan = want[0].clone()
    nan[0, 0] = float("nan")
    assert not outputs_match([nan], want, DType.float32)
    assert outputs_match([nan], [nan.clone()], DType.float32)  # NaN where the reference has it
    ints = torch.arange(10)
    assert outputs_match(ints.clone(), ints, "int64")
    assert not outputs_match(ints + 1, ints, DType.int64)
    # half precision: its own (looser) tolerance, applied by default from the dtype
    h = want[0].half()
    assert outputs_match([(want[0] * (1 + 2e-3)).half()], [h])
    assert not outputs_match([(want[0] * 1.1).half()], [h])


def test_guard_accepts_compiled_kernel_and_rejects_a_wrong_one():
    import os

    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel

    os.environ.setdefault("TVM_BIND_THREADS", "0")
    erf = kernel_op("contraction", [f32(16, 64), f32(64, 32)], lambda b, x, w: b.op(
        "gelu", b.op("matmul", x, w), approximate="none"))
    tanh = kernel_op("contraction", [f32(16, 64), f32(64, 32)], lambda b, x, w: b.op(
        "gelu", b.op("matmul", x, w), approximate="tanh"))
    inputs = reference_inputs(erf)
    want = reference_outputs(erf, inputs)
    for op, expected in ((erf, True), (tanh, False)):
        got = [torch.full((16, 32), float("nan"))]
        build_kernel(op, Target.host_cpu(), use_cache=False)(*inputs, *got)
        assert outputs_match(got, want) is expected


def test_sparse_kernels_get_a_valid_block_structure():
    """Random int32 indices would index outside the weight: reference inputs of a
    bsr_matmul kernel hold a valid structure, so it can be hashed and tuned."""
    from tilefx.passes.sparsity import from_bsr

    i32 = lambda *s: TensorType(DType.int32, s)  # noqa: E731
    f32 = lambda *s: TensorType(DType.float32, s)  # noqa: E731
    op = kernel_op("sparse_contraction", [f32(3, 32), f32(6, 4, 4), i32(6), i32(5)],
                   lambda b, x, d, i, p: b.op("bsr_matmul", x, d, i, p), name="sparse")
    x, data, indices, indptr = reference_inputs(op)
    assert indptr.tolist() == [0, 1, 3, 4, 6] and int(indices.max()) < 32 // 4
    for j in range(4):  # distinct K blocks within a column
        col = indices[indptr[j]:indptr[j + 1]].tolist()
        assert col == sorted(set(col))
    (out,) = reference_outputs(op, [x, data, indices, indptr])
    w = from_bsr(data.numpy(), indices.numpy(), indptr.numpy(), 32)
    torch.testing.assert_close(out.float(), x @ torch.from_numpy(w), rtol=1e-5, atol=1e-5)
    assert functional_hash(op) == functional_hash(op)
