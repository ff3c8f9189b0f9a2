"""Alerts (operations 37-39): balance_below and usage_above (per day or month, in cents of
api-usage withdrawals or in a meter's units) trigger `alert.triggered` once per crossing and
re-arm (a deposit lifts the balance; a new period starts), org-wide alerts judge every user,
concurrent writes never trigger twice, and bad input answers the contract's errors and writes
nothing. Both backends; the events are read from the outbox table itself."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest

import pg
from conftest import Api, FakeClock, assert_error, created_status, ok
from zapbilling.limits import Limits
from zapbilling.store.periods import period_bounds

ALICE, BOB = "hanzo/alice", "hanzo/bob"


def db_rows(db_path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the server's database (`?` parameters), read-only."""
    if pg.is_url(db_path):
        with pg.Connection(db_path) as con:
            return [tuple(r) for r in con.execute(sql, params)]
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def events(db_path: str, type: str = "alert.triggered") -> list[dict[str, Any]]:
    return [json.loads(d) for d, in db_rows(db_path, "SELECT data FROM events WHERE type = ? ORDER BY seq", (type,))]


def counts(db_path: str) -> list[tuple[int, int, int]]:
    """(tenants.alerts, alerts rows, tenants.spend_caps) of every tenant: the counts kept exact."""
    return db_rows(
        db_path,
        "SELECT t.alerts, (SELECT COUNT(*) FROM alerts a WHERE a.tenant = t.id), t.spend_caps FROM tenants t ORDER BY t.id",
    )


async def usage(api: Api, user: str, amount: int, currency: str = "usd") -> None:
    await ok(api, "recordUsage", {"user": user, "amount": amount, "currency": currency, "model": "m"})


async def test_alert_crud_answers_the_contract_shape(any_api: Api, db_path: str) -> None:
    meter = await ok(any_api, "createMeter", {"name": "Tokens", "eventName": "tokens", "aggregationType": "sum"})
    r = await any_api.call("createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 500})
    assert r.ok and r.status == created_status(any_api), r
    low = r.result
    assert set(low) == {"id", "type", "userId", "currency", "threshold", "createdAt"}
    assert (low["type"], low["userId"], low["currency"], low["threshold"]) == ("balance_below", ALICE, "usd", 500)
    assert low["id"].startswith("alr_") and low["createdAt"].endswith("Z")
    wide = await ok(any_api, "createAlert", {"type": "usage_above", "currency": "EUR", "threshold": 0, "period": "month"})
    assert (wide["currency"], wide["period"], wide["threshold"], "userId" in wide) == ("eur", "month", 0, False)
    units = await ok(any_api, "createAlert", {"type": "usage_above", "userId": BOB, "threshold": 10, "period": "day", "meterId": meter["id"]})
    assert units["meterId"] == meter["id"]

    listed = await ok(any_api, "listAlerts", {})
    assert [a["id"] for a in listed["alerts"]] == [low["id"], wide["id"], units["id"]] and listed["count"] == 3
    assert listed["alerts"][0] == low
    alice = await ok(any_api, "listAlerts", {"userId": ALICE})
    assert [a["id"] for a in alice["alerts"]] == [low["id"], wide["id"]]  # hers and the org-wide one
    assert counts(db_path) == [(3, 3, 0)]

    assert await ok(any_api, "deleteAlert", {"id": low["id"]}) == {"id": low["id"], "deleted": True}
    assert_error(any_api, await any_api.call("deleteAlert", {"id": low["id"]}), "not_found", "alert not found", "id")
    assert [a["id"] for a in (await ok(any_api, "listAlerts", {}))["alerts"]] == [wide["id"], units["id"]]
    assert counts(db_path) == [(2, 2, 0)]


async def test_balance_below_triggers_once_per_crossing_and_a_deposit_rearms_it(api: Api, db_path: str) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    alert = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 500})
    await usage(api, ALICE, 300)  # 700 left: above
    assert events(db_path) == []
    await usage(api, ALICE, 300)  # 400: crosses
    await usage(api, ALICE, 50)  # 350: still below, no second event
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 100})  # a hold lowers available too: still below
    assert events(db_path) == [{"alertId": alert["id"], "userId": ALICE, "value": 400, "threshold": 500}]
    await ok(api, "releaseHold", {"id": hold["holdId"]})
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})  # 1350: re-armed
    await ok(api, "deposit", {"user": BOB, "amount": 10})  # another user: her alert is not his
    await usage(api, ALICE, 1000)  # 350: crosses again
    assert events(db_path) == [
        {"alertId": alert["id"], "userId": ALICE, "value": 400, "threshold": 500},
        {"alertId": alert["id"], "userId": ALICE, "value": 350, "threshold": 500},
    ]
    await usage(api, ALICE, 100, currency="eur")  # another currency: not watched
    assert len(events(db_path)) == 2


