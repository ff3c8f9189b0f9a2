"""The events API (operations 34-36): listEvents newest first, paged, filtered by type;
getEvent with its delivery log; redeliverEvent. Events and delivery rows are written through
the store's own outbox (tests/outbox_rows.py), each event marked dispatched in its own
transaction so that the delivery log a test reads is the one it wrote; a real deposit's event
is read back as well once the write paths record events."""
from __future__ import annotations

from typing import Any

import pytest

from conftest import Api, assert_error, ok
from outbox_rows import delivery, emit, sql
from test_webhook_endpoints import HOOK, create, server, tenant_of  # noqa: F401  (server: the fixture with --webhook-allow-private)
from zapbilling.app import STORE
from zapbilling.times import format_ts

SECOND = 1_000_000


def deposit_data(n: int) -> dict[str, Any]:
    return {"id": f"tx_{n:024x}", "user": "hanzo/alice", "currency": "usd", "type": "deposit", "amount": 100 * n,
            "metadata": {"n": n, "nested": [1, "two", None]}}


async def five_events(server: Any, clock: Any, org: str = "acme") -> list[tuple[str, str, Any, int]]:
    """Five events of the org one second apart, oldest first: (id, type, data, created_at)."""
    store, tenant = server.app[STORE], await tenant_of(server, org)
    made = []
    for n, type in enumerate(["deposit.created", "hold.captured", "deposit.created", "grant.voided", "deposit.created"], start=1):
        clock.advance(1)
        data = deposit_data(n)
        made.append((await emit(store, tenant, type, data, clock.now), type, data, clock.now))
    return made


def shown(e: tuple[str, str, Any, int]) -> dict[str, Any]:
    return {"id": e[0], "type": e[1], "createdAt": format_ts(e[3]), "data": e[2]}


async def test_list_events_newest_first_paged_and_by_type(any_api, server, clock, make_key):
    events = await five_events(server, clock)
    newest_first = [shown(e) for e in reversed(events)]
    page = await ok(any_api, "listEvents", {})
    assert page == {"count": 5, "hasMore": False, "events": newest_first}
    first = await ok(any_api, "listEvents", {"limit": 2})
    assert first == {"count": 2, "hasMore": True, "events": newest_first[:2]}
    second = await ok(any_api, "listEvents", {"limit": 2, "startingAfter": first["events"][-1]["id"]})
    assert second == {"count": 2, "hasMore": True, "events": newest_first[2:4]}
    last = await ok(any_api, "listEvents", {"limit": 2, "startingAfter": second["events"][-1]["id"]})
    assert last == {"count": 1, "hasMore": False, "events": newest_first[4:]}
    deposits = await ok(any_api, "listEvents", {"type": "deposit.created"})
    assert deposits == {"count": 3, "hasMore": False, "events": [newest_first[i] for i in (0, 2, 4)]}
    after = await ok(any_api, "listEvents", {"type": "deposit.created", "limit": 1, "startingAfter": events[3][0]})
    assert after == {"count": 1, "hasMore": True, "events": [newest_first[2]]}  # after the grant.voided one, of another type
    assert await ok(any_api, "listEvents", {"type": "usage.recorded"}) == {"count": 0, "hasMore": False, "events": []}


async def test_events_belong_to_their_org_and_mode(api, server, clock, make_key):
    other = api.with_key(await make_key("globex", "live"))
    test_mode = api.with_key(await make_key("acme", "test"))
    mine = await five_events(server, clock)
    theirs = await five_events(server, clock, "globex")
    assert [e["id"] for e in (await ok(other, "listEvents", {}))["events"]] == [e[0] for e in reversed(theirs)]
    assert (await ok(test_mode, "listEvents", {}))["count"] == 0
    for intruder in (other, test_mode):
        r = await intruder.call("listEvents", {"startingAfter": mine[2][0]})
        assert_error(intruder, r, "not_found", "event not found", "startingAfter")
        assert_error(intruder, await intruder.call("getEvent", {"id": mine[2][0]}), "not_found", "event not found", "id")
        assert_error(intruder, await intruder.call("redeliverEvent", {"id": mine[2][0]}), "not_found", "event not found", "id")


