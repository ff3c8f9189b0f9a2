"""An idempotency key is claimed by every call that carries it, whatever the call wrote,
nothing included (the contract's idempotency rule). Regression: a recordUsage that was skipped
(amount <= 0) did not claim its key, so the same key with an amount then charged money, and a
true retry of the first call was refused as a conflict.

For every mutating method (from the schema): a call with a key, its retry (the same answer),
and the same key with other params (409 conflict, nothing written). Then every way a mutating
call can succeed without writing a row of its own."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import REGISTRY, assert_error, balance, ok
from examples import load_examples, prepare
from zapbilling.schema import load

ALICE = "hanzo/alice"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "billing.zap"
EXAMPLES = load_examples(SCHEMA_FILE, load(SCHEMA_FILE))

Params = dict[str, Any]
# Other valid params for each mutating method's example: only the fingerprint differs.
OTHER: dict[str, Callable[[Params], Params]] = {
    "recordUsage": lambda p: p | {"amount": p["amount"] + 1},
    "deposit": lambda p: p | {"amount": p["amount"] + 1},
    "grantStarterCredit": lambda p: p | {"user": "hanzo/bob"},
    "refund": lambda p: p | {"amount": p["amount"] - 1},
    "createMeter": lambda p: p | {"name": p["name"] + " 2"},
    "recordMeterEvents": lambda p: p | {"events": [p["events"][0] | {"value": p["events"][0]["value"] + 1}, *p["events"][1:]]},
    "createCreditGrant": lambda p: p | {"amountCents": p["amountCents"] + 1},
    "voidCreditGrant": lambda p: p | {"id": "cg_other"},
    "burnCredits": lambda p: p | {"amount": p["amount"] + 1},
    "createPricingRule": lambda p: p | {"planId": "team"},
    "deletePricingRule": lambda p: p | {"id": "pr_other"},
    "createHold": lambda p: p | {"amount": p["amount"] + 1},
    "captureHold": lambda p: p | {"amount": p["amount"] + 1},
    "releaseHold": lambda p: p | {"id": "hold_other"},
    "createWebhookEndpoint": lambda p: p | {"description": p["description"] + " 2"},
    "deleteWebhookEndpoint": lambda p: p | {"id": "we_other"},
    "rotateWebhookSecret": lambda p: p | {"id": "we_other"},
    "redeliverEvent": lambda p: p | {"id": "evt_other"},
    "createAlert": lambda p: p | {"threshold": p["threshold"] + 1},
    "deleteAlert": lambda p: p | {"id": "alr_other"},
    "setSpendCap": lambda p: p | {"limit": p["limit"] + 1},
    "deleteSpendCap": lambda p: p | {"user": p["user"] + "-other"},
}
MUTATING = sorted(c.name for c in REGISTRY.commands.values() if c.mutates)


def test_every_mutating_method_has_other_params():
    assert sorted(OTHER) == MUTATING


@pytest.mark.parametrize("method", MUTATING)
async def test_a_key_is_claimed_by_the_first_call_for_good(any_api, method):
    params, _ = await prepare(any_api, EXAMPLES[f"billing.{method}"])
    first = await any_api.call(method, params, idempotency_key="K1")
    assert first.ok, first
    retry = await any_api.call(method, params, idempotency_key="K1")
    assert (retry.status, retry.result) == (first.status, first.result)
    other = await any_api.call(method, OTHER[method](params), idempotency_key="K1")
    assert_error(any_api, other, "conflict", "idempotency key was already used with different parameters", "idempotencyKey")


async def test_a_skipped_usage_claims_its_key(any_api):
    """The issue's sequence: the key of a skipped call cannot then charge money."""
    skip = {"user": ALICE, "amount": 0}
    first = await any_api.call("recordUsage", skip, idempotency_key="K1")
    assert (first.status, first.result) == (200, {"user": ALICE, "amount": 0, "status": "skipped"})
    charge = await any_api.call("recordUsage", {"user": ALICE, "amount": 1}, idempotency_key="K1")
    assert_error(any_api, charge, "conflict", "idempotency key was already used with different parameters", "idempotencyKey")
    retry = await any_api.call("recordUsage", skip, idempotency_key="K1")
    assert (retry.status, retry.result) == (200, first.result)  # still 200: nothing was created
    assert await balance(any_api) == 0
    assert (await ok(any_api, "listTransactions", {"user": ALICE}))["transactions"] == []


async def test_calls_that_write_no_row_of_their_own_claim_their_key(any_api):
    """A repeat of a requestId, the starter credit a second time, a duplicate meter event, a
    burn with nothing to burn, a hold's requestId again: each succeeds without a new row, and
    each claims its key all the same."""
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 5, "requestId": "r1"})
    await ok(any_api, "grantStarterCredit", {"user": ALICE})
    meter = await ok(any_api, "createMeter", {"name": "calls", "eventName": "calls"})
    event = {"meterId": meter["id"], "userId": ALICE, "value": 1, "idempotency": "e1"}
    await ok(any_api, "recordMeterEvents", {"events": [event]})
    await ok(any_api, "createHold", {"user": ALICE, "amount": 10, "requestId": "h1"})
    cases = [
        ("recordUsage", {"user": ALICE, "amount": 5, "requestId": "r1"}, {"user": ALICE, "amount": 6, "requestId": "r1"}),
        ("grantStarterCredit", {"user": ALICE}, {"user": "hanzo/bob"}),
        ("recordMeterEvents", {"events": [event]}, {"events": [event | {"value": 2}]}),
        ("burnCredits", {"userId": ALICE, "amount": 10}, {"userId": ALICE, "amount": 11}),
        ("createHold", {"user": ALICE, "amount": 10, "requestId": "h1"}, {"user": ALICE, "amount": 11, "requestId": "h1"}),
    ]
    for i, (method, params, other) in enumerate(cases):
        key = f"nothing-new-{i}"
        first = await any_api.call(method, params, idempotency_key=key)
        assert first.ok, (method, first)
        before = await ok(any_api, "getBalance", {"user": ALICE})
        refused = await any_api.call(method, other, idempotency_key=key)
        assert_error(any_api, refused, "conflict", "idempotency key was already used", "idempotencyKey")
        assert await ok(any_api, "getBalance", {"user": ALICE}) == before, method
        retry = await any_api.call(method, params, idempotency_key=key)
        assert (retry.status, retry.result) == (first.status, first.result), method
