"""Every Triton template, built and run under TRITON_INTERPRET=1 on small odd shapes
(every block is partly masked) against PyTorch, in fp32 and fp16."""

import re

import pytest
import torch
import torch.nn.functional as F
from triton_testing import close, f32, kernel_op, rand, run, t

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.templates import emit_source
from tilefx.ir import DType

F16 = DType.float16
LOOPED = Schedule.of(XBLOCK=2, RBLOCK=16, persistent=False, num_warps=2)
SMALL_MM = Schedule.of(impl="triton", BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2)


# ------------------------------------------------------------------ pointwise

@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_pointwise_chain_with_broadcast_and_permute(dtype):
    op = kernel_op("pointwise", [t(dtype, 3, 5, 7), t(dtype, 7)], lambda b, x, c: b.op(
        "gelu", b.op("add", b.op("permute", x, dims=(0, 2, 1)), b.op("reshape", c, shape=(7, 1)))))
    x, c = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2)
    (y,) = run(op, [x, c])
    close(y, F.gelu(x.float().permute(0, 2, 1) + c.float().reshape(7, 1)), dtype)


def test_pointwise_injective_ops():
    """slice, concat, pad, reshape (re-linearized), broadcast_to and iota are index arithmetic."""
    def body(b, x, y):
        s = b.op("slice", x, axis=1, start=1, end=9, step=2)            # [3, 4, 5]
        c = b.op("concat", s, y, axis=2)                                 # [3, 4, 7]
        p = b.op("pad", c, pads=(0, 0, 1, 2, 0, -1), value=-1.5)         # [3, 7, 6]
        r = b.op("reshape", p, shape=(7, 18))
        i = b.op("cast", b.op("iota", shape=(7, 18), axis=1), dtype=DType.float32)
        return b.op("mul", r, b.op("broadcast_to", i, shape=(7, 18)))
    op = kernel_op("pointwise", [f32(3, 9, 5), f32(3, 4, 2)], body)
    x, y = rand(f32(3, 9, 5), 3), rand(f32(3, 4, 2), 4)
    c = torch.cat([x[:, 1:9:2], y], 2)
    p = F.pad(c, (0, -1, 1, 2), value=-1.5)
    (out,) = run(op, [x, y])
    close(out, p.reshape(7, 18) * torch.arange(18.0))


def test_reshape_splits_and_merges_dims_group_by_group():
    op = kernel_op("pointwise", [f32(6, 20, 1)], lambda b, x: b.op("neg", b.op(
        "permute", b.op("reshape", x, shape=(2, 3, 4, 5)), dims=(3, 1, 0, 2))))
    x = rand(f32(6, 20, 1), 8)
    (y,) = run(op, [x])
    close(y, -x.reshape(2, 3, 4, 5).permute(3, 1, 0, 2))
    from tilefx.codegen.triton import kernel_source

    # group-wise: [6] <-> [2, 3] and [20, 1] <-> [4, 5] re-linearize without dividing
    assert kernel_source(op).count("//") == 3  # only the flat index's own split


def test_pointwise_take_where_and_multi_output_shapes():
    def body(b, table, idx, x):
        e = b.op("take", table, idx, axis=0)                             # [2, 3, 6]
        small = b.op("exp", x)                                           # [3, 1]: own launch
        big = b.op("where", b.op("gt", e, b.scalar(0.0, DType.float32)), e, b.op("mul", e, small))
        return [big, small]
    op = kernel_op("pointwise", [f32(10, 6), t(DType.int64, 2, 3), f32(3, 1)], body)
    table, x = rand(f32(10, 6), 5), rand(f32(3, 1), 6)
    idx = torch.tensor([[0, 9, -1], [3, 3, 7]])
    big, small = run(op, [table, idx, x])
    e = table[idx.remainder(10)]
    close(small, x.exp())
    close(big, torch.where(e > 0, e, e * x.exp()))


def test_pointwise_unary_table():
    names = ["neg", "exp", "abs", "relu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid",
             "erf", "sin", "cos", "floor", "ceil", "round", "sign"]
    op = kernel_op("pointwise", [f32(5, 13)], lambda b, x: [b.op(n, x) for n in names])
    x = rand(f32(5, 13), 7) * 3
    x[0, :4] = torch.tensor([0.5, 1.5, -2.5, 2.0])  # round half to even
    outs = run(op, [x])
    for n, y in zip(names, outs):
        ref = getattr(torch, n, None) or getattr(F, n)
        close(y, ref(x))


# ------------------------------------------------------------------ reductions

