"""Every change's event, recorded in the change's own transaction (billing/events.py), on both
backends: each type exactly once, its data equal to what the API answers for the object
(listTransactions for a ledger row, getHold for a hold, listCreditGrants for a grant), and
nothing for a refused write, an idempotent replay, a repeated requestId or dedupe key.
usage.recorded only while an endpoint names it (tenants.usage_hooks > 0). The invariants
checker's rule (every change that must have an event has exactly one) passes after real
traffic and reports a database whose events were tampered with."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

import asyncpg
import pytest

import pg
from conftest import Api, FakeClock, ok
from invariants import copy_db, corrupt, find_violations

from zapbilling.app import STORE, sweep_once
from zapbilling.billing.events import HERALD, BillingHerald
from zapbilling.store.sqlite.outbox import check_usage_data, event_data

ALICE, BOB = "hanzo/alice", "hanzo/bob"


def recorded(db_path: str, type: str | None = None) -> list[dict[str, Any]]:
    """The outbox's events (of one type), in the order written."""
    con = pg.read_only(db_path)
    try:
        # on SQLite a usage.recorded's data is made from its ledger row when read (store/sqlite/outbox.py)
        data = "data" if pg.is_url(db_path) else event_data("events.")
        sql = f"SELECT id, type, subject, {data}, created_at FROM events"
        rows = con.execute(sql + (" WHERE type = ?" if type else "") + " ORDER BY seq", (type,) if type else ()).fetchall()
    finally:
        con.close()
    return [{"id": r[0], "type": r[1], "subject": r[2], "data": json.loads(r[3]), "createdAt": r[4]} for r in rows]


def types(db_path: str) -> list[str]:
    return [e["type"] for e in recorded(db_path)]


async def execute(db_path: str, *statements: str) -> None:
    """Statements on the live database, as another writer would make them."""
    if pg.is_url(db_path):
        conn = await asyncpg.connect(db_path)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()
        return
    con = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


async def subscribe_usage(db_path: str) -> None:
    """An enabled endpoint naming usage.recorded, with the tenant's count kept, as the
    endpoints' own operations keep it."""
    await execute(
        db_path,
        "INSERT INTO webhook_endpoints (id, tenant, url, events, secret, created_at)"
        " SELECT 'we_test', id, 'https://example.com/hook', '[\"usage.recorded\"]', 'whsec_x', 0 FROM tenants",
        "UPDATE tenants SET usage_hooks = usage_hooks + 1",
    )


async def unsubscribe_usage(db_path: str) -> None:
    await execute(db_path, "UPDATE tenants SET usage_hooks = usage_hooks - 1")


async def transaction(api: Api, user: str, tx_id: str) -> dict[str, Any]:
    rows = (await ok(api, "listTransactions", {"user": user, "currency": "usd", "limit": 1000}))["transactions"]
    rows += (await ok(api, "listTransactions", {"user": user, "currency": "eur", "limit": 1000}))["transactions"]
    (row,) = [r for r in rows if r["transactionId"] == tx_id]
    return row


async def grant(api: Api, user: str, grant_id: str) -> dict[str, Any]:
    (g,) = [g for g in (await ok(api, "listCreditGrants", {"userId": user}))["grants"] if g["id"] == grant_id]
    return g


async def test_deposits_and_refunds(api: Api, db_path: str, clock: FakeClock) -> None:
    dep = await ok(api, "deposit", {"user": ALICE, "amount": 1000, "tags": "promo", "metadata": {"k": 1}})
    starter = await ok(api, "grantStarterCredit", {"user": BOB})
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 300, "model": "m", "requestId": "r1"})
    refund = await ok(api, "refund", {"user": ALICE, "amount": 100, "originalTransactionId": usage["transactionId"]})

    deposits = recorded(db_path, "deposit.created")
    assert [e["subject"] for e in deposits] == [dep["transactionId"], starter["transactionId"]]
    assert deposits[0]["data"] == await transaction(api, ALICE, dep["transactionId"])
    assert deposits[1]["data"] == await transaction(api, BOB, starter["transactionId"])
    assert deposits[0]["createdAt"] == clock.now
    (refunded,) = recorded(db_path, "refund.created")
    assert refunded["subject"] == refund["transactionId"]
    assert refunded["data"] == await transaction(api, ALICE, refund["transactionId"])
    assert refunded["data"]["originalTransactionId"] == usage["transactionId"]
    # no endpoint names usage.recorded: the usage withdrawal has no event
    assert types(db_path) == ["deposit.created", "deposit.created", "refund.created"]
    assert [e["id"][:4] for e in recorded(db_path)] == ["evt_"] * 3


