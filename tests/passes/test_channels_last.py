"""Channels-last regions: exact, NHWC between convs, NCHW only at the region's edges, cuda only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.passes.passes_testing import assert_same, nonzero_inputs, property_budget
from tilefx.ir.builder import GraphBuilder
from tilefx.ir.graph import Graph
from tilefx.ir.types import DType, TensorType
from tilefx.passes import PassOptions, kernels, optimize
from tilefx.passes.channels_last import channels_last
from tilefx.passes.cleanup import dce

F16 = DType.float16


def _conv(b, rng, x, c, o, k, stride=1, padding=0, dtype=F16):
    w = b.const(rng.standard_normal((o, c, k, k)).astype(np.float32).astype(dtype.numpy_name) * 0.3)
    y = b.op("conv2d", x, w, stride=(stride, stride), padding=(padding, padding), dilation=(1, 1), groups=1)
    return b.op("add", y, b.const(rng.standard_normal((o, 1, 1)).astype(dtype.numpy_name)))


def bottleneck(n=2, c=6, h=7, mid=5, out=11, stride=2, pool=True, dtype=F16) -> Graph:
    """A ResNet bottleneck with a downsampling shortcut, after a max-pooled stem and before a
    global average pool: awkward sizes (7x7 pixels, 5 and 11 channels, stride 2)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("bottleneck")
    x = b.input(TensorType(dtype, (n, 3, 2 * h, 2 * h)), "x")
    s = b.op("relu", _conv(b, rng, x, 3, c, 3, padding=1, dtype=dtype))
    if pool:
        s = b.op("max_pool2d", s, kernel=(2, 2), stride=(2, 2))
    t = b.op("relu", _conv(b, rng, s, c, mid, 1, dtype=dtype))
    t = b.op("relu", _conv(b, rng, t, mid, mid, 3, stride=stride, padding=1, dtype=dtype))
    t = _conv(b, rng, t, mid, out, 1, dtype=dtype)
    y = b.op("relu", b.op("add", t, _conv(b, rng, s, c, out, 1, stride=stride, dtype=dtype)))
    return b.finish([b.op("mean", y, dims=(2, 3), keepdim=True), y])


def _names(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops if op.name != "const"]


@pytest.mark.parametrize("stride", [1, 2])
def test_exact_and_nchw_only_at_the_edges(stride):
    g = bottleneck(stride=stride)
    out = channels_last(g)
    assert_same(g, out, atol=2e-2, rtol=2e-2)
    assert [o.type for o in out.outputs] == [o.type for o in g.outputs]
    names = _names(out)
    # the three 1x1 convs are matmuls over the pixels; the 3x3 conv and the stem stay conv2d
    assert names.count("matmul") == 3 and names.count("conv2d") == 2
    fused = optimize(g, PassOptions(channels_last=True))
    assert_same(g, fused, atol=2e-2, rtol=2e-2)
    standalone = [k.attr("name") for k in kernels(fused) if {o.name for o in k.body.ops} <= {"permute", "slice"}]
    # the edges: the pooled stem output into the region (read by two 1x1 convs), and the block
    # output the graph returns in NCHW; no transpose between the convs
    assert len(standalone) == 2, standalone
    conv3 = [k for k in kernels(fused) if any(o.name == "conv2d" for o in k.body.ops)
             and any(o.name == "permute" for o in k.body.ops)]
    assert len(conv3) == 1  # the 3x3 conv reads NHWC through a prologue permute, writes NHWC