@pytest.mark.parametrize("schedule", [None, LOOPED], ids=["persistent", "looped"])
@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_softmax_with_prologue_and_epilogue(schedule, dtype):
    op = kernel_op("reduction", [t(dtype, 5, 37), t(dtype, 5, 37)], lambda b, x, r: b.op(
        "mul", b.op("softmax", b.op("add", x, r), dim=-1), x))
    x, r = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2)
    (y,) = run(op, [x, r], schedule)
    close(y, torch.softmax(x.float() + r.float(), -1) * x.float(), dtype)


@pytest.mark.parametrize("schedule", [None, LOOPED], ids=["persistent", "looped"])
def test_layer_norm_and_log_softmax(schedule):
    op = kernel_op("reduction", [f32(6, 37), f32(37), f32(37)], lambda b, x, w, c: [
        b.op("relu", b.op("layer_norm", x, w, c, normalized_ndim=1)), x])
    x, w, c = rand(f32(6, 37), 1), rand(f32(37), 2), rand(f32(37), 3)
    y, x_again = run(op, [x, w, c], schedule)
    close(y, F.relu(F.layer_norm(x, (37,), w, c)))
    close(x_again, x)
    op = kernel_op("reduction", [f32(4, 19, 3)], lambda b, x: b.op("log_softmax", x, dim=1))
    x = rand(f32(4, 19, 3), 4)
    (y,) = run(op, [x], schedule)
    close(y, torch.log_softmax(x, 1))


@pytest.mark.parametrize("schedule", [None, LOOPED], ids=["persistent", "looped"])
@pytest.mark.parametrize("name,dims,keep", [("sum", (1,), False), ("mean", (0, 2), True),
                                             ("amax", (), False), ("amin", (2,), True),
                                             ("prod", (0,), False)])
def test_row_reductions_any_axes(schedule, name, dims, keep):
    op = kernel_op("reduction", [f32(3, 6, 5)], lambda b, x: [
        b.op("exp", x), b.op("mul", b.op(name, b.op("exp", x), dims=dims, keepdim=keep),
                             b.scalar(2.0, DType.float32))])
    x = rand(f32(3, 6, 5), 5)
    e, y = run(op, [x], schedule)
    if name == "prod":
        ref = torch.prod(x.exp(), dims[0], keepdim=keep)
    elif dims:
        ref = getattr(torch, name)(x.exp(), dim=dims, keepdim=keep)
    else:
        ref = getattr(torch, name)(x.exp())
    close(e, x.exp())
    close(y, ref * 2)


def test_pooling():
    x = rand(f32(2, 3, 11, 9), 1)
    op = kernel_op("reduction", [f32(2, 3, 11, 9)], lambda b, x: b.op("relu", b.op(
        "max_pool2d", b.op("mul", x, x), kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)))
    close(run(op, [x])[0], F.relu(F.max_pool2d(x * x, 3, 2, 1, ceil_mode=True)))
    op = kernel_op("reduction", [f32(2, 3, 11, 9)], lambda b, x: b.op(
        "avg_pool2d", x, kernel=(3, 2), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False))
    close(run(op, [x])[0], F.avg_pool2d(x, (3, 2), 2, 1, ceil_mode=True, count_include_pad=False))
    for size in ((1, 1), (3, 4)):
        op = kernel_op("reduction", [f32(2, 3, 11, 9)],
                       lambda b, x, s=size: b.op("adaptive_avg_pool2d", x, output_size=s))
        close(run(op, [x])[0], F.adaptive_avg_pool2d(x, size))


# ------------------------------------------------------------------ contractions

@pytest.mark.parametrize("schedule", [Schedule.of(impl="triton"), SMALL_MM, Schedule.of(impl="library")],
                         ids=["default-tiles", "small-tiles", "library"])
def test_matmul_transposed_weight_bias_gelu_residual(schedule):
    op = kernel_op("contraction", [f32(2, 37, 29), f32(23, 29), f32(23), f32(2, 37, 23)],
                   lambda b, x, w, c, r: b.op("add", b.op("gelu", b.op("add", b.op(
                       "matmul", x, b.op("permute", w, dims=(1, 0))), c)), r))
    x, w, c, r = (rand(v.type, i) for i, v in enumerate(op.inputs))
    (y,) = run(op, [x, w, c, r], schedule)
    close(y, F.gelu(x @ w.T + c) + r, DType.float32)


@pytest.mark.parametrize("schedule", [None, SMALL_MM, Schedule.of(impl="triton", BLOCK_M=32, BLOCK_N=16,
                                                                  BLOCK_K=16, GROUP_M=1)],
                         ids=["default", "small-tiles", "tall-tiles"])
