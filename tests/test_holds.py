"""Holds end to end: every hold operation (createHold, captureHold, releaseHold, getHold,
listHolds: the Go billing package zapbilling's contract was first written against has none of
them) over REST, ZAP/JSON and ZAP/msgpack
(`any_api`) on the real server and a real SQLite file: the result shapes, every error with its
status and code, what a hold does to getBalance/getBalanceAll, expiry exact to the microsecond
without a sweep, the sweep, requestId and Idempotency-Key replays, org/mode isolation, paging,
and concurrent holds and settlements through real concurrent HTTP calls."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timezone
from typing import Any

import pg
import pytest
from conftest import REGISTRY, TRANSPORTS, assert_error, created_status, ledger_rows, ok

from zapbilling.app import STORE, sweep_once

ALICE = "hanzo/alice"
BOB = "hanzo/bob"
SECOND_US = 1_000_000
INT64_MAX = 2**63 - 1
HOLD_KEYS = {"holdId", "user", "currency", "amount", "status", "expiresAt", "createdAt"}


# -- helpers --------------------------------------------------------------------------------

def to_us(text: str) -> int:
    """An RFC 3339 UTC timestamp of the server as integer microseconds since the epoch."""
    assert isinstance(text, str) and text.endswith("Z"), f"timestamps are UTC RFC 3339: {text!r}"
    delta = datetime.fromisoformat(text[:-1] + "+00:00") - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * SECOND_US + delta.microseconds


def conforms(method: str, result: Any) -> Any:
    """The result is exactly what the schema declares for `method` (no extra, none missing)."""
    REGISTRY.commands[f"billing.{method}"].result_model.model_validate({"value": result})
    return result


async def deposit(api, amount: int, user: str = ALICE, **params: Any) -> dict[str, Any]:
    return await ok(api, "deposit", {"user": user, "amount": amount, **params})


async def hold(api, amount: int, user: str = ALICE, **params: Any) -> dict[str, Any]:
    return conforms("createHold", await ok(api, "createHold", {"user": user, "amount": amount, **params}))


async def account(api, user: str = ALICE, currency: str = "usd") -> tuple[int, int, int]:
    """(balance, holds, available)."""
    b = await ok(api, "getBalance", {"user": user, "currency": currency})
    assert b["available"] == max(b["balance"] - b["holds"], 0), b
    return b["balance"], b["holds"], b["available"]


async def get_hold(api, hold_id: str) -> dict[str, Any]:
    return conforms("getHold", await ok(api, "getHold", {"id": hold_id}))


async def list_holds(api, **params: Any) -> dict[str, Any]:
    return conforms("listHolds", await ok(api, "listHolds", params))


def hold_rows(db_path: str) -> list[dict[str, Any]]:
    """Every stored hold, read-only from the server's database, in insertion order."""
    if pg.is_url(db_path):
        pgcon = pg.Connection(db_path)
        try:
            return [dict(r) for r in pgcon.execute("SELECT * FROM holds ORDER BY seq")]
        finally:
            pgcon.close()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM holds ORDER BY seq")]
    finally:
        con.close()


def withdrawals(db_path: str, user: str = ALICE) -> list[dict[str, Any]]:
    return ledger_rows(db_path, user, type="withdraw")


# -- createHold -------------------------------------------------------------------------------

async def test_create_hold_result_shape(any_api, clock):
    await deposit(any_api, 1000)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 300})
    assert r.status == created_status(any_api), (r.status, r.error)
    h = conforms("createHold", r.result)
    assert set(h) == HOLD_KEYS
    assert h["holdId"].startswith("hold_")
    assert (h["user"], h["currency"], h["amount"], h["status"]) == (ALICE, "usd", 300, "pending")
    assert to_us(h["createdAt"]) == clock.now
    assert to_us(h["expiresAt"]) == clock.now + 900 * SECOND_US  # the default: 15 minutes


async def test_create_hold_with_every_parameter(any_api, clock):
    clock.advance(seconds=0.123457)  # a clock reading with sub-millisecond digits
    await deposit(any_api, 1000, currency="eur")
    meta = {"route": "/v1/chat", "tokens": [1, 2], "nested": {"ok": True, "none": None}}
    h = await hold(any_api, 250, currency="EUR", expiresIn=3600, requestId="req-1", allowOverdraft=False, metadata=meta)
    assert set(h) == HOLD_KEYS | {"requestId", "metadata"}
    assert (h["currency"], h["amount"], h["requestId"], h["metadata"]) == ("eur", 250, "req-1", meta)
    assert to_us(h["expiresAt"]) - to_us(h["createdAt"]) == 3600 * SECOND_US  # expiresAt = createdAt + expiresIn exactly
    assert to_us(h["createdAt"]) == clock.now
    assert await get_hold(any_api, h["holdId"]) == h


