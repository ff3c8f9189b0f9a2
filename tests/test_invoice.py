"""Pricing rules (create, list, delete) and the invoice preview, end to end on the real server
(real HTTP, real SQLite file) over REST, ZAP/JSON and ZAP/msgpack. One test per **Fix** of the
contract's "Pricing rules and invoice preview" section is named test_fix_...; every expected
figure is worked out by hand in a comment."""
from __future__ import annotations

import re
from typing import Any

from conftest import ok

ALICE = "hanzo/alice"
BOB = "hanzo/bob"
INT64_MAX = 2**63 - 1
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\Z")

# The contract's example tiers.
EXAMPLE = [{"upTo": 100, "price": 10, "flat": 0}, {"upTo": 500, "price": 5, "flat": 0}, {"upTo": 0, "price": 1, "flat": 100}]
MARCH = {"periodStart": "2026-03-01", "periodEnd": "2026-03-31"}


# -- helpers --------------------------------------------------------------------------------

def assert_error(api, r, kind: str, rest_status: int, zap_code: int, zap_status: int, message: str) -> None:
    assert r.error is not None, f"expected {kind}, got {r.status} {r.result!r}"
    assert r.error["kind"] == kind and message in r.error["message"], r.error
    if api.transport == "rest":
        assert r.status == rest_status
    else:
        assert (r.status, r.error["code"]) == (zap_status, zap_code)


def assert_invalid(api, r, message: str, param: str | None = None) -> None:
    assert_error(api, r, "invalid_params", 400, -32602, 200, message)
    if param is not None:
        assert r.error["param"] == param, r.error


def assert_not_found(api, r, message: str) -> None:
    assert_error(api, r, "not_found", 404, -32004, 200, message)


def assert_forbidden(api, r) -> None:
    assert_error(api, r, "forbidden", 403, -32003, 403, "")


async def meter(api, name: str, aggregation: str = "sum") -> str:
    m = await ok(api, "createMeter", {"name": name, "eventName": name.lower().replace(" ", "_"), "aggregationType": aggregation})
    return m["id"]


async def events(api, meter_id: str, *values_at: tuple[int, str], user: str = ALICE) -> None:
    """Record (value, timestamp) events for one user of one meter, in one batch."""
    batch = [{"meterId": meter_id, "userId": user, "value": v, "timestamp": ts} for v, ts in values_at]
    r = await ok(api, "recordMeterEvents", {"events": batch})
    assert [e["status"] for e in r["events"]] == ["created"] * len(batch)


async def rule(api, meter_id: str, **fields: Any) -> dict[str, Any]:
    return await ok(api, "createPricingRule", {"meterId": meter_id, **fields})


async def grant(api, amount: int, user: str = ALICE, **fields: Any) -> str:
    g = await ok(api, "createCreditGrant", {"userId": user, "amountCents": amount, **fields})
    return g["id"]


async def preview(api, **params: Any) -> dict[str, Any]:
    p = await ok(api, "invoicePreview", {"userId": ALICE, **MARCH, **params})
    assert p["subtotal"] == p["creditApplied"] + p["amountDue"], p
    return p


def items(p: dict[str, Any]) -> list[tuple[str, int, int, int, str]]:
    """(meterId, quantity, unitCost, totalCost, model) of each line item, in order."""
    return [(i["meterId"], i["quantity"], i["unitCost"], i["totalCost"], i["model"]) for i in p["lineItems"]]


async def grants_of(api, user: str = ALICE) -> list[dict[str, Any]]:
    return (await ok(api, "listCreditGrants", {"userId": user}))["grants"]


# -- createPricingRule ----------------------------------------------------------------------

async def test_create_pricing_rule_result_shape_and_defaults(any_api):
    m = await meter(any_api, "API calls")
    r = await any_api.call("createPricingRule", {"meterId": m})
    assert r.ok, r.error
    assert r.status == (201 if any_api.transport == "rest" else 200)
    created = r.result
    assert set(created) == {"id", "meterId", "planId", "model", "currency", "unitPrice", "tiers", "createdAt"}
    assert isinstance(created["id"], str) and created["id"]
    assert RFC3339.match(created["createdAt"]), created["createdAt"]
    # defaults: no plan, per_unit, usd, unit price 0, no tiers
    assert {k: created[k] for k in ("meterId", "planId", "model", "currency", "unitPrice", "tiers")} == {
        "meterId": m, "planId": "", "model": "per_unit", "currency": "usd", "unitPrice": 0, "tiers": []}
    # every field given; currency is lower-cased; a tier's missing fields default to 0
    full = await rule(any_api, m, planId="pro", model="volume", currency="EUR", unitPrice=0,
                      tiers=[{"upTo": 100, "price": 10}, {"flat": 3}])
    assert full["id"] != created["id"]
    assert {k: full[k] for k in ("meterId", "planId", "model", "currency", "unitPrice", "tiers")} == {
        "meterId": m, "planId": "pro", "model": "volume", "currency": "eur", "unitPrice": 0,
        "tiers": [{"upTo": 100, "price": 10, "flat": 0}, {"upTo": 0, "price": 0, "flat": 3}]}
    # the created rules are what the list answers
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == [created, full]


