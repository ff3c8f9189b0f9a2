"""listEvents' `userId` filter (zapbilling's addition beyond the contract, for the console's
account page): the events about one account, the user their data names (a Transaction's or a
Hold's `user`, a CreditGrant's or alert.triggered's `userId`, spend_cap.reached's `user`),
newest first, with `type` and paging, scoped to the org and mode like every event. The events
are made by real writes over the API (on PostgreSQL the ledger's append statement writes a
row's event without naming user_id: migration 0009's trigger fills it, and these tests are what
says the two rules agree); migration 0009 gives the events written before it their user."""
from __future__ import annotations

from typing import Any

import asyncpg
import pytest

import pg
from old_schema import postgres_before, sqlite_before
from conftest import Api, assert_error, ok
from outbox_rows import emit
from test_webhook_endpoints import HOOK, create, server, tenant_of  # noqa: F401  (server: the fixture with --webhook-allow-private)
from zapbilling.app import STORE
from zapbilling.store.migrations import scripts

ALICE, BOB = "hanzo/alice", "hanzo/bob"
EVERYTHING = 1000
"""listEvents' largest page: every event these tests make fits in it."""


def about(event: dict[str, Any]) -> str | None:
    """The account an event is about, read from its data as the API answers it."""
    data = event["data"]
    return data.get("user", data.get("userId"))  # type: ignore[no-any-return]


async def history(api: Api, server: Any, clock: Any) -> list[dict[str, Any]]:
    """Every kind of event about Alice and Bob by real writes, and one about no account; all the
    org's events, newest first."""
    await create(api, HOOK, ["usage.recorded"])  # usage.recorded is recorded only for an endpoint naming it
    await ok(api, "createAlert", {"type": "balance_below", "threshold": 500})  # every user of the org
    await ok(api, "setSpendCap", {"user": BOB, "period": "month", "limit": 100})
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(api, "deposit", {"user": BOB, "amount": 1000})
    first = await ok(api, "recordUsage", {"user": ALICE, "amount": 300, "requestId": "r1"})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 300, "requestId": "r2"})  # 400 available: below 500
    await ok(api, "recordUsage", {"user": BOB, "amount": 150, "requestId": "r3"})  # past Bob's cap of 100
    await ok(api, "refund", {"user": ALICE, "amount": 100, "originalTransactionId": first["transactionId"]})
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})  # 1500: far from the alert, so the hold below triggers nothing
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 50})
    await ok(api, "releaseHold", {"id": hold["holdId"]})
    grant = await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 200})
    await ok(api, "voidCreditGrant", {"id": grant["id"]})
    clock.advance(1)
    store, tenant = server.app[STORE], await tenant_of(server)
    await emit(store, tenant, "webhook_endpoint.disabled", {"id": "we_gone", "url": HOOK, "events": ["*"], "description": "",
                                                            "status": "disabled", "createdAt": "2026-01-01T00:00:00Z"}, clock.now)
    page = await ok(api, "listEvents", {"limit": EVERYTHING})
    assert not page["hasMore"]
    return page["events"]  # type: ignore[no-any-return]


ALICE_TYPES = [  # newest first
    "grant.voided", "hold.released", "deposit.created", "refund.created", "alert.triggered", "usage.recorded",
    "usage.recorded", "deposit.created",
]
BOB_TYPES = ["spend_cap.reached", "usage.recorded", "deposit.created"]


async def test_list_events_by_user_answers_the_events_about_that_account(any_api, server, clock):
    every = await history(any_api, server, clock)
    assert [e["type"] for e in every if about(e) is None] == ["webhook_endpoint.disabled"]
    alice = await ok(any_api, "listEvents", {"userId": ALICE})
    assert alice == {"count": len(ALICE_TYPES), "hasMore": False, "events": [e for e in every if about(e) == ALICE]}
    assert [e["type"] for e in alice["events"]] == ALICE_TYPES
    bob = await ok(any_api, "listEvents", {"userId": BOB})
    assert bob == {"count": 3, "hasMore": False, "events": [e for e in every if about(e) == BOB]}
    assert [e["type"] for e in bob["events"]] == BOB_TYPES
    assert len(every) == len(ALICE_TYPES) + len(BOB_TYPES) + 1  # nothing else, nothing about anyone else
    assert await ok(any_api, "listEvents", {"userId": "hanzo/nobody"}) == {"count": 0, "hasMore": False, "events": []}


async def test_user_with_type_and_paging(any_api, server, clock):
    every = await history(any_api, server, clock)
    alice = [e for e in every if about(e) == ALICE]
    usage = await ok(any_api, "listEvents", {"userId": ALICE, "type": "usage.recorded"})
    assert usage == {"count": 2, "hasMore": False, "events": [e for e in alice if e["type"] == "usage.recorded"]}
    assert (await ok(any_api, "listEvents", {"userId": BOB, "type": "usage.recorded"}))["events"] == [
        e for e in every if about(e) == BOB and e["type"] == "usage.recorded"]
    assert await ok(any_api, "listEvents", {"userId": BOB, "type": "grant.voided"}) == {"count": 0, "hasMore": False, "events": []}
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"userId": ALICE, "limit": 3}
    while True:
        page = await ok(any_api, "listEvents", params)
        pages.append(page["events"])
        assert page["count"] == len(page["events"])
        if not page["hasMore"]:
            break
        params["startingAfter"] = page["events"][-1]["id"]
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [e for p in pages for e in p] == alice
    # after an event about someone else: Alice's events older than it
    bobs_usage = next(e for e in every if about(e) == BOB and e["type"] == "usage.recorded")
    older = every[every.index(bobs_usage) + 1:]
    after = await ok(any_api, "listEvents", {"userId": ALICE, "startingAfter": bobs_usage["id"]})
    assert after == {"count": 4, "hasMore": False, "events": [e for e in older if about(e) == ALICE]}
    assert [e["type"] for e in after["events"]] == ["alert.triggered", "usage.recorded", "usage.recorded", "deposit.created"]
    r = await any_api.call("listEvents", {"userId": ALICE, "startingAfter": "evt_000000000000000000000000"})
    assert_error(any_api, r, "not_found", "event not found", "startingAfter")