async def test_unknown_ids_are_not_found(any_api, server, clock):
    await five_events(server, clock)
    for missing in ("evt_000000000000000000000000", "nope"):
        assert_error(any_api, await any_api.call("listEvents", {"startingAfter": missing}), "not_found", "event not found", "startingAfter")
        assert_error(any_api, await any_api.call("getEvent", {"id": missing}), "not_found", "event not found", "id")
        assert_error(any_api, await any_api.call("redeliverEvent", {"id": missing}), "not_found", "event not found", "id")
    r = await any_api.call("listEvents", {"type": "deposit.made"})
    assert not r.ok and r.error["kind"] == "invalid_params" and r.error["param"] == "type"
    r = await any_api.call("listEvents", {"limit": 1001})
    assert_error(any_api, r, "invalid_params", "limit must be between 1 and 1000", "limit")


async def test_get_event_shows_every_attempt_and_the_next_one_of_a_pending_delivery(any_api, server, clock):
    store, tenant = server.app[STORE], await tenant_of(server)
    a, b = await create(any_api, HOOK + "/a"), await create(any_api, HOOK + "/b")
    (event, type, data, at), = (await five_events(server, clock))[:1]
    t = clock.now
    # a: failed with a 500, then succeeded; b: refused, and its second attempt due in a day
    await delivery(store, tenant, event, a["id"], status="succeeded", created_at=t, due_at=t + 10 * SECOND,
                   attempts=[("failed", 500, "HTTP 500", t + 1 * SECOND), ("succeeded", 200, None, t + 10 * SECOND)])
    await delivery(store, tenant, event, b["id"], status="pending", created_at=t, due_at=t + 86_400 * SECOND,
                   attempts=[("failed", None, "connection refused", t + 2 * SECOND)])
    got = await ok(any_api, "getEvent", {"id": event})
    assert {k: v for k, v in got.items() if k != "deliveries"} == shown((event, type, data, at))
    assert got["deliveries"] == [
        {"endpointId": a["id"], "attempt": 1, "status": "failed", "responseStatus": 500, "error": "HTTP 500", "at": format_ts(t + SECOND)},
        {"endpointId": b["id"], "attempt": 1, "status": "failed", "error": "connection refused", "at": format_ts(t + 2 * SECOND)},
        {"endpointId": a["id"], "attempt": 2, "status": "succeeded", "responseStatus": 200, "at": format_ts(t + 10 * SECOND)},
        {"endpointId": b["id"], "attempt": 2, "status": "pending", "at": format_ts(t + 86_400 * SECOND)},
    ]
    # A failed delivery shows its attempts and nothing pending; an event without deliveries, none.
    await sql(store, "UPDATE deliveries SET status = 'failed' WHERE endpoint_id = ?", b["id"])
    assert [d["status"] for d in (await ok(any_api, "getEvent", {"id": event}))["deliveries"]] == ["failed", "failed", "succeeded"]
    other_event = (await ok(any_api, "listEvents", {"limit": 1}))["events"][0]
    assert (await ok(any_api, "getEvent", {"id": other_event["id"]}))["deliveries"] == []


async def deliveries_of(server: Any, event: str) -> list[tuple[str, int, int]]:
    """(endpoint, created_at, due_at) of the event's deliveries in the order queued. Nothing
    more: a sender running beside the test may make an attempt of one at any moment."""
    rows = await sql(server.app[STORE], "SELECT endpoint_id, created_at, due_at FROM deliveries WHERE event_id = ? ORDER BY seq", event)
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_redeliver_queues_a_delivery_to_each_endpoint_subscribed_or_to_the_one_named(any_api, server, clock, make_key):
    store, tenant = server.app[STORE], await tenant_of(server)
    specific = await create(any_api, HOOK + "/specific", ["deposit.created"])
    everything = await create(any_api, HOOK + "/all", ["*"])
    usage = await create(any_api, HOOK + "/usage", ["usage.recorded"])
    disabled = await create(any_api, HOOK + "/disabled", ["*"])
    deleted = await create(any_api, HOOK + "/deleted", ["*"])
    await sql(store, "UPDATE webhook_endpoints SET status = 'disabled' WHERE id = ?", disabled["id"])
    await ok(any_api, "deleteWebhookEndpoint", {"id": deleted["id"]})
    clock.advance(1)
    deposit = await emit(store, tenant, "deposit.created", deposit_data(1), clock.now)
    used = await emit(store, tenant, "usage.recorded", deposit_data(2), clock.now)
    clock.advance(30)
    r = await any_api.call("redeliverEvent", {"id": deposit})
    assert r.ok and r.status == 200 and r.result == {"id": deposit, "queued": 2}
    queued = await deliveries_of(server, deposit)
    assert [(e, created) for e, created, _ in queued] == [(specific["id"], clock.now), (everything["id"], clock.now)]
    assert all(due >= clock.now for _, _, due in queued)  # due now (or later, once a sender has tried)
    (status,), = await sql(store, "SELECT COUNT(*) FROM deliveries WHERE event_id = ? AND status = 'pending'", deposit)
    assert status == 2
    assert await ok(any_api, "redeliverEvent", {"id": used}) == {"id": used, "queued": 1}  # `*` is not usage.recorded
    assert [row[0] for row in await deliveries_of(server, used)] == [usage["id"]]
    # Named: that endpoint, subscribed or not; a disabled one gets nothing.
    assert await ok(any_api, "redeliverEvent", {"id": deposit, "endpointId": usage["id"]}) == {"id": deposit, "queued": 1}
    assert await ok(any_api, "redeliverEvent", {"id": deposit, "endpointId": disabled["id"]}) == {"id": deposit, "queued": 0}
    assert [row[0] for row in await deliveries_of(server, deposit)] == [specific["id"], everything["id"], usage["id"]]
    # Refused: nothing queued.
    other = api_of(any_api, await make_key("globex", "live"))
    theirs = await create(other, HOOK + "/theirs", ["*"])
    for endpoint in (deleted["id"], theirs["id"], "we_000000000000000000000000"):
        r = await any_api.call("redeliverEvent", {"id": deposit, "endpointId": endpoint})
        assert_error(any_api, r, "not_found", "webhook endpoint not found", "endpointId")
    r = await any_api.call("redeliverEvent", {"id": "evt_000000000000000000000000", "endpointId": specific["id"]})
    assert_error(any_api, r, "not_found", "event not found", "id")
    assert len(await deliveries_of(server, deposit)) == 3


