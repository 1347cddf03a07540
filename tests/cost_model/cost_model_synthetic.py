"""A small synthetic tuning database for cost-model tests.

Matmul workloads of a few shapes, random schedules of the matmul template,
and fake latencies from one consistent formula of the knobs (register tile,
packing, parallelism) plus 3% noise: a model that learns the formula ranks
held-out shapes well, a random one does not.
"""

from __future__ import annotations

import math
import random

from tilefx.storage.database import TuningDatabase
from tilefx.ir.functional_hash import workload_key
from tilefx.codegen.space import SearchSpace
from tilefx.codegen.target import Target
from tilefx.ir import DType, TensorType
from tilefx.ir.builder import kernel_op
from tilefx.ir.printer import print_graph

TARGET = Target.host_cpu()
SHAPES = [(32, 64, 64), (64, 32, 128), (48, 64, 32), (64, 64, 64), (32, 128, 32), (96, 32, 64),
          (16, 64, 128), (64, 96, 48)]


def matmul(m: int, k: int, n: int):
    f32 = lambda *s: TensorType(DType.float32, s)  # noqa: E731
    return kernel_op("contraction", [f32(m, k), f32(k, n)], lambda b, x, w: b.op("matmul", x, w),
                     f"mm{m}x{k}x{n}")


def fake_seconds(m: int, k: int, n: int, s, rng: random.Random) -> float:
    eff = (s["reg_m"] * s["reg_n"]) / (s["reg_m"] + s["reg_n"]) / 8.0
    eff *= 1.5 if s["pack_b"] else 1.0
    eff *= 1.8 if s["parallel"] else 1.0
    eff *= 1.0 + 0.1 * math.log2(s["unroll_k"])
    return 2.0 * m * k * n / (1e9 * eff) * (1.0 + 0.03 * rng.random())


def make_db(path, shapes=SHAPES, per_workload: int = 32, seed: int = 0) -> TuningDatabase:
    rng = random.Random(seed)
    db = TuningDatabase(path)
    db.add_target(TARGET.key(), TARGET.to_json())
    for shape in shapes:
        op = matmul(*shape)
        key = workload_key(op, None)
        db.add_workload(key, print_graph(op.body), f"fh-{key}")
        space = SearchSpace.for_kernel(op, TARGET)
        seen = set()
        while len(seen) < per_workload:
            s = space.sample(rng)
            if s in seen:
                continue
            seen.add(s)
            cid = db.add_candidate(key, TARGET.key(), s.to_json(), f"fp-{len(seen)}-{key[:8]}")
            db.add_measurement(cid, [fake_seconds(*shape, s, rng)], "ok")
    return db
