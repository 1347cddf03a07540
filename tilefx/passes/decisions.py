"""Where a pass keeps a measured decision: the ``DecisionStore`` interface.

A pass that measures something costly (sparsity's ``MeasuredChooser`` times a
dense and a sparse kernel per layer) keeps the outcome under a key naming what
it depends on, so that a later compile does not measure it again. The pass
sees only this interface; whoever builds the pipeline hands it a store:

- ``tilefx.storage.decisions.DatabaseDecisionStore``: rows of the tuning
  database's ``pass_decisions`` table, kept across processes (what the
  compiler hands in). The database sits above this floor, so no pass
  imports it;
- ``MemoryDecisionStore`` (here): a dict, for tests and for a process that
  keeps decisions without a database.

A store maps a key to text and never reads the text: its format is the pass's
own (sparsity: ``SparseDecision.to_json``), and the pass validates what it
reads back, treating a row it cannot use as absent. A store is made for one
pass and one target (the database rows carry both), so keys need not repeat
them. A store that cannot read or write reports it and answers as if the row
were absent: a decision store never fails a compile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class DecisionStore(Protocol):
    """Decisions of one pass on one target, by key (see the module docstring)."""

    def get(self, key: str) -> str | None:
        """The text ``put`` stored under ``key``, or None (never stored, or unreadable)."""
        ...

    def put(self, key: str, payload: str) -> None:
        """Store (or replace) the text of the decision for ``key``."""
        ...


@dataclass
class MemoryDecisionStore:
    """A ``DecisionStore`` in a dict: lives as long as the object (the caller's)."""

    rows: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        return self.rows.get(key)

    def put(self, key: str, payload: str) -> None:
        self.rows[key] = payload
