"""Rate limits per API key (issue 17, item 6): the token bucket's arithmetic on an injected
clock, the admission state that is made per key and dropped when idle, the settings refused,
and end to end over REST and ZAP: 429 with Retry-After, a batch taking one token per entry and
refused whole, other keys untouched."""
from __future__ import annotations

import asyncio
import json
import subprocess

import msgpack
import pytest
from aiohttp import ClientSession

from conftest import make_app
from zapbilling.app import ADMISSION, STORE
from zapbilling.config import MAX_BATCH, Config, server_options
from zapbilling.errors import KINDS
from zapbilling.limits import Limits
from zapbilling.times import system_clock
from zapbilling.transport import zap
from zapbilling.transport.admission import Admission, Slots, TokenBucket

from console_helpers import Browserless
from procs import child_env, zapbilling_cmd

pytestmark = pytest.mark.sqlite_only("rate limits, before the store")


class Monotonic:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bucket --------------------------------------------------------------------------------

def test_the_bucket_starts_full_and_refills_at_its_rate_up_to_its_burst():
    clock = Monotonic()
    bucket = TokenBucket(10.0, 100, clock)
    assert bucket.take(100) == 0  # a full burst at once
    assert bucket.take(1) == pytest.approx(0.1)  # refused: one token comes in a tenth of a second
    clock.now += 0.25
    assert bucket.take(2) == 0  # 2.5 tokens came back
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.take(5) == pytest.approx(0.45)  # 4.5 missing at 10 a second; nothing taken
    assert bucket.tokens == pytest.approx(0.5)
    clock.now += 3600
    assert bucket.take(0) == 0 and bucket.tokens == 100, "never more than the burst"
    assert bucket.full


def test_a_refused_take_takes_nothing_and_give_is_capped():
    clock = Monotonic()
    bucket = TokenBucket(1.0, 100, clock)
    assert bucket.take(60) == 0
    assert bucket.take(60) == pytest.approx(20.0)  # all or nothing
    assert bucket.take(40) == 0  # the 40 left are all still there
    bucket.give(1000)
    assert bucket.tokens == 100


def test_the_bucket_does_not_move_with_the_wall_clock():
    """Its time is the injected monotonic clock only: a clock that stands still refills nothing."""
    clock = Monotonic()
    bucket = TokenBucket(1000.0, 100, clock)
    bucket.take(100)
    assert bucket.take(1) > 0
    assert not bucket.full


def test_retry_after_is_whole_seconds_at_least_one():
    clock = Monotonic()
    admission = Admission(None, 4, Limits(rate_per_second=3, rate_burst=100), clock)  # type: ignore[arg-type]
    assert admission._refused(0.01, 1).retry_after == 1
    assert admission._refused(1.0, 1).retry_after == 1
    assert admission._refused(1.01, 1).retry_after == 2
    err = admission._refused(33.4, 100)
    assert err.retry_after == 34 and err.kind == "rate_limited"
    assert err.message == "rate limited: a batch of 100 calls is over this API key's rate of 3 calls per second (bursts up to 100); retry after 34 s"
    assert admission._refused(0.5, 1).message.startswith("rate limited: this API key is over its rate of 3 calls per second")


# -- per-key state ------------------------------------------------------------------------------

def test_key_state_is_made_lazily_and_dropped_once_idle_and_full():
    clock = Monotonic()
    admission = Admission(None, 4, Limits(rate_per_second=10, rate_burst=100), clock)  # type: ignore[arg-type]
    busy = admission.gate("busy")
    assert busy.slots.take_now()  # a request in flight
    drained = admission.gate("drained")
    drained.bucket.take(50)  # idle, but its bucket is not full yet
    for i in range(300):
        admission.gate(f"k{i}")  # idle and full: nothing to keep
    assert len(admission.gates) < 300, "swept as the table grew"
    admission.sweep()
    assert set(admission.gates) == {"busy", "drained"}
    clock.now += 5  # 50 tokens back: full again
    admission.sweep()
    assert set(admission.gates) == {"busy"}
    busy.slots.release()
    admission.sweep()
    assert admission.gates == {}


def test_with_rates_off_keys_keep_no_bucket():
    admission = Admission(None, 4, Limits(rate_per_second=0, rate_burst=0), Monotonic())  # type: ignore[arg-type]
    assert admission.gate("k").bucket is None


async def test_slots_are_first_come_first_served_and_a_cancelled_waiter_passes_its_turn_on():
    slots = Slots(1)
    assert slots.take_now() and not slots.take_now()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.take()
        order.append(name)

    a = asyncio.create_task(waiter("a"))
    b = asyncio.create_task(waiter("b"))
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0)
    b.cancel()
    slots.release()  # to a
    await asyncio.sleep(0)
    assert not slots.take_now(), "a newcomer does not overtake the queue"
    slots.release()  # b is gone: to c
    await asyncio.gather(a, c, return_exceptions=True)
    assert order == ["a", "c"] and slots.in_use == 1
    slots.release()
    assert slots.idle


