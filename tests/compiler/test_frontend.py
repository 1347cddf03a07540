"""Capture and frontend behaviour beyond single ops: weights, fallbacks, dynamic
batch, multi-result ops, attention, constant evaluation, the dynamo path."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilefx.compiler.capture import capture, capture_dynamo
from tilefx.compiler.frontend import lower_to_ir
from tilefx.ir.interpreter import run_graph
from tilefx.ir.types import DType, symbol


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x))) * self.scale


def lower(fn, *args, **kw):
    captured = capture(fn, args, **kw)
    return captured, lower_to_ir(captured)


def check(captured, result, fn, *args, atol=1e-5):
    got = captured.unflatten_outputs(run_graph(result.graph, captured.flatten_inputs(args)))
    torch.testing.assert_close(got, fn(*args), atol=atol, rtol=1e-4)


def op_names(graph) -> list[str]:
    return [op.name for op in graph.ops]


def test_weights_become_consts_and_inputs_are_user_tensors():
    torch.manual_seed(0)
    model = MLP().eval()
    captured, result = lower(model, torch.randn(3, 8))
    g = result.graph
    assert [v.name for v in g.inputs] == ["x"]
    assert str(g.inputs[0].type) == "f32[3, 8]"
    assert {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "scale"} <= set(g.constants)
    const_ops = [op for op in g.ops if op.name == "const" and op.attr("name") == "fc1_weight"]
    assert len(const_ops) == 1 and const_ops[0].result.type.shape == (16, 8)
    assert torch.equal(torch.from_numpy(g.constants["fc1_weight"]), model.fc1.weight.detach())
    assert result.fallbacks == []
    check(captured, result, model, torch.randn(3, 8))


def test_constant_subgraphs_are_evaluated_at_lowering():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("log_scale", torch.randn(5))

        def forward(self, x):
            return x * self.log_scale.exp() + torch.arange(5).float() * 2

    m = M()
    captured, result = lower(m, torch.randn(2, 5))
    names = op_names(result.graph)
    assert "exp" not in names and "iota" not in names  # folded into constants
    assert names.count("mul") == 1 and names.count("add") == 1
    check(captured, result, m, torch.randn(2, 5))


class ShiftedWindowMask(nn.Module):
    """Swin's attention mask for shifted windows, as torchvision builds it: zeros, then one
    slice assignment per region (``copy_`` into slices: ``slice_scatter`` once functional)."""

    def forward(self, x, attn):
        h, w, ws, ss = x.shape[1], x.shape[2], 4, 2
        mask = x.new_zeros((h, w))
        count = 0
        for hs in ((0, -ws), (-ws, -ss), (-ss, None)):
            for wsl in ((0, -ws), (-ws, -ss), (-ss, None)):
                mask[hs[0]:hs[1], wsl[0]:wsl[1]] = count
                count += 1
        mask = mask.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0)
        x = torch.roll(x, shifts=(-ss, -ss), dims=(1, 2))
        return attn + mask, x * 2


def test_slice_assignments_lower_and_a_constant_mask_folds():
    m = ShiftedWindowMask()
    x, attn = torch.randn(2, 8, 12, 3), torch.randn(6, 16, 16)
    captured, result = lower(m, x, attn)
    assert result.fallbacks == []
    check(captured, result, m, torch.randn(2, 8, 12, 3), torch.randn(6, 16, 16))
    from tilefx.passes.fold import fold_constants

    folded = op_names(fold_constants(result.graph))
    assert "where" not in folded and "pad" not in folded  # the mask depends on shapes only


def test_slice_scatter_and_copy_into_a_tensor_input():
    def fn(x, y):
        z = x.clone()
        z[:, 1:4] = y          # slice_scatter of a tensor
        z[0, -2:] = 7.0        # copy of a number into a select + slice
        return z

    x, y = torch.randn(3, 6), torch.randn(3, 3)
    captured, result = lower(fn, x, y)
    assert result.fallbacks == [] and "where" in op_names(result.graph)
    check(captured, result, fn, torch.randn(3, 6), torch.randn(3, 3))


def test_isinf_lowers_t5s_fp16_clamp():
    """T5's layers in fp16: ``where(isinf(h).any(), max - 1000, max)`` then a clamp."""
    def fn(h):
        big = torch.finfo(torch.float16).max
        limit = torch.where(torch.isinf(h).any(), big - 1000, big)
        return torch.clamp(h, min=-limit, max=limit), torch.isinf(h)

    def sample(specials):
        x = torch.randn(3, 7).half()
        x[0, 1], x[1, 5] = specials
        return x

    x = sample((float("inf"), -float("inf")))
    captured, result = lower(fn, x)
    assert result.fallbacks == []
    check(captured, result, fn, x)
    check(captured, result, fn, sample((1.0, 2.0)))  # no inf: the other branch


def test_unlowered_ops_fall_back_to_pytorch_and_are_reported(caplog):
    def fn(x):
        values, indices = torch.topk(torch.cumsum(x, dim=1), 3)
        return values * 2, indices

    x = torch.randn(4, 9)
    with caplog.at_level(logging.WARNING, logger="tilefx.frontend"):
        captured, result = lower(fn, x)
    targets = {f.target: f for f in result.fallbacks}
    assert set(targets) == {"aten.cumsum.default", "aten.topk.default"}
    assert targets["aten.cumsum.default"].nodes == ("cumsum",)
    assert "no lowering" in targets["aten.cumsum.default"].reason
    assert "1 x aten.cumsum.default will run in PyTorch (no lowering): nodes cumsum" in caplog.text
    fallbacks = [op for op in result.graph.ops if op.name == "fallback"]
    assert [op.attr("target") for op in fallbacks] == ["aten::cumsum.default", "aten::topk.default"]
    assert [str(r.type) for r in fallbacks[1].results] == ["f32[4, 3]", "i64[4, 3]"]
    x2 = torch.randn(4, 9)
    got = run_graph(result.graph, captured.flatten_inputs((x2,)))
    want = fn(x2)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])


