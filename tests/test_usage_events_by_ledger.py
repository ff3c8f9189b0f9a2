"""A user's usage.recorded events found through the ledger (SQLite migration 12): the event is
written without its account and its ledger row is `evented`, in the half of the ledger's usage
index for rows with an event; listEvents' userId filter merges that half with events_user, and
the readers of a user's usage rows (getUsage, the usage totals alerts and caps count) walk both
halves. What a caller sees is the same on both backends (PostgreSQL keeps events_user for every
event), so these tests run on both: an endpoint on usage.recorded that comes, goes and comes
back leaves a user's usage rows in both halves, and every listing, page by page from every
cursor, must still answer what the org's whole listing says. The invariants checker holds the
rest: a row is `evented` exactly when it has its usage.recorded."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import pytest

from old_schema import sqlite_before
from conftest import BACKEND, Api, make_app, ok
from invariants import find_violations
from test_events_by_user import about
from test_webhook_endpoints import HOOK, create
from zapbilling.app import EVENTS_KEEP, STORE, sweep_once
from zapbilling.config import Config, server_options
from zapbilling.limits import Limits
from zapbilling.store.migrations import migrate, scripts

ALICE, BOB = "hanzo/alice", "hanzo/bob"
EVERYTHING = 1000
MINUTE = 60_000_000


@pytest.fixture
async def server(aiohttp_server, db_path, clock):
    """With --webhook-allow-private (endpoints on the discard port), and no sender of its own: the
    tests dispatch when they choose, so no delivery left pending keeps an event from the purge."""
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, deliver=False, limits=Limits(webhook_allow_private=True))
    return await aiohttp_server(make_app(config), **server_options(config))


async def usage(api: Api, user: str, request_id: str, amount: int = 10) -> str:
    return (await ok(api, "recordUsage", {"user": user, "amount": amount, "requestId": request_id}))["transactionId"]  # type: ignore[no-any-return]


async def both_halves(api: Api) -> dict[str, bool]:
    """Alice's usage rows with and without an event, Bob's between them and other events about
    both; the transaction ids of Alice's usage rows, each with whether it has its event.
    The first write after the endpoint comes (and after it goes) is the one whose row the
    store first files in the wrong half and moves (sqlite/ledger.py append_entry)."""
    had: dict[str, bool] = {}
    await ok(api, "deposit", {"user": ALICE, "amount": 100_000})
    await ok(api, "deposit", {"user": BOB, "amount": 100_000})
    for n in range(2):
        had[await usage(api, ALICE, f"a-none-{n}")] = False
    hook = await create(api, HOOK, ["usage.recorded"])
    for n in range(3):
        had[await usage(api, ALICE, f"a-on-{n}")] = True
        await usage(api, BOB, f"b-on-{n}")
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 40})
    captured = await ok(api, "captureHold", {"id": hold["holdId"], "amount": 25})  # a capture is usage too
    had[captured["transactionId"]] = True
    await ok(api, "deposit", {"user": ALICE, "amount": 5})
    await ok(api, "deleteWebhookEndpoint", {"id": hook["id"]})
    for n in range(2):
        had[await usage(api, ALICE, f"a-off-{n}")] = False
    await create(api, HOOK, ["usage.recorded"])
    had[await usage(api, ALICE, "a-again")] = True
    await usage(api, BOB, "b-again")
    await ok(api, "deposit", {"user": ALICE, "amount": 6})
    return had


async def walk(api: Api, op: str, params: dict[str, Any], key: str, limit: int) -> list[dict[str, Any]]:
    """Every page of `op` at `limit`, each asked after the last item of the one before."""
    out: list[dict[str, Any]] = []
    params = dict(params, limit=limit)
    for _ in range(100):  # these histories are far shorter: a cursor that does not move fails, not hangs
        page = await ok(api, op, params)
        assert page["count"] == len(page[key]) <= limit
        out += page[key]
        if not page["hasMore"]:
            return out
        params["startingAfter"] = page[key][-1]["id" if key == "events" else "transactionId"]
    raise AssertionError(f"{op} still has more after 100 pages")


async def test_a_users_events_page_by_page_with_usage_in_both_halves(any_api, server, clock, db_path):
    had = await both_halves(any_api)
    every = (await ok(any_api, "listEvents", {"limit": EVERYTHING}))["events"]
    alice = [e for e in every if about(e) == ALICE]
    usage_events = [e["data"]["transactionId"] for e in alice if e["type"] == "usage.recorded"]
    assert usage_events == [tx for tx, evented in reversed(had.items()) if evented]  # newest first
    assert {e["type"] for e in alice} == {"deposit.created", "usage.recorded", "hold.captured"}
    if BACKEND == "sqlite":  # newest first is the outbox's order
        with closing(sqlite3.connect(db_path)) as conn:
            assert [e["id"] for e in every] == [i for i, in conn.execute("SELECT id FROM events ORDER BY seq DESC")]
    for limit in (1, 2, 3, 5, EVERYTHING):
        # every type at once (SQLite: events_tenant_type's ranges merged, migration 14)
        assert await walk(any_api, "listEvents", {}, "events", limit) == every, limit
        assert await walk(any_api, "listEvents", {"userId": ALICE}, "events", limit) == alice, limit
        assert await walk(any_api, "listEvents", {"userId": ALICE, "type": "usage.recorded"}, "events", limit) == [
            e for e in alice if e["type"] == "usage.recorded"], limit
    # from every one of the org's events as the cursor: Alice's older than it
    for n, cursor in enumerate(every):
        page = await ok(any_api, "listEvents", {"startingAfter": cursor["id"], "limit": 3})
        assert page["events"] == every[n + 1:n + 4], cursor["type"]
        page = await ok(any_api, "listEvents", {"userId": ALICE, "startingAfter": cursor["id"], "limit": EVERYTHING})
        assert page["events"] == [e for e in every[n + 1:] if about(e) == ALICE], cursor["type"]
        page = await ok(any_api, "listEvents", {"userId": ALICE, "type": "usage.recorded", "startingAfter": cursor["id"], "limit": 2})
        assert page["events"] == [e for e in every[n + 1:] if about(e) == ALICE and e["type"] == "usage.recorded"][:2]
    # getUsage: every usage row of Alice's, both halves merged newest first, page by page
    for limit in (1, 2, 4, EVERYTHING):
        rows = await walk(any_api, "getUsage", {"user": ALICE}, "usage", limit)
        assert [r["transactionId"] for r in rows] == list(reversed(had)), limit
    assert find_violations(db_path) == []


async def test_usage_totals_count_both_halves(any_api, server, clock, db_path):
    """usage_above counts the month's usage from a running total brought up to date by the rows
    written since (sqlite/alerts.py USED_SINCE): rows in both halves must all count, once."""
    alert = await ok(any_api, "createAlert", {"type": "usage_above", "userId": ALICE, "threshold": 105, "period": "month"})
    had = await both_halves(any_api)  # Alice: 8 usage rows of 10 and the capture's 25 = 105: not above
    assert len(had) == 9
    assert (await ok(any_api, "listEvents", {"type": "alert.triggered"}))["events"] == []
    await usage(any_api, ALICE, "a-over", 1)  # 106 > 105
    (event,) = (await ok(any_api, "listEvents", {"type": "alert.triggered"}))["events"]
    assert (event["data"]["alertId"], event["data"]["value"]) == (alert["id"], 106)
    assert find_violations(db_path) == []


async def test_purged_usage_events_leave_the_rest_listed(any_api, server, clock, db_path):
    """Events past their retention are deleted; their rows stay `evented` and are not walked (the
    walk starts at the oldest usage.recorded event left)."""
    async def usage_events(prefix: str, n: int) -> list[str]:
        """n usage rows with their events, and those dispatched with no delivery pending (the
        endpoint is gone by then): nothing keeps them past their retention."""
        hook = await create(any_api, HOOK, ["usage.recorded"])
        made = [await usage(any_api, ALICE, f"{prefix}-{i}") for i in range(n)]
        await ok(any_api, "deleteWebhookEndpoint", {"id": hook["id"]})
        while await server.app[STORE].dispatch_events(clock.now) > 0:
            pass
        return made

    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})
    old = await usage_events("old", 3)
    born = clock.now
    clock.advance(days=29)
    young = await usage_events("young", 2)
    clock.now = born + EVENTS_KEEP + 2 * MINUTE
    await sweep_once(server.app[STORE], clock.now)
    listed = (await ok(any_api, "listEvents", {"userId": ALICE, "type": "usage.recorded"}))["events"]
    assert [e["data"]["transactionId"] for e in listed] == young[::-1]
    listed = (await ok(any_api, "listEvents", {"userId": ALICE}))["events"]
    assert [e["data"]["transactionId"] for e in listed] == young[::-1]  # the deposit's event went with the old ones
    gone = await any_api.call("getEvent", {"id": "evt_" + old[0].removeprefix("tx_")})
    assert gone.error is not None and gone.error["kind"] == "not_found"
    assert find_violations(db_path) == []


# -- migration 0012 ----------------------------------------------------------------------------

_MINE = next(v for v, n, _ in scripts() if n == "usage_events_by_ledger")


@pytest.mark.sqlite_only("the SQLite migration script")
def test_the_sqlite_migration_files_earlier_usage_events_by_their_rows(tmp_path):
    conn = sqlite_before(tmp_path / "old.db", _MINE)
    for n, tx in enumerate(["tx_a", "tx_b", "tx_c"]):
        conn.execute("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, created_at, key_id)"
                     " VALUES (?, 1, 'hanzo/alice', 'usd', 'withdraw', 5, 'api-usage', ?, 'key_1')", (tx, n))
    conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject, user_id)"
                 " VALUES ('evt_b', 1, 'usage.recorded', '{\"user\":\"hanzo/alice\"}', 1, 'tx_b', 'hanzo/alice')")
    conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject, user_id)"
                 " VALUES ('evt_d', 1, 'deposit.created', '{\"user\":\"hanzo/alice\"}', 2, 'tx_d', 'hanzo/alice')")

    assert _MINE in migrate(conn)
    assert dict(conn.execute("SELECT id, evented FROM ledger").fetchall()) == {"tx_a": 0, "tx_b": 1, "tx_c": 0}
    assert dict(conn.execute("SELECT id, user_id FROM events").fetchall()) == {"evt_b": None, "evt_d": "hanzo/alice"}
    indexes = {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'ledger_usage%'")}
    assert set(indexes) == {"ledger_usage", "ledger_usage_evented"}
    # each half answers the rows it holds, in seq order, by its own index
    for half, ids in ((0, ["tx_c", "tx_a"]), (1, ["tx_b"])):
        sql = (f"SELECT id FROM ledger WHERE tenant = 1 AND user_id = 'hanzo/alice' AND tags = 'api-usage' AND evented = {half}"
               " ORDER BY seq DESC")
        assert [r[0] for r in conn.execute(sql)] == ids
        plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert plan == f"SEARCH ledger USING INDEX {'ledger_usage_evented' if half else 'ledger_usage'} (tenant=? AND user_id=?)", plan


# -- migration 0015 ----------------------------------------------------------------------------

_OUT_OF_SUBJECTS = next(v for v, n, _ in scripts() if n == "usage_events_outside_subject_index")


@pytest.mark.sqlite_only("the SQLite migration script and store")
def test_usage_events_leave_events_subject_and_stay_one_per_row_by_their_id(tmp_path):
    """Migration 15 takes usage.recorded events out of events_subject (their ids are their rows',
    unique by the id's own index) and keeps every other event with a subject in it: a second
    event of another type about one subject is still refused, a second usage.recorded of one row
    too (by its id), and the store finds a row's usage event through the id."""
    from zapbilling.store.sqlite.outbox import emit
    from zapbilling.store.sqlite.webhooks import _user_events

    conn = sqlite_before(tmp_path / "old.db", _OUT_OF_SUBJECTS)
    conn.execute("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, created_at, key_id, evented)"
                 " VALUES ('tx_000000000000000000000001', 1, 'hanzo/alice', 'usd', 'withdraw', 5, 'api-usage', 1, 'key_1', 1)")
    conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject)"
                 " VALUES ('evt_000000000000000000000001', 1, 'usage.recorded', '', 1, 'tx_000000000000000000000001')")
    conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject, user_id)"
                 " VALUES ('evt_d', 1, 'deposit.created', '{\"user\":\"hanzo/alice\"}', 2, 'tx_d', 'hanzo/alice')")
    assert _OUT_OF_SUBJECTS in migrate(conn)

    def subject_refuses(type: str, subject: str) -> bool:
        """Whether events_subject refuses another event of `type` about `subject` (another id)."""
        try:
            conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject) VALUES ('evt_probe', 1, ?, '', 9, ?)",
                         (type, subject))
        except sqlite3.IntegrityError:
            return True
        conn.execute("DELETE FROM events WHERE id = 'evt_probe'")
        return False

    assert not subject_refuses("usage.recorded", "tx_000000000000000000000001")  # the older usage event left the index
    assert subject_refuses("deposit.created", "tx_d")
    conn.execute("BEGIN")
    tx = "tx_000000000000000000000002"
    conn.execute("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, created_at, key_id, evented)"
                 " VALUES (?, 1, 'hanzo/alice', 'usd', 'withdraw', 5, 'api-usage', 3, 'key_1', 1)", (tx,))
    assert emit(conn, 1, "usage.recorded", None, 3, tx, "evt_" + tx[3:]) == "evt_" + tx[3:]
    assert not subject_refuses("usage.recorded", tx)  # nor is the new one in it
    with pytest.raises(sqlite3.IntegrityError):  # a second usage.recorded of the row: its id is taken
        emit(conn, 1, "usage.recorded", None, 4, tx, "evt_" + tx[3:])
    assert emit(conn, 1, "deposit.created", {"user": "hanzo/alice"}, 4, "tx_d") is None  # one event per change, as before
    conn.execute("COMMIT")
    params = {"tenant": 1, "user": "hanzo/alice", "seq": 2**63 - 1, "limit": 10, "type": None}
    listed = [r[0] for r in conn.execute(_user_events("tenant = :tenant", None), params)]
    assert listed == ["evt_" + tx[3:], "evt_d", "evt_000000000000000000000001"]