async def test_credit_forfeited_by_the_expiry_sweep_triggers_balance_below(server, api: Api, db_path: str, clock: FakeClock) -> None:
    """The sweep's forfeit moves the balance like any write, and is judged like one: the alert
    is read with the account in the sweep's own statement (store/sqlite/ledger.py _ACCOUNT)."""
    from zapbilling.app import STORE
    from zapbilling.billing.ledger import LOTS

    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await ok(api, "deposit", {"user": ALICE, "amount": 300, "expiresIn": 1})  # 1300, of which 300 for a day
    alert = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 1200})
    clock.advance(days=1, seconds=1)
    assert await server.app[STORE].forfeit_expired(clock(), LOTS) == 1
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 1000
    assert events(db_path) == [{"alertId": alert["id"], "userId": ALICE, "value": 1000, "threshold": 1200}]


async def test_a_hold_taking_available_below_triggers(api: Api, db_path: str) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    alert = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 200})
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 900})
    assert events(db_path) == [{"alertId": alert["id"], "userId": ALICE, "value": 100, "threshold": 200}]
    await ok(api, "releaseHold", {"id": hold["holdId"]})  # back to 1000: re-armed
    await ok(api, "createHold", {"user": ALICE, "amount": 850})
    assert [e["value"] for e in events(db_path)] == [100, 150]


async def test_org_wide_alert_judges_each_user_on_their_own(api: Api, db_path: str) -> None:
    alert = await ok(api, "createAlert", {"type": "balance_below", "threshold": 100})
    for user in (ALICE, BOB):
        await ok(api, "deposit", {"user": user, "amount": 150})
    await usage(api, ALICE, 60)  # 90
    await usage(api, BOB, 20)  # 130
    await usage(api, BOB, 40)  # 90
    await usage(api, ALICE, 10)  # 80: hers is marked already
    assert events(db_path) == [
        {"alertId": alert["id"], "userId": ALICE, "value": 90, "threshold": 100},
        {"alertId": alert["id"], "userId": BOB, "value": 90, "threshold": 100},
    ]


async def test_usage_above_in_cents_counts_usage_and_captures_per_day_and_a_new_day_rearms(
    api: Api, db_path: str, clock: FakeClock
) -> None:
    clock.now = period_bounds("day", clock.now)[0] + 3_600_000_000  # 01:00 UTC: the day has 23 hours to go
    await ok(api, "deposit", {"user": ALICE, "amount": 100_000})
    alert = await ok(api, "createAlert", {"type": "usage_above", "userId": ALICE, "threshold": 1000, "period": "day"})
    await usage(api, ALICE, 600)
    await ok(api, "deposit", {"user": ALICE, "amount": 5000})  # not usage
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 900})  # a pending hold is not usage yet
    assert events(db_path) == []
    await ok(api, "captureHold", {"id": hold["holdId"], "amount": 500, "model": "m"})  # 1100: a capture is usage
    await usage(api, ALICE, 50)  # 1150: marked already
    assert events(db_path) == [{"alertId": alert["id"], "userId": ALICE, "value": 1100, "threshold": 1000, "period": "day"}]
    clock.advance(days=1)  # a new day: re-armed, counted from 0
    await usage(api, ALICE, 1000)  # 1000 is not above 1000
    assert len(events(db_path)) == 1
    await usage(api, ALICE, 1)
    assert events(db_path)[1] == {"alertId": alert["id"], "userId": ALICE, "value": 1001, "threshold": 1000, "period": "day"}
    # one mark per alert and user: the previous day's went when this one's came
    assert db_rows(db_path, "SELECT COUNT(*) FROM alert_marks") == [(1,)]


