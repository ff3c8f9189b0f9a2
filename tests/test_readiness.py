"""`GET /readyz`: 200 when the database answers and its migrations are current, 503 with the
reason otherwise (contract: Operations endpoints); `/healthz` never touches the database."""
from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import ClientSession

import pg
from procs import ServerProcess, create_key
from zapbilling.store.migrations import scripts


async def test_readyz_answers_ok_with_no_key_when_the_database_is_current(api):
    status, body = await api.with_key(None).rest("GET", "/readyz")
    assert (status, body) == (200, {"ok": True})


async def test_readyz_says_why_when_the_schema_is_not_this_servers(api, db_path):
    latest = len(scripts())
    if pg.is_url(db_path):
        pg.admin().run(_execute(db_path, f"INSERT INTO schema_migrations VALUES ({latest + 1}, 'future', 0)"))
    else:
        import sqlite3

        con = sqlite3.connect(db_path)
        con.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (latest + 1,))
        con.commit()
        con.close()
    status, body = await api.with_key(None).rest("GET", "/readyz")
    assert status == 503 and body["ok"] is False, body
    assert body["reason"] == f"the database's schema is at version {latest + 1}, this server's is {latest}"
    status, body = await api.with_key(None).rest("GET", "/healthz")
    assert (status, body) == (200, {"ok": True})


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.postgres_only("stops the database server")
async def test_readyz_is_503_while_postgresql_is_down_and_200_again_after(tmp_path):
    cluster = pg.Cluster.own()
    try:
        url = cluster.database_url("postgres")
        key = create_key(url, "acme", "live")
        server = await ServerProcess(url, tmp_path).start_ready()
        try:
            async with ClientSession() as s:
                async with s.get(server.base + "/readyz") as r:
                    assert (r.status, await r.json()) == (200, {"ok": True})
                cluster.pg_ctl("stop", "-m", "fast")
                async with s.get(server.base + "/readyz") as r:
                    body = await r.json()
                    assert r.status == 503 and body["ok"] is False and body["reason"].startswith("the database"), body
                async with s.get(server.base + "/healthz") as r:
                    assert r.status == 200
                auth = {"Authorization": f"Bearer {key}"}
                t0 = asyncio.get_running_loop().time()
                async with s.get(server.base + "/api/v1/billing/balance?user=u&currency=usd", headers=auth) as r:
                    assert r.status == 500, await r.text()  # the contract's internal error, at once
                    assert (await r.json())["error"]["code"] == "internal_error"
                assert asyncio.get_running_loop().time() - t0 < 5
                cluster.pg_ctl("start")
                for _ in range(100):
                    async with s.get(server.base + "/readyz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.05)
                assert r.status == 200
                async with s.get(server.base + "/api/v1/billing/balance?user=u&currency=usd", headers=auth) as r:
                    assert r.status == 200, await r.text()
        finally:
            server.stop()
    finally:
        cluster.stop()


async def _readyz(api) -> tuple[int, dict]:
    return await api.with_key(None).rest("GET", "/readyz")


@pytest.mark.sqlite_only("the database file")
async def test_readyz_is_503_while_the_sqlite_file_is_gone_or_replaced_and_200_again_after(api, db_path, tmp_path):
    """The server's open connections would go on reading, and writing, a file that was removed
    or replaced (writes that the next start would not find): /readyz opens the file afresh, as a
    restart would, and checks it is the one the server opened. Permissions cannot deny root,
    which tests may run as, so the file is taken away and swapped instead."""
    import sqlite3

    path = os.path.abspath(db_path)
    assert await _readyz(api) == (200, {"ok": True})

    os.rename(path, path + ".moved")  # removed, or renamed, while the server runs
    assert await _readyz(api) == (503, {"ok": False, "reason": (
        f"the database cannot be read: there is no file at {path} (it was removed or renamed after this server "
        "opened it): restore it, or restart the server")})
    assert (await api.with_key(None).rest("GET", "/healthz")) == (200, {"ok": True})
    os.rename(path + ".moved", path)
    assert await _readyz(api) == (200, {"ok": True})

    other = str(tmp_path / "other.db")  # another database put in its place: a restore with the server running
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE schema_migrations (version INTEGER)")
    con.close()
    os.rename(path, path + ".moved")
    os.rename(other, path)
    assert await _readyz(api) == (503, {"ok": False, "reason": (
        f"the database cannot be read: {path} is not the file this server opened (it was replaced): "
        "restart the server to serve the new file")})
    os.rename(path, other)
    os.rename(path + ".moved", path)
    assert await _readyz(api) == (200, {"ok": True})
    deposit = await api.call("deposit", {"user": "u", "amount": 5})  # and the server serves on
    assert deposit.ok and deposit.result["amount"] == 5, deposit


@pytest.mark.sqlite_only("the database file")
async def test_the_readiness_check_names_a_file_that_sqlite_cannot_read(tmp_path):
    """What /readyz says of a file that is there, the one opened, and not a database (damage a
    server cannot show on its own file: in WAL mode its first pages are read from the WAL)."""
    from zapbilling.store.sqlite.file_check import OpenedFile, Unreadable

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 512)
    with pytest.raises(Unreadable) as raised:
        await OpenedFile(str(junk)).schema_version()
    assert str(raised.value) == f"{junk}: file is not a database"
