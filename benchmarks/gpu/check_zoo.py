"""Check the whole model zoo compiled for target="cuda" (Triton) on a GPU.

    python benchmarks/gpu/check_zoo.py                    # every model, fp32 + fp16 + bf16
    python benchmarks/gpu/check_zoo.py --models mlp --dtypes fp16

For each model and dtype: compile with ``tilefx.compile(model, target="cuda")``,
run on fresh inputs, and require

- zero fallbacks and zero kernels left to the interpreter (every kernel is Triton
  or a library candidate),
- agreement with eager: fp32 within 1e-3 (relative to the output's scale; TF32
  stays off unless you turned it on), fp16/bf16 judged against the fp32 model —
  tilefx's error may be at most 2x eager's own error in that dtype plus 1e-2,
- the same on a later call with other inputs, replayed from the CUDA graph
  (the "cuda graph" column says whether it was captured, or why not).

Prints a markdown table (also to ``$OUT/check_zoo.md`` when ``$OUT`` is set);
exits 1 if any row fails. Works without TVM installed.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from common import DTYPES, Report, environment, first, zoo_model

import torch


def check(name: str, dtype_name: str) -> tuple[list[str], bool]:
    import tilefx
    from tilefx.compiler.cuda_graph import status

    dtype = DTYPES[dtype_name]
    model, inputs = zoo_model(name, dtype, seed=1)
    ref_model, ref_inputs = zoo_model(name, torch.float32, seed=1)
    cm = tilefx.compile(model, target="cuda")
    _, inputs2 = zoo_model(name, dtype, seed=2)
    _, ref_inputs2 = zoo_model(name, torch.float32, seed=2)
    with torch.no_grad():
        out = first(cm(*inputs)).float()  # the first call runs eagerly (CUDA graph warm-up)
        eager = first(model(*inputs)).float()
        ref = first(ref_model(*ref_inputs)).float()
        first(cm(*inputs2))  # captures the CUDA graph, then replays it
        replayed = first(cm(*inputs2)).float()  # a plain replay
        ref2 = first(ref_model(*ref_inputs2)).float()
    scale = ref.abs().max().item() or 1.0
    err = (out - ref).abs().max().item() / scale
    eager_err = (eager - ref).abs().max().item() / scale
    graph_err = (replayed - ref2).abs().max().item() / (ref2.abs().max().item() or 1.0)
    graph = "; ".join(status(cm)) or "?"
    report = cm.report()
    # the summary line: "fallbacks: N, interpreted: M" (kernels left to the reference interpreter)
    counts = next((line for line in report.splitlines() if line.startswith("fallbacks:")), "")
    fallbacks = counts.split(":")[1].split(",")[0].strip() if counts else "?"
    interpreted = max(report.count("interpreter:"),
                      int(counts.split("interpreted:")[1].split()[0]) if "interpreted:" in counts else 0)
    kernels = next((line.split(":")[1].split()[0] for line in report.splitlines()
                    if line.startswith("kernels:")), "?")
    limit = 1e-3 if dtype == torch.float32 else 2 * eager_err + 1e-2
    ok = err <= limit and interpreted == 0 and fallbacks == "0" and torch.isfinite(out).all().item()
    ok = ok and graph_err <= limit and torch.isfinite(replayed).all().item()
    row = [name, dtype_name, f"{err:.2e}", f"{eager_err:.2e}", f"{limit:.1e}", f"{graph_err:.2e}", graph[:60],
           kernels, str(interpreted), fallbacks, "ok" if ok else "FAIL"]
    if not ok:
        print(report, file=sys.stderr)
    return row, ok


def main(argv: list[str] | None = None) -> int:
    from benchmarks.models import ZOO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    report = Report("check_zoo.md")
    report(f"# tilefx zoo check, target cuda\n\n{environment()}\n")
    report("| model | dtype | rel err tilefx | rel err eager | limit | rel err replayed | cuda graph "
           "| kernels | interpreted | fallbacks | status |")
    report("|---|---|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    for name in args.models.split(","):
        for dt in args.dtypes.split(","):
            try:
                row, ok = check(name, dt)
            except Exception as e:  # noqa: BLE001 - report and go on with the next model
                traceback.print_exc()
                row, ok = [name, dt] + ["-"] * 8 + [f"ERROR {type(e).__name__}: {e}"[:120]], False
            all_ok &= ok
            report("| " + " | ".join(row) + " |")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