async def test_create_pricing_rule_requires_meter_id(any_api):
    for params in ({}, {"meterId": ""}, {"meterId": None, "unitPrice": 5}):
        assert_invalid(any_api, await any_api.call("createPricingRule", params), "meterId is required", "meterId")
    assert (await ok(any_api, "listPricingRules", {}))["count"] == 0


async def test_fix_rule_for_a_missing_meter_is_rejected(any_api, make_key):
    other_org = any_api.with_key(await make_key("globex", "live"))
    other_mode = any_api.with_key(await make_key("acme", "test"))
    foreign = await meter(other_org, "API calls")
    foreign_mode = await meter(other_mode, "API calls")
    for meter_id in ("mtr_000000000000000000000000", "no-such-meter", foreign, foreign_mode):
        r = await any_api.call("createPricingRule", {"meterId": meter_id, "unitPrice": 5})
        assert_not_found(any_api, r, "meter not found")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == []


async def test_fix_rule_with_an_unknown_model_is_rejected(any_api):
    m = await meter(any_api, "API calls")
    for model in ("graduated", "PER_UNIT", "package", {"name": "tiered"}, 1):
        r = await any_api.call("createPricingRule", {"meterId": m, "model": model, "tiers": EXAMPLE})
        assert_invalid(any_api, r, "model", "model")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == []


async def test_fix_rule_with_tiers_out_of_order_is_rejected(any_api):
    m = await meter(any_api, "API calls")
    for model in ("tiered", "volume"):
        for tiers, at in (
            ([{"upTo": 500, "price": 5}, {"upTo": 100, "price": 10}, {"price": 1}], 1),
            ([{"upTo": 100, "price": 10}, {"upTo": 100, "price": 5}, {"price": 1}], 1),  # equal bounds
            ([{"upTo": 100, "price": 10}, {"upTo": 500, "price": 5}, {"upTo": 200, "price": 2}, {"price": 1}], 2),
        ):
            r = await any_api.call("createPricingRule", {"meterId": m, "model": model, "tiers": tiers})
            assert_invalid(any_api, r, "tiers out of order", f"tiers[{at}].upTo")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == []


async def test_create_pricing_rule_rejects_malformed_rules(any_api):
    m = await meter(any_api, "API calls")
    cases = [
        # (params, message, param)
        ({"model": "tiered", "tiers": [{"upTo": 0, "price": 10}, {"price": 1}]},
         "only the last tier may be unbounded", "tiers[0].upTo"),
        ({"model": "volume", "tiers": [{"upTo": 100, "price": 10}, {"upTo": 0, "price": 5}, {"upTo": 500, "price": 1}]},
         "only the last tier may be unbounded", "tiers[1].upTo"),
        ({"model": "tiered", "tiers": [{"upTo": 100, "price": 10}, {"upTo": 500, "price": 5}]},
         "the last tier must be unbounded", "tiers[1].upTo"),
        ({"model": "volume", "tiers": [{"upTo": 100, "price": 10}]}, "the last tier must be unbounded", "tiers[0].upTo"),
        ({"unitPrice": -1}, "unitPrice must not be negative", "unitPrice"),
        ({"model": "tiered", "tiers": [{"upTo": -100, "price": 10}, {"price": 1}]}, "must not be negative", "tiers[0]"),
        ({"model": "tiered", "tiers": [{"upTo": 100, "price": -10}, {"price": 1}]}, "must not be negative", "tiers[0]"),
        ({"model": "volume", "tiers": [{"upTo": 100, "price": 10}, {"price": 1, "flat": -100}]}, "must not be negative", "tiers[1]"),
        ({"model": "per_unit", "unitPrice": 5, "tiers": EXAMPLE}, "tiers are only for the tiered and volume models", "tiers"),
        ({"unitPrice": 5, "tiers": [{"price": 5}]}, "tiers are only for the tiered and volume models", "tiers"),  # per_unit by default
        ({"model": "tiered"}, "tiers are required for the tiered model", "tiers"),
        ({"model": "volume", "tiers": []}, "tiers are required for the volume model", "tiers"),
        ({"unitPrice": 2**63}, "out of range", "unitPrice"),
    ]
    for params, message, param in cases:
        assert_invalid(any_api, await any_api.call("createPricingRule", {"meterId": m, **params}), message, param)
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == []


