"""The generated Python client (clients/python/zapbilling_client) against the real server over
real HTTP: typed methods and models on BillingClient and AsyncBillingClient with both codecs,
options, one exception class per error kind, idempotency keys that survive retries, bounded
retries with jittered backoff, and batches.

The tests run in the asyncio loop that also runs the server, so the sync client is always
driven from a worker thread (`Driver`); the async client is awaited directly.

Failures on the way are made by `Proxy`, a small aiohttp reverse proxy in front of the real
server that forwards each ZAP request and then, as scripted, loses the answer, answers too
late, hangs up, or turns it into an in-band internal error; it records every request body so
the tests can compare what each attempt carried."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web
from conftest import ERROR_TABLE, balance, ledger_rows, make_app

from zapbilling_client import (
    AggregationType,
    ApiConnectionError,
    AsyncBillingClient,
    Balance,
    BalanceAll,
    BillingClient,
    Conflict,
    CurrencyBalance,
    DepositResult,
    Forbidden,
    InvalidParams,
    InvalidRequest,
    InvoicePreview,
    Meter,
    MeterEventInput,
    MeterEventsResult,
    MeterEventStatus,
    MethodNotFound,
    NotFound,
    PriceTier,
    PricingModel,
    PricingRule,
    RateLimited,
    TransactionType,
    Unauthorized,
    UsageResult,
    ZapBillingError,
)
from zapbilling_client import _runtime, errors
from zapbilling_client._runtime import Settings, make_call

ALICE = "hanzo/alice"
BOB = "hanzo/bob"
ZAP_PATH = "/api/v1/zap"
CODECS = ("msgpack", "json")
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json"}
SLOW = 1.0
"""How long the proxy holds an answer back in its "slow" mode: longer than TIMEOUT."""
TIMEOUT = 0.3
FAST = {"backoff": 0.01, "max_backoff": 0.05}
"""Retry options that keep the tests quick; backoff itself is tested on its own."""


def base_url(server) -> str:
    return str(server.make_url("")).rstrip("/")


def decode(raw: bytes, content_type: str) -> Any:
    return msgpack.unpackb(raw, raw=False) if "msgpack" in content_type else json.loads(raw)


def encode(value: Any, content_type: str) -> bytes:
    return msgpack.packb(value, use_bin_type=True) if "msgpack" in content_type else json.dumps(value).encode()


def without_id(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope less its id (a retry may or may not renew the id; it must keep the rest)."""
    return {k: v for k, v in envelope.items() if k != "id"}


