"""Model-based test: a real server, driven by long seeded random sequences of calls over REST,
ZAP/JSON and ZAP/msgpack (batches included, valid and invalid input, three tenants, a read key,
idempotency keys, time moved by the FakeClock, the expiry sweep), answers exactly as the model
of the contract in tests/model/billing.py says it must (tests/model/driver.py compares).

- CI: the seeds in DEFAULT_SEEDS, DEFAULT_STEPS steps each (about a minute on 2 cores).
- Longer or other runs: `MODEL_SEED=7,8 MODEL_STEPS=5000 pytest tests/test_model.py -k agrees`
  (a failure prints the seed, the step and this command for replaying it).
- Not vacuous: a run must reach MIN_STEPS steps, succeed with every operation, and reach every
  outcome of REQUIRED_OUTCOMES (a partial capture, a burn across grants, a duplicate event, a
  preview partly paid by credit, ...); and a deliberately wrong model must be caught
  (test_a_wrong_model_is_caught).
- Backends: it runs on the `server` fixture of conftest.py (SQLite today); a backend fixture
  that parametrizes `server` runs it on every backend.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import pytest
from conftest import Api
from model.billing import OPS, Model
from model.driver import Driver, Mismatch, Tenant
from invariants import check_invariants

from zapbilling.app import STORE, sweep_once

T0 = int(datetime(2031, 5, 20, 10, tzinfo=timezone.utc).timestamp()) * 1_000_000
DEFAULT_SEEDS = (1, 2)
DEFAULT_STEPS = 3500
MIN_STEPS = 300
SEEDS = tuple(int(s) for s in os.environ["MODEL_SEED"].split(",")) if os.environ.get("MODEL_SEED") else DEFAULT_SEEDS
STEPS = int(os.environ.get("MODEL_STEPS", str(DEFAULT_STEPS)))

# What a run must have reached (the model's and the driver's names for them).
REQUIRED_OUTCOMES = [
    # ledger
    "usage skipped", "usage requestId repeat", "usage spends expiring money", "expiring deposit",
    "starter credit repeat", "forfeit by a write", "forfeit by the sweep",
    "refund of a usage charge", "refund of a capture", "charge refunded in full", "refund exceeding its original refused",
    "refund of a non-charge refused", "refund of a forfeit refused", "refund of an unknown original",
    # holds
    "partial capture", "full capture", "capture beyond the hold refused", "hold released", "hold expired by time",
    "hold refused: insufficient funds", "hold beyond available with allowOverdraft", "hold requestId repeat",
    "settling a hold captured refused", "settling a hold released refused", "settling a hold expired refused",
    # meters and events
    "duplicate meter event", "duplicate meter event within one batch", "unknown meter", "meter eventName taken",
    "api-usage meter event",
    *(f"summary of a {a} meter" for a in ("sum", "count", "last", "max", "min", "unique_count")),
    # grants
    "burn across several grants", "burn with overage", "burn of nothing", "burn of a meter-restricted grant",
    "grant voided", "void of a voided grant refused", "expire row by a write", "expire row by the sweep",
    # pricing and previews
    "preview priced per_unit", "preview priced tiered", "preview priced volume", "a plan's rule wins over a plan-less one",
    "preview partly paid by credit", "preview wholly paid by credit", "preview with meter-restricted credit",
    # the int64 edge, over-long input, times on boundaries
    "balance beyond int64 refused", "holds beyond int64 refused", "meter sum beyond int64 refused",
    "price beyond int64 refused", "balance - holds beyond int64", "expiring credit beyond int64 refused", "idempotency key too long", "text too long sent", "a time on a boundary",
    # paging
    "paging from a row", "paging from an unknown row", "page with more after it",
    # idempotency
    "idempotency replay", "idempotency conflict", "skipped usage claims its idempotency key", "a skipped usage's key used again",
    # refusals named by their words
    "recordUsage refused: amount is required", "recordMeterEvents refused: meter not found",
    "recordMeterEvents refused: maximum 100 events per batch", "recordMeterEvents refused: at least one event is required",
    "createCreditGrant refused: invalid expiresIn", "createCreditGrant refused: meter not found",
    "burnCredits refused: meter not found", "deposit refused: amount must be positive",
    "createHold refused: expiresIn must be a positive number of seconds", "refund refused: original transaction not found",
    "getHold refused: hold not found", "voidCreditGrant refused: credit grant not found",
    "deletePricingRule refused: pricing rule not found", "createPricingRule refused: unitPrice must not be negative",
    "listTransactions refused: transaction not found", "listHolds refused: hold not found",
    "listCreditTransactions refused: credit grant not found",
    # errors
    "error invalid_params", "error not_found", "error conflict", "error insufficient_funds", "error forbidden",
    # what the driver sent
    "transport rest", "transport zap-json", "transport zap-msgpack", "batch over json", "batch over msgpack",
    "batch with mixed results", "batch entry invalid_request", "batch entry method_not_found",
    "read key reads", "read key refused", "unknown parameter sent", "required parameter missing", "wrong type sent",
    "unknown id", "another tenant's id", "idempotency key: same call again", "idempotency key: reused for another call",
    "idempotency key of a skipped usage: same call", "idempotency key of a skipped usage: a charge",
    "sweep", "checkpoint",
]


@pytest.fixture
async def model_server(server):
    """The server the model drives: conftest's (SQLite). The hook for more backends."""
    return server


