"""Issue 17's smaller findings, each reproduced: a key in the query string reaching the access
log, an overflowing credit sum answering an internal error, server-written meter events
dropped by a caller's key (or by another user's), database files readable by everyone, and
invalid UTF-8 in a query string read as U+FFFD."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import stat

import pytest
from aiohttp import ClientSession

from old_schema import sqlite_before
from conftest import assert_error, ok
from procs import ServerProcess, create_key
from test_metering import event_rows, meter, summary
from zapbilling.store.migrations import migrate, scripts

pytestmark = pytest.mark.sqlite_only("input costs and SQLite migrations")

INT64_MAX = 2**63 - 1


# -- 5: no key in the access log ------------------------------------------------------------

async def test_keys_and_key_like_query_values_never_reach_the_access_log(tmp_path):
    db = str(tmp_path / "log.db")
    key = create_key(db, "acme", "live")
    server = await ServerProcess(db, tmp_path).start_ready()
    try:
        async with ClientSession() as s:
            base = server.base + "/api/v1/billing/balance"
            # refused (a key in the query string), but still logged: the key must not be
            async with s.get(base, params={"user": "u1", "key": key}) as r:
                assert r.status == 401
            async with s.get(base, params={"user": "u2", "access_token": "s3cr3t-token"},
                             headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status in (400, 401)
            # a key pasted where a user id goes, percent-encoded underscores included
            async with s.get(base + "?user=" + key.replace("_", "%5F"), headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200
            async with s.get(server.base + f"/api/v1/billing/meters/{key}", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 404
        assert server.terminate() == 0
        log = server.log()
        secret_part = key.split("_", 2)[2]
        assert secret_part not in log, "a key reached the log"
        assert "s3cr3t-token" not in log
        assert log.count("[redacted]") >= 4, log
        assert "user=u1" in log and "user=u2" in log, "redaction must keep the rest of the line"
    finally:
        server.stop()


# -- 6: an overflowing credit sum is invalid params, not an internal error --------------------

async def test_a_credit_balance_beyond_int64_is_invalid_params(any_api):
    for _ in range(2):
        await ok(any_api, "createCreditGrant", {"userId": "whale", "name": "big", "amountCents": INT64_MAX})
    r = await any_api.call("getCreditBalance", {"userId": "whale"})
    assert_error(any_api, r, "invalid_params", "beyond the signed 64-bit range")
    # one grant alone is fine, and other users are unaffected
    await ok(any_api, "createCreditGrant", {"userId": "fish", "name": "big", "amountCents": INT64_MAX})
    assert (await ok(any_api, "getCreditBalance", {"userId": "fish"}))["balances"] == [{"currency": "usd", "available": INT64_MAX}]


# -- 7: server-written meter events live apart from callers' keys -----------------------------

async def test_usage_events_of_users_whose_ids_contain_colons_are_all_recorded(any_api, db_path):
    usage = await meter(any_api, "api-usage")
    await ok(any_api, "deposit", {"user": "org:team", "amount": 1000})
    await ok(any_api, "deposit", {"user": "org", "amount": 1000})
    await ok(any_api, "recordUsage", {"user": "org:team", "amount": 10, "requestId": "42"})
    await ok(any_api, "recordUsage", {"user": "org", "amount": 90, "requestId": "team:42"})
    assert (await summary(any_api, usage["id"], userId="org"))["value"] == 90  # was 0: the key `usage:org:team:42` twice
    assert (await summary(any_api, usage["id"], userId="org:team"))["value"] == 10
    # a retry still records nothing more
    await ok(any_api, "recordUsage", {"user": "org", "amount": 90, "requestId": "team:42"})
    assert (await summary(any_api, usage["id"], userId="org"))["eventCount"] == 1


async def test_a_callers_event_cannot_take_the_key_of_a_holds_capture_event(any_api, db_path):
    usage = await meter(any_api, "api-usage")
    await ok(any_api, "deposit", {"user": "alice", "amount": 1000})
    hold = await ok(any_api, "createHold", {"user": "alice", "amount": 300})
    sent = await ok(any_api, "recordMeterEvents", {"events": [
        {"meterId": usage["id"], "userId": "alice", "value": 1, "idempotency": f"hold:{hold['holdId']}"},
        {"meterId": usage["id"], "userId": "alice", "value": 2, "idempotency": "usage:alice:r1"},
    ]})
    assert [e["status"] for e in sent["events"]] == ["created", "created"]
    capture = await ok(any_api, "captureHold", {"id": hold["holdId"], "amount": 200})
    await ok(any_api, "recordUsage", {"user": "alice", "amount": 5, "requestId": "r1"})
    s = await summary(any_api, usage["id"], userId="alice")
    assert (s["value"], s["eventCount"]) == (1 + 2 + 200 + 5, 4)  # the capture's 200 was dropped before
    linked = {r["ledger_id"]: r["value"] for r in event_rows(db_path, usage["id"]) if r["ledger_id"]}
    assert linked[capture["transactionId"]] == 200 and sorted(linked.values()) == [5, 200]
    # a caller's later event with the same keys is still a duplicate of the caller's own
    again = await ok(any_api, "recordMeterEvents", {"events": [
        {"meterId": usage["id"], "userId": "alice", "value": 1, "idempotency": f"hold:{hold['holdId']}"}]})
    assert again["events"] == [{"id": sent["events"][0]["id"], "status": "duplicate"}]


def test_migration_links_earlier_usage_events_to_their_withdrawals_and_frees_their_keys(tmp_path):
    conn = sqlite_before(tmp_path / "old.db", 5)
    ledger = ("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, created_at, key_id)"
              " VALUES (?, 1, ?, 'usd', 'withdraw', ?, 'api-usage', '', ?, 'k')")
    event = ("INSERT INTO meter_events (id, tenant, meter_id, user_id, value, ts, idempotency_key, created_at)"
             " VALUES (?, 1, 'mtr_1', ?, ?, ?, ?, ?)")
    conn.execute("INSERT INTO meters (id, tenant, name, event_name, aggregation, currency, dimensions, created_at)"
                 " VALUES ('mtr_1', 1, 'API usage', 'api-usage', 'sum', 'usd', '[]', 1)")
    conn.execute(ledger, ("tx_a", "a", 7, 100))
    conn.execute(ledger, ("tx_b", "b", 9, 200))
    conn.execute(event, ("evt_a", "a", 7, 100, "usage:a:r", 100))
    conn.execute(event, ("evt_b", "b", 9, 200, "hold:hold_1", 200))
    conn.execute(event, ("evt_c", "a", 3, 300, "caller-key", 300))  # a caller's own event
    assert migrate(conn) == [5] + [v for v, _, _ in scripts() if v > 5]
    rows = {r[0]: r[1:] for r in conn.execute("SELECT id, ledger_id, idempotency_key FROM meter_events")}
    assert rows == {"evt_a": ("tx_a", None), "evt_b": ("tx_b", None), "evt_c": (None, "caller-key")}
    with pytest.raises(sqlite3.IntegrityError):  # one event per withdrawal, by constraint
        conn.execute(event.replace("meter_id", "meter").replace("'mtr_1'", "1").replace("created_at)", "created_at, ledger_id)")
                     .replace("?)", "?, 'tx_a')"), ("evt_d", "a", 7, 100, None, 100))


# -- 8: owner-only files, UTF-8 query strings ---------------------------------------------------

async def test_the_database_and_its_side_files_are_created_owner_only(tmp_path):
    db = str(tmp_path / "private.db")
    key = create_key(db, "acme", "live")
    server = await ServerProcess(db, tmp_path).start_ready()
    try:
        async with ClientSession() as s:  # a write, so the WAL and its index exist
            async with s.post(server.base + "/api/v1/billing/deposit", json={"user": "u", "amount": 5},
                              headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 201
        files = [p for p in os.listdir(tmp_path) if p.startswith("private.db")]
        assert {"private.db", "private.db-wal", "private.db-shm", "private.db-keyepoch"} <= set(files), files
        for name in files:
            mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            assert mode == 0o600, f"{name} has mode {oct(mode)}"
    finally:
        server.stop()


async def test_invalid_utf8_in_a_query_string_is_a_400(api):
    for query in ("user=%FF%FE", "user=ok&currency=%C3", "user=%ED%A0%80"):  # bad byte, cut sequence, a surrogate
        status, body = await api.rest("GET", f"/api/v1/billing/balance?{query}")
        assert status == 400, (query, status, body)
        assert body["error"]["code"] == "invalid_request" and "not valid UTF-8" in body["error"]["message"]
    status, body = await api.rest("GET", "/api/v1/billing/balance?user=%C3%A9l%C3%A8ve")  # valid UTF-8 still works
    assert status == 200 and body["user"] == "élève"


async def test_raw_non_utf8_bytes_in_a_query_string_are_a_400_too(server, make_key):
    key = await make_key()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /api/v1/billing/balance?user=\xff\xfe HTTP/1.1\r\nHost: x\r\n"
                 + f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # Connection: close: all of it, then EOF
    writer.close()
    # aiohttp's HTTP parser refuses these before any route runs (so `_check_text`'s encode
    # step is the second line of defence); either way, never a 200 with U+FFFD in the user id
    assert answer.split(b" ", 2)[1] == b"400", answer
