"""The delivery workers' queries on SQLite (the sender: zapbilling/events/sender.py): dispatching
the outbox into deliveries, leasing due deliveries, recording attempts and disabling an endpoint
whose deliveries keep failing.

Every step that writes is one job on the writer, that is one `BEGIN IMMEDIATE` transaction:
SQLite lets one writer at a time hold the file, across processes too, so a dispatch (read the
undispatched events, insert their deliveries, mark them) or a claim (read the due deliveries,
lease them) cannot interleave with another process's on the same file (`serve --workers N`):
each event is dispatched once and each lease is taken by one sender. The lease itself (a
conditional `lease_until`) is what keeps a second sender away while the first is sending,
outside any transaction."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..base import USAGE_RECORDED, AttemptOutcome, DeliveryJob, Disabling, EndpointRow, subscribes
from . import outbox
from .connection import SqliteBase

_DUE = "status = 'pending' AND due_at <= :now AND (lease_until IS NULL OR lease_until <= :now)"
"""A delivery a sender may take now: pending, due, and not leased (or its lease ran out)."""


class DeliveryQueries(SqliteBase):
    async def deliveries_waiting(self, now: int) -> tuple[bool, bool]:
        rows = await self._read(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE dispatched = 0), EXISTS (SELECT 1 FROM deliveries WHERE {_DUE})",
            {"now": now},
        )
        return bool(rows[0][0]), bool(rows[0][1])

    async def dispatch_events(self, now: int, limit: int = 500) -> int:
        return await self._run(_dispatch, now, limit)

    async def claim_deliveries(
        self, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]
    ) -> list[DeliveryJob]:
        return await self._run(_claim, now, lease_until, limit, per_endpoint, busy)

    async def record_attempt(self, outcome: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
        return await self._run(_record, outcome, disable_after, disabling)


def _dispatch(conn: sqlite3.Connection, now: int, limit: int) -> int:
    events = conn.execute("SELECT seq, id, tenant, type FROM events WHERE dispatched = 0 ORDER BY seq LIMIT ?", (limit,)).fetchall()
    if not events:
        return 0
    endpoints: dict[int, list[tuple[str, list[str]]]] = {}
    for tenant in {e[2] for e in events}:
        endpoints[tenant] = [
            (r[0], json.loads(r[1])) for r in conn.execute(
                "SELECT id, events FROM webhook_endpoints WHERE tenant = ? AND status = 'enabled' AND deleted_at IS NULL ORDER BY seq",
                (tenant,),
            )
        ]
    conn.executemany(
        "INSERT INTO deliveries (tenant, event_id, endpoint_id, due_at, created_at) VALUES (?, ?, ?, ?, ?)",
        [(tenant, event_id, endpoint, now, now)
         for _, event_id, tenant, type in events
         for endpoint, names in endpoints[tenant] if subscribes(names, type)],
    )
    conn.executemany("UPDATE events SET dispatched = 1 WHERE seq = ?", [(e[0],) for e in events])
    return len(events)


_CANDIDATES = """
SELECT d.seq, d.tenant, d.attempts, d.endpoint_id, w.url, w.secret, w.old_secret, w.old_secret_until,
       w.status = 'enabled' AND w.deleted_at IS NULL, e.id, e.type, e.created_at, e.data
FROM deliveries d
JOIN webhook_endpoints w ON w.id = d.endpoint_id
JOIN events e ON e.id = d.event_id
WHERE d.status = 'pending' AND d.due_at <= :now AND (d.lease_until IS NULL OR d.lease_until <= :now)
  AND d.endpoint_id NOT IN (SELECT value FROM json_each(:busy))
