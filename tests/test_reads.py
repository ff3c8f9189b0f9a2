"""The read path's rule (store/reads.py): a read made inside a snapshot reads the snapshot or
fails loudly, never silently outside it; and the point reads' per-turn transaction still reads
your writes: a point read after an acknowledged write sees it."""
from __future__ import annotations

import asyncio

import pytest

from zapbilling.store import NewMeter, SqliteStore
from zapbilling.store.reads import PointReadInSnapshot
from zapbilling.times import system_clock


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(str(tmp_path / "reads.db"))
    await s.open()
    yield s
    await s.close()


async def tenant_of(store: SqliteStore) -> int:
    _, secret = await store.create_key("acme", "test", "admin", system_clock())
    principal = await store.authenticate(secret)
    assert principal is not None
    return principal.tenant


async def new_meter(store: SqliteStore, tenant: int, name: str) -> str:
    meter = NewMeter(name=name, event_name=f"ev-{name}", aggregation="sum", currency="usd", dimensions=[], now=system_clock())
    return (await store.create_meter(tenant, meter))["id"]


async def test_a_point_read_inside_a_snapshot_fails_loudly_while_reads_see_the_snapshot(store):
    tenant = await tenant_of(store)
    first = await new_meter(store, tenant, "first")
    wanted: asyncio.Queue[str] = asyncio.Queue()

    async def outsider() -> object:  # a task started outside the snapshot
        return await store.get_meter(tenant, await wanted.get())

    other = asyncio.create_task(outsider())
    async with store.snapshot():
        assert [m["id"] for m in await store.list_meters(tenant)] == [first]  # the snapshot's moment
        second = await new_meter(store, tenant, "second")  # committed after that moment
        assert [m["id"] for m in await store.list_meters(tenant)] == [first]
        with pytest.raises(PointReadInSnapshot, match="outside the snapshot"):
            await store.get_meter(tenant, second)  # would see the newer commit
        with pytest.raises(RuntimeError):
            store._read_point("SELECT id FROM meters WHERE id = ?", (second,), fresh=True)
        # The rule is this task's: another task's point reads go on, and see the commit.
        wanted.put_nowait(second)
        assert (await other)["id"] == second
    assert (await store.get_meter(tenant, second))["id"] == second
    assert [m["id"] for m in await store.list_meters(tenant)] == [first, second]


async def test_a_point_read_after_an_acknowledged_write_sees_it_while_others_keep_the_turns_busy(store):
    """Another task makes a point read in every loop turn, so a per-turn read transaction is
    open most of the time; each write, once acknowledged, is still seen by the next point read,
    even when this task's own point read opened the turn's transaction just before writing."""
    tenant = await tenant_of(store)
    stop = asyncio.Event()

    async def busy() -> int:
        turns = 0
        while not stop.is_set():
            store._read_point("SELECT COUNT(*) FROM meters WHERE tenant = ?", (tenant,))
            turns += 1
            await asyncio.sleep(0)
        return turns

    reader = asyncio.create_task(busy())
    await asyncio.sleep(0)
    try:
        for i in range(50):
            (count,), = store._read_point("SELECT COUNT(*) FROM meters WHERE tenant = ?", (tenant,))
            assert count == i
            meter = await new_meter(store, tenant, f"m{i}")
            assert (await store.get_meter(tenant, meter))["id"] == meter
            (count,), = store._read_point("SELECT COUNT(*) FROM meters WHERE tenant = ?", (tenant,))
            assert count == i + 1
    finally:
        stop.set()
    assert await reader > 50
