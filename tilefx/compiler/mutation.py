"""In-place updates: buffers and inputs that a model changes while it runs.

Eager PyTorch lets ``forward`` update tensors in place: a counter
(``self.n.add_(1)``), running statistics, a KV cache (``self.cache[:, pos] = k``)
or an argument (``x.add_(1)``). Compiled code must leave the same state behind,
as ``torch.compile`` does. torch.export hands us such a program in functional
form: the graph computes each updated tensor's *new value* and lists it in the
graph signature as a ``BUFFER_MUTATION`` / ``PARAMETER_MUTATION`` /
``USER_INPUT_MUTATION`` output. tilefx keeps that form all the way down:

- a buffer (or parameter) that is updated is **not** baked in as a constant: it
  is an extra graph input, after the user's tensors, fed the module's live
  tensor at every call (buffers that are only read stay constants);
- every new value is an extra graph output, after the user's outputs;
- after the compiled graph ran, ``write_back`` copies each new value into the
  tensor it replaces (``buf.copy_(new)``): the module's buffer or the caller's
  argument. All new values are computed before any is written, so the graph
  never reads a half-updated state.

A ``Mutation`` records one such pair; ``capture.Captured`` holds them, the
compiled module (``api.py``), the dynamo backend (``dynamo.py``) and a loaded
artifact (``artifact_load.py``, which owns its buffers' values) apply them.

What is refused, with a ``MutationError`` naming the tensor and what to do:
an in-place update of a tensor that is neither an argument nor a buffer or
parameter of the module (a global), and (in ``tilefx.compile``) a BatchNorm in
training mode, whose running statistics eager would update while tilefx
compiles inference (eval-mode) code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch

if TYPE_CHECKING:
    import torch


class MutationError(NotImplementedError):
    """An in-place update that compiled code cannot reproduce; the message says what to do."""


class TrainingModeError(MutationError):
    """A module in training mode whose eager calls would update state (BatchNorm stats)."""


@dataclass(frozen=True)
class Mutation:
    """One tensor that the model updates in place, and where its new value comes from."""

    kind: Literal["buffer", "input"]  # a buffer/parameter of the module, or a caller's tensor
    name: str    # "cache", "bn.running_mean", or the argument's name "x"
    input: int   # index among the graph inputs of the tensor updated in place
    output: int  # index among the graph outputs of its new value

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "input": self.input, "output": self.output}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Mutation:
        kind = d["kind"]
        if kind not in ("buffer", "input"):
            raise ValueError(f"unknown mutation kind {kind!r}")
        return Mutation(kind, str(d["name"]), int(d["input"]), int(d["output"]))


def write_back(mutations: Sequence[Mutation], inputs: Sequence[torch.Tensor],
               outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Copy each new value into the tensor it updates; return the user's outputs.

    ``inputs`` are the tensors the caller handed to the graph (not the runtime's
    aligned copies), so the update lands in the module's buffer / the caller's tensor.
    """
    if not mutations:
        return list(outputs)

    with torch.no_grad():  # a parameter, or an input that requires grad, is a leaf
        for m in mutations:
            inputs[m.input].copy_(outputs[m.output])
    return list(outputs[:len(outputs) - len(mutations)])


def state_tensor(module: Any, name: str) -> torch.Tensor:
    """The live buffer or parameter ``name`` ("layer.cache") of ``module``."""
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, torch.Tensor):
        raise MutationError(
            f"the model updates tensor {name!r} in place, but it is not a buffer or parameter "
            "of the model: register it with register_buffer (or pass it as an argument)")
    return obj


def state_tensors(module: Any, names: Sequence[str]) -> list[torch.Tensor]:
    return [state_tensor(module, n) for n in names]


def running_stat_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of each BatchNorm that updates running stats when in training mode."""
    if not isinstance(model, torch.nn.Module):
        return []
    return [(name or type(m).__name__, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def check_not_training(batchnorms: Sequence[tuple[str, Any]]) -> None:
    """Refuse a call that eager would run in training mode with running-stat updates.

    tilefx compiles inference code: BatchNorm uses its running statistics and
    never updates them. Silently giving eval-mode results (and frozen stats) to
    a model in training mode would diverge from eager on every call.
    """
    for name, m in batchnorms:
        if m.training:
            raise TrainingModeError(
                f"tilefx.compile: BatchNorm {name!r} is in training mode, where eager updates "
                "its running_mean/running_var on every call; tilefx compiles inference code: "
                "call model.eval() first (or use torch.compile(model, backend='tilefx'), which "
                "keeps training-mode updates)")


def snapshot_buffers(model: Any) -> Callable[[], None]:
    """A function that puts every buffer of ``model`` back to its value now.

    Used where tilefx itself calls a model on example inputs (compiling an
    artifact, the CLI's accuracy check) so that those calls leave no trace.
    """
    if not isinstance(model, torch.nn.Module):
        return lambda: None
    saved = [(b, b.detach().clone()) for b in model.buffers()]

    def restore() -> None:
        with torch.no_grad():
            for live, value in saved:
                live.copy_(value)
    return restore