# -- settings -----------------------------------------------------------------------------------

def test_the_burst_must_hold_a_full_batch_when_rates_are_on():
    assert MAX_BATCH == zap.MAX_BATCH == 100
    with pytest.raises(ValueError, match="--rate-burst must be at least 100"):
        Config(limits=Limits(rate_per_second=10, rate_burst=99))
    Config(limits=Limits(rate_per_second=10, rate_burst=100))
    Config(limits=Limits(rate_per_second=0, rate_burst=0))  # off: the burst does not matter
    with pytest.raises(ValueError, match="--inflight-per-key must be at least 1"):
        Config(limits=Limits(inflight_per_key=0))


def test_serve_refuses_a_burst_smaller_than_a_batch(tmp_path):
    r = subprocess.run([*zapbilling_cmd(), "serve", "--db", str(tmp_path / "b.db"), "--port", "0", "--rate-burst", "50"],
                       capture_output=True, text=True, timeout=60, env=child_env())
    assert r.returncode == 2, r
    assert "--rate-burst must be at least 100 (a full batch)" in r.stderr and "Traceback" not in r.stderr


def test_the_kind_is_in_the_error_table():
    assert KINDS["rate_limited"] == (429, -32029, 429)


# -- end to end ---------------------------------------------------------------------------------

RATE = 0.1
"""A token every 10 s: none comes back within a test's few seconds, even on a loaded machine."""


@pytest.fixture
async def limited(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, limits=Limits(rate_per_second=RATE, rate_burst=100))
    server = await aiohttp_server(make_app(config), **server_options(config))
    store = server.app[STORE]
    now = system_clock()
    keys = [(await store.create_key("acme", "live", "admin", now))[1] for _ in range(3)]
    async with ClientSession() as session:
        yield server, session, keys


def envelope(i: int) -> dict:
    return {"method": "billing.getBalance", "id": i, "params": {"user": "u"}}


