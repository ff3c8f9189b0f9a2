"""Unspent expiring credit is kept within the signed 64-bit range, so that every sum of it
(getBalance's expired credit, listAccounts, a hold's available, the alerts' balance) is one too."""
from __future__ import annotations

import asyncio

from conftest import assert_error, ledger_rows, ok

ALICE = "alice@example.com"
BOB = "bob@example.com"
INT64_MAX = MAX = 2**63 - 1
CREDIT_MSG = "amount would take the user's unspent expiring credit outside the signed 64-bit range"


async def test_expiring_credit_past_int64_is_refused_and_reads_stay_whole(any_api, clock):
    # usage may take a balance negative, and a deposit does not pay off the debt first: its
    # credit stays unspent, so two such deposits could hold more than INT64_MAX between them
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": INT64_MAX, "model": "m"})
    await ok(any_api, "deposit", {"user": ALICE, "amount": INT64_MAX, "expiresIn": 1})
    r = await any_api.call("deposit", {"user": ALICE, "amount": 10, "expiresIn": 1})
    assert_error(any_api, r, "invalid_params", CREDIT_MSG, "amount")
    await ok(any_api, "deposit", {"user": ALICE, "amount": 10})  # money that never expires is not credit
    clock.advance(days=2)
    got = await ok(any_api, "getBalance", {"user": ALICE})
    assert (got["balance"], got["available"]) == (10 - INT64_MAX, 0)
    listed = await ok(any_api, "listAccounts", {"currency": "usd"})
    assert [(a["user"], a["balance"]) for a in listed["accounts"]] == [(ALICE, 10 - INT64_MAX)]
    assert (await ok(any_api, "getBalanceAll", {"user": ALICE}))["balances"][0]["balance"] == 10 - INT64_MAX
    r = await any_api.call("createHold", {"user": ALICE, "amount": 1})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 1, "model": "m"})  # forfeits the expired credit
    got = await ok(any_api, "getBalance", {"user": ALICE})
    assert got["balance"] == 9 - INT64_MAX


async def test_one_cent_of_debt_suffices(api, clock):
    # one cent of debt is enough: the credit may exceed the balance by the debt
    await ok(api, "recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    await ok(api, "deposit", {"user": ALICE, "amount": MAX, "expiresIn": 1})
    r = await api.call("deposit", {"user": ALICE, "amount": 1, "expiresIn": 1})
    assert_error(api, r, "invalid_params", CREDIT_MSG, "amount")
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == MAX - 1


async def _events(api):
    return await ok(api, "listEvents", {})


async def test_a_refused_deposit_leaves_nothing(api, clock, db_path):
    await ok(api, "recordUsage", {"user": ALICE, "amount": MAX, "model": "m"})
    await ok(api, "deposit", {"user": ALICE, "amount": MAX, "expiresIn": 1})
    rows_before = ledger_rows(db_path, ALICE)
    bal_before = await ok(api, "getBalance", {"user": ALICE})
    ev_before = await _events(api)
    # refused with an idempotency key
    r = await api.call("deposit", {"user": ALICE, "amount": 10, "expiresIn": 1}, idempotency_key="k1")
    assert_error(api, r, "invalid_params", CREDIT_MSG, "amount")
    assert ledger_rows(db_path, ALICE) == rows_before
    assert await ok(api, "getBalance", {"user": ALICE}) == bal_before
    assert await _events(api) == ev_before
    # same key, same params: refused again (nothing stored)
    r = await api.call("deposit", {"user": ALICE, "amount": 10, "expiresIn": 1}, idempotency_key="k1")
    assert_error(api, r, "invalid_params", CREDIT_MSG, "amount")
    # same key, other params: not a conflict (the key was not consumed)
    got = await ok(api, "deposit", {"user": ALICE, "amount": 10}, idempotency_key="k1")
    assert got["amount"] == 10
    # after expiry a deposit forfeits the expired lot first: then it fits
    clock.advance(days=2)
    await ok(api, "deposit", {"user": ALICE, "amount": MAX, "expiresIn": 1})


async def test_a_starter_credit_refused_is_granted_once_credit_is_spent(api, clock, db_path):
    await ok(api, "recordUsage", {"user": ALICE, "amount": MAX, "model": "m"})
    await ok(api, "deposit", {"user": ALICE, "amount": MAX, "expiresIn": 5})
    r = await api.call("grantStarterCredit", {"user": ALICE})
    assert_error(api, r, "invalid_params", CREDIT_MSG, "amount")
    assert not ledger_rows(db_path, ALICE, tags="starter-credit")
    await ok(api, "recordUsage", {"user": ALICE, "amount": 1000, "model": "m"})  # spends credit
    got = await ok(api, "grantStarterCredit", {"user": ALICE})
    assert got["amount"] == 500
    again = await ok(api, "grantStarterCredit", {"user": ALICE})
    assert again["transactionId"] == got["transactionId"]


async def test_a_refused_deposit_in_a_commit_of_many_keeps_the_others(api, clock, db_path):
    await ok(api, "recordUsage", {"user": ALICE, "amount": MAX, "model": "m"})
    await ok(api, "deposit", {"user": ALICE, "amount": MAX, "expiresIn": 1})
    calls = []
    for i in range(30):
        if i % 3 == 0:
            calls.append(api.call("deposit", {"user": ALICE, "amount": 5, "expiresIn": 1}, idempotency_key=f"b{i}"))
        elif i % 3 == 1:
            calls.append(api.call("deposit", {"user": BOB, "amount": 7, "expiresIn": 3}))
        else:
            calls.append(api.call("recordUsage", {"user": BOB, "amount": 1, "model": "m"}))
    replies = await asyncio.gather(*calls)
    for i, r in enumerate(replies):
        if i % 3 == 0:
            assert_error(api, r, "invalid_params", CREDIT_MSG, "amount")
        else:
            assert r.ok, r
    assert (await ok(api, "getBalance", {"user": BOB}))["balance"] == 10 * 7 - 10
    assert len(ledger_rows(db_path, ALICE)) == 2
    # one deposit.created per accepted deposit (2 of ALICE's before + 10 of BOB's)
    events = (await ok(api, "listEvents", {"limit": 100}))["events"]
    assert sum(1 for e in events if e["type"] == "deposit.created") == 11, [e["type"] for e in events]