async def test_usage_above_per_month_in_a_meters_units(api: Api, db_path: str, clock: FakeClock) -> None:
    clock.now = period_bounds("month", clock.now)[0] + 86_400_000_000  # the 2nd of the month
    meter = await ok(api, "createMeter", {"name": "Tokens", "eventName": "tokens", "aggregationType": "sum"})
    other = await ok(api, "createMeter", {"name": "Calls", "eventName": "calls", "aggregationType": "count"})
    alert = await ok(api, "createAlert", {"type": "usage_above", "threshold": 100, "period": "month", "meterId": meter["id"]})

    async def record(meter_id: str, user: str, value: int) -> None:
        await ok(api, "recordMeterEvents", {"events": [{"meterId": meter_id, "userId": user, "value": value}]})

    await record(meter["id"], ALICE, 60)
    await record(other["id"], ALICE, 500)  # another meter
    await record(meter["id"], BOB, 90)
    assert events(db_path) == []
    await record(meter["id"], ALICE, 50)  # 110
    await record(meter["id"], ALICE, 5)  # 115: marked already
    await usage(api, ALICE, 10_000)  # cents are not the meter's units
    assert events(db_path) == [{"alertId": alert["id"], "userId": ALICE, "value": 110, "threshold": 100, "period": "month"}]
    await ok(api, "recordMeterEvents", {"events": [
        {"meterId": meter["id"], "userId": BOB, "value": 5}, {"meterId": meter["id"], "userId": BOB, "value": 6},
    ]})  # one batch: 101, one event
    assert [e["userId"] for e in events(db_path)] == [ALICE, BOB] and events(db_path)[1]["value"] == 101
    clock.advance(days=40)  # next month
    await record(meter["id"], ALICE, 101)
    assert [(e["userId"], e["value"]) for e in events(db_path)] == [(ALICE, 110), (BOB, 101), (ALICE, 101)]


async def test_deleting_an_alert_stops_it_and_its_marks(api: Api, db_path: str) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 100})
    alert = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 500})
    await usage(api, ALICE, 1)
    assert len(events(db_path)) == 1 and db_rows(db_path, "SELECT COUNT(*) FROM alert_marks") == [(1,)]
    await ok(api, "deleteAlert", {"id": alert["id"]})
    assert db_rows(db_path, "SELECT COUNT(*) FROM alert_marks") == [(0,)]
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    await usage(api, ALICE, 1000)
    assert len(events(db_path)) == 1


async def test_concurrent_writes_never_trigger_twice(api: Api, db_path: str) -> None:
    meter = await ok(api, "createMeter", {"name": "Tokens", "eventName": "tokens", "aggregationType": "sum"})
    await ok(api, "deposit", {"user": ALICE, "amount": 5000})
    low = await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 2500})
    spent = await ok(api, "createAlert", {"type": "usage_above", "userId": ALICE, "threshold": 1000, "period": "month"})
    units = await ok(api, "createAlert", {"type": "usage_above", "userId": ALICE, "threshold": 50, "period": "month", "meterId": meter["id"]})
    transports = [api.using(t) for t in ("rest", "zap-json", "zap-msgpack")]
    await asyncio.gather(*(
        call for i in range(50) for call in (
            usage(transports[i % 3], ALICE, 100),
            ok(transports[i % 3], "recordMeterEvents", {"events": [{"meterId": meter["id"], "userId": ALICE, "value": 2}]}),
        )
    ))
    fired = events(db_path)
    assert sorted(e["alertId"] for e in fired) == sorted([low["id"], spent["id"], units["id"]])
    by = {e["alertId"]: e for e in fired}
    assert by[spent["id"]]["value"] == 1100  # the write that crossed saw every earlier one
    assert by[units["id"]]["value"] == 52
    assert by[low["id"]]["value"] == 2400


