"""Meters and meter events end to end: every operation of the contract's "Meters and meter
events" section, and the meter event recordUsage writes, over REST, ZAP/JSON and ZAP/msgpack
(`any_api`) on the real server and its real database (SQLite or PostgreSQL); plus one named test per **Fix** of that
section (test_fix_...)."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

import pg
import pytest

from zapbilling.app import STORE
from conftest import assert_error, created_status, ok

INT64_MAX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TRANSPORTS = ("rest", "zap-json", "zap-msgpack")
AGGREGATIONS = ("sum", "count", "last", "max", "min", "unique_count")


ALICE = "hanzo/alice"
BOB = "hanzo/bob"


# -- helpers --------------------------------------------------------------------------------

async def meter(api, event_name: str = "tokens", aggregation: str | None = None, **extra: Any) -> dict[str, Any]:
    params = {"name": f"{event_name} meter", "eventName": event_name, **extra}
    if aggregation is not None:
        params["aggregationType"] = aggregation
    return await ok(api, "createMeter", params)


async def record(api, events: list[dict[str, Any]]) -> dict[str, Any]:
    return await ok(api, "recordMeterEvents", {"events": events})


async def summary(api, meter_id: str, **params: Any) -> dict[str, Any]:
    return await ok(api, "getMeterEventsSummary", {"meterId": meter_id, **params})


def us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 UTC timestamp (the store's unit)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_out(text: str) -> datetime:
    assert text.endswith("Z"), f"timestamps are UTC: {text}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def at(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def db_rows(db_path: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows read straight from the server's database: read-only with the stdlib driver from its
    SQLite file, or through pg.Connection (`?` placeholders either way)."""
    if pg.is_url(db_path):
        with pg.Connection(db_path) as pgcon:
            return [dict(r) for r in pgcon.execute(sql, params)]
    con = pg.read_only(db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()


def dimension(db_path: str, name: str) -> str:
    """SQL for one dimension of a meter event (dimensions are JSON text on both backends)."""
    return f"(dimensions::jsonb ->> '{name}')" if pg.is_url(db_path) else f"json_extract(dimensions, '$.{name}')"


def event_rows(db_path: str, meter_id: str | None = None) -> list[dict[str, Any]]:
    """Meter events with their meter's id as meter_id (a row names its meter by seq)."""
    rows = "SELECT e.*, m.id AS meter_id FROM meter_events e JOIN meters m ON m.seq = e.meter"
    if meter_id is None:
        return db_rows(db_path, rows + " ORDER BY e.seq")
    return db_rows(db_path, rows + " WHERE m.id = ? ORDER BY e.seq", (meter_id,))


def usage_rows(db_path: str, user: str = ALICE) -> list[dict[str, Any]]:
    return db_rows(db_path, "SELECT * FROM ledger WHERE user_id = ? AND tags = 'api-usage' ORDER BY seq", (user,))


# -- createMeter ----------------------------------------------------------------------------

async def test_create_meter_result_shape_and_defaults(any_api, clock):
    r = await any_api.call("createMeter", {"name": "Tokens", "eventName": "tokens"})
    assert r.status == created_status(any_api)
    m = r.result
    assert set(m) == {"id", "name", "eventName", "aggregationType", "currency", "dimensions", "createdAt"}
    assert isinstance(m["id"], str) and m["id"]
    assert (m["name"], m["eventName"]) == ("Tokens", "tokens")
    assert (m["aggregationType"], m["currency"], m["dimensions"]) == ("sum", "usd", [])
    assert parse_out(m["createdAt"]) == at(clock.now)


async def test_create_meter_with_each_aggregation_type(any_api):
    ids = set()
    for aggregation in AGGREGATIONS:
        m = await meter(any_api, f"ev-{aggregation}", aggregation)
        assert m["aggregationType"] == aggregation
        assert (await ok(any_api, "getMeter", {"id": m["id"]}))["aggregationType"] == aggregation
        ids.add(m["id"])
    assert len(ids) == len(AGGREGATIONS)


async def test_create_meter_keeps_currency_and_dimensions(any_api):
    m = await meter(any_api, "tokens", "max", currency="EUR", dimensions=["model", "provider"])
    assert (m["currency"], m["dimensions"]) == ("eur", ["model", "provider"])
    assert await ok(any_api, "getMeter", {"id": m["id"]}) == m


@pytest.mark.parametrize("name", ["absent", "", None])
async def test_create_meter_name_is_required(any_api, name):
    params: dict[str, Any] = {"eventName": "tokens"}
    if name != "absent":
        params["name"] = name
    assert_error(any_api, await any_api.call("createMeter", params), "invalid_params", "name is required", "name")
    assert (await ok(any_api, "listMeters", {}))["count"] == 0


@pytest.mark.parametrize("event_name", ["absent", "", None])
async def test_create_meter_event_name_is_required(any_api, event_name):
    params: dict[str, Any] = {"name": "Tokens"}
    if event_name != "absent":
        params["eventName"] = event_name
    r = await any_api.call("createMeter", params)
    assert_error(any_api, r, "invalid_params", "eventName is required", "eventName")
    assert (await ok(any_api, "listMeters", {}))["count"] == 0


async def test_create_meter_unknown_currency_is_invalid(any_api):
    r = await any_api.call("createMeter", {"name": "T", "eventName": "tokens", "currency": "xyz"})
    assert_error(any_api, r, "invalid_params", "unknown currency: xyz", "currency")
    assert (await ok(any_api, "listMeters", {}))["count"] == 0


async def test_fix_unknown_aggregation_type_is_rejected(any_api):
    for aggregation in ("avg", "median", "unique-count", "latest", 3):
        r = await any_api.call("createMeter", {"name": "T", "eventName": "tokens", "aggregationType": aggregation})
        assert_error(any_api, r, "invalid_params", "aggregationType", "aggregationType")
    # nothing was created, and the eventName is still free
    assert (await ok(any_api, "listMeters", {}))["count"] == 0
    assert (await meter(any_api, "tokens", "unique_count"))["aggregationType"] == "unique_count"


async def test_fix_event_name_is_unique_per_org_and_mode(any_api, make_key):
    first = await meter(any_api, "tokens", "sum")
    r = await any_api.call("createMeter", {"name": "Another name", "eventName": "tokens", "aggregationType": "max"})
    assert_error(any_api, r, "conflict", "")
    listed = await ok(any_api, "listMeters", {})
    assert listed == {"meters": [first], "count": 1, "hasMore": False}
    # the same eventName is free in the org's test mode and in another org
    for org, mode in (("acme", "test"), ("globex", "live")):
        other = any_api.with_key(await make_key(org, mode))
        m = await meter(other, "tokens", "max")
        assert m["id"] != first["id"] and m["eventName"] == "tokens"
        # ... and unique there too
        assert_error(other, await other.call("createMeter", {"name": "x", "eventName": "tokens"}), "conflict", "")
    assert await ok(any_api, "listMeters", {}) == listed


# -- listMeters / getMeter ------------------------------------------------------------------

async def test_list_meters_in_creation_order_with_count(any_api):
    assert await ok(any_api, "listMeters", {}) == {"meters": [], "count": 0, "hasMore": False}
    created = [await meter(any_api, name, agg) for name, agg in (("zeta", "sum"), ("alpha", "count"), ("mid", "last"))]
    r = await any_api.call("listMeters", {})
    assert r.status == 200
    assert r.result == {"meters": created, "count": 3, "hasMore": False}


async def test_list_meters_is_paged_like_every_list(any_api, make_key):
    """Issue 17: listMeters answered every meter at once (5,000 meters, a batch of 100 lists:
    a 110 MB answer). Pages of `limit` (default 100) in creation order, `startingAfter` the
    last id of the previous page; an id not in the listing is not_found."""
    created = [await meter(any_api, f"m{i:03d}") for i in range(7)]
    pages, after = [], None
    while True:
        page = await ok(any_api, "listMeters", {"limit": 3} | ({"startingAfter": after} if after else {}))
        pages.append(page)
        if not page["hasMore"]:
            break
        after = page["meters"][-1]["id"]
    assert [p["count"] for p in pages] == [3, 3, 1]
    assert [m for p in pages for m in p["meters"]] == created
    assert await ok(any_api, "listMeters", {"limit": 7}) == {"meters": created, "count": 7, "hasMore": False}
    assert await ok(any_api, "listMeters", {"startingAfter": created[-1]["id"]}) == {"meters": [], "count": 0, "hasMore": False}
    foreign = await meter(any_api.with_key(await make_key("globex", "live")), "theirs")
    for unknown in ("mtr_0000000000000000deadbeef", foreign["id"]):
        r = await any_api.call("listMeters", {"startingAfter": unknown})
        assert_error(any_api, r, "not_found", "meter not found", param="startingAfter")
    for bad in (0, 1001):
        assert_error(any_api, await any_api.call("listMeters", {"limit": bad}), "invalid_params",
                     "limit must be between 1 and 1000", param="limit")


async def test_list_meters_default_page_is_100(api):
    """The default limit is the contract's for every paged list: 100."""
    for start in range(0, 101, 100):
        batch = [{"method": "billing.createMeter", "id": i, "params": {"name": f"m{i}", "eventName": f"ev-{i}"}}
                 for i in range(start, min(start + 100, 101))]
        status, answers = await api.zap_raw(batch)
        assert status == 200 and all("result" in a for a in answers), answers
    page = await ok(api, "listMeters", {})
    assert (page["count"], page["hasMore"]) == (100, True)
    rest = await ok(api, "listMeters", {"startingAfter": page["meters"][-1]["id"]})
    assert (rest["count"], rest["hasMore"], rest["meters"][0]["name"]) == (1, False, "m100")


async def test_get_meter_returns_the_meter(any_api):
    await meter(any_api, "other")
    m = await meter(any_api, "tokens", "min", currency="jpy", dimensions=["region"])
    r = await any_api.call("getMeter", {"id": m["id"]})
    assert r.status == 200
    assert r.result == m


async def test_get_meter_unknown_id_is_not_found(any_api):
    m = await meter(any_api, "tokens")
    for unknown in ("mtr_0000000000000000deadbeef", m["id"] + "x", "not-an-id", "12345", "%"):
        assert_error(any_api, await any_api.call("getMeter", {"id": unknown}), "not_found", "meter not found")


async def test_get_meter_of_another_org_or_mode_is_not_found(any_api, make_key):
    for org, mode in (("acme", "test"), ("globex", "live")):
        foreign = await meter(any_api.with_key(await make_key(org, mode)), "tokens")
        assert_error(any_api, await any_api.call("getMeter", {"id": foreign["id"]}), "not_found", "meter not found")
    assert (await ok(any_api, "listMeters", {}))["count"] == 0


# -- recordMeterEvents ----------------------------------------------------------------------

async def test_record_meter_events_result_shape_and_status(any_api, db_path):
    m = await meter(any_api)
    r = await any_api.call("recordMeterEvents", {"events": [{"meterId": m["id"], "userId": ALICE, "value": 7}]})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"events", "count"}
    (event,) = r.result["events"]
    assert event["status"] == "created" and isinstance(event["id"], str) and event["id"]
    assert r.result["count"] == 1
    (row,) = event_rows(db_path)
    assert (row["id"], row["meter_id"], row["user_id"], row["value"]) == (event["id"], m["id"], ALICE, 7)


