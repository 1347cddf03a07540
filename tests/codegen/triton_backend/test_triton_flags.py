"""Flags: ``any``/``all`` of a whole matmul epilogue value computed by the matmul's own kernel
(``codegen/triton/emit.py``: a tile per program, combined with atomics, stored by the last
program, which rests the workspace), under TRITON_INTERPRET=1.

T5 in fp16 asks ``isinf(h).any()`` after each residual add and clamps ``h`` by the answer: with
flags its graph has the kernels of its bf16 graph (43), where the mask, the partial rows and the
final ``any`` were two kernels more per add (67).
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.codegen.triton_backend.triton_testing import close, kernel_op, rand, run, t
from tilefx.codegen.schedule import Schedule
from tilefx.ir import DType
from tilefx.passes.fusion import fuse, kernels
from tilefx.passes.split_reduction import split_reduction

F16, F32 = DType.float16, DType.float32
INF = float("inf")


def _op(a_shape, w_shape, reduce="any", dtype=F16):
    """h = a @ w + r, and the flag ``any(|h| == inf)`` (or ``all(|h| != inf)``)."""
    out = torch.empty(a_shape[:-1] + (w_shape[-1],)).shape if len(w_shape) == 2 else \
        torch.broadcast_shapes(a_shape[:-2], w_shape[:-2]) + (a_shape[-2], w_shape[-1])

    def body(b, a, w, r):
        h = b.op("add", b.op("matmul", a, w), r)
        inf = b.scalar(INF, dtype)
        test = "eq" if reduce == "any" else "ne"
        return h, b.op(reduce, b.op(test, b.op("abs", h), inf), dims=None, keepdim=False)
    return kernel_op("contraction", [t(dtype, *a_shape), t(dtype, *w_shape), t(dtype, *out)], body)


# an inf (or -inf) in the residual lands in h there: none, the first element, the last one (in
# the last, part-filled tile), one inside; twice in a row each, so a workspace left unrested shows
_PLACES = [None, 0, -1, None, 7, None, -1, -1, None]


def _check(op, schedule, reduce="any"):
    a, w = rand(op.inputs[0].type, 1), rand(op.inputs[1].type, 2) * 0.1
    r0 = rand(op.inputs[2].type, 3)
    for n, place in enumerate(_PLACES):
        r = r0.clone()
        if place is not None:
            r.view(-1)[place % r.numel()] = INF if n % 2 else -INF
        h, flag = run(op, [a, w, r], schedule)
        want_h = (a.float() @ w.float() + r.float()).half().float()
        close(h, want_h, F16)
        has_inf = bool(torch.isinf(want_h).any())
        assert flag.shape == () and flag.dtype == torch.bool
        assert bool(flag) == (has_inf if reduce == "any" else not has_inf), (n, place)


SCHEDULES = {
    "default": None,
    "small tiles": Schedule.of(impl="triton", BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=4,
                               num_warps=2, num_stages=2),
    "tiles past the problem": Schedule.of(impl="triton", BLOCK_M=256, BLOCK_N=256, BLOCK_K=128,
                                          GROUP_M=8, num_warps=8, num_stages=5),
    "library": Schedule.of(impl="library", EPILOGUE_BLOCK=128),
}


# 1, primes (no tile divides them), a batch folded into M, a batch along the grid's second axis
@pytest.mark.parametrize("a_shape,w_shape", [((1, 1), (1, 1)), ((37, 13), (13, 19)),
                                             ((3, 5, 7), (7, 11)), ((2, 5, 7), (2, 7, 11))])
@pytest.mark.parametrize("schedule", list(SCHEDULES), ids=list(SCHEDULES))
def test_matmul_flag(a_shape, w_shape, schedule):
    _check(_op(a_shape, w_shape), SCHEDULES[schedule])


@pytest.mark.parametrize("schedule", ["default", "small tiles", "library"])
def test_matmul_all_flag(schedule):
    _check(_op((37, 13), (13, 19), "all"), SCHEDULES[schedule], "all")


def test_flag_sees_fp16_overflow_not_the_fp32_accumulator():
    """``h`` past 65504 is inf in fp16 (eager's ``isinf(h)``) while the fp32 accumulator holds
    a finite 7e4: the comparison rounds to the stored dtype first."""
    op = _op((4, 3), (3, 5))
    a = torch.full((4, 3), 200.0).half()
    w = torch.full((3, 5), 100.0).half()  # 3 * 200 * 100 = 60000, finite
    r = torch.zeros(4, 5).half()
    r[2, 4] = 10000.0  # 70000: inf in fp16
    h, flag = run(op, [a, w, r])
    assert torch.isinf(h[2, 4]) and bool(flag)
    r[2, 4] = 0.0
    h, flag = run(op, [a, w, r])
    assert not torch.isinf(h).any() and not bool(flag)


class _T5Block(torch.nn.Module):
    """T5's residual add, fp16-only clamp and RMSNorm, as transformers writes them."""

    def __init__(self, d=24):
        super().__init__()
        self.proj = torch.nn.Linear(d, d, bias=False)
        self.weight = torch.nn.Parameter(torch.randn(d) * 0.1 + 1)

    def forward(self, x):
        h = x + self.proj(x)
        if h.dtype == torch.float16:
            c = torch.where(torch.isinf(h).any(), torch.finfo(h.dtype).max - 1000, torch.finfo(h.dtype).max)
            h = torch.clamp(h, min=-c, max=c)
        var = h.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (h * torch.rsqrt(var + 1e-6)).to(h.dtype), h


def test_t5_clamp_costs_no_kernel_and_clamps_like_eager():
    """fp16 compiles to two kernels (matmul + residual + flag; clamp + norm), as bf16 (no clamp
    there) does; an inf in the input is clamped as eager clamps it, the next call's (none) not."""
    import tilefx

    torch.manual_seed(0)
    model = _T5Block().half().eval()
    x = torch.randn(2, 7, 24).half()
    cm = tilefx.compile(model, target="cuda")
    bound = torch.tensor(torch.finfo(torch.float16).max - 1000, dtype=torch.float16).item()  # 64512
    with torch.no_grad():
        for place in (None, (1, 6, 23), None, (0, 0, 0), None):
            xx = x.clone()
            if place is not None:
                xx[place] = INF
            got, want = cm(xx), model(xx)
            for g, w in zip(got, want):  # a row with inf has NaN after its matmul: in eager too
                torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2, equal_nan=True)
            finite = got[1][torch.isfinite(got[1])].abs().max().item()
            assert (finite == bound) == (place is not None), (place, finite)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    assert "kernels: 2" in report, report
    # bf16 (no clamp in the model): the same two kernels (its matmul is not checked here: the
    # Triton interpreter's bf16 dot is wrong on this host, the GPU runs it)
    bf16 = tilefx.compile(_T5Block().to(torch.bfloat16).eval(), target="cuda")
    with torch.no_grad():
        bf16(x.to(torch.bfloat16))
    assert "kernels: 2" in bf16.report()


