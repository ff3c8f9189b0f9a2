"""The delivery workers' queries on PostgreSQL (as ../sqlite/deliveries.py, whose rules these
are). Several servers dispatch and claim at once here, each in its own transaction: the rows a
dispatch or a claim reads are locked `FOR UPDATE SKIP LOCKED`, so two servers never take the
same event or the same delivery, and neither waits for the other (it takes the next rows
instead). The lease written in the claim's transaction keeps the delivery from other servers
after that transaction, while the attempt is made."""
from __future__ import annotations

import json

import asyncpg

from ..base import USAGE_RECORDED, AttemptOutcome, DeliveryJob, Disabling, EndpointRow, subscribes
from ..sqlite.deliveries import SCAN, Endpoints, full, jobs_of, pick
from . import outbox
from .connection import PgBase

_DUE = "status = 'pending' AND due_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)"


class DeliveryQueries(PgBase):
    async def deliveries_waiting(self, now: int) -> tuple[bool, bool]:
        rows = await self._read(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE dispatched = 0), EXISTS (SELECT 1 FROM deliveries WHERE {_DUE})", now
        )
        return bool(rows[0][0]), bool(rows[0][1])

    async def dispatch_events(self, now: int, limit: int = 500) -> int:
        return await self._tx(_dispatch, now, limit)

    async def claim_deliveries(
        self, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]
    ) -> list[DeliveryJob]:
        return await self._tx(_claim, now, lease_until, limit, per_endpoint, busy)

    async def record_attempt(self, outcome: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
        return await self._tx(_record, outcome, disable_after, disabling)


async def _dispatch(conn: asyncpg.Connection, now: int, limit: int) -> int:
    events = await conn.fetch(
        "SELECT seq, id, tenant, type FROM events WHERE dispatched = 0 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED", limit
    )
    if not events:
        return 0
    tenants = sorted({e["tenant"] for e in events})
    endpoints: dict[int, list[tuple[str, list[str]]]] = {t: [] for t in tenants}
    for r in await conn.fetch(
        "SELECT tenant, id, events FROM webhook_endpoints WHERE tenant = ANY($1::bigint[]) AND status = 'enabled'"
        " AND deleted_at IS NULL ORDER BY seq", tenants,
    ):
        endpoints[r["tenant"]].append((r["id"], json.loads(r["events"])))
    rows = [(e["tenant"], e["id"], endpoint, now, now)
            for e in events for endpoint, names in endpoints[e["tenant"]] if subscribes(names, e["type"])]
    if rows:
        await conn.copy_records_to_table(
            "deliveries", records=rows, columns=["tenant", "event_id", "endpoint_id", "due_at", "created_at"]
        )
    await conn.execute("UPDATE events SET dispatched = 1 WHERE seq = ANY($1::bigint[])", [e["seq"] for e in events])
    return len(events)


_CANDIDATES = """
WITH due AS (
  SELECT seq, endpoint_id, due_at FROM deliveries
  WHERE status = 'pending' AND due_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
    AND NOT (endpoint_id = ANY($2::text[]))
  ORDER BY due_at, seq LIMIT $3
  FOR UPDATE SKIP LOCKED
)
SELECT due.seq, due.endpoint_id, w.url, w.secret, w.old_secret, w.old_secret_until,
       w.status = 'enabled' AND w.deleted_at IS NULL
FROM due JOIN webhook_endpoints w ON w.id = due.endpoint_id
ORDER BY due.due_at, due.seq
"""
"""The due deliveries a claim looks at with their endpoints (as on SQLite, ../sqlite/deliveries.py,
the events only for the deliveries taken: _LEASE reads them as it leases, in one round trip)."""

_LEASE = """
UPDATE deliveries d SET lease_until = $1 FROM events e
WHERE d.seq = ANY($2::bigint[]) AND e.id = d.event_id
RETURNING d.seq, d.tenant, d.attempts, e.id, e.type, e.created_at, e.data
"""


async def _claim(conn: asyncpg.Connection, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]) -> list[DeliveryJob]:
    rows = await conn.fetch(_CANDIDATES, now, full(busy, per_endpoint), limit * SCAN)
    if not rows:
        return []
    endpoints: Endpoints = {r[1]: (r[2], r[3], r[4], r[5], bool(r[6])) for r in rows}
    taken, gone = pick([(r[0], r[1]) for r in rows], endpoints, limit, per_endpoint, busy)
    if gone:
        await conn.execute("UPDATE deliveries SET status = 'failed', lease_until = NULL WHERE seq = ANY($1::bigint[])", gone)
    if not taken:
        return []
    leased = await conn.fetch(_LEASE, lease_until, [seq for seq, _ in taken])
    return jobs_of(taken, endpoints, [tuple(r) for r in leased], now)


async def _record(conn: asyncpg.Connection, o: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
    status = "succeeded" if o.succeeded else "failed"
    logged = await conn.fetchval(
        "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, error, at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (delivery, attempt) DO NOTHING RETURNING 1",
        o.delivery, o.attempt, status, o.response_status, o.error, o.at,
    )
    if logged is None:
        return False  # recorded by the sender that took over after our lease ran out
    final = "pending" if not o.succeeded and o.next_due is not None else status
    endpoint_id = await conn.fetchval(
        "UPDATE deliveries SET attempts = $1, status = $2, due_at = COALESCE($3, due_at), lease_until = NULL"
        " WHERE seq = $4 AND attempts = $5 RETURNING endpoint_id",
        o.attempt, final, o.next_due, o.delivery, o.attempt - 1,
    )
    if endpoint_id is None or final == "pending":
        return False
    if final == "succeeded":
        await conn.execute("UPDATE webhook_endpoints SET failed_in_row = 0 WHERE id = $1 AND failed_in_row <> 0", endpoint_id)
        return False
    found = await conn.fetchrow(
        "UPDATE webhook_endpoints SET failed_in_row = failed_in_row + 1 WHERE id = $1"
        " RETURNING failed_in_row, status = 'enabled' AND deleted_at IS NULL, tenant, id, url, events, description, created_at",
        endpoint_id,
    )
    failed, enabled, tenant, *shown = tuple(found)
    if failed < disable_after or not enabled:
        return False
    await conn.execute("UPDATE webhook_endpoints SET status = 'disabled' WHERE id = $1", endpoint_id)
    endpoint: EndpointRow = {"id": shown[0], "url": shown[1], "events": json.loads(shown[2]), "description": shown[3],
                             "status": "disabled", "createdAt": shown[4]}
    if USAGE_RECORDED in endpoint["events"]:
        await conn.execute("UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = $1", tenant)
    type, data = disabling(endpoint)
    await outbox.emit(conn, tenant, type, data, o.at)
    return True
