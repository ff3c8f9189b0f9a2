"""Webhook endpoints and the events API on PostgreSQL (as ../sqlite/webhooks.py). Concurrent
deletes of one endpoint, or a delete beside the sender disabling it, change its row under the
row's lock with a condition on its state (deleted_at IS NULL, status), so exactly one of them
moves tenants.usage_hooks."""
from __future__ import annotations

import json
from typing import Any

import asyncpg

from ..base import USAGE_RECORDED, DeliveryEntry, EndpointRow, EventRow, Idempotency, NewEndpoint, Row, subscribes
from ..ids import new_id
from ..refusals import Missing, QuotaReached
from ..sqlite.webhooks import delivery_log, endpoint_row, event_row
from ..rows import json_text
from .connection import PgBase

_ENDPOINT = "id, url, events, description, status, created_at"
_EVENT = "id, type, created_at, data"

LOG = (
    "SELECT d.seq, d.endpoint_id, a.attempt, a.status, a.response_status, a.error, a.at"
    " FROM deliveries d JOIN delivery_attempts a ON a.delivery = d.seq WHERE d.tenant = $1 AND d.event_id = $2"
    " UNION ALL"
    " SELECT d.seq, d.endpoint_id, d.attempts + 1, 'pending', NULL, NULL, d.due_at"
    " FROM deliveries d WHERE d.tenant = $1 AND d.event_id = $2 AND d.status = 'pending'"
)


class WebhookQueries(PgBase):
    async def create_endpoint(
        self, tenant: int, endpoint: NewEndpoint, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> Row:
        return await self._write(tenant, idempotency, endpoint.now, _create_endpoint, tenant, new_id("we"), endpoint, quota)  # type: ignore[no-any-return]

    async def list_endpoints(self, tenant: int) -> list[EndpointRow]:
        rows = await self._read(
            f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE tenant = $1 AND deleted_at IS NULL ORDER BY seq", tenant
        )
        return [endpoint_row(r) for r in rows]

    async def delete_endpoint(self, tenant: int, endpoint_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_endpoint, tenant, endpoint_id, now)

    async def rotate_endpoint_secret(
        self, tenant: int, endpoint_id: str, secret: str, old_until: int, now: int, idempotency: Idempotency | None = None
    ) -> Row:
        return await self._write(tenant, idempotency, now, _rotate, tenant, endpoint_id, secret, old_until)  # type: ignore[no-any-return]

    async def events_page(
        self, tenant: int, type: str | None, limit: int, starting_after: str | None, user: str | None = None
    ) -> tuple[list[EventRow], bool]:
        where = "tenant = $1"
        params: list[Any] = [tenant]
        if starting_after is not None:
            found = await self._read("SELECT seq FROM events WHERE tenant = $1 AND id = $2", tenant, starting_after)
            if not found:
                raise Missing("event")
            params.append(found[0][0])
            where += f" AND seq < ${len(params)}"
        if user is not None:  # events_user (tenant, user_id, seq)
            params.append(user)
            where += f" AND user_id = ${len(params)}"
        if type is not None:
            params.append(type)
            where += f" AND type = ${len(params)}"
        params.append(limit + 1)
        rows = await self._read(f"SELECT {_EVENT} FROM events WHERE {where} ORDER BY seq DESC LIMIT ${len(params)}", *params)
        return [event_row(r) for r in rows[:limit]], len(rows) > limit

    async def get_event(self, tenant: int, event_id: str) -> tuple[EventRow, list[DeliveryEntry]] | None:
        async with self.snapshot(tenant):
            rows = await self._read(f"SELECT {_EVENT} FROM events WHERE tenant = $1 AND id = $2", tenant, event_id)
            if not rows:
                return None
            log = await self._read(LOG, tenant, event_id)
        return event_row(rows[0]), delivery_log(log)

    async def redeliver(
        self, tenant: int, event_id: str, endpoint_id: str | None, now: int, idempotency: Idempotency | None = None
    ) -> int:
        return await self._write(tenant, idempotency, now, _redeliver, tenant, event_id, endpoint_id, now)  # type: ignore[no-any-return]


async def _create_endpoint(conn: asyncpg.Connection, tenant: int, endpoint_id: str, e: NewEndpoint, quota: int | None) -> Row:
    """The tenant's row locked first: creates at the bound on several servers count one after
    the other, so they cannot both see room for one more."""
    if quota is not None:
        await conn.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", tenant)
        held = await conn.fetchval("SELECT COUNT(*) FROM webhook_endpoints WHERE tenant = $1 AND deleted_at IS NULL", tenant)
        if held >= quota:
            raise QuotaReached("webhook endpoint", quota)
    row = await conn.fetchrow(
        f"INSERT INTO webhook_endpoints (id, tenant, url, events, description, secret, created_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_ENDPOINT}",
        endpoint_id, tenant, e.url, json_text(e.events), e.description, e.secret, e.now,
    )
    if USAGE_RECORDED in e.events:
        await conn.execute("UPDATE tenants SET usage_hooks = usage_hooks + 1 WHERE id = $1", tenant)
    return dict(endpoint_row(row)) | {"secret": e.secret}


async def _delete_endpoint(conn: asyncpg.Connection, tenant: int, endpoint_id: str, now: int) -> None:
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET deleted_at = $1 WHERE tenant = $2 AND id = $3 AND deleted_at IS NULL RETURNING status, events",
        now, tenant, endpoint_id,
    )
    if row is None:
        raise Missing("webhook endpoint")
    if row[0] == "enabled" and USAGE_RECORDED in json.loads(row[1]):
        await conn.execute("UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = $1", tenant)


async def _rotate(conn: asyncpg.Connection, tenant: int, endpoint_id: str, secret: str, old_until: int) -> Row:
    if await conn.fetchval(
        "UPDATE webhook_endpoints SET old_secret = secret, old_secret_until = $1, secret = $2"
        " WHERE tenant = $3 AND id = $4 AND deleted_at IS NULL RETURNING id",
        old_until, secret, tenant, endpoint_id,
    ) is None:
        raise Missing("webhook endpoint")
    return {"id": endpoint_id, "secret": secret}


async def _redeliver(conn: asyncpg.Connection, tenant: int, event_id: str, endpoint_id: str | None, now: int) -> int:
    # FOR SHARE: a purge of this event (retention.py) either waits for this delivery or is seen as gone.
    type = await conn.fetchval("SELECT type FROM events WHERE tenant = $1 AND id = $2 FOR SHARE", tenant, event_id)
    if type is None:
        raise Missing("event")
    if endpoint_id is not None:
        status = await conn.fetchval(
            "SELECT status FROM webhook_endpoints WHERE tenant = $1 AND id = $2 AND deleted_at IS NULL", tenant, endpoint_id
        )
        if status is None:
            raise Missing("webhook endpoint")
        targets = [endpoint_id] if status == "enabled" else []
    else:
        rows = await conn.fetch(
            "SELECT id, events FROM webhook_endpoints WHERE tenant = $1 AND deleted_at IS NULL AND status = 'enabled' ORDER BY seq",
            tenant,
        )
        targets = [r[0] for r in rows if subscribes(json.loads(r[1]), type)]
    if targets:
        await conn.execute(
            "INSERT INTO deliveries (tenant, event_id, endpoint_id, due_at, created_at) SELECT $1, $2, t, $3, $3 FROM unnest($4::text[]) AS t",
            tenant, event_id, now, targets,
        )
    return len(targets)
