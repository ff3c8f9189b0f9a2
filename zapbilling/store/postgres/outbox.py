"""The outbox on PostgreSQL (as ../sqlite/outbox.py): an event is a row of `events` written by
the transaction of the change it tells of."""
from __future__ import annotations

import json
from typing import Any

import asyncpg

from ..ids import new_id
from ..sqlite.outbox import NOTHING, Watch

__all__ = ["NOTHING", "Watch", "emit", "watch"]


async def watch(conn: asyncpg.Connection, tenant: int) -> Watch:
    row = await conn.fetchrow("SELECT alerts, spend_caps, usage_hooks FROM tenants WHERE id = $1", tenant)
    return NOTHING if row is None else Watch(*row)


async def emit(
    conn: asyncpg.Connection, tenant: int, type: str, data: dict[str, Any], now: int, subject: str | None = None
) -> str | None:
    """Record an event in the caller's transaction; its id, or None when an event of this type
    about `subject` exists already."""
    event_id = new_id("evt")
    status = await conn.execute(
        "INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (tenant, type, subject) WHERE subject IS NOT NULL DO NOTHING",
        event_id, tenant, type, json.dumps(data, separators=(",", ":")), now, subject,
    )
    return event_id if status.endswith(" 1") else None
