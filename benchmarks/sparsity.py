"""Sparse vs dense contractions: tilefx's block-sparse TVM kernel against the dense ones.

    python -m benchmarks.sparsity                 # CPU: Linear 4096x4096 (batch 1/16/128), 1x1 conv
    python -m benchmarks.sparsity --quick         # fewer cases (batch 1/16 + conv)
    python -m benchmarks.sparsity --smoke         # 512x512, one pattern: checks the script
    python -m benchmarks.sparsity --packing       # zoo linear kernels, tuned: packed vs row-major weight
    python -m benchmarks.sparsity --target cuda   # GPU: cuBLAS vs torch sparse options (H100/H200)

For each shape, sparsity pattern (unstructured = 1x1 blocks, or bk x bn blocks)
and sparsity (50..95% zeros) it times, median of repeats:

- ``tvm dense``: tilefx's dense kernel with the default schedule,
- ``tvm tuned``: the dense kernel tuned by the real tuner (``autotune.Tuner``,
  ``--tune-trials`` candidates, evolutionary, a temporary database), the
  best TVM schedule it found rebuilt and timed here like the others,
- ``dense tuned`` = the fastest of ``tvm tuned``, ``tvm dense`` (the tuner's
  first candidate) and ``torch dense``: the tuner's space includes the library
  call, so this is what a tuned dense layer costs in tilefx; speedups and
  break-even are computed against it,
- ``tilefx sparse``: the ``bsr_matmul`` kernel at the pattern's block,
- ``torch dense`` (MKL / cuBLAS) and ``torch csr`` / ``torch bsr``
  (``torch.sparse.mm``; "n/a" where torch has no kernel for the layout),

then prints speedups and the break-even sparsity: the lowest tested sparsity
from which on the sparse kernel beats the dense tuned kernel (and, for
reference, the default dense TVM kernel).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TVM_BIND_THREADS", "0")

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def sparse_weight(rng: np.random.Generator, k: int, n: int, block: tuple[int, int],
                  sparsity: float) -> np.ndarray:
    """``W[K, N]`` with exactly ``sparsity`` of its ``block``s zero (random positions)."""
    bk, bn = block
    nblocks = (k // bk) * (n // bn)
    keep = np.zeros(nblocks, dtype=bool)
    keep[rng.choice(nblocks, max(1, round(nblocks * (1 - sparsity))), replace=False)] = True
    mask = np.repeat(np.repeat(keep.reshape(k // bk, n // bn), bk, 0), bn, 1)
    return (rng.standard_normal((k, n)).astype(np.float32) * mask).astype(np.float32)


def _ms(fn, args, repeats: int) -> float:
    from tilefx.codegen import timing

    return timing.host_median(fn, args, repeats=repeats, min_seconds=0.02) * 1e3


def _torch_sparse(w: np.ndarray, x, kind: str, layout: str, block: tuple[int, int], repeats: int):
    """torch.sparse.mm on W^T [N, K] (rows = outputs) times x^T; None where unsupported."""
    import torch

    wt = torch.from_numpy(np.ascontiguousarray(w.T))
    xt = x.reshape(x.shape[0], x.shape[1], -1)[0] if kind == "conv1x1" else x.T.contiguous()
    try:
        sp = wt.to_sparse_csr() if layout == "csr" else wt.to_sparse_bsr((block[1], block[0]))
        fn = lambda: torch.sparse.mm(sp, xt)  # noqa: E731
        fn()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return _ms(fn, [], repeats)


def tuned_dense_ms(dense, target, args: list, trials: int, repeats: int) -> tuple[float | None, str]:
    """(ms, schedule) of the best *TVM* schedule the tuner finds for ``dense`` in ``trials``
    candidates (its library candidate is timed by the caller as ``torch dense``)."""
    import tempfile

    from tilefx.codegen.space import is_extern
    from tilefx.autotune.tuner import TuneOptions, Tuner
    from tilefx.codegen.tvm import build_kernel

    with tempfile.TemporaryDirectory() as tmp:
        tuner = Tuner(target, TuneOptions(trials=trials, workers=1, progress=False, repeats=5,
                                          db_path=f"{tmp}/tuning.db"))
        try:
            res = tuner.tune_kernel(dense)
            records = tuner.db.records(res.workload_key, target.key())
        finally:
            tuner.close()
    ok = sorted((r for r in records if r.ok and r.median and not is_extern(r.schedule)),
                key=lambda r: r.median)
    if not ok:
        return None, "-"
    fn = build_kernel(dense, target, schedule=ok[0].schedule)
    return _ms(fn, args, repeats), str(ok[0].schedule)


def bench_cpu(quick: bool, repeats: int, tune_trials: int = 8, smoke: bool = False) -> list[dict]:
    import torch

    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel
    from tilefx.codegen.tvm.schedules.sparse import layer_kernels

    target = Target.host_cpu()
    rng = np.random.default_rng(0)
    k = n = 512 if smoke else 4096
    # --quick: the shapes, fewer of them (batch 1 and 16, block 4x16 and 1x1)
    cases = [("linear", (b, k), k, n) for b in ((1, 16) if quick else (1, 16, 128))]
    c = 64 if smoke else 256
    cases.append(("conv1x1", (1, c, 28, 28), c, c))
    patterns = [(1, 1), (4, 16)] if quick else [(1, 1), (4, 4), (4, 16)]
    sparsities = (0.5, 0.8, 0.9, 0.95) if quick else SPARSITIES
    if smoke:
        cases, patterns, sparsities = cases[:1] + cases[-1:], [(4, 16)], (0.9,)
    rows = []
    for kind, x_shape, kk, nn in cases:
        axis = len(x_shape) - 1 if kind == "linear" else 1
        x = torch.randn(*x_shape)
        dense_w = rng.standard_normal((kk, nn)).astype(np.float32)
        dense, _, (wd, _) = layer_kernels(x_shape, axis, dense_w, (1, 1), kind)
        out = torch.empty(*dense.results[0].type.shape)
        d_fn = build_kernel(dense, target)
        tvm_dense = _ms(d_fn, [x, torch.from_numpy(wd).clone(), out], repeats)
        t0 = time.perf_counter()
        tvm_tuned, tuned_sched = tuned_dense_ms(dense, target, [x, torch.from_numpy(wd).clone(), out],
                                                tune_trials, repeats)
        tune_s = time.perf_counter() - t0
        if kind == "linear":
            wt = torch.from_numpy(dense_w)
            torch_dense = _ms(torch.matmul, [x, wt], repeats)
        else:
            wc = torch.from_numpy(np.ascontiguousarray(wd))
            torch_dense = _ms(torch.nn.functional.conv2d, [x, wc], repeats)
        # the tuner measured the default schedule too: the best of the three is the baseline
        dense_tuned = min(v for v in (tvm_tuned, tvm_dense, torch_dense) if v is not None)
        by = "torch" if dense_tuned == torch_dense else "tvm"
        print(f"{kind:8s} {str(x_shape):18s} dense: tvm default {tvm_dense:.3f} ms, tvm tuned "
              f"{_fmt(tvm_tuned)} ms ({tune_trials} trials, {tune_s:.0f} s: {tuned_sched}), torch "
              f"{torch_dense:.3f} ms -> dense tuned {dense_tuned:.3f} ms ({by})", flush=True)
        for block in patterns:
            for s in sparsities:
                w = sparse_weight(rng, kk, nn, block, s)
                _, sparse, (_, bsr) = layer_kernels(x_shape, axis, w, block, kind)
                s_fn = build_kernel(sparse, target)
                s_args = [x, *(torch.from_numpy(a).clone() for a in bsr), torch.empty_like(out)]
                sp = _ms(s_fn, s_args, repeats)
                # correctness guard: a wrong kernel must not post a number
                want = (x @ torch.from_numpy(w) if kind == "linear" else torch.nn.functional.conv2d(
                    x, torch.from_numpy(np.ascontiguousarray(w.T)).reshape(nn, kk, 1, 1)))
                assert torch.allclose(s_args[-1], want, rtol=1e-3, atol=1e-3), (kind, block, s)
                rows.append(dict(kind=kind, shape=x_shape, kn=(kk, nn), block=block, sparsity=s,
                                 tvm_dense=tvm_dense, sparse=sp, torch_dense=torch_dense,
                                 tvm_tuned=tvm_tuned, dense_tuned=dense_tuned, dense_tuned_by=by,
                                 torch_csr=_torch_sparse(w, x, kind, "csr", block, repeats),
                                 torch_bsr=None if block == (1, 1) else
                                 _torch_sparse(w, x, kind, "bsr", block, repeats)))
                r = rows[-1]
                print(f"{kind:8s} {str(x_shape):18s} block {block[0]}x{block[1]:<3d} {s:.0%}: "
                      f"tvm dense {tvm_dense:8.3f} ms  tilefx sparse {sp:8.3f} ms "
                      f"({tvm_dense / sp:5.2f}x; vs dense tuned {dense_tuned / sp:5.2f}x)  "
                      f"csr {_fmt(r['torch_csr'])}  bsr {_fmt(r['torch_bsr'])}", flush=True)
    return rows


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def break_even(rows: list[dict], baseline: str = "dense_tuned") -> list[str]:
    """Per (shape, block): the lowest sparsity from which on sparse beats ``baseline``."""
    out = []
    keys = dict.fromkeys((r["kind"], r["shape"], r["block"]) for r in rows)
    for kind, shape, block in keys:
        rs = sorted((r for r in rows if (r["kind"], r["shape"], r["block"]) == (kind, shape, block)),
                    key=lambda r: r["sparsity"])
        wins = [r["sparse"] < r[baseline] for r in rs]
        first = next((i for i in range(len(rs)) if all(wins[i:])), None)
        where = f">= {rs[first]['sparsity']:.0%} zeros" if first is not None else \
            f"never (in {rs[0]['sparsity']:.0%}-{rs[-1]['sparsity']:.0%})"
        vs = baseline.replace("_", " ")
        out.append(f"break-even vs {vs} {kind} {shape} block {block[0]}x{block[1]}: sparse wins at {where}")
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | x | block | sparsity | tvm default ms | tvm tuned ms | torch dense ms | "
             "**dense tuned** ms | tilefx sparse ms | **speedup vs dense tuned** | vs tvm default | "
             "torch csr ms | torch bsr ms |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['kind']} {r['kn'][0]}->{r['kn'][1]} | {list(r['shape'])} | "
                     f"{r['block'][0]}x{r['block'][1]} | {r['sparsity']:.0%} | {r['tvm_dense']:.3f} | "
                     f"{_fmt(r['tvm_tuned'])} | {r['torch_dense']:.3f} | {r['dense_tuned']:.3f} "
                     f"({r['dense_tuned_by']}) | {r['sparse']:.3f} | **{r['dense_tuned'] / r['sparse']:.2f}x** | "
                     f"{r['tvm_dense'] / r['sparse']:.2f}x | {_fmt(r['torch_csr'])} | {_fmt(r['torch_bsr'])} |")
    return "\n".join(lines)


def bench_cuda(quick: bool = False, markdown_path: str | None = None) -> None:
    """GPU: cuBLAS vs the Triton block-sparse kernel, torch sparse and 2:4 (``sparsity_gpu.py``)."""
    from benchmarks import sparsity_gpu

    sparsity_gpu.main(quick, markdown_path)


def bench_zoo(names: list[str], repeats: int, block: tuple[int, int] = (4, 4)) -> list[str]:
    """Pruned (90%, ``block``) zoo models end to end: eager, dense tilefx, pruned tilefx."""
    import torch

    import tilefx
    from benchmarks.models import ZOO
    from tilefx.passes.prune import prune_module

    lines = []
    for name in names:
        entry = ZOO[name]
        model = entry.build()
        inputs = entry.make_inputs(entry.bench_batch, bench=True)
        with torch.no_grad():
            dense = tilefx.compile(model)
            dense(*inputs)
            pruned = tilefx.compile(model, prune=0.9, prune_block=block)
            got = pruned(*inputs)
            eager_pruned = prune_module(entry.build(), 0.9, block)
            want = eager_pruned(*inputs)
            err = float((got - want).abs().max())
            t_eager = _ms(model, list(inputs), repeats)
            t_dense = _ms(dense, list(inputs), repeats)
            t_pruned = _ms(pruned, list(inputs), repeats)
            t_eager_pruned = _ms(eager_pruned, list(inputs), repeats)
        sparse = sum(ln.startswith("sparsity:") and ": sparse " in ln for ln in pruned.records[0].notes)
        lines.append(f"{name} batch {entry.bench_batch}: eager {t_eager:.3f} ms, eager on pruned "
                     f"{t_eager_pruned:.3f} ms, tilefx dense {t_dense:.3f} ms, tilefx pruned 90% "
                     f"{block[0]}x{block[1]} {t_pruned:.3f} ms ({t_dense / t_pruned:.2f}x over dense "
                     f"tilefx, {t_eager / t_pruned:.2f}x over eager); {sparse} layer(s) sparse; "
                     f"max |pruned - eager on pruned| {err:.2e}")
        print(lines[-1], flush=True)
    return lines


def bench_packing(names: list[str], repeats: int, trials: int) -> list[str]:
    """Tuned linear kernels of zoo models with their weight pre-packed in panels
    (``passes/packing.py``) vs the same tuned schedule on the row-major weight."""
    import tempfile

    import torch

    from benchmarks.models import ZOO
    from tilefx.codegen.space import is_extern
    from tilefx.autotune.tuner import TuneOptions, Tuner
    from tilefx.codegen.target import Target
    from tilefx.codegen.tvm import build_kernel, default_schedule
    from tilefx.codegen.tvm.schedules.matmul import register_n
    from tilefx.compiler.capture import capture
    from tilefx.compiler.frontend import lower_to_ir
    from tilefx.passes import PassOptions, optimize
    from tilefx.passes.packing import pack_weights

    target, lines = Target.host_cpu(), []
    for name in names:
        entry = ZOO[name]
        inputs = entry.make_inputs(entry.bench_batch, bench=True)
        graph = optimize(lower_to_ir(capture(entry.build(), tuple(inputs))).graph, PassOptions())
        chosen: dict[str, tuple] = {}
        with tempfile.TemporaryDirectory() as tmp:
            tuner = Tuner(target, TuneOptions(trials=trials, workers=1, progress=False, repeats=5,
                                              db_path=f"{tmp}/t.db"))
            try:
                for op in graph.ops:
                    if op.name != "kernel" or op.attr("kind") != "contraction":
                        continue
                    res = tuner.tune_kernel(op)
                    ok = sorted((r for r in tuner.db.records(res.workload_key, target.key())
                                 if r.ok and r.median and not is_extern(r.schedule)), key=lambda r: r.median)
                    sched = ok[0].schedule if ok else default_schedule(op, target)
                    chosen[op.attr("name")] = (sched, register_n(int(op.results[0].type.shape[-1]), sched,
                                                                 target))
            finally:
                tuner.close()
        widths = {k: bn for k, (_, bn) in chosen.items()}
        packed = pack_weights.bind(pack_factor=lambda op, w=widths: w.get(op.attr("name")))(graph)
        by_name = {op.attr("name"): op for op in packed.ops if op.name == "kernel"}
        for op in graph.ops:
            if op.attr("name") not in chosen or by_name[op.attr("name")] is op:
                continue  # not a matmul on a constant weight, or one panel (nothing to pack)
            sched, bn = chosen[op.attr("name")]
            times = []
            # the same tuned schedule; on panels its register width is the panel width already
            for g, kop, s in ((graph, op, sched),
                              (packed, by_name[op.attr("name")], sched.with_(pack_b=False, reg_n=bn))):
                consts = {c.results[0].name: torch.from_numpy(g.constants[c.attr("name")]).clone()
                          for c in g.ops if c.name == "const" and c.attr("name")}
                args = [consts[v.name] if v.name in consts else torch.randn(*v.type.shape)
                        for v in kop.inputs]
                out = torch.empty(*kop.results[0].type.shape)
                times.append(_ms(build_kernel(kop, target, schedule=s), args + [out], repeats))
            x, w = op.inputs[0].type.shape, op.inputs[1].type.shape
            lines.append(f"| {name} | {op.attr('name')} | {list(x)} @ {list(w)} | {sched} | "
                         f"{times[0]:.3f} | {times[1]:.3f} | {times[0] / times[1]:.2f}x |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="fewer cases: batch 1/16 + conv, blocks 1x1 "
                   "and 4x16, 50/80/90/95%%")
    p.add_argument("--packing", nargs="*", help="instead: tuned zoo linear kernels with packed "
                   "vs row-major weights (default mlp transformer_encoder)")
    p.add_argument("--smoke", action="store_true", help="512x512, one pattern (checks the script)")
    p.add_argument("--tune-trials", type=int, default=8, help="tuner candidates per dense shape")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--markdown", help="write the CPU table to this file")
    p.add_argument("--zoo", nargs="*", help="instead: pruned zoo models end to end "
                   "(default mlp transformer_encoder)")
    a = p.parse_args(argv)
    if a.packing is not None:
        bench_packing(a.packing or ["mlp", "transformer_encoder"], a.repeats, a.tune_trials)
        return None
    if a.target == "cuda":
        return bench_cuda(a.quick, a.markdown)
    if a.zoo is not None:
        bench_zoo(a.zoo or ["mlp", "transformer_encoder"], a.repeats)
        return None
    t0 = time.perf_counter()
    rows = bench_cpu(a.quick, a.repeats, a.tune_trials, a.smoke)
    notes = break_even(rows) + break_even(rows, "tvm_dense")
    print("\n".join(notes))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


if __name__ == "__main__":
    main()