def free_port() -> int:
    """A local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the proxy --------------------------------------------------------------------------------

@dataclass
class Seen:
    content_type: str
    accept: str | None
    body: Any


class Proxy:
    """Forwards POST /api/v1/zap to the real server, doing to each request what `script` says
    (one action per request, in order; then `default`):

    - "pass":     forward and return the server's answer;
    - "lose":     forward (the write commits), then answer 503 with a plain-text body;
    - "slow":     forward, then hold the answer back for SLOW seconds (the client times out);
    - "drop":     forward, then close the connection without answering;
    - "internal": forward, then answer an in-band ZAP internal error (HTTP 200, -32000);
    - "gateway":  forward, then answer 503 with the JSON error body a gateway sends;
    - "gateway-message": forward, then answer 503 with `{"message": ...}` as JSON.
    """

    def __init__(self, upstream: str, session: ClientSession):
        self.upstream = upstream
        self.session = session
        self.script: list[str] = []
        self.default = "pass"
        self.seen: list[Seen] = []
        self.url = ""
        self.release = asyncio.Event()
        """Set at teardown so that a "slow" answer nobody waits for any more ends at once."""

    @property
    def bodies(self) -> list[Any]:
        """Every request body received (decoded), one per attempt."""
        return [s.body for s in self.seen]

    def keys(self) -> list[str | None]:
        """The idempotencyKey of each attempt of a single call."""
        return [b.get("idempotencyKey") for b in self.bodies]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        self.seen.append(Seen(ctype, request.headers.get("Accept"), decode(raw, ctype)))
        action = self.script.pop(0) if self.script else self.default
        headers = {h: request.headers[h] for h in ("Authorization", "Content-Type", "Accept") if h in request.headers}
        async with self.session.post(self.upstream + request.path, data=raw, headers=headers) as r:
            body, status, rtype = await r.read(), r.status, r.headers.get("Content-Type", "")
        if action == "lose":
            return web.Response(status=503, text="proxy: the answer was lost")
        if action == "slow":
            try:
                await asyncio.wait_for(self.release.wait(), SLOW)
            except asyncio.TimeoutError:
                pass
        elif action == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(text="never sent")
        elif action == "internal":
            def fault(envelope: Any) -> dict[str, Any]:
                return {"id": envelope.get("id"), "error": {"code": -32000, "message": "internal error", "data": {"kind": "internal_error"}}}
            sent = self.seen[-1].body
            answer = [fault(e) for e in sent] if isinstance(sent, list) else fault(sent)
            return web.Response(body=encode(answer, ctype), status=200, headers={"Content-Type": ctype})
        elif action == "gateway":
            return web.json_response({"error": {"code": 503, "message": "upstream unavailable"}}, status=503)
        elif action == "gateway-message":
            return web.json_response({"message": "Service Unavailable"}, status=503)
        return web.Response(body=body, status=status, headers={"Content-Type": rtype})


@pytest.fixture
async def proxy(aiohttp_server, server):
    async with ClientSession() as session:
        p = Proxy(base_url(server), session)
        app = web.Application()
        app.router.add_post(ZAP_PATH, p.handle)
        p.url = base_url(await aiohttp_server(app))
        yield p
        p.release.set()


# -- clients ----------------------------------------------------------------------------------

class Driver:
    """The same calls on either client: the sync one from a worker thread, the async one awaited."""

    def __init__(self, client: BillingClient | AsyncBillingClient):
        self.client = client
        self.sync = isinstance(client, BillingClient)

    async def __call__(self, method: str, **params: Any) -> Any:
        fn = getattr(self.client, method)
        if self.sync:
            return await asyncio.to_thread(lambda: fn(**params))
        return await fn(**params)

    def batch(self) -> Any:
        return self.client.batch()

    async def send(self, batch: Any) -> list[Any]:
        if self.sync:
            return await asyncio.to_thread(batch.send)
        return await batch.send()

    async def raw(self, method: str, params: dict[str, Any]) -> Any:
        """A method the schema does not have, through the client's own transport (the typed
        client has, rightly, no way to name one)."""
        call = make_call(method, params, Any, False, None)
        if self.sync:
            return await asyncio.to_thread(self.client._transport.call, call)
        return await self.client._transport.call(call)

    async def close(self) -> None:
        if self.sync:
            self.client.close()
        else:
            await self.client.aclose()


ADMIN = "<an admin key of acme/live>"


@pytest.fixture(params=["sync", "async"])
async def connect(request, server, make_key):
    """connect(url=None, key=ADMIN, **options) -> a Driver over a new sync or async client
    (the test runs once with each); url defaults to the server, key=None passes no key."""
    flavour = request.param
    drivers: list[Driver] = []

    async def make(url: str | None = None, key: str | None = ADMIN, **options: Any) -> Driver:
        if key == ADMIN:
            key = await make_key()
        cls = BillingClient if flavour == "sync" else AsyncBillingClient
        driver = Driver(cls(url or base_url(server), api_key=key, **options))
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


class _Spy:
    """A stand-in for a module: one attribute replaced, the rest delegated."""

    def __init__(self, module: Any, **overrides: Any):
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@pytest.fixture
def waits(monkeypatch):
    """Every backoff the runtime computes (`delays`: (attempt, seconds)) and every pause it
    then takes (`slept`), on either client."""
    record = SimpleNamespace(delays=[], slept=[])
    real_delay = Settings.delay

    def delay(self: Settings, attempt: int) -> float:
        seconds = real_delay(self, attempt)
        record.delays.append((attempt, seconds))
        return seconds

    def sleep(seconds: float) -> None:
        record.slept.append(seconds)
        time.sleep(seconds)

    async def asleep(seconds: float) -> None:
        record.slept.append(seconds)
        await asyncio.sleep(seconds)

    monkeypatch.setattr(Settings, "delay", delay)
    monkeypatch.setattr(_runtime, "time", _Spy(time, sleep=sleep))
    monkeypatch.setattr(_runtime, "asyncio", _Spy(asyncio, sleep=asleep))
    return record


async def error_of(call: Any) -> ZapBillingError:
    """The ZapBillingError an awaited call raises."""
    with pytest.raises(ZapBillingError) as info:
        await call
    return info.value


def assert_error(exc: BaseException, cls: type[ZapBillingError], message: str, param: str | None = None) -> None:
    """Exactly `cls`, with the contract's ZAP code, kind, HTTP status and message, and the id
    of the envelope it answers."""
    assert type(exc) is cls, repr(exc)
    assert isinstance(exc, ZapBillingError)
    _, code, status = ERROR_TABLE[cls.kind]
    assert exc.code == code, repr(exc)
    assert exc.data["kind"] == cls.kind, repr(exc)
    assert message in exc.message, repr(exc)
    assert exc.param == param, repr(exc)
    assert exc.status == status, repr(exc)
    assert isinstance(exc.request_id, str) and exc.request_id, repr(exc)


# -- typed methods and models -----------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
async def test_deposit_then_get_balance_returns_models(connect, codec):
    c = await connect(codec=codec)
    d = await c("deposit", user=ALICE, amount=1234, currency="eur", metadata={"order": 7})
    assert isinstance(d, DepositResult)
    assert d.type is TransactionType.deposit
    assert (d.user, d.amount, d.currency, d.tags, d.metadata, d.expiresAt) == (ALICE, 1234, "eur", "", {"order": 7}, None)
    assert d.transactionId

    b = await c("getBalance", user=ALICE, currency="eur")
    assert isinstance(b, Balance)
    assert b == Balance(user=ALICE, currency="eur", balance=1234, holds=0, available=1234)
    assert all(type(v) is int for v in (b.balance, b.holds, b.available))


@pytest.mark.parametrize("codec", CODECS)
async def test_codec_is_what_goes_on_the_wire(connect, proxy, codec):
    c = await connect(url=proxy.url, codec=codec)
    assert await c("getBalance", user=ALICE) == Balance(user=ALICE, currency="usd", balance=0, holds=0, available=0)
    [seen] = proxy.seen
    assert seen.content_type == CONTENT_TYPES[codec]
    assert seen.accept == CONTENT_TYPES[codec]
    assert seen.body["method"] == "billing.getBalance"


def test_msgpack_is_the_default_codec():
    for cls in (BillingClient, AsyncBillingClient):
        client = cls("http://127.0.0.1:1", api_key="k")
        assert client._transport.settings.codec == "msgpack"


async def test_snake_case_aliases(connect, api):
    c = await connect()
    usage = await c("record_usage", user=ALICE, amount=30, model="m")
    assert isinstance(usage, UsageResult) and usage.type is TransactionType.withdraw
    await c("deposit", user=ALICE, amount=100, currency="chf")
    assert await c("get_balance", user=ALICE) == Balance(user=ALICE, currency="usd", balance=-30, holds=0, available=0)
    everything = await c("get_balance_all", user=ALICE)
    assert isinstance(everything, BalanceAll)
    assert all(isinstance(b, CurrencyBalance) for b in everything.balances)
    assert [(b.currency, b.balance) for b in everything.balances] == [("chf", 100), ("usd", -30)]
    assert await balance(api, ALICE) == -30


async def test_enums_come_back_as_generated_enum_classes(connect):
    c = await connect()
    m = await c("createMeter", name="Tokens", eventName="tokens", aggregationType=AggregationType.max)
    assert isinstance(m, Meter) and m.aggregationType is AggregationType.max
    by_text = await c("createMeter", name="Calls", eventName="calls", aggregationType="count")
    assert by_text.aggregationType is AggregationType.count
    assert (await c("getMeter", id=m.id)).aggregationType is AggregationType.max

    rule = await c("createPricingRule", meterId=m.id, model=PricingModel.volume, tiers=[PriceTier(upTo=0, price=3)])
    assert rule.model is PricingModel.volume

    events = await c("recordMeterEvents", events=[
        MeterEventInput(meterId=m.id, userId=ALICE, value=1, idempotency="once"),
        MeterEventInput(meterId=m.id, userId=ALICE, value=1, idempotency="once"),
    ])
    assert [e.status for e in events.events] == [MeterEventStatus.created, MeterEventStatus.duplicate]
    assert all(type(e.status) is MeterEventStatus for e in events.events)

    usage = await c("recordUsage", user=ALICE, amount=5)
    assert usage.type is TransactionType.withdraw


async def test_meter_events_accept_models_and_dicts(connect, proxy):
    c = await connect(url=proxy.url)
    m = await c("createMeter", name="Tokens", eventName="tokens")
    result = await c("recordMeterEvents", events=[
        MeterEventInput(meterId=m.id, userId=ALICE, value=5, idempotency="e1"),
        {"meterId": m.id, "userId": ALICE, "value": 7},
        {"meterId": m.id, "userId": ALICE, "value": 100, "idempotency": "e1"},
    ])
    assert isinstance(result, MeterEventsResult) and result.count == 3
    assert [e.status for e in result.events] == [MeterEventStatus.created, MeterEventStatus.created, MeterEventStatus.duplicate]
    assert result.events[2].id == result.events[0].id

    sent = proxy.bodies[-1]["params"]["events"]
    assert sent[0] == {"meterId": m.id, "userId": ALICE, "value": 5, "idempotency": "e1"}, "a model goes out as a plain map, without its None fields"
    assert sent[1] == {"meterId": m.id, "userId": ALICE, "value": 7}

    summary = await c("getMeterEventsSummary", meterId=m.id, userId=ALICE)
    assert (summary.value, summary.eventCount, summary.aggregationType) == (12, 2, AggregationType.sum)


async def test_pricing_rule_accepts_price_tier_models_and_dicts(connect):
    c = await connect()
    m = await c("createMeter", name="Tokens", eventName="tokens")
    rule = await c("createPricingRule", meterId=m.id, model=PricingModel.tiered, tiers=[
        PriceTier(upTo=100, price=10),
        {"upTo": 500, "price": 5},
        PriceTier(price=1, flat=100),
    ])
    assert isinstance(rule, PricingRule)
    assert rule.tiers == [PriceTier(upTo=100, price=10, flat=0), PriceTier(upTo=500, price=5, flat=0), PriceTier(upTo=0, price=1, flat=100)]
    assert all(isinstance(t, PriceTier) for t in rule.tiers)

    # the contract's worked example: graduated 600 units = 100x10 + 400x5 + (100 + 100x1) = 3200
    await c("recordMeterEvents", events=[{"meterId": m.id, "userId": ALICE, "value": 600}])
    preview = await c("invoicePreview", userId=ALICE)
    assert isinstance(preview, InvoicePreview)
    assert [(li.quantity, li.totalCost, li.model) for li in preview.lineItems] == [(600, 3200, "tiered")]
    assert (preview.subtotal, preview.amountDue) == (3200, 3200)


async def test_optional_param_left_out_is_not_sent(connect, proxy, db_path):
    c = await connect(url=proxy.url)
    await c("deposit", user=ALICE, amount=250)
    params = proxy.bodies[0]["params"]
    assert "notes" not in params and "metadata" not in params, params
    assert params["user"] == ALICE and params["amount"] == 250
    [row] = ledger_rows(db_path, ALICE)
    assert row["notes"] == "Deposit: 250 cents usd"


async def test_optional_result_fields_can_be_absent(connect):
    c = await connect()
    skipped = await c("recordUsage", user=ALICE, amount=0)
    assert isinstance(skipped, UsageResult)
    assert (skipped.user, skipped.amount, skipped.status) == (ALICE, 0, "skipped")
    assert skipped.transactionId is None and skipped.type is None


# -- options ----------------------------------------------------------------------------------

async def test_api_key_from_the_environment(connect, make_key, monkeypatch, db_path):
    monkeypatch.setenv("ZAPBILLING_API_KEY", await make_key())
    c = await connect(key=None)
    await c("deposit", user=ALICE, amount=40)
    assert [r["amount"] for r in ledger_rows(db_path, ALICE)] == [40]


async def test_api_key_argument_wins_over_the_environment(connect, monkeypatch):
    monkeypatch.setenv("ZAPBILLING_API_KEY", "zb_not_a_key")
    c = await connect()  # an explicit admin key
    assert (await c("getBalance", user=ALICE)).balance == 0
    bad = await connect(key=None)
    assert type(await error_of(bad("getBalance", user=ALICE))) is Unauthorized


@pytest.mark.parametrize("cls", [BillingClient, AsyncBillingClient])
def test_no_api_key_is_a_value_error(cls, monkeypatch):
    monkeypatch.delenv("ZAPBILLING_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key"):
        cls("http://127.0.0.1:1")
    monkeypatch.setenv("ZAPBILLING_API_KEY", "")
    with pytest.raises(ValueError, match="API key"):
        cls("http://127.0.0.1:1")


@pytest.mark.parametrize("cls", [BillingClient, AsyncBillingClient])
def test_bad_options_are_value_errors(cls):
    with pytest.raises(ValueError, match="codec"):
        cls("http://127.0.0.1:1", api_key="k", codec="xml")
    with pytest.raises(ValueError, match="max_retries"):
        cls("http://127.0.0.1:1", api_key="k", max_retries=-1)


# -- errors -----------------------------------------------------------------------------------

def test_one_exception_class_per_error_kind():
    """Every kind of the contract's error table has its class, with the contract's ZAP code."""
    assert set(errors.BY_KIND) == set(ERROR_TABLE)
    for kind, cls in errors.BY_KIND.items():
        assert issubclass(cls, ZapBillingError)
        assert cls.kind == kind and cls.code == ERROR_TABLE[kind][1]
    assert issubclass(ApiConnectionError, ZapBillingError)


SIMPLE_ERRORS = {  # id: (call, class, message, param)
    "invalid_params": (lambda c: c("deposit", user=ALICE, amount=0), InvalidParams, "amount must be positive", "amount"),
    "missing_param": (lambda c: c("getBalance", user=""), InvalidParams, "user is required", "user"),
    "bad_currency": (lambda c: c("getBalance", user=ALICE, currency="xyz"), InvalidParams, "unknown currency: xyz", "currency"),
    "not_found": (lambda c: c("getMeter", id="mtr_missing"), NotFound, "meter not found", "id"),
    "not_found_rule": (lambda c: c("deletePricingRule", id="nope"), NotFound, "pricing rule not found", "id"),
    "method_not_found": (lambda c: c.raw("billing.noSuchMethod", {}), MethodNotFound, "unknown method", None),
}


@pytest.mark.parametrize("case", SIMPLE_ERRORS)
async def test_error_kinds_raise_their_class(connect, case):
    call, cls, message, param = SIMPLE_ERRORS[case]
    c = await connect()
    assert_error(await error_of(call(c)), cls, message, param)


async def test_conflict_same_idempotency_key_other_params(connect, db_path):
    c = await connect()
    first = await c("deposit", user=ALICE, amount=100, idempotency_key="order-1")
    again = await c("deposit", user=ALICE, amount=100, idempotency_key="order-1")
    assert again == first, "same key, same params: the stored answer"
    exc = await error_of(c("deposit", user=ALICE, amount=200, idempotency_key="order-1"))
    assert_error(exc, Conflict, "idempotency key was already used with different parameters", "idempotencyKey")
    assert [r["amount"] for r in ledger_rows(db_path, ALICE)] == [100]


async def test_conflict_duplicate_meter_event_name(connect):
    c = await connect()
    await c("createMeter", name="Tokens", eventName="tokens")
    exc = await error_of(c("createMeter", name="Other", eventName="tokens"))
    assert_error(exc, Conflict, "already exists", "eventName")


async def test_unauthorized_bad_key(connect):
    c = await connect(key="zb_live_not_a_real_key")
    exc = await error_of(c("getBalance", user=ALICE))
    assert_error(exc, Unauthorized, "missing or invalid API key")
    assert exc.status == 401


async def test_forbidden_read_key_calling_deposit(connect, make_key, db_path):
    c = await connect(key=await make_key(scope="read"))
    assert (await c("getBalance", user=ALICE)).balance == 0, "a read key may read"
    exc = await error_of(c("deposit", user=ALICE, amount=100))
    assert_error(exc, Forbidden, "read-only")
    assert exc.status == 403
    assert ledger_rows(db_path, ALICE) == []


async def test_error_carries_the_id_of_the_envelope_it_answers(connect, proxy):
    c = await connect(url=proxy.url)
    exc = await error_of(c("getMeter", id="mtr_missing"))
    assert exc.request_id == proxy.bodies[0]["id"]
    refused = await connect(url=proxy.url, key="zb_live_not_a_real_key")
    exc = await error_of(refused("deposit", user=ALICE, amount=1))
    assert type(exc) is Unauthorized and exc.request_id == proxy.bodies[1]["id"]
    assert proxy.bodies[0]["id"] != proxy.bodies[1]["id"]


# -- idempotency and retries ------------------------------------------------------------------

MUTATIONS = {  # method: (params, ledger row type, balance afterwards)
    "deposit": ({"user": ALICE, "amount": 500}, "deposit", 500),
    "recordUsage": ({"user": ALICE, "amount": 300, "model": "m"}, "withdraw", -300),  # no requestId: only the key protects it
}
FAILURES = ("lose", "slow", "drop", "internal")


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("method", MUTATIONS)
async def test_mutating_call_retried_with_the_same_key_charges_once(connect, proxy, api, db_path, waits, method, failure):
    """The write commits, the answer does not arrive; the retry carries the same key, so the
    server replays the stored answer instead of charging again."""
    params, row_type, expected = MUTATIONS[method]
    options = {"timeout": TIMEOUT} if failure == "slow" else {}
    c = await connect(url=proxy.url, max_retries=2, **FAST, **options)
    proxy.script = [failure]

    result = await c(method, **params)

    assert len(proxy.bodies) == 2, proxy.bodies
    first, second = proxy.bodies
    assert isinstance(first["idempotencyKey"], str) and first["idempotencyKey"]
    assert without_id(second) == without_id(first), "a retry resends the same call with the same key"
    rows = ledger_rows(db_path, ALICE)
    assert [(r["type"], r["amount"]) for r in rows] == [(row_type, params["amount"])]
    assert result.transactionId == rows[0]["id"]
    assert await balance(api, ALICE) == expected
    assert [a for a, _ in waits.delays] == [0]
    assert waits.slept == [d for _, d in waits.delays]


async def test_two_logical_calls_get_different_keys(connect, proxy, db_path):
    c = await connect(url=proxy.url)
    await c("deposit", user=ALICE, amount=100)
    await c("deposit", user=ALICE, amount=100)
    keys = proxy.keys()
    assert len(keys) == 2 and all(keys) and keys[0] != keys[1]
    assert [r["amount"] for r in ledger_rows(db_path, ALICE)] == [100, 100]


async def test_explicit_idempotency_key_is_sent_as_given(connect, proxy, db_path):
    c = await connect(url=proxy.url, **FAST)
    proxy.script = ["lose"]
    first = await c("deposit", user=ALICE, amount=100, idempotency_key="order-42")
    again = await c("deposit", user=ALICE, amount=100, idempotency_key="order-42")
    assert proxy.keys() == ["order-42"] * 3
    assert again == first
    assert len(ledger_rows(db_path, ALICE)) == 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_retries_are_bounded(connect, proxy, api, db_path, waits, max_retries):
    c = await connect(url=proxy.url, max_retries=max_retries, **FAST)
    proxy.default = "lose"
    exc = await error_of(c("deposit", user=ALICE, amount=100))
    assert exc.status == 503
    assert len(proxy.bodies) == max_retries + 1
    assert len(set(proxy.keys())) == 1, "every attempt with the one key"
    assert len(ledger_rows(db_path, ALICE)) == 1, "each attempt reached the server, one charge"
    assert await balance(api, ALICE) == 100
    assert [a for a, _ in waits.delays] == list(range(max_retries))
    assert waits.slept == [d for _, d in waits.delays], "the client pauses for the delay it computed"


async def test_timeouts_are_bounded_too(connect, proxy, db_path):
    c = await connect(url=proxy.url, max_retries=1, timeout=TIMEOUT, **FAST)
    proxy.default = "slow"
    exc = await error_of(c("deposit", user=ALICE, amount=100))
    assert type(exc) is ApiConnectionError
    assert len(proxy.bodies) == 2 and len(set(proxy.keys())) == 1
    assert len(ledger_rows(db_path, ALICE)) == 1


async def test_mutating_call_refused_by_the_server_is_not_retried(connect, proxy, make_key, waits):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    assert type(await error_of(c("deposit", user=ALICE, amount=0))) is InvalidParams
    reader = await connect(url=proxy.url, key=await make_key(scope="read"), max_retries=2, **FAST)
    assert type(await error_of(reader("deposit", user=ALICE, amount=5))) is Forbidden
    assert len(proxy.bodies) == 2 and waits.delays == []


async def test_non_mutating_call_answered_503_is_not_retried(connect, proxy, waits):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    proxy.default = "lose"
    exc = await error_of(c("getBalance", user=ALICE))
    assert exc.status == 503
    assert len(proxy.bodies) == 1
    assert waits.delays == []


async def test_non_mutating_call_is_retried_on_a_dropped_connection(connect, proxy, waits):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    proxy.script = ["drop"]
    assert await c("getBalance", user=ALICE) == Balance(user=ALICE, currency="usd", balance=0, holds=0, available=0)
    assert len(proxy.bodies) == 2
    assert proxy.keys() == [None, None]
    assert [a for a, _ in waits.delays] == [0]
    assert waits.slept == [d for _, d in waits.delays]


@pytest.mark.parametrize("method, params", [("getBalance", {"user": ALICE}), ("deposit", {"user": ALICE, "amount": 1})])
async def test_nothing_listening_raises_api_connection_error(connect, waits, method, params):
    c = await connect(url=f"http://127.0.0.1:{free_port()}", max_retries=2, **FAST)
    exc = await error_of(c(method, **params))
    assert type(exc) is ApiConnectionError
    assert "after 3 attempts" in exc.message, exc.message
    assert isinstance(exc.request_id, str) and exc.request_id
    assert [a for a, _ in waits.delays] == [0, 1]
    assert waits.slept == [d for _, d in waits.delays], "the client pauses for the delay it computed"


async def test_only_mutating_calls_carry_an_idempotency_key(connect, proxy):
    c = await connect(url=proxy.url)
    m = await c("createMeter", name="Tokens", eventName="tokens")
    await c("getBalance", user=ALICE)
    await c("listMeters")
    await c("getMeter", id=m.id)
    await c("invoicePreview", userId=ALICE)
    await c("grantStarterCredit", user=ALICE)
    carries = {b["method"]: "idempotencyKey" in b for b in proxy.bodies}
    assert carries == {
        "billing.createMeter": True,
        "billing.getBalance": False,
        "billing.listMeters": False,
        "billing.getMeter": False,
        "billing.invoicePreview": False,
        "billing.grantStarterCredit": True,
    }


# -- backoff ----------------------------------------------------------------------------------

def test_backoff_has_jitter_doubles_and_is_capped():
    s = Settings.make("http://127.0.0.1:1", "k", "json", 1.0, 9, backoff=0.1, max_backoff=1.0)
    expected_ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for attempt, ceiling in enumerate(expected_ceilings):
        samples = [s.delay(attempt) for _ in range(400)]
        assert all(ceiling / 2 <= d <= ceiling for d in samples), (attempt, min(samples), max(samples))
        assert len(set(samples)) > 1, "jitter: not every delay is the same"
        # spread over the whole [ceiling/2, ceiling] band (each bound fails with p < 1e-17)
        assert min(samples) < 0.55 * ceiling and max(samples) > 0.95 * ceiling, (attempt, min(samples), max(samples))


def test_client_backoff_options_reach_the_settings():
    client = BillingClient("http://127.0.0.1:1", api_key="k", backoff=0.2, max_backoff=0.3)
    samples = [client._transport.settings.delay(5) for _ in range(200)]
    assert all(0.15 <= d <= 0.3 for d in samples)
    client.close()


# -- batches ----------------------------------------------------------------------------------

async def test_batch_results_and_errors_in_order(connect, proxy, api):
    c = await connect(url=proxy.url)
    await c("deposit", user=BOB, amount=100)
    b = c.batch()
    b.getBalance(user=BOB)
    b.getMeter(id="mtr_missing")
    b.deposit(user=ALICE, amount=700)
    assert len(b) == 3

    results = await c.send(b)

    assert len(results) == 3
    assert results[0] == Balance(user=BOB, currency="usd", balance=100, holds=0, available=100)
    assert_error(results[1], NotFound, "meter not found", "id")
    assert isinstance(results[2], DepositResult) and results[2].type is TransactionType.deposit
    assert (results[2].user, results[2].amount) == (ALICE, 700)
    assert await balance(api, ALICE) == 700

    [sent] = proxy.bodies[1:]
    assert isinstance(sent, list) and [e["method"] for e in sent] == ["billing.getBalance", "billing.getMeter", "billing.deposit"]
    assert results[1].request_id == sent[1]["id"]
    assert len({e["id"] for e in sent}) == 3


async def test_batch_mutating_entries_each_carry_their_own_key(connect, proxy, db_path):
    c = await connect(url=proxy.url)
    b = c.batch()
    b.deposit(user=ALICE, amount=100)
    b.get_balance(user=BOB)
    b.deposit(user=ALICE, amount=100)
    b.recordUsage(user=ALICE, amount=50, idempotency_key="usage-1")
    await c.send(b)
    [sent] = proxy.bodies
    keys = [e.get("idempotencyKey") for e in sent]
    assert keys[1] is None and keys[3] == "usage-1"
    assert keys[0] and keys[2] and len({keys[0], keys[2], keys[3]}) == 3
    # a batch's writes run concurrently, in no promised order (docs/conventions.md, Batches)
    assert sorted(r["amount"] for r in ledger_rows(db_path, ALICE)) == [50, 100, 100]


async def test_batch_retried_after_a_lost_answer_charges_once(connect, proxy, api, db_path):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    proxy.script = ["lose"]
    b = c.batch()
    b.deposit(user=ALICE, amount=100)
    b.deposit(user=ALICE, amount=200)
    b.getBalance(user=BOB)
    results = await c.send(b)
    assert [type(r) for r in results] == [DepositResult, DepositResult, Balance]
    assert len(proxy.bodies) == 2
    assert [without_id(e) for e in proxy.bodies[0]] == [without_id(e) for e in proxy.bodies[1]]
    rows = ledger_rows(db_path, ALICE)
    assert sorted((r["id"], r["amount"]) for r in rows) == sorted([(results[0].transactionId, 100), (results[1].transactionId, 200)])
    assert await balance(api, ALICE) == 300


async def test_empty_batch_returns_nothing_without_a_request(connect, proxy):
    c = await connect(url=proxy.url)
    b = c.batch()
    assert len(b) == 0
    assert await c.send(b) == []
    assert proxy.bodies == []


async def test_batch_with_a_bad_key_raises_unauthorized(connect):
    c = await connect(key="zb_live_not_a_real_key")
    b = c.batch()
    b.getBalance(user=ALICE)
    b.deposit(user=ALICE, amount=5)
    exc = await error_of(c.send(b))
    assert type(exc) is Unauthorized
    assert exc.code == ERROR_TABLE["unauthorized"][1] and exc.status == 401
    assert "missing or invalid API key" in exc.message


async def test_batch_of_101_raises_invalid_request_and_100_is_fine(connect):
    c = await connect()
    b = c.batch()
    for _ in range(101):
        b.getBalance(user=ALICE)
    exc = await error_of(c.send(b))
    assert type(exc) is InvalidRequest
    assert exc.code == ERROR_TABLE["invalid_request"][1] and exc.status == 400
    assert "100" in exc.message

    b = c.batch()
    for _ in range(100):
        b.getBalance(user=ALICE)
    results = await c.send(b)
    assert len(results) == 100 and all(isinstance(r, Balance) for r in results)


# -- gateways in front of the service: 5xx bodies that are not ZAP answers ------------------------

async def test_batch_retry_after_a_gateway_error_returns_the_results(connect, proxy, db_path):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    proxy.script = ["gateway"]  # 503 {"error": {...}} from a gateway in front of the service
    b = c.batch()
    b.deposit(user=ALICE, amount=100)
    try:
        results = await c.send(b)
    finally:
        assert len(proxy.bodies) == 2, "the client did retry"
        assert len(ledger_rows(db_path, ALICE)) == 1
    assert isinstance(results[0], DepositResult)


async def test_gateway_503_with_a_json_message_is_retried(connect, proxy, db_path):
    c = await connect(url=proxy.url, max_retries=2, **FAST)
    proxy.script = ["gateway-message"]
    result = await c("deposit", user=ALICE, amount=100)
    assert isinstance(result, DepositResult)
    assert len(proxy.bodies) == 2 and len(ledger_rows(db_path, ALICE)) == 1


async def test_a_mutating_call_that_gets_no_answer_hands_back_its_idempotency_key(connect, db_path):
    """Nothing listens: the outcome is unknown, so the error carries the key a later retry of
    the same logical call must reuse; a read has no key to hand back."""
    c = await connect(url="http://127.0.0.1:9", max_retries=0, **FAST)
    with pytest.raises(ApiConnectionError) as deposit:
        await c("deposit", user=ALICE, amount=100)
    assert deposit.value.idempotency_key and len(deposit.value.idempotency_key) >= 16
    with pytest.raises(ApiConnectionError) as read:
        await c("getBalance", user=ALICE)
    assert read.value.idempotency_key is None


# -- rate limits --------------------------------------------------------------------------------

class Monotonic:
    """The server's rate-limit clock, moved by the client's (injected) sleeps only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def rate_limited(aiohttp_server, tmp_path, monkeypatch):
    """A real server whose keys may make 0.1 calls a second (bursts of 100), its buckets on a
    clock that only the client's sleeps move; `slept` records them."""
    from zapbilling.app import ADMISSION, STORE
    from zapbilling.config import Config, server_options
    from zapbilling.limits import Limits
    from zapbilling.times import system_clock

    config = Config(db=str(tmp_path / "limited.db"), sweep_seconds=3600, limits=Limits(rate_per_second=0.1, rate_burst=100))
    server = await aiohttp_server(make_app(config), **server_options(config))
    clock = server.app[ADMISSION].clock = Monotonic()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    async def asleep(seconds: float) -> None:
        sleep(seconds)

    monkeypatch.setattr(_runtime, "time", _Spy(time, sleep=sleep))
    monkeypatch.setattr(_runtime, "asyncio", _Spy(asyncio, sleep=asleep))
    _, key = await server.app[STORE].create_key("acme", "live", "admin", system_clock())
    return SimpleNamespace(url=base_url(server), key=key, slept=slept, db=str(tmp_path / "limited.db"))


