"""Credit grants end to end: every operation of the contract's "Credit grants" section over REST,
ZAP/JSON and ZAP/msgpack (`any_api`) on the real server and a real SQLite file, with the exact
result shapes, the errors the contract lists, the burn order, and one test per **Fix** of the
section (test_fix_...)."""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from typing import Any
from conftest import assert_error, created_status, ok

from zapbilling.app import STORE, sweep_once

ALICE = "hanzo/alice"
BOB = "hanzo/bob"
TRANSPORTS = ("rest", "zap-json", "zap-msgpack")


HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
GRANT_KEYS = {"id", "userId", "name", "amountCents", "remainingCents", "currency", "priority", "effectiveAt",
              "tags", "createdAt", "expiresAt", "eligibility"}
BURN_ID = re.compile(r"burn_[0-9a-f]{24}")
STATE_KEYS = {"voided", "active"}  # a CreditGrant of the schema also says whether it is voided and active


# -- helpers --------------------------------------------------------------------------------

def to_us(text: str) -> int:
    """An RFC 3339 UTC timestamp of the server as integer microseconds since the epoch."""
    assert isinstance(text, str) and text.endswith("Z"), f"timestamps are UTC RFC 3339: {text!r}"
    dt = datetime.fromisoformat(text[:-1] + "+00:00")
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def grant(api, amount: int = 1000, user: str = ALICE, **params: Any) -> dict[str, Any]:
    return await ok(api, "createCreditGrant", {"userId": user, "amountCents": amount, **params})


async def meter(api, name: str) -> str:
    return (await ok(api, "createMeter", {"name": name, "eventName": f"{name}.used"}))["id"]


async def burn(api, amount: int, user: str = ALICE, **params: Any) -> dict[str, Any]:
    return await ok(api, "burnCredits", {"userId": user, "amount": amount, **params})


async def grants_by_id(api, user: str = ALICE) -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in (await ok(api, "listCreditGrants", {"userId": user}))["grants"]}


async def remaining(api, user: str = ALICE) -> dict[str, int]:
    return {i: g["remainingCents"] for i, g in (await grants_by_id(api, user)).items()}


async def credit_balance(api, user: str = ALICE) -> list[dict[str, Any]]:
    return (await ok(api, "getCreditBalance", {"userId": user}))["balances"]


def assert_burn(result: dict[str, Any], user: str, currency: str, requested: int,
                expected: list[tuple[str, int, int]]) -> None:
    """A burn result: `expected` is [(grant id, burned, remainingCents)] in burn order. A burn
    that took something names its journal rows with a `burnId` (`burn_` and 24 hex digits); one
    that took nothing has none."""
    burned = sum(b for _, b, _ in expected)
    want: dict[str, Any] = {
        "userId": user, "currency": currency, "requested": requested, "burned": burned,
        "overage": requested - burned,
        "grants": [{"id": i, "burned": b, "remainingCents": left} for i, b, left in expected],
    }
    if expected:
        assert BURN_ID.fullmatch(result.get("burnId") or ""), result
        want["burnId"] = result["burnId"]
    else:
        assert "burnId" not in result, result
    assert result == want
    assert result["burned"] + result["overage"] == result["requested"]


# -- createCreditGrant ------------------------------------------------------------------------

async def test_create_grant_result_shape(any_api, clock):
    m = await meter(any_api, "tokens")
    params = {"userId": ALICE, "name": "promo", "amountCents": 1500, "currency": "eur", "expiresIn": "720h",
              "priority": 3, "eligibility": [m], "tags": "promo,q3"}
    r = await any_api.call("createCreditGrant", params)
    assert r.status == created_status(any_api), (r.status, r.error)
    g = r.result
    assert GRANT_KEYS <= set(g) <= GRANT_KEYS | STATE_KEYS, sorted(g)
    assert isinstance(g["id"], str) and g["id"]
    assert {k: g[k] for k in ("userId", "name", "amountCents", "remainingCents", "currency", "priority",
                              "eligibility", "tags")} == {
        "userId": ALICE, "name": "promo", "amountCents": 1500, "remainingCents": 1500, "currency": "eur",
        "priority": 3, "eligibility": [m], "tags": "promo,q3"}
    # effective at creation, created now (the server's clock), expiring exactly 720h later
    assert to_us(g["createdAt"]) == clock.now
    assert to_us(g["effectiveAt"]) == to_us(g["createdAt"])
    assert to_us(g["expiresAt"]) == to_us(g["createdAt"]) + 720 * HOUR_US
    assert g.get("voided", False) is False and g.get("active", True) is True