async def test_another_org_or_mode_sees_nothing_of_the_user(api, server, clock, make_key):
    every = await history(api, server, clock)
    other = api.with_key(await make_key("globex", "live"))
    test_mode = api.with_key(await make_key("acme", "test"))
    for intruder in (other, test_mode):
        assert await ok(intruder, "listEvents", {"userId": ALICE}) == {"count": 0, "hasMore": False, "events": []}
        r = await intruder.call("listEvents", {"userId": ALICE, "startingAfter": every[0]["id"]})
        assert_error(intruder, r, "not_found", "event not found", "startingAfter")
    theirs = await ok(other, "deposit", {"user": ALICE, "amount": 7})
    (event,) = (await ok(other, "listEvents", {"userId": ALICE}))["events"]
    assert (event["type"], event["data"]["transactionId"]) == ("deposit.created", theirs["transactionId"])
    assert (await ok(api, "listEvents", {"userId": ALICE}))["events"] == [e for e in every if about(e) == ALICE]


# -- migration 0009 ----------------------------------------------------------------------------

_EVENTS = [  # (id, type, data) as written before the migration
    ("evt_dep", "deposit.created", '{"transactionId":"tx_1","user":"hanzo/alice","amount":5}'),
    ("evt_grant", "grant.voided", '{"id":"cg_1","userId":"hanzo/bob","amountCents":3}'),
    ("evt_alert", "alert.triggered", '{"alertId":"alr_1","userId":"hanzo/alice","value":1,"threshold":2}'),
    ("evt_cap", "spend_cap.reached", '{"user":"hanzo/bob","currency":"usd","period":"day","limit":1,"used":2}'),
    ("evt_off", "webhook_endpoint.disabled", '{"id":"we_1","url":"http://x/","events":["*"],"status":"disabled"}'),
]
_BACKFILLED = {"evt_dep": "hanzo/alice", "evt_grant": "hanzo/bob", "evt_alert": "hanzo/alice", "evt_cap": "hanzo/bob", "evt_off": None}
_MINE = next(v for v, n, _ in scripts() if n == "events_user")


@pytest.mark.sqlite_only("the SQLite migration script")
def test_the_sqlite_migration_gives_earlier_events_their_user_and_swaps_the_unused_index(tmp_path):
    conn = sqlite_before(tmp_path / "old.db", _MINE)
    for n, (id, type, data) in enumerate(_EVENTS):
        conn.execute("INSERT INTO events (id, tenant, type, data, created_at) VALUES (?, 1, ?, ?, ?)", (id, type, data, n))
    from zapbilling.store.migrations import migrate

    assert _MINE in migrate(conn)
    assert dict(conn.execute("SELECT id, user_id FROM events").fetchall()) == _BACKFILLED
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL")}
    assert indexes == {"events_subject", "events_tenant_type", "events_undispatched", "events_user"}  # 14 drops events_tenant
    # the store's queries (sqlite/webhooks.py events_page) walk the user's range of events_user, newest first
    for where, used in [("", "tenant=? AND user_id=?"), (" AND seq < 9 AND +type = 'x'", "tenant=? AND user_id=? AND seq<?")]:
        plan = " ".join(r[3] for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT id, type, created_at, data FROM events WHERE tenant = 1{where} AND user_id = 'a'"
            " ORDER BY seq DESC LIMIT 3"))
        assert plan == f"SEARCH events USING INDEX events_user ({used})", plan


@pytest.mark.postgres_only("the PostgreSQL migration script and its trigger")
async def test_the_postgres_migration_gives_earlier_and_later_events_their_user():
    from zapbilling.store.postgres.connection import migrate

    url = pg.admin().new_database(migrated=False)
    conn = await asyncpg.connect(url)
    try:
        await postgres_before(conn, _MINE)
        for n, (id, type, data) in enumerate(_EVENTS):
            await conn.execute("INSERT INTO events (id, tenant, type, data, created_at) VALUES ($1, 1, $2, $3, $4)", id, type, data, n)
        assert _MINE in await migrate(conn)
        assert dict(await conn.fetch("SELECT id, user_id FROM events")) == _BACKFILLED
        # a writer that does not name user_id (the ledger's append statement) gets it from the data
        await conn.execute("INSERT INTO events (id, tenant, type, data, created_at) VALUES ('evt_new', 1, 'usage.recorded', $1, 9)",
                           '{"transactionId":"tx_2","user":"hanzo/carol"}')
        await conn.execute("INSERT INTO events (id, tenant, type, data, created_at, user_id) VALUES ('evt_named', 1, 'x', '{}', 9, 'z')")
        assert dict(await conn.fetch("SELECT id, user_id FROM events WHERE created_at = 9")) == {"evt_new": "hanzo/carol", "evt_named": "z"}
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
        assert indexes == {"events_pkey", "events_id_key", "events_subject", "events_tenant", "events_tenant_type",
                           "events_undispatched", "events_user"}
    finally:
        await conn.close()
        pg.admin().drop(url)
