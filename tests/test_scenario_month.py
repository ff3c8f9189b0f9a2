"""One customer through one month (March 2026), end to end on the real server (real HTTP, real
SQLite file): a meter, events in several batches (one retried), credit grants of different
priorities (one expiring mid-month, one for another meter only, one in another currency), a
graduated pricing rule, the invoice preview for the month and the burn that settles it. Every
figure is worked out by hand in the comments; the FakeClock is moved through the month."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from conftest import ok

CAROL = "acme/carol"
DAVE = "acme/dave"
TRANSPORTS = ("rest", "zap-json", "zap-msgpack")


def at(text: str) -> int:
    """Microseconds since the epoch of a UTC 'YYYY-MM-DDTHH:MM' (computed here, not by the service)."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000


async def test_one_customer_through_march(api, clock):
    clock.now = at("2026-03-01T00:00")

    # -- set-up on 1 March -----------------------------------------------------------------
    api_calls = (await ok(api, "createMeter", {"name": "API calls", "eventName": "api_call"}))["id"]  # sum
    storage = (await ok(api, "createMeter", {"name": "Storage", "eventName": "storage_gb"}))["id"]   # no events
    # graduated: units 1..1000 at 3; 1001..10000 at 2 plus 200 once; from 10001 at 1 plus 1000 once
    tiers = [{"upTo": 1000, "price": 3, "flat": 0}, {"upTo": 10000, "price": 2, "flat": 200}, {"upTo": 0, "price": 1, "flat": 1000}]
    rule = await ok(api, "createPricingRule", {"meterId": api_calls, "model": "tiered", "tiers": tiers})
    assert rule["model"] == "tiered"

    async def grant(name: str, amount: int, **fields: Any) -> str:
        return (await ok(api, "createCreditGrant", {"userId": CAROL, "name": name, "amountCents": amount, **fields}))["id"]

    welcome = await grant("welcome", 500, priority=0)                                  # burns first
    promo = await grant("march promo", 1000, priority=1, expiresIn="360h")            # expires 16 March 00:00
    main = await grant("prepaid", 2000, priority=5)                                    # burns last
    storage_only = await grant("storage credit", 3000, priority=0, eligibility=[storage])  # never for API calls
    euros = await grant("euro credit", 5000, currency="eur")                          # never for a usd invoice
    grants = await ok(api, "listCreditGrants", {"userId": CAROL})
    promo_row = next(g for g in grants["grants"] if g["id"] == promo)
    assert promo_row["expiresAt"].startswith("2026-03-16T00:00:00")

    # -- 5 March: first batch, including a late event from February -------------------------
    clock.now = at("2026-03-05T00:00")
    batch1 = await ok(api, "recordMeterEvents", {"events": [
        {"meterId": api_calls, "userId": CAROL, "value": 1200, "timestamp": "2026-03-02T10:00:00Z", "idempotency": "carol-0302"},
        {"meterId": api_calls, "userId": CAROL, "value": 800, "timestamp": "2026-03-03T15:30:00Z", "idempotency": "carol-0303"},
        {"meterId": api_calls, "userId": CAROL, "value": 700, "timestamp": "2026-02-28T23:59:59Z", "idempotency": "carol-0228"},
    ]})
    assert [e["status"] for e in batch1["events"]] == ["created", "created", "created"]

    # -- 13 March: second batch; the client retries carol-0303 (with another value) ----------
    clock.now = at("2026-03-13T00:00")
    batch2 = await ok(api, "recordMeterEvents", {"events": [
        {"meterId": api_calls, "userId": CAROL, "value": 2500, "timestamp": "2026-03-09T08:00:00Z", "idempotency": "carol-0309"},
        {"meterId": api_calls, "userId": CAROL, "value": 999, "timestamp": "2026-03-03T15:30:00Z", "idempotency": "carol-0303"},
        {"meterId": api_calls, "userId": CAROL, "value": 1500, "timestamp": "2026-03-12T12:00:00Z", "idempotency": "carol-0312"},
        {"meterId": api_calls, "userId": DAVE, "value": 4000, "timestamp": "2026-03-10T00:00:00Z", "idempotency": "dave-0310"},
    ]})
    assert [e["status"] for e in batch2["events"]] == ["created", "duplicate", "created", "created"]
    assert batch2["events"][1]["id"] == batch1["events"][1]["id"]  # the original event's id
    assert batch2["count"] == 4

    # carol's March so far: 1200 + 800 + 2500 + 1500 = 6000 over 4 events (not the 999, not
    # February's 700, not dave's 4000)
    summary = await ok(api, "getMeterEventsSummary", {"meterId": api_calls, "userId": CAROL,
                                                      "periodStart": "2026-03-01", "periodEnd": "2026-03-31"})
    assert (summary["value"], summary["eventCount"]) == (6000, 4)

    # A mid-month preview, while the promo is still live:
    #   cost of 6000 = 1000x3 + (5000x2 + 200) = 3000 + 10200 = 13200
    #   credits: welcome 500 (prio 0; the storage grant, also prio 0, is not eligible),
    #            promo 1000 (prio 1), prepaid 2000 (prio 5) = 3500; due 13200 - 3500 = 9700
    mid = await ok(api, "invoicePreview", {"userId": CAROL, "periodStart": "2026-03-01", "periodEnd": "2026-03-31"})
    assert (mid["subtotal"], mid["creditApplied"], mid["amountDue"]) == (13200, 3500, 9700)

    # -- 20 March: the promo expired on the 16th, unspent -----------------------------------
    clock.now = at("2026-03-20T00:00")
    grants = {g["id"]: g for g in (await ok(api, "listCreditGrants", {"userId": CAROL}))["grants"]}
    assert (grants[promo]["active"], grants[promo]["remainingCents"]) == (False, 1000)
    assert all(grants[g]["active"] for g in (welcome, main, storage_only, euros))
    batch3 = await ok(api, "recordMeterEvents", {"events": [
        {"meterId": api_calls, "userId": CAROL, "value": 3000, "timestamp": "2026-03-20T09:00:00Z", "idempotency": "carol-0320"},
        {"meterId": api_calls, "userId": CAROL, "value": 1500, "timestamp": "2026-03-31T23:59:59Z", "idempotency": "carol-0331"},
        {"meterId": api_calls, "userId": CAROL, "value": 9999, "timestamp": "2026-04-01T00:00:00Z", "idempotency": "carol-0401"},
    ]})
    assert [e["status"] for e in batch3["events"]] == ["created", "created", "created"]

    # -- 1 April 06:00: the invoice for March ----------------------------------------------
    clock.now = at("2026-04-01T06:00")
    before = (await ok(api, "listCreditGrants", {"userId": CAROL}))["grants"]
    # quantity: 6000 + 3000 + 1500 (31 March 23:59:59 is in; 1 April 00:00 is out) = 10500
    # cost, graduated:  1..1000       1000 x 3          = 3000
    #                   1001..10000   9000 x 2 + 200    = 18200
    #                   10001..10500   500 x 1 + 1000   = 1500
    #                                                     -----
    #                                                     22700
    # credits (usd, eligible for API calls, active now), in burn order:
    #   welcome 500 (prio 0) -> 500; storage credit (prio 0): not eligible; promo: expired;
    #   prepaid 2000 (prio 5) -> 2000; euro credit: another currency     = 2500
    # amount due: 22700 - 2500 = 20200
    expected = {
        "userId": CAROL, "periodStart": "2026-03-01", "periodEnd": "2026-03-31", "currency": "usd",
        "lineItems": [{"meterId": api_calls, "meterName": "API calls", "quantity": 10500, "unitCost": 0,
                       "totalCost": 22700, "model": "tiered"}],
        "subtotal": 22700, "creditApplied": 2500, "amountDue": 20200,
    }
    previews = [await ok(api.using(t), "invoicePreview", {"userId": CAROL, "periodStart": "2026-03-01", "periodEnd": "2026-03-31"})
                for t in TRANSPORTS]
    assert previews == [expected] * 3
    # the previews (four so far) spent nothing
    assert (await ok(api, "listCreditGrants", {"userId": CAROL}))["grants"] == before

    # -- settle: burn credits for the invoice's charge of API calls -------------------------
    burn = await ok(api, "burnCredits", {"userId": CAROL, "amount": expected["subtotal"], "meterId": api_calls})
    # exactly what the preview applied, from exactly the grants it predicted, in that order
    assert (burn["requested"], burn["burned"], burn["overage"]) == (22700, 2500, 20200)
    assert burn["burned"] == expected["creditApplied"] and burn["overage"] == expected["amountDue"]
    assert burn["grants"] == [
        {"id": welcome, "burned": 500, "remainingCents": 0},
        {"id": main, "burned": 2000, "remainingCents": 0},
    ]
    after = {g["id"]: g for g in (await ok(api, "listCreditGrants", {"userId": CAROL}))["grants"]}
    old = {g["id"]: g for g in before}
    assert {gid: (g["remainingCents"], g["active"]) for gid, g in after.items()} == {
        welcome: (0, False),          # 500 - 500
        promo: (0, False),            # expired: the burn, the first write after, journaled the 1000 left
        main: (0, False),             # 2000 - 2000
        storage_only: (3000, True),   # not eligible, untouched
        euros: (5000, True),          # another currency, untouched
    }
    for gid in (storage_only, euros):
        assert after[gid] == old[gid]
    assert after[promo] == old[promo] | {"remainingCents": 0}
    journal = (await ok(api, "listCreditTransactions", {"userId": CAROL, "grantId": promo}))["transactions"]
    assert [(t["type"], t["amount"], t["remainingAfter"]) for t in journal] == [("expire", -1000, 0), ("grant", 1000, 1000)]
    assert await ok(api, "getCreditBalance", {"userId": CAROL}) == {
        "userId": CAROL, "balances": [{"currency": "eur", "available": 5000}, {"currency": "usd", "available": 3000}]}

    # a preview now finds no usable credit: the whole 22700 is due
    again = await ok(api, "invoicePreview", {"userId": CAROL, "periodStart": "2026-03-01", "periodEnd": "2026-03-31"})
    assert (again["subtotal"], again["creditApplied"], again["amountDue"]) == (22700, 0, 22700)