async def test_fix_upto_is_cumulative_for_graduated_pricing(any_api):
    graduated = await meter(any_api, "Graduated")
    volume = await meter(any_api, "Volume")
    await rule(any_api, graduated, model="tiered", tiers=EXAMPLE)
    await rule(any_api, volume, model="volume", tiers=EXAMPLE)
    await events(any_api, graduated, (250, "2026-03-02T00:00:00Z"), (350, "2026-03-03T00:00:00Z"))
    await events(any_api, volume, (600, "2026-03-02T00:00:00Z"))
    p = await preview(any_api)
    assert items(p) == [
        # 100x10 + 400x5 + (100 + 100x1) = 3200 (read as widths: 100x10 + 500x5 = 3500)
        (graduated, 600, 0, 3200, "tiered"),
        # 600 units in the last tier: 600x1 + 100 = 700
        (volume, 600, 1, 700, "volume"),
    ]
    assert p["subtotal"] == 3900
    # the bounds themselves: 500 units graduated is 100x10 + 400x5 = 3000, the 501st adds 100 + 1
    await events(any_api, graduated, (-100, "2026-03-04T00:00:00Z"))
    assert items(await preview(any_api))[0] == (graduated, 500, 0, 3000, "tiered")
    await events(any_api, graduated, (1, "2026-03-05T00:00:00Z"))
    assert items(await preview(any_api))[0] == (graduated, 501, 0, 3101, "tiered")


# -- listPricingRules -----------------------------------------------------------------------

async def test_fix_model_is_a_name_in_lists(any_api):
    m = await meter(any_api, "API calls")
    await rule(any_api, m, unitPrice=3)
    await rule(any_api, m, model="tiered", tiers=EXAMPLE)
    await rule(any_api, m, model="volume", tiers=EXAMPLE)
    listed = await ok(any_api, "listPricingRules", {"meterId": m})
    assert [r["model"] for r in listed["rules"]] == ["per_unit", "tiered", "volume"]
    assert all(type(r["model"]) is str for r in listed["rules"])


async def test_list_pricing_rules_filters_by_meter_and_plan_in_creation_order(any_api, make_key):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    r1 = await rule(any_api, a, unitPrice=1)
    r2 = await rule(any_api, b, unitPrice=2, planId="pro")
    r3 = await rule(any_api, a, unitPrice=3, planId="pro")
    r4 = await rule(any_api, b, unitPrice=4)
    r5 = await rule(any_api, a, unitPrice=5, planId="team", currency="eur")
    # another org's rule is never listed
    other = any_api.with_key(await make_key("globex", "live"))
    await rule(other, await meter(other, "Meter A"), unitPrice=9)

    async def listed(**filters: Any) -> list[str]:
        page = await ok(any_api, "listPricingRules", filters)
        assert page["count"] == len(page["rules"])
        return [r["id"] for r in page["rules"]]

    assert await listed() == [r["id"] for r in (r1, r2, r3, r4, r5)]
    assert await listed(meterId=a) == [r1["id"], r3["id"], r5["id"]]
    assert await listed(meterId=b) == [r2["id"], r4["id"]]
    assert await listed(planId="pro") == [r2["id"], r3["id"]]
    assert await listed(meterId=a, planId="pro") == [r3["id"]]
    assert await listed(meterId=b, planId="team") == []
    page = await ok(any_api, "listPricingRules", {})
    assert page["count"] == 5
    assert page["rules"][4] == r5


# -- deletePricingRule ----------------------------------------------------------------------

async def test_delete_pricing_rule(any_api, make_key):
    m = await meter(any_api, "API calls")
    keep = await rule(any_api, m, unitPrice=1)
    gone = await rule(any_api, m, unitPrice=2)
    r = await any_api.call("deletePricingRule", {"id": gone["id"]})
    assert r.ok, r.error
    assert r.status == 200
    assert r.result == {"id": gone["id"], "deleted": True}
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == [keep]
    # a second delete, an unknown id of any shape: 404
    for rule_id in (gone["id"], "pr_000000000000000000000000", "nope"):
        assert_not_found(any_api, await any_api.call("deletePricingRule", {"id": rule_id}), "pricing rule not found")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == [keep]


async def test_delete_pricing_rule_of_another_tenant_is_not_found(any_api, make_key):
    m = await meter(any_api, "API calls")
    mine = await rule(any_api, m, unitPrice=1)
    for other in (any_api.with_key(await make_key("globex", "live")), any_api.with_key(await make_key("acme", "test"))):
        assert_not_found(other, await other.call("deletePricingRule", {"id": mine["id"]}), "pricing rule not found")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == [mine]