def _steps(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> tuple[list[Any], int]:
    """The statement's rows and how many of SQLite's VM instructions it took (in hundreds)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        return conn.execute(sql, params).fetchall(), steps
    finally:
        conn.set_progress_handler(None, 0)


def _usage_rows(conn: sqlite3.Connection, purged: int, kept: int) -> None:
    """`purged + kept` evented usage rows of one user, only the last `kept` still with their
    usage.recorded event (the rest's were deleted by the outbox's purge)."""
    for n in range(purged + kept):
        tx = f"tx_{n:024d}"
        conn.execute("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, created_at, key_id, evented)"
                     " VALUES (?, 1, 'hanzo/alice', 'usd', 'withdraw', 5, 'api-usage', ?, 'key_1', 1)", (tx, n))
        if n >= purged:
            conn.execute("INSERT INTO events (id, tenant, type, data, created_at, subject)"
                         " VALUES (?, 1, 'usage.recorded', '{}', ?, ?)", ("evt_" + tx[3:], n, tx))


@pytest.mark.sqlite_only("the SQLite store's statement")
def test_rows_whose_events_were_purged_are_not_walked(tmp_path):
    """A user's usage.recorded events are walked from the ledger's evented rows, and the rows
    whose events the purge deleted are never walked: a listing costs the same behind 3,000 of
    them as behind none (the walk starts at the row of the tenant's oldest event left)."""
    from zapbilling.store.sqlite.webhooks import _user_events

    costs = []
    for purged in (0, 3000):
        conn = sqlite3.connect(tmp_path / f"{purged}.db", isolation_level=None)
        migrate(conn)
        conn.execute("BEGIN")
        _usage_rows(conn, purged, 5)
        conn.execute("COMMIT")
        params = {"tenant": 1, "user": "hanzo/alice", "seq": 2**63 - 1, "limit": 100, "type": None}
        for type in (None, "usage.recorded"):
            rows, steps = _steps(conn, _user_events("tenant = :tenant", type), params)
            assert [r[0] for r in rows] == [f"evt_{n:024d}" for n in range(purged + 4, purged - 1, -1)]
            costs.append(steps)
        conn.close()
    assert costs[2] <= costs[0] + 2 and costs[3] <= costs[1] + 2, costs  # a few hundred instructions of deeper indexes at most


@pytest.mark.sqlite_only("the SQLite store's statement")
def test_a_page_of_every_type_costs_its_rows_not_the_tenants_events(tmp_path):
    """listEvents without a type merges one range of events_tenant_type per type the tenant has
    (migration 14 dropped events_tenant): the types and a page cost the same behind 3,000 older
    events as behind none."""
    from zapbilling.store.sqlite.webhooks import _TYPES, _all_events

    newest = ["deposit.created", "usage.recorded", "refund.created", "hold.captured", "deposit.created"]
    costs = []
    for older in (0, 3000):
        conn = sqlite3.connect(tmp_path / f"{older}.db", isolation_level=None)
        migrate(conn)
        conn.execute("BEGIN")
        for n, type in [(n, "usage.recorded") for n in range(older)] + [(older + n, t) for n, t in enumerate(newest)]:
            conn.execute("INSERT INTO events (id, tenant, type, data, created_at) VALUES (?, 1, ?, '{}', ?)",
                         (f"evt_{n:024d}", type, n))
        conn.execute("COMMIT")
        types, found = _steps(conn, _TYPES, {"tenant": 1})
        assert [t for t, _ in types] == sorted(set(newest)) and {n for _, n in types} == {older + 5}
        params = {"tenant": 1, "seq": 2**63 - 1, "limit": 3} | {f"t{i}": t for i, (t, _) in enumerate(types)}
        rows, listed = _steps(conn, _all_events(len(types)), params)
        assert [r[0] for r in rows] == [f"evt_{older + n:024d}" for n in (4, 3, 2)]
        costs.append(found + listed)
        conn.close()
    assert costs[1] <= costs[0] + 2, costs  # a few hundred instructions of deeper indexes at most


@pytest.mark.sqlite_only("the SQLite store's two reads")
async def test_a_page_of_every_type_is_as_of_its_types(api, server, clock):
    """The unfiltered listing reads the tenant's types, then merges their ranges. An event of a
    type first written between the two reads is not in the page, and neither is anything younger:
    a page never holds an event younger than one it leaves out."""
    from outbox_rows import emit
    from test_webhook_endpoints import tenant_of

    store = server.app[STORE]
    first = (await ok(api, "deposit", {"user": ALICE, "amount": 100}))["transactionId"]
    read, calls = store._read, 0

    async def with_writes_between(sql: str, params: Any = ()) -> Any:
        nonlocal calls
        calls += 1
        rows = await read(sql, params)
        if calls == 1:  # the types were read: a first event of a new type, then a younger deposit
            await emit(store, await tenant_of(server), "spend_cap.reached", {"user": ALICE}, clock.now)
            await ok(api, "deposit", {"user": ALICE, "amount": 5})
        return rows

    store._read = with_writes_between
    try:
        page = await ok(api, "listEvents", {})
    finally:
        store._read = read
    assert calls >= 2
    assert [(e["type"], e["data"]["transactionId"]) for e in page["events"]] == [("deposit.created", first)]
    assert [e["type"] for e in (await ok(api, "listEvents", {}))["events"]] == [
        "deposit.created", "spend_cap.reached", "deposit.created"]