async def test_record_meter_events_results_in_input_order(any_api, db_path):
    a, b = await meter(any_api, "a"), await meter(any_api, "b")
    events = [{"meterId": (a, b)[i % 2]["id"], "userId": (ALICE, BOB)[i % 3 == 0], "value": 10 + i} for i in range(7)]
    result = await record(any_api, events)
    assert result["count"] == 7
    assert [e["status"] for e in result["events"]] == ["created"] * 7
    by_id = {row["id"]: row for row in event_rows(db_path)}
    assert len(by_id) == 7
    for sent, got in zip(events, result["events"]):
        row = by_id[got["id"]]
        assert (row["meter_id"], row["user_id"], row["value"]) == (sent["meterId"], sent["userId"], sent["value"])


async def test_record_meter_events_mixed_batch_is_stored_in_input_order(any_api, db_path):
    """Events without a key are inserted in runs (on SQLite, a run of events with neither
    dimensions nor a key as multi-row statements of 64, 32, ... rows); a keyed event alone.
    Whatever the mix, the rows are the batch's events in its order, each with what it carried."""
    m = await meter(any_api)
    shapes = [{}, {}, {"dimensions": {"region": "eu"}}, {}, {"idempotency": "k-1"}, {"dimensions": {"region": "us"}},
              {"dimensions": {"tier": "pro"}}, *[{}] * 71, {"idempotency": "k-2", "dimensions": {"region": "ap"}}, {}]
    events = [{"meterId": m["id"], "userId": ALICE, "value": 100 + i, **shape} for i, shape in enumerate(shapes)]
    result = await record(any_api, events)
    assert [e["status"] for e in result["events"]] == ["created"] * len(events)
    rows = event_rows(db_path)
    assert [r["id"] for r in rows] == [e["id"] for e in result["events"]]
    for sent, row in zip(events, rows):
        dims = json.loads(row["dimensions"]) if isinstance(row["dimensions"], str) else row["dimensions"]
        assert (row["value"], row["idempotency_key"], dims) == (sent["value"], sent.get("idempotency"), sent.get("dimensions"))