@pytest.mark.parametrize("params, message, param", [
    ({"amount": 10}, "user is required", "user"),
    ({"user": "", "amount": 10}, "user is required", "user"),
    ({"user": ALICE}, "amount is required", "amount"),
    ({"user": ALICE, "amount": 0}, "amount must be positive", "amount"),
    ({"user": ALICE, "amount": -5}, "amount must be positive", "amount"),
    ({"user": ALICE, "amount": "5"}, "amount must be an integer", "amount"),
    ({"user": ALICE, "amount": 2**63}, "amount is out of range", "amount"),
    ({"user": ALICE, "amount": 5, "currency": "xyz"}, "unknown currency: xyz", "currency"),
    ({"user": ALICE, "amount": 5, "expiresIn": 0}, "expiresIn must be a positive number of seconds", "expiresIn"),
    ({"user": ALICE, "amount": 5, "expiresIn": -60}, "expiresIn must be a positive number of seconds", "expiresIn"),
    ({"user": ALICE, "amount": 5, "expiresIn": 604_801}, "expiresIn must be at most 604800 seconds (7 days)", "expiresIn"),
    ({"user": ALICE, "amount": 5, "allowOverdraft": "yes"}, "allowOverdraft must be a boolean", "allowOverdraft"),
    # validation runs in the contract's parameter order: user, currency, amount, expiresIn
    ({"amount": 0, "currency": "xyz"}, "user is required", "user"),
    ({"user": ALICE, "amount": 0, "currency": "xyz"}, "unknown currency: xyz", "currency"),
    ({"user": ALICE, "amount": 0, "expiresIn": 0}, "amount must be positive", "amount"),
])
async def test_create_hold_invalid_params(any_api, db_path, params, message, param):
    await deposit(any_api, 1000)
    r = await any_api.call("createHold", params)
    assert_error(any_api, r, "invalid_params", message, param)
    assert hold_rows(db_path) == []


async def test_create_hold_expires_in_bounds_are_accepted(any_api):
    await deposit(any_api, 1000)
    for seconds in (1, 604_800):
        h = await hold(any_api, 1, expiresIn=seconds)
        assert to_us(h["expiresAt"]) - to_us(h["createdAt"]) == seconds * SECOND_US


async def test_create_hold_beyond_available_is_insufficient_funds(any_api, db_path):
    await deposit(any_api, 100)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 101})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds", "amount")
    await hold(any_api, 60)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 41})  # 40 left
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    await hold(any_api, 40)  # exactly what is available
    r = await any_api.call("createHold", {"user": ALICE, "amount": 1})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    assert await account(any_api) == (100, 100, 0)
    assert len(hold_rows(db_path)) == 2  # a refused hold writes nothing


async def test_create_hold_for_an_unseen_user_is_insufficient_funds(any_api):
    r = await any_api.call("createHold", {"user": "nobody/ever", "amount": 1})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")


async def test_create_hold_is_checked_in_its_own_currency(any_api):
    await deposit(any_api, 1000, currency="eur")
    r = await any_api.call("createHold", {"user": ALICE, "amount": 10})  # usd: nothing there
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    await hold(any_api, 1000, currency="eur")


async def test_create_hold_against_a_negative_balance_is_refused(any_api):
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 300, "model": "m"})
    r = await any_api.call("createHold", {"user": ALICE, "amount": 1})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")


async def test_allow_overdraft_holds_beyond_available(any_api):
    await deposit(any_api, 100)
    h = await hold(any_api, 500, allowOverdraft=True)
    assert h["status"] == "pending"
    assert await account(any_api) == (100, 500, 0)
    # a user with nothing at all, in a currency of no ledger row: getBalanceAll lists it too
    await hold(any_api, 50, user=BOB, currency="eur", allowOverdraft=True)
    assert await account(any_api, BOB, "eur") == (0, 50, 0)
    assert (await ok(any_api, "getBalanceAll", {"user": BOB}))["balances"] == [
        {"currency": "eur", "balance": 0, "holds": 50, "available": 0}]


async def test_holds_beyond_the_int64_range_are_refused(any_api):
    await hold(any_api, INT64_MAX, allowOverdraft=True)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 1, "allowOverdraft": True})
    assert_error(any_api, r, "invalid_params", "signed 64-bit range", "amount")
    assert await account(any_api) == (0, INT64_MAX, 0)


async def test_create_hold_does_not_count_expired_credit(any_api, clock):
    await deposit(any_api, 500, expiresIn=1)
    await deposit(any_api, 100)
    clock.advance(days=2)  # the 500 expired; nothing has forfeited it yet
    assert await account(any_api) == (100, 0, 100)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 101})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    await hold(any_api, 100)
    assert await account(any_api) == (100, 100, 0)


