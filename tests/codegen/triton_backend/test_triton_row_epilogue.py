"""Row epilogues under TRITON_INTERPRET=1: ops on a keepdim sum-like reduction's *input* shape
that read its result (``passes/fusion.py`` ``row_epilogues``, cuda), computed by the reduction
template after the reduction: on the held tile when the row is one tile, else in a second pass.
Every value of every knob of the template's space, rows of 1, primes, a middle axis, two axes,
a row past the persistent limit; and the compile-level decision (one kernel, not two)."""

from __future__ import annotations

import pytest
import torch

from tests.codegen.triton_backend.triton_testing import close, kernel_op, rand, run, t
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton.reduction import SPACE
from tilefx.ir import DType

F16, F32 = DType.float16, DType.float32


def _norm_half(b, x, dims):
    """``h * rsqrt(mean(float(h)^2) + eps).half()``: the cast on the statistic, so not the RMSNorm
    pass's form (it wants the float product)."""
    h = b.op("cast", x, dtype=F32)
    var = b.op("mean", b.op("mul", h, h), dims=dims, keepdim=True)
    r = b.op("rsqrt", b.op("add", var, b.scalar(1e-6, F32)))
    return [b.op("mul", x, b.op("cast", r, dtype=F16))]


def _center_max(b, x, dims):
    """``x - amax(x)``, the row max also exported (on the reduced shape)."""
    m = b.op("amax", x, dims=dims, keepdim=True)
    return [m, b.op("sub", x, m)]


def _l1(b, x, dims):
    """``x / sum(|x|)`` with a prologue (``abs``) the epilogue reads back too."""
    a = b.op("abs", x)
    return [b.op("div", a, b.op("sum", a, dims=dims, keepdim=True))]


def _any_mask(b, x, dims):
    """``where(any(x > 1.5), x, 0)``: a bool statistic broadcast over the row."""
    hit = b.op("any", b.op("gt", x, b.scalar(1.5, F32)), dims=dims, keepdim=True)
    return [b.op("where", hit, x, b.scalar(0.0, F32))]


def _ref(name, x, dims):
    if name == "norm_half":
        h = x.float()
        return [x * torch.rsqrt(h.pow(2).mean(dims, keepdim=True) + 1e-6).half()]
    if name == "center_max":
        m = x.amax(dims, keepdim=True)
        return [m, x - m]
    if name == "l1":
        return [x.abs() / x.abs().sum(dims, keepdim=True)]
    return [torch.where((x > 1.5).any(dim=dims, keepdim=True), x, 0.0)]


BODIES = {"norm_half": (_norm_half, F16), "center_max": (_center_max, F32), "l1": (_l1, F32),
          "any_mask": (_any_mask, F32)}
# (shape, reduced dims): 1-element rows, a prime row, a middle axis, the last two axes (as
# normalized_ndim 2), a row past the persistent limit (looped by default)
CASES = [("norm_half", (3, 1), (1,)), ("norm_half", (2, 5, 33), (2,)), ("center_max", (1, 37), (1,)),
         ("center_max", (3, 7, 5), (1,)), ("l1", (4, 3, 5), (1, 2)), ("l1", (1, 4100), (1,)),
         ("any_mask", (5, 11), (1,)), ("any_mask", (2, 3, 7), (1, 2))]


def covering() -> list[Schedule | None]:
    """The default, then schedules in which every value of every knob appears."""
    n = max(len(v) for v in SPACE.values())
    return [None] + [Schedule.of(**{k: v[i % len(v)] for k, v in SPACE.items()}) for i in range(n)]


@pytest.mark.parametrize("name,shape,dims", CASES, ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in CASES])
def test_row_epilogue_every_knob_value(name, shape, dims):
    fn, dtype = BODIES[name]
    op = kernel_op("reduction", [t(dtype, *shape)], lambda b, x: fn(b, x, dims))
    x = rand(op.inputs[0].type, 3) * 2
    want = _ref(name, x.float() if dtype == F32 else x, dims)
    for schedule in covering():
        got = run(op, [x], schedule)
        for g, w in zip(got, want):
            close(g, w.to(g.dtype), dtype)


class _Norm(torch.nn.Module):
    """A norm as a user might write it (the statistic cast back before the product)."""

    def __init__(self, d=24):
        super().__init__()
        self.proj = torch.nn.Linear(d, d, bias=False)

    def forward(self, x):
        h = x + self.proj(x)
        return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).half()


