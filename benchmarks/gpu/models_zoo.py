"""The architectures ``models.py`` times: real models at the batch sizes people deploy.

Every entry builds from code alone, with random weights (torchvision ``weights=None``,
transformers from a ``Config`` object, timm ``pretrained=False``): nothing is downloaded.
transformers models use ``attn_implementation="sdpa"`` (PyTorch's fused attention),
falling back to ``"eager"`` only where a model refuses sdpa (said in the row's notes), and
are wrapped so that every compiler sees one plain tensor out (``last_hidden_state`` or
``logits``) instead of a ``ModelOutput``.

BatchNorm statistics of a random-init network make no sense (mean 0, variance 1 after
layers whose outputs are far from that): MobileNetV2's logits come out near 1e-9, far
below fp16's range, and error checks become meaningless. ``calibrate_batchnorm`` sets
the running statistics from one training-mode pass over random images; the compute the
model does afterwards is unchanged.

A weight initialized to all zeros (torchvision's ViT head) is drawn at random instead, so
that outputs are not all zero.

``tiny_cnn`` and ``tiny_attn`` (plain torch, not in the default set) are for a CPU dry run
of the script's plumbing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str                # the import it needs: torchvision, transformers, timm, torch
    shape: tuple[int, ...]      # the input's shape: images NCHW or token ids (batch, seq)
    build: Callable[[list[str]], nn.Module]  # fp32 model on the current default device; appends notes
    vocab: int = 0              # token ids in [0, vocab); 0: a float image input
    default: bool = True        # in the default --models set

    @property
    def input_desc(self) -> str:
        return "x".join(map(str, self.shape)) + (" tokens" if self.vocab else "")

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def make_inputs(self, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        if self.vocab:
            return (torch.randint(0, self.vocab, self.shape, generator=g).to(device),)
        return (torch.randn(self.shape, generator=g).to(device, dtype),)


class MainOutput(nn.Module):
    """A transformers model returning one tensor (``field`` of its ModelOutput)."""

    def __init__(self, model: nn.Module, field: str, **call_kwargs: Any) -> None:
        super().__init__()
        self.model, self.field, self.call_kwargs = model, field, call_kwargs

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, **self.call_kwargs), self.field)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> int:
    """Running stats of every BatchNorm from one training-mode pass (cumulative average);
    returns how many there are. The model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            model(images)
    model.eval()
    return len(bns)


def _torchvision(name: str) -> Callable[[list[str]], nn.Module]:
    def build(notes: list[str]) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    return build


def _timm(name: str) -> Callable[[list[str]], nn.Module]:
    def build(notes: list[str]) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)
    return build


def _hf(model_cls: str, config_cls: str, field: str, model_kwargs: dict | None = None,
        call_kwargs: dict | None = None, **config: Any) -> Callable[[list[str]], nn.Module]:
    """A transformers model from ``config_cls(**config)``, sdpa attention where it is allowed."""
    def build(notes: list[str]) -> nn.Module:
        import transformers

        for attn in ("sdpa", "eager"):
            cfg = getattr(transformers, config_cls)(attn_implementation=attn, **config)
            try:
                model = getattr(transformers, model_cls)(cfg, **(model_kwargs or {}))
                break
            except ValueError as e:  # this model has no sdpa path
                if attn == "eager":
                    raise
                notes.append(f"sdpa refused ({str(e).splitlines()[0][:80]})")
        used = getattr(model.config, "_attn_implementation", attn)
        notes.append(f"{used} attention, transformers {transformers.__version__}")
        return MainOutput(model, field, **(call_kwargs or {}))
    return build


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TinyAttention(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.qkv, self.out, self.norm = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, s, d = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.norm(x + self.out(a.transpose(1, 2).reshape(b, s, d)))


_LLAMA = dict(hidden_size=2048, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4,
              intermediate_size=5632, use_cache=False)

SPECS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("resnet50", "torchvision", (32, 3, 224, 224), _torchvision("resnet50")),
    ModelSpec("mobilenet_v2", "torchvision", (32, 3, 224, 224), _torchvision("mobilenet_v2")),
    ModelSpec("convnext_tiny", "torchvision", (32, 3, 224, 224), _torchvision("convnext_tiny")),
    ModelSpec("efficientnet_b0", "torchvision", (32, 3, 224, 224), _torchvision("efficientnet_b0")),
    ModelSpec("vit_b_16", "torchvision", (16, 3, 224, 224), _torchvision("vit_b_16")),
    ModelSpec("swin_t", "torchvision", (16, 3, 224, 224), _torchvision("swin_t")),
    ModelSpec("bert_base", "transformers", (16, 256), _hf(
        "BertModel", "BertConfig", "last_hidden_state", {"add_pooling_layer": False}), vocab=30522),
    ModelSpec("gpt2", "transformers", (8, 512), _hf(
        "GPT2LMHeadModel", "GPT2Config", "logits", call_kwargs={"use_cache": False}, use_cache=False),
        vocab=50257),
    ModelSpec("llama_gqa", "transformers", (4, 512), _hf(
        "LlamaModel", "LlamaConfig", "last_hidden_state", call_kwargs={"use_cache": False}, **_LLAMA),
        vocab=32000),
    ModelSpec("t5_small_encoder", "transformers", (16, 256), _hf(
        "T5EncoderModel", "T5Config", "last_hidden_state"), vocab=32128),
    # --models all adds these
    ModelSpec("deit_small", "timm", (16, 3, 224, 224), _timm("deit_small_patch16_224"), default=False),
    ModelSpec("distilbert", "transformers", (16, 256), _hf(
        "DistilBertModel", "DistilBertConfig", "last_hidden_state"), vocab=30522, default=False),
    ModelSpec("tiny_cnn", "torch", (4, 3, 16, 16), lambda notes: TinyCNN(), default=False),
    ModelSpec("tiny_attn", "torch", (2, 16), lambda notes: TinyAttention(), vocab=100, default=False),
]}


def build(spec: ModelSpec, device: str, dtype: torch.dtype, notes: list[str],
          seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``spec``'s model in eval mode on ``device`` in ``dtype`` (BatchNorm calibrated in fp32
    first), and its benchmark inputs."""
    torch.manual_seed(seed)
    with torch.device(device):  # initialize on the device: seconds saved on large models
        model = spec.build(notes)
    zeros = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any()]
    for m in zeros:  # torchvision's ViT starts its head at zero: every output would be 0
        nn.init.normal_(m.weight, std=0.02)
    if zeros:
        notes.append(f"{len(zeros)} zero-initialized weight(s) drawn at random instead")
    if not spec.vocab:
        n = calibrate_batchnorm(model, torch.randn(8, *spec.shape[1:], device=device))
        if n:
            notes.append(f"{n} BatchNorm stats calibrated")
    model = model.eval().to(device=device, dtype=dtype)
    return model, spec.make_inputs(device, dtype, seed)