async def test_create_hold_with_a_read_key_is_forbidden(any_api, make_key, db_path):
    await deposit(any_api, 100)
    reader = any_api.with_key(await make_key("acme", "live", "read"))
    r = await reader.call("createHold", {"user": ALICE, "amount": 10})
    assert_error(reader, r, "forbidden", "read-only")
    assert hold_rows(db_path) == []


# -- balances ---------------------------------------------------------------------------------

async def test_get_balance_and_get_balance_all_subtract_pending_holds(any_api):
    await deposit(any_api, 1000)
    await deposit(any_api, 500, currency="eur")
    await deposit(any_api, 70, user=BOB)
    await hold(any_api, 300)
    await hold(any_api, 200)
    await hold(any_api, 100, currency="eur")
    await hold(any_api, 70, user=BOB)
    r = await any_api.call("getBalance", {"user": ALICE})
    assert r.result == {"user": ALICE, "currency": "usd", "balance": 1000, "holds": 500, "available": 500}
    r = await any_api.call("getBalanceAll", {"user": ALICE})
    assert r.result == {"user": ALICE, "balances": [
        {"currency": "eur", "balance": 500, "holds": 100, "available": 400},
        {"currency": "usd", "balance": 1000, "holds": 500, "available": 500},
    ]}
    assert await account(any_api, BOB) == (70, 70, 0)


async def test_available_is_never_negative_with_holds(any_api):
    await deposit(any_api, 100)
    await hold(any_api, 80)
    await ok(any_api, "recordUsage", {"user": ALICE, "amount": 50, "model": "m"})  # usage is recorded whatever the holds
    assert await account(any_api) == (50, 80, 0)


# -- captureHold ------------------------------------------------------------------------------

async def test_capture_writes_one_withdraw_for_the_captured_amount(any_api, db_path, clock):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    clock.advance(seconds=30)
    r = await any_api.call("captureHold", {"id": h["holdId"], "amount": 250, "model": "gpt-x"})
    assert r.status == 200, (r.status, r.error)
    c = conforms("captureHold", r.result)
    assert set(c) == HOLD_KEYS | {"capturedAmount", "transactionId", "settledAt"}
    assert (c["holdId"], c["amount"], c["status"], c["capturedAmount"]) == (h["holdId"], 400, "captured", 250)
    assert (c["createdAt"], c["expiresAt"]) == (h["createdAt"], h["expiresAt"])
    assert to_us(c["settledAt"]) == clock.now
    (w,) = withdrawals(db_path)
    assert (w["id"], w["amount"], w["currency"], w["tags"]) == (c["transactionId"], 250, "usd", "api-usage")
    assert w["notes"] == f"API usage: gpt-x (hold {h['holdId']})"
    assert '"holdId"' in w["metadata"] and h["holdId"] in w["metadata"]
    # the rest (150) is released by the same change: balance down by 250, nothing held
    assert await account(any_api) == (750, 0, 750)
    assert await get_hold(any_api, h["holdId"]) == c
    usage = await ok(any_api, "getUsage", {"user": ALICE})
    assert [(u["transactionId"], u["amount"]) for u in usage["usage"]] == [(c["transactionId"], 250)]
    assert usage["usage"][0]["metadata"] == {"holdId": h["holdId"], "model": "gpt-x"}


async def test_capture_without_amount_takes_the_whole_hold(any_api, db_path):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    c = await ok(any_api, "captureHold", {"id": h["holdId"]})
    assert (c["status"], c["capturedAmount"]) == ("captured", 400)
    assert [w["amount"] for w in withdrawals(db_path)] == [400]
    assert (await ok(any_api, "getUsage", {"user": ALICE}))["usage"][0]["notes"] == f"API usage:  (hold {h['holdId']})"
    assert await account(any_api) == (600, 0, 600)


async def test_capture_of_the_whole_hold_exactly(any_api):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    c = await ok(any_api, "captureHold", {"id": h["holdId"], "amount": 400})
    assert c["capturedAmount"] == 400
    assert await account(any_api) == (600, 0, 600)


async def test_capture_keeps_notes_and_metadata(any_api):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400, requestId="req-7")
    await ok(any_api, "captureHold", {"id": h["holdId"], "amount": 10, "model": "m", "notes": "stream of 3 chunks",
                                      "metadata": {"chunks": 3, "holdId": "not mine"}})
    (row,) = (await ok(any_api, "getUsage", {"user": ALICE}))["usage"]
    assert row["notes"] == "stream of 3 chunks"
    # the caller's object, with the hold's identity on top
    assert row["metadata"] == {"chunks": 3, "holdId": h["holdId"], "model": "m", "requestId": "req-7"}


async def test_capture_has_no_balance_check(any_api):
    await deposit(any_api, 100)
    h = await hold(any_api, 500, allowOverdraft=True)
    await ok(any_api, "captureHold", {"id": h["holdId"]})
    assert await account(any_api) == (-400, 0, 0)


