"""The PostgreSQL store's pool under exhaustion: a call waits for a pooled connection up to
ACQUIRE_TIMEOUT, then fails (the Caller answers it as the contract's internal error), and
nothing of it is written; once a connection is free again, calls go through."""
from __future__ import annotations

import asyncio
import time

import pytest

import pg
from zapbilling.billing.ledger import LOTS
from zapbilling.store.base import NewEntry
from zapbilling.store.postgres import PostgresStore, connection
from zapbilling.store.postgres.pool import Lease

pytestmark = pytest.mark.postgres_only("the PostgreSQL store's pool")


async def test_a_call_waits_a_bounded_time_for_an_exhausted_pool_then_fails_writing_nothing(db_path, clock, monkeypatch):
    monkeypatch.setattr(connection, "ACQUIRE_TIMEOUT", 0.5)
    store = PostgresStore(db_path, pool_size=2)
    await store.open()
    try:
        _, secret = await store.create_key("acme", "live", "admin", clock())
        principal = await store.authenticate(secret)
        assert principal is not None
        entry = NewEntry(type="deposit", user="acme/u", currency="usd", amount=100, now=clock(), key_id=principal.key_id, lots=LOTS)
        release = asyncio.Event()
        holding = 0

        async def hold_a_connection() -> None:
            nonlocal holding
            async with Lease(store.pool):
                holding += 1
                await release.wait()

        hogs = [asyncio.create_task(hold_a_connection()) for _ in range(2)]
        while holding < 2:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await store.append_ledger_row(principal.tenant, entry)
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 5, waited
        release.set()
        await asyncio.gather(*hogs)
        with pg.read_only(db_path) as con:
            assert con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 0
        row = await store.append_ledger_row(principal.tenant, entry)
        assert row["amount"] == 100
    finally:
        await store.close()