async def test_nothing_for_refusals_replays_and_repeats(api: Api, db_path: str) -> None:
    first = await api.call("deposit", {"user": ALICE, "amount": 500}, idempotency_key="k1")
    again = await api.call("deposit", {"user": ALICE, "amount": 500}, idempotency_key="k1")
    assert first.ok and again.result == first.result
    await ok(api, "grantStarterCredit", {"user": ALICE})
    await ok(api, "grantStarterCredit", {"user": ALICE})  # the dedupe key: the first row answers
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "requestId": "r1"})
    refused = await api.call("refund", {"user": ALICE, "amount": 101, "originalTransactionId": usage["transactionId"]})
    assert refused.error is not None and refused.error["kind"] == "invalid_params"
    refused = await api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": "tx_000000000000000000000000"})
    assert refused.error is not None and refused.error["kind"] == "not_found"
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 50, "requestId": "h1"})
    assert (await ok(api, "createHold", {"user": ALICE, "amount": 50, "requestId": "h1"}))["holdId"] == hold["holdId"]
    assert (await api.call("createHold", {"user": BOB, "amount": 50})).error["kind"] == "insufficient_funds"  # type: ignore[index]
    await ok(api, "releaseHold", {"id": hold["holdId"]})
    assert (await api.call("releaseHold", {"id": hold["holdId"]})).error["kind"] == "conflict"  # type: ignore[index]
    assert (await api.call("captureHold", {"id": hold["holdId"], "model": "m"})).error["kind"] == "conflict"  # type: ignore[index]
    replayed = await api.call("refund", {"user": ALICE, "amount": 10, "originalTransactionId": usage["transactionId"]}, idempotency_key="k2")
    assert (await api.call("refund", {"user": ALICE, "amount": 10, "originalTransactionId": usage["transactionId"]},
                           idempotency_key="k2")).result == replayed.result
    assert types(db_path) == ["deposit.created", "deposit.created", "hold.released", "refund.created"]
    # a repeated requestId with usage subscribed: one withdrawal, one event
    await subscribe_usage(db_path)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m", "requestId": "r2"})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m", "requestId": "r2"})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m", "requestId": "r1"})  # seen before subscribing
    assert types(db_path)[4:] == ["usage.recorded"]


async def test_forfeits_by_a_write_and_by_the_sweep(api: Api, db_path: str, clock: FakeClock, server: Any) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 300, "expiresIn": 1})
    await ok(api, "deposit", {"user": BOB, "amount": 200, "expiresIn": 1, "currency": "eur"})
    clock.advance(days=2)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 10, "model": "m"})  # forfeits ALICE's 300
    await sweep_once(server.app[STORE], clock.now)  # forfeits BOB's 200
    await sweep_once(server.app[STORE], clock.now)
    expired = recorded(db_path, "credit.expired")
    assert [e["data"]["amount"] for e in expired] == [300, 200]
    assert expired[0]["data"] == await transaction(api, ALICE, expired[0]["subject"])
    assert expired[1]["data"] == await transaction(api, BOB, expired[1]["subject"])
    assert expired[0]["data"]["keyId"] != "system" and expired[1]["data"]["keyId"] == "system"
    assert expired[1]["data"]["tags"] == "credit-expired" and expired[1]["createdAt"] == clock.now