@pytest.mark.parametrize("params, message, param", [
    ({"type": "below", "threshold": 1}, None, "type"),
    ({"type": "usage_above", "threshold": 1}, "period is required for usage_above", "period"),
    ({"type": "balance_below", "threshold": 1, "period": "day"}, "period is only for usage_above", "period"),
    ({"type": "balance_below", "threshold": 1, "meterId": "mtr_x"}, "meterId is only for usage_above", "meterId"),
    ({"type": "balance_below", "threshold": 0}, "threshold must be positive for balance_below: available is never below 0", "threshold"),
    ({"type": "usage_above", "threshold": -1, "period": "day"}, "threshold must not be negative for usage_above", "threshold"),
    ({"type": "usage_above", "threshold": 1, "period": "week"}, None, "period"),
    ({"type": "balance_below", "threshold": 1, "currency": "xyz"}, "unknown currency: xyz", "currency"),
    ({"type": "usage_above", "threshold": 1, "period": "day", "meterId": "mtr_nope"}, "meter not found", "meterId"),
])
async def test_bad_alerts_answer_the_contracts_errors_and_write_nothing(
    any_api: Api, db_path: str, params: dict[str, Any], message: str | None, param: str
) -> None:
    r = await any_api.call("createAlert", params)
    kind = "not_found" if message == "meter not found" else "invalid_params"
    assert r.error is not None and r.error["kind"] == kind and r.error.get("param") == param, r
    if message is not None:
        assert_error(any_api, r, kind, message, param)
    assert db_rows(db_path, "SELECT COUNT(*) FROM alerts") == [(0,)]
    assert all(c == (0, 0, 0) for c in counts(db_path))


async def test_another_orgs_ids_are_not_found(api: Api, make_key, db_path: str) -> None:
    meter = await ok(api, "createMeter", {"name": "Tokens", "eventName": "tokens", "aggregationType": "sum"})
    alert = await ok(api, "createAlert", {"type": "balance_below", "threshold": 5})
    other = api.with_key(await make_key("globex"))
    r = await other.call("createAlert", {"type": "usage_above", "threshold": 5, "period": "day", "meterId": meter["id"]})
    assert_error(other, r, "not_found", "meter not found", "meterId")
    assert_error(other, await other.call("deleteAlert", {"id": alert["id"]}), "not_found", "alert not found", "id")
    assert (await ok(other, "listAlerts", {})) == {"alerts": [], "count": 0}
    assert [a["id"] for a in (await ok(api, "listAlerts", {}))["alerts"]] == [alert["id"]]
    assert counts(db_path) == [(1, 1, 0), (0, 0, 0)]
    other_test = api.with_key(await make_key("acme", "test"))  # the same org in the other mode
    assert_error(other_test, await other_test.call("deleteAlert", {"id": alert["id"]}), "not_found", "alert not found", "id")


async def test_the_alerts_quota_is_counted_exactly(api: Api, db_path: str) -> None:
    quota = Limits().alerts_per_tenant
    for _ in range(quota):
        await ok(api, "createAlert", {"type": "balance_below", "threshold": 5})
    r = await api.call("createAlert", {"type": "balance_below", "threshold": 5})
    assert_error(api, r, "conflict", f"alert quota reached: an org holds at most {quota} alerts in each mode", "type")
    assert counts(db_path) == [(quota, quota, 0)]


@pytest.mark.parametrize("at, day, month", [
    ("2026-12-03T20:00:00Z", ("2026-12-03", "2026-12-04"), ("2026-12-01", "2027-01-01")),
    ("2026-12-31T23:59:59.999999Z", ("2026-12-31", "2027-01-01"), ("2026-12-01", "2027-01-01")),
    ("2024-02-29T00:00:00Z", ("2024-02-29", "2024-03-01"), ("2024-02-01", "2024-03-01")),
    ("1969-12-31T12:00:00Z", ("1969-12-31", "1970-01-01"), ("1969-12-01", "1970-01-01")),
])
def test_periods_are_calendar_days_and_months_in_utc(at: str, day: tuple[str, str], month: tuple[str, str]) -> None:
    from zapbilling.times import parse_ts

    now = parse_ts(at)
    assert period_bounds("day", now) == (parse_ts(day[0]), parse_ts(day[1]))
    assert period_bounds("month", now) == (parse_ts(month[0]), parse_ts(month[1]))