@pytest.mark.parametrize("lead", [(3, 5), (2, 3, 5), (7, 1), (1, 1)], ids=str)
def test_matmul_with_one_weight_tiles_the_batch_as_rows(schedule, lead):
    """``[..., S, K] @ W``: the batch dims are rows of one GEMM (a 1-D grid), read through a
    permute (a ViT's seq-first attention input) and with a residual at the output's index."""
    from tilefx.codegen.triton import kernel_source
    from tilefx.codegen.triton.matmul import dims, folds_batch

    K, N = 29, 23
    perm = tuple(range(len(lead)))[::-1] + (len(lead),)  # x is stored with the leading dims reversed
    stored = tuple(lead[i] for i in perm[:-1]) + (K,)
    op = kernel_op("contraction", [f32(*stored), f32(K, N), f32(N), f32(*lead, N)],
                   lambda b, x, w, c, r: b.op("add", b.op("add", b.op(
                       "matmul", b.op("permute", x, dims=perm), w), c), r))
    x, w, c, r = (rand(v.type, i) for i, v in enumerate(op.inputs))
    assert folds_batch(op.body) and dims(op.body)[0] == numel_of(lead)
    assert "program_id(1)" not in kernel_source(op, schedule or Schedule.of(impl="triton"))
    (y,) = run(op, [x, w, c, r], schedule)
    close(y, x.permute(perm) @ w + c + r, DType.float32)


def numel_of(shape):
    out = 1
    for d in shape:
        out *= d
    return out


@pytest.mark.parametrize("schedule", [None, SMALL_MM], ids=["default", "small-tiles"])
def test_batched_matmul_fp16_broadcast(schedule):
    op = kernel_op("contraction", [t(F16, 3, 1, 19, 40), t(F16, 2, 40, 24)],
                   lambda b, x, w: b.op("relu", b.op("matmul", x, w)))
    x, w = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2)
    (y,) = run(op, [x, w], schedule)
    assert y.dtype == torch.float16
    close(y, torch.relu(x.float() @ w.float()), F16)


@pytest.mark.parametrize("schedule", [None, Schedule.of(impl="triton", BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)],
                         ids=["library", "implicit-gemm"])
@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_conv2d_with_epilogue(schedule, dtype):
    op = kernel_op("contraction", [t(dtype, 2, 4, 9, 9), t(dtype, 6, 4, 3, 3), t(dtype, 6, 1, 1)],
                   lambda b, x, w, c: b.op("relu", b.op("add", b.op(
                       "conv2d", x, w, stride=(2, 2), padding=(1, 2), dilation=(1, 2)), c)))
    x, w, c = (rand(v.type, i) for i, v in enumerate(op.inputs))
    if dtype == F16 and schedule is None:
        pytest.skip("torch has no fp16 conv2d on CPU")
    ref = F.relu(F.conv2d(x.float(), w.float(), None, 2, (1, 2), (1, 2)) + c.float())
    close(run(op, [x, w, c], schedule)[0], ref, dtype)


def _attention_ref(q, k, v, causal, mask=None):
    q, k, v = q.float(), k.float(), v.float()
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("impl", ["triton", "library"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_attention(impl, causal, dtype):
    types = [t(dtype, 2, 3, 37, 64), t(dtype, 2, 1, 45, 64), t(dtype, 2, 1, 45, 64)]
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v, causal=causal))
    q, k, v = (rand(ty, i) for i, ty in enumerate(types))
    schedule = Schedule.of(impl=impl, BLOCK_M=16, BLOCK_N=32)
    (y,) = run(op, [q, k, v], schedule)
    close(y, _attention_ref(q, k.expand(2, 3, 45, 64), v.expand(2, 3, 45, 64), causal), dtype)


# (L, S, BLOCK_M, BLOCK_N): more queries than keys, tiles of queries larger and smaller than the
# key blocks, sizes that are and are not multiples of them, one query, one key
@pytest.mark.parametrize("length, source, bm, bn", [
    (45, 37, 16, 32), (50, 50, 64, 16), (64, 64, 16, 16), (33, 70, 32, 64), (1, 9, 16, 16), (9, 1, 16, 16)])
def test_causal_attention_masks_only_the_diagonal_blocks(length, source, bm, bn):
    types = [f32(2, length, 32), f32(2, source, 32), f32(2, source, 32)]
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v, causal=True))
    q, k, v = (rand(ty, i) for i, ty in enumerate(types))
    source_text = emit_source(op, Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn))[0].text
    assert source_text.count("offs_m >= offs_n") == 1  # in the diagonal loop only
    assert re.search(r"\[\(2, \d+\)\]\(", source_text)  # grid (batch, query tiles): heaviest first
    (y,) = run(op, [q, k, v], Schedule.of(impl="triton", BLOCK_M=bm, BLOCK_N=bn))
    close(y, _attention_ref(q, k, v, True))


