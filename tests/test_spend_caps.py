"""Spend caps (operations 40-42): `used` is the period's usage withdrawals plus pending holds;
createHold refuses a hold past a cap (REST 402 / ZAP -32005, even with allowOverdraft) in the
hold's own transaction, so 50 concurrent holds never pass a cap together (on PostgreSQL also
across two server processes); recordUsage still records and announces `spend_cap.reached`
once per period; bad input answers the contract's errors and writes nothing. Both backends."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from conftest import Api, FakeClock, assert_error, ok
from procs import ServerProcess, create_key
from test_alerts import ALICE, BOB, counts, db_rows, events, usage
from zapbilling.store.periods import period_bounds

# (REST status, ZAP code, ZAP HTTP status) of spend_cap_reached, as the contract's table says
CAP_REACHED = (402, -32005, 200)


def assert_cap_reached(api: Api, r: Any, message: str) -> None:
    assert r.error is not None, r
    assert (r.error["kind"], r.error["message"], r.error["param"]) == ("spend_cap_reached", message, "amount"), r.error
    if api.transport == "rest":
        assert r.status == CAP_REACHED[0]
    else:
        assert (r.status, r.error["code"]) == (CAP_REACHED[2], CAP_REACHED[1])


def holds_of(db_path: str, user: str) -> int:
    return db_rows(db_path, "SELECT COUNT(*) FROM holds WHERE user_id = ?", (user,))[0][0]


async def test_set_get_replace_delete(any_api: Api, db_path: str, clock: FakeClock) -> None:
    clock.now = period_bounds("day", clock.now)[0] + 3_600_000_000  # 01:00 UTC
    await ok(any_api, "deposit", {"user": ALICE, "amount": 10_000})
    await usage(any_api, ALICE, 300)
    await ok(any_api, "createHold", {"user": ALICE, "amount": 200, "expiresIn": 2 * 86_400})
    await usage(any_api, ALICE, 50, currency="eur")
    cap = await ok(any_api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 1000})
    assert cap == {"user": ALICE, "currency": "usd", "period": "day", "limit": 1000, "used": 500}
    await ok(any_api, "setSpendCap", {"user": ALICE, "currency": "EUR", "period": "month", "limit": 70})
    await ok(any_api, "setSpendCap", {"user": ALICE, "period": "month", "limit": 5000})
    replaced = await ok(any_api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 2000})
    assert replaced == {"user": ALICE, "currency": "usd", "period": "day", "limit": 2000, "used": 500}
    assert await ok(any_api, "getSpendCaps", {"user": ALICE}) == {"user": ALICE, "caps": [
        {"currency": "eur", "period": "month", "limit": 70, "used": 50},
        {"currency": "usd", "period": "day", "limit": 2000, "used": 500},
        {"currency": "usd", "period": "month", "limit": 5000, "used": 500},
    ]}
    assert counts(db_path) == [(0, 0, 3)]
    before = clock.now
    clock.advance(days=1)  # a new day: the day's usage is 0, the hold still pending counts
    same_month = period_bounds("month", before) == period_bounds("month", clock.now)
    caps = (await ok(any_api, "getSpendCaps", {"user": ALICE}))["caps"]
    assert [c["used"] for c in caps] == [50 if same_month else 0, 200, 500 if same_month else 200]
    assert await ok(any_api, "deleteSpendCap", {"user": ALICE, "period": "day"}) == {"deleted": True}
    r = await any_api.call("deleteSpendCap", {"user": ALICE, "period": "day"})
    assert_error(any_api, r, "not_found", "spend cap not found", "period")
    assert [(c["currency"], c["period"]) for c in (await ok(any_api, "getSpendCaps", {"user": ALICE}))["caps"]] == [
        ("eur", "month"), ("usd", "month")]
    assert await ok(any_api, "getSpendCaps", {"user": BOB}) == {"user": BOB, "caps": []}
    assert counts(db_path) == [(0, 0, 2)]


async def test_a_hold_past_the_cap_is_refused_even_with_overdraft(any_api: Api, db_path: str) -> None:
    await ok(any_api, "deposit", {"user": ALICE, "amount": 10_000})
    await ok(any_api, "setSpendCap", {"user": ALICE, "period": "month", "limit": 1000})
    await usage(any_api, ALICE, 400)
    await ok(any_api, "createHold", {"user": ALICE, "amount": 500})  # 900 used
    r = await any_api.call("createHold", {"user": ALICE, "amount": 101, "allowOverdraft": True})
    assert_cap_reached(any_api, r, "spend cap reached: 900 of 1000 cents usd this month")
    assert holds_of(db_path, ALICE) == 1  # nothing written
    await ok(any_api, "createHold", {"user": ALICE, "amount": 100})  # exactly to the cap
    await ok(any_api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 50})  # the day's is judged first
    r = await any_api.call("createHold", {"user": ALICE, "amount": 1})
    assert_cap_reached(any_api, r, "spend cap reached: 1000 of 50 cents usd this day")
    await ok(any_api, "createHold", {"user": ALICE, "amount": 5000, "currency": "eur", "allowOverdraft": True})  # another currency: no cap
    await ok(any_api, "createHold", {"user": BOB, "amount": 1, "allowOverdraft": True})  # another user: no cap


async def test_released_and_expired_holds_give_their_room_back(api: Api, clock: FakeClock) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 10_000})
    await ok(api, "setSpendCap", {"user": ALICE, "period": "month", "limit": 1000})
    first = await ok(api, "createHold", {"user": ALICE, "amount": 1000})
    assert_cap_reached(api, await api.call("createHold", {"user": ALICE, "amount": 1}), "spend cap reached: 1000 of 1000 cents usd this month")
    await ok(api, "releaseHold", {"id": first["holdId"]})
    await ok(api, "createHold", {"user": ALICE, "amount": 600, "expiresIn": 60})
    await ok(api, "captureHold", {"id": (await ok(api, "createHold", {"user": ALICE, "amount": 300}))["holdId"], "amount": 100, "model": "m"})
    assert (await ok(api, "getSpendCaps", {"user": ALICE}))["caps"][0]["used"] == 700
    clock.advance(seconds=61)  # the 600 hold lapsed
    assert (await ok(api, "getSpendCaps", {"user": ALICE}))["caps"][0]["used"] == 100
    await ok(api, "createHold", {"user": ALICE, "amount": 900})


async def test_usage_past_the_cap_is_recorded_and_announced_once_per_period(api: Api, db_path: str, clock: FakeClock) -> None:
    clock.now = period_bounds("day", clock.now)[0] + 3_600_000_000
    await ok(api, "deposit", {"user": ALICE, "amount": 100_000})
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 1000})
    await usage(api, ALICE, 600)
    assert events(db_path, "spend_cap.reached") == []
    await usage(api, ALICE, 700)  # recorded all the same
    await usage(api, ALICE, 700)
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 100_000 - 2000
    assert events(db_path, "spend_cap.reached") == [{"user": ALICE, "currency": "usd", "period": "day", "limit": 1000, "used": 1300}]
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 5000})  # replaced: still once this day
    await usage(api, ALICE, 4000)
    assert len(events(db_path, "spend_cap.reached")) == 1
    clock.advance(days=1)
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 1000})
    await usage(api, ALICE, 999)
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 1})  # a hold reaching it exactly announces it too
    assert events(db_path, "spend_cap.reached")[1] == {"user": ALICE, "currency": "usd", "period": "day", "limit": 1000, "used": 1000}
    await ok(api, "releaseHold", {"id": hold["holdId"]})
    await usage(api, ALICE, 10)
    assert len(events(db_path, "spend_cap.reached")) == 2


async def test_fifty_concurrent_holds_never_pass_a_cap_together(api: Api, db_path: str) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 1_000_000})
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 1000})
    transports = [api.using(t) for t in ("rest", "zap-json", "zap-msgpack")]
    replies = await asyncio.gather(*(
        transports[i % 3].call("createHold", {"user": ALICE, "amount": 70, "allowOverdraft": True}) for i in range(50)
    ))
    assert sum(r.ok for r in replies) == 14  # 14 x 70 = 980; a 15th would make 1050
    assert all(r.error["kind"] == "spend_cap_reached" for r in replies if not r.ok)
    assert db_rows(db_path, "SELECT COUNT(*), SUM(amount) FROM holds WHERE user_id = ?", (ALICE,)) == [(14, 980)]
    assert len(events(db_path, "spend_cap.reached")) == 0  # 980 < 1000


@pytest.mark.parametrize("method, params, kind, message, param", [
    ("setSpendCap", {"user": ALICE, "currency": "xyz", "period": "day", "limit": 5}, "invalid_params", "unknown currency: xyz", "currency"),
    ("setSpendCap", {"user": ALICE, "period": "day", "limit": 0}, "invalid_params", "limit must be positive", "limit"),
    ("setSpendCap", {"user": ALICE, "period": "day", "limit": -3}, "invalid_params", "limit must be positive", "limit"),
    ("setSpendCap", {"user": ALICE, "period": "year", "limit": 5}, "invalid_params", None, "period"),
    ("setSpendCap", {"user": ALICE, "limit": 5}, "invalid_params", None, "period"),
    ("deleteSpendCap", {"user": ALICE, "period": "day"}, "not_found", "spend cap not found", "period"),
])
async def test_bad_caps_answer_the_contracts_errors_and_write_nothing(
    any_api: Api, db_path: str, method: str, params: dict[str, Any], kind: str, message: str | None, param: str
) -> None:
    r = await any_api.call(method, params)
    assert r.error is not None and r.error["kind"] == kind and r.error.get("param") == param, r
    if message is not None:
        assert_error(any_api, r, kind, message, param)
    assert db_rows(db_path, "SELECT COUNT(*) FROM spend_caps") == [(0,)]
    assert all(c == (0, 0, 0) for c in counts(db_path))


async def test_a_cap_above_the_page_limit_is_accepted(api: Api) -> None:
    big = 2**63 - 1
    assert (await ok(api, "setSpendCap", {"user": ALICE, "period": "month", "limit": big}))["limit"] == big


async def test_another_orgs_caps_are_its_own(api: Api, make_key, db_path: str) -> None:
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 10})
    other = api.with_key(await make_key("globex"))
    assert await ok(other, "getSpendCaps", {"user": ALICE}) == {"user": ALICE, "caps": []}
    assert_error(other, await other.call("deleteSpendCap", {"user": ALICE, "period": "day"}), "not_found", "spend cap not found", "period")
    await ok(other, "deposit", {"user": ALICE, "amount": 100})
    await ok(other, "createHold", {"user": ALICE, "amount": 50})  # the cap is acme's
    assert counts(db_path) == [(0, 0, 1), (0, 0, 0)]


@pytest.mark.postgres_only("two server processes on one database")
async def test_fifty_concurrent_holds_across_two_servers_never_pass_a_cap(db_path: str, tmp_path) -> None:
    servers = [ServerProcess(db_path, tmp_path).start() for _ in range(2)]
    try:
        for s in servers:
            await s.wait_ready()
        key = create_key(db_path, "acme", "live")
        async with ClientSession(timeout=ClientTimeout(total=60)) as session:
            apis = [Api(session, s.base, key, t) for s in servers for t in ("rest", "zap-json")]
            await ok(apis[0], "deposit", {"user": ALICE, "amount": 1_000_000})
            await ok(apis[1], "setSpendCap", {"user": ALICE, "period": "month", "limit": 1000})
            await ok(apis[0], "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 999_500})
            replies = await asyncio.gather(*(
                apis[i % 4].call("createHold", {"user": ALICE, "amount": 70, "allowOverdraft": True}) for i in range(50)
            ))
            assert sum(r.ok for r in replies) == 14
            assert all(r.error["kind"] == "spend_cap_reached" for r in replies if not r.ok)
            assert db_rows(db_path, "SELECT COUNT(*), SUM(amount) FROM holds WHERE user_id = ?", (ALICE,)) == [(14, 980)]
            # 1,000,000 - 8 x 70 = 999,440 is the first below 999,500: one trigger, whichever server made it
            assert [e["value"] for e in events(db_path)] == [999_440]
            await asyncio.gather(*(apis[i % 4].call("recordUsage", {"user": ALICE, "amount": 10, "model": "m"}) for i in range(10)))
            assert events(db_path, "spend_cap.reached") == [
                {"user": ALICE, "currency": "usd", "period": "month", "limit": 1000, "used": 1000}]
    finally:
        for s in servers:
            s.stop()


async def test_the_running_usage_totals_equal_the_ledger(api: Api, db_path: str, clock: FakeClock) -> None:
    """usage_totals (migration 7) adds only the rows written since its last look: after every
    write it equals the period's usage summed from the ledger, across currencies, captures, a
    cap set mid-period, and a new day."""
    clock.now = period_bounds("day", clock.now)[0] + 3_600_000_000
    for user in (ALICE, BOB):
        for currency in ("usd", "eur"):
            await ok(api, "deposit", {"user": user, "amount": 1_000_000, "currency": currency})
    await ok(api, "setSpendCap", {"user": ALICE, "period": "day", "limit": 10**9})
    await usage(api, ALICE, 7)
    await ok(api, "setSpendCap", {"user": ALICE, "currency": "eur", "period": "month", "limit": 10**9})

    def check() -> None:
        for user, currency, period, start, used in db_rows(db_path, "SELECT user_id, currency, period, period_start, used FROM usage_totals"):
            if start != period_bounds(period, clock.now)[0]:
                continue  # a past period's total: replaced at the account's next look
            end = period_bounds(period, clock.now)[1]
            (truth,), = db_rows(db_path, "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE user_id = ? AND currency = ? AND type = 'withdraw'"
                                " AND tags = 'api-usage' AND created_at >= ? AND created_at < ?", (user, currency, start, end))
            assert used == truth, (user, currency, period)

    for i in range(24):
        user, currency = (ALICE, BOB)[i % 2], ("usd", "eur", "eur")[i % 3]
        await usage(api, user, 10 + i, currency=currency)
        if i % 5 == 0:
            hold = await ok(api, "createHold", {"user": ALICE, "amount": 50, "currency": currency})
            await ok(api, "captureHold", {"id": hold["holdId"], "amount": 5 + i, "model": "m"})
        if i == 12:
            clock.advance(days=1)
        check()
    assert sorted(r[:3] for r in db_rows(db_path, "SELECT user_id, currency, period FROM usage_totals")) == [
        (ALICE, "eur", "month"), (ALICE, "usd", "day")]


async def test_a_hold_short_of_funds_and_past_a_cap_answers_the_cap(api: Api) -> None:
    """The cap is judged before the funds (both in the hold's transaction)."""
    await ok(api, "setSpendCap", {"user": BOB, "period": "day", "limit": 10})
    r = await api.call("createHold", {"user": BOB, "amount": 20})
    assert_cap_reached(api, r, "spend cap reached: 0 of 10 cents usd this day")
    r = await api.call("createHold", {"user": BOB, "amount": 10})
    assert_error(api, r, "insufficient_funds", "insufficient funds: 0 cents usd available, 10 requested", "amount")


async def test_the_expiry_sweep_rearms_and_leaves_the_totals_exact(server, api: Api, db_path: str, clock: FakeClock) -> None:
    """The sweep marks lapsed holds expired without the accounts' locks: a balance_below alert
    re-arms, the caps count the hold no more, and the running totals stay those of the ledger."""
    from zapbilling.app import STORE

    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    alert = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 500})
    await ok(api, "setSpendCap", {"user": ALICE, "period": "month", "limit": 2000})
    await usage(api, ALICE, 100)
    await ok(api, "createHold", {"user": ALICE, "amount": 600, "expiresIn": 60})  # available 300: triggers
    assert [e["alertId"] for e in events(db_path)] == [alert["id"]]
    clock.advance(seconds=61)
    assert await server.app[STORE].expire_holds(clock()) == 1
    assert db_rows(db_path, "SELECT COUNT(*) FROM alert_marks") == [(0,)]  # available 900 again: re-armed
    assert db_rows(db_path, "SELECT used FROM usage_totals") == [(100,)]
    assert (await ok(api, "getSpendCaps", {"user": ALICE}))["caps"][0]["used"] == 100
    await usage(api, ALICE, 450)  # 450 available: triggers again
    assert [e["value"] for e in events(db_path)] == [300, 450]
    assert db_rows(db_path, "SELECT used FROM usage_totals") == [(550,)]