def _clamped_graph(flags: bool):
    """``h = x @ w + x`` of 2^16 elements (long enough to be split in rows), its ``any(|h| == inf)``
    choosing a bound, ``minimum(h, bound)`` summed by rows: the fused graph, with or without flags."""
    from tilefx.ir.builder import GraphBuilder

    b = GraphBuilder("clamped")
    x, w = b.input(t(F16, 256, 256), "x"), b.input(t(F16, 256, 256), "w")
    h = b.op("add", b.op("matmul", x, w), x)
    flag = b.op("any", b.op("eq", b.op("abs", h), b.scalar(INF, F16)),
                dims=(), keepdim=False)
    bound = b.op("where", flag, b.scalar(64504.0, F16),
                 b.scalar(65504.0, F16))
    graph = b.finish([b.op("sum", b.op("minimum", h, bound), dims=(1,), keepdim=False)])
    return fuse.bind(flags=flags)(split_reduction.bind(epilogue_flags=flags)(graph))


def test_fusion_puts_the_flag_in_the_matmul_only_when_asked():
    """On cuda (``epilogue_flags``) the ``any`` stays whole and joins the matmul's kernel, sealed:
    what reads it is in the next kernel. Without (TVM) it is split in rows, its own kernels."""
    bodies = [[o.name for o in k.body.ops] for k in kernels(_clamped_graph(True))]
    assert len(bodies) == 2, bodies
    assert {"matmul", "any"} <= set(bodies[0]) and "minimum" not in bodies[0], bodies
    assert "where" in bodies[1] and "sum" in bodies[1], bodies
    without = [[o.name for o in k.body.ops] for k in kernels(_clamped_graph(False))]
    assert len(without) == 4, without  # matmul (+ mask), partial rows, the last any, the sum
    assert not any("any" in body and "matmul" in body for body in without), without