async def test_record_meter_events_accepts_a_batch_of_100(any_api, db_path):
    m = await meter(any_api)
    result = await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": i} for i in range(100)])
    assert result["count"] == 100 and len({e["id"] for e in result["events"]}) == 100
    assert len(event_rows(db_path)) == 100
    assert (await summary(any_api, m["id"]))["value"] == sum(range(100))


@pytest.mark.parametrize("events", ["absent", [], None])
async def test_record_meter_events_at_least_one_event_is_required(any_api, events):
    params = {} if events == "absent" else {"events": events}
    r = await any_api.call("recordMeterEvents", params)
    assert_error(any_api, r, "invalid_params", "at least one event is required")


async def test_record_meter_events_maximum_100_events_per_batch(any_api, db_path):
    m = await meter(any_api)
    r = await any_api.call("recordMeterEvents", {"events": [{"meterId": m["id"], "userId": ALICE, "value": 1}] * 101})
    assert_error(any_api, r, "invalid_params", "maximum 100 events per batch")
    assert event_rows(db_path) == []


@pytest.mark.parametrize("meter_id", ["absent", "", None])
async def test_record_meter_events_meter_id_is_required_for_each_event(any_api, db_path, meter_id):
    m = await meter(any_api)
    bad: dict[str, Any] = {"userId": ALICE, "value": 1}
    if meter_id != "absent":
        bad["meterId"] = meter_id
    r = await any_api.call("recordMeterEvents", {"events": [{"meterId": m["id"], "userId": ALICE, "value": 1}, bad]})
    assert_error(any_api, r, "invalid_params", "meterId is required for each event")
    assert event_rows(db_path) == []


@pytest.mark.parametrize("user_id", ["absent", "", None])
async def test_record_meter_events_user_id_is_required_for_each_event(any_api, db_path, user_id):
    m = await meter(any_api)
    bad: dict[str, Any] = {"meterId": m["id"], "value": 1}
    if user_id != "absent":
        bad["userId"] = user_id
    r = await any_api.call("recordMeterEvents", {"events": [{"meterId": m["id"], "userId": ALICE, "value": 1}, bad]})
    assert_error(any_api, r, "invalid_params", "userId is required for each event")
    assert event_rows(db_path) == []


async def test_record_meter_events_values_may_be_zero_or_negative(any_api, db_path):
    total = await meter(any_api, "total", "sum")
    lowest = await meter(any_api, "lowest", "min")
    events = [{"meterId": m["id"], "userId": ALICE, "value": v} for m in (total, lowest) for v in (0, -5, 3, -(2**63))]
    result = await record(any_api, events)
    assert [e["status"] for e in result["events"]] == ["created"] * 8
    assert [row["value"] for row in event_rows(db_path)] == [0, -5, 3, -(2**63)] * 2
    assert (await summary(any_api, lowest["id"]))["value"] == -(2**63)
    await record(any_api, [{"meterId": total["id"], "userId": BOB, "value": v} for v in (0, -5, 3)])
    assert (await summary(any_api, total["id"], userId=BOB))["value"] == -2


async def test_record_meter_events_timestamp_defaults_to_now_and_accepts_rfc3339_or_a_date(any_api, db_path, clock):
    m = await meter(any_api)
    await record(any_api, [
        {"meterId": m["id"], "userId": ALICE, "value": 1},
        {"meterId": m["id"], "userId": ALICE, "value": 2, "timestamp": "2026-03-01T01:30:00.250+01:00"},
        {"meterId": m["id"], "userId": ALICE, "value": 3, "timestamp": "2026-03-01T00:30:00Z"},
        {"meterId": m["id"], "userId": ALICE, "value": 4, "timestamp": "2026-03-01"},
    ])
    rows = event_rows(db_path)
    assert [r["ts"] for r in rows] == [
        clock.now, us("2026-03-01T00:30:00.250Z"), us("2026-03-01T00:30:00Z"), us("2026-03-01T00:00:00Z")]


async def test_record_meter_events_duplicate_of_an_earlier_request(any_api, db_path):
    a, b = await meter(any_api, "a"), await meter(any_api, "b")
    (original,) = (await record(any_api, [{"meterId": a["id"], "userId": ALICE, "value": 5, "idempotency": "k-1"}]))["events"]
    assert original["status"] == "created"
    # the same key again, whatever else the event says (another value, user or meter), is a duplicate
    for again in (
        {"meterId": a["id"], "userId": ALICE, "value": 5, "idempotency": "k-1"},
        {"meterId": a["id"], "userId": BOB, "value": 999, "idempotency": "k-1"},
        {"meterId": b["id"], "userId": ALICE, "value": 1, "idempotency": "k-1"},
    ):
        r = await any_api.call("recordMeterEvents", {"events": [again]})
        assert r.status == created_status(any_api)
        assert r.result == {"events": [{"id": original["id"], "status": "duplicate"}], "count": 1}
    rows = event_rows(db_path)
    assert [(row["id"], row["value"]) for row in rows] == [(original["id"], 5)]
    assert (await summary(any_api, a["id"]))["eventCount"] == 1
    assert (await summary(any_api, b["id"]))["eventCount"] == 0


