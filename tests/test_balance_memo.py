"""getBalance's answers kept in the SQLite point reads' memo (store/sqlite/reads.py `_memo`,
ledger.py `balance`): an answer kept is always the one a read would give. A write by this
server, by another server process on the same file or by any other connection shows at the
next request; credit that expires and holds that lapse show at their time with no write at
all, and the clock moving back is answered as of its own time; the memo stays bounded."""
from __future__ import annotations

import sqlite3

import pytest
from aiohttp import ClientSession

from conftest import Api, ok
from procs import ServerProcess, create_key
from zapbilling.store.sqlite import reads
from zapbilling.times import system_clock

pytestmark = pytest.mark.sqlite_only("the SQLite point reads' memo")


async def balance(api: Api, user: str = "u") -> dict:
    return await ok(api, "getBalance", {"user": user, "currency": "usd"})


async def test_a_write_shows_at_once_with_the_answer_kept(api):
    for i in range(1, 6):
        assert (await balance(api))["balance"] == (i - 1) * 100
        assert (await balance(api))["balance"] == (i - 1) * 100  # kept, asked again
        await ok(api, "deposit", {"user": "u", "amount": 100})
    assert (await balance(api))["balance"] == 500


async def test_a_write_through_another_connection_shows_at_once(api, db_path):
    """A commit the server's own writer never saw (SQL beside it, as another process's writer)."""
    await ok(api, "deposit", {"user": "u", "amount": 100})
    for i in range(5):
        assert (await balance(api))["balance"] == 100 + i
        assert (await balance(api))["balance"] == 100 + i
        con = sqlite3.connect(db_path, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 10000")
            con.execute("UPDATE balances SET balance = balance + 1 WHERE user_id = 'u'")
        finally:
            con.close()


async def test_another_server_process_write_shows_at_once(tmp_path):
    """Two `zapbilling serve` processes on one file, as with --workers: each reads the other's
    writes from the very next request, with the reading server's answer kept in between."""
    db = str(tmp_path / "two.db")
    key = create_key(db, "acme")
    servers = [ServerProcess(db, tmp_path).start() for _ in range(2)]
    try:
        for s in servers:
            await s.wait_ready()
        async with ClientSession() as session:
            a, b = (Api(session, s.base, key, "zap-msgpack") for s in servers)
            expected = 0
            for i in range(20):
                reader, writer = (a, b) if i % 2 else (b, a)
                assert (await balance(reader))["balance"] == expected
                assert (await balance(reader))["balance"] == expected
                await ok(writer, "deposit", {"user": "u", "amount": 7})
                expected += 7
                assert (await balance(reader))["balance"] == expected
    finally:
        for s in servers:
            s.stop()


async def test_credit_expiring_and_holds_lapsing_show_at_their_time_without_a_write(api, clock):
    await ok(api, "deposit", {"user": "u", "amount": 1_000})
    await ok(api, "deposit", {"user": "u", "amount": 300, "expiresIn": 1})  # a day
    await ok(api, "createHold", {"user": "u", "amount": 200, "expiresIn": 60})
    for _ in range(2):
        assert await balance(api) == {"user": "u", "currency": "usd", "balance": 1_300, "holds": 200, "available": 1_100}
    clock.advance(seconds=61)  # the hold lapsed; the sweep runs hourly in these tests: no write
    for _ in range(2):
        assert await balance(api) == {"user": "u", "currency": "usd", "balance": 1_300, "holds": 0, "available": 1_300}
    clock.advance(days=1)  # the 300 expired
    for _ in range(2):
        assert await balance(api) == {"user": "u", "currency": "usd", "balance": 1_000, "holds": 0, "available": 1_000}
    clock.now -= 86_400 * 1_000_000  # the clock back before the expiry: answered as of then
    assert (await balance(api))["balance"] == 1_300


async def test_the_memo_stays_bounded(sqlite_store, monkeypatch):
    monkeypatch.setattr(reads, "MEMO_ANSWERS", 50)
    _, secret = await sqlite_store.create_key("acme", "test", "admin", system_clock())
    principal = await sqlite_store.authenticate(secret)
    assert principal is not None
    now = system_clock()
    for i in range(120):
        assert await sqlite_store.balance(principal.tenant, f"u{i}", "usd", now) == (0, 0)
        assert len(sqlite_store._memo_answers) <= 50
    assert len(sqlite_store._memo_answers) == 120 % 50


async def test_inside_a_snapshot_the_kept_answer_is_refused_as_a_point_read_is(sqlite_store):
    from zapbilling.store.sqlite.reads import PointReadInSnapshot

    _, secret = await sqlite_store.create_key("acme", "test", "admin", system_clock())
    principal = await sqlite_store.authenticate(secret)
    assert principal is not None
    now = system_clock()
    assert await sqlite_store.balance(principal.tenant, "u", "usd", now) == (0, 0)  # kept
    async with sqlite_store.snapshot():
        with pytest.raises(PointReadInSnapshot):
            await sqlite_store.balance(principal.tenant, "u", "usd", now)
