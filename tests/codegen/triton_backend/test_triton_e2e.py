"""The whole cuda path on CPU tensors: ``tilefx.compile(model, target="cuda")`` runs every
kernel as generated Triton under TRITON_INTERPRET=1, in a process where ``import tvm``
fails (a GPU machine may have no TVM installed)."""

import textwrap

from tests.cuda_subprocess import run_script

SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.modules["tvm"] = None        # any "import tvm" now raises ImportError
    sys.modules["tvm_ffi"] = None
    import torch
    import torch.nn.functional as F
    from torch import nn
    import tilefx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.proj = nn.Linear(8, 48)
            self.norm = nn.LayerNorm(16)
            self.out = nn.Linear(16, 10)

        def forward(self, img):
            h = F.max_pool2d(F.relu(self.bn(self.conv(img))), 2)           # [B, 8, 5, 5]
            seq = h.flatten(2).transpose(1, 2)                              # [B, 25, 8]
            q, k, v = self.proj(seq).reshape(-1, 25, 3, 16).permute(2, 0, 1, 3)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)    # [B, 25, 16]
            y = self.norm(a + q)
            return torch.log_softmax(self.out(y).mean(1), -1)

    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 11, 11)
    cm = tilefx.compile(model, target="cuda")
    with torch.no_grad():
        y, ref = cm(x), model(x)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    record = cm.records[-1] if hasattr(cm, "records") and cm.records else None
    report = cm.report()
    print(report)
    assert "fallbacks: 0" in report, report
    assert "interpreter" not in report, report
    assert "attention" in report and "(triton" in report, report
    assert not [m for m in sys.modules if m.startswith("tvm") and sys.modules[m] is not None]
    print("OK")
''')


def test_compile_for_cuda_without_tvm(tmp_path):
    run_script(SCRIPT, tmp_path, timeout=300)
    # every kernel was generated Triton, written to the cache dir
    assert list((tmp_path / "triton").glob("*.py"))