async def test_deleted_rule_no_longer_prices_the_preview(any_api):
    m = await meter(any_api, "API calls")
    await rule(any_api, m, unitPrice=2)
    newest = await rule(any_api, m, unitPrice=3)
    await events(any_api, m, (10, "2026-03-10T00:00:00Z"))
    assert items(await preview(any_api)) == [(m, 10, 3, 30, "per_unit")]  # the newest rule: 10x3
    await ok(any_api, "deletePricingRule", {"id": newest["id"]})
    assert items(await preview(any_api)) == [(m, 10, 2, 20, "per_unit")]  # the older one again: 10x2


# -- invoicePreview: quantities and costs ---------------------------------------------------

AGGREGATIONS = {"sum": 22, "count": 4, "max": 9, "min": 3, "last": 3, "unique_count": 3}


async def test_invoice_preview_lists_meters_with_events_quantity_by_aggregation(any_api):
    meters = {agg: await meter(any_api, f"By {agg}", agg) for agg in AGGREGATIONS}
    idle = await meter(any_api, "Idle")  # events only outside the period or of another user
    for agg, m in reversed(meters.items()):  # recorded in the reverse of meter creation order
        # In March, for alice: 5, 3, 5, 9; the latest timestamp (03-20) carries 3, inserted second.
        # sum 22, count 4, max 9, min 3, last 3, unique_count 3 (5, 3, 9).
        await events(any_api, m, (5, "2026-03-02T10:00:00Z"), (3, "2026-03-20T10:00:00Z"),
                     (5, "2026-03-05T10:00:00Z"), (9, "2026-03-10T10:00:00Z"))
        # outside the period (late February, 1 April 00:00) and another user's: none counts
        await events(any_api, m, (1000, "2026-02-28T23:59:59Z"), (-50, "2026-04-01T00:00:00Z"))
        await events(any_api, m, (100, "2026-03-15T00:00:00Z"), user=BOB)
    await events(any_api, idle, (7, "2026-02-01T00:00:00Z"))
    await events(any_api, idle, (7, "2026-03-15T00:00:00Z"), user=BOB)
    zero = await meter(any_api, "Zero")  # events that add up to nothing still make a line item
    await events(any_api, zero, (5, "2026-03-15T00:00:00Z"), (-5, "2026-03-16T00:00:00Z"))

    p = await preview(any_api)
    # meters without a rule: listed at cost 0 with model "", in meter creation order; Idle absent
    assert items(p) == [(meters[agg], quantity, 0, 0, "") for agg, quantity in AGGREGATIONS.items()] + [(zero, 0, 0, 0, "")]
    assert [i["meterName"] for i in p["lineItems"]] == [f"By {agg}" for agg in AGGREGATIONS] + ["Zero"]
    assert (p["subtotal"], p["creditApplied"], p["amountDue"]) == (0, 0, 0)
    # bob's own preview sees only his events: one event of 100 per meter, 7 on Idle
    bob = await ok(any_api, "invoicePreview", {"userId": BOB, **MARCH})
    assert [(i["meterId"], i["quantity"]) for i in bob["lineItems"]] == [
        (meters["sum"], 100), (meters["count"], 1), (meters["max"], 100), (meters["min"], 100),
        (meters["last"], 100), (meters["unique_count"], 1), (idle, 7)]
    # a user with no events has no line items at all
    nobody = await ok(any_api, "invoicePreview", {"userId": "hanzo/nobody"})
    assert (nobody["lineItems"], nobody["subtotal"]) == ([], 0)


async def test_invoice_preview_costs_each_line_by_its_rule(any_api):
    per_unit = await meter(any_api, "Per unit")
    graduated = await meter(any_api, "Graduated")
    volume = await meter(any_api, "Volume")
    volume_mid = await meter(any_api, "Volume mid")
    refunded = await meter(any_api, "Refunded")
    free = await meter(any_api, "No rule")
    await rule(any_api, per_unit, unitPrice=7)
    await rule(any_api, graduated, model="tiered", tiers=EXAMPLE)
    await rule(any_api, volume, model="volume", tiers=EXAMPLE)
    await rule(any_api, volume_mid, model="volume", tiers=EXAMPLE)
    await rule(any_api, refunded, unitPrice=7)
    for m, value in ((per_unit, 30), (graduated, 600), (volume, 600), (volume_mid, 101), (refunded, -5), (free, 40)):
        await events(any_api, m, (value, "2026-03-15T12:00:00Z"))
    p = await preview(any_api)
    assert items(p) == [
        (per_unit, 30, 7, 210, "per_unit"),     # 30x7
        (graduated, 600, 0, 3200, "tiered"),    # 100x10 + 400x5 + (100 + 100x1); unitCost 0 for graduated
        (volume, 600, 1, 700, "volume"),        # 600x1 + 100; unitCost = the chosen tier's price
        (volume_mid, 101, 5, 505, "volume"),    # 101x5
        (refunded, -5, 7, 0, "per_unit"),       # quantity <= 0 costs nothing
        (free, 40, 0, 0, ""),                   # no rule
    ]
    assert p["subtotal"] == 210 + 3200 + 700 + 505  # 4615
    assert (p["creditApplied"], p["amountDue"]) == (0, 4615)
    assert p["currency"] == "usd" and p["userId"] == ALICE