def test_norm_written_out_is_one_kernel_after_the_matmul():
    """On cuda the product joins the reduction's kernel (2 kernels, was 3); the CPU target keeps
    its fusion rules (its reduction schedules have no row epilogue)."""
    import tilefx

    torch.manual_seed(0)
    model = _Norm().half().eval()
    x = torch.randn(2, 7, 24).half()
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model(x)
    close(got, want, F16)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    assert "kernels: 2" in report and "rsqrt + cast + mul (triton" in report, report


def test_fusion_joins_only_keepdim_sum_like_reductions():
    from tilefx.ir.builder import GraphBuilder
    from tilefx.passes.fusion import fuse, kernels

    def graph(keepdim):
        b = GraphBuilder("g")
        x = b.input(t(F32, 4, 9), "x")
        s = b.op("sum", x, dims=(1,), keepdim=keepdim)
        if not keepdim:
            s = b.op("reshape", s, shape=(4, 1))
        return b.finish([b.op("div", x, s)])

    assert len(kernels(fuse.bind(row_epilogues=True)(graph(True)))) == 1
    assert len(kernels(fuse(graph(True)))) == 2  # off (the CPU targets)
    assert len(kernels(fuse.bind(row_epilogues=True)(graph(False)))) == 2  # a view between: not a row epilogue


class _LayerNorm2d(torch.nn.Module):
    """timm's channels-first LayerNorm (ConvNeXt), written out."""

    def __init__(self, c=6):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(torch.randn(c)), torch.nn.Parameter(torch.randn(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def test_layer_norm_2d_written_out_is_two_kernels():
    """Mean, then centring as its row epilogue (written once); the square stays the variance's
    prologue (not written out), the normalization and affine the variance's row epilogue: 2
    kernels (3 without row epilogues), each full-size tensor read or written 4 times, not 5."""
    import tilefx

    torch.manual_seed(0)
    model = _LayerNorm2d().eval()
    x = torch.randn(2, 6, 5, 7)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        got, want = cm(x), model(x)
    close(got, want)
    report = cm.report()
    assert "fallbacks: 0, interpreted: 0" in report, report
    assert "kernels: 2" in report, report
    assert "reduction <- mean + sub (triton" in report, report


_SM90 = r'''
import importlib.util, os, re, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tests.codegen.triton_backend.test_triton_row_epilogue import BODIES
os.environ.pop("TRITON_INTERPRET", None)  # set by triton_testing: these kernels are compiled
from tilefx.codegen.schedule import Schedule
from tilefx.codegen.triton import reduction
from tilefx.ir.builder import kernel_op
from tilefx.ir.types import TensorType

for name, (fn_, dtype) in BODIES.items():
    op = kernel_op("reduction", [TensorType(dtype, (4096, 768))], lambda b, x: fn_(b, x, (1,)))
    for schedule in (None, Schedule.of(XBLOCK=2, RBLOCK=256, persistent=False, num_warps=4)):
        src = reduction.emit(op.body, "k", schedule or reduction.default_schedule(op.body))
        path = os.path.join(tempfile.mkdtemp(), "k.py")
        open(path, "w").write(src.text)
        spec = importlib.util.spec_from_file_location("kmod", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        call = re.search(r"k\[\([^\]]*\)\]\((.*)\)", src.text).group(1)
        args = [a.strip() for a in call.split(",")]
        kw = {a.split("=")[0]: int(a.split("=")[1]) for a in args if "=" in a}
        opts = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
        ty = "*fp16" if str(dtype) == "float16" else "*fp32"
        sig = {p: ty for p in args if "=" not in p}
        sig.update({c: "constexpr" for c in kw})
        ast = ASTSource(mod.k, sig, constexprs={(mod.k.arg_names.index(c),): v for c, v in kw.items()})
        ptx = triton.compile(ast, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
        print(name, "persistent" if schedule is None else "looped", ptx.count("st.global"))
'''


def test_row_epilogues_compile_for_sm90():
    """Not interpreted: the real Triton compiler (no GPU needed) builds each body above for sm_90,
    persistent and looped, and the kernels store (the interpreter forgives shapes it does not)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    run_ = subprocess.run([sys.executable, "-c", _SM90], env=env, capture_output=True, text=True, timeout=300)
    if run_.returncode and ("ptxas" in run_.stderr or "GPUTarget" in run_.stderr):
        pytest.skip(f"this Triton cannot compile for sm_90 here: {run_.stderr.strip().splitlines()[-1]}")
    assert run_.returncode == 0, run_.stderr[-2000:]
    lines = run_.stdout.split("\n")
    for name in BODIES:
        for mode in ("persistent", "looped"):
            (line,) = [ln for ln in lines if ln.startswith(f"{name} {mode} ")]
            assert int(line.split()[-1]) > 0, line