def test_stem_without_a_conv_after_it_stays_nchw():
    """A conv whose output reaches no other conv (only a pool) gains nothing from NHWC."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("stem")
    x = b.input(TensorType(F16, (1, 3, 11, 11)), "x")
    y = b.op("max_pool2d", b.op("relu", _conv(b, rng, x, 3, 4, 3, padding=1)), kernel=(2, 2), stride=(2, 2))
    g = b.finish([y])
    assert channels_last(g) is g


def test_fp32_and_grouped_convs_are_left_alone():
    g32 = bottleneck(dtype=DType.float32)
    assert channels_last(g32) is g32
    rng = np.random.default_rng(2)
    b = GraphBuilder("dw")
    x = b.input(TensorType(F16, (1, 4, 9, 9)), "x")
    w = b.const(rng.standard_normal((4, 1, 3, 3)).astype(np.float16))
    y = b.op("conv2d", x, w, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=4)
    w2 = b.const(rng.standard_normal((4, 1, 3, 3)).astype(np.float16))
    y = b.op("conv2d", b.op("relu", y), w2, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=4)
    g = b.finish([y])
    assert channels_last(g) is g


def test_only_the_cuda_backend_turns_it_on():
    from tilefx.codegen.triton.backend import TritonBackend
    from tilefx.codegen.tvm.backend import TVMBackend

    assert TritonBackend.pass_defaults(None).channels_last
    assert not TVMBackend.pass_defaults(None).channels_last


def _depthwise(b, rng, x, c, k=3):
    w = b.const(rng.standard_normal((c, 1, k, k)).astype(np.float16))
    return b.op("conv2d", x, w, stride=(1, 1), padding=(k // 2, k // 2), dilation=(1, 1), groups=c)


def _layer_norm_nhwc(b, rng, x_nhwc):
    c = x_nhwc.type.shape[-1]
    w, bias = (b.const(rng.standard_normal(c).astype(np.float16)) for _ in range(2))
    return b.op("layer_norm", x_nhwc, w, bias, normalized_ndim=1)


def _layer_norm_2d(b, rng, x):
    """torchvision's LayerNorm2d: an NCHW value normalized over C through two permutes."""
    return b.op("permute", _layer_norm_nhwc(b, rng, b.op("permute", x, dims=(0, 2, 3, 1))), dims=(0, 3, 1, 2))