# -- invoicePreview: plan and currency ------------------------------------------------------

async def test_fix_preview_honours_plan_id(any_api):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    await rule(any_api, a, unitPrice=20, planId="pro")  # created before the plan-less one: still wins for pro
    await rule(any_api, a, unitPrice=10)
    await rule(any_api, a, unitPrice=11)                # newest plan-less rule
    await rule(any_api, a, unitPrice=30, planId="team")
    await rule(any_api, b, unitPrice=2)                 # b has no pro rule
    await rule(any_api, b, unitPrice=50, planId="team")
    await rule(any_api, b, unitPrice=60, planId="team")  # newest team rule
    await events(any_api, a, (10, "2026-03-03T00:00:00Z"))
    await events(any_api, b, (10, "2026-03-03T00:00:00Z"))
    # no plan: the newest plan-less rule of each meter (plan rules never apply)
    assert items(await preview(any_api)) == [(a, 10, 11, 110, "per_unit"), (b, 10, 2, 20, "per_unit")]
    # pro: a's pro rule beats its plan-less ones; b falls back to its plan-less rule
    assert items(await preview(any_api, planId="pro")) == [(a, 10, 20, 200, "per_unit"), (b, 10, 2, 20, "per_unit")]
    # team: both meters' team rules; the newest of b's two
    p = await preview(any_api, planId="team")
    assert items(p) == [(a, 10, 30, 300, "per_unit"), (b, 10, 60, 600, "per_unit")]
    assert p["subtotal"] == 900
    # a plan with no rules at all: plan-less rules
    assert items(await preview(any_api, planId="enterprise")) == [(a, 10, 11, 110, "per_unit"), (b, 10, 2, 20, "per_unit")]


async def test_fix_preview_honours_currency(any_api):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    await rule(any_api, a, unitPrice=3)                     # usd
    await rule(any_api, a, unitPrice=5, currency="eur")
    await rule(any_api, a, unitPrice=8, currency="jpy", planId="pro")
    await rule(any_api, b, unitPrice=4)                     # b has no eur rule
    await events(any_api, a, (100, "2026-03-03T00:00:00Z"))
    await events(any_api, b, (100, "2026-03-03T00:00:00Z"))
    await grant(any_api, 50)                                # usd
    await grant(any_api, 120, currency="eur")
    await grant(any_api, 10_000, currency="gbp")            # never applies below

    usd = await preview(any_api)
    # usd rules: 100x3 + 100x4 = 700; the usd grant only: 50
    assert items(usd) == [(a, 100, 3, 300, "per_unit"), (b, 100, 4, 400, "per_unit")]
    assert (usd["currency"], usd["subtotal"], usd["creditApplied"], usd["amountDue"]) == ("usd", 700, 50, 650)
    eur = await preview(any_api, currency="EUR")
    # eur rules: 100x5 on a; b has none in eur, so it is listed at 0 with model ""; the eur grant: 120
    assert items(eur) == [(a, 100, 5, 500, "per_unit"), (b, 100, 0, 0, "")]
    assert (eur["currency"], eur["subtotal"], eur["creditApplied"], eur["amountDue"]) == ("eur", 500, 120, 380)
    # jpy: the only jpy rule is for plan pro
    assert items(await preview(any_api, currency="jpy")) == [(a, 100, 0, 0, ""), (b, 100, 0, 0, "")]
    jpy = await preview(any_api, currency="jpy", planId="pro")
    assert items(jpy) == [(a, 100, 8, 800, "per_unit"), (b, 100, 0, 0, "")]
    assert (jpy["subtotal"], jpy["creditApplied"], jpy["amountDue"]) == (800, 0, 800)
    assert_invalid(any_api, await any_api.call("invoicePreview", {"userId": ALICE, "currency": "xyz"}), "unknown currency: xyz")


# -- invoicePreview: credits ----------------------------------------------------------------

async def test_fix_preview_honours_grant_eligibility(any_api):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    c = await meter(any_api, "Meter C")
    await rule(any_api, a, unitPrice=10)
    await rule(any_api, b, unitPrice=10)
    await rule(any_api, c, unitPrice=10)
    await events(any_api, a, (100, "2026-03-03T00:00:00Z"))  # 1000
    await events(any_api, b, (50, "2026-03-03T00:00:00Z"))   # 500
    await events(any_api, c, (20, "2026-03-03T00:00:00Z"))   # 200
    await grant(any_api, 800, priority=0, eligibility=[b])     # only for b, burns first where eligible
    await grant(any_api, 700, priority=5)                      # for anything
    await grant(any_api, 150, priority=1, eligibility=[a, c])  # for a or c
    p = await preview(any_api)
    # a (1000): eligible are the a/c grant (prio 1) 150, then the general one (prio 5) 700 -> 850
    # b (500): the b grant (prio 0) pays all 500
    # c (200): a/c grant is spent, general grant is spent -> 0
    # (ignoring eligibility would burn 800 + 150 + 700 = 1650 of the 1700)
    assert p["subtotal"] == 1700
    assert p["creditApplied"] == 150 + 700 + 500
    assert p["amountDue"] == 1700 - 1350