async def test_record_meter_events_duplicate_within_one_batch(any_api, db_path):
    m = await meter(any_api)
    result = await record(any_api, [
        {"meterId": m["id"], "userId": ALICE, "value": 1, "idempotency": "k-a"},
        {"meterId": m["id"], "userId": ALICE, "value": 2},
        {"meterId": m["id"], "userId": ALICE, "value": 4, "idempotency": "k-a"},
        {"meterId": m["id"], "userId": ALICE, "value": 8, "idempotency": "k-b"},
        {"meterId": m["id"], "userId": ALICE, "value": 16, "idempotency": "k-b"},
    ])
    statuses = [e["status"] for e in result["events"]]
    assert statuses == ["created", "created", "duplicate", "created", "duplicate"]
    ids = [e["id"] for e in result["events"]]
    assert ids[2] == ids[0] and ids[4] == ids[3] and len(set(ids)) == 3
    assert result["count"] == 5
    assert [row["value"] for row in event_rows(db_path)] == [1, 2, 8]
    assert (await summary(any_api, m["id"]))["value"] == 11


async def test_meter_event_dimensions_are_stored_for_a_group_by(any_api, db_path):
    m = await meter(any_api, "tokens", dimensions=["model", "region"])
    await record(any_api, [
        {"meterId": m["id"], "userId": ALICE, "value": 10, "dimensions": {"model": "gpt", "region": "eu"}},
        {"meterId": m["id"], "userId": ALICE, "value": 20, "dimensions": {"model": "claude", "region": "eu"}},
        {"meterId": m["id"], "userId": BOB, "value": 30, "dimensions": {"model": "gpt", "region": "us"}},
        {"meterId": m["id"], "userId": BOB, "value": 40},
    ])
    grouped = db_rows(
        db_path,
        f"SELECT {dimension(db_path, 'model')} AS model, SUM(value) AS total, COUNT(*) AS n"
        " FROM meter_events WHERE meter = (SELECT seq FROM meters WHERE id = ?) GROUP BY model ORDER BY model NULLS FIRST",
        (m["id"],),
    )
    assert grouped == [
        {"model": None, "total": 40, "n": 1},
        {"model": "claude", "total": 20, "n": 1},
        {"model": "gpt", "total": 40, "n": 2},
    ]
    by_region = db_rows(
        db_path,
        f"SELECT {dimension(db_path, 'region')} AS region, SUM(value) AS total FROM meter_events"
        f" WHERE meter = (SELECT seq FROM meters WHERE id = ?) AND {dimension(db_path, 'region')} IS NOT NULL GROUP BY region ORDER BY region",
        (m["id"],),
    )
    assert by_region == [{"region": "eu", "total": 30}, {"region": "us", "total": 30}]


async def test_fix_meter_event_batch_is_validated_first_and_written_all_or_nothing(any_api, db_path):
    m = await meter(any_api)
    good = [{"meterId": m["id"], "userId": ALICE, "value": 10 + i, "idempotency": f"good-{i}"} for i in range(5)]
    failing_tails = [
        ({"meterId": m["id"], "value": 1}, "invalid_params", "userId is required for each event"),
        ({"userId": ALICE, "value": 1}, "invalid_params", "meterId is required for each event"),
        ({"meterId": m["id"], "userId": ALICE, "value": "1"}, "invalid_params", "value"),
        ({"meterId": m["id"], "userId": ALICE, "value": 1, "timestamp": "not a time"}, "invalid_params", "invalid timestamp"),
        ({"meterId": "mtr_unknown", "userId": ALICE, "value": 1}, "not_found", "meter not found"),
    ]
    for tail, kind, message in failing_tails:
        r = await any_api.call("recordMeterEvents", {"events": [*good, tail]})
        assert_error(any_api, r, kind, message)
        assert event_rows(db_path) == [], (tail, "part of a rejected batch was written")
    # the rejected batches claimed none of their idempotency keys: the good part now goes in whole
    result = await record(any_api, good)
    assert [e["status"] for e in result["events"]] == ["created"] * 5
    assert [row["value"] for row in event_rows(db_path)] == [10, 11, 12, 13, 14]


async def test_fix_unknown_meter_ids_and_bad_timestamps_are_rejected(any_api, make_key, db_path):
    m = await meter(any_api)
    foreign = await meter(any_api.with_key(await make_key("globex", "live")), "tokens")
    other_mode = await meter(any_api.with_key(await make_key("acme", "test")), "tokens")
    ok_event = {"meterId": m["id"], "userId": ALICE, "value": 1}
    for unknown in ("mtr_unknown", "not-an-id", foreign["id"], other_mode["id"]):
        r = await any_api.call("recordMeterEvents", {"events": [ok_event, {**ok_event, "meterId": unknown}]})
        assert_error(any_api, r, "not_found", "meter not found")
    for bad in ("yesterday", "2026-02-30", "2026-13-01T00:00:00Z", "2026-03-01T25:00:00Z", "2026-03-01T10:00:00",
                "1772323200", "2026/03/01"):
        r = await any_api.call("recordMeterEvents", {"events": [ok_event, {**ok_event, "timestamp": bad}]})
        assert_error(any_api, r, "invalid_params", "invalid timestamp")
    assert event_rows(db_path) == []


