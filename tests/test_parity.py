"""REST and ZAP agree, for every method of the registry (so a new schema method is covered as
soon as it exists, and this file fails until it has an example here):

(a) the REST route, ZAP/JSON and ZAP/msgpack give the same result for the same params, and
    leave the same state behind;
(b) a read-scope key is refused a mutating method with 403 on REST and 403/-32003 on ZAP, and
    is allowed a non-mutating one on both: the ZAP endpoint applies exactly the REST route's
    per-method permission.

Read-only methods are called on one tenant through all three transports and must answer
identically. A mutating method is run, after the same setup, on three fresh tenants (one per
transport); the answers are compared after replacing ids the server made with placeholders.
Timestamps are compared as they are: the server's clock is frozen (FakeClock), so every tenant
sees the same instant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest

from conftest import REGISTRY, TRANSPORTS, Api

USER = "hanzo/alice"


async def _ok(api: Api, method: str, params: dict[str, Any]) -> dict[str, Any]:
    r = await api.call(method, params)
    assert r.ok, (method, params, r)
    return r.result


# -- examples ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """An id made by the example's setup, filled in per tenant."""
    name: str


@dataclass(frozen=True)
class Example:
    params: dict[str, Any]
    """Every parameter of the method; values may be Ref(name) for ids made by `setup`."""
    setup: Callable[[Api], Awaitable[dict[str, str]]] | None = None
    """Runs with an admin key of the tenant before the call; returns the ids the params refer to."""
    state: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Reads whose answers must agree between tenants after a mutating call."""


async def funded(api: Api) -> dict[str, str]:
    """Money in three currencies, some spent and some expiring."""
    await _ok(api, "deposit", {"user": USER, "amount": 1000})
    await _ok(api, "deposit", {"user": USER, "amount": 700, "currency": "eur", "expiresIn": 3})
    await _ok(api, "deposit", {"user": USER, "amount": 50, "currency": "jpy"})
    await _ok(api, "recordUsage", {"user": USER, "amount": 250, "currency": "eur", "model": "m"})
    return {}


async def usage_history(api: Api) -> dict[str, str]:
    await funded(api)
    ids = []
    for i, (currency, amount) in enumerate([("usd", 10), ("usd", 20), ("eur", 30), ("usd", 40)]):
        r = await _ok(api, "recordUsage", {
            "user": USER, "amount": amount, "currency": currency, "model": f"model-{i}", "totalTokens": i * 100,
            "requestId": f"req-{i}", "premium": i % 2 == 0,
        })
        ids.append(r["transactionId"])
    return {"newestUsd": ids[3]}


async def a_deposit(api: Api) -> dict[str, str]:
    await funded(api)
    r = await _ok(api, "deposit", {"user": USER, "amount": 900, "currency": "eur", "tags": "paid"})
    return {"deposit": r["transactionId"]}


LEDGER_STATE = [("getBalanceAll", {"user": USER}), ("getUsage", {"user": USER, "limit": 1000})]


async def a_meter(api: Api) -> dict[str, str]:
    r = await _ok(api, "createMeter", {"name": "API calls", "eventName": "api-calls", "aggregationType": "sum"})
    return {"meter": r["id"]}


async def metered(api: Api) -> dict[str, str]:
    """A month of one customer: a meter with events, a graduated rule, two grants."""
    refs = await a_meter(api)
    await _ok(api, "recordMeterEvents", {"events": [
        {"meterId": refs["meter"], "userId": USER, "value": v, "timestamp": f"2026-01-{d:02d}T12:00:00Z", "idempotency": f"e{d}"}
        for d, v in ((3, 120), (9, 300), (20, 180))
    ]})
    r = await _ok(api, "createPricingRule", {"meterId": refs["meter"], "model": "tiered", "tiers": [
        {"upTo": 100, "price": 10}, {"upTo": 500, "price": 5}, {"upTo": 0, "price": 1, "flat": 100}]})
    refs["rule"] = r["id"]
    r = await _ok(api, "createCreditGrant", {"userId": USER, "name": "promo", "amountCents": 1500, "priority": 1, "expiresIn": "720h"})
    refs["grant"] = r["id"]
    await _ok(api, "createCreditGrant", {"userId": USER, "name": "meter-only", "amountCents": 400, "eligibility": [refs["meter"]]})
    return refs


GRANT_STATE = [("listCreditGrants", {"userId": USER}), ("getCreditBalance", {"userId": USER})]


# -- holds: setup for the holds block at the end of EXAMPLES ------------------------------------

async def held(api: Api) -> dict[str, str]:
    """Two pending holds on the funded account, the newer one in eur."""
    await funded(api)
    r = await _ok(api, "createHold", {"user": USER, "amount": 300, "requestId": "hold-1", "metadata": {"route": "/chat"}})
    older = r["holdId"]
    r = await _ok(api, "createHold", {"user": USER, "amount": 100, "currency": "eur", "expiresIn": 60})
    return {"hold": older, "newestHold": r["holdId"]}


HOLD_STATE = [("getBalanceAll", {"user": USER}), ("getUsage", {"user": USER, "limit": 1000}), ("listHolds", {"user": USER})]

EXAMPLES: dict[str, Example] = {
    "billing.getBalance": Example({"user": USER, "currency": "EUR"}, funded),
    "billing.getBalanceAll": Example({"user": USER}, funded),
    "billing.getUsage": Example({"user": USER, "currency": "usd", "limit": 1, "startingAfter": Ref("newestUsd")}, usage_history),
    "billing.recordUsage": Example({
        "user": USER, "currency": "EUR", "amount": 42, "model": "gpt-x", "provider": "openai", "promptTokens": 10,
        "completionTokens": 5, "totalTokens": 15, "requestId": "req-parity", "premium": True, "stream": False,
        "status": "ok", "clientIp": "203.0.113.7",
    }, funded, LEDGER_STATE),
    "billing.deposit": Example({
        "user": USER, "currency": "EUR", "amount": 500, "notes": "parity deposit", "tags": "a,b", "expiresIn": 10,
        "metadata": {"k": [1, "two", {"three": None, "four": True}], "n": -5},
    }, funded, LEDGER_STATE),
    "billing.grantStarterCredit": Example({"user": USER}, funded, LEDGER_STATE),
    "billing.refund": Example({
        "user": USER, "currency": "eur", "amount": 300, "originalTransactionId": Ref("deposit"), "notes": "sorry",
    }, a_deposit, LEDGER_STATE),
    "billing.createMeter": Example({
        "name": "Tokens", "eventName": "tokens", "aggregationType": "max", "currency": "EUR", "dimensions": ["model"],
    }, a_meter, [("listMeters", {})]),
    "billing.listMeters": Example({}, metered),
    "billing.getMeter": Example({"id": Ref("meter")}, metered),
    "billing.recordMeterEvents": Example({"events": [
        {"meterId": Ref("meter"), "userId": USER, "value": 7, "timestamp": "2026-01-20T00:00:00Z", "idempotency": "p-1",
         "dimensions": {"model": "m"}},
        {"meterId": Ref("meter"), "userId": USER, "value": 9, "timestamp": "2026-01-21", "idempotency": "p-1", "dimensions": None},
        {"meterId": Ref("meter"), "userId": "hanzo/bob", "value": -2, "timestamp": None, "idempotency": None, "dimensions": {}},
    ]}, metered, [("getMeterEventsSummary", {"meterId": Ref("meter"), "userId": USER})]),
    "billing.getMeterEventsSummary": Example(
        {"meterId": Ref("meter"), "userId": USER, "periodStart": "2026-01-05", "periodEnd": "2026-01-20"}, metered
    ),
    "billing.createCreditGrant": Example({
        "userId": USER, "name": "welcome", "amountCents": 250, "currency": "EUR", "expiresIn": "1h30m", "priority": 2,
        "eligibility": [Ref("meter")], "tags": "promo,q1",
    }, metered, GRANT_STATE),
    "billing.listCreditGrants": Example({"userId": USER}, metered),
    "billing.getCreditBalance": Example({"userId": USER}, metered),
    "billing.voidCreditGrant": Example({"id": Ref("grant")}, metered, GRANT_STATE),
    "billing.burnCredits": Example({"userId": USER, "amount": 1700, "meterId": Ref("meter"), "currency": "usd"}, metered, GRANT_STATE),
    "billing.createPricingRule": Example({
        "meterId": Ref("meter"), "planId": "pro", "model": "volume", "currency": "usd", "unitPrice": 0,
        "tiers": [{"upTo": 1000, "price": 3, "flat": 0}, {"upTo": 0, "price": 2, "flat": 50}],
    }, metered, [("listPricingRules", {"meterId": Ref("meter"), "planId": None})]),
    "billing.listPricingRules": Example({"meterId": Ref("meter"), "planId": None}, metered),
    "billing.deletePricingRule": Example({"id": Ref("rule")}, metered, [("listPricingRules", {"meterId": None, "planId": None})]),
    "billing.invoicePreview": Example(
        {"userId": USER, "periodStart": "2026-01-01", "periodEnd": "2026-01-31", "currency": "usd", "planId": None}, metered
    ),
    # -- holds -----------------------------------------------------------------------------------
    "billing.createHold": Example({
        "user": USER, "currency": "EUR", "amount": 350, "expiresIn": 3600, "requestId": "req-parity", "allowOverdraft": False,
        "metadata": {"k": [1, "two", {"three": None}], "n": -5},
    }, held, HOLD_STATE),
    "billing.captureHold": Example({
        "id": Ref("hold"), "amount": 120, "model": "gpt-x", "notes": "parity capture", "metadata": {"chunks": 3},
    }, held, HOLD_STATE),
    "billing.releaseHold": Example({"id": Ref("hold")}, held, HOLD_STATE),
    "billing.getHold": Example({"id": Ref("hold")}, held),
    "billing.listHolds": Example({"user": USER, "status": "pending", "limit": 1, "startingAfter": Ref("newestHold")}, held),
}

METHODS = sorted(REGISTRY.commands)
MUTATING = [m for m in METHODS if REGISTRY.commands[m].mutates]
READ_ONLY = [m for m in METHODS if not REGISTRY.commands[m].mutates]


def example(wire: str) -> Example:
    assert wire in EXAMPLES, f"{wire} is in the schema but has no example in tests/test_parity.py: add one to EXAMPLES"
    return EXAMPLES[wire]


def resolve(value: Any, refs: dict[str, str]) -> Any:
    """Fill in Refs, also inside lists and objects; drop None (an absent optional parameter)."""
    if isinstance(value, Ref):
        return refs[value.name]
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


async def prepare(api: Api, ex: Example) -> tuple[dict[str, Any], dict[str, str]]:
    refs = await ex.setup(api) if ex.setup else {}
    return resolve(ex.params, refs), refs


SERVER_ID = re.compile(r"[a-z][a-z0-9]*_[0-9a-f]{16,}\Z")


def normalise(value: Any, refs: dict[str, str]) -> Any:
    """Ids the server made -> placeholders: setup ids by name, others in order of appearance."""
    names = {v: f"<{k}>" for k, v in refs.items()}
    seen: dict[str, str] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            if v in names:
                return names[v]
            if SERVER_ID.match(v):
                return seen.setdefault(v, f"<id{len(seen)}>")
        return v

    return walk(value)


def expected_status(wire: str, transport: str) -> int:
    http = REGISTRY.commands[wire].http
    return http.status if transport == "rest" else 200


# -- the examples themselves -------------------------------------------------------------------------

def test_every_registry_method_has_an_example():
    missing = sorted(set(REGISTRY.commands) - set(EXAMPLES))
    assert not missing, f"schema methods without an example in tests/test_parity.py: {', '.join(missing)}"
    unknown = sorted(set(EXAMPLES) - set(REGISTRY.commands))
    assert not unknown, f"examples for methods the schema does not declare: {', '.join(unknown)}"


@pytest.mark.parametrize("wire", METHODS)
def test_example_sends_every_parameter(wire):
    command = REGISTRY.commands[wire]
    assert set(example(wire).params) == {f.name for f in command.fields}


# -- (a) identical results ------------------------------------------------------------------------------

@pytest.mark.parametrize("wire", READ_ONLY)
async def test_read_only_method_answers_identically_on_rest_and_zap(api, wire):
    command = REGISTRY.commands[wire]
    params, _ = await prepare(api, example(wire))
    replies = {t: await api.using(t).call(command.name, dict(params)) for t in TRANSPORTS if t != "rest" or command.http}
    for t, r in replies.items():
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
    results = list(replies.values())
    for t, r in replies.items():
        assert r.result == results[0].result, f"{t} differs from {next(iter(replies))}"


@pytest.mark.parametrize("wire", MUTATING)
async def test_mutating_method_gives_identical_results_and_effects_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    ex = example(wire)
    results, states = {}, {}
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        admin = api.with_key(await make_key(f"parity-{t}", "live", "admin"))  # a fresh tenant per transport
        params, refs = await prepare(admin, ex)
        r = await admin.using(t).call(command.name, params)
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
        results[t] = normalise(r.result, refs)
        states[t] = [normalise(await _ok(admin, m, resolve(p, refs)), refs) for m, p in ex.state]
    first = next(iter(results))
    for t in results:
        assert results[t] == results[first], f"{t} answered differently from {first}"
        assert states[t] == states[first], f"{t} left a different state from {first}"


# -- (b) the same permission on both transports ---------------------------------------------------------

@pytest.mark.parametrize("wire", MUTATING)
async def test_read_key_is_refused_a_mutating_method_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    ex = example(wire)
    params, refs = await prepare(api, ex)
    before = [await _ok(api, m, resolve(p, refs)) for m, p in ex.state]
    reader = api.with_key(await make_key("acme", "live", "read"))
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        r = await reader.using(t).call(command.name, dict(params))
        assert r.status == 403, (t, r)
        assert r.error is not None and r.error["kind"] == "forbidden", (t, r)
        if t != "rest":
            assert r.error["code"] == -32003, (t, r)
    assert [await _ok(api, m, resolve(p, refs)) for m, p in ex.state] == before, "a refused call changed something"


@pytest.mark.parametrize("wire", READ_ONLY)
async def test_read_key_is_allowed_a_read_only_method_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    params, _ = await prepare(api, example(wire))
    admin = await api.call(command.name, dict(params)) if command.http else await api.using("zap-json").call(command.name, dict(params))
    assert admin.ok, admin
    reader = api.with_key(await make_key("acme", "live", "read"))
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        r = await reader.using(t).call(command.name, dict(params))
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
        assert r.result == admin.result, t


@pytest.mark.parametrize("wire", METHODS)
async def test_discover_mutates_flag_matches_the_permission_applied(api, make_key, wire):
    """zap.discover's `mutates` is the permission rule both transports apply: a read key is
    refused exactly the methods it marks as mutating."""
    _, answer = await api.zap_raw({"method": "zap.discover", "id": 1})
    mutates = answer["result"]["methods"][wire]["mutates"]
    assert mutates is REGISTRY.commands[wire].mutates
    params, _ = await prepare(api, example(wire))
    reader = api.with_key(await make_key("acme", "live", "read"))
    r = await reader.using("zap-json").call(REGISTRY.commands[wire].name, params)
    assert (r.error is not None and r.error["kind"] == "forbidden") is mutates, r