async def test_create_grant_defaults(any_api):
    g = await grant(any_api, 250)
    assert (g["name"], g["currency"], g["priority"], g["eligibility"], g["tags"]) == ("", "usd", 0, [], "")
    assert (g["amountCents"], g["remainingCents"], g["userId"]) == (250, 250, ALICE)
    assert g.get("expiresAt") is None  # never expires
    assert GRANT_KEYS - {"expiresAt"} <= set(g) <= GRANT_KEYS | STATE_KEYS


async def test_create_grant_expires_at_is_created_at_plus_expires_in_exactly(any_api, clock):
    clock.advance(seconds=0.123457)  # a clock reading with sub-millisecond digits
    for text, micros in (("1h30m", 90 * MINUTE_US), ("90m", 90 * MINUTE_US), ("1.5h", 90 * MINUTE_US),
                         ("300ms", 300_000), ("2h45m30s", 2 * HOUR_US + 45 * MINUTE_US + 30_000_000),
                         ("100us", 100), ("1\u00b5s", 1)):
        g = await grant(any_api, expiresIn=text)
        assert to_us(g["createdAt"]) == clock.now, text
        assert to_us(g["expiresAt"]) - to_us(g["createdAt"]) == micros, (text, g["createdAt"], g["expiresAt"])


async def test_create_grant_user_id_is_required(any_api):
    for params in ({"amountCents": 100}, {"userId": "", "amountCents": 100}, {"userId": None, "amountCents": 100}):
        assert_error(any_api, await any_api.call("createCreditGrant", params), "invalid_params", "userId is required", "userId")
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["count"] == 0


async def test_create_grant_amount_must_be_positive(any_api):
    for amount in (0, -1, -1500):
        r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": amount})
        assert_error(any_api, r, "invalid_params", "amountCents must be positive", "amountCents")
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["count"] == 0


async def test_create_grant_rejects_unknown_currency(any_api):
    r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": 100, "currency": "xyz"})
    assert_error(any_api, r, "invalid_params", "unknown currency: xyz", "currency")
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["count"] == 0
    # a known code is accepted, lower-cased
    assert (await grant(any_api, 100, currency="EUR"))["currency"] == "eur"


async def test_create_grant_rejects_invalid_expires_in(any_api):
    for text in ("0", "-1h", "1d", "abc", "1h30", "1 h", "720", "-30m", "0s", "1H"):
        r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": 100, "expiresIn": text})
        assert_error(any_api, r, "invalid_params", "invalid expiresIn", "expiresIn")
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["count"] == 0


async def test_create_grant_rejects_expires_in_beyond_any_representable_time(any_api):
    """Durations beyond Go's range (2562047h...), whose expiresAt is past year 9999 or past int64
    microseconds, are invalid params, not a server fault."""
    for text in ("87600000h", "9999999999999999h", "99999999999999999999h"):
        r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": 100, "expiresIn": text})
        assert_error(any_api, r, "invalid_params", "invalid expiresIn", "expiresIn")
    # the largest Go duration still works
    g = await grant(any_api, 100, expiresIn="2562047h")
    assert to_us(g["expiresAt"]) - to_us(g["createdAt"]) == 2_562_047 * HOUR_US


async def test_create_grant_with_unrepresentable_expiry_writes_nothing(any_api):
    """Whatever the answer to an expiry 10,000 years out, no grant may be left behind (and the
    user's grants stay listable)."""
    r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": 100, "expiresIn": "87600000h"})
    assert not r.ok, r.result
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE})) == {"grants": [], "count": 0}
    assert await credit_balance(any_api) == []
    assert_burn(await burn(any_api, 10), ALICE, "usd", 10, [])