async def test_preview_applies_credits_per_line_item_in_meter_order(any_api):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    await rule(any_api, a, unitPrice=1)
    await rule(any_api, b, unitPrice=1)
    await events(any_api, b, (300, "2026-03-03T00:00:00Z"))  # recorded first, but b is the second line item
    await events(any_api, a, (400, "2026-03-04T00:00:00Z"))
    await grant(any_api, 500)                               # for anything
    await grant(any_api, 1000, priority=9, eligibility=[a])  # a only, burns after the general grant
    p = await preview(any_api)
    # a (400) comes first: the general grant (prio 0) pays 400, leaving 100
    # b (300): the general grant's last 100; the a-only grant cannot pay -> 200 due
    # (b first would have given 300 + 200 from the general and 200 from the a-only grant: 0 due)
    assert [i["meterId"] for i in p["lineItems"]] == [a, b]
    assert (p["subtotal"], p["creditApplied"], p["amountDue"]) == (700, 500, 200)


async def test_preview_applies_credits_in_burn_order(any_api):
    """Per line item, grants go in burnCredits' order: priority ascending, then earliest expiry,
    never-expiring last. Two line items of 100 each (a, then b); grants of 100 each. Which grant
    line a takes decides whether line b can still be paid, so the order shows in creditApplied."""
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    await rule(any_api, a, unitPrice=1)
    await rule(any_api, b, unitPrice=1)
    cases = {
        # priority beats expiry: a takes the prio-0 a/b grant, so b finds nothing -> 100
        "hanzo/p": ([dict(priority=0, eligibility=[a, b]), dict(priority=5, expiresIn="720h", eligibility=[a])], 100),
        # same priority, an expiring grant before a never-expiring one (created first): a takes
        # the expiring a/b grant, b cannot use the a-only one -> 100
        "hanzo/q": ([dict(eligibility=[a]), dict(expiresIn="720h", eligibility=[a, b])], 100),
        # same priority, earliest expiry first: a takes the 10-day a-only grant, b the 60-day a/b one -> 200
        "hanzo/r": ([dict(expiresIn="1440h", eligibility=[a, b]), dict(expiresIn="240h", eligibility=[a])], 200),
    }
    for user, (grant_fields, applied) in cases.items():
        await events(any_api, a, (100, "2026-03-03T00:00:00Z"), user=user)
        await events(any_api, b, (100, "2026-03-03T00:00:00Z"), user=user)
        for fields in grant_fields:
            await grant(any_api, 100, user=user, **fields)
        p = await ok(any_api, "invoicePreview", {"userId": user, **MARCH})
        assert (p["subtotal"], p["creditApplied"], p["amountDue"]) == (200, applied, 200 - applied), user
        # burning each line item for real spends exactly what the preview applied
        burned = 0
        for item in p["lineItems"]:
            burn = await ok(any_api, "burnCredits", {"userId": user, "amount": item["totalCost"], "meterId": item["meterId"]})
            burned += burn["burned"]
        assert burned == applied, user


async def test_invoice_preview_subtotal_equals_credit_applied_plus_amount_due(any_api, clock):
    m = await meter(any_api, "API calls")
    await rule(any_api, m, unitPrice=10)
    await events(any_api, m, (123, "2026-03-03T00:00:00Z"))  # 1230
    seen = []
    # no credit, then partly covered, then more than covered, then an expired and a voided grant
    for add in (None, 200, 1000, 5000):
        if add is not None:
            await grant(any_api, add)
        p = await preview(any_api)
        seen.append((p["subtotal"], p["creditApplied"], p["amountDue"]))
    assert seen == [(1230, 0, 1230), (1230, 200, 1030), (1230, 1200, 30), (1230, 1230, 0)]
    for g in await grants_of(any_api):
        await ok(any_api, "voidCreditGrant", {"id": g["id"]})
    await grant(any_api, 400, expiresIn="1h")
    await grant(any_api, 300)
    clock.advance(seconds=3601)
    p = await preview(any_api)
    # voided grants and the expired 400 do not count: only the 300
    assert (p["subtotal"], p["creditApplied"], p["amountDue"]) == (1230, 300, 930)


