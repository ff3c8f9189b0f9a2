"""One test per **Fix** of the contract's Conventions and "Balance and ledger" sections: the places
where the Go billing package zapbilling's contract was first written against behaves badly and
zapbilling must do better (docs/conventions.md, docs/api.md). Each runs on the real
server (real HTTP, real SQLite file), over every transport where the transport matters."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from conftest import assert_error, balance, ledger_rows, ok

ALICE = "hanzo/alice"
BOB = "hanzo/bob"
TRANSPORTS = ("rest", "zap-json", "zap-msgpack")


# -- helpers --------------------------------------------------------------------------------

def assert_invalid(api, r, message: str) -> None:
    assert r.error is not None, f"expected invalid_params, got {r.status} {r.result!r}"
    assert r.error["kind"] == "invalid_params" and message in r.error["message"], r.error
    if api.transport == "rest":
        assert r.status == 400
    else:
        assert r.status == 200 and r.error["code"] == -32602


# -- Conventions ----------------------------------------------------------------------------

async def test_fix_unknown_currency_is_rejected(any_api):
    for method, params in (
        ("deposit", {"user": ALICE, "amount": 100}),
        ("recordUsage", {"user": ALICE, "amount": 100, "model": "m"}),
        ("getBalance", {"user": ALICE}),
        ("getUsage", {"user": ALICE}),
    ):
        r = await any_api.call(method, {**params, "currency": "xyz"})
        assert_invalid(any_api, r, "unknown currency: xyz")
        assert r.error["param"] == "currency"
    # nothing was written under the bogus code, and real ISO 4217 codes still work
    assert (await ok(any_api, "getBalanceAll", {"user": ALICE}))["balances"] == []
    assert (await ok(any_api, "deposit", {"user": ALICE, "amount": 100, "currency": "chf"}))["currency"] == "chf"


async def test_fix_rows_are_scoped_to_org_and_mode(any_api, make_key):
    live = any_api
    test = any_api.with_key(await make_key("acme", "test"))
    other_org = any_api.with_key(await make_key("globex", "live"))

    dep = await ok(live, "deposit", {"user": ALICE, "amount": 1000}, idempotency_key="same-key")
    use = await ok(live, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "requestId": "req-1"})
    await ok(live, "grantStarterCredit", {"user": ALICE})

    for api in (test, other_org):
        # nothing of acme/live is visible ...
        assert await balance(api) == 0
        assert (await ok(api, "getBalanceAll", {"user": ALICE}))["balances"] == []
        assert (await ok(api, "getUsage", {"user": ALICE}))["usage"] == []
        assert_error(api, await api.call("getUsage", {"user": ALICE, "startingAfter": use["transactionId"]}), "not_found", "not found")
        # ... nor changeable: acme/live's charge, refundable there, is not found here
        r = await api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": use["transactionId"]})
        assert_error(api, r, "not_found", "original transaction not found")
        # deduplication and idempotency keys are per org and mode: these are new writes here
        u = await ok(api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "requestId": "req-1"})
        assert u["transactionId"] != use["transactionId"]
        d = await ok(api, "deposit", {"user": ALICE, "amount": 1000}, idempotency_key="same-key")
        assert d["transactionId"] != dep["transactionId"]
        s = await ok(api, "grantStarterCredit", {"user": ALICE})
        assert s["amount"] == 500
        assert await balance(api) == 1000 - 100 + 500

    # acme/live is untouched by all of that
    assert await balance(live) == 1000 - 100 + 500
    page = await ok(live, "getUsage", {"user": ALICE})
    assert [x["transactionId"] for x in page["usage"]] == [use["transactionId"]]


# -- Balance and ledger ---------------------------------------------------------------------

async def test_fix_usage_is_paged(any_api):
    ids = [(await ok(any_api, "recordUsage", {"user": ALICE, "amount": i + 1, "model": "m"}))["transactionId"]
           for i in range(5)]
    first = await ok(any_api, "getUsage", {"user": ALICE, "limit": 3})
    assert (first["count"], first["hasMore"]) == (3, True)
    assert [x["transactionId"] for x in first["usage"]] == ids[::-1][:3]
    rest = await ok(any_api, "getUsage", {"user": ALICE, "limit": 3, "startingAfter": first["usage"][-1]["transactionId"]})
    assert (rest["count"], rest["hasMore"]) == (2, False)
    assert [x["transactionId"] for x in rest["usage"]] == ids[::-1][3:]
    for limit in (0, 1001):
        assert_invalid(any_api, await any_api.call("getUsage", {"user": ALICE, "limit": limit}), "limit")


async def test_fix_record_usage_is_idempotent_on_request_id(any_api):
    await ok(any_api, "deposit", {"user": ALICE, "amount": 10_000})
    await ok(any_api, "deposit", {"user": BOB, "amount": 10_000})
    request = {"user": ALICE, "amount": 250, "model": "m", "totalTokens": 9, "requestId": "req-42"}
    first = await any_api.call("recordUsage", request)
    assert first.ok, first.error
    retry = await any_api.call("recordUsage", request)
    assert retry.ok, retry.error
    assert retry.result == first.result
    # a retry carrying another amount still returns the original and charges nothing
    retry = await any_api.call("recordUsage", {**request, "amount": 999})
    assert retry.result == first.result
    assert await balance(any_api) == 10_000 - 250
    assert (await ok(any_api, "getUsage", {"user": ALICE}))["count"] == 1
    # the same requestId for another user is another usage and is charged separately
    other = await ok(any_api, "recordUsage", {**request, "user": BOB})
    assert other["transactionId"] != first.result["transactionId"] and other["user"] == BOB
    assert await balance(any_api, BOB) == 10_000 - 250
    assert await balance(any_api) == 10_000 - 250
    # another requestId for the same user is charged too
    await ok(any_api, "recordUsage", {**request, "requestId": "req-43"})
    assert await balance(any_api) == 10_000 - 500


async def test_fix_record_usage_concurrent_retries_charge_once(api):
    """50 concurrent recordUsage calls with one requestId, over all three transports at once."""
    await ok(api, "deposit", {"user": ALICE, "amount": 100_000})
    request = {"user": ALICE, "amount": 700, "model": "m", "requestId": "req-storm"}
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("recordUsage", request) for i in range(50)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert len({r.result["transactionId"] for r in replies}) == 1
    assert await balance(api) == 100_000 - 700
    assert (await ok(api, "getUsage", {"user": ALICE}))["count"] == 1


async def test_fix_starter_credit_once_per_user_and_mode(any_api, make_key, clock):
    first = await ok(any_api, "grantStarterCredit", {"user": ALICE})
    again = await any_api.call("grantStarterCredit", {"user": ALICE})
    assert again.ok, again.error
    assert again.result == first
    assert await balance(any_api) == 500
    # another user gets their own
    bob = await ok(any_api, "grantStarterCredit", {"user": BOB})
    assert bob["transactionId"] != first["transactionId"]
    assert await balance(any_api, BOB) == 500
    # the same org's test-mode key gets its own, once
    test = any_api.with_key(await make_key("acme", "test"))
    t1 = await ok(test, "grantStarterCredit", {"user": ALICE})
    t2 = await ok(test, "grantStarterCredit", {"user": ALICE})
    assert t1["transactionId"] != first["transactionId"] and t2 == t1
    assert await balance(test) == 500
    assert await balance(any_api) == 500
    # once means once: not granted again after the first one expired
    clock.advance(days=31)
    late = await ok(any_api, "grantStarterCredit", {"user": ALICE})
    assert late["transactionId"] == first["transactionId"]
    assert await balance(any_api) == 0


async def test_fix_starter_credit_concurrent_calls_grant_once(api):
    """50 concurrent grantStarterCredit calls for one user, over all three transports at once."""
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("grantStarterCredit", {"user": ALICE})
                                     for i in range(50)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert len({r.result["transactionId"] for r in replies}) == 1
    assert await balance(api) == 500


async def charge(api, amount: int, user: str = ALICE, **params: Any) -> dict[str, Any]:
    """A charge (a usage withdrawal): what a refund may name."""
    return await ok(api, "recordUsage", {"user": user, "amount": amount, "model": "m", **params})


async def test_fix_refund_must_match_an_original(any_api, make_key):
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1100})
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1100, "currency": "eur"})
    alice_usd = await charge(any_api, 100)
    alice_eur = await charge(any_api, 100, currency="eur")
    bob_usd = await charge(any_api, 100, user=BOB)
    other_org = any_api.with_key(await make_key("globex", "live"))
    foreign = await charge(other_org, 100)
    test_mode = any_api.with_key(await make_key("acme", "test"))
    other_mode = await charge(test_mode, 100)

    for original in (
        "tx_000000000000000000000000",  # unknown, of the server's own shape
        "not-an-id",                     # unknown, of any shape
        bob_usd["transactionId"],        # another user's
        alice_eur["transactionId"],      # another currency's (the refund is in usd)
        foreign["transactionId"],        # another org's
        other_mode["transactionId"],     # the same org's other mode
    ):
        r = await any_api.call("refund", {"user": ALICE, "amount": 10, "originalTransactionId": original})
        assert_error(any_api, r, "not_found", "original transaction not found")
    assert await balance(any_api) == 1000
    assert await balance(any_api, currency="eur") == 1000
    # the matching original is accepted
    r = await ok(any_api, "refund", {"user": ALICE, "amount": 10, "originalTransactionId": alice_usd["transactionId"]})
    assert r["originalTransactionId"] == alice_usd["transactionId"]
    assert await balance(any_api) == 1010


async def test_fix_refunds_may_not_exceed_the_original(any_api):
    await ok(any_api, "deposit", {"user": ALICE, "amount": 2000})
    big = await charge(any_api, 1000)
    use = await charge(any_api, 300)
    refund = {"user": ALICE, "originalTransactionId": big["transactionId"]}
    await ok(any_api, "refund", {**refund, "amount": 400})
    await ok(any_api, "refund", {**refund, "amount": 400})
    r = await any_api.call("refund", {**refund, "amount": 201})
    assert_invalid(any_api, r, "refund exceeds original: 200 of 1000 cents left to refund")
    assert r.error["param"] == "amount"
    await ok(any_api, "refund", {**refund, "amount": 200})
    assert_invalid(any_api, await any_api.call("refund", {**refund, "amount": 1}), "refund exceeds original")
    # the same cap holds for another charge, independently of the first one's
    refund = {"user": ALICE, "originalTransactionId": use["transactionId"]}
    assert_invalid(any_api, await any_api.call("refund", {**refund, "amount": 301}), "refund exceeds original")
    await ok(any_api, "refund", {**refund, "amount": 300})
    assert_invalid(any_api, await any_api.call("refund", {**refund, "amount": 1}), "refund exceeds original")
    assert await balance(any_api) == 2000 - 1000 - 300 + 1000 + 300


def assert_not_a_charge(api, r, original: str, type: str = "deposit") -> None:
    assert_invalid(api, r, f"only a charge can be refunded: {original} is a {type}")
    assert r.error["param"] == "originalTransactionId", r.error


async def test_fix_only_a_charge_can_be_refunded(any_api, db_path):
    """A deposit, a starter credit and a refund are not charges: refunding them would add money
    that was never taken. Each is refused and writes nothing; a charge still refunds."""
    dep = await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})
    starter = await ok(any_api, "grantStarterCredit", {"user": ALICE})
    use = await charge(any_api, 300)
    first = await ok(any_api, "refund", {"user": ALICE, "amount": 100, "originalTransactionId": use["transactionId"]})
    rows = ledger_rows(db_path, ALICE)
    for original in (dep["transactionId"], starter["transactionId"], first["transactionId"]):
        r = await any_api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": original})
        assert_not_a_charge(any_api, r, original)
    assert ledger_rows(db_path, ALICE) == rows
    assert await balance(any_api) == 1000 + 500 - 300 + 100
    # the charge keeps what is left of it to refund
    await ok(any_api, "refund", {"user": ALICE, "amount": 200, "originalTransactionId": use["transactionId"]})
    assert await balance(any_api) == 1000 + 500


async def test_fix_a_forfeit_of_expired_credit_cannot_be_refunded(any_api, clock, db_path):
    """A forfeit is a withdraw but no charge: refunding the forfeit of an expired starter credit
    would turn 500 cents of free, expired credit into money that never expires."""
    await ok(any_api, "grantStarterCredit", {"user": ALICE})
    await charge(any_api, 1)
    clock.advance(days=31)
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1})  # the first write after expiry forfeits
    (forfeit,) = [r for r in ledger_rows(db_path, ALICE) if r["tags"] == "credit-expired"]
    assert (forfeit["type"], forfeit["amount"]) == ("withdraw", 499)
    rows = ledger_rows(db_path, ALICE)
    r = await any_api.call("refund", {"user": ALICE, "amount": 499, "originalTransactionId": forfeit["id"]})
    assert_invalid(any_api, r, f"only a charge can be refunded: {forfeit['id']} is a forfeit of expired credit")
    assert ledger_rows(db_path, ALICE) == rows
    assert await balance(any_api) == 1


async def test_fix_refund_chains_mint_no_money(any_api, db_path):
    """Regression (the refund-chain money hole): a refund is a deposit, so when anything could
    be refunded, refunding the refund of a charge, then that refund, and so on added the charge's
    amount again at every step. One 100-cent charge, one full refund of it: every refund of a
    refund is refused and the balance ends where that first refund leaves it."""
    use = await charge(any_api, 100)
    assert await balance(any_api) == -100
    first = await ok(any_api, "refund", {"user": ALICE, "amount": 100, "originalTransactionId": use["transactionId"]})
    assert await balance(any_api) == 0
    original = first["transactionId"]
    for _ in range(5):
        r = await any_api.call("refund", {"user": ALICE, "amount": 100, "originalTransactionId": original})
        if r.ok:  # the hole: follow the chain, as an attacker would
            original = r.result["transactionId"]
            continue
        assert_not_a_charge(any_api, r, original)
    # nor can the charge itself be refunded again
    r = await any_api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": use["transactionId"]})
    assert_invalid(any_api, r, "refund exceeds original: 0 of 100 cents left to refund")
    assert await balance(any_api) == 0
    assert [(row["type"], row["amount"], row["tags"]) for row in ledger_rows(db_path, ALICE)] == [
        ("withdraw", 100, "api-usage"), ("deposit", 100, "refund")]


async def test_fix_deposit_keeps_metadata(any_api, db_path):
    metadata = {"invoice": "inv_123", "source": {"kind": "stripe", "ids": [1, 2, 3]}, "manual": True, "note": None}
    r = await ok(any_api, "deposit", {"user": ALICE, "amount": 1000, "metadata": metadata})
    assert r["metadata"] == metadata
    (row,) = ledger_rows(db_path, ALICE)
    assert row["id"] == r["transactionId"]
    assert json.loads(row["metadata"]) == metadata


async def test_fix_expiry_forfeits_only_the_unspent_remainder(any_api, clock, db_path):
    credit = await ok(any_api, "grantStarterCredit", {"user": ALICE})
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 300, "model": "m"})
    assert await balance(any_api) == 200
    clock.advance(days=31)
    # reads are exact before any write: only the unspent 200 is gone, not the whole 500
    assert await balance(any_api) == 0
    assert (await ok(any_api, "getBalanceAll", {"user": ALICE}))["balances"] == [
        {"currency": "usd", "balance": 0, "holds": 0, "available": 0}]
    assert ledger_rows(db_path, ALICE, tags="credit-expired") == []
    # the next write of this user and currency writes the forfeit as a ledger row
    await ok(any_api, "deposit", {"user": ALICE, "amount": 100})
    (forfeit,) = ledger_rows(db_path, ALICE, tags="credit-expired")
    assert forfeit["type"] == "withdraw" and forfeit["amount"] == 200 and forfeit["currency"] == "usd"
    assert credit["transactionId"] in json.loads(forfeit["metadata"]).values()
    assert await balance(any_api) == 100
    # written once: a later write forfeits nothing more
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 50, "model": "m"})
    assert len(ledger_rows(db_path, ALICE, tags="credit-expired")) == 1
    assert await balance(any_api) == 50


async def test_fix_usage_spends_earliest_expiring_money_first(any_api, clock):
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000, "expiresIn": 20})  # inserted first, expires last
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000, "expiresIn": 10})
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})                   # never expires
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 1500, "model": "m"})
    assert await balance(any_api) == 1500
    # the 10-day deposit was spent in full, so its expiry forfeits nothing
    clock.advance(days=11)
    assert await balance(any_api) == 1500
    # the 20-day deposit had 500 left, which is forfeited; the non-expiring 1000 is intact
    clock.advance(days=10)
    assert await balance(any_api) == 1000
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1})  # a write that records the forfeits
    assert await balance(any_api) == 1001


async def test_fix_concurrent_refunds_may_not_exceed_the_original(api):
    """20 concurrent refunds of 100 against a charge of 1000: exactly 10 succeed."""
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    use = await charge(api, 1000)
    refund = {"user": ALICE, "amount": 100, "originalTransactionId": use["transactionId"]}
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("refund", refund) for i in range(20)))
    assert sum(r.ok for r in replies) == 10
    for r in replies:
        if not r.ok:
            assert r.error["kind"] == "invalid_params" and "refund exceeds original" in r.error["message"], r.error
    assert await balance(api) == 1000


async def test_fix_expiry_forfeit_is_written_once_under_concurrent_writes(api, clock, db_path):
    await ok(api, "deposit", {"user": ALICE, "amount": 1000, "expiresIn": 5})
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 400, "model": "m"})
    clock.advance(days=6)
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("deposit", {"user": ALICE, "amount": 1})
                                     for i in range(30)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    forfeits = ledger_rows(db_path, ALICE, tags="credit-expired")
    assert [f["amount"] for f in forfeits] == [600]
    assert await balance(api) == 2000 - 400 - 600 + 30