async def test_create_grant_unknown_eligibility_meter_is_not_found(any_api, make_key):
    m = await meter(any_api, "tokens")
    foreign = await meter(any_api.with_key(await make_key("globex", "live")), "tokens")
    other_mode = await meter(any_api.with_key(await make_key("acme", "test")), "tokens")
    for bad in ("mtr_000000000000000000000000", "not-an-id", foreign, other_mode):
        r = await any_api.call("createCreditGrant", {"userId": ALICE, "amountCents": 100, "eligibility": [m, bad]})
        assert_error(any_api, r, "not_found", "meter not found")
    assert (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["count"] == 0
    # the tenant's own meter is fine
    assert (await grant(any_api, 100, eligibility=[m]))["eligibility"] == [m]


# -- listCreditGrants -----------------------------------------------------------------------

async def test_list_grants_user_id_is_required(any_api):
    message = "userId query parameter is required" if any_api.transport == "rest" else "userId is required"
    for params in ({}, {"userId": ""}):
        assert_error(any_api, await any_api.call("listCreditGrants", params), "invalid_params", message, "userId")


async def test_list_grants_of_unseen_user_is_empty(any_api):
    await grant(any_api, 100)
    r = await any_api.call("listCreditGrants", {"userId": "nobody/ever"})
    assert r.status == 200
    assert r.result == {"grants": [], "count": 0}


async def test_list_grants_in_creation_order_with_count(any_api):
    made = [await grant(any_api, 100 + i, priority=p, **({"expiresIn": e} if e else {}))
            for i, (p, e) in enumerate(((5, "1h"), (0, None), (-1, "720h"), (2, "1m")))]
    await grant(any_api, 999, user=BOB)
    r = await ok(any_api, "listCreditGrants", {"userId": ALICE})
    assert r["count"] == 4
    assert [g["id"] for g in r["grants"]] == [g["id"] for g in made]
    for listed, created in zip(r["grants"], made):
        assert {k: listed.get(k) for k in GRANT_KEYS} == {k: created.get(k) for k in GRANT_KEYS}
        assert (listed["voided"], listed["active"]) == (False, True)


async def test_list_grants_voided_and_active_flags(any_api, clock):
    live = await grant(any_api, 100)
    voided = await grant(any_api, 100)
    expiring = await grant(any_api, 100, expiresIn="1h")
    spent = await grant(any_api, 100, priority=-1)
    await ok(any_api, "voidCreditGrant", {"id": voided["id"]})
    assert_burn(await burn(any_api, 100), ALICE, "usd", 100, [(spent["id"], 100, 0)])
    clock.advance(seconds=2 * 3600)
    r = await ok(any_api, "listCreditGrants", {"userId": ALICE})
    assert r["count"] == 4
    state = {g["id"]: (g["voided"], g["active"], g["remainingCents"]) for g in r["grants"]}
    # a void takes what was left (the journal's void row); an expired grant keeps its cents
    # until a write on the user's grants (or the sweep) journals the expiry: a read does not
    assert state == {
        live["id"]: (False, True, 100),
        voided["id"]: (True, False, 0),
        expiring["id"]: (False, False, 100),
        spent["id"]: (False, False, 0),
    }
    # the first write touching the user's grants after expiry journals it: remainingCents 0
    assert_burn(await burn(any_api, 10), ALICE, "usd", 10, [(live["id"], 10, 90)])
    state = {g["id"]: (g["voided"], g["active"], g["remainingCents"]) for g in (await ok(any_api, "listCreditGrants", {"userId": ALICE}))["grants"]}
    assert state == {
        live["id"]: (False, True, 90),
        voided["id"]: (True, False, 0),
        expiring["id"]: (False, False, 0),
        spent["id"]: (False, False, 0),
    }


async def test_list_grants_expired_grant_turns_inactive_when_its_time_passes(any_api, clock):
    g = await grant(any_api, 100, expiresIn="90m")
    clock.advance(seconds=89 * 60)
    assert (await grants_by_id(any_api))[g["id"]]["active"] is True
    clock.advance(seconds=2 * 60)
    listed = (await grants_by_id(any_api))[g["id"]]
    # a read leaves the expired grant's cents as they were (no write has journalled the expiry)
    assert (listed["active"], listed["voided"], listed["remainingCents"]) == (False, False, 100)
    assert await credit_balance(any_api) == []


async def test_expired_grant_remaining_drops_to_zero_on_the_first_write_of_each_kind(any_api, clock):
    """Creating, voiding or burning a grant of the user after another grant expired journals
    that expiry first: the expired grant's remainingCents becomes 0 and it stays inactive."""
    for write in ("create", "void", "burn"):
        user = f"hanzo/expiry-{write}"
        expiring = await grant(any_api, 100, user=user, expiresIn="1h")
        other = await grant(any_api, 50, user=user)
        bystander = f"hanzo/bystander-{write}"
        await grant(any_api, 70, user=bystander, expiresIn="1h")  # another user's: untouched by the write
        clock.advance(seconds=3601)
        assert (await remaining(any_api, user))[expiring["id"]] == 100
        if write == "create":
            await grant(any_api, 10, user=user)
        elif write == "void":
            await ok(any_api, "voidCreditGrant", {"id": other["id"]})
        else:
            assert_burn(await burn(any_api, 5, user=user), user, "usd", 5, [(other["id"], 5, 45)])
        listed = (await grants_by_id(any_api, user))[expiring["id"]]
        assert (listed["active"], listed["voided"], listed["remainingCents"]) == (False, False, 0), write
        assert list((await remaining(any_api, bystander)).values()) == [70]


async def test_the_sweep_drops_expired_grants_remaining_to_zero(any_api, server, clock):
    expiring = await grant(any_api, 100, expiresIn="1h")
    lasting = await grant(any_api, 100, expiresIn="3h")
    never = await grant(any_api, 100)
    clock.advance(seconds=2 * 3600)
    await sweep_once(server.app[STORE], clock())
    assert await remaining(any_api) == {expiring["id"]: 0, lasting["id"]: 100, never["id"]: 100}
    assert await credit_balance(any_api) == [{"currency": "usd", "available": 200}]


# -- getCreditBalance -----------------------------------------------------------------------

async def test_credit_balance_of_unseen_user_is_empty(any_api):
    r = await any_api.call("getCreditBalance", {"userId": "nobody/ever"})
    assert r.status == 200
    assert r.result == {"userId": "nobody/ever", "balances": []}


async def test_credit_balance_sums_active_grants_per_currency_sorted(any_api):
    await grant(any_api, 100)
    await grant(any_api, 250, currency="jpy")
    await grant(any_api, 40, currency="eur")
    await grant(any_api, 60, currency="eur", expiresIn="720h")
    await grant(any_api, 7, currency="chf", priority=9)
    await grant(any_api, 5000, user=BOB)
    r = await any_api.call("getCreditBalance", {"userId": ALICE})
    assert r.status == 200
    assert r.result == {"userId": ALICE, "balances": [
        {"currency": "chf", "available": 7},
        {"currency": "eur", "available": 100},
        {"currency": "jpy", "available": 250},
        {"currency": "usd", "available": 100},
    ]}


async def test_credit_balance_excludes_voided_expired_and_spent_grants(any_api, clock):
    await grant(any_api, 100)                                         # live
    voided = await grant(any_api, 1000)
    await grant(any_api, 2000, expiresIn="1h")                        # expires below
    await grant(any_api, 300, priority=-1)                            # spent in part below
    await grant(any_api, 400, priority=-2)                            # spent in full below
    await grant(any_api, 3000, currency="eur", expiresIn="30m")        # the only eur: expires below
    await ok(any_api, "voidCreditGrant", {"id": voided["id"]})
    assert (await burn(any_api, 600))["burned"] == 600                # 400 from priority -2, 200 from -1
    assert await credit_balance(any_api) == [
        {"currency": "eur", "available": 3000}, {"currency": "usd", "available": 100 + 2000 + 100}]
    clock.advance(seconds=2 * 3600)
    assert await credit_balance(any_api) == [{"currency": "usd", "available": 100 + 100}]


async def test_credit_balance_follows_burns(any_api):
    await grant(any_api, 500)
    await burn(any_api, 120)
    assert await credit_balance(any_api) == [{"currency": "usd", "available": 380}]
    await burn(any_api, 1000)
    assert await credit_balance(any_api) == []


# -- voidCreditGrant ------------------------------------------------------------------------

async def test_void_grant_result(any_api):
    g = await grant(any_api, 100)
    r = await any_api.call("voidCreditGrant", {"id": g["id"]})
    assert r.status == 200, (r.status, r.error)
    assert r.result == {"id": g["id"], "voided": True}
    listed = (await grants_by_id(any_api))[g["id"]]
    assert (listed["voided"], listed["active"], listed["remainingCents"]) == (True, False, 0)
    assert await credit_balance(any_api) == []


async def test_void_grant_unknown_id_is_not_found(any_api):
    await grant(any_api, 100)
    for bad in ("cg_000000000000000000000000", "not-an-id", "x" * 40):
        assert_error(any_api, await any_api.call("voidCreditGrant", {"id": bad}), "not_found", "credit grant not found")


async def test_void_grant_of_another_tenant_is_not_found(any_api, make_key):
    for key in (await make_key("globex", "live"), await make_key("acme", "test")):
        other = any_api.with_key(key)
        theirs = await grant(other, 100)
        r = await any_api.call("voidCreditGrant", {"id": theirs["id"]})
        assert_error(any_api, r, "not_found", "credit grant not found")
        # it is left untouched for its owner
        listed = (await grants_by_id(other))[theirs["id"]]
        assert (listed["voided"], listed["active"]) == (False, True)
        assert (await ok(other, "voidCreditGrant", {"id": theirs["id"]})) == {"id": theirs["id"], "voided": True}


async def test_void_grant_twice_is_already_voided(any_api):
    g = await grant(any_api, 100)
    await ok(any_api, "voidCreditGrant", {"id": g["id"]})
    r = await any_api.call("voidCreditGrant", {"id": g["id"]})
    assert_error(any_api, r, "invalid_params", "grant is already voided")
    assert (await grants_by_id(any_api))[g["id"]]["voided"] is True


# -- burnCredits ----------------------------------------------------------------------------

async def test_burn_result_shape_and_list_reflects_it(any_api):
    a = await grant(any_api, 300)
    b = await grant(any_api, 500)
    r = await any_api.call("burnCredits", {"userId": ALICE, "amount": 450})
    assert r.status == 200, (r.status, r.error)
    assert_burn(r.result, ALICE, "usd", 450, [(a["id"], 300, 0), (b["id"], 150, 350)])
    assert await remaining(any_api) == {a["id"]: 0, b["id"]: 350}


async def test_burn_amount_must_be_positive(any_api):
    g = await grant(any_api, 300)
    for amount in (0, -1, -300):
        r = await any_api.call("burnCredits", {"userId": ALICE, "amount": amount})
        assert_error(any_api, r, "invalid_params", "amount must be positive", "amount")
    assert await remaining(any_api) == {g["id"]: 300}


async def test_burn_user_id_is_required(any_api):
    await grant(any_api, 300)
    for params in ({"amount": 10}, {"userId": "", "amount": 10}):
        assert_error(any_api, await any_api.call("burnCredits", params), "invalid_params", "userId is required", "userId")


async def test_burn_unknown_meter_is_not_found(any_api, make_key):
    g = await grant(any_api, 300)
    foreign = await meter(any_api.with_key(await make_key("globex", "live")), "tokens")
    for bad in ("mtr_000000000000000000000000", "not-an-id", foreign):
        r = await any_api.call("burnCredits", {"userId": ALICE, "amount": 10, "meterId": bad})
        assert_error(any_api, r, "not_found", "meter not found")
    assert await remaining(any_api) == {g["id"]: 300}


async def test_burn_rejects_unknown_currency(any_api):
    g = await grant(any_api, 300)
    r = await any_api.call("burnCredits", {"userId": ALICE, "amount": 10, "currency": "xyz"})
    assert_error(any_api, r, "invalid_params", "unknown currency: xyz", "currency")
    assert await remaining(any_api) == {g["id"]: 300}


async def test_burn_with_no_grants_is_all_overage(any_api):
    assert_burn(await burn(any_api, 75), ALICE, "usd", 75, [])


async def test_burn_priority_ascending(any_api):
    p2 = await grant(any_api, 100, priority=2)
    p0 = await grant(any_api, 100, priority=0)
    p1 = await grant(any_api, 100, priority=1)
    pm = await grant(any_api, 100, priority=-5)
    assert_burn(await burn(any_api, 350), ALICE, "usd", 350,
                [(pm["id"], 100, 0), (p0["id"], 100, 0), (p1["id"], 100, 0), (p2["id"], 50, 50)])
    assert await remaining(any_api) == {p2["id"]: 50, p0["id"]: 0, p1["id"]: 0, pm["id"]: 0}


async def test_burn_priority_comes_before_expiry(any_api):
    soon = await grant(any_api, 100, priority=1, expiresIn="1m")
    never = await grant(any_api, 100, priority=0)
    assert_burn(await burn(any_api, 150), ALICE, "usd", 150, [(never["id"], 100, 0), (soon["id"], 50, 50)])


async def test_burn_earliest_expiry_first_within_a_priority(any_api):
    late = await grant(any_api, 100, expiresIn="720h")
    soon = await grant(any_api, 100, expiresIn="24h")
    mid = await grant(any_api, 100, expiresIn="48h")
    soonest = await grant(any_api, 100, expiresIn="90m")
    assert_burn(await burn(any_api, 330), ALICE, "usd", 330,
                [(soonest["id"], 100, 0), (soon["id"], 100, 0), (mid["id"], 100, 0), (late["id"], 30, 70)])


async def test_burn_never_expiring_grants_last_within_a_priority(any_api):
    never = await grant(any_api, 100)
    late = await grant(any_api, 100, expiresIn="87600h")
    soon = await grant(any_api, 100, expiresIn="1h")
    other_priority = await grant(any_api, 100, priority=1, expiresIn="1m")
    assert_burn(await burn(any_api, 310), ALICE, "usd", 310,
                [(soon["id"], 100, 0), (late["id"], 100, 0), (never["id"], 100, 0), (other_priority["id"], 10, 90)])


async def test_burn_ties_break_by_creation_order(any_api):
    # same priority and the same expiry (created at the same instant with the same expiresIn) ...
    a = await grant(any_api, 100, expiresIn="1h")
    b = await grant(any_api, 100, expiresIn="1h")
    # ... and same priority, never expiring
    c = await grant(any_api, 100)
    d = await grant(any_api, 100)
    assert a["expiresAt"] == b["expiresAt"]
    assert_burn(await burn(any_api, 350), ALICE, "usd", 350,
                [(a["id"], 100, 0), (b["id"], 100, 0), (c["id"], 100, 0), (d["id"], 50, 50)])


async def test_burn_spans_calls_in_order(any_api):
    first = await grant(any_api, 100, priority=0)
    second = await grant(any_api, 100, priority=1)
    burns = [await burn(any_api, 60) for _ in range(3)]
    assert_burn(burns[0], ALICE, "usd", 60, [(first["id"], 60, 40)])
    assert_burn(burns[1], ALICE, "usd", 60, [(first["id"], 40, 0), (second["id"], 20, 80)])
    assert_burn(burns[2], ALICE, "usd", 60, [(second["id"], 60, 20)])
    assert len({b["burnId"] for b in burns}) == 3  # each call's burn has an id of its own
    assert await remaining(any_api) == {first["id"]: 0, second["id"]: 20}


async def test_burn_eligibility_by_meter(any_api):
    tokens = await meter(any_api, "tokens")
    images = await meter(any_api, "images")
    for_tokens = await grant(any_api, 100, priority=0, eligibility=[tokens])
    for_images = await grant(any_api, 100, priority=0, eligibility=[images])
    for_both = await grant(any_api, 100, priority=1, eligibility=[images, tokens])
    anything = await grant(any_api, 100, priority=2)
    # usage of `tokens`: the tokens-only grant, the two-meter grant and the unrestricted one
    assert_burn(await burn(any_api, 250, meterId=tokens), ALICE, "usd", 250,
                [(for_tokens["id"], 100, 0), (for_both["id"], 100, 0), (anything["id"], 50, 50)])
    # usage of `images`: what is left of the images grant and the unrestricted one
    assert_burn(await burn(any_api, 500, meterId=images), ALICE, "usd", 500,
                [(for_images["id"], 100, 0), (anything["id"], 50, 0)])
    assert await remaining(any_api) == {for_tokens["id"]: 0, for_images["id"]: 0, for_both["id"]: 0, anything["id"]: 0}


async def test_burn_without_meter_burns_only_unrestricted_grants(any_api):
    tokens = await meter(any_api, "tokens")
    restricted = await grant(any_api, 100, priority=-1, eligibility=[tokens])
    anything = await grant(any_api, 100, priority=5)
    assert_burn(await burn(any_api, 150), ALICE, "usd", 150, [(anything["id"], 100, 0)])
    # an empty meterId means no meter, as an empty Text means absent
    assert_burn(await burn(any_api, 10, meterId=""), ALICE, "usd", 10, [])
    assert await remaining(any_api) == {restricted["id"]: 100, anything["id"]: 0}


async def test_burn_meter_without_eligible_grants_burns_only_unrestricted(any_api):
    tokens = await meter(any_api, "tokens")
    images = await meter(any_api, "images")
    for_images = await grant(any_api, 100, eligibility=[images])
    assert_burn(await burn(any_api, 40, meterId=tokens), ALICE, "usd", 40, [])
    anything = await grant(any_api, 100)
    assert_burn(await burn(any_api, 40, meterId=tokens), ALICE, "usd", 40, [(anything["id"], 40, 60)])
    assert await remaining(any_api) == {for_images["id"]: 100, anything["id"]: 60}


async def test_burn_currency_filter(any_api):
    usd = await grant(any_api, 100)
    eur = await grant(any_api, 100, currency="eur", priority=-1)
    # the default currency is usd: the eur grant is not touched though it has the lower priority
    assert_burn(await burn(any_api, 30), ALICE, "usd", 30, [(usd["id"], 30, 70)])
    assert_burn(await burn(any_api, 30, currency="eur"), ALICE, "eur", 30, [(eur["id"], 30, 70)])
    assert_burn(await burn(any_api, 30, currency="EUR"), ALICE, "eur", 30, [(eur["id"], 30, 40)])
    assert_burn(await burn(any_api, 30, currency="jpy"), ALICE, "jpy", 30, [])
    assert await remaining(any_api) == {usd["id"]: 70, eur["id"]: 40}


async def test_burn_skips_expired_grants(any_api, clock):
    expiring = await grant(any_api, 100, expiresIn="1h")
    never = await grant(any_api, 100)
    clock.advance(seconds=3601)
    assert_burn(await burn(any_api, 150), ALICE, "usd", 150, [(never["id"], 100, 0)])
    # the burn journalled the expiry first: the expired grant's cents went, not to the burn
    assert await remaining(any_api) == {expiring["id"]: 0, never["id"]: 0}


async def test_burn_skips_voided_grants(any_api):
    voided = await grant(any_api, 100, priority=-1)
    live = await grant(any_api, 100)
    await ok(any_api, "voidCreditGrant", {"id": voided["id"]})
    # the void took what was left of the grant (remainingCents 0) and the burn skips it
    assert await remaining(any_api) == {voided["id"]: 0, live["id"]: 100}
    assert_burn(await burn(any_api, 150), ALICE, "usd", 150, [(live["id"], 100, 0)])
    assert await remaining(any_api) == {voided["id"]: 0, live["id"]: 0}


async def test_burn_overage_when_credit_runs_out(any_api):
    a = await grant(any_api, 100)
    b = await grant(any_api, 250, priority=1)
    r = await burn(any_api, 1000)
    assert_burn(r, ALICE, "usd", 1000, [(a["id"], 100, 0), (b["id"], 250, 0)])
    assert (r["burned"], r["overage"]) == (350, 650)
    # nothing left: the next burn is all overage and touches no grant
    assert_burn(await burn(any_api, 5), ALICE, "usd", 5, [])
    state = await grants_by_id(any_api)
    assert {i: (g["remainingCents"], g["active"]) for i, g in state.items()} == {a["id"]: (0, False), b["id"]: (0, False)}


async def test_burn_is_per_user(any_api):
    alice = await grant(any_api, 100)
    bob = await grant(any_api, 100, user=BOB)
    assert_burn(await burn(any_api, 30, user=BOB), BOB, "usd", 30, [(bob["id"], 30, 70)])
    assert await remaining(any_api) == {alice["id"]: 100}
    assert await remaining(any_api, BOB) == {bob["id"]: 70}


# -- Fixes ----------------------------------------------------------------------------------

async def test_fix_concurrent_burns_never_spend_the_same_credit_twice(api):
    """40 concurrent burns over all three transports asking for 40 x 37 = 1480 cents of 1000 cents
    of credit in four grants: every cent is spent at most once and each answer tells the truth."""
    amounts = {0: 400, 1: 300, 2: 200, 3: 100}
    made = {(await grant(api, cents, priority=p))["id"]: cents for p, cents in amounts.items()}
    total = sum(made.values())
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("burnCredits", {"userId": ALICE, "amount": 37})
                                     for i in range(40)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    for r in replies:
        assert r.result["burned"] + r.result["overage"] == r.result["requested"] == 37, r.result
        assert r.result["burned"] == sum(g["burned"] for g in r.result["grants"]), r.result
        assert all(g["burned"] > 0 and g["remainingCents"] >= 0 for g in r.result["grants"]), r.result
        assert ("burnId" in r.result) == bool(r.result["grants"]), r.result
    burn_ids = [r.result["burnId"] for r in replies if "burnId" in r.result]
    assert len(burn_ids) == len(set(burn_ids))
    burned = sum(r.result["burned"] for r in replies)
    left = await remaining(api)
    assert all(v >= 0 for v in left.values()), left
    lost = sum(made[i] - left[i] for i in made)
    assert burned == lost
    assert burned <= total
    # more was asked than there was, so a correct burn-down spends all of it
    assert burned == total and set(left.values()) == {0}
    # per grant: what the answers say was taken from it is what it lost, and the remainders
    # they report are distinct steps of one sequence (no two burns saw the same cents)
    for grant_id, amount in made.items():
        steps = sorted(((g["remainingCents"], g["burned"]) for r in replies for g in r.result["grants"] if g["id"] == grant_id),
                       reverse=True)
        assert sum(b for _, b in steps) == amount - left[grant_id]
        before = amount
        for after, taken in steps:
            assert after == before - taken, (grant_id, steps)
            before = after
    assert await credit_balance(api) == []


async def test_fix_concurrent_burns_of_one_grant_never_overdraw_it(api):
    """Many concurrent burns of one small grant: the sum burned is exactly the grant, never more."""
    g = await grant(api, 100)
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("burnCredits", {"userId": ALICE, "amount": 7})
                                     for i in range(40)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert sum(r.result["burned"] for r in replies) == 100
    assert sum(r.result["overage"] for r in replies) == 40 * 7 - 100
    reported = sorted(x["remainingCents"] for r in replies for x in r.result["grants"])
    assert reported == sorted(set(reported)) and min(reported) == 0
    assert await remaining(api) == {g["id"]: 0}


async def test_fix_burns_are_scoped_to_org_and_mode(any_api, make_key):
    tokens = await meter(any_api, "tokens")
    mine = await grant(any_api, 100)
    restricted = await grant(any_api, 100, eligibility=[tokens])
    for key in (await make_key("acme", "test"), await make_key("globex", "live")):
        other = any_api.with_key(key)
        # acme/live's grants are invisible here ...
        assert (await ok(other, "listCreditGrants", {"userId": ALICE})) == {"grants": [], "count": 0}
        assert await credit_balance(other) == []
        # ... unburnable: the same user's burn here touches nothing, all of it is overage
        assert_burn(await burn(other, 50), ALICE, "usd", 50, [])
        # ... and acme/live's meter does not exist here
        assert_error(other, await other.call("burnCredits", {"userId": ALICE, "amount": 50, "meterId": tokens}),
                     "not_found", "meter not found")
        # a grant of this tenant burns only here
        theirs = await grant(other, 30)
        assert_burn(await burn(other, 50), ALICE, "usd", 50, [(theirs["id"], 30, 0)])
    # acme/live is untouched by all of that
    assert await remaining(any_api) == {mine["id"]: 100, restricted["id"]: 100}
    assert await credit_balance(any_api) == [{"currency": "usd", "available": 200}]
    assert_burn(await burn(any_api, 150, meterId=tokens), ALICE, "usd", 150,
                [(mine["id"], 100, 0), (restricted["id"], 50, 50)])