def test_attention_tiles_under_128x128_never_run_on_8_warps():
    """8 warps on a small query x key tile computed wrong results on an H200 (and Triton's own
    tutorial prunes those points): such a point builds its 4-warp twin, one fingerprint;
    wide heads default to 4 warps too."""
    from tilefx.codegen.triton import attention

    types = [t(F16, 2, 8, 512, 256)] * 3
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v, causal=True))
    clamp = lambda **k: attention.clamp(op.body, Schedule.of(impl="triton", **k))  # noqa: E731
    assert clamp(BLOCK_M=64, BLOCK_N=64, num_warps=8)["num_warps"] == 4
    assert clamp(BLOCK_M=64, BLOCK_N=128, num_warps=8)["num_warps"] == 4
    assert clamp(BLOCK_M=128, BLOCK_N=128, num_warps=8)["num_warps"] == 8
    assert clamp(BLOCK_M=16, BLOCK_N=16, num_warps=2)["num_warps"] == 2
    small = dict(impl="triton", BLOCK_M=64, BLOCK_N=64, num_stages=2)
    assert emit_source(op, Schedule.of(**small, num_warps=8))[0].text == \
        emit_source(op, Schedule.of(**small, num_warps=4))[0].text
    default = attention.default_schedule(op.body)
    assert (default["BLOCK_M"], default["BLOCK_N"], default["num_warps"], default["num_stages"]) == (64, 64, 4, 2)


@pytest.mark.parametrize("batch", [(), (3,), (2, 2)], ids=["no-batch", "batch", "batch-heads"])
def test_causal_attention_hands_out_the_heaviest_query_tiles_first(batch):
    """The causal grid is (batch, query tiles) with tile ``tiles - 1 - program_id(1)``: every
    (batch, tile) pair is computed once, whatever order the tiles run in."""
    types = [f32(*batch, 70, 16), f32(*batch, 70, 16), f32(*batch, 70, 16)]
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v, causal=True))
    q, k, v = (rand(ty, i) for i, ty in enumerate(types))
    schedule = Schedule.of(impl="triton", BLOCK_M=16, BLOCK_N=16)
    text = emit_source(op, schedule)[0].text
    assert ("4 - tl.program_id(1)" in text) == bool(batch)  # 5 tiles of 16 queries
    (y,) = run(op, [q, k, v], schedule)
    close(y, _attention_ref(q, k, v, True))


@pytest.mark.parametrize("mask_dtype", [DType.bool, DType.float32])
def test_attention_mask_head_dim_128(mask_dtype):
    types = [f32(2, 21, 128), f32(2, 30, 128), f32(2, 30, 128), t(mask_dtype, 21, 30)]
    op = kernel_op("contraction", types, lambda b, q, k, v, m: b.op("attention", q, k, v, m))
    q, k, v, m = (rand(ty, i) for i, ty in enumerate(types))
    if mask_dtype == DType.bool:
        m[:, 0] = True  # no fully masked row
    (y,) = run(op, [q, k, v, m])
    close(y, _attention_ref(q, k, v, False, m))


def test_bool_and_int_reductions():
    m = rand(t(DType.bool, 4, 9), 1)
    m[0] = False
    op = kernel_op("reduction", [t(DType.bool, 4, 9)], lambda b, m: b.op("any", m, dims=(1,)))
    assert torch.equal(run(op, [m])[0], m.any(1))
    op = kernel_op("reduction", [t(DType.bool, 4, 9)], lambda b, m: b.op(
        "all", b.op("logical_not", m), dims=(1,)))
    assert torch.equal(run(op, [m])[0], (~m).all(1))
    op = kernel_op("reduction", [t(DType.int64, 5, 7)], lambda b, x: b.op("sum", x, dims=(1,), keepdim=True))
    x = rand(t(DType.int64, 5, 7), 2)
    (s,) = run(op, [x], LOOPED)
    assert torch.equal(s, x.sum(1, keepdim=True))


@pytest.mark.parametrize("a,b", [((1, 20), (20, 7)), ((9, 20), (20, 1)), ((1, 1), (1, 1)),
                                 ((3, 1, 4), (3, 4, 1)), ((4, 1), (1, 6))])