async def test_fix_meter_event_dedup_holds_under_concurrency(api, db_path):
    """30 concurrent requests carrying one idempotency key, over all three transports at once."""
    m = await meter(api)
    replies = await asyncio.gather(*(
        api.using(TRANSPORTS[i % 3]).call("recordMeterEvents", {"events": [
            {"meterId": m["id"], "userId": ALICE, "value": 100 + i, "idempotency": "storm"}]})
        for i in range(30)
    ))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    outcomes = [r.result["events"][0] for r in replies]
    assert sorted(o["status"] for o in outcomes) == ["created"] + ["duplicate"] * 29
    assert len({o["id"] for o in outcomes}) == 1
    (row,) = event_rows(db_path)
    assert row["id"] == outcomes[0]["id"]
    s = await summary(api, m["id"])
    assert (s["eventCount"], s["value"]) == (1, row["value"])


async def test_fix_meter_rows_and_dedup_keys_are_scoped_to_org_and_mode(any_api, make_key):
    live = any_api
    mine = await meter(live, "tokens")
    (original,) = (await record(live, [{"meterId": mine["id"], "userId": ALICE, "value": 5, "idempotency": "k"}]))["events"]
    for org, mode in (("acme", "test"), ("globex", "live")):
        other = any_api.with_key(await make_key(org, mode))
        # nothing of acme/live is visible ...
        assert await ok(other, "listMeters", {}) == {"meters": [], "count": 0, "hasMore": False}
        assert_error(other, await other.call("getMeter", {"id": mine["id"]}), "not_found", "meter not found")
        r = await other.call("getMeterEventsSummary", {"meterId": mine["id"]})
        assert_error(other, r, "not_found", "meter not found")
        # ... nor usable to record into
        r = await other.call("recordMeterEvents", {"events": [{"meterId": mine["id"], "userId": ALICE, "value": 1}]})
        assert_error(other, r, "not_found", "meter not found")
        # the same eventName and the same idempotency key are new here
        theirs = await meter(other, "tokens")
        (event,) = (await record(other, [{"meterId": theirs["id"], "userId": ALICE, "value": 7, "idempotency": "k"}]))["events"]
        assert event["status"] == "created" and event["id"] != original["id"]
        assert (await summary(other, theirs["id"]))["value"] == 7
        # and their events stay theirs: an all-users summary of acme/live is unchanged
        s = await summary(live, mine["id"])
        assert (s["value"], s["eventCount"]) == (5, 1)
    assert (await ok(live, "listMeters", {}))["meters"] == [mine]


# -- getMeterEventsSummary ------------------------------------------------------------------

@pytest.mark.parametrize("meter_id", ["absent", ""])
async def test_summary_meter_id_is_required(any_api, meter_id):
    params = {} if meter_id == "absent" else {"meterId": meter_id}
    r = await any_api.call("getMeterEventsSummary", params)
    message = "meterId query parameter is required" if any_api.transport == "rest" else "meterId is required"
    assert_error(any_api, r, "invalid_params", message, "meterId")


async def test_summary_unknown_meter_is_not_found(any_api, make_key):
    foreign = await meter(any_api.with_key(await make_key("globex", "live")))
    other_mode = await meter(any_api.with_key(await make_key("acme", "test")))
    for unknown in ("mtr_unknown", "not-an-id", foreign["id"], other_mode["id"]):
        r = await any_api.call("getMeterEventsSummary", {"meterId": unknown})
        assert_error(any_api, r, "not_found", "meter not found")


async def test_summary_result_shape(any_api):
    m = await meter(any_api, "tokens", "max")
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": v, "timestamp": "2026-03-02T00:00:00Z"} for v in (4, 9)])
    r = await any_api.call("getMeterEventsSummary", {
        "meterId": m["id"], "userId": ALICE, "periodStart": "2026-03-01", "periodEnd": "2026-03-31T00:00:00Z"})
    assert r.status == 200
    assert r.result == {
        "meterId": m["id"], "meterName": "tokens meter", "userId": ALICE, "aggregationType": "max",
        "value": 9, "eventCount": 2, "periodStart": "2026-03-01", "periodEnd": "2026-03-31T00:00:00Z",
    }


async def test_summary_value_and_event_count_for_each_aggregation(any_api):
    values = [5, 3, 5, -2, 9, 3, 0]
    # the latest timestamp carries -2, and it is not the last one inserted
    stamps = ["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", "2026-03-01T09:00:00Z", "2026-03-02T08:00:00Z",
              "2026-03-01T12:00:00Z", "2026-03-01T08:00:00Z", "2026-03-01T13:00:00Z"]
    expected = {"sum": 23, "count": 7, "max": 9, "min": -2, "unique_count": 5, "last": -2}
    meters = {agg: await meter(any_api, f"ev-{agg}", agg) for agg in AGGREGATIONS}
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": v, "timestamp": t}
                           for m in meters.values() for v, t in zip(values, stamps)])
    for agg, m in meters.items():
        s = await summary(any_api, m["id"])
        assert (s["aggregationType"], s["value"], s["eventCount"]) == (agg, expected[agg], 7), s


async def test_summary_of_no_events_is_zero(any_api):
    for agg in AGGREGATIONS:
        m = await meter(any_api, f"ev-{agg}", agg)
        s = await summary(any_api, m["id"], userId="nobody/ever")
        assert (s["value"], s["eventCount"]) == (0, 0), s