async def test_capture_leaves_other_holds_alone(any_api):
    await deposit(any_api, 1000)
    a = await hold(any_api, 300)
    await hold(any_api, 200)
    await ok(any_api, "captureHold", {"id": a["holdId"], "amount": 100})
    assert await account(any_api) == (900, 200, 700)


@pytest.mark.parametrize("extra, message", [
    ({"amount": 401}, "capture exceeds hold"),
    ({"amount": INT64_MAX}, "capture exceeds hold"),
])
async def test_capture_more_than_the_hold_is_refused(any_api, db_path, extra, message):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    r = await any_api.call("captureHold", {"id": h["holdId"], **extra})
    assert_error(any_api, r, "invalid_params", message, "amount")
    assert (await get_hold(any_api, h["holdId"]))["status"] == "pending"
    assert withdrawals(db_path) == []
    assert await account(any_api) == (1000, 400, 600)


@pytest.mark.parametrize("amount, message", [
    (0, "amount must be positive"), (-1, "amount must be positive"), ("10", "amount must be an integer"),
])
async def test_capture_amount_must_be_a_positive_integer(any_api, db_path, amount, message):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    r = await any_api.call("captureHold", {"id": h["holdId"], "amount": amount})
    assert_error(any_api, r, "invalid_params", message, "amount")
    assert (await get_hold(any_api, h["holdId"]))["status"] == "pending"
    assert withdrawals(db_path) == []


UNKNOWN_IDS = ["nope", "hold_000000000000000000000000", "tx_123", "x y/z?&", "'; DROP TABLE holds; --"]


@pytest.mark.parametrize("method", ["captureHold", "releaseHold", "getHold"])
async def test_unknown_hold_is_not_found(any_api, method):
    for hold_id in UNKNOWN_IDS:
        r = await any_api.call(method, {"id": hold_id})
        assert_error(any_api, r, "not_found", "hold not found", "id")


@pytest.mark.parametrize("method", ["captureHold", "releaseHold", "getHold"])
async def test_id_of_another_kind_of_entity_is_not_found(any_api, method):
    tx = (await deposit(any_api, 100))["transactionId"]
    r = await any_api.call(method, {"id": tx})
    assert_error(any_api, r, "not_found", "hold not found", "id")


@pytest.mark.parametrize("method", ["captureHold", "releaseHold", "getHold"])
async def test_hold_id_is_required(any_api, method):
    if any_api.transport == "rest":
        pytest.skip("over REST the id is part of the path")
    r = await any_api.call(method, {})
    assert_error(any_api, r, "invalid_params", "id is required", "id")


async def test_rest_a_body_id_beside_the_paths_is_refused(api):
    """The path's id used to win silently over the body's: now refused (strict input, as a path
    parameter in the query is; tests/test_strict_input.py), neither hold touched."""
    await deposit(api, 1000)
    a = await hold(api, 100)
    b = await hold(api, 200)
    status, body = await api.rest("POST", f"/api/v1/billing/holds/{a['holdId']}/capture", {"id": b["holdId"], "amount": 5})
    assert status == 400 and body["error"]["param"] == "id", body
    assert [(await get_hold(api, h["holdId"]))["status"] for h in (a, b)] == ["pending", "pending"]


# -- settle exactly once -------------------------------------------------------------------------

@pytest.mark.parametrize("first, second", [
    ("captureHold", "captureHold"), ("captureHold", "releaseHold"),
    ("releaseHold", "releaseHold"), ("releaseHold", "captureHold"),
])
async def test_a_hold_is_settled_once(any_api, db_path, first, second):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    settled = await ok(any_api, first, {"id": h["holdId"]})
    r = await any_api.call(second, {"id": h["holdId"]})
    assert_error(any_api, r, "conflict", "hold is not pending", "id")
    assert await get_hold(any_api, h["holdId"]) == settled
    assert len(withdrawals(db_path)) == (1 if first == "captureHold" else 0)


async def test_release_gives_the_hold_back(any_api, db_path, clock):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400, metadata={"k": 1})
    assert await account(any_api) == (1000, 400, 600)
    clock.advance(seconds=5)
    r = await any_api.call("releaseHold", {"id": h["holdId"]})
    assert r.status == 200, (r.status, r.error)
    rel = conforms("releaseHold", r.result)
    assert set(rel) == HOLD_KEYS | {"metadata", "settledAt"}  # no capturedAmount, no transactionId
    assert (rel["holdId"], rel["status"], rel["amount"], rel["metadata"]) == (h["holdId"], "released", 400, {"k": 1})
    assert to_us(rel["settledAt"]) == clock.now
    assert await account(any_api) == (1000, 0, 1000)
    assert ledger_rows(db_path, ALICE, type="withdraw") == []


