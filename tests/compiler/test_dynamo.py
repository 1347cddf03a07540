"""``torch.compile(model, backend=tilefx_backend)``: numerics, graph breaks, weights baked in."""

from __future__ import annotations

import torch
from torch import nn

from tilefx.compiler import dynamo
from tilefx.compiler.dynamo import tilefx_backend

RTOL, ATOL = 1e-3, 1e-4
STRICT = {"strict": True}  # a graph that fails to compile must fail the test, not run eagerly


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        print("tilefx graph break")  # dynamo splits the program here
        if h.sum() > 0:  # a data-dependent branch: another break
            h = h * 2.0
        else:
            h = h - 1.0
        return torch.tanh(self.fc2(h))


def test_backend_with_graph_breaks_matches_eager(capsys):
    torch._dynamo.reset()
    dynamo.reset()
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend=tilefx_backend, options=STRICT)
    for _ in range(2):
        x = torch.randn(4, 16)
        with torch.no_grad():
            ref = model(x)
            out = compiled(x)
        torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert "tilefx graph break" in capsys.readouterr().out
    graphs = dynamo.compiled_graphs()
    assert len(graphs) >= 2  # at least the pieces before and after the break
    names = [k.fused_ops for g in graphs for k in g.record.kernels]
    assert any("matmul" in ops for ops in names)
    assert all(k.backend.startswith("tvm") for g in graphs for k in g.record.kernels)


def test_backend_registered_by_name():
    from torch._dynamo import list_backends, register_backend

    if "tilefx" not in list_backends(exclude_tags=()):
        register_backend(name="tilefx")(tilefx_backend)
    torch._dynamo.reset()
    torch.manual_seed(1)
    f = torch.compile(lambda a, b: torch.softmax(a @ b, dim=-1), backend="tilefx", options=STRICT)
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    torch.testing.assert_close(f(a, b), torch.softmax(a @ b, dim=-1), rtol=RTOL, atol=ATOL)
