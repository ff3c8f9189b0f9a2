"""Meters and meter events on PostgreSQL (as ../sqlite/metering.py). Aggregation happens in
SQL over the (tenant, meter, user, ts) index; events are never loaded into Python to be summed."""
from __future__ import annotations

import json

import asyncpg

from ..base import MeterEventDraft
from ..ids import new_id
from .connection import PgBase


async def insert_event(conn: asyncpg.Connection, tenant: int, e: MeterEventDraft, now: int) -> tuple[str, str]:
    """One event: (its id, "created"), or (the first event's id, "duplicate") when its
    idempotency key is taken. The partial unique index decides: a concurrent insert of the
    same key waits for the first one's commit, then does nothing, and the SELECT (a fresh
    READ COMMITTED snapshot) sees the first row."""
    event_id = new_id("evt")
    inserted = await conn.fetchval(
        "INSERT INTO meter_events (id, tenant, meter_id, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
        event_id, tenant, e.meter_id, e.user, e.value, e.timestamp, e.idempotency,
        json.dumps(e.dimensions) if e.dimensions is not None else None, now, e.ledger_id,
    )
    if inserted is not None:
        return event_id, "created"
    original: str = await conn.fetchval(
        "SELECT id FROM meter_events WHERE tenant = $1 AND idempotency_key = $2", tenant, e.idempotency
    )
    return original, "duplicate"


class MeteringQueries(PgBase):
    pass