async def test_a_second_settle_with_the_same_idempotency_key_replays_the_first(any_api, db_path):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    first = await any_api.call("captureHold", {"id": h["holdId"], "amount": 100}, idempotency_key="cap-1")
    assert first.ok, first.error
    again = await any_api.call("captureHold", {"id": h["holdId"], "amount": 100}, idempotency_key="cap-1")
    assert again.ok and again.result == first.result and again.status == first.status
    r = await any_api.call("captureHold", {"id": h["holdId"], "amount": 200}, idempotency_key="cap-1")
    assert_error(any_api, r, "conflict", "idempotency key was already used with different parameters")
    r = await any_api.call("captureHold", {"id": h["holdId"], "amount": 100})  # no key: always 409
    assert_error(any_api, r, "conflict", "hold is not pending")
    r = await any_api.call("captureHold", {"id": h["holdId"], "amount": 100}, idempotency_key="cap-2")
    assert_error(any_api, r, "conflict", "hold is not pending")
    assert [w["amount"] for w in withdrawals(db_path)] == [100]


async def test_a_replayed_release_with_its_idempotency_key(any_api):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    first = await ok(any_api, "releaseHold", {"id": h["holdId"]}, idempotency_key="rel-1")
    assert await ok(any_api, "releaseHold", {"id": h["holdId"]}, idempotency_key="rel-1") == first
    r = await any_api.call("releaseHold", {"id": h["holdId"]})
    assert_error(any_api, r, "conflict", "hold is not pending")


# -- expiry ---------------------------------------------------------------------------------

async def test_a_hold_expires_exactly_at_expires_at_without_a_sweep(any_api, clock, db_path):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400, expiresIn=60)
    expires_at = to_us(h["expiresAt"])
    clock.now = expires_at - 1
    assert (await get_hold(any_api, h["holdId"]))["status"] == "pending"
    assert await account(any_api) == (1000, 400, 600)
    assert [x["holdId"] for x in (await list_holds(any_api, status="pending"))["holds"]] == [h["holdId"]]
    clock.now = expires_at  # from this instant on it counts as released
    g = await get_hold(any_api, h["holdId"])
    assert (g["status"], g["settledAt"]) == ("expired", h["expiresAt"])
    assert await account(any_api) == (1000, 0, 1000)
    assert (await ok(any_api, "getBalanceAll", {"user": ALICE}))["balances"] == [
        {"currency": "usd", "balance": 1000, "holds": 0, "available": 1000}]
    for method in ("captureHold", "releaseHold"):
        r = await any_api.call(method, {"id": h["holdId"]})
        assert_error(any_api, r, "conflict", "hold is not pending", "id")
    assert (await list_holds(any_api, status="pending"))["holds"] == []
    assert [x["holdId"] for x in (await list_holds(any_api, status="expired"))["holds"]] == [h["holdId"]]
    assert withdrawals(db_path) == []
    assert [r["status"] for r in hold_rows(db_path)] == ["pending"]  # no sweep has run: reads computed it


async def test_the_money_of_an_expired_hold_can_be_held_again(any_api, clock):
    await deposit(any_api, 100)
    await hold(any_api, 100, expiresIn=10)
    r = await any_api.call("createHold", {"user": ALICE, "amount": 100})
    assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    clock.advance(seconds=10)
    await hold(any_api, 100)
    assert await account(any_api) == (100, 100, 0)


async def test_the_sweep_marks_lapsed_holds_expired(api, server, clock, db_path):
    await deposit(api, 1000)
    lapsing = await hold(api, 100, expiresIn=60)
    lasting = await hold(api, 200, expiresIn=3600)
    captured = await hold(api, 300, expiresIn=60)
    await ok(api, "captureHold", {"id": captured["holdId"], "amount": 50})
    clock.advance(seconds=61)
    before = {lapsing["holdId"]: await get_hold(api, lapsing["holdId"]), lasting["holdId"]: await get_hold(api, lasting["holdId"])}
    await sweep_once(server.app[STORE], clock())
    stored = {r["id"]: r for r in hold_rows(db_path)}
    assert stored[lapsing["holdId"]]["status"] == "expired"
    assert stored[lapsing["holdId"]]["settled_at"] == to_us(lapsing["expiresAt"])
    assert stored[lasting["holdId"]]["status"] == "pending"
    assert stored[captured["holdId"]]["status"] == "captured"
    # what callers see did not change: reads were already exact
    for hold_id, seen in before.items():
        assert await get_hold(api, hold_id) == seen
    assert await account(api) == (950, 200, 750)
    r = await api.call("releaseHold", {"id": lapsing["holdId"]})
    assert_error(api, r, "conflict", "hold is not pending")
    assert [x["holdId"] for x in (await list_holds(api, status="expired"))["holds"]] == [lapsing["holdId"]]
    await sweep_once(server.app[STORE], clock())  # nothing left to do
    assert [r["status"] for r in hold_rows(db_path)] == ["expired", "pending", "captured"]