async def drain(c: Driver) -> None:
    """A batch of 100 calls: the key's whole burst."""
    b = c.batch()
    for _ in range(100):
        b.getBalance(user=ALICE)
    assert all(isinstance(r, Balance) for r in await c.send(b))


async def test_a_rate_limited_call_is_retried_after_retry_after(connect, rate_limited):
    c = await connect(url=rate_limited.url, key=rate_limited.key, max_retries=2, **FAST)
    await drain(c)
    assert (await c("getBalance", user=ALICE)).balance == 0
    assert rate_limited.slept == [10.0], "waited the server's Retry-After, not a backoff"
    result = await c("deposit", user=ALICE, amount=100)  # a mutating call too: nothing of a refused call ran
    assert result.amount == 100
    assert rate_limited.slept == [10.0, 10.0]
    assert [r["amount"] for r in ledger_rows(rate_limited.db, ALICE)] == [100], "charged once"


async def test_rate_limited_retries_are_bounded_and_the_kind_is_raised(connect, rate_limited):
    c = await connect(url=rate_limited.url, key=rate_limited.key, max_retries=0, **FAST)
    await drain(c)
    exc = await error_of(c("getBalance", user=ALICE))
    assert_error(exc, RateLimited, "rate limited: this API key is over its rate")
    assert exc.kind == "rate_limited" and exc.code == -32029 and exc.status == 429
    assert rate_limited.slept == []
    b = c.batch()
    b.getBalance(user=ALICE)
    b.getBalance(user=BOB)
    with pytest.raises(RateLimited):  # the whole batch refused, raised as a refusal of the request
        await c.send(b)


async def test_a_retry_after_beyond_max_retry_after_is_not_waited(connect, rate_limited):
    c = await connect(url=rate_limited.url, key=rate_limited.key, max_retries=5, max_retry_after=5.0, **FAST)
    await drain(c)
    exc = await error_of(c("getBalance", user=ALICE))
    assert type(exc) is RateLimited and "retry after 10 s" in exc.message
    assert rate_limited.slept == [], "10 s is more than the 5 s it may wait"
