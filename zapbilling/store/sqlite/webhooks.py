"""Webhook endpoints and the events API on SQLite: the endpoints' rows (with
tenants.usage_hooks kept in the same transaction), the outbox read newest first, an event's
delivery log, and redeliveries. The delivery workers' own queries are in deliveries.py."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Sequence

from ..base import INT64_MAX, USAGE_RECORDED, DeliveryEntry, EndpointRow, EventRow, Idempotency, NewEndpoint, Row, subscribes
from ..ids import new_id
from ..refusals import Missing, QuotaReached
from ..rows import json_text
from .connection import SqliteBase
from .outbox import event_data

_ENDPOINT = "id, url, events, description, status, created_at"
_RAW_EVENT = "id, type, created_at, data"


def _event(table: str) -> str:
    """event_row's columns of `table` (an alias, or `events`), its data as read (outbox.event_data)."""
    return f"{table}.id, {table}.type, {table}.created_at, {event_data(table + '.')}"


_EVENT = _event("events")


def endpoint_row(r: Sequence[Any]) -> EndpointRow:
    return {"id": r[0], "url": r[1], "events": json.loads(r[2]), "description": r[3], "status": r[4], "createdAt": r[5]}


def event_row(r: Sequence[Any]) -> EventRow:
    return {"id": r[0], "type": r[1], "createdAt": r[2], "data": json.loads(r[3])}


def delivery_log(rows: Sequence[Sequence[Any]]) -> list[DeliveryEntry]:
    """Rows of LOG (delivery seq, endpoint, attempt, status, response status, error, at) as the
    log, oldest first: by time, then delivery, then attempt (a pending entry's `at` is its due
    time, so it follows the attempts before it)."""
    ordered = sorted(rows, key=lambda r: (r[6], r[0], r[2]))
    return [
        {"endpointId": r[1], "attempt": r[2], "status": r[3], "responseStatus": r[4], "error": r[5], "at": r[6]}
        for r in ordered
    ]


LOG = (
    "SELECT d.seq, d.endpoint_id, a.attempt, a.status, a.response_status, a.error, a.at"
    " FROM deliveries d JOIN delivery_attempts a ON a.delivery = d.seq WHERE d.tenant = :tenant AND d.event_id = :id"
    " UNION ALL"
    " SELECT d.seq, d.endpoint_id, d.attempts + 1, 'pending', NULL, NULL, d.due_at"
    " FROM deliveries d WHERE d.tenant = :tenant AND d.event_id = :id AND d.status = 'pending'"
)
"""An event's delivery log: every attempt made, and the next one of each pending delivery."""