ORDER BY d.due_at, d.seq
LIMIT :scan
"""


def full(busy: dict[str, int], per_endpoint: int) -> list[str]:
    """The endpoints that may have no more attempts under way now."""
    return [endpoint for endpoint, n in busy.items() if n >= per_endpoint]


def pick(rows: list[Any], now: int, limit: int, per_endpoint: int, busy: dict[str, int]) -> tuple[list[DeliveryJob], list[int]]:
    """Of the candidate rows (as _CANDIDATES, oldest due first): the attempts to make now, at
    most `per_endpoint` per endpoint with those under way (`busy`) and `limit` in all, and the
    deliveries whose endpoint is gone (deleted or disabled since), which fail without an
    attempt. Shared by both backends."""
    jobs: list[DeliveryJob] = []
    gone: list[int] = []
    taken = dict(busy)
    for seq, tenant, attempts, endpoint, url, secret, old, old_until, enabled, event_id, type, created_at, data in rows:
        if not enabled:
            gone.append(seq)
            continue
        if len(jobs) >= limit or taken.get(endpoint, 0) >= per_endpoint:
            continue
        taken[endpoint] = taken.get(endpoint, 0) + 1
        secrets = (secret, old) if old is not None and old_until is not None and old_until > now else (secret,)
        jobs.append(DeliveryJob(seq, tenant, attempts + 1, endpoint, url, secrets, event_id, type, created_at, data))
    return jobs, gone


SCAN = 4
"""Candidates read per claim, as a multiple of `limit`: enough that one endpoint's backlog of due
deliveries (taken at most `per_endpoint` at a time) leaves room for the other endpoints'."""


def _claim(conn: sqlite3.Connection, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]) -> list[DeliveryJob]:
    rows = conn.execute(_CANDIDATES, {"now": now, "busy": json.dumps(full(busy, per_endpoint)), "scan": limit * SCAN}).fetchall()
    jobs, gone = pick(rows, now, limit, per_endpoint, busy)
    conn.executemany("UPDATE deliveries SET lease_until = ? WHERE seq = ?", [(lease_until, j.delivery) for j in jobs])
    conn.executemany("UPDATE deliveries SET status = 'failed', lease_until = NULL WHERE seq = ?", [(seq,) for seq in gone])
    return jobs


def _record(conn: sqlite3.Connection, o: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
    status = "succeeded" if o.succeeded else "failed"
    logged = conn.execute(
        "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, error, at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (delivery, attempt) DO NOTHING",
        (o.delivery, o.attempt, status, o.response_status, o.error, o.at),
    ).rowcount
    if not logged:
        return False  # recorded by the sender that took over after our lease ran out
    final = "pending" if not o.succeeded and o.next_due is not None else status
    row = conn.execute(
        "UPDATE deliveries SET attempts = ?, status = ?, due_at = COALESCE(?, due_at), lease_until = NULL"
        " WHERE seq = ? AND attempts = ? RETURNING endpoint_id",
        (o.attempt, final, o.next_due, o.delivery, o.attempt - 1),
    ).fetchone()
    if row is None or final == "pending":
        return False
    if final == "succeeded":
        conn.execute("UPDATE webhook_endpoints SET failed_in_row = 0 WHERE id = ? AND failed_in_row <> 0", (row[0],))
        return False
    found = conn.execute(
        "UPDATE webhook_endpoints SET failed_in_row = failed_in_row + 1 WHERE id = ?"
        " RETURNING failed_in_row, status = 'enabled' AND deleted_at IS NULL, tenant, id, url, events, description, created_at",
        (row[0],),
    ).fetchone()
    failed, enabled, tenant, *shown = found
    if failed < disable_after or not enabled:
        return False
    conn.execute("UPDATE webhook_endpoints SET status = 'disabled' WHERE id = ?", (row[0],))
    endpoint = _disabled_row(*shown)
    if USAGE_RECORDED in endpoint["events"]:
        conn.execute("UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = ?", (tenant,))
    type, data = disabling(endpoint)
    outbox.emit(conn, tenant, type, data, o.at)
    return True


def _disabled_row(id: str, url: str, events: str, description: str, created_at: int) -> EndpointRow:
    return {"id": id, "url": url, "events": json.loads(events), "description": description, "status": "disabled", "createdAt": created_at}
