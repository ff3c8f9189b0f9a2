"""The outbox's retention rule, for both backends' purge (sqlite/retention.py, postgres/retention.py)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def purgeable(head: Iterable[Any], older_than: int) -> list[tuple[int, str]]:
    """(seq, id) of the events a purge may take from the outbox's head, rows of (seq, id,
    created_at, dispatched) in seq order: those created before `older_than` up to the first
    that is not (the walk is along seq, not time), less the ones not yet dispatched."""
    old: list[tuple[int, str]] = []
    for seq, event_id, created_at, dispatched in head:
        if created_at >= older_than:
            break
        if dispatched:
            old.append((seq, event_id))
    return old
