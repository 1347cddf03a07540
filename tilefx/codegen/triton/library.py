"""Library candidates: the anchor op (matmul, conv2d, attention) runs in a vendor library
through torch (cuBLAS, cuDNN, flash SDPA), the rest of the kernel body in one generated
pointwise Triton kernel (the *epilogue*: bias, activation, residual...).

They sit in every contraction and attention schedule space (``impl="library"``),
so the tuner can always pick the library when it is faster and tilefx is never
slower than it. The launch function calls torch, then the epilogue kernel with
the library's result as one more input; with no epilogue the library writes the
output directly.

The anchor's operands may be kernel inputs or ``permute``/``reshape``/
``broadcast_to``/``slice`` chains of them (emitted as torch view calls); anything else
in front of the anchor raises ``NotImplementedError`` (use the Triton template).
"""

from __future__ import annotations

from typing import Callable

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import pointwise
from tilefx.codegen.triton.emit import shape_of
from tilefx.codegen.triton.source import HEADER, KernelSource
from tilefx.ir.graph import Graph, Op, Value

# ops a torch view call can express: an anchor reads its operands through them for free
VIEW_OPS = ("permute", "reshape", "broadcast_to", "slice")

# anchor op, operand expressions -> the torch call's text
AnchorCall = Callable[[Op, list[str]], str]


def operand_expr(body: Graph, v: Value, args: dict[str, str]) -> str:
    """A torch expression for ``v``: a kernel argument seen through view ops."""
    if v.name in args:
        return args[v.name]
    op = body.producers().get(v.name)
    if op is None or op.name not in VIEW_OPS:
        raise NotImplementedError(f"library candidate: operand %{v.name} is made by "
                                  f"{op.name if op else '?'}, not a view of a kernel input")
    inner = operand_expr(body, op.inputs[0], args)
    if op.name == "permute":
        return f"{inner}.permute{tuple(op.attr('dims'))}"
    if op.name == "slice":  # GPT-2's q, k, v: column ranges of the QKV projection
        axis = op.attr("axis") % op.inputs[0].type.rank
        index = ", ".join([":"] * axis + [f"{op.attr('start')}:{op.attr('end')}:{op.attr('step')}"])
        return f"{inner}[{index}]"
    method = "reshape" if op.name == "reshape" else "expand"
    return f"{inner}.{method}{tuple(shape_of(op.result))}"


def ancestors(body: Graph, anchor: Op) -> set[str]:
    producers = body.producers()
    out: set[str] = set()
    stack = list(anchor.inputs)
    while stack:
        v = stack.pop()
        op = producers.get(v.name)
        if op is not None and v.name not in out:
            out.update(r.name for r in op.results)
            stack.extend(op.inputs)
    return out


def emit(body: Graph, name: str, anchor: Op, call: AnchorCall, schedule: Schedule) -> KernelSource:
    _, ins, outs = pointwise.arg_names(body)
    args = {v.name: a for v, a in zip(body.inputs, ins)}
    operands = [operand_expr(body, v, args) for v in anchor.inputs]
    before = ancestors(body, anchor)
    rest = [op for op in body.ops if op is not anchor and not (set(r.name for r in op.results) & before)]
    for op in rest:
        for v in op.inputs:
            if v.name in before:
                raise NotImplementedError(f"library candidate: %{v.name} feeds both the "
                                          f"{anchor.name} and its epilogue")
    result = call(anchor, operands)
    launch = [f"def launch({', '.join(ins + outs)}):"]
    lines = [HEADER]
    meta: tuple = (("impl", "library"),)
    if not rest and len(body.outputs) == 1 and body.outputs[0].name == anchor.result.name:
        if result.startswith("torch.matmul(") and result.endswith(")"):  # cuBLAS writes it: no copy
            launch.append(f"    {result[:-1]}, out={outs[0]})")
        else:
            launch.append(f"    {outs[0]}.copy_({result})")
    else:
        value, rest, result = _fold_result_permute(anchor, rest, result, body.outputs)
        epi = Graph(f"{name}_epilogue", body.inputs + (value,), tuple(rest), body.outputs, {})
        block = schedule.get("EPILOGUE_BLOCK", 1024)
        src = pointwise.emit(epi, f"{name}_epilogue", Schedule.of(BLOCK=block, num_warps=4))
        text = src.text.replace(HEADER, "").replace("def launch(", f"def {name}_epilogue_launch(")
        lines.append(text)
        # the epilogue reads it row-major: free for a row-major result (or a channels-last conv's
        # result seen through its NHWC permute), a copy otherwise
        launch.append(f"    r = {result}.contiguous()")
        launch.append(f"    {name}_epilogue_launch({', '.join(ins)}, r, {', '.join(outs)})")
        meta += src.meta
    return KernelSource(name, "\n".join(lines + launch) + "\n", meta,
                        Schedule.of(impl="library", EPILOGUE_BLOCK=schedule.get("EPILOGUE_BLOCK", 1024)))


def _fold_result_permute(anchor: Op, rest: list[Op], result: str, outputs: tuple[Value, ...]) -> tuple[Value, list[Op], str]:
    """When a ``permute`` is the only reader of the anchor's result, the epilogue reads the
    library's result through that permute as a torch view: a channels-last region's conv
    (passes/channels_last.py) gets cuDNN's NHWC output as is, with no transpose."""
    readers = [op for op in rest if anchor.result in op.inputs]
    if len(readers) != 1 or readers[0].name != "permute" or anchor.result in outputs:
        return anchor.result, rest, result
    perm = readers[0]
    return perm.result, [op for op in rest if op is not perm], f"{result}.permute{tuple(perm.attr('dims'))}"
