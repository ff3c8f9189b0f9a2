"""Webhook delivery (zapbilling/events/): Standard Webhooks signatures checked by the
`standardwebhooks` package from PyPI (a verifier nobody here wrote), a real HTTP receiver on
loopback, the retry schedule driven by an injected clock (never by waiting), endpoint disabling,
the delivery-time address check, and the faults: a server SIGKILLed between the commit and the
delivery, a receiver down then up, 500 then 200, several servers (or worker processes) sharing
one database, each attempt made by exactly one of them. Both backends.

Endpoints are made through the API (createWebhookEndpoint, rotateWebhookSecret) where the
server runs in this process, and the delivery log read back with getEvent; events are written
into the outbox directly (SQL, as the write paths do in their own transactions), and so are the
endpoints of the tests that start server processes or need an endpoint the API would refuse.
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
import time
from collections import Counter
from contextlib import closing
from typing import Any, Awaitable, Callable

import asyncpg
import psutil
import pytest
from aiohttp import ClientSession, ClientTimeout, web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import pg
from conftest import BACKEND, Api, FakeClock, ok, make_app
from procs import ServerProcess, create_key, free_port
from zapbilling.app import STORE
from zapbilling.config import Config, server_options
from zapbilling.events import schedule
from zapbilling.events.sender import DISABLE_AFTER
from zapbilling.events.signing import signature, secret_key
from zapbilling.limits import Limits
from zapbilling.metrics.families import WEBHOOK_DELIVERIES
from zapbilling.store.ids import new_id
from zapbilling.times import format_ts, system_clock

DEADLINE = 60.0
"""Seconds a wait for the sender may take before the test gives up: a bound, never a measure."""


# -- the database, whichever backend -----------------------------------------------------------
async def sql(db: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement (SQLite's `?` placeholders) and commit; its rows."""
    if pg.is_url(db):
        conn = await asyncpg.connect(db)
        try:
            return [tuple(r) for r in await conn.fetch(pg.dollar_params(query), *params)]
        finally:
            await conn.close()
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        rows = conn.execute(query, params).fetchall()
        conn.commit()
        return rows


async def tenant(db: str, org: str = "acme", mode: str = "live") -> int:
    rows = await sql(db, "SELECT id FROM tenants WHERE org = ? AND mode = ?", org, mode)
    if rows:
        return int(rows[0][0])
    await sql(db, "INSERT INTO tenants (org, mode) VALUES (?, ?)", org, mode)
    return await tenant(db, org, mode)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def add_endpoint(db: str, tenant_id: int, url: str, events: list[str] | None = None, now: int = 0) -> tuple[str, str]:
    endpoint_id, secret = new_id("we"), new_secret()
    await sql(db, "INSERT INTO webhook_endpoints (id, tenant, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?, ?)",
              endpoint_id, tenant_id, url, json.dumps(events or ["*"]), secret, now or int(time.time() * 1e6))
    return endpoint_id, secret


async def add_events(db: str, tenant_id: int, n: int, now: int, type: str = "deposit.created") -> list[str]:
    ids = [new_id("evt") for _ in range(n)]
    for i, event_id in enumerate(ids):
        await sql(db, "INSERT INTO events (id, tenant, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
                  event_id, tenant_id, type, json.dumps({"id": f"txn_{i}", "amount": 100 + i}), now)
    return ids


async def attempts(db: str, event_id: str) -> list[tuple[Any, ...]]:
    """The event's attempts: (attempt, status, response status, error), in order."""
    return [tuple(r) for r in await sql(
        db, "SELECT a.attempt, a.status, a.response_status, a.error FROM delivery_attempts a JOIN deliveries d ON d.seq = a.delivery"
            " WHERE d.event_id = ? ORDER BY d.seq, a.attempt", event_id)]


async def delivery(db: str, event_id: str) -> tuple[Any, ...]:
    """(status, attempts, due_at) of the event's one delivery."""
    rows = await sql(db, "SELECT status, attempts, due_at FROM deliveries WHERE event_id = ?", event_id)
    assert len(rows) == 1, rows
    return tuple(rows[0])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE:g} s: {what}")
        await asyncio.sleep(0.02)


