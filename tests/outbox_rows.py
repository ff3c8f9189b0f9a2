"""Rows of the events outbox and its delivery log written straight through a running server's
store, on its own connection and in one transaction (the writer thread on SQLite, a pooled
connection on PostgreSQL), for the tests of the events API: what the events' and the sender's
code write is tested where they are built; here the API that reads it is."""
from __future__ import annotations

from typing import Any

import pg
from conftest import BACKEND
from zapbilling.store.base import Store


async def sql(store: Store, text: str, *params: Any) -> list[Any]:
    """Run one statement (`?` placeholders) as a write of its own; its rows."""
    if BACKEND == "sqlite":
        return await store._run(lambda conn: conn.execute(text, params).fetchall())  # type: ignore[attr-defined, no-any-return]
    return await store._tx(lambda conn: conn.fetch(pg.dollar_params(text), *params))  # type: ignore[attr-defined, no-any-return]


async def emit(store: Store, tenant: int, type: str, data: Any, now: int, *, dispatched: bool = True) -> str:
    """An event written by the store's own outbox.emit, as a change's transaction writes it;
    `dispatched`: marked so in the same transaction, so that no dispatcher makes deliveries of
    it behind the test's back (its deliveries are then the test's own)."""
    if BACKEND == "sqlite":
        from zapbilling.store.sqlite import outbox

        def job(conn: Any) -> str:
            event_id = outbox.emit(conn, tenant, type, data, now)
            assert event_id is not None
            if dispatched:
                conn.execute("UPDATE events SET dispatched = 1 WHERE id = ?", (event_id,))
            return event_id

        return await store._run(job)  # type: ignore[attr-defined, no-any-return]
    from zapbilling.store.postgres import outbox as pg_outbox

    async def pg_job(conn: Any) -> str:
        event_id = await pg_outbox.emit(conn, tenant, type, data, now)
        assert event_id is not None
        if dispatched:
            await conn.execute("UPDATE events SET dispatched = 1 WHERE id = $1", event_id)
        return event_id

    return await store._tx(pg_job)  # type: ignore[attr-defined, no-any-return]


async def delivery(store: Store, tenant: int, event_id: str, endpoint_id: str, *, status: str, attempts: list[tuple[str, int | None, str | None, int]],
                   due_at: int, created_at: int) -> int:
    """A delivery of the event to the endpoint with its attempts [(status, response status,
    error, at)], as the sender leaves them; its seq."""
    (seq,), = await sql(
        store,
        "INSERT INTO deliveries (tenant, event_id, endpoint_id, attempts, status, due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        tenant, event_id, endpoint_id, len(attempts), status, due_at, created_at,
    )
    for n, (outcome, response, error, at) in enumerate(attempts, start=1):
        await sql(store, "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, error, at) VALUES (?, ?, ?, ?, ?, ?)",
                  seq, n, outcome, response, error, at)
    return int(seq)
