"""Does grouping outlier channels make simulated block quantization more accurate?

    python benchmarks/outliers.py            # transformer_encoder, gpt2_block; writes nothing

The zoo models get SYNTHETIC LLM-like outlier channels (seeded), each moved so the
float function is unchanged where the activation allows it:

- MLP hidden: 4 of the 1024 channels, rows of W_down x ALPHA, W_up/b_up rows / ALPHA
  (exact through ReLU; through GELU only approximately: the eager model with the
  outliers is the reference either way);
- attention K: 2 channels per head, Wk/bk x ALPHA and Wq/bq / ALPHA (same scores);
- attention V/O: 2 channels per head, Wv/bv / ALPHA and Wo's matching inputs x ALPHA.

Printed per model: the exactness check (max |diff| of the permuted, unquantized IR
against eager PyTorch; the permutation alone must change nothing), then, for int4 /
int8 and blocks of 16 / 32 along K, the relative L2 output error of the block-quantized
model (all contraction weights, ``passes/block_quant.py``; simulated: weights
rounded then run in float32) without and with the grouping, and the K-cache
simulation: keys (activations) block-quantized along the head dim, relative error of
the attention scores Q K^T without and with the pass's per-head key order.
Everything runs in the reference interpreter (numbers, not speed).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ALPHA = 50.0
SPECS = [(bits, block) for bits in (4, 8) for block in (16, 32)]


def _inject(model: torch.nn.Module, name: str, seed: int = 0) -> None:
    """Move a few channels' scale between two weights (see the module doc); in place."""
    rng = np.random.default_rng(seed)
    if name == "gpt2_block":
        wqkv, bqkv, wo = model.attn.qkv.weight, model.attn.qkv.bias, model.attn.proj.weight
        up, down, heads = model.mlp[0], model.mlp[2], model.attn.heads
    else:
        att = model.self_attn
        wqkv, bqkv, wo = att.in_proj_weight, att.in_proj_bias, att.out_proj.weight
        up, down, heads = model.linear1, model.linear2, att.num_heads
    d = wo.shape[0]
    hd = d // heads
    with torch.no_grad():
        hid = torch.as_tensor(rng.choice(up.weight.shape[0], 4, replace=False))
        down.weight[:, hid] *= ALPHA
        up.weight[hid] /= ALPHA
        up.bias[hid] /= ALPHA
        for h in range(heads):
            kc = torch.as_tensor(h * hd + rng.choice(hd, 2, replace=False))
            wqkv[d + kc] *= ALPHA          # K rows of the packed projection
            bqkv[d + kc] *= ALPHA
            wqkv[kc] /= ALPHA              # Q rows: the scores stay the same
            bqkv[kc] /= ALPHA
            vc = torch.as_tensor(h * hd + rng.choice(hd, 2, replace=False))
            wqkv[2 * d + vc] /= ALPHA      # V rows
            bqkv[2 * d + vc] /= ALPHA
            wo[:, vc] *= ALPHA             # Wo's inputs: the output stays the same


def _keys_and_queries(model: torch.nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q, k activations [B, L, H*D] of the eager model on ``x`` (and H)."""
    got = {}
    if name == "gpt2_block":
        mod, heads = model.attn.qkv, model.attn.heads
        hook = mod.register_forward_hook(lambda m, i, o: got.update(qkv=o))  # returns None: output kept
    else:
        att = model.self_attn
        mod, heads = att, att.num_heads
        hook = mod.register_forward_pre_hook(lambda m, args: got.update(qkv=torch.nn.functional.linear(
            args[0], att.in_proj_weight, att.in_proj_bias)))
    with torch.no_grad():
        model(x)
    hook.remove()
    q, k, _ = got["qkv"].split(got["qkv"].shape[-1] // 3, dim=-1)
    return q, k, heads


def _score_error(q: torch.Tensor, k: torch.Tensor, heads: int, spec, order: np.ndarray | None) -> float:
    from tilefx.passes.block_quant import fake_quant

    b, n, hd = k.shape
    d = hd // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3).double()
    kh = k.reshape(b, n, heads, d).permute(0, 2, 1, 3).double()
    if order is not None:  # the same channel order on q and k: the exact scores are unchanged
        idx = torch.as_tensor(order)[None, :, None, :]
        qh = torch.gather(qh, 3, idx.expand_as(qh))
        kh = torch.gather(kh, 3, idx.expand_as(kh))
    kq = torch.from_numpy(fake_quant(kh.numpy(), spec, axis=3))
    s = qh @ kh.transpose(-1, -2)
    return float((qh @ kq.transpose(-1, -2) - s).norm() / s.norm())


def run(name: str) -> list[str]:
    from benchmarks.models import ZOO
    from tilefx.compiler.capture import capture
    from tilefx.compiler.frontend import lower_to_ir
    from tilefx.ir.interpreter import run_graph
    from tilefx.passes import PassOptions, optimize
    from tilefx.passes.block_quant import BlockQuant, block_quantize
    from tilefx.passes.outliers import group_outliers, site_orders
    from tilefx.passes.permute_heads import find_heads

    entry = ZOO[name]
    model = entry.build().eval()
    _inject(model, name)
    (x,) = entry.make_inputs(batch=2, seed=1)
    with torch.no_grad():
        ref = model(x)
    g = optimize(lower_to_ir(capture(model, (x,)), name=name).graph,
                 PassOptions(fuse=False, sparsity=False))

    def err(graph) -> float:
        out = run_graph(graph, [x])[0]
        return float((out - ref).norm() / ref.norm())

    lines = [f"### {name} (synthetic outliers x{ALPHA:g}; batch 2)", ""]
    perm = group_outliers.bind(spec=BlockQuant(4, 32))(g)
    exact = float((run_graph(perm, [x])[0] - ref).abs().max())
    base = float((run_graph(g, [x])[0] - ref).abs().max())
    lines += [f"exactness: max |permuted IR - eager| = {exact:.2e} (unpermuted IR: {base:.2e}); "
              f"head sites found: {len(find_heads(g))}", "",
              "| format | output error, no grouping | with grouping | ratio | K-cache score error, "
              "no grouping | with grouping | ratio |", "|---|---|---|---|---|---|---|"]
    q, k, heads = _keys_and_queries(model, name, x)
    (site,) = find_heads(g)
    for bits, block in SPECS:
        spec = BlockQuant(bits, block)
        plain = err(block_quantize.bind(spec=spec)(g))
        grouped = err(block_quantize.bind(spec=spec)(group_outliers.bind(spec=spec)(g)))
        orders, _ = site_orders(g, g.producers(), site, spec)
        order = orders.qk if orders is not None else None
        k0, k1 = _score_error(q, k, heads, spec, None), _score_error(q, k, heads, spec, order)
        lines.append(f"| int{bits}, blocks of {block} | {plain:.4f} | {grouped:.4f} | {plain / grouped:.1f}x "
                     f"| {k0:.4f} | {k1:.4f} | {k0 / k1:.1f}x |")
    return lines + [""]


def main() -> None:
    import logging

    logging.getLogger("tilefx").setLevel(logging.ERROR)  # the per-weight warnings: not here
    for name in ("transformer_encoder", "gpt2_block"):
        print("\n".join(run(name)))


if __name__ == "__main__":
    main()
