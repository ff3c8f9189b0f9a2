"""billing.getMeterEventsSeries (operation 43): a meter's aggregate per UTC hour or day over a
period, every window present, computed by the database, on every transport and backend."""
from __future__ import annotations

from typing import Any

import pytest

from conftest import assert_error, ok
from test_metering import meter, record

ALICE, BOB = "acme/alice", "acme/bob"


async def series(api, meter_id: str, start: str, end: str, **params: Any) -> dict[str, Any]:
    return await ok(api, "getMeterEventsSeries", {"meterId": meter_id, "periodStart": start, "periodEnd": end, **params})


def ev(meter_id: str, value: int, ts: str, user: str = ALICE) -> dict[str, Any]:
    return {"meterId": meter_id, "userId": user, "value": value, "timestamp": ts}


async def test_days_every_window_with_empty_ones_at_zero(any_api):
    m = await meter(any_api, "calls", "sum")
    await record(any_api, [
        ev(m["id"], 5, "2026-03-01T00:00:00Z"), ev(m["id"], 7, "2026-03-01T23:59:59.999999Z"),
        ev(m["id"], 11, "2026-03-03T12:00:00Z"), ev(m["id"], 1000, "2026-03-03T12:00:00Z", BOB),
        ev(m["id"], 13, "2026-03-04T00:00:00Z"),  # the end is exclusive: 2026-03-03 includes that day only
        ev(m["id"], 17, "2026-02-28T23:59:59Z"),  # before the period
    ])
    s = await series(any_api, m["id"], "2026-03-01", "2026-03-03", userId=ALICE)
    assert s == {
        "meterId": m["id"], "meterName": m["name"], "userId": ALICE, "aggregationType": "sum", "windowSize": "day",
        "windows": [
            {"start": "2026-03-01T00:00:00.000000Z", "end": "2026-03-02T00:00:00.000000Z", "value": 12, "eventCount": 2},
            {"start": "2026-03-02T00:00:00.000000Z", "end": "2026-03-03T00:00:00.000000Z", "value": 0, "eventCount": 0},
            {"start": "2026-03-03T00:00:00.000000Z", "end": "2026-03-04T00:00:00.000000Z", "value": 11, "eventCount": 1},
        ],
    }
    every_user = await series(any_api, m["id"], "2026-03-03", "2026-03-03")
    assert "userId" not in every_user
    assert [(w["value"], w["eventCount"]) for w in every_user["windows"]] == [(1011, 2)]


async def test_hours_clipped_to_the_period(any_api):
    m = await meter(any_api, "calls", "max")
    await record(any_api, [
        ev(m["id"], 3, "2026-03-01T10:05:00Z"),  # before the period, inside its first hour
        ev(m["id"], 4, "2026-03-01T10:40:00Z"), ev(m["id"], 9, "2026-03-01T10:50:00Z"),
        ev(m["id"], 2, "2026-03-01T12:29:59Z"), ev(m["id"], 8, "2026-03-01T12:30:00Z"),  # the end is exclusive
    ])
    s = await series(any_api, m["id"], "2026-03-01T10:30:00Z", "2026-03-01T12:30:00Z", windowSize="hour")
    assert [(w["start"], w["end"], w["value"], w["eventCount"]) for w in s["windows"]] == [
        ("2026-03-01T10:30:00.000000Z", "2026-03-01T11:00:00.000000Z", 9, 2),
        ("2026-03-01T11:00:00.000000Z", "2026-03-01T12:00:00.000000Z", 0, 0),
        ("2026-03-01T12:00:00.000000Z", "2026-03-01T12:30:00.000000Z", 2, 1),
    ]


@pytest.mark.parametrize("aggregation, expected", [
    ("sum", [14, 5]), ("count", [3, 1]), ("max", [7, 5]), ("min", [3, 5]), ("unique_count", [3, 1]), ("last", [4, 5]),
])
async def test_every_aggregation_per_window(any_api, aggregation, expected):
    m = await meter(any_api, f"agg-{aggregation}", aggregation)
    await record(any_api, [
        ev(m["id"], 7, "2026-03-01T01:00:00Z"), ev(m["id"], 3, "2026-03-01T02:00:00Z"),
        ev(m["id"], 4, "2026-03-01T02:00:00Z"),  # same time as the 3, sent later: the last
        ev(m["id"], 5, "2026-03-02T00:00:00Z"),
    ])
    s = await series(any_api, m["id"], "2026-03-01", "2026-03-02")
    assert [w["value"] for w in s["windows"]] == expected
    assert [w["eventCount"] for w in s["windows"]] == [3, 1]


async def test_window_sum_past_int64_is_invalid_params(any_api):
    m = await meter(any_api, "big", "sum")
    big = 2**63 - 1
    await record(any_api, [ev(m["id"], big, "2026-03-01T01:00:00Z"), ev(m["id"], big, "2026-03-01T02:00:00Z"),
                           ev(m["id"], -big, "2026-03-01T03:00:00Z"), ev(m["id"], 1, "2026-03-02T01:00:00Z")])
    # the running sum leaves int64 but the window's sum is big: exact
    s = await series(any_api, m["id"], "2026-03-01", "2026-03-02")
    assert [w["value"] for w in s["windows"]] == [big, 1]
    await record(any_api, [ev(m["id"], big, "2026-03-02T02:00:00Z")])
    r = await any_api.call("getMeterEventsSeries", {"meterId": m["id"], "periodStart": "2026-03-01", "periodEnd": "2026-03-02"})
    assert_error(any_api, r, "invalid_params", "the sum of this meter's values is beyond the signed 64-bit range")


async def test_bad_periods_and_too_many_windows(any_api, make_key):
    m = await meter(any_api, "calls", "sum")
    call = {"meterId": m["id"], "periodStart": "2026-03-02", "periodEnd": "2026-03-01"}
    assert_error(any_api, await any_api.call("getMeterEventsSeries", call), "invalid_params",
                 "periodEnd must be after periodStart", "periodEnd")
    # 1000 windows is the most: 41 days and 16 hours by the hour, one more hour is refused
    ok_call = {"meterId": m["id"], "periodStart": "2026-01-01T00:00:00Z", "periodEnd": "2026-02-11T16:00:00Z", "windowSize": "hour"}
    assert len((await ok(any_api, "getMeterEventsSeries", ok_call))["windows"]) == 1000
    r = await any_api.call("getMeterEventsSeries", ok_call | {"periodEnd": "2026-02-11T16:00:01Z"})
    assert_error(any_api, r, "invalid_params", "too many windows: 1001 (at most 1000)", "windowSize")
    r = await any_api.call("getMeterEventsSeries", call | {"periodEnd": "2026-03-03", "windowSize": "week"})
    assert_error(any_api, r, "invalid_params", "windowSize")
    r = await any_api.call("getMeterEventsSeries", call | {"periodStart": "yesterday"})
    assert_error(any_api, r, "invalid_params", "invalid periodStart format", "periodStart")
    for missing in ("meterId", "periodStart", "periodEnd"):
        r = await any_api.call("getMeterEventsSeries", {k: v for k, v in call.items() if k != missing})
        assert_error(any_api, r, "invalid_params", missing)
    other = any_api.with_key(await make_key("globex", "live"))
    r = await other.call("getMeterEventsSeries", call | {"periodEnd": "2026-03-03"})
    assert_error(other, r, "not_found", "meter not found", "meterId")
