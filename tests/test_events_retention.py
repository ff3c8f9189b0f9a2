"""The outbox's retention (store/*/retention.py, app.py EVENTS_KEEP): the expiry sweep deletes
events past their 30 days with their deliveries and attempts, on both backends; an event
younger than that, not yet dispatched or with a delivery still pending stays; getEvent of a
purged event is 404; the events_purged row says how far the purge went, and the invariants
checker accepts a change whose event is older than it (and still reports a missing younger one)."""
from __future__ import annotations

import json
from typing import Any

import pg
from conftest import Api, FakeClock, ok
from invariants import copy_db, corrupt, find_violations
from test_events_recorded import execute

from zapbilling.app import EVENTS_KEEP, STORE, sweep_once

ALICE = "hanzo/alice"
MINUTE = 60_000_000


def rows(db_path: str, sql: str) -> list[tuple[Any, ...]]:
    con = pg.read_only(db_path)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


async def deposit_event(api: Api) -> tuple[str, str]:
    """A deposit and the id of its deposit.created event."""
    tx = (await ok(api, "deposit", {"user": ALICE, "amount": 100}))["transactionId"]
    (event_id,) = [e["id"] for e in (await ok(api, "listEvents", {"limit": 100}))["events"] if e["data"]["transactionId"] == tx]
    return tx, event_id


async def dispatched(server: Any, clock: FakeClock) -> None:
    """What the sender would do on its next turn: every event dispatched (no endpoint: no delivery)."""
    while await server.app[STORE].dispatch_events(clock.now) > 0:
        pass


async def test_events_past_30_days_go_with_their_deliveries(api: Api, db_path: str, clock: FakeClock, server: Any) -> None:
    _, old = await deposit_event(api)
    await dispatched(server, clock)
    born = clock.now
    # a delivery of the old event that succeeded on its second attempt: its log goes with it
    await execute(
        db_path,
        "INSERT INTO deliveries (tenant, event_id, endpoint_id, attempts, status, due_at, created_at)"
        f" SELECT tenant, id, 'we_gone', 2, 'succeeded', {born}, {born} FROM events WHERE id = '{old}'",
        "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, at)"
        f" SELECT seq, 1, 'failed', 500, {born} FROM deliveries WHERE event_id = '{old}'",
        "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, at)"
        f" SELECT seq, 2, 'succeeded', 200, {born} FROM deliveries WHERE event_id = '{old}'",
    )
    clock.advance(days=29)
    _, young = await deposit_event(api)
    await dispatched(server, clock)

    clock.now = born + EVENTS_KEEP + 2 * MINUTE
    await sweep_once(server.app[STORE], clock.now)
    gone = await api.call("getEvent", {"id": old})
    assert gone.error is not None and gone.error["kind"] == "not_found"
    assert [e["id"] for e in (await ok(api, "listEvents", {"limit": 100}))["events"]] == [young]
    assert rows(db_path, f"SELECT COUNT(*) FROM deliveries WHERE event_id = '{old}'") == [(0,)]
    assert rows(db_path, "SELECT COUNT(*) FROM delivery_attempts") == [(0,)]
    (horizon,) = rows(db_path, "SELECT purged_before FROM events_purged")
    assert born < horizon[0] <= clock.now - EVENTS_KEEP
    # the deposit's row stays, its event is gone: the checker tells a purged event from a missing one
    assert find_violations(db_path) == []


async def test_30_days_to_the_microsecond_is_not_yet(api: Api, clock: FakeClock, server: Any) -> None:
    """The purge keeps a minute more than the 30 days, as the idempotency purge does. (One sweep
    per server here: a purge's horizon moves no faster than real time from one sweep to the
    next, answers.PurgeHorizon, so a test clock's jump counts only on a store's first sweep.)"""
    _, old = await deposit_event(api)
    await dispatched(server, clock)
    clock.advance(seconds=EVENTS_KEEP / 1_000_000)
    await sweep_once(server.app[STORE], clock.now)
    assert (await ok(api, "getEvent", {"id": old}))["id"] == old


async def test_a_pending_or_undispatched_event_stays_and_does_not_block_the_rest(
    api: Api, db_path: str, clock: FakeClock, server: Any
) -> None:
    _, pending = await deposit_event(api)
    _, purged = await deposit_event(api)
    await dispatched(server, clock)
    born = clock.now
    await execute(
        db_path,
        "INSERT INTO deliveries (tenant, event_id, endpoint_id, due_at, created_at)"
        f" SELECT tenant, id, 'we_slow', {born}, {born} FROM events WHERE id = '{pending}'",
    )
    _, undispatched = await deposit_event(api)  # written after the sender's turn
    clock.advance(days=31)
    await sweep_once(server.app[STORE], clock.now)
    left = [e["id"] for e in (await ok(api, "listEvents", {"limit": 100}))["events"]]
    assert sorted(left) == sorted([pending, undispatched])
    assert (await api.call("getEvent", {"id": purged})).error["kind"] == "not_found"  # type: ignore[index]
    # once its delivery is done and the other dispatched, the next sweep takes both
    await execute(db_path, f"UPDATE deliveries SET status = 'succeeded' WHERE event_id = '{pending}'")
    await dispatched(server, clock)
    await sweep_once(server.app[STORE], clock.now)
    assert (await ok(api, "listEvents", {"limit": 100}))["events"] == []
    assert find_violations(db_path) == []


async def test_the_checker_still_reports_a_missing_event_younger_than_the_purge(
    api: Api, db_path: str, clock: FakeClock, server: Any, tmp_path: Any
) -> None:
    await deposit_event(api)
    await dispatched(server, clock)
    clock.advance(days=31)
    await sweep_once(server.app[STORE], clock.now)
    young_tx, young = await deposit_event(api)
    assert find_violations(db_path) == []
    copy = copy_db(db_path, tmp_path / "copy.db")
    corrupt(copy, f"DELETE FROM events WHERE id = '{young}'")
    assert find_violations(copy) == [f"ledger row {young_tx} (a deposit): 0 deposit.created events, expected 1"]


async def test_a_redelivery_of_a_purged_event_is_not_found(api: Api, db_path: str, clock: FakeClock, server: Any) -> None:
    _, old = await deposit_event(api)
    await dispatched(server, clock)
    clock.advance(days=31)
    await sweep_once(server.app[STORE], clock.now)
    again = await api.call("redeliverEvent", {"id": old})
    assert again.error is not None and again.error["kind"] == "not_found"
    assert json.dumps(again.error).find("event not found") >= 0


async def test_an_event_after_a_purge_that_took_every_event_is_dispatched(
    api: Api, db_path: str, clock: FakeClock, server: Any
) -> None:
    """A purge may empty the outbox, and SQLite then numbers the next event from 1 again: it is
    dispatched all the same (a dispatch that found its events from a cursor would need that
    cursor brought back by the purge: tried, README "The outbox's cost")."""
    await deposit_event(api)
    await deposit_event(api)
    await dispatched(server, clock)
    clock.advance(days=31)
    await sweep_once(server.app[STORE], clock.now)
    assert (await ok(api, "listEvents", {"limit": 100}))["events"] == []
    _, young = await deposit_event(api)
    await dispatched(server, clock)  # (the app's own sender may have been first)
    assert rows(db_path, f"SELECT dispatched FROM events WHERE id = '{young}'") == [(1,)]
    assert find_violations(db_path) == []
