"""How long the outbox keeps what it sent, on SQLite: events older than the retention horizon
are deleted with their deliveries and their attempt log, oldest first, by the expiry sweep.

The walk is along the primary key (the outbox's order), not a time index: an index on
`created_at` would be one more b-tree every event insert pays for (recordUsage with an endpoint
subscribed to usage.recorded writes one event per call) only to serve a sweep once a minute.
The oldest events come first in seq order, so a batch is the head of the table up to the first
event still inside the horizon. An event whose delivery is still pending (a redelivery queued
near the horizon) or that is not yet dispatched stays; the ones after it are purged, so it never
blocks the purge unless a whole batch is made of such events, which then waits for the next
sweep. The events_purged row (migration 10) keeps how far the purge went, in the same
transaction, so a missing event can be told from a purged one."""
from __future__ import annotations

import sqlite3

from ..retention import purgeable
from .connection import SqliteBase


class RetentionQueries(SqliteBase):
    async def purge_events(self, older_than: int, limit: int = 500) -> int:
        return await self._run(_purge_events, self._events_horizon.clamp(older_than), limit)


def _purge_events(conn: sqlite3.Connection, older_than: int, limit: int) -> int:
    head = conn.execute("SELECT seq, id, created_at, dispatched FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
    old = purgeable(head, older_than)
    if not old:
        return 0
    ids = [event_id for _, event_id in old]
    marks = ",".join("?" * len(ids))
    busy = {r[0] for r in conn.execute(
        f"SELECT DISTINCT event_id FROM deliveries WHERE event_id IN ({marks}) AND status = 'pending'", ids)}
    gone = [(seq, event_id) for seq, event_id in old if event_id not in busy]
    if not gone:
        return 0
    ids = [event_id for _, event_id in gone]
    marks = ",".join("?" * len(ids))
    conn.execute(
        f"DELETE FROM delivery_attempts WHERE delivery IN (SELECT seq FROM deliveries WHERE event_id IN ({marks}))", ids)
    conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", [seq for seq, _ in gone])
    conn.execute(
        "INSERT INTO events_purged VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET purged_before = MAX(purged_before, excluded.purged_before)",
        (older_than,),
    )
    return len(gone)