async def test_fix_preview_never_spends_grants(any_api):
    a = await meter(any_api, "Meter A")
    b = await meter(any_api, "Meter B")
    await rule(any_api, a, unitPrice=10)
    await rule(any_api, b, model="tiered", tiers=EXAMPLE)
    await events(any_api, a, (30, "2026-03-03T00:00:00Z"))   # 300
    await events(any_api, b, (600, "2026-03-03T00:00:00Z"))  # 3200
    g1 = await grant(any_api, 1000, priority=1, expiresIn="720h")
    g2 = await grant(any_api, 2000, priority=2, eligibility=[b])
    g3 = await grant(any_api, 400, currency="eur")
    before = await grants_of(any_api)
    balance_before = await ok(any_api, "getCreditBalance", {"userId": ALICE})

    first = await preview(any_api)
    second = await preview(any_api)
    assert first == second
    # a (300) from g1; b (3200): g1's other 700, then g2's 2000 -> 3000 applied, 500 due
    assert (first["subtotal"], first["creditApplied"], first["amountDue"]) == (3500, 3000, 500)
    assert await grants_of(any_api) == before
    assert [(g["id"], g["remainingCents"], g["active"]) for g in before] == [(g1, 1000, True), (g2, 2000, True), (g3, 400, True)]
    assert await ok(any_api, "getCreditBalance", {"userId": ALICE}) == balance_before
    # the credit is all still there to burn
    burn = await ok(any_api, "burnCredits", {"userId": ALICE, "amount": 3000, "meterId": b})
    assert (burn["burned"], burn["overage"]) == (3000, 0)


async def test_invoice_preview_may_be_called_with_a_read_scope_key(any_api, make_key):
    reader = any_api.with_key(await make_key("acme", "live", "read"))
    m = await meter(any_api, "API calls")
    await rule(any_api, m, unitPrice=4)
    await events(any_api, m, (25, "2026-03-03T00:00:00Z"))
    await grant(any_api, 60)
    r = await reader.call("invoicePreview", {"userId": ALICE, **MARCH})
    assert r.ok, r.error
    assert r.status == 200
    assert (r.result["subtotal"], r.result["creditApplied"], r.result["amountDue"]) == (100, 60, 40)
    assert r.result == await preview(any_api)
    # the same key may not change anything
    assert_forbidden(reader, await reader.call("createPricingRule", {"meterId": m, "unitPrice": 1}))
    assert_forbidden(reader, await reader.call("burnCredits", {"userId": ALICE, "amount": 10}))


# -- invoicePreview: period -----------------------------------------------------------------

async def test_invoice_preview_rejects_bad_dates(any_api):
    for field in ("periodStart", "periodEnd"):
        for bad in ("yesterday", "2026-13-01", "2026-02-30", "2026/03/01", "2026-03-01T25:00:00Z",
                    "2026-03-01T10:00:00", "1709251200", "03-01-2026"):
            r = await any_api.call("invoicePreview", {"userId": ALICE, field: bad})
            assert_invalid(any_api, r, f"invalid {field} format", field)
        r = await any_api.call("invoicePreview", {"userId": ALICE, field: 20260301})
        assert_invalid(any_api, r, field, field)
    assert_invalid(any_api, await any_api.call("invoicePreview", {}), "userId is required", "userId")


async def test_invoice_preview_period_bounds(any_api):
    m = await meter(any_api, "API calls")
    await rule(any_api, m, unitPrice=1)
    await events(any_api, m,
                 (1, "2026-02-28T23:59:59.999Z"),
                 (10, "2026-03-01T00:00:00Z"),
                 (100, "2026-03-31T23:59:59.999Z"),
                 (1000, "2026-04-01T00:00:00Z"),
                 (10000, "2026-04-01T12:00:00Z"))

    async def quantity(**period: Any) -> int:
        p = await ok(any_api, "invoicePreview", {"userId": ALICE, **period})
        # the period comes back as given, "" for an absent side
        assert (p["periodStart"], p["periodEnd"]) == (period.get("periodStart", ""), period.get("periodEnd", ""))
        return sum(i["quantity"] for i in p["lineItems"])

    # a bare start is 00:00 of that day (inclusive); a bare end includes that whole day
    assert await quantity(periodStart="2026-03-01", periodEnd="2026-03-31") == 110
    # a full timestamp as end is exclusive; as start, inclusive
    assert await quantity(periodStart="2026-03-01T00:00:00Z", periodEnd="2026-04-01T00:00:00Z") == 110
    assert await quantity(periodStart="2026-03-01T00:00:00.001Z", periodEnd="2026-04-01T00:00:00.001Z") == 1100
    assert await quantity(periodStart="2026-03-01", periodEnd="2026-04-01") == 11110
    assert await quantity(periodStart="2026-03-31T23:59:59.999Z", periodEnd="2026-03-31T23:59:59.999Z") == 0
    # offsets are honoured: 2026-03-01T01:00:00+01:00 is 2026-03-01T00:00:00Z
    assert await quantity(periodStart="2026-03-01T01:00:00+01:00", periodEnd="2026-04-01T02:00:00+02:00") == 110
    # absent sides are unbounded
    assert await quantity() == 11111
    assert await quantity(periodStart="2026-04-01") == 11000
    assert await quantity(periodEnd="2026-02-28") == 1
    assert await quantity(periodStart="2026-03-01", periodEnd="") == 11110  # "" means absent