class WebhookQueries(SqliteBase):
    async def create_endpoint(
        self, tenant: int, endpoint: NewEndpoint, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> Row:
        return await self._write(tenant, idempotency, endpoint.now, _create_endpoint, tenant, new_id("we"), endpoint, quota)

    async def list_endpoints(self, tenant: int) -> list[EndpointRow]:
        rows = await self._read(
            f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE tenant = ? AND deleted_at IS NULL ORDER BY seq", (tenant,)
        )
        return [endpoint_row(r) for r in rows]

    async def delete_endpoint(self, tenant: int, endpoint_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_endpoint, tenant, endpoint_id, now)

    async def rotate_endpoint_secret(
        self, tenant: int, endpoint_id: str, secret: str, old_until: int, now: int, idempotency: Idempotency | None = None
    ) -> Row:
        return await self._write(tenant, idempotency, now, _rotate, tenant, endpoint_id, secret, old_until)

    async def events_page(
        self, tenant: int, type: str | None, limit: int, starting_after: str | None, user: str | None = None
    ) -> tuple[list[EventRow], bool]:
        where = "tenant = :tenant"
        params: dict[str, Any] = {"tenant": tenant, "type": type, "after": starting_after, "limit": limit + 1, "user": user,
                                  "seq": INT64_MAX}
        if starting_after is not None:
            found = await self._read("SELECT seq FROM events WHERE tenant = :tenant AND id = :after", params)
            if not found:
                raise Missing("event")
            where += " AND seq < :seq"
            params["seq"] = found[0][0]
        if user is not None:
            sql = _user_events(where, type)
        elif type is not None:
            sql = f"SELECT {_EVENT} FROM events WHERE {where} AND type = :type ORDER BY seq DESC LIMIT :limit"
        else:
            found = await self._read(_TYPES, params)
            if not found:
                return [], False
            # the page as of the types' read: an event of a type first written after it would
            # be missing from a page that holds younger events
            params["seq"] = min(params["seq"], found[0][1] + 1)
            params |= {f"t{i}": t for i, (t, _) in enumerate(found)}
            sql = _all_events(len(found))
        rows = await self._read(sql, params)
        return [event_row(r) for r in rows[:limit]], len(rows) > limit

    async def get_event(self, tenant: int, event_id: str) -> tuple[EventRow, list[DeliveryEntry]] | None:
        params = {"tenant": tenant, "id": event_id}
        async with self.snapshot(tenant):
            rows = await self._read(f"SELECT {_EVENT} FROM events WHERE tenant = :tenant AND id = :id", params)
            if not rows:
                return None
            log = await self._read(LOG, params)
        return event_row(rows[0]), delivery_log(log)

    async def redeliver(
        self, tenant: int, event_id: str, endpoint_id: str | None, now: int, idempotency: Idempotency | None = None
    ) -> int:
        return await self._write(tenant, idempotency, now, _redeliver, tenant, event_id, endpoint_id, now)


_EVENT_E = ", ".join(f"e.{c}" for c in _RAW_EVENT.split(", "))

_USAGE_ROW = (
    "(SELECT l.seq FROM events e CROSS JOIN ledger l ON l.id = e.subject"
    f" WHERE e.tenant = :tenant AND e.type = '{USAGE_RECORDED}'{{}} ORDER BY e.seq {{}} LIMIT 1)"
)
_USAGE_EVENTS = (
    f"SELECT e.seq, {_EVENT_E} FROM ledger l CROSS JOIN events e"
    f" ON e.id = 'evt_' || substr(l.id, 4) AND e.tenant = :tenant AND e.type = '{USAGE_RECORDED}'"
    " WHERE l.tenant = :tenant AND l.user_id = :user AND l.evented = 1"
    f" AND l.seq BETWEEN {_USAGE_ROW.format('', 'ASC')} AND {_USAGE_ROW.format(' AND e.seq < :seq', 'DESC')}"
    " ORDER BY l.seq DESC LIMIT :limit"
)
"""The user's usage.recorded events before event seq :seq, newest first: a range of the
ledger_usage_evented index (their rows, migration 12), each row's event found by its id (the
row's digits, ids.row_event_id; migration 15 left these events out of events_subject).
Ledger seq and event seq order these events alike (SQLite writes one transaction at a time, and
each writes the row, then its event), so the range's ends are the ledger rows of two events found
by events_tenant_type: the tenant's oldest usage.recorded event (rows older than it had their
events purged, and are not walked) and its newest before :seq."""


_TYPES = (
    "WITH RECURSIVE t(type) AS (SELECT min(type) FROM events WHERE tenant = :tenant"
    " UNION ALL SELECT (SELECT min(type) FROM events WHERE tenant = :tenant AND type > t.type) FROM t WHERE t.type IS NOT NULL)"
    " SELECT type, (SELECT max(seq) FROM events) FROM t WHERE type IS NOT NULL"
)
"""The types of the tenant's events, one seek of events_tenant_type (tenant, type, seq) each,
and the newest event's seq at that moment (the listing that follows reads no further)."""


def _rendered(rows: str) -> str:
    """event_row's columns of `rows` (a query of seq and _RAW_EVENT, a page's worth), newest
    first: the data made here, after the page is cut, for its rows alone."""
    return f"SELECT {_event('p')} FROM ({rows}) p ORDER BY p.seq DESC"


def _all_events(types: int) -> str:
    """The tenant's events of every type (parameters :t0 ...), newest first before :seq: one
    range of events_tenant_type per type, merged (MERGE (UNION ALL) in the plan, each range read
    in its index's order, no sort), so a page costs its rows and a seek per type whatever the
    tenant holds. Why not an index on (tenant, seq) of its own, as there was until migration 14:
    every event paid for an entry in it, to serve this one listing, which the types' ranges serve
    too (recordUsage with an endpoint on usage.recorded, sender stopped: 681k -> 666k instructions
    per request, 623k without an endpoint; bench.instructions --webhook)."""
    ranges = " UNION ALL ".join(
        f"SELECT seq, {_RAW_EVENT} FROM events WHERE tenant = :tenant AND type = :t{i} AND seq < :seq" for i in range(types)
    )
    return _rendered(f"{ranges} ORDER BY 1 DESC LIMIT :limit")


def _user_events(where: str, type: str | None) -> str:
    """listEvents' userId filter: the user's usage.recorded events through the ledger, and the
    rest through events_user (tenant, user_id, seq), merged newest first. With a type, only the
    one walk that can hold it."""
    if type == USAGE_RECORDED:
        return _rendered(_USAGE_EVENTS)
    others = f"FROM events WHERE {where} AND user_id = :user"
    if type is not None:  # unary +: filtered in the user's range, not by events_tenant_type
        return f"SELECT {_EVENT} {others} AND +type = :type ORDER BY seq DESC LIMIT :limit"
    return _rendered(f"SELECT * FROM (SELECT seq, {_RAW_EVENT} {others} ORDER BY seq DESC LIMIT :limit)"
                     f" UNION ALL SELECT * FROM ({_USAGE_EVENTS}) ORDER BY 1 DESC LIMIT :limit")


def _create_endpoint(conn: sqlite3.Connection, tenant: int, endpoint_id: str, e: NewEndpoint, quota: int | None) -> Row:
    """Counted (webhook_endpoints_tenant: at most `quota` index entries), checked and inserted in
    one job on the writer: two creates at the bound cannot both see room for one more."""
    if quota is not None:
        (held,) = conn.execute("SELECT COUNT(*) FROM webhook_endpoints WHERE tenant = ? AND deleted_at IS NULL", (tenant,)).fetchone()
        if held >= quota:
            raise QuotaReached("webhook endpoint", quota)
    row = conn.execute(
        f"INSERT INTO webhook_endpoints (id, tenant, url, events, description, secret, created_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_ENDPOINT}",
        (endpoint_id, tenant, e.url, json_text(e.events), e.description, e.secret, e.now),
    ).fetchone()
    if USAGE_RECORDED in e.events:
        conn.execute("UPDATE tenants SET usage_hooks = usage_hooks + 1 WHERE id = ?", (tenant,))
    return dict(endpoint_row(row)) | {"secret": e.secret}


def _delete_endpoint(conn: sqlite3.Connection, tenant: int, endpoint_id: str, now: int) -> None:
    row = conn.execute(
        "UPDATE webhook_endpoints SET deleted_at = ? WHERE tenant = ? AND id = ? AND deleted_at IS NULL RETURNING status, events",
        (now, tenant, endpoint_id),
    ).fetchone()
    if row is None:
        raise Missing("webhook endpoint")
    if row[0] == "enabled" and USAGE_RECORDED in json.loads(row[1]):
        conn.execute("UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = ?", (tenant,))


def _rotate(conn: sqlite3.Connection, tenant: int, endpoint_id: str, secret: str, old_until: int) -> Row:
    if conn.execute(
        "UPDATE webhook_endpoints SET old_secret = secret, old_secret_until = ?, secret = ?"
        " WHERE tenant = ? AND id = ? AND deleted_at IS NULL RETURNING id",
        (old_until, secret, tenant, endpoint_id),
    ).fetchone() is None:
        raise Missing("webhook endpoint")
    return {"id": endpoint_id, "secret": secret}


def _redeliver(conn: sqlite3.Connection, tenant: int, event_id: str, endpoint_id: str | None, now: int) -> int:
    found = conn.execute("SELECT type FROM events WHERE tenant = ? AND id = ?", (tenant, event_id)).fetchone()
    if found is None:
        raise Missing("event")
    if endpoint_id is not None:
        named = conn.execute(
            "SELECT status FROM webhook_endpoints WHERE tenant = ? AND id = ? AND deleted_at IS NULL", (tenant, endpoint_id)
        ).fetchone()
        if named is None:
            raise Missing("webhook endpoint")
        targets = [endpoint_id] if named[0] == "enabled" else []
    else:
        rows = conn.execute(
            "SELECT id, events FROM webhook_endpoints WHERE tenant = ? AND deleted_at IS NULL AND status = 'enabled' ORDER BY seq",
            (tenant,),
        ).fetchall()
        targets = [r[0] for r in rows if subscribes(json.loads(r[1]), found[0])]
    conn.executemany(
        "INSERT INTO deliveries (tenant, event_id, endpoint_id, due_at, created_at) VALUES (?, ?, ?, ?, ?)",
        [(tenant, event_id, t, now, now) for t in targets],
    )
    return len(targets)
