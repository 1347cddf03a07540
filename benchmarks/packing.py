"""Weight packing and blocked conv layouts on the zoo: packed vs plain, default and tuned.

    python -m benchmarks.packing                       # resnet18, mobilenetv2_block, mlp, transformer_encoder
    python -m benchmarks.packing --trials 8 --repeats 7 --markdown out.md
    python -m benchmarks.packing --models mobilenetv2_block --trials 0   # default schedules only

For each model, end to end (``tilefx.compile``, ``strict``: no kernel falls
back to the interpreter), median of ``--repeats`` timings:

- ``plain``: PyTorch layouts (NCHW activations, OIHW / ``[K, N]`` weights);
  the conv kernels pack their weight per call, the matmul kernels read ``W``;
- ``packed``: ``PassOptions(pack_weights=True, layout=True)``: linear weights
  in ``[N/bn, K, bn]`` panels (``passes/packing.py``), conv weights
  ``OIHW{i}i{o}o`` and activations ``NCHW{c}c`` between convs
  (``passes/layout.py``); each block factor is the register width of the
  kernel's schedule;

each with default schedules and, with ``--trials N``, tuned (``tune=N``, one
temporary tuning database per model and variant). Then per conv kernel
(default schedules): each kernel of the plain graph against its counterpart
in the packed graph, timed alone on random inputs. The layout transforms per
call (weight repacks, transposed conv writes, strided reads of blocked
values) are counted before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TVM_BIND_THREADS", "0")

MODELS = ("resnet18", "mobilenetv2_block", "mlp", "transformer_encoder")


def _ms(fn, args, repeats: int) -> float:
    from tilefx.codegen import timing

    return timing.host_median(fn, args, repeats=repeats, min_seconds=0.05) * 1e3


def _compile(model, inputs, packed: bool, trials: int, db: str | None):
    import tilefx
    from tilefx.compiler.options import CompileOptions
    from tilefx.passes import PassOptions

    passes = PassOptions(pack_weights=packed, layout=packed)
    options = CompileOptions(passes=passes, tune_trials=trials, tune_db=db, strict=True)
    cm = tilefx.compile(model, options=options)
    cm(*inputs)
    return cm


def end_to_end(name: str, trials: int, repeats: int) -> dict:
    import torch

    from benchmarks.models import ZOO

    entry = ZOO[name]
    model = entry.build()
    inputs = entry.make_inputs(entry.bench_batch, bench=True)
    row: dict = {"model": name, "batch": entry.bench_batch}
    with torch.no_grad():
        want = model(*inputs)
        row["eager"] = _ms(model, list(inputs), repeats)
        for tuned in ([False, True] if trials else [False]):
            for packed in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    cm = _compile(model, inputs, packed, trials if tuned else 0,
                                  f"{tmp}/tuning.db" if tuned else None)
                    err = float((cm(*inputs) - want).abs().max())
                    key = f"{'tuned' if tuned else 'default'}_{'packed' if packed else 'plain'}"
                    row[key] = _ms(cm, list(inputs), repeats)
                    row[key + "_err"] = err
                    notes = [n for n in cm.records[0].notes if n.startswith("packing:")]
                    if packed:
                        row["transforms"] = next((n.split("layout: ", 1)[1] for n in notes
                                                  if "layout:" in n), "no conv")
                        row["packed_kernels"] = len(notes) - ("layout:" in " ".join(notes))
                print(f"  {name} {key}: {row[key]:.3f} ms (max err {err:.1e})", flush=True)
    return row


def per_conv_kernel(name: str, repeats: int) -> list[dict]:
    """Each conv kernel with default schedules: plain graph vs packed graph, timed alone."""
    import torch

    from benchmarks.models import ZOO
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel, default_schedule
    from tilefx.codegen.tvm.schedules.conv import register_oc
    from tilefx.compiler.capture import capture
    from tilefx.compiler.frontend import lower_to_ir
    from tilefx.passes import PassOptions, optimize

    target = Target.host_cpu()
    entry = ZOO[name]
    inputs = entry.make_inputs(entry.bench_batch, bench=True)
    graph = lower_to_ir(capture(entry.build(), tuple(inputs))).graph
    plain = optimize(graph, PassOptions())

    def factor(op):
        return register_oc(int(op.results[0].type.shape[1]), default_schedule(op, target), target)
    packed = optimize(graph, PassOptions(layout=True, block_factor=factor))
    rows = []
    by_name = {op.attr("name"): op for op in packed.ops if op.name == "kernel"}
    for op in plain.ops:
        if op.name != "kernel" or not any(o.name == "conv2d" for o in op.body.ops):
            continue
        times = []
        for g, kop in ((plain, op), (packed, by_name[op.attr("name")])):
            consts = {c.results[0].name: torch.from_numpy(g.constants[c.attr("name")]).clone()
                      for c in g.ops if c.name == "const" and c.attr("name")}
            args = [consts[v.name] if v.name in consts else torch.randn(*v.type.shape) for v in kop.inputs]
            out = torch.empty(*kop.results[0].type.shape)
            times.append(_ms(build_kernel(kop, target), args + [out], repeats))
        conv = next(o for o in op.body.ops if o.name == "conv2d")
        kop = by_name[op.attr("name")]
        layout = ("NCHW%dc" % kop.inputs[0].type.shape[4] if kop.inputs[0].type.rank == 5 else "NCHW") + \
            " -> " + ("NCHW%dc" % kop.results[0].type.shape[4] if kop.results[0].type.rank == 5 else "NCHW")
        rows.append({"model": name, "kernel": op.attr("name"),
                     "conv": f"{list(conv.inputs[0].type.shape)} * {list(conv.inputs[1].type.shape)} "
                             f"s{conv.attr('stride')[0]} g{conv.attr('groups', 1)}",
                     "layout": layout, "plain": times[0], "packed": times[1]})
        print(f"  {name} {op.attr('name')}: {rows[-1]['conv']} {layout}: plain {times[0]:.3f} ms, "
              f"packed {times[1]:.3f} ms", flush=True)
    return rows


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(e2e: list[dict], kernels: list[dict], trials: int, repeats: int, seconds: float) -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"# Packing and blocked conv layouts, CPU ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; "
             f"`python -m benchmarks.packing --trials {trials} --repeats {repeats}` ({seconds:.0f} s).",
             "Times in ms, median of repeats; `plain` = NCHW / OIHW / [K, N] weights, `packed` = "
             "`PassOptions(pack_weights=True, layout=True)`.", "",
             "| model | batch | eager | default plain | default packed | speedup | tuned plain | "
             "tuned packed | speedup | layout transforms per call (packed) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in e2e:
        dp, dk = r.get("default_plain"), r.get("default_packed")
        tp, tk = r.get("tuned_plain"), r.get("tuned_packed")
        lines.append(f"| {r['model']} | {r['batch']} | {_f(r['eager'])} | {_f(dp)} | {_f(dk)} | "
                     f"{dp / dk:.2f}x | {_f(tp)} | {_f(tk)} | "
                     f"{f'{tp / tk:.2f}x' if tp and tk else '-'} | {r.get('transforms', '-')} |")
    lines += ["", "Per conv kernel, default schedules, timed alone:", "",
              "| model | kernel | conv (input * weight, stride, groups) | layout in -> out | plain | packed "
              "| speedup |", "|---|---|---|---|---|---|---|"]
    for r in kernels:
        lines.append(f"| {r['model']} | {r['kernel']} | {r['conv']} | {r['layout']} | {_f(r['plain'])} | "
                     f"{_f(r['packed'])} | {r['plain'] / r['packed']:.2f}x |")
    if kernels:
        total_p = sum(r["plain"] for r in kernels)
        total_k = sum(r["packed"] for r in kernels)
        lines.append(f"| all | | | | {total_p:.3f} | {total_k:.3f} | {total_p / total_k:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--trials", type=int, default=8, help="tuner candidates per kernel (0: default only)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-kernels", action="store_true", help="skip the per-conv-kernel table")
    p.add_argument("--markdown", help="write the tables to this file")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    e2e, kernels = [], []
    for name in a.models:
        e2e.append(end_to_end(name, a.trials, a.repeats))
        if not a.no_kernels and name in ("resnet18", "mobilenetv2_block"):
            kernels += per_conv_kernel(name, a.repeats)
    text = markdown(e2e, kernels, a.trials, a.repeats, time.perf_counter() - t0)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
