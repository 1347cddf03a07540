"""Default schedules picked by the learned cost model, for kernels nobody tuned.

A template's fixed default (one tile shape for every matmul, say) is right for
the shapes it was written for and wrong for the rest: a 128x256 tile on a
skinny M leaves most of the GPU idle. When the backend asks for it
(``Backend.default_from_cost_model``) or the user does
(``TILEFX_DEFAULT_SCHEDULE=cost_model``), an untuned kernel gets the schedule
the cost model ranks first among the template's default and a fixed sample of
its space, so untuned code is already shaped to its problem.

Only schedules of the same implementation as the fixed default are candidates
(same ``impl`` knob): the model was trained on generated code and has no opinion
of a library call (cuBLAS, cuDNN), so where the template default chose the
library, that stays. Nothing is measured here; the build check still runs the
picked kernel against the reference, and the compiler falls back to the fixed
default if the pick is rejected. Deterministic: the sample is seeded.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping

from tilefx.codegen.schedule import Schedule
from tilefx.codegen.space import is_extern
from tilefx.cost_model import default_model

log = logging.getLogger("tilefx.cost_model")

SAMPLE = 384       # schedules ranked per kernel (~0.1-0.2 ms each): well under a second
MARGIN = 0.05      # a pick must beat the fixed default's score by this much (scores are ranks)


def candidates(space: Any, default: Schedule, sample: int = SAMPLE, seed: int = 0) -> list[Schedule]:
    """The default first, then every schedule of the space (a small one) or a seeded sample,
    limited to the default's ``impl``; no duplicates, no extern call."""
    impl = default.get("impl")
    if space.size <= sample:
        pool = list(space.enumerate())
    else:
        rng = random.Random(seed)
        pool = [space.sample(rng) for _ in range(sample)]
    out, seen = [default], {str(default)}
    for s in pool:
        if is_extern(s) or str(s) in seen:
            continue
        if impl is not None and s.get("impl") != impl:
            continue
        seen.add(str(s))
        out.append(s)
    return out


def predicted_best(kernel_op: Any, target: Any, bindings: Mapping[Any, int] | None = None,
                   *, sample: int = SAMPLE) -> Schedule | None:
    """The schedule the cost model ranks first for ``kernel_op``, or None to keep the fixed
    default (no model, the default is a library call, nothing beats it by ``MARGIN``)."""
    backend = target.backend()
    default = backend.default_schedule(kernel_op, bindings)
    if is_extern(default):
        return None
    model = default_model(target, bindings)
    if model is None:
        return None
    pool = candidates(backend.space(kernel_op, bindings), default, sample)
    if len(pool) < 2:
        return None
    try:
        scores = model.predict(kernel_op, pool, target)
    except Exception as e:  # noqa: BLE001 - a feature the model cannot compute: keep the default
        log.debug("cost-model default for %s not picked: %s", kernel_op.attr("name"), e)
        return None
    best = max(range(len(pool)), key=lambda i: (scores[i], -i))
    if best == 0 or scores[best] < scores[0] + MARGIN:
        return None
    return pool[best]
