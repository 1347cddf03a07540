"""CUDA graphs around a compiled graph (tilefx/compiler/cuda_graph.py).

On CPU: the capture decision, and the warm-up / capture-failure / replay logic of
``GraphedPlan`` with a stand-in graph (the real ``torch.cuda.CUDAGraph`` needs a
device). On a GPU (``-m gpu``): real capture and replay against eager, outputs
that survive the next call, and the off switch.
"""

import logging

import pytest
import torch
from torch import nn
import triton_testing  # noqa: F401 - sets TRITON_INTERPRET=1 for the CPU tests

from tilefx.compiler import cuda_graph
from tilefx.compiler.capture import capture
from tilefx.compiler.cuda_graph import Decision, GraphedPlan, decide, run_graphed, status
from tilefx.compiler.options import CompileOptions
from tilefx.compiler.pipeline import compile_graph
from tilefx.compiler.session import CompileSession
from tilefx.compiler.runtime import InterpretedKernel, bind_symbols

CUDA = torch.device("cuda")  # only compared against, never used on CPU


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 5)).eval()


def _compiled(model, x, dynamic=False, **options):
    compiled = compile_graph(capture(model, (x,), dynamic_batch=dynamic),
                             CompileOptions(target="cuda", **options), CompileSession())
    plan = compiled.plan_for(bind_symbols(compiled.graph, [x]))
    return compiled, plan


def test_decide_captures_static_cuda_plans_only(monkeypatch):
    monkeypatch.delenv(cuda_graph.ENV, raising=False)
    x = torch.randn(4, 12)
    compiled, plan = _compiled(_model(), x)
    assert decide(compiled.graph, plan, CUDA, None) == Decision(True, "static shapes on a CUDA device")
    assert not decide(compiled.graph, plan, torch.device("cpu"), None).capture
    assert "CompileOptions" in decide(compiled.graph, plan, CUDA, False).reason
    assert decide(compiled.graph, plan, CUDA, True).capture
    monkeypatch.setenv(cuda_graph.ENV, "0")
    assert "TILEFX_CUDA_GRAPHS=0" in decide(compiled.graph, plan, CUDA, None).reason
    assert decide(compiled.graph, plan, CUDA, True).capture  # an explicit option wins over the env
    monkeypatch.delenv(cuda_graph.ENV)

    dyn, dplan = _compiled(_model(), x, dynamic=True)
    assert "dynamic" in decide(dyn.graph, dplan, CUDA, None).reason

    # a kernel left to the reference interpreter computes on the host: no capture
    step = next(s for s in plan.steps if hasattr(s, "fn"))
    host = plan.steps.index(step)
    fake = type(step)(step.name, InterpretedKernel(None, "test"), step.inputs, step.outputs, step.fresh,
                      step.device, step.args, None)
    plan.steps[host] = fake
    d = decide(compiled.graph, plan, CUDA, None)
    assert not d.capture and step.name in d.reason


def test_options_reach_the_compiled_graph():
    x = torch.randn(3, 12)
    assert _compiled(_model(), x, cuda_graphs=False)[0].cuda_graphs is False
    assert _compiled(_model(), x)[0].cuda_graphs is None


class _StandInGraph:
    """What ``torch.cuda.CUDAGraph`` does for these tests: replay the recorded plan on the
    static inputs, writing into the static outputs."""

    def __init__(self, plan, inputs, outputs):
        self.plan, self.inputs, self.outputs = plan, inputs, outputs

    def replay(self):
        for static, value in zip(self.outputs, self.plan.run(self.inputs)):
            static.copy_(value)

    def pool(self):
        return None


def _stand_in(monkeypatch):
    def record(self, inputs):
        outputs = self.plan.run(inputs)
        return _StandInGraph(self.plan, inputs, outputs), outputs

    def first_capture(self, tensors):
        self._inputs = [t.clone() for t in tensors]
        self._add_instance()

    monkeypatch.setattr(GraphedPlan, "_record", record)
    monkeypatch.setattr(GraphedPlan, "_first_capture", first_capture)


