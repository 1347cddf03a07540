"""Blocked conv layouts: exact, the region stops where it must, the template agrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.passes.passes_testing import assert_same
from tilefx.compiler.capture import capture
from tilefx.compiler.frontend import lower_to_ir
from tilefx.passes import PassOptions, optimize
from tilefx.passes.layout import (LayoutLog, block_activation, block_layout, count_transforms,
                                  pack_conv_weight, unblock_activation, unpack_conv_weight)


class Net(torch.nn.Module):
    """Stem conv (NCHW in), a residual block, a strided 3x3 and a strided 1x1 (downsample)
    joined by a residual, a depthwise conv, a graph output inside the region and a
    pooling reader of a blocked value."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = conv(3, c, 3, padding=1)
        self.c1, self.b1 = conv(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)
        self.c2, self.b2 = conv(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)
        self.down, self.s1 = conv(c, 2 * c, 1, stride=2), conv(c, 2 * c, 3, stride=2, padding=1)
        self.dw = conv(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.pw = conv(2 * c, c, 1)
        self.tail = conv(c, c, 3, padding=1)
        for bn in (self.b1, self.b2):  # non-trivial folded batch norms
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(y)) + x)
        x = torch.relu(self.s1(x) + self.down(x))
        x = torch.nn.functional.relu6(self.dw(x))
        mid = self.pw(x)                        # a graph output that a conv also reads
        pooled = torch.nn.functional.max_pool2d(x, 2)  # a non-conv reader of a blocked value
        return mid, self.tail(mid), pooled


def _graph(model, x, **options):
    return optimize(lower_to_ir(capture(model.eval(), (x,))).graph, PassOptions(**options))


def _kernels(graph):
    return {op.attr("name"): op for op in graph.ops if op.name == "kernel"}


def test_layout_helpers_round_trip():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    p = pack_conv_weight(w, 8, 16)
    assert p.shape == (2, 2, 3, 3, 8, 16) and p[1, 0, 2, 1, 5, 3] == w[16 + 3, 5, 2, 1]
    np.testing.assert_array_equal(unpack_conv_weight(p), w)
    x = rng.standard_normal((2, 32, 5, 7)).astype(np.float32)
    b = block_activation(x, 8)
    assert b.shape == (2, 4, 5, 7, 8) and b[1, 2, 3, 4, 5] == x[1, 21, 3, 4]
    np.testing.assert_array_equal(unblock_activation(b), x)
    with pytest.raises(ValueError, match="do not divide"):
        pack_conv_weight(w, 3, 16)


def test_blocked_graph_is_exact_and_transforms_drop():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 12)
    g = _graph(Net(), x)
    log = LayoutLog()
    out = block_layout.bind(block_factor=lambda op: 8, report=log)(g)
    assert_same(g, out, inputs=[torch.randn(1, 3, 12, 12)], atol=1e-6, rtol=1e-6)
    # every conv weight packed once, the plain copies gone
    assert all(a.ndim == 6 for a in out.constants.values() if a.ndim >= 4)
    assert log.before.weight_repacks == 7 and log.after.weight_repacks == 0
    assert log.after.total < log.before.total // 2, (log.before, log.after)
    ks = _kernels(out)
    blocked = {name for name, k in ks.items() if k.results[0].type.rank == 5}
    # graph outputs stay NCHW; the depthwise output feeds a conv and the pooling: it is
    # blocked and the pool reads it through the index maps
    assert all(v.type.rank == 4 for v in out.outputs)
    dw = next(k for k in ks.values() if any(o.attr("groups", 1) > 1 for o in k.body.ops))
    assert dw.inputs[0].type.rank == 5 and dw.results[0].type.rank == 5   # channel vectors
    pool = next(k for k in ks.values() if k.attr("kind") == "reduction")
    assert pool.inputs[0].type.rank == 5
    mid_conv = next(k for k in ks.values() if k.results[0].name == out.outputs[0].name)
    assert mid_conv.attr("name") not in blocked and len(blocked) >= 5
    assert count_transforms(out) == log.after


