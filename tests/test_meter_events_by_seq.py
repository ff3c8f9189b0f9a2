"""Migration 16: a meter event names its meter by the meter's seq, not its id (the summary
index compares integers; sqlite/0016 measures why). Events written before it keep every column
and get their meter's seq, the constraints still hold, and the store's reads by meter id answer
for them as before, each tenant's meter ids only within that tenant. The reads after it on
both backends are the metering, series, alert and export tests, which name meters by id."""
from __future__ import annotations

import sqlite3

import asyncpg
import pytest

import pg
from old_schema import postgres_before, sqlite_before
from zapbilling.store import SqliteStore
from zapbilling.store.migrations import scripts

_MINE = next(v for v, n, _ in scripts() if n == "meter_events_by_meter_seq")

_METERS = [  # (id, tenant, event_name): two tenants; meters.seq follows this order, 1..3
    ("mtr_a", 1, "tokens"),
    ("mtr_b", 2, "tokens"),
    ("mtr_c", 1, "images"),
]
_EVENTS = [  # (id, tenant, meter id, user, value, ts, idempotency key, dimensions, ledger id)
    ("evt_1", 1, "mtr_a", "alice", 5, 10, None, None, None),
    ("evt_2", 1, "mtr_c", "alice", 7, 11, "k1", '{"model":"x"}', None),
    ("evt_3", 2, "mtr_b", "alice", 11, 12, "k1", None, None),  # the same key in another tenant
    ("evt_4", 1, "mtr_a", "bob", 13, 13, None, None, "tx_1"),
    ("evt_5", 1, "mtr_a", "alice", 17, 14, "k2", None, None),
]
_SEQ = {m: i for i, (m, _, _) in enumerate(_METERS, 1)}
_AFTER = [(n, e[0], e[1], _SEQ[e[2]], *e[3:8], 100 + n, e[8]) for n, e in enumerate(_EVENTS, 1)]
"""The rows after the migration: seq, id, tenant, meter's seq, the rest, created_at."""

_INSERT_METER = ("INSERT INTO meters (id, tenant, name, event_name, aggregation, currency, dimensions, created_at)"
                 " VALUES (?, ?, ?, ?, 'sum', 'usd', '[]', 1)")
_INSERT_EVENT = ("INSERT INTO meter_events (id, tenant, meter_id, user_id, value, ts, idempotency_key, dimensions,"
                 " created_at, ledger_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")  # seq: 1, 2, ... in this order
_ROWS = ("SELECT seq, id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id"
         " FROM meter_events ORDER BY seq")


def _old_sqlite(path) -> sqlite3.Connection:
    conn = sqlite_before(path, _MINE)
    for m, tenant, event_name in _METERS:
        conn.execute(_INSERT_METER, (m, tenant, m, event_name))
    for n, e in enumerate(_EVENTS, 1):
        conn.execute(_INSERT_EVENT, (*e[:8], 100 + n, e[8]))
    return conn


@pytest.mark.sqlite_only("the SQLite migration script")
async def test_the_sqlite_migration_names_each_event_s_meter_by_its_seq_and_keeps_the_rest(tmp_path):
    from zapbilling.store.migrations import migrate

    path = tmp_path / "old.db"
    conn = _old_sqlite(path)
    assert migrate(conn) == [v for v, _, _ in scripts() if v >= _MINE]
    assert conn.execute(_ROWS).fetchall() == _AFTER
    assert "meter_id" not in {r[1] for r in conn.execute("PRAGMA table_info(meter_events)")}
    indexes = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'meter_events' AND sql IS NOT NULL")}
    assert indexes == {"meter_events_summary", "meter_events_dedupe", "meter_events_by_ledger"}
    for broken in [  # each constraint of the table as it was: a taken key, a linked withdrawal, a taken id
        "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, created_at) VALUES ('evt_9', 1, 1, 'x', 1, 1, 'k1', 1)",
        "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, ledger_id, created_at) VALUES ('evt_9', 1, 1, 'x', 1, 1, 'tx_1', 1)",
        "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, created_at) VALUES ('evt_1', 1, 1, 'x', 1, 1, 1)",
        "INSERT INTO meter_events (id, tenant, user_id, value, ts, created_at) VALUES ('evt_9', 1, 'x', 1, 1, 1)",
    ]:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(broken)
    conn.close()

    store = SqliteStore(str(path))
    await store.open()
    try:  # the store's reads by meter id find the migrated events, and only in the meter's tenant
        assert await store.aggregate_events(1, "mtr_a", "sum", None, None, None) == (5 + 13 + 17, 3)
        assert await store.aggregate_events(1, "mtr_a", "sum", "alice", 11, None) == (17, 1)
        assert await store.aggregate_events(1, "mtr_c", "last", "alice", None, None) == (7, 1)
        assert await store.aggregate_events(2, "mtr_b", "count", None, None, None) == (1, 1)
        assert await store.aggregate_events(2, "mtr_a", "sum", None, None, None) == (0, 0)
        assert await store.aggregate_windows(1, "mtr_a", "sum", "alice", 0, 100, 0, 12) == [(0, 5, 1), (1, 17, 1)]
        assert [(u.meter_id, u.value, u.events) for u in await store.meter_usage(1, "alice", None, None)] == [
            ("mtr_a", 22, 2), ("mtr_c", 7, 1)]
    finally:
        await store.close()