async def test_the_store_sweep_expires_in_batches(api, server, clock):
    await deposit(api, 10_000)
    for _ in range(7):
        await hold(api, 10, expiresIn=1)
    clock.advance(seconds=1)
    store = server.app[STORE]
    assert await store.expire_holds(clock(), limit=5) == 5
    assert await store.expire_holds(clock(), limit=5) == 2
    assert await store.expire_holds(clock(), limit=5) == 0


# -- requestId --------------------------------------------------------------------------------

async def test_a_repeated_request_id_returns_the_original_hold(any_api, db_path):
    await deposit(any_api, 1000)
    first = await hold(any_api, 300, requestId="req-1")
    r = await any_api.call("createHold", {"user": ALICE, "amount": 500, "requestId": "req-1"})
    assert r.status == created_status(any_api) and r.result == first
    assert len(hold_rows(db_path)) == 1
    assert await account(any_api) == (1000, 300, 700)
    # even when the money would no longer cover it: a replay is not a new hold
    await hold(any_api, 700)
    assert await ok(any_api, "createHold", {"user": ALICE, "amount": 300, "requestId": "req-1"}) == first
    # the same requestId of another user is another hold
    await deposit(any_api, 300, user=BOB)
    other = await hold(any_api, 300, user=BOB, requestId="req-1")
    assert other["holdId"] != first["holdId"]
    assert len(hold_rows(db_path)) == 3


async def test_a_repeated_request_id_returns_the_hold_as_it_is_now(any_api, clock):
    await deposit(any_api, 1000)
    first = await hold(any_api, 300, requestId="req-1")
    captured = await ok(any_api, "captureHold", {"id": first["holdId"], "amount": 120})
    assert await ok(any_api, "createHold", {"user": ALICE, "amount": 300, "requestId": "req-1"}) == captured
    second = await hold(any_api, 100, requestId="req-2", expiresIn=5)
    clock.advance(seconds=5)
    again = await ok(any_api, "createHold", {"user": ALICE, "amount": 100, "requestId": "req-2"})
    assert again["holdId"] == second["holdId"] and again["status"] == "expired"


async def test_concurrent_holds_with_one_request_id_make_one_hold(api, db_path):
    await deposit(api, 1000)
    replies = await asyncio.gather(*(
        api.using(TRANSPORTS[i % 3]).call("createHold", {"user": ALICE, "amount": 100, "requestId": "same"}) for i in range(20)
    ))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert len({r.result["holdId"] for r in replies}) == 1
    assert len(hold_rows(db_path)) == 1
    assert await account(api) == (1000, 100, 900)


# -- isolation ------------------------------------------------------------------------------

@pytest.mark.parametrize("org, mode", [("globex", "live"), ("acme", "test")])
async def test_holds_are_invisible_and_untouchable_from_another_org_or_mode(any_api, make_key, db_path, org, mode):
    await deposit(any_api, 1000)
    h = await hold(any_api, 400, requestId="req-1")
    other = any_api.with_key(await make_key(org, mode, "admin"))
    for method in ("getHold", "captureHold", "releaseHold"):
        r = await other.call(method, {"id": h["holdId"]})
        assert_error(other, r, "not_found", "hold not found", "id")
    assert await list_holds(other) == {"holds": [], "count": 0, "hasMore": False}
    assert await list_holds(other, user=ALICE) == {"holds": [], "count": 0, "hasMore": False}
    r = await other.call("listHolds", {"startingAfter": h["holdId"]})
    assert_error(other, r, "not_found", "hold not found", "startingAfter")
    assert await account(other) == (0, 0, 0)
    # its own requestId space: the same requestId there is a new hold, refused for lack of funds
    r = await other.call("createHold", {"user": ALICE, "amount": 400, "requestId": "req-1"})
    assert_error(other, r, "insufficient_funds", "insufficient funds")
    assert await get_hold(any_api, h["holdId"]) == h
    assert await account(any_api) == (1000, 400, 600)
    assert withdrawals(db_path) == []


# -- listHolds ------------------------------------------------------------------------------

async def make_history(api, clock) -> dict[str, list[str]]:
    """Alice: five holds (one captured, one released, one expired, two pending); Bob: two."""
    await deposit(api, 10_000)
    await deposit(api, 10_000, user=BOB)
    ids: dict[str, list[str]] = {ALICE: [], BOB: []}
    for i, user in enumerate([ALICE, BOB, ALICE, ALICE, BOB, ALICE, ALICE]):
        ids[user].append((await hold(api, 10 + i, user=user, expiresIn=5 if i == 0 else 900))["holdId"])
        clock.advance(seconds=1)  # the first expires at t+5, while the others stay pending
    await ok(api, "captureHold", {"id": ids[ALICE][1], "amount": 3})
    await ok(api, "releaseHold", {"id": ids[ALICE][2]})
    return ids