def api_of(api: Api, key: str) -> Api:
    return api.with_key(key)


async def test_an_idempotent_redelivery_is_queued_once(api, server, clock):
    store, tenant = server.app[STORE], await tenant_of(server)
    await create(api, HOOK, ["*"])
    event = await emit(store, tenant, "grant.voided", deposit_data(1), clock.now)
    first = await ok(api, "redeliverEvent", {"id": event}, idempotency_key="again-1")
    assert first == await ok(api, "redeliverEvent", {"id": event}, idempotency_key="again-1") == {"id": event, "queued": 1}
    assert len(await deliveries_of(server, event)) == 1


async def test_a_deposit_is_listed_as_its_event(any_api, server):
    """The write paths record their events (issue 21's outbox): a deposit reads back as
    deposit.created whose data is the transaction as the API answers it."""
    tx = await ok(any_api, "deposit", {"user": "hanzo/alice", "amount": 1234, "currency": "usd"})
    page = await ok(any_api, "listEvents", {"type": "deposit.created"})
    if page["count"] == 0:
        pytest.skip("the write paths do not record events yet")
    (event,) = page["events"]
    data = event["data"]
    assert (data["transactionId"], data["user"], data["amount"], data["type"]) == (tx["transactionId"], "hanzo/alice", 1234, "deposit")
    got = await ok(any_api, "getEvent", {"id": event["id"]})
    assert {k: v for k, v in got.items() if k != "deliveries"} == event


async def test_a_ledger_rows_event_id_is_the_rows_own_digits(api, server):
    """A ledger row's event (store/ids.py row_event_id) is `evt_` and the row's 24 digits: a
    deposit's, a refund's and a usage withdrawal's (with an endpoint on usage.recorded), each
    found by getEvent under that id; other events keep ids of their own."""
    await create(api, events=["deposit.created", "refund.created", "usage.recorded", "hold.released"])
    tx = await ok(api, "deposit", {"user": "u", "amount": 500})
    usage = await ok(api, "recordUsage", {"user": "u", "amount": 7, "requestId": "r-1"})
    refund = await ok(api, "refund", {"user": "u", "originalTransactionId": usage["transactionId"], "amount": 3})
    hold = await ok(api, "createHold", {"user": "u", "amount": 5})
    await ok(api, "releaseHold", {"id": hold["holdId"]})
    for row, type in ((tx, "deposit.created"), (refund, "refund.created"), (usage, "usage.recorded")):
        digits = row["transactionId"].partition("_")[2]
        event = await ok(api, "getEvent", {"id": "evt_" + digits})
        assert (event["type"], event["data"]["transactionId"]) == (type, row["transactionId"])
    (released,) = (await ok(api, "listEvents", {"type": "hold.released"}))["events"]
    assert released["id"].startswith("evt_") and released["id"] != "evt_" + hold["holdId"].partition("_")[2]