@pytest.mark.sqlite_only("the SQLite migration script")
def test_the_sqlite_migration_stops_whole_on_an_event_whose_meter_is_gone(tmp_path):
    """Meters are never deleted, so every event's meter exists; were one missing, the migration
    stops and leaves the table as it was rather than drop the event."""
    from zapbilling.store.migrations import migrate

    conn = _old_sqlite(tmp_path / "old.db")
    conn.execute("DELETE FROM meters WHERE id = 'mtr_c'")
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL constraint failed: meter_events_v16.meter"):
        migrate(conn)
    assert max(v for v, in conn.execute("SELECT version FROM schema_migrations")) == _MINE - 1
    assert len(conn.execute("SELECT meter_id FROM meter_events").fetchall()) == len(_EVENTS)


@pytest.mark.postgres_only("the PostgreSQL migration script")
async def test_the_postgres_migration_names_each_event_s_meter_by_its_seq_and_keeps_the_rest():
    from zapbilling.store.postgres.connection import migrate

    url = pg.admin().new_database(migrated=False)
    conn = await asyncpg.connect(url)
    try:
        await postgres_before(conn, _MINE)
        for m, tenant, event_name in _METERS:
            await conn.execute(pg.dollar_params(_INSERT_METER), m, tenant, m, event_name)
        for n, e in enumerate(_EVENTS, 1):
            await conn.execute(pg.dollar_params(_INSERT_EVENT), *e[:8], 100 + n, e[8])
        assert await migrate(conn) == [v for v, _, _ in scripts("postgres") if v >= _MINE]
        assert [tuple(r) for r in await conn.fetch(_ROWS)] == _AFTER
        columns = {r[0] for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'meter_events'")}
        assert "meter_id" not in columns and "meter" in columns
        (index,) = [r[0] for r in await conn.fetch("SELECT indexdef FROM pg_indexes WHERE indexname = 'meter_events_summary'")]
        assert index.endswith("(tenant, meter, user_id, ts)")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, created_at)"
                               " VALUES ('evt_9', 1, 1, 'x', 1, 1, 'k1', 1)")
        # ledger_append (migration 11, redefined here) writes the usage meter event with the meter's seq
        await conn.execute("INSERT INTO tenants (id, org, mode) VALUES (1, 'acme', 'test')")
        await conn.execute("INSERT INTO balances (tenant, user_id, currency, balance) VALUES (1, 'alice', 'usd', 100)")
        code = await conn.fetchval(
            "SELECT ledger_append(NULL, 'tx_9', 1, 'alice', 'usd', 'withdraw', 3, -3, 'api-usage', '', NULL, 50, NULL, 'k',"
            " NULL, 'evt_9', NULL, 'images', NULL, NULL, NULL, false, false)")
        assert code == 0
        assert tuple(await conn.fetchrow("SELECT meter, value, ledger_id FROM meter_events WHERE id = 'evt_9'")) == (3, 3, "tx_9")
    finally:
        await conn.close()
        pg.admin().drop(url)