async def test_list_holds_of_one_user_newest_first_with_every_status(any_api, clock):
    ids = await make_history(any_api, clock)
    page = await list_holds(any_api, user=ALICE)
    assert page["count"] == 5 and page["hasMore"] is False
    assert [h["holdId"] for h in page["holds"]] == ids[ALICE][::-1]
    assert [h["status"] for h in page["holds"]] == ["pending", "pending", "released", "captured", "expired"]
    assert all(h["user"] == ALICE for h in page["holds"])
    assert page["holds"][0] == await get_hold(any_api, ids[ALICE][-1])


async def test_list_holds_without_user_lists_every_user_of_the_org_and_mode(any_api, clock):
    ids = await make_history(any_api, clock)
    page = await list_holds(any_api)
    assert page["count"] == 7
    order = [ids[u][k] for u, k in [(ALICE, 4), (ALICE, 3), (BOB, 1), (ALICE, 2), (ALICE, 1), (BOB, 0), (ALICE, 0)]]
    assert [h["holdId"] for h in page["holds"]] == order


@pytest.mark.parametrize("status, expected", [
    ("pending", [4, 3]), ("captured", [1]), ("released", [2]), ("expired", [0]),
])
async def test_list_holds_filters_on_the_status_as_of_now(any_api, clock, status, expected):
    ids = await make_history(any_api, clock)
    page = await list_holds(any_api, user=ALICE, status=status)
    assert [h["holdId"] for h in page["holds"]] == [ids[ALICE][k] for k in expected]
    assert {h["status"] for h in page["holds"]} <= {status}
    assert page["count"] == len(expected) and page["hasMore"] is False


async def test_list_holds_pages_with_starting_after(any_api, clock):
    ids = await make_history(any_api, clock)
    newest_first = ids[ALICE][::-1]
    seen, after = [], None
    while True:
        page = await list_holds(any_api, user=ALICE, limit=2, **({"startingAfter": after} if after else {}))
        assert page["count"] == len(page["holds"]) <= 2
        seen += [h["holdId"] for h in page["holds"]]
        if not page["hasMore"]:
            break
        after = page["holds"][-1]["holdId"]
    assert seen == newest_first
    # a page boundary that no longer matches the filter still works: paging is by position
    page = await list_holds(any_api, user=ALICE, status="pending", startingAfter=ids[ALICE][2])
    assert page["holds"] == []
    page = await list_holds(any_api, status="pending", limit=1)
    assert (page["count"], page["hasMore"]) == (1, True)
    page = await list_holds(any_api, status="pending", limit=1000, startingAfter=page["holds"][0]["holdId"])
    assert page["count"] == 3 and page["hasMore"] is False


async def test_list_holds_starting_after_must_be_a_hold_of_the_listing(any_api, clock):
    ids = await make_history(any_api, clock)
    for params in ({"startingAfter": "nope"}, {"user": ALICE, "startingAfter": ids[BOB][0]}):
        r = await any_api.call("listHolds", params)
        assert_error(any_api, r, "not_found", "hold not found", "startingAfter")


async def test_list_holds_of_an_unseen_user_is_empty(any_api):
    assert await list_holds(any_api, user="nobody/ever") == {"holds": [], "count": 0, "hasMore": False}


@pytest.mark.parametrize("params, message, param", [
    ({"limit": 0}, "limit must be between 1 and 1000", "limit"),
    ({"limit": 1001}, "limit must be between 1 and 1000", "limit"),
    ({"status": "open"}, "status must be one of", "status"),
])
async def test_list_holds_invalid_params(any_api, params, message, param):
    r = await any_api.call("listHolds", params)
    assert_error(any_api, r, "invalid_params", message, param)


# -- the ledger behind a capture ---------------------------------------------------------------------

async def test_capture_spends_expiring_deposits_first(api, clock, db_path):
    await deposit(api, 1000)
    promo = await deposit(api, 300, expiresIn=1)
    h = await hold(api, 500)
    await ok(api, "captureHold", {"id": h["holdId"], "amount": 400})
    (lot,) = [r for r in ledger_rows(db_path, ALICE) if r["id"] == promo["transactionId"]]
    assert lot["remaining"] == 0  # the expiring 300 paid first, 100 came from money that never expires
    clock.advance(days=2)
    assert await account(api) == (900, 0, 900)  # nothing left to forfeit
    await deposit(api, 1)  # a write that would forfeit what was left
    assert [r for r in ledger_rows(db_path, ALICE) if r["tags"] == "credit-expired"] == []
    assert await account(api) == (901, 0, 901)