def test_matmul_unit_dims(a, b):
    """A size-1 dim drops out of the index: tiles must still be full blocks, zero-padded."""
    op = kernel_op("contraction", [f32(*a), f32(*b)], lambda bb, x, w: bb.op("matmul", x, w))
    x, w = rand(f32(*a), 1), rand(f32(*b), 2)
    close(run(op, [x, w], Schedule.of(impl="triton"))[0], x @ w)
    close(run(op, [x, w])[0], x @ w)  # the default: cuBLAS (fp32 without TF32), out= written


@pytest.mark.parametrize("L,S,E", [(1, 5, 16), (5, 1, 16), (1, 1, 1), (3, 4, 1)])
def test_attention_unit_dims(L, S, E):
    types = [f32(2, L, E), f32(2, S, E), f32(2, S, E)]
    op = kernel_op("contraction", types, lambda b, q, k, v: b.op("attention", q, k, v))
    q, k, v = (rand(ty, i) for i, ty in enumerate(types))
    close(run(op, [q, k, v])[0], _attention_ref(q, k, v, False))


def test_matmul_epilogue_loads_mask_only_the_dims_they_index():
    """A bias ``[N]`` in a ``[BLOCK_M, BLOCK_N]`` epilogue takes the column condition only
    (one load a column, not one an element); a residual at the output's index keeps both; the
    store keeps both. Computed right on a row tail (M = 37) and a column tail (N = 23)."""
    from tilefx.codegen.triton import kernel_source

    for n, bias_load in ((32, "tl.load(in2 + offs_n)"), (23, "tl.load(in2 + offs_n, mask=offs_n < 23, other=0)")):
        op = kernel_op("contraction", [f32(37, 29), f32(29, n), f32(n), f32(37, n)],
                       lambda b, x, w, c, r: b.op("add", b.op("relu", b.op("add", b.op("matmul", x, w), c)), r))
        src = kernel_source(op, SMALL_MM)
        assert bias_load in src, src
        residual = next(line for line in src.splitlines() if "tl.load(in3" in line)
        assert "mask=" in residual and "offs_m" in src.split("tl.store")[1]
        x, w, c, r = (rand(v.type, i) for i, v in enumerate(op.inputs))
        close(run(op, [x, w, c, r], SMALL_MM)[0], torch.relu(x @ w + c) + r)


def _split_heads(b, qkv, part, heads, d):
    """GPT-2's head split inside the kernel: columns [part*H*D, (part+1)*H*D) of the QKV
    projection, as [B, H, L, D] (slice + reshape + permute, the attention's prologue)."""
    bsz, length, _ = qkv.type.shape
    s = b.op("slice", qkv, axis=2, start=part * heads * d, end=(part + 1) * heads * d, step=1)
    return b.op("permute", b.op("reshape", s, shape=(bsz, length, heads, d)), dims=(0, 2, 1, 3))


@pytest.mark.parametrize("impl", ["triton", "library"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [DType.float32, F16])
def test_attention_reads_heads_split_from_the_qkv_projection(impl, causal, dtype):
    heads, d, length = 3, 16, 37
    op = kernel_op("contraction", [t(dtype, 2, length, 3 * heads * d)], lambda b, qkv: b.op(
        "attention", *(_split_heads(b, qkv, p, heads, d) for p in range(3)), causal=causal))
    (qkv,) = (rand(v.type, 3) for v in op.inputs)
    q, k, v = (qkv.float().reshape(2, length, 3, heads, d)[:, :, p].permute(0, 2, 1, 3) for p in range(3))
    close(run(op, [qkv], Schedule.of(impl=impl))[0], _attention_ref(q, k, v, causal), dtype)


@pytest.mark.parametrize("impl", ["triton", "library"])
def test_attention_reads_repeated_kv_heads_in_place(impl):
    """Llama's GQA: 2 KV heads repeated for 6 query heads (reshape + broadcast_to + reshape),
    read by the attention kernel itself rather than copied out 3x first."""
    def repeat(b, x):
        y = b.op("reshape", x, shape=(2, 2, 1, 23, 16))
        return b.op("reshape", b.op("broadcast_to", y, shape=(2, 2, 3, 23, 16)), shape=(2, 6, 23, 16))

    op = kernel_op("contraction", [t(F16, 2, 6, 19, 16), t(F16, 2, 2, 23, 16), t(F16, 2, 2, 23, 16)],
                   lambda b, q, k, v: b.op("attention", q, repeat(b, k), repeat(b, v), causal=False))
    q, k, v = (rand(x.type, i) for i, x in enumerate(op.inputs))
    want = _attention_ref(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), False)
    close(run(op, [q, k, v], Schedule.of(impl=impl))[0], want, F16)