async def test_usage_past_int64_in_a_period_saturates(any_api: Api) -> None:
    """A period's usage can pass int64 (deposits between huge withdrawals keep each balance in
    range): the running total stops at the int64 maximum, which passes every cap and threshold,
    instead of failing the write (found by the fuzzer: an internal error on recordUsage)."""
    big = 2**63 - 20
    await ok(any_api, "setSpendCap", {"user": ALICE, "period": "month", "limit": 1000})
    await ok(any_api, "createAlert", {"type": "usage_above", "userId": ALICE, "period": "day", "threshold": 2**63 - 1})
    for i in range(3):
        await ok(any_api, "deposit", {"user": ALICE, "amount": big})
        await ok(any_api, "recordUsage", {"user": ALICE, "amount": big, "model": "m", "requestId": f"big{i}"})
    caps = await ok(any_api, "getSpendCaps", {"user": ALICE})
    assert caps["caps"][0]["used"] == 2**63 - 1
    assert (await ok(any_api, "getBalance", {"user": ALICE}))["balance"] == 0


async def test_setting_a_cap_answers_used_saturated_as_reading_it_does(any_api: Api) -> None:
    """Usage and a pending hold each at the int64 maximum: setSpendCap answered their sum
    (2**64 - 2, beyond what an int64 client decodes) where getSpendCaps answered the int64
    maximum for the same state. Both now answer the saturated value."""
    top = 2**63 - 1
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": top, "model": "m"})
    await ok(any_api, "createHold", {"user": ALICE, "amount": top, "allowOverdraft": True})
    for period in ("day", "month"):
        cap = await ok(any_api, "setSpendCap", {"user": ALICE, "period": period, "limit": 5})
        assert cap["used"] == top, cap
    caps = await ok(any_api, "getSpendCaps", {"user": ALICE})
    assert [c["used"] for c in caps["caps"]] == [top, top]