async def test_fix_last_is_the_value_of_the_latest_timestamp(any_api):
    m = await meter(any_api, "gauge", "last")
    # the latest-timestamped event is inserted first, then older ones in later requests
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": 42, "timestamp": "2026-03-10T12:00:00Z"}])
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": 7, "timestamp": "2026-03-10T11:59:59.999Z"}])
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": 1, "timestamp": "2026-03-01T00:00:00Z"},
                           {"meterId": m["id"], "userId": ALICE, "value": 2, "timestamp": "2026-03-05T00:00:00Z"}])
    s = await summary(any_api, m["id"], userId=ALICE)
    assert (s["value"], s["eventCount"]) == (42, 4)
    # within a period, the latest event of that period
    assert (await summary(any_api, m["id"], periodEnd="2026-03-10T12:00:00Z"))["value"] == 7
    # equal timestamps: the one inserted last wins, in one batch and across requests
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": 50, "timestamp": "2026-03-20T00:00:00Z"},
                           {"meterId": m["id"], "userId": ALICE, "value": 60, "timestamp": "2026-03-20T00:00:00Z"}])
    assert (await summary(any_api, m["id"]))["value"] == 60
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": 55, "timestamp": "2026-03-20T00:00:00Z"}])
    assert (await summary(any_api, m["id"]))["value"] == 55
    # per user: BOB's latest
    await record(any_api, [{"meterId": m["id"], "userId": BOB, "value": 3, "timestamp": "2026-03-25T00:00:00Z"},
                           {"meterId": m["id"], "userId": BOB, "value": 4, "timestamp": "2026-03-24T00:00:00Z"}])
    assert (await summary(any_api, m["id"], userId=BOB))["value"] == 3
    assert (await summary(any_api, m["id"], userId=ALICE))["value"] == 55
    assert (await summary(any_api, m["id"]))["value"] == 3


async def test_summary_user_id_is_optional(any_api):
    m = await meter(any_api)
    await record(any_api, [{"meterId": m["id"], "userId": u, "value": v} for u, v in ((ALICE, 1), (BOB, 10), (ALICE, 100))])
    everyone = await summary(any_api, m["id"])
    assert (everyone["userId"], everyone["value"], everyone["eventCount"]) == ("", 111, 3)
    alice = await summary(any_api, m["id"], userId=ALICE)
    assert (alice["userId"], alice["value"], alice["eventCount"]) == (ALICE, 101, 2)
    bob = await summary(any_api, m["id"], userId=BOB)
    assert (bob["userId"], bob["value"], bob["eventCount"]) == (BOB, 10, 1)


PERIOD_EVENTS = [
    ("2026-02-28T23:59:59.999Z", 1),
    ("2026-03-01T00:00:00Z", 10),
    ("2026-03-15T12:00:00Z", 100),
    ("2026-03-31T23:59:59.999Z", 1000),
    ("2026-04-01T00:00:00Z", 10000),
]


async def period_meter(api) -> str:
    m = await meter(api)
    await record(api, [{"meterId": m["id"], "userId": ALICE, "value": v, "timestamp": t} for t, v in PERIOD_EVENTS])
    return m["id"]


async def test_summary_bare_date_period_start_is_midnight_inclusive(any_api):
    mid = await period_meter(any_api)
    s = await summary(any_api, mid, periodStart="2026-03-01")
    assert (s["value"], s["eventCount"], s["periodStart"], s["periodEnd"]) == (11110, 4, "2026-03-01", "")
    assert (await summary(any_api, mid, periodStart="2026-03-02"))["value"] == 11100


async def test_summary_bare_date_period_end_includes_that_whole_day(any_api):
    mid = await period_meter(any_api)
    s = await summary(any_api, mid, periodEnd="2026-03-31")
    assert (s["value"], s["eventCount"], s["periodStart"], s["periodEnd"]) == (1111, 4, "", "2026-03-31")
    assert (await summary(any_api, mid, periodStart="2026-03-01", periodEnd="2026-03-31"))["value"] == 1110
    # start and end on the same bare date: exactly that day
    assert (await summary(any_api, mid, periodStart="2026-03-01", periodEnd="2026-03-01"))["value"] == 10
    assert (await summary(any_api, mid, periodStart="2026-02-28", periodEnd="2026-02-28"))["value"] == 1


async def test_summary_rfc3339_period_end_is_exclusive(any_api):
    mid = await period_meter(any_api)
    s = await summary(any_api, mid, periodEnd="2026-04-01T00:00:00Z")
    assert (s["value"], s["eventCount"], s["periodEnd"]) == (1111, 4, "2026-04-01T00:00:00Z")
    assert (await summary(any_api, mid, periodEnd="2026-03-15T12:00:00Z"))["value"] == 11
    assert (await summary(any_api, mid, periodEnd="2026-03-15T12:00:00.001Z"))["value"] == 111
    # an RFC 3339 start is inclusive
    assert (await summary(any_api, mid, periodStart="2026-03-15T12:00:00Z", periodEnd="2026-04-01T00:00:00Z"))["value"] == 1100


async def test_summary_absent_period_bounds_are_unbounded(any_api):
    mid = await period_meter(any_api)
    s = await summary(any_api, mid)
    assert (s["value"], s["eventCount"], s["periodStart"], s["periodEnd"]) == (11111, 5, "", "")
    # empty strings mean absent
    s = await summary(any_api, mid, periodStart="", periodEnd="")
    assert (s["value"], s["periodStart"], s["periodEnd"]) == (11111, "", "")


async def test_summary_bad_period_bounds_are_invalid(any_api):
    mid = await period_meter(any_api)
    for bad in ("yesterday", "2026-02-30", "2026-3-1", "2026-03-01T00:00:00", "03/01/2026", "1772323200"):
        for field in ("periodStart", "periodEnd"):
            r = await any_api.call("getMeterEventsSummary", {"meterId": mid, field: bad})
            assert_error(any_api, r, "invalid_params", f"invalid {field}", field)


async def test_summary_sum_beyond_int64_is_invalid_params(any_api):
    m = await meter(any_api, "big", "sum")
    await record(any_api, [{"meterId": m["id"], "userId": ALICE, "value": INT64_MAX, "timestamp": "2026-03-01T00:00:00Z"},
                           {"meterId": m["id"], "userId": ALICE, "value": 1, "timestamp": "2026-03-02T00:00:00Z"}])
    r = await any_api.call("getMeterEventsSummary", {"meterId": m["id"]})
    assert_error(any_api, r, "invalid_params", "")
    r = await any_api.call("getMeterEventsSummary", {"meterId": m["id"], "userId": ALICE, "periodStart": "2026-03-01"})
    assert_error(any_api, r, "invalid_params", "")
    # a period holding only one of them sums as usual
    assert (await summary(any_api, m["id"], periodEnd="2026-03-01"))["value"] == INT64_MAX


