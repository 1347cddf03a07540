"""The markdown tables of ``models.py`` from its rows (one JSON-able dict per model and dtype)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch

from models_kernels import PROFILED_CALLS, TOP

COLS = ("eager", "inductor", "reduce-overhead", "max-autotune", "tilefx", "tilefx cm-default", "tilefx tuned")


def header(commands: list[str], rows: list[dict]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "missing"
    gpu = next((r["device"] for r in rows if r.get("device")), None) or \
        (torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
    return "\n".join([
        "# tilefx on real models\n",
        f"- {gpu}; torch {torch.__version__}, triton {ver('triton')}, torchvision {ver('torchvision')}, "
        f"transformers {ver('transformers')}, timm {ver('timm')}, python {sys.version.split()[0]}",
        f"- {time.strftime('%Y-%m-%d %H:%M:%S')}; " + "; ".join(f"`{c}`" for c in commands),
        "- random weights (BatchNorm stats calibrated on random images), eval, no_grad; NCHW inputs: "
        "channels_last not applied for any column; transformers attention: sdpa",
        "- ms: median of CUDA-event timings of single calls after 10 warm-ups; ratios are time / time "
        "(< 1: tilefx faster); err: max |out - eager| / max |eager|; compile s: the first call's wall time "
        "(compile caches as found: a second run of a model compiles faster)",
        "- tilefx pass: err <= 2 x (eager's err against an fp32 copy of its weights) + 1e-2, and finite; "
        "kernel tables: torch.profiler over tilefx with CUDA graphs off; % roofline: max(FLOPs / peak, "
        "bytes / bandwidth) / time, peaks measured (cuBLAS fp16, device copy); cells are cut, errors in full "
        "at the end",
    ])


def both(report: dict, key: str) -> str:
    """A report count of the untuned compile, and of the tuned one where it ran: "0 / tuned 0"."""
    tuned = report.get(f"tuned_{key}")
    return fmt(report.get(key)) + (f" / tuned {tuned}" if tuned is not None else "")


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return "-" if v is None else str(v).replace("|", "/").replace("\n", " ")[:48]


def geomean(xs: list[float]) -> str:
    return f"{math.exp(sum(map(math.log, xs)) / len(xs)):.2f} (n={len(xs)})" if xs else "-"


def render(rows: list[dict], commands: list[str], columns: tuple[str, ...]) -> str:
    """The tables; ``columns`` are those asked for (others that rows hold are shown too)."""
    out = [header(commands, rows)]
    present = [c for c in COLS if c in columns or any(c in r.get("ms", {}) for r in rows)]
    timed = [c for c in present if c != "eager"]
    pairs = [("tilefx", "reduce-overhead")]
    if "tilefx cm-default" in present:
        pairs.append(("tilefx cm-default", "tilefx"))
    if "tilefx tuned" in present:
        pairs.append(("tilefx tuned", "max-autotune" if "max-autotune" in present else "reduce-overhead"))
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        part = [r for r in rows if r["dtype"] == dtype]
        out += [f"\n## {dtype}: ms per call\n",
                "| model | input | " + " | ".join(present) + " | " + " | ".join(f"{a} / {b}" for a, b in pairs)
                + " | status |", "|---|---|" + "---:|" * (len(present) + len(pairs)) + "---|"]
        speedups: dict[str, list[float]] = {c: [] for c in timed}
        ratios: list[list[float]] = [[] for _ in pairs]
        for r in part:
            ms = r.get("ms", {})
            cells = [fmt(ms.get(c)) for c in present]
            for c in timed:
                if isinstance(ms.get(c), float) and isinstance(ms.get("eager"), float):
                    speedups[c].append(ms["eager"] / ms[c])
            for i, (a, b) in enumerate(pairs):
                ok = isinstance(ms.get(a), float) and isinstance(ms.get(b), float)
                cells.append(f"{ms[a] / ms[b]:.2f}" if ok else "-")
                if ok:
                    ratios[i].append(ms[a] / ms[b])
            out.append(f"| {r['model']} | {r.get('input', '')} | " + " | ".join(cells) + f" | {fmt(r.get('status'))} |")
        out.append("| geomean | (ms columns: speedup over eager) | " + " | ".join(
            ["1.00"] * ("eager" in present) + [geomean(speedups[c]) for c in timed] + [geomean(x) for x in ratios])
            + " | |")
        errs = [c for c in present if c != "eager"]
        out += [f"\n## {dtype}: accuracy and the tilefx report\n",
                "| model | eager vs fp32 | limit | " + " | ".join(errs) + " | tilefx pass | kernels | library "
                "| fallbacks | interpreted | cuda graph |", "|---|" + "---:|" * (2 + len(errs)) + "---|" * 6]
        for r in part:
            err, limit, rep = r.get("err", {}), r.get("limit"), r.get("report", {})
            verdict = [("ok" if err[c] <= limit else "FAIL") for c in ("tilefx", "tilefx tuned")
                       if isinstance(err.get(c), float) and limit is not None]
            out.append(f"| {r['model']} | " + " | ".join(
                [f"{r['eager_err']:.1e}" if isinstance(r.get("eager_err"), float) else "-",
                 f"{limit:.1e}" if limit is not None else "-"]
                + [f"{err[c]:.1e}" if isinstance(err.get(c), float) else "-" for c in errs]
                + [" / ".join(verdict) or "-"] + [fmt(rep.get(k)) for k in ("kernels", "library")]
                + [both(rep, k) for k in ("fallbacks", "interpreted")] + [fmt(rep.get("graph"))])
                + " |")
        out += [f"\n## {dtype}: compile seconds (first call)\n",
                "| model | params (M) | " + " | ".join(timed) + " | tilefx stages |",
                "|---|---:|" + "---:|" * len(timed) + "---|"]
        for r in part:
            cs, stages = r.get("compile_s", {}), r.get("report", {}).get("stages", {})
            out.append(f"| {r['model']} | {fmt(r.get('params_m'), 1)} | "
                       + " | ".join(fmt(cs.get(c), 1) for c in timed)
                       + f" | {', '.join(f'{k} {v}' for k, v in stages.items()) or '-'} |")
        for r in part:
            k = r.get("kernels")
            if not isinstance(k, dict):
                continue
            tilefx_ms = r.get("ms", {}).get("tilefx")
            out += [f"\n### {r['model']} ({dtype}): top {TOP} kernels of tilefx, {k['us_per_call']:.0f} µs GPU "
                    f"per call (no CUDA graph, {PROFILED_CALLS} profiled calls; timed with graph: "
                    f"{fmt(tilefx_ms)} ms)\n",
                    "| kernel (profiler) | tilefx kernel: fused ops | launches | µs per call | % GPU time | "
                    "TFLOP/s | GB/s | % roofline |", "|---|---|---:|---:|---:|---:|---:|---:|"]
            for x in k["rows"]:
                out.append(f"| {x['kernel'][:70]} | {x['tilefx'][:70]} | {x['launches']:g} | {x['us']:.1f} | "
                           f"{x['pct']:.1f} | {fmt(x.get('tflops'), 1)} | {fmt(x.get('gbs'), 0)} | {x['roofline']} |")
    errors = [(r, s, e) for r in rows for s, e in r.get("errors", {}).items()]
    if errors:
        out += ["\n## errors\n"] + [f"- {r['model']} {r['dtype']} {s}: {e}" for r, s, e in errors]
    notes = [(r, n) for r in rows for n in r.get("notes", [])]
    if notes:
        out += ["\n## notes\n"] + [f"- {r['model']} {r['dtype']}: {n}" for r, n in notes]
    return "\n".join(out) + "\n"
