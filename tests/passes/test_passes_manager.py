"""The pass manager: ordering, instruments (timing, verify, print-after, trace), the pipeline list."""

from __future__ import annotations

import pytest
from passes_testing import F32, assert_same, weights

from tilefx.ir import GraphBuilder, TensorType
from tilefx.ir.graph import Graph, Op, Value
from tilefx.passes import PassManager, PassOptions, graph_pass, optimize, optimize_with_trace, pipeline
from tilefx.passes.manager import PassVerificationError, PrintAfterInstrument, TimingInstrument


def small_graph() -> Graph:
    b = GraphBuilder("g")
    x = b.input(TensorType(F32, (2, 4)), "x")
    y = b.op("tanh", b.op("add", b.op("matmul", x, b.const(weights(4, 4), "w")), b.const(weights(4), "b")))
    return b.finish([y])


@graph_pass("rename")
def rename(graph: Graph, suffix: str = "_x") -> Graph:
    return graph.replace(name=graph.name + suffix)


def test_passes_run_in_order_with_bound_options_and_timing() -> None:
    timing = TimingInstrument()
    out = PassManager([rename, rename.bind(suffix="_y")], [timing]).run(small_graph())
    assert out.name == "g_x_y"
    assert [name for name, _ in timing.timings] == ["rename", "rename"]
    assert all(t >= 0 for _, t in timing.timings)


@pytest.mark.ir_unchecked
def test_verify_names_the_pass_that_broke_the_graph() -> None:
    @graph_pass("breaker")
    def breaker(graph: Graph) -> Graph:
        bogus = Value("nowhere", TensorType(F32, (2, 4)))
        return graph.replace(ops=graph.ops + (Op("relu", (bogus,), (Value("r", bogus.type),)),))

    with pytest.raises(PassVerificationError, match="breaker"):
        PassManager([rename, breaker], verify=True).run(small_graph())
    PassManager([breaker], [TimingInstrument()], verify=False).run(small_graph())  # not asked: no error


def test_print_after_from_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TILEFX_PRINT_AFTER", "fusion")
    optimize(small_graph())
    err = capsys.readouterr().err
    assert err.count("# after ") == 1 and "# after fusion (took " in err and "kernel(" in err


def test_print_after_all() -> None:
    import io

    stream = io.StringIO()
    optimize(small_graph(), instruments=[PrintAfterInstrument(frozenset({"all"}), stream)])
    headers = [line for line in stream.getvalue().splitlines() if line.startswith("# after ")]
    assert [h.split()[2] for h in headers] == [p.name for p in pipeline()]


def test_optimize_with_trace_and_options() -> None:
    g = small_graph()
    out, trace = optimize_with_trace(g, PassOptions(verify=True))
    assert [name for name, _ in trace] == ["canonicalize", "fold_constants", "fold_batch_norm", "attention_masks",
                                           "permute_channels", "sparsify", "split_reduction", "sink_reshapes",
                                           "cse", "dce", "fusion", "mark_sparse_kernels", "pack_weights",
                                           "block_layout"]
    assert trace[-1][1] is out
    assert_same(g, out)
    unfused = optimize(g, PassOptions(fuse=False))
    assert "kernel" not in [op.name for op in unfused.ops]
    assert "fusion" not in [p.name for p in pipeline(PassOptions(fuse=False))]