def _graphed(monkeypatch, n):
    """The MLP, ``n`` seeded inputs, and a ``GraphedPlan`` of it on the stand-in graph."""
    _stand_in(monkeypatch)
    model = _model()
    xs = [torch.randn(4, 12, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    compiled, plan = _compiled(model, xs[0])
    return model, xs, GraphedPlan(plan, CUDA, "mlp")


def status_line(graphed):
    class Holder:
        _graphed = {0: graphed}
    return status(Holder())[0]


def test_graphed_plan_never_overwrites_an_output_the_caller_holds(monkeypatch):
    model, xs, graphed = _graphed(monkeypatch, 5)
    with torch.no_grad():
        outs = [graphed.run([x])[0] for x in xs]  # every output kept
        for x, out in zip(xs, outs):  # every call's output is its own, untouched by later calls
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    # 1 warm-up, capture + replay, a second capture (the first's output is held), then eager
    assert graphed.captured and len(graphed._instances) == cuda_graph.INSTANCES == 2
    assert graphed.replays == 2 and graphed.eager_calls == 2
    assert len({o.data_ptr() for o in outs}) == len(outs)
    assert [o.data_ptr() for o in outs[1:3]] == [i.outputs[0].data_ptr() for i in graphed._instances]
    assert status_line(graphed) == "cuda graph: 2 replays, 2 eager (outputs of every capture still held)"


def test_graphed_plan_in_a_loop_alternates_two_captures_without_copies(monkeypatch):
    model, xs, graphed = _graphed(monkeypatch, 7)
    ptrs = []
    with torch.no_grad():
        out = None
        for x in xs:  # `out` still holds the last output while the next call runs
            out = graphed.run([x])[0]
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
            ptrs.append(out.data_ptr())
    assert graphed.replays == 6 and graphed.eager_calls == 0
    a, b = (i.outputs[0].data_ptr() for i in graphed._instances)
    assert ptrs[1:] == [a, b, a, b, a, b]  # the outputs are the graphs' own buffers: no clone


def test_a_held_view_keeps_its_capture_busy(monkeypatch):
    model, xs, graphed = _graphed(monkeypatch, 4)
    with torch.no_grad():
        graphed.run([xs[0]])
        row = graphed.run([xs[1]])[0][1]  # only a view of the output survives
        want = model(xs[1])[1]
        graphed.run([xs[2]])
        graphed.run([xs[3]])
        torch.testing.assert_close(row, want, rtol=1e-4, atol=1e-4)
        del row
        out = graphed.run([xs[0]])[0]  # the first capture is free again
        assert out.data_ptr() == graphed._instances[0].outputs[0].data_ptr()


def test_failed_capture_runs_eagerly_and_warns_once(caplog):
    model = _model()
    x = torch.randn(4, 12)
    compiled, plan = _compiled(model, x)
    graphed = GraphedPlan(plan, CUDA, "mlp")  # on CPU the real capture fails: no CUDA stream
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="tilefx.runtime.cuda_graph"):
        for _ in range(4):
            torch.testing.assert_close(graphed.run([x])[0], model(x), rtol=1e-4, atol=1e-4)
    assert graphed.error and not graphed.captured
    assert len([r for r in caplog.records if "CUDA graph" in r.getMessage()]) == 1


def test_run_graphed_remembers_its_decision(monkeypatch):
    model = _model()
    x = torch.randn(4, 12)
    compiled, plan = _compiled(model, x, cuda_graphs=False)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(run_graphed(compiled, plan, [x], CUDA)[0], model(x),
                                       rtol=1e-4, atol=1e-4)
    assert status(compiled) == ["eager: turned off by CompileOptions(cuda_graphs=False)"]


# ------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("enabled", [True, False])
def test_cuda_graph_replay_on_gpu(monkeypatch, enabled):
    import tilefx

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 64)).cuda().eval()
    xs = [torch.randn(32, 64, device="cuda") for _ in range(5)]
    cm = tilefx.compile(model, options=CompileOptions(target="cuda", cuda_graphs=enabled))
    with torch.no_grad():
        outs = [cm(x) for x in xs]  # 1 eager warm-up, 2 captures + replays, 2 eager: all held
        for x, out in zip(xs, outs):  # checked after all calls: no replay overwrote an output
            torch.testing.assert_close(out, model(x), rtol=1e-3, atol=1e-3)
        del outs
        for x in xs:  # the usual loop: the two captures alternate, no output is copied
            out = cm(x)
            torch.testing.assert_close(out, model(x), rtol=1e-3, atol=1e-3)
    lines = status(cm)
    assert lines == (["cuda graph: 7 replays, 2 eager (outputs of every capture still held)"] if enabled else
                     ["eager: turned off by CompileOptions(cuda_graphs=False)"]), lines