async def zap_call(session, server, key, body, codec="json"):
    if codec == "json":
        data, ctype = json.dumps(body).encode(), "application/json"
    else:
        data, ctype = msgpack.packb(body), "application/msgpack"
    async with session.post(server.make_url("/api/v1/zap"), data=data,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": ctype, "Accept": ctype}) as r:
        raw = await r.read()
        answer = msgpack.unpackb(raw) if codec == "msgpack" else json.loads(raw)
        return r.status, r.headers, answer


async def rest_balance(session, server, key):
    async with session.get(server.make_url("/api/v1/billing/balance"), params={"user": "u"},
                           headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, r.headers, await r.json()


def assert_zap_limited(status, headers, answer, calls: int = 1) -> int:
    assert status == 429, (status, answer)
    err = answer["error"]
    assert err["code"] == -32029 and err["data"]["kind"] == "rate_limited", err
    assert err["message"].startswith("rate limited"), err
    assert ("this API key is over its rate" if calls == 1 else f"a batch of {calls} calls") in err["message"]
    retry_after = int(headers["Retry-After"])
    assert retry_after >= 1 and f"retry after {retry_after} s" in err["message"]
    return retry_after


async def test_over_its_rate_a_key_is_answered_429_with_retry_after_on_rest_and_zap(limited):
    server, session, (key, other, _) = limited
    status, _, answers = await zap_call(session, server, key, [envelope(i) for i in range(100)])  # the whole burst
    assert status == 200 and all("result" in a for a in answers)

    status, headers, body = await rest_balance(session, server, key)
    assert status == 429, body
    assert body["error"]["type"] == "api-error" and body["error"]["code"] == "rate_limited"
    assert body["error"]["message"] == "rate limited: this API key is over its rate of 0.1 calls per second (bursts up to 100); retry after 10 s"
    assert headers["Retry-After"] == "10"
    for codec in ("json", "msgpack"):
        assert_zap_limited(*await zap_call(session, server, key, envelope(1), codec))
    status, _, _ = await rest_balance(session, server, other)
    assert status == 200, "another key has its own bucket"


async def test_a_batch_takes_a_token_per_entry_and_is_refused_whole(limited):
    server, session, (key, _, _) = limited
    status, _, answers = await zap_call(session, server, key, [envelope(i) for i in range(60)])
    assert status == 200 and len(answers) == 60
    status, headers, answer = await zap_call(session, server, key, [envelope(i) for i in range(60)])
    retry_after = assert_zap_limited(status, headers, answer, calls=60)
    assert 150 <= retry_after <= 200, "about 20 tokens short at one every 10 s"
    assert isinstance(answer, dict), "one error for the whole batch, no entry ran"
    # the refused batch took nothing: the 40 tokens left still pass 40 calls, the 41st not
    status, _, answers = await zap_call(session, server, key, [envelope(i) for i in range(39)])
    assert status == 200 and len(answers) == 39
    assert (await rest_balance(session, server, key))[0] == 200
    assert_zap_limited(*await zap_call(session, server, key, envelope(1)))


async def test_tokens_come_back_with_time(limited):
    """With the server's bucket on an injected monotonic clock. An empty bucket refuses any
    request before its body is read, Retry-After counting it as one call; a batch that does
    not fit is refused with the time until all of it would; after that time it passes."""
    server, session, (_, _, key) = limited
    clock = Monotonic()
    server.app[ADMISSION].clock = clock  # buckets made from now on (this key's first request) use it
    batch = [envelope(i) for i in range(10)]
    assert (await zap_call(session, server, key, [envelope(i) for i in range(100)]))[0] == 200
    assert assert_zap_limited(*await zap_call(session, server, key, batch)) == 10  # refused at admission
    clock.now += 10
    assert assert_zap_limited(*await zap_call(session, server, key, batch), calls=10) == 90  # 1 token of 10
    clock.now += 89
    assert (await zap_call(session, server, key, batch))[0] == 429
    clock.now += 1
    status, _, answers = await zap_call(session, server, key, batch)
    assert status == 200 and len(answers) == 10
    assert assert_zap_limited(*await zap_call(session, server, key, envelope(1))) == 10


# -- the console's pages meet the same bounds ------------------------------------------------------

async def test_console_pages_pay_from_the_keys_bucket(limited):
    """A signed-in key cannot pass its rate through the console: a page's API calls take tokens
    from the same bucket as its REST and ZAP calls, and a page over the rate is a 429 page with
    Retry-After (before, the console called the handlers past every gate)."""
    server, session, (key, other, _) = limited
    console = Browserless(str(server.make_url("")))
    try:
        await console.sign_in(key)
        status, html, _ = await console.get("/console/accounts")
        assert status == 200, html
        status, _, answers = await zap_call(session, server, key, [envelope(i) for i in range(99)])  # what the page left
        assert status == 200 and all("result" in a for a in answers), answers
        status, html, r = await console.get("/console/accounts")
        assert status == 429, html
        assert int(r.headers["Retry-After"]) >= 1 and "rate limited" in html
        assert (await rest_balance(session, server, other))[0] == 200, "another key has its own bucket"

        await console.close()
        console = Browserless(str(server.make_url("")))
        await console.sign_in(other)
        for _ in range(100):  # the other key's console pages drain its bucket for its API calls too
            status, _, _ = await console.get("/console/accounts")
            if status == 429:
                break
            assert status == 200
        assert status == 429
        assert (await rest_balance(session, server, other))[0] == 429
    finally:
        await console.close()


@pytest.fixture
async def one_slot(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, limits=Limits(inflight_per_key=1))
    server = await aiohttp_server(make_app(config), **server_options(config))
    store = server.app[STORE]
    _, key = await store.create_key("acme", "live", "read", system_clock())
    console = Browserless(str(server.make_url("")))
    yield server, key, console
    await console.close()


async def test_a_console_page_waits_for_a_slot_of_its_keys_own_bound(one_slot):
    """A page is made holding one of its key's in-flight slots (and a shared one): with the
    key's only slot taken, as by a stalled API request of the same key, the page waits, and
    is answered once the slot is free; after it the slots are all free again."""
    server, key, console = one_slot
    await console.sign_in(key)
    admission: Admission = server.app[ADMISSION]
    principal = await server.app[STORE].authenticate(key)
    gate = admission.gate(principal.key_id)
    assert gate.slots.take_now()  # the key's one slot, held
    page = asyncio.create_task(console.get("/console/accounts"))
    await asyncio.sleep(0.5)
    assert not page.done(), "the page waited for its key's slot"
    assert admission.shared.in_use == 0, "and held no shared slot while it waited"
    gate.slots.release()
    status, html, _ = await asyncio.wait_for(page, 10)
    assert status == 200, html
    assert admission.in_flight(principal.key_id) == 0 and admission.shared.in_use == 0


async def test_holding_takes_and_returns_a_key_slot_and_a_shared_slot():
    admission = Admission(None, 2, Limits(inflight_per_key=2), Monotonic())  # type: ignore[arg-type]
    async with admission.holding("k1"):
        assert admission.in_flight("k1") == 1 and admission.shared.in_use == 1
        async with admission.holding("k2"):
            assert admission.shared.in_use == 2
            third = asyncio.create_task(_hold(admission, "k1"))
            await asyncio.sleep(0.05)
            assert not third.done() and admission.in_flight("k1") == 2, "it holds k1's second slot, waiting for a shared one"
        await asyncio.wait_for(third, 5)
    assert admission.in_flight("k1") == 0 and admission.shared.in_use == 0 and not admission.running


async def _hold(admission: Admission, key_id: str) -> None:
    async with admission.holding(key_id):
        await asyncio.sleep(0)
