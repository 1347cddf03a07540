"""The tilefx model zoo: small, self-contained models that tests compile and benchmarks time.

``ZOO`` maps a name to its ``ZooModel`` recipe (see ``zoo.py``). Nothing here
downloads anything: every model is written in this folder or comes from
``torch.nn``, with weights drawn from a fixed seed.

    from benchmarks.models import ZOO
    entry = ZOO["resnet18"]
    model, inputs = entry.build(), entry.make_inputs(batch=1, seed=0)
"""

from __future__ import annotations

from benchmarks.models import gpt2, mlp, mobilenet, resnet, transformer
from benchmarks.models.zoo import ZooModel

ZOO: dict[str, ZooModel] = {
    m.name: m for m in (mlp.MODEL, resnet.MODEL, mobilenet.MODEL, transformer.MODEL, gpt2.MODEL)
}

__all__ = ["ZOO", "ZooModel"]