async def test_holds(api: Api, db_path: str, clock: FakeClock, server: Any) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    captured = await ok(api, "createHold", {"user": ALICE, "amount": 300, "requestId": "q1", "metadata": {"a": 1}})
    released = await ok(api, "createHold", {"user": ALICE, "amount": 200})
    lapsing = await ok(api, "createHold", {"user": ALICE, "amount": 100, "expiresIn": 60})
    await ok(api, "captureHold", {"id": captured["holdId"], "amount": 250, "model": "m"})
    await ok(api, "releaseHold", {"id": released["holdId"]})
    clock.advance(seconds=61)
    # lapsed for every reader, but its event comes with the sweep
    assert (await ok(api, "getHold", {"id": lapsing["holdId"]}))["status"] == "expired"
    assert recorded(db_path, "hold.expired") == []
    await sweep_once(server.app[STORE], clock.now)
    await sweep_once(server.app[STORE], clock.now)
    for type, hold in (("hold.captured", captured), ("hold.released", released), ("hold.expired", lapsing)):
        (event,) = recorded(db_path, type)
        assert event["subject"] == hold["holdId"]
        assert event["data"] == await ok(api, "getHold", {"id": hold["holdId"]}), type
    (event,) = recorded(db_path, "hold.captured")
    assert event["data"]["capturedAmount"] == 250 and event["data"]["transactionId"].startswith("tx_")
    assert types(db_path) == ["deposit.created", "hold.captured", "hold.released", "hold.expired"]


async def test_grants(api: Api, db_path: str, clock: FakeClock, server: Any) -> None:
    burned = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100}))["id"]
    partly = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100, "priority": 1}))["id"]
    voided = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 50, "priority": 2}))["id"]
    expiring = (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 70, "expiresIn": "1h"}))["id"]
    lazily = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 30, "expiresIn": "1h", "priority": 5}))["id"]
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 150})  # burned: 100 -> 0, partly: 100 -> 50
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 10})  # partly: 50 -> 40, no event
    await ok(api, "voidCreditGrant", {"id": voided})
    assert (await api.call("voidCreditGrant", {"id": voided})).error is not None  # refused: nothing more
    clock.advance(seconds=3601)
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 1})  # expires `lazily` first, in its transaction
    await sweep_once(server.app[STORE], clock.now)  # expires BOB's
    await sweep_once(server.app[STORE], clock.now)
    for type, user, grant_id in (("grant.depleted", ALICE, burned), ("grant.voided", ALICE, voided)):
        (event,) = recorded(db_path, type)
        assert event["subject"] == grant_id
        assert event["data"] == await grant(api, user, grant_id), type
    expired = recorded(db_path, "grant.expired")
    assert [e["subject"] for e in expired] == [lazily, expiring]
    for event, user in zip(expired, (ALICE, BOB)):
        assert event["data"] == await grant(api, user, event["subject"])
        assert event["data"]["remainingCents"] == 0 and event["data"]["active"] is False
    assert types(db_path) == ["grant.depleted", "grant.voided", "grant.expired", "grant.expired"]
    assert partly not in {e["subject"] for e in recorded(db_path)}


async def test_usage_recorded_only_while_subscribed(api: Api, db_path: str) -> None:
    await ok(api, "createMeter", {"name": "usage", "eventName": "api-usage"})
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    assert recorded(db_path, "usage.recorded") == []
    await subscribe_usage(db_path)
    # the first write after subscribing (PostgreSQL: its hint still says none), then the next ones
    usages = [await ok(api, "recordUsage", {"user": ALICE, "amount": n, "model": "m", "requestId": f"u{n}"}) for n in (2, 3)]
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 40})
    capture = await ok(api, "captureHold", {"id": hold["holdId"], "amount": 4, "model": "m"})
    events = recorded(db_path, "usage.recorded")
    assert [e["subject"] for e in events] == [u["transactionId"] for u in usages] + [capture["transactionId"]]
    for e in events:
        assert e["data"] == await transaction(api, ALICE, e["subject"])
    assert [e["data"]["amount"] for e in events] == [2, 3, 4]
    await unsubscribe_usage(db_path)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 5, "model": "m"})  # PostgreSQL: its hint still says some
    await ok(api, "recordUsage", {"user": ALICE, "amount": 6, "model": "m"})
    assert len(recorded(db_path, "usage.recorded")) == 3


