"""Budget and counting for the differential tests.

The default run (``pytest -q``) draws a small fixed number of examples per target
(``DEFAULT_EXAMPLES``, derandomized: every CI run checks the same cases). Tests marked
``fuzz`` (deselected by default; ``pytest -m fuzz tests/differential``) draw
``TILEFX_FUZZ_EXAMPLES`` examples (default 100) from a fresh random seed each run and
print what they checked per target at the end. ``benchmarks/fuzz.py`` does the same
without stopping at the first failure.
"""

from __future__ import annotations

import pytest

from tests.differential.harness import Stats

_STATS = pytest.StashKey[Stats]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATS] = Stats()


@pytest.fixture(scope="session")
def diff_stats(request: pytest.FixtureRequest) -> Stats:
    return request.config.stash[_STATS]


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    # every run says what it checked (one small table): CI's log shows the counts too
    stats = config.stash.get(_STATS, None)
    if stats and stats.counts:
        terminalreporter.write_line(stats.summary())  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # addopts' "-m 'not fuzz'" is replaced by any other -m (say -m 'not slow'): the long
    # run must still be asked for by name
    if "fuzz" in (config.getoption("markexpr", "") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("fuzz") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("fuzz")])
        items[:] = keep