_SM90 = r'''
import os, re, sys, importlib.util, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import matmul
from tilefx.ir import DType
from tilefx.ir.builder import kernel_op
from tilefx.ir.types import TensorType

F16 = DType.float16
def body(b, a, w, r):
    h = b.op("add", b.op("matmul", a, w), r)
    return h, b.op("any", b.op("eq", b.op("abs", h), b.scalar(float("inf"), F16)), dims=(), keepdim=False)
op = kernel_op("contraction", [TensorType(F16, s) for s in ((4096, 512), (512, 512), (4096, 512))], body)
for schedule in (matmul.default_schedule(op.body), Schedule.of(impl="library", EPILOGUE_BLOCK=1024)):
    src = matmul.emit(op.body, "k", schedule)
    path = os.path.join(tempfile.mkdtemp(), "k.py")
    open(path, "w").write(src.text)
    spec = importlib.util.spec_from_file_location("kmod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, fn in vars(mod).items():
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            continue
        call = re.search(rf"{name}\[\([^\]]*\)\]\((.*)\)", src.text).group(1)
        args = [a.strip() for a in call.split(",")]
        ptrs = [a for a in args if "=" not in a]
        kw = {a.split("=")[0]: int(a.split("=")[1]) for a in args if "=" in a}
        opts = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
        flag_out = "out%d" % (len(op.body.outputs) - 1)
        sig = {p: "*i32" if p == "ws" else "*i1" if p == flag_out else "*fp16" for p in ptrs}
        sig.update({c: "constexpr" for c in kw})
        ast = ASTSource(fn, sig, constexprs={(fn.arg_names.index(c),): v for c, v in kw.items()})
        ptx = triton.compile(ast, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
        for line in ptx.splitlines():
            if "atom." in line:
                print(schedule["impl"], line.strip())
'''


def test_flag_compiles_for_sm90_with_one_thread_acq_rel_atomics():
    """Not interpreted: the real Triton compiler (no GPU needed) lowers both the template's and
    the library epilogue's flag to GPU-scope acquire-release atomics, each done by one thread
    of the program (the same predicate), so a program's combine comes before its count."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run_ = subprocess.run([sys.executable, "-c", _SM90], env=env, capture_output=True, text=True, timeout=300)
    if run_.returncode and ("ptxas" in run_.stderr or "GPUTarget" in run_.stderr):
        pytest.skip(f"this Triton cannot compile for sm_90 here: {run_.stderr.strip().splitlines()[-1]}")
    assert run_.returncode == 0, run_.stderr[-2000:]
    for impl in ("triton", "library"):
        lines = [ln.split(" ", 1)[1] for ln in run_.stdout.splitlines() if ln.startswith(impl + " ")]
        ops = [re.search(r"atom\.[\w.]+", ln).group(0) for ln in lines]
        assert ops == ["atom.global.gpu.acq_rel.max.s32", "atom.global.gpu.acq_rel.add.u32",
                       "atom.global.gpu.acq_rel.exch.b32", "atom.global.gpu.acq_rel.exch.b32"], lines
        assert len({ln.split()[0] for ln in lines}) == 1 and lines[0].startswith("@%p"), lines