async def test_summary_aggregates_in_sql_over_the_summary_index(api, server, db_path, monkeypatch):
    """The store's summary query, captured as the server runs it, is one aggregate row computed by
    the database and its plan searches meter_events through the meter_events_summary index (on
    PostgreSQL, whose planner rightly prefers a scan of these few rows, the plan with sequential
    scans disabled: the query can use the index, and a query that could not would still scan)."""
    store = server.app[STORE]
    captured: list[tuple[str, Any, int]] = []
    real_read = store._read

    async def spy(sql: str, *params: Any) -> Any:  # SQLite's _read(sql, params); PostgreSQL's _read(sql, *params)
        rows = await real_read(sql, *params)
        if "meter_events" in sql:
            captured.append((sql, params[0] if params and not pg.is_url(db_path) else params, len(rows)))
        return rows

    monkeypatch.setattr(store, "_read", spy)
    meters = {agg: await meter(api, f"ev-{agg}", agg) for agg in AGGREGATIONS}
    for m in meters.values():
        await record(api, [{"meterId": m["id"], "userId": (ALICE, BOB)[i % 2], "value": i,
                            "timestamp": f"2026-03-{1 + i % 28:02d}T00:00:00Z"} for i in range(60)])
    variants = [{}, {"userId": ALICE}, {"periodStart": "2026-03-02", "periodEnd": "2026-03-20"},
                {"userId": BOB, "periodStart": "2026-03-02T00:00:00Z"}]
    on_pg = pg.is_url(db_path)
    con: Any = pg.Connection(db_path) if on_pg else pg.read_only(db_path)
    try:
        if on_pg:
            con.execute("SET enable_seqscan = off")
        for agg, m in meters.items():
            for params in variants:
                captured.clear()
                await summary(api, m["id"], **params)
                assert len(captured) == 1, [c[0] for c in captured]
                sql, sql_params, n_rows = captured[0]
                assert n_rows == 1, "the summary must come back as one aggregate row, not as the events"
                if on_pg:
                    plan = [row[0] for row in con.execute("EXPLAIN " + sql, sql_params)]
                    on_events = [step for step in plan if " on meter_events" in step]
                    assert on_events, plan
                    for step in on_events:
                        assert "Index" in step and "using meter_events_summary" in step, (agg, params, plan)
                    continue
                plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, sql_params)]
                on_events = [step for step in plan if "meter_events" in step]
                assert on_events, plan
                for step in on_events:
                    assert step.startswith("SEARCH meter_events USING"), (agg, params, plan)
                    assert "INDEX meter_events_summary" in step, (agg, params, plan)
    finally:
        con.close()


# -- recordUsage's meter event --------------------------------------------------------------

async def test_record_usage_records_an_event_on_the_api_usage_meter(any_api, db_path, clock):
    usage_meter = await meter(any_api, "api-usage")
    other = await meter(any_api, "tokens")
    tx = await ok(any_api, "recordUsage", {"user": ALICE, "amount": 250, "model": "claude-x", "provider": "anthropic",
                                           "totalTokens": 9, "requestId": "req-1"})
    (row,) = event_rows(db_path)
    assert (row["meter_id"], row["user_id"], row["value"], row["ts"]) == (usage_meter["id"], ALICE, 250, clock.now)
    (dims,) = db_rows(db_path, f"SELECT {dimension(db_path, 'model')} AS model,"
                               f" {dimension(db_path, 'provider')} AS provider FROM meter_events")
    assert dims == {"model": "claude-x", "provider": "anthropic"}
    (ledger,) = usage_rows(db_path)
    assert ledger["id"] == tx["transactionId"] and ledger["created_at"] == row["ts"]
    assert (row["ledger_id"], row["idempotency_key"]) == (tx["transactionId"], None)  # linked to its row, no key of the callers' kind
    s = await summary(any_api, usage_meter["id"], userId=ALICE)
    assert (s["value"], s["eventCount"]) == (250, 1)
    assert (await summary(any_api, other["id"]))["eventCount"] == 0


async def test_fix_record_usage_event_is_written_in_the_same_transaction(any_api, db_path):
    """If the meter event cannot be written, the usage withdrawal is not written either."""
    await meter(any_api, "api-usage")
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})
    con: Any = pg.Connection(db_path) if pg.is_url(db_path) else sqlite3.connect(db_path)
    try:
        if pg.is_url(db_path):  # pg.Connection commits each statement
            con.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                        " $$ BEGIN RAISE EXCEPTION 'meter events refused'; END $$")
            con.execute("CREATE TRIGGER refuse_meter_events BEFORE INSERT ON meter_events FOR EACH ROW EXECUTE FUNCTION refuse()")
            drop = "DROP TRIGGER refuse_meter_events ON meter_events"
        else:
            con.execute("CREATE TRIGGER refuse_meter_events BEFORE INSERT ON meter_events"
                        " BEGIN SELECT RAISE(ABORT, 'meter events refused'); END")
            con.commit()
            drop = "DROP TRIGGER refuse_meter_events"
        request = {"user": ALICE, "amount": 300, "model": "m", "provider": "p", "requestId": "req-tx"}
        r = await any_api.call("recordUsage", request)
        assert r.error is not None, f"the usage was acknowledged without its meter event: {r.status} {r.result!r}"
        assert usage_rows(db_path) == [] and event_rows(db_path) == []
        assert (await ok(any_api, "getBalance", {"user": ALICE}))["balance"] == 1000
        con.execute(drop)
        if not pg.is_url(db_path):
            con.commit()
    finally:
        con.close()
    # the requestId was not consumed by the failed call: a retry charges once, with its event
    tx = await ok(any_api, "recordUsage", request)
    (ledger,) = usage_rows(db_path)
    (event,) = event_rows(db_path)
    assert ledger["id"] == tx["transactionId"] and event["value"] == 300
    assert (await ok(any_api, "getBalance", {"user": ALICE}))["balance"] == 700


