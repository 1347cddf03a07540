"""How many examples the differential tests draw, and the hypothesis settings they use.

The default run must stay within ~3 minutes on 2 cores (the whole suite ~10): small
fixed counts, derandomized so every CI run checks the same cases. The ``fuzz`` tests
take ``TILEFX_FUZZ_EXAMPLES`` (default 100) from a fresh seed each run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# examples per target in the default run: ~3 minutes of the suite's 10 on 2 cores
DEFAULT_EXAMPLES = {"native": 8, "avx2": 5, "generic": 5, "triton": 3}
DEFAULT_SCHEDULE_CASES = {"native": 3, "avx2": 3, "generic": 3, "triton": 1}
SCHEDULES_PER_KERNEL = 3


def fuzz_examples() -> int:
    return int(os.environ.get("TILEFX_FUZZ_EXAMPLES", "100"))


def hypothesis_settings(max_examples: int, fuzz: bool) -> settings:
    # builds take ~0.5 s: no deadline, no "too slow" health check; the default run is
    # derandomized (same cases every run) and keeps no example database (no state in CI)
    return settings(max_examples=max_examples, deadline=None, derandomize=not fuzz, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture],
                    print_blob=fuzz)