async def make_driver(server, session, make_key, clock, seed: int, model: Model | None = None) -> Driver:
    clock.now = T0
    tenants = []
    for org, mode, scopes in (("acme", "live", ("admin", "read")), ("acme", "test", ("admin",)), ("globex", "live", ("admin",))):
        keys = {scope: await make_key(org, mode, scope) for scope in scopes}
        tenants.append(Tenant((org, mode), keys, {scope: f"key_#{org}{mode}{scope}" for scope in scopes}))
    store = server.app[STORE]

    async def sweep(now: int) -> None:
        await sweep_once(store, now)

    api = Api(session, str(server.make_url("")).rstrip("/"), None)
    return Driver(api, clock, sweep, tenants, seed, model)


def unreached(d: Driver) -> list[str]:
    reached = set(d.model.reached) | set(d.reached)
    missing = [o for o in REQUIRED_OUTCOMES if o not in reached]
    missing += [f"{m} ok" for m in OPS if f"{m} ok" not in reached]
    return missing


@pytest.mark.parametrize("seed", SEEDS)
async def test_the_model_agrees_with_the_server(model_server, session, make_key, clock, seed, db_path):
    d = await make_driver(model_server, session, make_key, clock, seed)
    started = time.monotonic()
    await d.run(STEPS)
    took = time.monotonic() - started
    oks = sum(v for k, v in d.reached.items() if k.endswith(" ok"))
    refused = sum(v for k, v in d.reached.items() if k.endswith(" refused") and not k.startswith("read key"))
    print(f"\nmodel run, seed {seed}: {d.step_no} steps, {d.calls} requests, {oks} answers compared ok, "
          f"{refused} refusals compared, {len(d.ids)} ids bound, {d.reached.get('checkpoint', 0)} checkpoints, "
          f"{len(d.model.reached)} outcomes reached, {took:.1f} s")
    if os.environ.get("MODEL_TRACE"):
        print("\n".join(d.trace))
        print("reached:", dict(sorted({**d.reached, **d.model.reached}.items())))
    assert d.step_no >= MIN_STEPS, f"seed {seed}: only {d.step_no} steps (at least {MIN_STEPS} wanted)"
    missing = unreached(d)
    assert not missing, (f"seed {seed}, {d.step_no} steps: the run left these unexercised: {missing} "
                         f"(replay: MODEL_SEED={seed} MODEL_STEPS={d.step_no} pytest tests/test_model.py -k agrees)")
    check_invariants(db_path)  # what the run wrote adds up, and every change has its one event


@pytest.mark.parametrize("variant", Model.VARIANTS)
async def test_a_wrong_model_is_caught(model_server, session, make_key, clock, variant):
    """The same driver with a deliberately wrong model (burns in reverse priority; refunds not
    capped by their original) must find a disagreement within a short run."""
    seed = int(os.environ.get("MODEL_VARIANT_SEED", "3"))
    d = await make_driver(model_server, session, make_key, clock, seed, Model(variant=variant))
    with pytest.raises(Mismatch) as caught:
        await d.run(int(os.environ.get("MODEL_VARIANT_STEPS", "1500")))
    print(f"{variant} caught at step {d.step_no}:", str(caught.value).splitlines()[0])
    assert "model and server disagree" in str(caught.value)


# -- what the model found ------------------------------------------------------------------------

async def test_a_meter_sum_that_fits_is_answered_though_a_running_total_overflows(any_api):
    """Found by the model (seed 2, step 3479: a summary of every user's events refused although
    their sum fits in int64): SQLite's SUM() fails as soon as a running total leaves the range.
    The summary and the invoice preview answer the exact sum; a sum beyond the range is refused."""
    from conftest import assert_error, ok

    api = any_api
    meter = (await ok(api, "createMeter", {"name": "big", "eventName": "big"}))["id"]
    big = 2**62 + 1
    events = [{"meterId": meter, "userId": "w", "value": v, "timestamp": f"2031-01-0{i + 1}"}
              for i, v in enumerate([big, big, -(2**62)])]
    await ok(api, "recordMeterEvents", {"events": events})
    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter, "userId": "w"})
    assert (summary["value"], summary["eventCount"]) == (2**62 + 2, 3)
    await ok(api, "createPricingRule", {"meterId": meter, "unitPrice": 1})
    preview = await ok(api, "invoicePreview", {"userId": "w"})
    assert [(i["quantity"], i["totalCost"]) for i in preview["lineItems"]] == [(2**62 + 2, 2**62 + 2)]
    await ok(api, "recordMeterEvents", {"events": [{"meterId": meter, "userId": "w", "value": big}]})  # 2^63 + 3
    for method, params in (("getMeterEventsSummary", {"meterId": meter}), ("invoicePreview", {"userId": "w"})):
        assert_error(api, await api.call(method, params), "invalid_params",
                     "the sum of this meter's values is beyond the signed 64-bit range")
