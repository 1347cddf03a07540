"""Compile a small MLP with tilefx, check it against PyTorch, and compare their speed.

    python examples/mlp.py

``build()`` is also what the CLI loads:

    tilefx inspect examples/mlp.py:build --input 64x1024:float32
"""

from __future__ import annotations

import os
import statistics
import time

# TVM pins its worker threads to cores by default, which fights with PyTorch's
# own pool on small machines; set before tilefx imports TVM.
os.environ.setdefault("TVM_BIND_THREADS", "0")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import tilefx  # noqa: E402

BATCH, DIM, HIDDEN = 64, 1024, 4096


class MLP(nn.Module):
    """The feed-forward half of a transformer layer: Linear - GELU - Linear - LayerNorm."""

    def __init__(self, dim: int = DIM, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))


def build() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()


def median_ms(fn, x: torch.Tensor, warmup: int = 3, repeats: int = 20) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    model = build()
    x = torch.randn(BATCH, DIM)

    t = time.perf_counter()
    compiled = tilefx.compile(model, target="cpu")
    with torch.no_grad():
        out = compiled(x)  # the first call may finish compiling (kernels for this input shape)
        compile_s = time.perf_counter() - t
        ref = model(x)
        # A fresh input: the compiled module must not just replay its first result.
        x2 = torch.randn(BATCH, DIM)
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-3, atol=1e-4)
        eager_ms = median_ms(model, x)
        tilefx_ms = median_ms(compiled, x)

    print(f"MLP {DIM}->{HIDDEN}->{DIM} + LayerNorm, batch {BATCH}, fp32, {torch.get_num_threads()} threads")
    print(f"  matches PyTorch (rtol 1e-3, atol 1e-4); compiled in {compile_s:.1f} s")
    print(f"  eager  {eager_ms:8.3f} ms")
    print(f"  tilefx {tilefx_ms:8.3f} ms   ({eager_ms / tilefx_ms:.2f}x eager)")
    print()
    print(compiled.report())


if __name__ == "__main__":
    main()