# -- a receiver on loopback ----------------------------------------------------------------------
class Receiver:
    """A real HTTP server on 127.0.0.1 keeping every request it gets; `answer(hit)` picks each
    status (hit: the requests with that webhook-id so far, this one included). Can go down and
    come back on the same port."""

    def __init__(self, answer: Callable[[int], int] = lambda hit: 200, port: int | None = None):
        self.answer, self.port = answer, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.hits: list[tuple[dict[str, str], bytes]] = []
        self.hold: asyncio.Event | None = None
        """When set to an Event: every request waits for it before it is answered."""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits.append(({k.lower(): v for k, v in request.headers.items()}, body))
        hit = sum(1 for h, _ in self.hits if h.get("webhook-id") == request.headers.get("webhook-id"))
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.answer(hit), text="ok")

    async def up(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> Counter[str]:
        return Counter(h["webhook-id"] for h, _ in self.hits)


@pytest.fixture
async def receiver():
    r = await Receiver().up()
    yield r
    if r.hold is not None:
        r.hold.set()
    await r.down()


def config(db: str, clock: FakeClock, **limits: Any) -> Config:
    return Config(db=db, clock=clock, sweep_seconds=3600, webhook_poll_seconds=0.02,
                  limits=Limits(**{"webhook_allow_private": True, **limits}))


@pytest.fixture
async def hooks(aiohttp_server, db_path, clock):
    """An in-process server (with the injected clock) that may deliver to loopback."""
    cfg = config(db_path, clock)
    return await aiohttp_server(make_app(cfg), **server_options(cfg))


@pytest.fixture
async def api(hooks, session) -> Api:
    """An admin key of acme/live on the `hooks` server, over REST."""
    _, key = await hooks.app[STORE].create_key("acme", "live", "admin", system_clock())
    return Api(session, str(hooks.make_url("")).rstrip("/"), key)


async def create_endpoint(api: Api, url: str, events: list[str] | None = None) -> tuple[str, str]:
    made = await ok(api, "createWebhookEndpoint", {"url": url, "events": events or ["*"]})
    return made["id"], made["secret"]


def attempts_counted(outcome: str) -> float:
    """zapbilling_webhook_deliveries_total{outcome} in this process (the in-process servers')."""
    return WEBHOOK_DELIVERIES.labels(outcome)._value.get()  # type: ignore[attr-defined,no-any-return]


def verify(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return Webhook(secret).verify(body, {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})


# -- signatures ---------------------------------------------------------------------------------
def test_our_signature_is_the_libraries_signature():
    from datetime import datetime, timezone

    secret, body = new_secret(), b'{"id":"evt_1","type":"deposit.created","data":{}}'
    theirs = Webhook(secret).sign("evt_1", datetime.fromtimestamp(1_700_000_000, timezone.utc), body)
    assert signature(secret_key(secret), "evt_1", 1_700_000_000, body) == theirs


async def test_a_delivery_is_the_event_signed_to_standard_webhooks(api, db_path, clock, receiver):
    endpoint_id, secret = await create_endpoint(api, receiver.url)
    t = await tenant(db_path)
    [event_id] = await add_events(db_path, t, 1, clock())
    await until(lambda: _done(db_path, event_id), "the delivery succeeded")
    [(headers, body)] = receiver.hits
    assert headers["webhook-id"] == event_id
    assert headers["webhook-timestamp"] == str(clock() // 1_000_000)
    assert headers["content-type"] == "application/json"
    assert verify(secret, headers, body) == {
        "id": event_id, "type": "deposit.created", "createdAt": format_ts(clock()), "data": {"id": "txn_0", "amount": 100},
    }
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, body)
    assert await attempts(db_path, event_id) == [(1, "succeeded", 200, None)]
    assert await delivery(db_path, event_id) == ("succeeded", 1, clock())
    assert (await sql(db_path, "SELECT dispatched FROM events WHERE id = ?", event_id))[0][0] == 1


async def test_a_deposit_is_delivered_as_the_event_the_api_shows(api, db_path, receiver):
    """End to end: the write path records the event in the deposit's transaction, the sender
    delivers it; the body is the event as getEvent shows it."""
    _, secret = await create_endpoint(api, receiver.url, ["deposit.created"])
    deposit = await ok(api, "deposit", {"user": "hanzo/alice", "amount": 1250, "currency": "usd"})

    async def arrived() -> bool:
        return len(receiver.hits) == 1

    await until(arrived, "the deposit's event delivered")
    headers, body = receiver.hits[0]
    delivered = verify(secret, headers, body)
    shown = await ok(api, "getEvent", {"id": headers["webhook-id"]})
    assert delivered == {k: shown[k] for k in ("id", "type", "createdAt", "data")}
    assert delivered["type"] == "deposit.created"
    assert (delivered["data"]["transactionId"], delivered["data"]["amount"]) == (deposit["transactionId"], 1250)


async def test_usage_recorded_is_delivered_and_read_as_its_transaction(api, db_path, receiver):
    """A usage.recorded's data (on SQLite made from its ledger row when read: store/sqlite/
    outbox.py USAGE_DATA) is the usage row as listTransactions shows it, in the delivered body,
    getEvent and every listEvents walk (unfiltered, by type, by user): a recordUsage whose
    metadata has text outside ASCII and large numbers, and a hold's capture (its holdId)."""
    _, secret = await create_endpoint(api, receiver.url, ["usage.recorded"])
    user = "hanzo/zoë"
    await ok(api, "deposit", {"user": user, "amount": 5000})
    usage = await ok(api, "recordUsage", {"user": user, "amount": 7, "model": "modèle ✓ 日本", "provider": "a\"b",
                                          "totalTokens": 2**62, "premium": True, "requestId": "r-ü"})
    hold = await ok(api, "createHold", {"user": user, "amount": 40})
    capture = await ok(api, "captureHold", {"id": hold["holdId"], "amount": 4, "model": "m"})
    rows = {t["transactionId"]: t for t in (await ok(api, "listTransactions", {"user": user}))["transactions"]}

    async def arrived() -> bool:
        return len(receiver.hits) == 2

    await until(arrived, "both usage events delivered")
    delivered = {verify(secret, h, b)["data"]["transactionId"]: verify(secret, h, b) for h, b in receiver.hits}
    assert set(delivered) == {usage["transactionId"], capture["transactionId"]}
    assert delivered[capture["transactionId"]]["data"]["holdId"] == hold["holdId"]
    assert delivered[usage["transactionId"]]["data"]["metadata"]["model"] == "modèle ✓ 日本"
    listings = [(await ok(api, "listEvents", params))["events"] for params in (
        {}, {"type": "usage.recorded"}, {"userId": user}, {"userId": user, "type": "usage.recorded"})]
    for tx_id, event in delivered.items():
        assert event["data"] == rows[tx_id]
        shown = await ok(api, "getEvent", {"id": event["id"]})
        assert {k: shown[k] for k in ("id", "type", "createdAt", "data")} == event
        for listed in listings:
            assert [e for e in listed if e["id"] == event["id"]] == [event]


async def _done(db: str, event_id: str, status: str = "succeeded") -> bool:
    rows = await sql(db, "SELECT status FROM deliveries WHERE event_id = ?", event_id)
    return bool(rows) and all(r[0] == status for r in rows)


async def test_during_a_rotation_each_secret_verifies_and_after_it_only_the_new(api, db_path, clock, receiver):
    endpoint_id, old = await create_endpoint(api, receiver.url)
    rotated = await ok(api, "rotateWebhookSecret", {"id": endpoint_id})
    new = rotated["secret"]
    assert new != old
    t = await tenant(db_path)
    [during] = await add_events(db_path, t, 1, clock())
    await until(lambda: _done(db_path, during), "the delivery during the rotation")
    headers, body = receiver.hits[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(new, headers, body)["id"] == during
    assert verify(old, headers, body)["id"] == during

    # The 24 h are over. (Moved in the database, not by the clock: standardwebhooks refuses a
    # webhook-timestamp more than 5 minutes away from its own clock.)
    assert await sql(db_path, "SELECT old_secret_until FROM webhook_endpoints WHERE id = ?", endpoint_id) == [(clock() + 86_400_000_000,)]
    await sql(db_path, "UPDATE webhook_endpoints SET old_secret_until = ? WHERE id = ?", clock(), endpoint_id)
    [after] = await add_events(db_path, t, 1, clock())
    await until(lambda: _done(db_path, after), "the delivery after the rotation")
    headers, body = receiver.hits[1]
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert verify(new, headers, body)["id"] == after
    with pytest.raises(WebhookVerificationError):
        verify(old, headers, body)


# -- subscriptions ------------------------------------------------------------------------------
async def test_an_event_goes_to_the_endpoints_subscribed_when_it_is_dispatched(hooks, db_path, clock):
    t, other = await tenant(db_path), await tenant(db_path, "globex")
    receivers = {name: await Receiver().up() for name in ("all", "usage", "deposits", "disabled", "deleted", "other_org")}
    try:
        ids = {
            "all": (await add_endpoint(db_path, t, receivers["all"].url, ["*"]))[0],
            "usage": (await add_endpoint(db_path, t, receivers["usage"].url, ["usage.recorded"]))[0],
            "deposits": (await add_endpoint(db_path, t, receivers["deposits"].url, ["deposit.created", "hold.expired"]))[0],
            "disabled": (await add_endpoint(db_path, t, receivers["disabled"].url, ["*"]))[0],
            "deleted": (await add_endpoint(db_path, t, receivers["deleted"].url, ["*"]))[0],
            "other_org": (await add_endpoint(db_path, other, receivers["other_org"].url, ["*"]))[0],
        }
        await sql(db_path, "UPDATE webhook_endpoints SET status = 'disabled' WHERE id = ?", ids["disabled"])
        await sql(db_path, "UPDATE webhook_endpoints SET deleted_at = ? WHERE id = ?", clock(), ids["deleted"])
        [deposit] = await add_events(db_path, t, 1, clock(), "deposit.created")
        [usage] = await add_events(db_path, t, 1, clock(), "usage.recorded")
        [grant] = await add_events(db_path, t, 1, clock(), "grant.voided")
        for e in (deposit, usage, grant):
            await until(lambda e=e: _done(db_path, e), "every delivery")
        got = {name: sorted(r.ids()) for name, r in receivers.items()}
        assert got == {"all": sorted([deposit, grant]), "usage": [usage], "deposits": [deposit],
                       "disabled": [], "deleted": [], "other_org": []}
    finally:
        for r in receivers.values():
            await r.down()


# -- retries ------------------------------------------------------------------------------------
async def test_500_then_200_delivers_the_same_webhook_id_twice(api, db_path, clock):
    receiver = await Receiver(lambda hit: 500 if hit == 1 else 200).up()
    ok_before, failed_before = attempts_counted("ok"), attempts_counted("failed")
    try:
        endpoint_id, secret = await create_endpoint(api, receiver.url)
        t = await tenant(db_path)
        [event_id] = await add_events(db_path, t, 1, clock())
        await until(lambda: _attempted(db_path, event_id, 1), "the first attempt")
        status, made, due = await delivery(db_path, event_id)
        assert (status, made) == ("pending", 1)
        assert schedule.FIRST_WAIT <= due - clock() <= schedule.FIRST_WAIT * (1 + schedule.JITTER)
        first_at = clock()
        shown = await ok(api, "getEvent", {"id": event_id})
        assert shown["deliveries"] == [
            {"endpointId": endpoint_id, "attempt": 1, "status": "failed", "responseStatus": 500, "error": "the receiver answered 500", "at": format_ts(first_at)},
            {"endpointId": endpoint_id, "attempt": 2, "status": "pending", "at": format_ts(due)},  # no responseStatus, no error: absent
        ]
        clock.now = due  # exactly (a float of seconds may round a microsecond short of it)
        await until(lambda: _done(db_path, event_id), "the second attempt succeeded")
        assert [h["webhook-id"] for h, _ in receiver.hits] == [event_id, event_id]
        first, second = receiver.hits
        assert first[1] == second[1]  # the same body
        assert verify(secret, *second) == verify(secret, *first)
        assert await attempts(db_path, event_id) == [(1, "failed", 500, "the receiver answered 500"), (2, "succeeded", 200, None)]
        shown = await ok(api, "getEvent", {"id": event_id})
        assert [(d["attempt"], d["status"], d.get("responseStatus")) for d in shown["deliveries"]] == [(1, "failed", 500), (2, "succeeded", 200)]
        assert (attempts_counted("ok") - ok_before, attempts_counted("failed") - failed_before) == (1, 1)
    finally:
        await receiver.down()


async def _attempted(db: str, event_id: str, n: int) -> bool:
    return len(await attempts(db, event_id)) >= n


async def test_the_retry_schedule_runs_on_the_injected_clock_then_the_delivery_fails(hooks, db_path, clock):
    receiver = await Receiver(lambda hit: 503).up()
    try:
        t = await tenant(db_path)
        await add_endpoint(db_path, t, receiver.url)
        start = clock()
        [event_id] = await add_events(db_path, t, 1, start)
        waits = []
        for n in range(1, schedule.ATTEMPTS + 1):
            await until(lambda n=n: _attempted(db_path, event_id, n), f"attempt {n}")
            status, made, due = await delivery(db_path, event_id)
            assert made == n
            if n < schedule.ATTEMPTS:
                assert status == "pending"
                wait = due - clock()
                base = schedule.base_wait(n)
                assert base <= wait <= base * (1 + schedule.JITTER), (n, wait, base)
                waits.append(wait)
                clock.now = due  # exactly when it is due (a float of seconds may round short of it)
        assert (await delivery(db_path, event_id))[0] == "failed"
        assert [w // 1_000_000 for w in map(schedule.base_wait, range(1, 8))] == [5, 30, 180, 1080, 6480, 38880, 43200]
        assert clock() - start >= 24 * 3600 * 1_000_000  # 8 attempts spread over more than 24 h
        assert len(receiver.hits) == schedule.ATTEMPTS
        assert await attempts(db_path, event_id) == [(n, "failed", 503, "the receiver answered 503") for n in range(1, 9)]
        clock.advance(days=3)
        await asyncio.sleep(0.3)  # several of the sender's turns (0.02 s apart): none may try again
        assert len(receiver.hits) == schedule.ATTEMPTS
    finally:
        await receiver.down()


def test_the_schedule_spans_more_than_a_day_in_at_least_8_attempts():
    class Low:
        def random(self) -> float:
            return 0.0

    class High:
        def random(self) -> float:
            return 0.999999

    assert schedule.ATTEMPTS >= 8
    for rng, lo in ((Low(), True), (High(), False)):
        now, total = 0, 0
        for n in range(1, schedule.ATTEMPTS):
            due = schedule.next_due(n, now, rng)  # type: ignore[arg-type]
            assert due is not None
            total += due - now
            now = due
        assert schedule.next_due(schedule.ATTEMPTS, now) is None
        if lo:
            assert total == sum(map(schedule.base_wait, range(1, 8))) >= 24 * 3600 * 1_000_000
        else:
            assert total < 1.2 * sum(map(schedule.base_wait, range(1, 8)))


async def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_up(hooks, db_path, clock):
    receiver = Receiver()  # not listening yet: connections are refused
    t = await tenant(db_path)
    await add_endpoint(db_path, t, receiver.url)
    ids = await add_events(db_path, t, 20, clock())
    for e in ids:
        await until(lambda e=e: _attempted(db_path, e, 1), "a first attempt of every event")
    for e in ids:
        [(n, status, code, error)] = await attempts(db_path, e)
        assert (n, status, code) == (1, "failed", None)
        assert error.startswith("cannot connect: "), error
    await receiver.up()
    try:
        clock.now += int(schedule.FIRST_WAIT * (1 + schedule.JITTER))  # past the longest first wait
        for e in ids:
            await until(lambda e=e: _done(db_path, e), "every event delivered")
        assert receiver.ids() == Counter({e: 1 for e in ids})
    finally:
        await receiver.down()


# -- bounds ---------------------------------------------------------------------------------------
async def test_a_slow_receiver_holds_only_its_own_slots(aiohttp_server, db_path, clock):
    cfg = config(db_path, clock, webhook_concurrency_per_endpoint=3)
    await aiohttp_server(make_app(cfg), **server_options(cfg))
    slow, fast = await Receiver().up(), await Receiver().up()
    slow.hold = asyncio.Event()
    try:
        t = await tenant(db_path)
        await add_endpoint(db_path, t, slow.url)
        await add_endpoint(db_path, t, fast.url)
        ids = await add_events(db_path, t, 10, clock())

        async def fast_has_all() -> bool:
            return len(fast.hits) == 10

        await until(fast_has_all, "the fast receiver got every event while the slow one holds its requests")
        assert len(slow.hits) == 3  # the per-endpoint bound: 3 under way, the other 7 wait
        slow.hold.set()

        async def slow_has_all() -> bool:
            return len(slow.hits) == 10

        await until(slow_has_all, "the slow receiver got the rest")
        assert slow.ids() == fast.ids() == Counter({e: 1 for e in ids})
    finally:
        slow.hold.set()
        await slow.down()
        await fast.down()


# -- the address check at delivery time -----------------------------------------------------------
async def test_without_allow_private_a_private_address_is_not_sent_to(aiohttp_server, db_path, clock, receiver):
    cfg = config(db_path, clock, webhook_allow_private=False)
    await aiohttp_server(make_app(cfg), **server_options(cfg))
    t = await tenant(db_path)
    # As if the endpoints had been created while the names pointed elsewhere.
    await add_endpoint(db_path, t, receiver.url, ["deposit.created"])
    await add_endpoint(db_path, t, f"http://localhost:{receiver.port}/hooks", ["grant.voided"])
    [literal] = await add_events(db_path, t, 1, clock(), "deposit.created")
    [named] = await add_events(db_path, t, 1, clock(), "grant.voided")
    await until(lambda: _attempted(db_path, literal, 1), "the literal address's attempt")
    await until(lambda: _attempted(db_path, named, 1), "the name's attempt")
    assert await attempts(db_path, literal) == [
        (1, "failed", None, "127.0.0.1 is a private address (the server runs without --webhook-allow-private)")]
    [(n, status, code, error)] = await attempts(db_path, named)
    assert (n, status, code) == (1, "failed", None)
    assert error.startswith("localhost resolves to ") and error.endswith(
        ", a private address (the server runs without --webhook-allow-private)"), error
    assert receiver.hits == []


# -- disabling ------------------------------------------------------------------------------------
async def test_an_endpoint_whose_last_50_deliveries_failed_is_disabled(api, db_path, clock):
    dead = Receiver()  # never up
    created = clock()
    endpoint_id, _ = await create_endpoint(api, dead.url, ["deposit.created", "usage.recorded"])
    t = await tenant(db_path)
    assert await sql(db_path, "SELECT usage_hooks FROM tenants WHERE id = ?", t) == [(1,)]
    ids = await add_events(db_path, t, DISABLE_AFTER, clock())
    for n in range(1, schedule.ATTEMPTS + 1):
        for e in ids:
            await until(lambda e=e, n=n: _attempted(db_path, e, n), f"attempt {n} of every delivery")
        if n < schedule.ATTEMPTS:
            assert await sql(db_path, "SELECT status FROM webhook_endpoints WHERE id = ?", endpoint_id) == [("enabled",)]
            clock.now += int(schedule.base_wait(n) * (1 + schedule.JITTER))  # past the longest wait
    for e in ids:
        await until(lambda e=e: _done(db_path, e, "failed"), "every delivery failed")
    assert await sql(db_path, "SELECT status, failed_in_row FROM webhook_endpoints WHERE id = ?", endpoint_id) == [("disabled", 50)]
    assert [(e["id"], e["status"]) for e in (await ok(api, "listWebhookEndpoints", {}))["endpoints"]] == [(endpoint_id, "disabled")]
    assert await sql(db_path, "SELECT usage_hooks FROM tenants WHERE id = ?", t) == [(0,)]
    disabled = await sql(db_path, "SELECT tenant, type, data FROM events WHERE type = 'webhook_endpoint.disabled'")
    assert len(disabled) == 1
    assert disabled[0][0] == t
    data = json.loads(disabled[0][2])
    assert data == {"id": endpoint_id, "url": dead.url, "events": ["deposit.created", "usage.recorded"], "description": "",
                    "status": "disabled", "createdAt": format_ts(created)}  # never the secret
    # A disabled endpoint is sent nothing more.
    [later] = await add_events(db_path, t, 1, clock())
    await until(lambda: _dispatched(db_path, later), "the later event dispatched")
    assert await sql(db_path, "SELECT COUNT(*) FROM deliveries WHERE event_id = ?", later) == [(0,)]


async def _dispatched(db: str, event_id: str) -> bool:
    return (await sql(db, "SELECT dispatched FROM events WHERE id = ?", event_id))[0][0] == 1


async def test_a_success_resets_the_count_of_failed_deliveries(api, db_path, clock):
    receiver = await Receiver(lambda hit: 200).up()
    try:
        endpoint_id, _ = await create_endpoint(api, receiver.url)
        t = await tenant(db_path)
        await sql(db_path, "UPDATE webhook_endpoints SET failed_in_row = 49 WHERE id = ?", endpoint_id)
        [e] = await add_events(db_path, t, 1, clock())
        await until(lambda: _done(db_path, e), "the delivery")
        assert await sql(db_path, "SELECT status, failed_in_row FROM webhook_endpoints WHERE id = ?", endpoint_id) == [("enabled", 0)]
    finally:
        await receiver.down()


# -- real server processes ------------------------------------------------------------------------
SERVE = ("--webhook-allow-private", "--webhook-timeout", "2")
"""2 s timeouts: a lease (timeout + 5 s) left by a killed server runs out in 7 s."""


async def test_a_server_killed_between_the_commit_and_the_delivery_delivers_after_restart(db_path, tmp_path, receiver):
    key = create_key(db_path, "acme", "live")
    server = ServerProcess(db_path, tmp_path, args=SERVE)
    await server.start_ready()
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        try:
            api = Api(session, server.base, key)
            _, secret = await create_endpoint(api, receiver.url, ["deposit.created"])
            receiver.hold = asyncio.Event()  # the attempt reaches the receiver and waits there
            deposit = await ok(api, "deposit", {"user": "hanzo/alice", "amount": 700, "currency": "usd"})

            async def arrived() -> bool:
                return len(receiver.hits) == 1

            await until(arrived, "the attempt reached the receiver")
            event_id = receiver.hits[0][0]["webhook-id"]
            server.crash()  # committed, leased, sent, not answered, nothing recorded (the sender process killed too)
            assert await attempts(db_path, event_id) == []
            receiver.hold.set()
            receiver.hold = None
            server = ServerProcess(db_path, tmp_path, args=SERVE)
            await server.start_ready()
            api = Api(session, server.base, key)
            await until(lambda: _done(db_path, event_id), "the delivery after the restart")
            assert [h["webhook-id"] for h, _ in receiver.hits] == [event_id, event_id]
            delivered = verify(secret, *receiver.hits[1])
            assert (delivered["type"], delivered["data"]["transactionId"]) == ("deposit.created", deposit["transactionId"])
            assert await attempts(db_path, event_id) == [(1, "succeeded", 200, None)]
            shown = await ok(api, "getEvent", {"id": event_id})
            assert [(d["attempt"], d["status"]) for d in shown["deliveries"]] == [(1, "succeeded")]
        finally:
            server.stop()


def sender_of(server: ServerProcess) -> list[psutil.Process]:
    return [c for c in psutil.Process(server.pid).children() if "sender_process" in " ".join(c.cmdline())]


def connected_to(proc: psutil.Process, port: int) -> bool:
    return any(c.raddr and c.raddr.port == port for c in proc.net_connections("tcp"))


async def test_serve_delivers_from_a_sender_process_of_its_own(db_path, tmp_path, receiver):
    """A single-process `serve` answers requests in its own process and delivers webhooks from
    one child process (zapbilling/sender_process.py): the receiver's connection is the child's,
    never the serving process's. A sender that dies is replaced and the next event still goes
    out; SIGTERM stops both; a server killed outright leaves no sender behind (its lifeline)."""
    key = create_key(db_path, "acme", "live")
    server = ServerProcess(db_path, tmp_path, args=SERVE)
    await server.start_ready()
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        try:
            api = Api(session, server.base, key)
            await create_endpoint(api, receiver.url, ["deposit.created"])
            first = await ok(api, "deposit", {"user": "u", "amount": 1})

            async def delivered() -> bool:
                return len(receiver.hits) == len(await sql(db_path, "SELECT 1 FROM deliveries WHERE status = 'succeeded'")) >= 1

            await until(delivered, "the first delivery")
            [sender] = sender_of(server)
            assert connected_to(sender, receiver.port) and not connected_to(psutil.Process(server.pid), receiver.port)
            assert json.loads(receiver.hits[0][1])["data"]["transactionId"] == first["transactionId"]

            sender.kill()  # a crash of the sender alone: the server starts another
            sender.wait(timeout=10)

            async def replaced() -> bool:
                return len(sender_of(server)) == 1 and sender_of(server)[0].pid != sender.pid

            await until(replaced, "another sender process")
            second = await ok(api, "deposit", {"user": "u", "amount": 2})

            async def both() -> bool:
                return len(receiver.hits) == 2

            await until(both, "the second delivery, by the new sender")
            assert json.loads(receiver.hits[1][1])["data"]["transactionId"] == second["transactionId"]
            assert "the webhook sender process (pid %d) exited with -9" % sender.pid in server.log()

            [sender] = sender_of(server)
            assert server.terminate() == 0
            assert not sender.is_running(), "a graceful stop stops the sender too"

            server = ServerProcess(db_path, tmp_path, args=SERVE)
            await server.start_ready()
            [sender] = sender_of(server)
            server.kill9()
            _, alive = psutil.wait_procs([sender], timeout=20)
            assert not alive, "the sender stops once its server is gone, even by SIGKILL"
        finally:
            server.stop()


async def test_several_servers_make_each_attempt_exactly_once(db_path, tmp_path):
    """PostgreSQL: two server processes on one database; SQLite: `--workers 2` on one file.
    Every event's first attempt answers 500, its second 200: each webhook-id reaches the
    receiver exactly twice, and the log holds exactly those two attempts."""
    receiver = await Receiver(lambda hit: 500 if hit == 1 else 200).up()
    create_key(db_path, "acme", "live")
    t = await tenant(db_path)
    _, secret = await add_endpoint(db_path, t, receiver.url)
    if BACKEND == "postgres":
        servers = [ServerProcess(db_path, tmp_path, args=SERVE) for _ in range(2)]
    else:
        servers = [ServerProcess(db_path, tmp_path, workers=2, args=SERVE)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            await s.wait_ready()
        ids = await add_events(db_path, t, 200, int(time.time() * 1e6))

        async def all_done() -> bool:
            rows = await sql(db_path, "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'")
            return rows[0][0] == len(ids)

        await until(all_done, "every delivery succeeded")
        assert receiver.ids() == Counter({e: 2 for e in ids})
        log = await sql(db_path, "SELECT d.event_id, a.attempt, a.status FROM delivery_attempts a JOIN deliveries d ON d.seq = a.delivery")
        assert Counter((a, s) for _, a, s in log) == Counter({(1, "failed"): 200, (2, "succeeded"): 200})
        assert {e for e, _, _ in log} == set(ids)
        for headers, body in receiver.hits:
            verify(secret, headers, body)
    finally:
        for s in servers:
            s.stop()
        await receiver.down()


# -- the README's receiver --------------------------------------------------------------------------
RECEIVER_EXAMPLE = '''
import asyncio
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(SECRET)  # the whsec_... secret createWebhookEndpoint answered
seen: set[str] = set()     # in production: a table with a unique key on the webhook-id
todo: asyncio.Queue = asyncio.Queue()

async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        event = webhook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.Response(status=400)
    if request.headers["webhook-id"] not in seen:  # else: a retry of an event already handled
        seen.add(request.headers["webhook-id"])
        todo.put_nowait(event)  # handled after the answer: answer fast, work later
    return web.Response(status=204)

app = web.Application()
app.router.add_post("/zapbilling", receive)
'''
"""README "Receiving webhooks" shows this receiver (with `web.run_app(app, port=8000)` after it)."""


async def test_the_readme_receiver_verifies_dedupes_and_answers_fast(api, db_path, clock):
    port = free_port()
    endpoint_id, secret = await create_endpoint(api, f"http://127.0.0.1:{port}/zapbilling")
    scope: dict[str, Any] = {"SECRET": secret}
    exec(RECEIVER_EXAMPLE, scope)
    runner = web.AppRunner(scope["app"])
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        t = await tenant(db_path)
        [event_id] = await add_events(db_path, t, 1, clock())
        await until(lambda: _done(db_path, event_id), "the delivery")
        assert (await ok(api, "redeliverEvent", {"id": event_id}))["queued"] == 1

        async def redelivered() -> bool:
            return len(await attempts(db_path, event_id)) == 2 and await _done(db_path, event_id)

        await until(redelivered, "the redelivery")
        assert [a[:3] for a in await attempts(db_path, event_id)] == [(1, "succeeded", 204), (1, "succeeded", 204)]
        todo = scope["todo"]
        assert todo.qsize() == 1  # the same webhook-id twice: handled once
        event = todo.get_nowait()
        assert event == {"id": event_id, "type": "deposit.created", "createdAt": format_ts(clock()), "data": {"id": "txn_0", "amount": 100}}
        assert scope["seen"] == {event_id}
    finally:
        await runner.cleanup()


# -- the bench line ---------------------------------------------------------------------------------
@pytest.mark.sqlite_only("the bench makes its own database; its --pg run is the same code")
def test_the_deliveries_per_second_bench_runs():
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "bench.webhooks", "--events", "40", "--endpoints", "2"],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "webhooks sqlite: 80 deliveries to 2 endpoint(s) in " in r.stdout
    assert "(receiver hits 80, failed attempts 0)" in r.stdout