def test_convs_beside_a_depthwise_conv_stay_nchw():
    """MobileNet's inverted residual: the 1x1 convs around the depthwise conv would give the
    region an edge (a transpose) at each side of it: nothing changes."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("mbconv")
    x = b.input(TensorType(F16, (2, 4, 9, 9)), "x")
    h = b.op("relu", _conv(b, rng, x, 4, 12, 1))
    h = b.op("relu", _depthwise(b, rng, h, 12))
    h = _conv(b, rng, h, 12, 4, 1)
    y = b.op("add", h, x)
    y = b.op("relu", _conv(b, rng, b.op("relu", _conv(b, rng, y, 4, 12, 1)), 12, 4, 1))  # feeds a conv
    g = b.finish([_depthwise(b, rng, y, 4)])
    out = channels_last(g)
    assert "permute" not in _names(out), _names(out)
    assert_same(g, out, atol=2e-2, rtol=2e-2)
    assert not [op for op in out.ops if op.name == "conv2d" and op.attr("groups") != 1
                and out.producers()[op.inputs[0].name].name == "permute"]  # dw reads no transpose


def test_squeeze_excitation_scale_goes_back_not_the_activation():
    """EfficientNet's SE block: fc1 -> silu -> fc2 -> sigmoid (convs on [N, C, 1, 1]) scales the
    full-size NCHW activation: the small scale goes back to NCHW as a reshape, the activation is
    never transposed."""
    rng = np.random.default_rng(4)
    b = GraphBuilder("se")
    x = b.input(TensorType(F16, (2, 8, 7, 7)), "x")
    s = b.op("mean", x, dims=(2, 3), keepdim=True)
    s = b.op("sigmoid", _conv(b, rng, b.op("silu", _conv(b, rng, s, 8, 3, 1)), 3, 8, 1))
    g = b.finish([b.op("mul", x, s)])
    out = channels_last(g)
    assert_same(g, out, atol=2e-2, rtol=2e-2)
    big = [op for op in out.ops if op.name == "permute" and op.result.type.shape[2:] == (7, 7)]
    assert not big, big


@st.composite
def conv_nets(draw):
    """A chain of fp16 convs (1x1 / 3x3, stride 1 / 2, padding or none) with biases, ReLUs,
    residual adds where the shapes allow, 7x7 depthwise convs and LayerNorm2ds (ConvNeXt's),
    and maybe a global mean at the end: the region rules' inputs, in awkward sizes (1 pixel,
    1 channel, primes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder("net")
    c, h = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    x = b.input(TensorType(F16, (draw(st.integers(1, 2)), c, h, draw(st.integers(1, 9)))), "x")
    values, outputs = [x], []
    for _ in range(draw(st.integers(2, 5))):
        src = values[draw(st.integers(0, len(values) - 1))]
        kind = draw(st.sampled_from(["conv", "conv", "depthwise 7x7", "LayerNorm2d"]))
        if kind != "conv":  # ConvNeXt's parts: a region of their own, or NHWC through permutes
            y = _depthwise(b, rng, src, src.type.shape[1], 7) if kind == "depthwise 7x7" else \
                _layer_norm_2d(b, rng, src)
            values.append(b.op("add", y, src) if draw(st.booleans()) else y)
            continue
        k = draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 1, 2]))
        pad = draw(st.sampled_from([0, k // 2]))
        if any(d + 2 * pad < k for d in src.type.shape[2:]):
            continue
        y = _conv(b, rng, src, src.type.shape[1], draw(st.integers(1, 7)), k, stride=stride, padding=pad)
        same = [v for v in values if v.type == y.type]
        if same and draw(st.booleans()):
            y = b.op("add", y, same[-1])  # a residual
        if draw(st.booleans()):
            y = b.op("relu", y)
        values.append(y)
    if draw(st.booleans()):
        outputs.append(b.op("mean", values[-1], dims=(2, 3), keepdim=True))
    outputs.append(values[-1])
    return b.finish(outputs)


@property_budget(25)
@given(conv_nets())
def test_any_conv_net_computes_the_same(g):
    inputs = nonzero_inputs(g)
    assert_same(g, channels_last(g), inputs, atol=3e-2, rtol=3e-2)
    assert_same(g, optimize(g, PassOptions(channels_last=True)), inputs, atol=3e-2, rtol=3e-2)


def test_edge_with_equal_sizes_is_a_transpose_not_a_reshape():
    """NHWC [2, 1, 3, 3] back to NCHW [2, 3, 1, 3]: the sizes match a reshape's, but C and W
    trade places (found by the property test above)."""
    rng = np.random.default_rng(5)
    b = GraphBuilder("edge")
    x = b.input(TensorType(F16, (2, 3, 1, 3)), "x")
    y = b.op("add", _conv(b, rng, x, 3, 3, 1), x)  # NCHW operand: the add reads the NCHW edge
    g = b.finish([_conv(b, rng, y, 3, 5, 1, stride=2)])
    out = channels_last(g)
    assert "permute" in _names(out)
    assert_same(g, out, atol=2e-2, rtol=2e-2)


def _cn_block(b, rng, x, k=7):
    """torchvision's ConvNeXt block: dw kxk -> permute -> LN -> Linear -> GELU -> Linear ->
    permute back -> * layer scale -> + input."""
    c = x.type.shape[1]
    h = b.op("add", _depthwise(b, rng, x, c, k), b.const(rng.standard_normal((c, 1, 1)).astype(np.float16)))
    h = _layer_norm_nhwc(b, rng, b.op("permute", h, dims=(0, 2, 3, 1)))
    for cin, cout in ((c, 3 * c), (3 * c, c)):
        w = b.const((rng.standard_normal((cin, cout)) * 0.3).astype(np.float16))
        h = b.op("add", b.op("matmul", h, w), b.const(rng.standard_normal(cout).astype(np.float16)))
        if cout != c:
            h = b.op("gelu", h)
    h = b.op("mul", b.op("permute", h, dims=(0, 3, 1, 2)), b.const(rng.uniform(0.5, 1, (c, 1, 1)).astype(np.float16)))
    return b.op("add", h, x)


def convnext(n=2, c=5, h=13, k=7) -> Graph:
    """A small ConvNeXt: a 4x4/4 patchify stem and LayerNorm2d, two blocks, LayerNorm2d and a
    2x2/2 downsampling conv, one block, a global mean; awkward sizes (5 and 11 channels, 13
    pixels: the 7x7 kernel is larger than the last plane)."""
    rng = np.random.default_rng(6)
    b = GraphBuilder("convnext")
    x = b.input(TensorType(F16, (n, 3, 4 * h, 4 * h)), "x")
    y = _layer_norm_2d(b, rng, _conv(b, rng, x, 3, c, 4, stride=4))
    y = _cn_block(b, rng, _cn_block(b, rng, y, k), k)
    y = _cn_block(b, rng, _conv(b, rng, _layer_norm_2d(b, rng, y), c, 11, 2, stride=2), k)
    return b.finish([b.op("mean", y, dims=(2, 3), keepdim=True)])


def _full_transposes(graph: Graph) -> list:
    """The permutes that copy activations (not a held weight's view) once unused ones are gone."""
    graph = dce(graph)
    producers = graph.producers()
    return [op for op in graph.ops if op.name == "permute" and op.result.type.rank == 4
            and 1 not in op.result.type.shape[1:3] and producers.get(op.inputs[0].name, op).name != "const"]


def test_convnext_runs_in_nhwc_from_its_stem_to_its_pool():
    """ConvNeXt's 7x7 depthwise convs join the region (the direct template's channels-last
    tiling): the patchify stem stores NHWC for its LayerNorm, the LayerNorms read the region's
    NHWC values with no transpose, the downsampling conv reads them as cuDNN's channels-last
    view, and the second Linear of each block takes the layer scale and the residual add."""
    g = convnext()
    out = channels_last(g)
    assert_same(g, out, atol=3e-2, rtol=3e-2)
    convs = [op for op in out.ops if op.name == "conv2d"]
    producers = out.producers()
    assert convs[0].inputs[0].name == "x"  # the stem reads the NCHW image
    for op in convs[1:]:  # every conv after the stem reads an NHWC value through a permute
        p = producers[op.inputs[0].name]
        assert p.name == "permute" and p.attr("dims") == (0, 3, 1, 2), op
    dw = [op for op in convs if op.attr("groups") != 1]
    assert len(dw) == 3 and all(producers[op.inputs[1].name].attr("dims") == (3, 2, 0, 1) for op in dw)
    norms = [op for op in out.ops if op.name == "layer_norm"]
    assert "permute" not in [producers[op.inputs[0].name].name for op in norms]
    # the permutes left are the convs' own views (their input's, their result's): no copies
    kept = dce(out)
    readers = {v.name: [r.name for r in kept.ops if v in r.inputs] for op in kept.ops for v in op.results}
    for op in _full_transposes(out):
        assert readers[op.result.name] == ["conv2d"] or kept.producers()[op.inputs[0].name].name == "conv2d"
    fused = optimize(g, PassOptions(channels_last=True))
    assert_same(g, fused, atol=3e-2, rtol=3e-2)
    kinds = ["+".join(o.name for o in k.body.ops) for k in kernels(fused)]
    assert not [k for k in kinds if set(k.split("+")) <= {"permute", "reshape"}], kinds  # no standalone copy
    # each block's layer scale and residual add are its second Linear's epilogue
    assert sum(k.startswith("matmul+add+mul+add") for k in kinds) == 3, kinds


def test_3x3_and_5x5_depthwise_convs_stay_nchw():
    """MobileNet's and EfficientNet's depthwise convs keep the NCHW tiling that measured well."""
    for k in (3, 5):
        g = convnext(k=k)
        out = channels_last(g)
        dw = [op for op in out.ops if op.name == "conv2d" and op.attr("groups") != 1]
        assert len(dw) == 3 and all(out.producers()[op.inputs[1].name].name == "const" for op in dw)
        assert len(_full_transposes(out)) <= len(_full_transposes(g))  # the user's own, no more
        assert_same(g, out, atol=3e-2, rtol=3e-2)