@pytest.mark.skipif(not hasattr(DType, "complex64"), reason="the IR has no complex dtype yet")
def test_fft_falls_back():
    def fn(x):
        return torch.fft.rfft(x).abs() + 1

    x = torch.randn(3, 16)
    captured, result = lower(fn, x)
    assert [f.target for f in result.fallbacks] == ["aten.fft_rfft.default", "aten.abs.default"]
    check(captured, result, fn, torch.randn(3, 16), atol=1e-4)


def test_fft_without_complex_dtype_fails_with_a_clear_message():
    if hasattr(DType, "complex64"):
        pytest.skip("the IR has complex dtypes")
    with pytest.raises(NotImplementedError, match="complex64"):
        lower(lambda x: torch.fft.rfft(x).abs(), torch.randn(3, 16))


def test_dynamic_batch_gives_symbolic_dim():
    torch.manual_seed(0)
    model = MLP().eval()
    captured, result = lower(model, torch.randn(3, 8), dynamic_batch=True)
    g = result.graph
    s0 = symbol("s0")
    assert g.inputs[0].type.shape == (s0, 8)
    assert g.outputs[0].type.shape == (s0, 4)
    for batch in (1, 5):
        check(captured, result, model, torch.randn(batch, 8))


def test_dynamic_batch_with_a_reshape():
    def fn(x):
        return x.reshape(x.shape[0], -1, 2).sum(-1).softmax(-1)

    captured, result = lower(fn, torch.randn(4, 6), dynamic_batch=True)
    assert result.graph.inputs[0].type.shape[0] == symbol("s0")
    assert result.fallbacks == []
    check(captured, result, fn, torch.randn(7, 6))


def test_split_and_chunk_results():
    def fn(x):
        a, b, c = torch.chunk(x, 3, dim=1)  # 7 -> 3, 3, 1
        p, q = torch.split(x, [2, 5], dim=1)
        return a + b, c * 2, q.sum(1), p

    x = torch.randn(2, 7)
    captured, result = lower(fn, x)
    slices = [op for op in result.graph.ops if op.name == "slice"]
    assert sorted((op.attr("start"), op.attr("end")) for op in slices) == [(0, 2), (0, 3), (2, 7), (3, 6), (6, 7)]
    check(captured, result, fn, torch.randn(2, 7))


@pytest.mark.parametrize("variant", ["causal", "bool_mask", "float_mask"])
def test_sdpa_stays_one_attention_op(variant):
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mask = torch.rand(5, 5) > 0.3 if variant == "bool_mask" else torch.randn(5, 5)
    mask = mask | torch.eye(5, dtype=torch.bool) if variant == "bool_mask" else mask

    def fn(q, k, v, m):
        if variant == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True) + m.sum()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    captured, result = lower(fn, q, k, v, mask)
    names = op_names(result.graph)
    assert names.count("attention") == 1
    assert "softmax" not in names and "matmul" not in names
    att = next(op for op in result.graph.ops if op.name == "attention")
    assert att.attr("causal") == (variant == "causal")
    assert len(att.inputs) == (3 if variant == "causal" else 4)
    check(captured, result, fn, torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8),
          mask, atol=1e-4)


def test_output_structure_and_non_tensor_outputs():
    def fn(x, y):
        return {"sum": x + y, "pair": (x * 2, 7)}

    captured, result = lower(fn, torch.randn(3), torch.randn(3))
    assert len(result.graph.outputs) == 2
    x, y = torch.randn(3), torch.randn(3)
    got = captured.unflatten_outputs(run_graph(result.graph, captured.flatten_inputs((x, y))))
    assert got["pair"][1] == 7
    torch.testing.assert_close(got["sum"], x + y)


def test_capture_restores_training_flags():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model.train()
    model[2].eval()
    captured, result = lower(model, torch.randn(2, 4))
    assert model.training and model[1].training and not model[2].training
    assert "fallback" not in op_names(result.graph)  # captured in eval mode: no random dropout


def test_dynamo_capture_classifies_parameters_and_buffers():
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 6)
            self.bn = nn.BatchNorm1d(6)

        def forward(self, x):
            return torch.relu(self.bn(self.fc1(x))) * 2

    model = M().eval()
    seen = {}

    def backend(gm, example_inputs):
        seen["gm"], seen["inputs"] = gm, list(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    x = torch.randn(3, 8)
    torch.compile(model, backend=backend)(x)
    captured = capture_dynamo(seen["gm"], seen["inputs"])
    assert len(captured.input_positions) == 1
    assert seen["inputs"][captured.input_positions[0]] is x
    assert set(captured.constant_names.values()) == {"fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                                                     "bn.running_mean", "bn.running_var"}
    result = lower_to_ir(captured)
    assert len(result.graph.inputs) == 1 and result.fallbacks == []
    assert {"fc1_weight", "bn_running_var"} <= set(result.graph.constants)
    x2 = torch.randn(3, 8)
    got = captured.unflatten_outputs(run_graph(result.graph, [x2]))
    torch.testing.assert_close(got[0] if isinstance(got, (list, tuple)) else got, model(x2))