def test_nothing_to_do_without_a_factor_or_for_a_bad_one():
    x = torch.randn(1, 3, 8, 8)
    g = _graph(Net(), x)
    assert block_layout(g) is g
    assert block_layout.bind(block_factor=lambda op: 5)(g) is g  # divides no channel count


class _NoEpilogues:
    """A fusion advisor that refuses every epilogue: add/relu become pointwise kernels."""

    def should_fuse(self, fused, separate) -> bool:
        return False


def test_layout_propagates_through_pointwise_kernels():
    torch.manual_seed(1)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.c3 = torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            return self.c3(torch.relu(self.c2(a) + a))

    x = torch.randn(1, 8, 8, 8)
    g = _graph(Block(), x, fusion_advisor=_NoEpilogues())
    assert any(k.attr("kind") == "pointwise" for k in _kernels(g).values())
    log = LayoutLog()
    out = block_layout.bind(block_factor=lambda op: 8, report=log)(g)
    assert_same(g, out, atol=1e-6, rtol=1e-6)
    outputs = {v.name for v in out.outputs}
    pointwise = [k for k in _kernels(out).values() if k.attr("kind") == "pointwise"]
    inner = [k for k in pointwise if k.results[0].name not in outputs]  # the bias add + relu kernels
    assert len(inner) == 2 and all(k.results[0].type.rank == 5 for k in inner)
    assert all(v.type.rank == 5 for k in inner for v in k.inputs if v.type.rank >= 4)
    assert all(k.results[0].type.rank == 4 for k in pointwise if k not in inner)  # the graph output
    assert log.after.strided_reads == 0 and log.after.transposed_writes == 1
    # the blocked pointwise kernels through TVM too
    import tilefx
    from tilefx.compiler.options import CompileOptions

    model = Block().eval()
    passes = PassOptions(layout=True, fusion_advisor=_NoEpilogues())
    cm = tilefx.compile(model, options=CompileOptions(passes=passes, strict=True))
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)


def test_tvm_kernels_read_the_blocked_layouts():
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel, default_schedule, schedule_space

    target = Target.host_cpu()
    x = torch.randn(1, 3, 12, 12)
    g = _graph(Net(), x)
    out = block_layout.bind(block_factor=lambda op: 8)(g)
    ks = _kernels(out)
    conv = next(k for k in ks.values() if k.inputs[0].type.rank == 5 and k.results[0].type.rank == 5
                and any(o.name == "conv2d" and o.attr("groups") == 1 for o in k.body.ops))
    sched = default_schedule(conv, target)
    assert sched.get("reg_oc") == 8 and sched.get("pack_w") is False
    assert schedule_space(conv, target)["reg_oc"] == [8]
    fn = build_kernel(conv, target, use_cache=False)
    assert "_global" not in fn.lowered          # no weight copy per call
    assert "conv2d_pad = T.sblock_alloc_buffer((1, 2," in fn.lowered  # the padded input stays blocked
    # numerics of the one kernel against the interpreter on random blocked inputs
    from tilefx.ir.interpreter import run_graph

    consts = {c.results[0].name: torch.from_numpy(out.constants[c.attr("name")]).clone()
              for c in out.ops if c.name == "const" and c.attr("name")}
    args = [consts[v.name] if v.name in consts else torch.randn(*v.type.shape) for v in conv.inputs]
    got = torch.empty(*conv.results[0].type.shape)
    fn(*args, got)
    (want,) = run_graph(conv.body, args)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compile_with_layout_matches_eager():
    import tilefx
    from tilefx.compiler.options import CompileOptions

    torch.manual_seed(2)
    model = Net().eval()
    x = torch.randn(1, 3, 12, 12)
    cm = tilefx.compile(model, options=CompileOptions(passes=PassOptions(layout=True), strict=True))
    with torch.no_grad():
        got, want = cm(x), model(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        x2 = torch.randn(1, 3, 12, 12)  # fresh inputs through the same compiled kernels
        for g, w in zip(cm(x2), model(x2)):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    notes = [n for n in cm.records[0].notes if n.startswith("packing:")]
    assert any("OIHW" in n and "NCHW" in n for n in notes)
    assert any("layout:" in n and "after" in n for n in notes)