async def test_the_invariants_rule(api: Api, db_path: str, clock: FakeClock, server: Any, tmp_path: Any) -> None:
    """The checker's rule passes after traffic of every kind, and reports a change without its
    event, an event without its change, and two events of one change."""
    await ok(api, "createMeter", {"name": "usage", "eventName": "api-usage"})
    dep = await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(api, "deposit", {"user": BOB, "amount": 100, "expiresIn": 1})  # forfeited by the sweep
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 300, "model": "m"})
    await ok(api, "refund", {"user": ALICE, "amount": 100, "originalTransactionId": usage["transactionId"]})
    await subscribe_usage(db_path)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 3, "model": "m"})
    h = [(await ok(api, "createHold", {"user": ALICE, "amount": 10, "expiresIn": 60}))["holdId"] for _ in range(3)]
    await ok(api, "captureHold", {"id": h[0], "model": "m"})
    await ok(api, "releaseHold", {"id": h[1]})
    g = [(await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 10, "expiresIn": "1h"}))["id"] for _ in range(3)]
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 10})
    await ok(api, "voidCreditGrant", {"id": g[1]})
    clock.advance(days=2)
    await sweep_once(server.app[STORE], clock.now)
    assert sorted(set(types(db_path))) == sorted([
        "deposit.created", "refund.created", "usage.recorded", "credit.expired", "hold.captured", "hold.released",
        "hold.expired", "grant.depleted", "grant.voided", "grant.expired",
    ])
    assert find_violations(db_path) == []

    missing = copy_db(db_path, tmp_path / "missing.db")
    corrupt(missing, "DELETE FROM events WHERE subject = ?", params=(dep["transactionId"],))
    assert [v for v in find_violations(missing) if "event" in v] == [
        f"ledger row {dep['transactionId']} (a deposit): 0 deposit.created events, expected 1"
    ]
    stray = copy_db(db_path, tmp_path / "stray.db")
    corrupt(stray, "UPDATE events SET subject = 'hold_nothing' WHERE subject = ?", params=(h[2],))
    assert sorted(v for v in find_violations(stray) if "event" in v) == sorted([
        f"hold {h[2]} (expired): 0 hold.expired events, expected 1",
        "event of type hold.expired about hold_nothing: no such change",
    ])
    twice = copy_db(db_path, tmp_path / "twice.db")
    # (on PostgreSQL, corrupt() drops the unique indexes itself)
    corrupt(twice, *([] if pg.is_url(twice) else ["DROP INDEX events_subject"]), "INSERT INTO events (id, tenant, type, data, created_at, subject, user_id)"
                   " SELECT 'evt_again', tenant, type, data, created_at, subject, user_id FROM events WHERE subject = ?",
            params=(g[1],))
    assert [v for v in find_violations(twice) if "event" in v] == [
        f"credit grant {g[1]} (voided): 2 grant.voided events, expected 1"
    ]
    elsewhere = copy_db(db_path, tmp_path / "elsewhere.db")
    corrupt(elsewhere, "UPDATE events SET user_id = 'hanzo/mallory' WHERE subject = ?", params=(dep["transactionId"],))
    (event_id,) = [e["id"] for e in recorded(db_path, "deposit.created") if e["subject"] == dep["transactionId"]]
    assert [v for v in find_violations(elsewhere) if "event" in v] == [
        f"event {event_id}: user_id 'hanzo/mallory', but its data is about {ALICE!r}"
    ]


def test_a_usage_events_data_made_when_read_is_held_to_the_herald() -> None:
    """On SQLite a usage.recorded's data is made from its ledger row by SQL when read (store/
    sqlite/outbox.py USAGE_DATA), a copy of the domain's rendering that start-up checks: the
    domain's herald passes, one that renders the row otherwise stops start-up."""
    check_usage_data(HERALD)

    class Renamed(BillingHerald):
        def usage(self, row: Any) -> Any:
            told = super().usage(row)
            return None if told is None else (told[0], {**told[1], "note": told[1]["notes"]})

    with pytest.raises(RuntimeError, match="USAGE_DATA"):
        check_usage_data(Renamed())