async def test_fix_record_usage_retry_records_no_second_event_and_charges_once(any_api, db_path):
    usage_meter = await meter(any_api, "api-usage")
    await ok(any_api, "deposit", {"user": ALICE, "amount": 10_000})
    request = {"user": ALICE, "amount": 250, "model": "m", "provider": "p", "requestId": "req-42"}
    first = await ok(any_api, "recordUsage", request)
    assert await ok(any_api, "recordUsage", request) == first
    assert await ok(any_api, "recordUsage", {**request, "amount": 999, "model": "other"}) == first
    assert len(usage_rows(db_path)) == 1
    assert [(e["user_id"], e["value"]) for e in event_rows(db_path)] == [(ALICE, 250)]
    assert (await ok(any_api, "getBalance", {"user": ALICE}))["balance"] == 10_000 - 250
    # the same requestId for another user is another usage, with its own event
    await ok(any_api, "recordUsage", {**request, "user": BOB, "amount": 40})
    assert [(e["user_id"], e["value"]) for e in event_rows(db_path)] == [(ALICE, 250), (BOB, 40)]
    s = await summary(any_api, usage_meter["id"])
    assert (s["value"], s["eventCount"]) == (290, 2)


async def test_fix_record_usage_concurrent_retries_record_one_event(api, db_path):
    """30 concurrent recordUsage calls with one requestId, over all three transports at once."""
    usage_meter = await meter(api, "api-usage")
    request = {"user": ALICE, "amount": 700, "model": "m", "requestId": "req-storm"}
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("recordUsage", request) for i in range(30)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert len({r.result["transactionId"] for r in replies}) == 1
    assert len(usage_rows(db_path)) == 1 and len(event_rows(db_path)) == 1
    s = await summary(api, usage_meter["id"])
    assert (s["value"], s["eventCount"]) == (700, 1)


@pytest.mark.parametrize("amount", [0, -5])
async def test_record_usage_non_positive_amount_records_no_event(any_api, db_path, amount):
    await meter(any_api, "api-usage")
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": amount, "model": "m", "requestId": "req-0"})
    assert r.ok and r.result["status"] == "skipped", (r.status, r.error, r.result)
    assert event_rows(db_path) == []


async def test_record_usage_without_api_usage_meter_records_no_event(any_api, db_path, make_key):
    other = await meter(any_api, "tokens")
    await meter(any_api, "api_usage")
    # an api-usage meter of another org or mode is not this org/mode's
    await meter(any_api.with_key(await make_key("acme", "test")), "api-usage")
    await meter(any_api.with_key(await make_key("globex", "live")), "api-usage")
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "requestId": "req-a"})
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m"})
    assert len(usage_rows(db_path)) == 2
    assert event_rows(db_path) == []
    assert (await summary(any_api, other["id"]))["eventCount"] == 0


async def test_record_usage_without_request_id_records_an_event_per_call(any_api, db_path):
    usage_meter = await meter(any_api, "api-usage")
    for amount in (10, 10, 25):
        await ok(any_api, "recordUsage", {"user": ALICE, "amount": amount, "model": "m", "provider": "p"})
    rows = event_rows(db_path)
    assert [r["value"] for r in rows] == [10, 10, 25]
    assert [r["idempotency_key"] for r in rows] == [None, None, None]
    assert len(usage_rows(db_path)) == 3
    s = await summary(any_api, usage_meter["id"], userId=ALICE)
    assert (s["value"], s["eventCount"]) == (45, 3)


@pytest.mark.postgres_only("counts PostgreSQL statements")
async def test_a_batch_of_usual_events_is_one_statement_and_the_rest_go_the_transaction_s_way(api, monkeypatch):
    """store/postgres/metering.py `_INSERT_ALONE`: a batch with no key, no dimensions, on a
    tenant without alerts is one statement that commits by itself (its checks inside it); a
    missing meter, a keyed event, dimensions and a tenant with an alert take the transaction's
    way, and every answer is the one that way gives."""
    from test_ledger_writes import Statements

    meter = (await ok(api, "createMeter", {"name": "Tokens", "eventName": "tokens"}))["id"]
    sent = Statements(monkeypatch)

    async def record(*events: dict[str, Any]) -> Any:
        sent.sent.clear()
        return await api.call("recordMeterEvents", {"events": list(events)})

    r = await record({"meterId": meter, "userId": "u1", "value": 2}, {"meterId": meter, "userId": "u2", "value": 3})
    assert [e["status"] for e in r.result["events"]] == ["created", "created"]
    assert len(sent.sent) == 1 and "WITH m AS" in sent.sent[0], sent.sent
    r = await record({"meterId": meter, "userId": "u1", "value": 2}, {"meterId": "mtr_missing", "userId": "u1", "value": 1})
    assert_error(api, r, "not_found", "meter not found", "events[1].meterId")
    assert any(q.startswith("BEGIN") for q in sent.sent), sent.sent
    for extra in ({"idempotency": "k1"}, {"dimensions": {"model": "x"}}):
        r = await record({"meterId": meter, "userId": "u1", "value": 5, **extra})
        assert r.result["events"][0]["status"] == "created"
        assert sent.in_transaction(), sent.sent
    alert = await ok(api, "createAlert", {"type": "usage_above", "userId": "u1", "threshold": 1, "meterId": meter, "period": "month"})
    for _ in range(2):  # the second knows the tenant has alerts: no one-statement attempt first
        r = await record({"meterId": meter, "userId": "u1", "value": 5})
        assert r.result["events"][0]["status"] == "created" and sent.in_transaction(), sent.sent
    assert not any("WITH m AS" in q for q in sent.sent), sent.sent
    await ok(api, "deleteAlert", {"id": alert["id"]})
    await record({"meterId": meter, "userId": "u1", "value": 1})  # the transaction's way sees none left
    r = await record({"meterId": meter, "userId": "u1", "value": 1})
    assert r.result["events"][0]["status"] == "created" and len(sent.sent) == 1 and "WITH m AS" in sent.sent[0], sent.sent
    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter})
    assert (summary["value"], summary["eventCount"]) == (2 + 3 + 5 + 5 + 5 + 5 + 1 + 1, 8)
