"""In-place updates of buffers and inputs happen in compiled code exactly as in eager.

Each model below updates state in place: a counter buffer, running statistics,
a KV-cache write into a buffer and into an argument, an argument updated with
``add_``. Each is run side by side with an eager copy of itself over several
calls on seeded random inputs, through ``tilefx.compile``, through
``torch.compile(backend="tilefx")`` and as a saved-then-loaded artifact; after
every call the outputs, the buffers and the inputs must agree. What is refused
(a BatchNorm in training mode under ``tilefx.compile``, a global tensor updated
in place) must say so clearly.
"""

from __future__ import annotations

import copy
import json
import os
import textwrap
from typing import Any, Callable

import pytest
import torch
from torch import nn

import tilefx
from tilefx.compiler import dynamo
from tilefx.compiler.artifact import compile_artifact
from tilefx.compiler.capture import capture
from tilefx.compiler.cli import main
from tilefx.compiler.mutation import MutationError, TrainingModeError

os.environ.setdefault("TVM_BIND_THREADS", "0")
CALLS = 3
RTOL, ATOL = 1e-5, 1e-5


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("n", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n.add_(1)
        return x * 2 + self.n


class RunningMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.rand(4, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("scale", torch.rand(4, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return (x - self.mean) * self.scale  # ``scale`` is only read: it stays a constant


class KVCache(nn.Module):
    """Writes k at slot ``pos`` (a python int, baked per call signature) and at the
    slots in ``idx`` (a tensor: one compile serves every position)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(3)))
        self.register_buffer("tail", torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(4)))

    def forward(self, k: torch.Tensor, idx: torch.Tensor, pos: int = 1) -> torch.Tensor:
        self.cache[:, pos] = k
        self.tail.index_copy_(1, idx, k[:, None])
        self.tail[:, 4:] = self.tail[:, 4:] * 0.5  # a slice assignment
        return (self.cache * self.tail).sum(1)


class InputCache(nn.Module):
    def forward(self, cache: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        cache[:, 3] = k
        return cache.sum(1)


class AddInPlace(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x * y


def counter_inputs(g: torch.Generator, i: int) -> tuple:
    return (torch.randn(3, 4, generator=g),)


def kv_inputs(g: torch.Generator, i: int) -> tuple:
    return (torch.randn(2, 4, generator=g), torch.tensor([i % 6]))


def input_cache_inputs(g: torch.Generator, i: int) -> tuple:
    return (torch.randn(2, 5, 3, generator=g), torch.randn(2, 3, generator=g))


def add_inputs(g: torch.Generator, i: int) -> tuple:
    return (torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g))


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator, int], tuple]]] = {
    "counter": (Counter, counter_inputs),
    "running_mean": (RunningMean, counter_inputs),
    "kv_cache_buffer": (KVCache, kv_inputs),
    "kv_cache_input": (InputCache, input_cache_inputs),
    "input_add_": (AddInPlace, add_inputs),
}


def clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def assert_same_after_each_call(model: nn.Module, compiled: Callable[..., Any],
                                make: Callable[[torch.Generator, int], tuple],
                                state: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
    """Call ``compiled`` and an eager copy of ``model`` side by side; after each call the
    outputs, the inputs and the state (the model's buffers, or ``state()``) agree."""
    eager = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    for i in range(CALLS):
        args = make(g, i)
        mine, theirs = clone(args), clone(args)
        got = compiled(*mine)
        with torch.no_grad():
            want = eager(*theirs)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"call {i}: {m}")
        for a, b in zip(mine, theirs):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL,
                                           msg=lambda m: f"input after call {i}: {m}")
        buffers = state() if state is not None else dict(model.named_buffers())
        for name, want_buf in eager.named_buffers():
            torch.testing.assert_close(buffers[name], want_buf, rtol=RTOL, atol=ATOL,
                                       msg=lambda m: f"buffer {name} after call {i}: {m}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_tilefx_compile_keeps_in_place_updates(case: str) -> None:
    build, make = CASES[case]
    model = build()
    assert_same_after_each_call(model, tilefx.compile(model, options=tilefx.CompileOptions(strict=True)),
                                make)


def test_tilefx_compile_kv_cache_with_an_int_position() -> None:
    """``pos`` is a python int: each value compiles anew, each keeps the cache write."""
    model = KVCache()
    cm = tilefx.compile(model)
    eager = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    for pos in (2, 5, 2):
        k, idx = kv_inputs(g, pos)
        torch.testing.assert_close(cm(k, idx, pos), eager(k, idx, pos))
        torch.testing.assert_close(model.cache, eager.cache)
        torch.testing.assert_close(model.tail, eager.tail)
    assert cm.num_compiles == 2


def test_read_only_buffers_stay_constants() -> None:
    torch.manual_seed(0)
    captured = capture(RunningMean(), (torch.randn(3, 4),))
    assert captured.state_names == ("mean",)
    assert set(captured.constant_names.values()) == {"scale"}
    (m,) = captured.mutations
    assert (m.kind, m.name, m.input, m.output) == ("buffer", "mean", 1, 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dynamo_backend_keeps_in_place_updates(case: str) -> None:
    build, make = CASES[case]
    model = build()
    torch._dynamo.reset()
    opt = torch.compile(model, backend="tilefx", options={"strict": True})
    dynamo.reset()
    assert_same_after_each_call(model, opt, make)
    # it ran in tilefx, not eagerly after a graph break: the graph returns the new values too
    assert any(len(g.graph.outputs) > 1 for g in dynamo.compiled_graphs())


def test_dynamo_backend_keeps_batchnorm_training_updates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    torch._dynamo.reset()
    opt = torch.compile(model, backend="tilefx", options={"strict": True})
    assert_same_after_each_call(model, opt, counter_inputs)
    assert model[1].num_batches_tracked.item() == CALLS


@pytest.mark.parametrize("case", ["counter", "kv_cache_buffer", "kv_cache_input"])
def test_loaded_artifact_owns_and_updates_its_state(case: str, tmp_path) -> None:
    build, make = CASES[case]
    model = build()
    before = {k: v.clone() for k, v in model.named_buffers()}
    example = make(torch.Generator().manual_seed(9), 0)
    kept = clone(example)
    compile_artifact(model, example, tmp_path / case)
    # compiling ran the model on the examples: neither they nor its buffers changed
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, before[name])
    for a, b in zip(example, kept):
        torch.testing.assert_close(a, b)
    loaded = tilefx.load(tmp_path / case)
    assert set(loaded.state_dict()) == set(before)
    assert_same_after_each_call(model, loaded, make, state=loaded.state_dict)
    loaded.load_state_dict(before)  # back to the start
    for name, value in loaded.state.items():
        torch.testing.assert_close(value, before[name])


STATEFUL_MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Stats(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(8, 4)
            self.bn = nn.BatchNorm1d(4)  # in training mode: the CLI compiles eval mode
            self.register_buffer("mean", torch.rand(4))
            self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

        def forward(self, x):
            h = self.bn(self.fc(x))
            self.mean.mul_(0.9).add_(0.1 * h.mean(0))
            self.calls.add_(1)
            return h - self.mean
''')


def test_cli_compile_and_run_a_stateful_model(tmp_path, capsys) -> None:
    path = tmp_path / "stateful.py"
    path.write_text(STATEFUL_MODEL_FILE)
    out, ref = tmp_path / "art", f"{path}:Stats"
    assert main(["compile", ref, "--input", "Bx8", "--dynamic", "batch", "--batch-sizes", "2,5",
                 "-o", str(out), "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert float(text.split("max |diff|")[1].split()[0]) < 1e-5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert [s["name"] for s in manifest["state"]] == ["mean", "calls"]
    assert {m["kind"] for m in manifest["mutations"]} == {"buffer"}
    loaded = tilefx.load(out)
    assert loaded.state["calls"].item() == 0  # the compile's own calls left no trace
    for b in (2, 5, 2):
        loaded(torch.randn(b, 8))
    assert loaded.state["calls"].item() == 3
    assert main(["run", str(out), "--model", ref, "--repeats", "2"]) == 0
    assert float(capsys.readouterr().out.split("max |diff|")[1].split()[0]) < 1e-5


def test_tilefx_compile_refuses_batchnorm_in_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cm = tilefx.compile(model)
    with pytest.raises(TrainingModeError, match=r"BatchNorm '1' is in training mode.*model\.eval\(\)"):
        cm(torch.randn(3, 4))
    assert isinstance(TrainingModeError("x"), NotImplementedError)
    model.eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(cm(x), model(x).detach())
    model.train()  # the flag is checked at every call, not only at the first
    with pytest.raises(TrainingModeError):
        cm(x)


GLOBAL = torch.zeros(4)


def bump_global(x: torch.Tensor) -> torch.Tensor:
    GLOBAL.add_(1)
    return x + GLOBAL


def test_updating_a_global_tensor_is_refused() -> None:
    with pytest.raises(MutationError, match="neither an argument nor a buffer or parameter "
                                            "of the model.*register_buffer"):
        tilefx.compile(bump_global)(torch.randn(4))
