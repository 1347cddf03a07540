"""Pass decisions kept in the tuning database: ``DatabaseDecisionStore``.

The ``passes.decisions.DecisionStore`` that the compiler (``compiler/pass_setup.py``) hands to a pass
that measures (sparsity's ``MeasuredChooser``), so a compile in a new process
measures nothing measured before. Its rows are the ``pass_decisions`` table of
``TuningDatabase``: (kind, key, target_key) -> the pass's JSON text, the same
rows the store formerly in ``passes/sparsity.py`` (``TuningDBStore``) wrote,
so existing databases keep working.

The database is opened for each read or write that the memo below does not
answer: a handful per compile. A database that cannot be opened, read or
written is reported (``log.warning``) and treated as absent; the compile goes
on and the pass decides anew. The store never parses the text: the pass
validates what it reads back.

In-process memo: each store object remembers what it read (a miss too) and
what it wrote, so asking it again does not reopen the database. It belongs to
the object, which the caller owns: a compile session that keeps one store per
(database, target) for a session gets no database access for repeated
compiles of the same layers; a new store reads the database afresh. An
unreadable database is not remembered (the next call tries again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tilefx.storage.database import TuningDatabase
from tilefx.storage.db_connect import redact

log = logging.getLogger("tilefx.storage.decisions")


@dataclass
class DatabaseDecisionStore:
    """The decisions of pass ``kind`` on ``target_key`` in the tuning database at ``path``."""

    path: str | None  # a path or URL; None: the default ($TILEFX_TUNING_DB or the cache folder's)
    target_key: str
    kind: str = "sparsity"  # the pass whose decisions these are (the rows' ``kind``)
    _memo: dict[str, str | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def get(self, key: str) -> str | None:
        if key in self._memo:
            return self._memo[key]
        try:
            with TuningDatabase(self.path) as db:
                text = db.pass_decision(self.kind, key, self.target_key)
        except Exception as e:  # noqa: BLE001 - a cache: never fail the compile on it
            log.warning("%s: cannot read decisions from the tuning database %s (%s); "
                        "deciding anew", self.kind, self._where(), e)
            return None
        self._memo[key] = text
        return text

    def put(self, key: str, payload: str) -> None:
        self._memo[key] = payload  # this process remembers it even if the database does not
        try:
            with TuningDatabase(self.path) as db:
                db.set_pass_decision(self.kind, key, self.target_key, payload)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: cannot store a decision in the tuning database %s (%s)",
                        self.kind, self._where(), e)

    def _where(self) -> str:
        return redact(self.path) if self.path else "(default)"  # a URL's password never logged