async def test_invoice_preview_overflow_is_invalid_params(any_api):
    huge = await meter(any_api, "Huge")
    big = await meter(any_api, "Big")
    await rule(any_api, huge, unitPrice=2)
    await rule(any_api, big, unitPrice=1)
    await events(any_api, huge, (2**62, "2026-03-03T00:00:00Z"))  # 2^62 x 2 = 2^63: beyond int64
    r = await any_api.call("invoicePreview", {"userId": ALICE})
    assert_invalid(any_api, r, "64-bit")

    # for bob each line fits, their sum does not: INT64_MAX x 1 + 2^62 x 1
    await events(any_api, big, (INT64_MAX, "2026-03-03T00:00:00Z"), user=BOB)
    await rule(any_api, huge, unitPrice=1)   # newest: huge now costs 2^62 for bob
    await events(any_api, huge, (2**62, "2026-03-03T00:00:00Z"), user=BOB)
    r = await any_api.call("invoicePreview", {"userId": BOB})
    assert_invalid(any_api, r, "64-bit")

    # a meter sum beyond int64 in the database
    await events(any_api, big, (INT64_MAX, "2026-03-03T00:00:00Z"), (1, "2026-03-04T00:00:00Z"), user="hanzo/carol")
    r = await any_api.call("invoicePreview", {"userId": "hanzo/carol"})
    assert_invalid(any_api, r, "64-bit")

    # the largest total that fits is answered exactly, as an integer
    await events(any_api, big, (INT64_MAX, "2026-03-03T00:00:00Z"), user="hanzo/dave")
    p = await ok(any_api, "invoicePreview", {"userId": "hanzo/dave"})
    assert p["subtotal"] == INT64_MAX and type(p["subtotal"]) is int
    assert p["lineItems"][0]["totalCost"] == INT64_MAX


async def test_list_pricing_rules_of_an_unknown_meter_is_not_found(any_api, make_key):
    """Conventions: an unknown id, of any shape (meterId included), is 404 with `meter not found`,
    also when it only filters a list; another tenant's meter is unknown here."""
    other = any_api.with_key(await make_key("globex", "live"))
    theirs = await other.call("createMeter", {"name": "Calls", "eventName": "calls"})
    assert theirs.ok, theirs
    for meter_id in ("mtr_nope", "x/../y", theirs.result["id"]):
        r = await any_api.call("listPricingRules", {"meterId": meter_id})
        assert r.status == (404 if any_api.transport == "rest" else 200), r
        assert r.error["kind"] == "not_found" and "meter not found" in r.error["message"], r
    r = await any_api.call("listPricingRules", {})
    assert r.ok and r.result == {"rules": [], "count": 0}, r


async def test_preview_reads_every_meter_as_its_summary_does(api):
    """The preview reads all of a user's meters in one statement (issue 17: one aggregate per
    meter made 5,000 meters cost 0.56 s a preview); each line item's quantity is what
    getMeterEventsSummary answers for that meter, user and period, for every aggregation
    (equal timestamps for `last`, negative values, another user's and out-of-period events
    beside), and meters without events in the period are left out, in creation order."""
    made = []
    for i in range(24):
        agg = ("sum", "count", "max", "min", "unique_count", "last")[i % 6]
        made.append(await meter(api, f"m{i}", agg))
    for n, m in enumerate(made):
        if n % 5 == 4:
            continue  # no events at all
        at = "2026-03-05T00:00:00Z"
        await events(api, m, (n - 7, at), (3, at), (n * 11, "2026-03-09T10:00:00Z"), (-5, "2026-03-09T10:00:00Z"),
                     (999, "2026-04-02T00:00:00Z"))
        await events(api, m, (12345, "2026-03-06T00:00:00Z"), user=BOB)
    for period in (MARCH, {"periodStart": "2026-03-06"}, {"periodEnd": "2026-03-05"}, {}):
        p = await ok(api, "invoicePreview", {"userId": ALICE, **period})
        expected = []
        for m in made:
            s = await ok(api, "getMeterEventsSummary", {"meterId": m, "userId": ALICE, **period})
            if s["eventCount"]:
                expected.append((m, s["value"]))
        assert [(i["meterId"], i["quantity"]) for i in p["lineItems"]] == expected, period
        assert expected, period
