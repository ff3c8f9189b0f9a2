"""Unspent expiring credit is kept within the signed 64-bit range, so that every sum of it
(getBalance's expired credit, listAccounts, a hold's available, the alerts' balance) is one too."""
from __future__ import annotations

from conftest import assert_error, ok

ALICE = "alice@example.com"
INT64_MAX = 2**63 - 1


async def test_expiring_credit_past_int64_is_refused_and_reads_stay_whole(any_api, clock):
    # usage may take a balance negative, and a deposit does not pay off the debt first: its
    # credit stays unspent, so two such deposits could hold more than INT64_MAX between them
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": INT64_MAX, "model": "m"})
    await ok(any_api, "deposit", {"user": ALICE, "amount": INT64_MAX, "expiresIn": 1})
    r = await any_api.call("deposit", {"user": ALICE, "amount": 10, "expiresIn": 1})
    assert_error(any_api, r, "invalid_params", "amount would take the user's unspent expiring credit outside the signed 64-bit range", "amount")
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