async def test_capture_records_a_usage_meter_event(any_api):
    meter = await ok(any_api, "createMeter", {"name": "API usage", "eventName": "api-usage"})
    await deposit(any_api, 1000)
    h = await hold(any_api, 400)
    await ok(any_api, "captureHold", {"id": h["holdId"], "amount": 250, "model": "m"})
    summary = await ok(any_api, "getMeterEventsSummary", {"meterId": meter["id"], "userId": ALICE})
    assert (summary["value"], summary["eventCount"]) == (250, 1)
    await ok(any_api, "releaseHold", {"id": (await hold(any_api, 100))["holdId"]})  # a release records nothing
    summary = await ok(any_api, "getMeterEventsSummary", {"meterId": meter["id"], "userId": ALICE})
    assert (summary["value"], summary["eventCount"]) == (250, 1)


# -- concurrency: real concurrent HTTP calls against the real server ---------------------------------

async def test_concurrent_holds_never_together_exceed_available(any_api, db_path):
    await deposit(any_api, 1000)
    before = (await account(any_api))[2]
    replies = await asyncio.gather(*(any_api.call("createHold", {"user": ALICE, "amount": 70}) for _ in range(50)))
    accepted = [r for r in replies if r.ok]
    refused = [r for r in replies if not r.ok]
    assert len(accepted) == 14 and len(refused) == 36  # 14 * 70 = 980 <= 1000 < 15 * 70
    for r in refused:
        assert_error(any_api, r, "insufficient_funds", "insufficient funds")
    assert sum(r.result["amount"] for r in accepted) <= before
    assert len({r.result["holdId"] for r in accepted}) == 14
    assert await account(any_api) == (1000, 980, 20)
    assert len(hold_rows(db_path)) == 14


async def test_concurrent_holds_over_mixed_transports_and_amounts(api):
    await deposit(api, 1000)
    amounts = [30 + (i * 37) % 90 for i in range(60)]
    replies = await asyncio.gather(*(
        api.using(TRANSPORTS[i % 3]).call("createHold", {"user": ALICE, "amount": a}) for i, a in enumerate(amounts)
    ))
    held = sum(r.result["amount"] for r in replies if r.ok)
    assert held <= 1000
    assert all(r.ok or r.error["kind"] == "insufficient_funds" for r in replies)
    assert await account(api) == (1000, held, 1000 - held)


@pytest.mark.parametrize("first", ["captureHold", "releaseHold"])
async def test_concurrent_settlements_of_one_hold_settle_it_once(api, db_path, first):
    await deposit(api, 1000)
    h = await hold(api, 400)
    other = "releaseHold" if first == "captureHold" else "captureHold"
    methods = [first if i % 2 == 0 else other for i in range(20)]
    replies = await asyncio.gather(*(
        api.using(TRANSPORTS[i % 3]).call(m, {"id": h["holdId"], **({"amount": 150} if m == "captureHold" else {})})
        for i, m in enumerate(methods)
    ))
    won = [(m, r) for m, r in zip(methods, replies) if r.ok]
    assert len(won) == 1, [r.error for r in replies]
    for i, r in enumerate(replies):
        if not r.ok:
            assert_error(api.using(TRANSPORTS[i % 3]), r, "conflict", "hold is not pending", "id")
    winner, result = won[0]
    assert (await get_hold(api, h["holdId"])) == result.result
    if winner == "captureHold":
        (w,) = withdrawals(db_path)
        assert (w["amount"], w["id"]) == (150, result.result["transactionId"])
        assert await account(api) == (850, 0, 850)
    else:
        assert withdrawals(db_path) == []
        assert await account(api) == (1000, 0, 1000)


async def test_concurrent_captures_of_one_hold_write_exactly_one_withdraw(api, db_path):
    await deposit(api, 1000)
    h = await hold(api, 400)
    replies = await asyncio.gather(*(
        api.using(TRANSPORTS[i % 3]).call("captureHold", {"id": h["holdId"], "amount": 100 + i}) for i in range(20)
    ))
    won = [r for r in replies if r.ok]
    assert len(won) == 1 and sum(1 for r in replies if r.error and r.error["kind"] == "conflict") == 19
    (w,) = withdrawals(db_path)
    assert w["amount"] == won[0].result["capturedAmount"] and w["id"] == won[0].result["transactionId"]
    assert await account(api) == (1000 - w["amount"], 0, 1000 - w["amount"])


async def test_concurrent_sweep_and_settlements_agree(api, server, clock, db_path):
    """The sweep and settlements go through the same writer: a hold lapsing while both run is
    marked expired, never captured after its time."""
    await deposit(api, 1000)
    holds = [await hold(api, 50, expiresIn=10) for _ in range(10)]
    clock.advance(seconds=10)
    replies = await asyncio.gather(
        sweep_once(server.app[STORE], clock()),
        *(api.call("captureHold", {"id": h["holdId"]}) for h in holds),
    )
    for r in replies[1:]:
        assert_error(api, r, "conflict", "hold is not pending")
    assert {r["status"] for r in hold_rows(db_path)} == {"expired"}
    assert withdrawals(db_path) == []
