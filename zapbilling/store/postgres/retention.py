"""How long the outbox keeps what it sent, on PostgreSQL: as store/sqlite/retention.py (the
same walk along the outbox's order, the same events kept), in one transaction.

With several servers, a redeliverEvent of an event at the horizon could race the purge: the
purge locks the batch's old events (FOR UPDATE) before it reads their pending deliveries, and
redeliver reads its event FOR SHARE, so either the redelivery commits first and the purge sees
its pending delivery (and keeps the event), or the purge commits first and the redelivery finds
no event (404)."""
from __future__ import annotations

import asyncpg

from ..retention import purgeable
from .connection import PgBase, affected


class RetentionQueries(PgBase):
    async def purge_events(self, older_than: int, limit: int = 500) -> int:
        return await self._tx(_purge_events, self._events_horizon.clamp(older_than), limit)


async def _purge_events(conn: asyncpg.Connection, older_than: int, limit: int) -> int:
    head = await conn.fetch("SELECT seq, id, created_at, dispatched FROM events ORDER BY seq LIMIT $1", limit)
    old = purgeable(head, older_than)
    if not old:
        return 0
    # Locked only now, and only these: the head's younger events are the sender's to mark dispatched.
    locked = await conn.fetch("SELECT seq, id FROM events WHERE seq = ANY($1::bigint[]) FOR UPDATE", [seq for seq, _ in old])
    old = sorted((r[0], r[1]) for r in locked)
    busy = {r[0] for r in await conn.fetch(
        "SELECT DISTINCT event_id FROM deliveries WHERE event_id = ANY($1::text[]) AND status = 'pending'",
        [event_id for _, event_id in old],
    )}
    gone = [(seq, event_id) for seq, event_id in old if event_id not in busy]
    if not gone:
        return 0
    ids = [event_id for _, event_id in gone]
    await conn.execute(
        "DELETE FROM delivery_attempts WHERE delivery IN (SELECT seq FROM deliveries WHERE event_id = ANY($1::text[]))", ids)
    await conn.execute("DELETE FROM deliveries WHERE event_id = ANY($1::text[])", ids)
    gone_n = affected(await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", [seq for seq, _ in gone]))
    await conn.execute(
        "INSERT INTO events_purged VALUES (1, $1) ON CONFLICT (one) DO UPDATE SET purged_before = GREATEST(events_purged.purged_before, excluded.purged_before)",
        older_than,
    )
    return gone_n
