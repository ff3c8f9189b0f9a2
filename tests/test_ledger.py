"""The balance ledger end to end: every operation of the contract's "Balance and ledger" section
over REST, ZAP/JSON and ZAP/msgpack (`any_api`), with the exact result shapes and every error the
contract lists for these operations."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import assert_error, balance, created_status, ledger_rows

INT64_MAX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


ALICE = "hanzo/alice"


# -- helpers --------------------------------------------------------------------------------

def missing_user_message(api, method: str) -> str:
    """`user query parameter is required` on REST GET routes, `user is required` elsewhere."""
    get_routes = {"getBalance", "getBalanceAll", "getUsage"}
    return "user query parameter is required" if api.transport == "rest" and method in get_routes else "user is required"


def at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def parse_ts(text: str) -> datetime:
    assert text.endswith("Z"), f"timestamps are UTC: {text}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- getBalance / getBalanceAll ---------------------------------------------------------------

async def test_get_balance_of_unseen_user_is_zero(any_api):
    r = await any_api.call("getBalance", {"user": "nobody/ever"})
    assert r.status == 200
    assert r.result == {"user": "nobody/ever", "currency": "usd", "balance": 0, "holds": 0, "available": 0}


async def test_get_balance_shape_after_deposit(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 1234, "currency": "eur"})
    r = await any_api.call("getBalance", {"user": ALICE, "currency": "eur"})
    assert r.status == 200
    assert r.result == {"user": ALICE, "currency": "eur", "balance": 1234, "holds": 0, "available": 1234}


async def test_get_balance_defaults_to_usd(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 10, "currency": "eur"})
    await any_api.call("deposit", {"user": ALICE, "amount": 20})
    r = await any_api.call("getBalance", {"user": ALICE})
    assert r.result == {"user": ALICE, "currency": "usd", "balance": 20, "holds": 0, "available": 20}


async def test_get_balance_currency_input_is_lower_cased(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 70, "currency": "eur"})
    r = await any_api.call("getBalance", {"user": ALICE, "currency": "EUR"})
    assert r.status == 200
    assert r.result == {"user": ALICE, "currency": "eur", "balance": 70, "holds": 0, "available": 70}


async def test_get_balance_negative_balance_has_zero_available(any_api):
    await any_api.call("recordUsage", {"user": ALICE, "amount": 300, "model": "m"})
    r = await any_api.call("getBalance", {"user": ALICE})
    assert r.result == {"user": ALICE, "currency": "usd", "balance": -300, "holds": 0, "available": 0}


async def test_get_balance_all_of_unseen_user_is_empty(any_api):
    r = await any_api.call("getBalanceAll", {"user": "nobody/ever"})
    assert r.status == 200
    assert r.result == {"user": "nobody/ever", "balances": []}


async def test_get_balance_all_is_sorted_by_currency(any_api):
    for currency, amount in (("usd", 100), ("eur", 200), ("jpy", 300), ("chf", 400)):
        r = await any_api.call("deposit", {"user": ALICE, "amount": amount, "currency": currency})
        assert r.ok, r.error
    r = await any_api.call("getBalanceAll", {"user": ALICE})
    assert r.status == 200
    assert r.result == {"user": ALICE, "balances": [
        {"currency": "chf", "balance": 400, "holds": 0, "available": 400},
        {"currency": "eur", "balance": 200, "holds": 0, "available": 200},
        {"currency": "jpy", "balance": 300, "holds": 0, "available": 300},
        {"currency": "usd", "balance": 100, "holds": 0, "available": 100},
    ]}


async def test_get_balance_all_is_per_user(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 100})
    await any_api.call("deposit", {"user": "hanzo/bob", "amount": 5, "currency": "eur"})
    r = await any_api.call("getBalanceAll", {"user": "hanzo/bob"})
    assert r.result == {"user": "hanzo/bob", "balances": [{"currency": "eur", "balance": 5, "holds": 0, "available": 5}]}


# -- getUsage -------------------------------------------------------------------------------

async def test_get_usage_of_unseen_user_is_empty(any_api):
    r = await any_api.call("getUsage", {"user": "nobody/ever"})
    assert r.status == 200
    assert r.result == {"user": "nobody/ever", "count": 0, "hasMore": False, "usage": []}


async def test_get_usage_record_shape(any_api, clock):
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 42, "model": "gpt-x", "totalTokens": 1500,
                                           "provider": "openai", "requestId": "req-1"})
    tx = r.result["transactionId"]
    r = await any_api.call("getUsage", {"user": ALICE})
    assert r.status == 200
    assert set(r.result) == {"user", "count", "hasMore", "usage"}
    assert r.result["user"] == ALICE and r.result["count"] == 1 and r.result["hasMore"] is False
    (row,) = r.result["usage"]
    assert set(row) == {"transactionId", "amount", "currency", "notes", "metadata", "createdAt"}
    assert row["transactionId"] == tx
    assert row["amount"] == 42 and row["currency"] == "usd"
    assert row["notes"] == "API usage: gpt-x (1500 tokens)"
    assert isinstance(row["metadata"], dict)
    assert parse_ts(row["createdAt"]) == at(clock.now)


async def test_get_usage_lists_only_usage_withdrawals(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 1000})
    await any_api.call("grantStarterCredit", {"user": ALICE})
    u = await any_api.call("recordUsage", {"user": ALICE, "amount": 10, "model": "m"})
    r = await any_api.call("getUsage", {"user": ALICE})
    assert [x["transactionId"] for x in r.result["usage"]] == [u.result["transactionId"]]
    assert r.result["count"] == 1


async def test_get_usage_is_newest_first(any_api, clock):
    ids = []
    for i in range(4):
        r = await any_api.call("recordUsage", {"user": ALICE, "amount": 10 + i, "model": "m"})
        ids.append(r.result["transactionId"])
        if i % 2:
            clock.advance(seconds=1)  # some rows share a timestamp: ties break by insertion order
    r = await any_api.call("getUsage", {"user": ALICE})
    assert [x["transactionId"] for x in r.result["usage"]] == ids[::-1]
    assert [x["amount"] for x in r.result["usage"]] == [13, 12, 11, 10]


async def test_get_usage_pages_with_limit_and_starting_after(any_api):
    ids = []
    for i in range(5):
        r = await any_api.call("recordUsage", {"user": ALICE, "amount": 1 + i, "model": "m"})
        ids.append(r.result["transactionId"])
    newest_first = ids[::-1]
    page = await any_api.call("getUsage", {"user": ALICE, "limit": 2})
    assert page.status == 200
    assert [x["transactionId"] for x in page.result["usage"]] == newest_first[0:2]
    assert page.result["count"] == 2 and page.result["hasMore"] is True
    page = await any_api.call("getUsage", {"user": ALICE, "limit": 2, "startingAfter": newest_first[1]})
    assert [x["transactionId"] for x in page.result["usage"]] == newest_first[2:4]
    assert page.result["count"] == 2 and page.result["hasMore"] is True
    page = await any_api.call("getUsage", {"user": ALICE, "limit": 2, "startingAfter": newest_first[3]})
    assert [x["transactionId"] for x in page.result["usage"]] == newest_first[4:]
    assert page.result["count"] == 1 and page.result["hasMore"] is False


async def test_get_usage_exact_page_has_no_more(any_api):
    for i in range(3):
        await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    page = await any_api.call("getUsage", {"user": ALICE, "limit": 3})
    assert page.result["count"] == 3 and page.result["hasMore"] is False


async def test_get_usage_default_limit_is_100(any_api):
    for i in range(101):
        r = await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
        assert r.ok, r.error
    page = await any_api.call("getUsage", {"user": ALICE})
    assert page.result["count"] == 100 and page.result["hasMore"] is True
    assert len(page.result["usage"]) == 100


async def test_get_usage_limit_bounds(any_api):
    await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    for ok_limit in (1, 1000):
        r = await any_api.call("getUsage", {"user": ALICE, "limit": ok_limit})
        assert r.status == 200 and r.result["count"] == 1, (ok_limit, r.error)
    for bad_limit in (0, 1001, -1):
        r = await any_api.call("getUsage", {"user": ALICE, "limit": bad_limit})
        assert_error(any_api, r, "invalid_params", "limit", "limit")


async def test_get_usage_unknown_starting_after_is_not_found(any_api):
    await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    for cursor in ("tx_doesnotexist", "nonsense", "0"):
        r = await any_api.call("getUsage", {"user": ALICE, "startingAfter": cursor})
        assert_error(any_api, r, "not_found", "not found")


async def test_get_usage_starting_after_of_another_user_is_not_found(any_api):
    r = await any_api.call("recordUsage", {"user": "hanzo/bob", "amount": 1, "model": "m"})
    await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    r = await any_api.call("getUsage", {"user": ALICE, "startingAfter": r.result["transactionId"]})
    assert_error(any_api, r, "not_found", "not found")


async def test_get_usage_filters_by_currency(any_api):
    usd = await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    eur = await any_api.call("recordUsage", {"user": ALICE, "amount": 2, "model": "m", "currency": "eur"})
    r = await any_api.call("getUsage", {"user": ALICE, "currency": "EUR"})
    assert [x["transactionId"] for x in r.result["usage"]] == [eur.result["transactionId"]]
    assert r.result["usage"][0]["currency"] == "eur"
    r = await any_api.call("getUsage", {"user": ALICE})
    assert [x["transactionId"] for x in r.result["usage"]] == [eur.result["transactionId"], usd.result["transactionId"]]


async def test_get_usage_limit_text_is_parsed_on_rest_query_but_rejected_in_zap_params(any_api):
    await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    r = await any_api.call("getUsage", {"user": ALICE, "limit": "1"})
    if any_api.transport == "rest":
        assert r.status == 200 and r.result["count"] == 1
    else:
        assert_error(any_api, r, "invalid_params", "limit", "limit")
    r = await any_api.call("getUsage", {"user": ALICE, "limit": "abc"})
    assert_error(any_api, r, "invalid_params", "limit", "limit")


# -- recordUsage ----------------------------------------------------------------------------

async def test_record_usage_result_shape_and_status(any_api):
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 250, "model": "gpt-x", "totalTokens": 10})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"transactionId", "user", "amount", "currency", "type"}
    assert isinstance(r.result["transactionId"], str) and r.result["transactionId"]
    assert r.result["user"] == ALICE and r.result["amount"] == 250
    assert r.result["currency"] == "usd" and r.result["type"] == "withdraw"


async def test_record_usage_withdraws_without_balance_check(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 100})
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 250, "model": "m"})
    assert r.ok, r.error
    assert await balance(any_api) == -150


async def test_record_usage_currency_is_lower_cased(any_api):
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 5, "currency": "EUR", "model": "m"})
    assert r.result["currency"] == "eur"
    assert await balance(any_api, currency="eur") == -5


async def test_record_usage_notes_and_metadata(any_api):
    request = {"user": ALICE, "amount": 77, "model": "claude-x", "provider": "anthropic", "promptTokens": 100,
               "completionTokens": 23, "totalTokens": 123, "requestId": "req-meta", "premium": True,
               "stream": True, "status": "success", "clientIp": "10.0.0.1"}
    await any_api.call("recordUsage", request)
    r = await any_api.call("getUsage", {"user": ALICE})
    (row,) = r.result["usage"]
    assert row["notes"] == "API usage: claude-x (123 tokens)"
    for field in ("model", "provider", "promptTokens", "completionTokens", "totalTokens", "requestId",
                  "premium", "stream", "status", "clientIp"):
        assert row["metadata"].get(field) == request[field], (field, row["metadata"])


@pytest.mark.parametrize("amount", [0, -1, -500])
async def test_record_usage_non_positive_amount_is_skipped(any_api, amount):
    params = {"user": ALICE, "model": "m", "totalTokens": 10, "requestId": "req-skip", "amount": amount}
    r = await any_api.call("recordUsage", params)
    assert r.status == 200  # not 201: nothing was created
    assert r.result == {"user": ALICE, "amount": 0, "status": "skipped"}
    assert await balance(any_api) == 0
    assert (await any_api.call("getUsage", {"user": ALICE})).result["usage"] == []


@pytest.mark.parametrize("amount", [None, "absent"])
async def test_record_usage_without_amount_is_refused_and_charges_nothing(any_api, amount):
    """A missing amount used to default to 0 and answer `skipped`: lost revenue with a success
    answer. It is now `amount is required`, and nothing is written."""
    params = {"user": ALICE, "model": "m", "requestId": "req-no-amount"}
    if amount is None:
        params["amount"] = None
    r = await any_api.call("recordUsage", params)
    assert_error(any_api, r, "invalid_params", "amount is required", "amount")
    assert await balance(any_api) == 0
    assert (await any_api.call("getUsage", {"user": ALICE})).result["usage"] == []
    assert (await any_api.call("getBalanceAll", {"user": ALICE})).result["balances"] == []


async def test_record_usage_skipped_writes_no_ledger_row(any_api, db_path):
    await any_api.call("recordUsage", {"user": ALICE, "amount": 0, "model": "m"})
    await any_api.call("recordUsage", {"user": ALICE, "amount": -3, "model": "m"})
    assert ledger_rows(db_path, ALICE) == []


# -- deposit --------------------------------------------------------------------------------

async def test_deposit_result_shape_without_expiry(any_api):
    r = await any_api.call("deposit", {"user": ALICE, "amount": 1000})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"transactionId", "user", "amount", "currency", "type", "tags", "metadata"}
    assert isinstance(r.result["transactionId"], str) and r.result["transactionId"]
    assert {k: v for k, v in r.result.items() if k != "transactionId"} == {
        "user": ALICE, "amount": 1000, "currency": "usd", "type": "deposit", "tags": "", "metadata": {}}
    assert await balance(any_api) == 1000


@pytest.mark.parametrize("expires_in", [0, -1, -30])
async def test_deposit_non_positive_expires_in_never_expires(any_api, clock, expires_in):
    r = await any_api.call("deposit", {"user": ALICE, "amount": 1000, "expiresIn": expires_in})
    assert r.ok, r.error
    assert "expiresAt" not in r.result
    clock.advance(days=365 * 50)
    assert await balance(any_api) == 1000


async def test_deposit_with_expiry_has_exact_expires_at(any_api, clock):
    created = clock.now
    r = await any_api.call("deposit", {"user": ALICE, "amount": 1000, "expiresIn": 7})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"transactionId", "user", "amount", "currency", "type", "tags", "metadata", "expiresAt"}
    assert parse_ts(r.result["expiresAt"]) == at(created) + timedelta(days=7)


async def test_deposit_tags_metadata_and_currency(any_api):
    metadata = {"invoice": "inv_1", "nested": {"list": [1, "two", True, None], "n": 3}}
    r = await any_api.call("deposit", {"user": ALICE, "amount": 5, "currency": "JPY", "tags": "promo,manual",
                                       "metadata": metadata})
    assert r.result["currency"] == "jpy"
    assert r.result["tags"] == "promo,manual"
    assert r.result["metadata"] == metadata
    assert await balance(any_api, currency="jpy") == 5


async def test_metadata_orjson_refuses_round_trips(api):
    """A row's metadata is written by orjson, and what orjson refuses (an integer past 64 bits)
    by the json module (store/rows.py json_text): both read back as given, text outside ASCII too."""
    metadata = {"big": 10**20, "negative": -(2**64), "text": "café ✓ 日本", "nested": {"f": 1.5, "e": 1e300}}
    dep = await api.call("deposit", {"user": ALICE, "amount": 5, "metadata": metadata})
    assert dep.status == created_status(api), dep.result
    plain = await api.call("deposit", {"user": ALICE, "amount": 6, "metadata": {"text": "café ✓"}})
    listed = await api.call("listTransactions", {"user": ALICE})
    by_id = {t["transactionId"]: t["metadata"] for t in listed.result["transactions"]}
    assert by_id[dep.result["transactionId"]] == metadata
    assert by_id[plain.result["transactionId"]] == {"text": "café ✓"}


async def test_deposit_default_notes(any_api, db_path):
    await any_api.call("deposit", {"user": ALICE, "amount": 1000, "currency": "eur"})
    await any_api.call("deposit", {"user": ALICE, "amount": 7, "notes": "manual top-up"})
    rows = ledger_rows(db_path, ALICE)
    assert [r["notes"] for r in rows] == ["Deposit: 1000 cents eur", "manual top-up"]


# -- grantStarterCredit ---------------------------------------------------------------------

async def test_grant_starter_credit_result_shape(any_api, clock):
    created = clock.now
    r = await any_api.call("grantStarterCredit", {"user": ALICE})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"transactionId", "user", "amount", "currency", "type", "tags", "expiresAt"}
    assert isinstance(r.result["transactionId"], str) and r.result["transactionId"]
    assert {k: v for k, v in r.result.items() if k not in ("transactionId", "expiresAt")} == {
        "user": ALICE, "amount": 500, "currency": "usd", "type": "deposit", "tags": "starter-credit"}
    assert parse_ts(r.result["expiresAt"]) == at(created) + timedelta(days=30)
    assert await balance(any_api) == 500


async def test_grant_starter_credit_notes_and_metadata(any_api, db_path):
    await any_api.call("grantStarterCredit", {"user": ALICE})
    (row,) = ledger_rows(db_path, ALICE)
    assert row["notes"] == "Welcome credit: $5.00 USD (expires in 30 days)"
    assert json.loads(row["metadata"]) == {"creditType": "starter", "expiryDays": 30}


async def test_grant_starter_credit_expires_after_30_days(any_api, clock):
    await any_api.call("grantStarterCredit", {"user": ALICE})
    clock.advance(days=30, seconds=-1)
    assert await balance(any_api) == 500
    clock.advance(seconds=1)
    assert await balance(any_api) == 0


# -- refund ---------------------------------------------------------------------------------

async def charge(api, amount: int, **params: Any) -> str:
    """A usage withdrawal (a charge: what a refund may name); its transaction id."""
    r = await api.call("recordUsage", {"user": ALICE, "amount": amount, "model": "m", **params})
    assert r.ok, r.error
    return r.result["transactionId"]


async def test_refund_result_shape(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 1000})
    original = await charge(any_api, 400)
    r = await any_api.call("refund", {"user": ALICE, "amount": 300, "originalTransactionId": original})
    assert r.status == created_status(any_api)
    assert set(r.result) == {"transactionId", "user", "amount", "currency", "type", "tags", "originalTransactionId"}
    assert r.result["transactionId"] and r.result["transactionId"] != original
    assert {k: v for k, v in r.result.items() if k != "transactionId"} == {
        "user": ALICE, "amount": 300, "currency": "usd", "type": "deposit", "tags": "refund",
        "originalTransactionId": original}
    assert await balance(any_api) == 1000 - 400 + 300


async def test_refund_of_usage_withdrawal(any_api):
    u = await any_api.call("recordUsage", {"user": ALICE, "amount": 400, "model": "m", "currency": "eur"})
    r = await any_api.call("refund", {"user": ALICE, "amount": 400, "currency": "EUR",
                                      "originalTransactionId": u.result["transactionId"]})
    assert r.ok, r.error
    assert r.result["currency"] == "eur"
    assert await balance(any_api, currency="eur") == 0


async def test_refund_default_notes_and_metadata(any_api, db_path):
    original = await charge(any_api, 1000)
    await any_api.call("refund", {"user": ALICE, "amount": 300, "originalTransactionId": original})
    await any_api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": original, "notes": "goodwill"})
    rows = [r for r in ledger_rows(db_path, ALICE) if r["tags"] == "refund"]
    assert [r["notes"] for r in rows] == [f"Refund: 300 cents usd (original tx: {original})", "goodwill"]
    assert [json.loads(r["metadata"]) for r in rows] == [
        {"refundType": "billing-correction", "originalTransactionId": original}] * 2


# -- errors ---------------------------------------------------------------------------------

ALL_METHODS = ["getBalance", "getBalanceAll", "getUsage", "recordUsage", "deposit", "grantStarterCredit", "refund"]
OTHER_PARAMS = {
    "getBalance": {}, "getBalanceAll": {}, "getUsage": {},
    "recordUsage": {"amount": 5}, "deposit": {"amount": 5}, "grantStarterCredit": {},
    "refund": {"amount": 5, "originalTransactionId": "tx_x"},
}


def amount_params(method: str, amount: Any, original: str) -> dict[str, Any]:
    """Otherwise valid params of a method that takes an amount."""
    extra = {"recordUsage": {"model": "m"}, "deposit": {}, "refund": {"originalTransactionId": original}}[method]
    return {"user": ALICE, "amount": amount, **extra}


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("user", ["absent", "", None])
async def test_user_is_required(any_api, method, user):
    params = dict(OTHER_PARAMS[method])
    if user != "absent":
        if user is None and any_api.transport == "rest" and method.startswith("get"):
            pytest.skip("a query string has no null")
        params["user"] = user
    r = await any_api.call(method, params)
    assert_error(any_api, r, "invalid_params", missing_user_message(any_api, method), "user")


@pytest.mark.parametrize("method,params", [
    ("getBalance", {}),
    ("getUsage", {}),
    ("recordUsage", {"amount": 5}),
    ("deposit", {"amount": 5}),
    ("refund", {"amount": 5, "originalTransactionId": "tx_x"}),
])
async def test_unknown_currency_is_invalid(any_api, method, params):
    r = await any_api.call(method, {"user": ALICE, "currency": "xyz", **params})
    assert_error(any_api, r, "invalid_params", "unknown currency: xyz", "currency")


@pytest.mark.parametrize("method", ["deposit", "refund"])
@pytest.mark.parametrize("amount", [0, -1, -(2**63)])
async def test_amount_must_be_positive(any_api, method, amount):
    r = await any_api.call(method, amount_params(method, amount, "tx_x"))
    assert_error(any_api, r, "invalid_params", "amount must be positive", "amount")


@pytest.mark.parametrize("method", ["deposit", "refund"])
async def test_amount_is_required(any_api, method):
    params = amount_params(method, 0, "tx_x")
    del params["amount"]
    r = await any_api.call(method, params)
    assert_error(any_api, r, "invalid_params", "amount is required", "amount")


@pytest.mark.parametrize("original", ["absent", "", None])
async def test_refund_original_transaction_id_is_required(any_api, original):
    params: dict[str, Any] = {"user": ALICE, "amount": 5}
    if original != "absent":
        params["originalTransactionId"] = original
    r = await any_api.call("refund", params)
    assert_error(any_api, r, "invalid_params", "originalTransactionId is required", "originalTransactionId")


async def test_refund_unknown_original_is_not_found(any_api):
    for original in ("tx_0123456789abcdef01234567", "nope", "1"):
        r = await any_api.call("refund", {"user": ALICE, "amount": 5, "originalTransactionId": original})
        assert_error(any_api, r, "not_found", "original transaction not found", "originalTransactionId")
    assert await balance(any_api) == 0


async def test_refund_exceeding_original_is_invalid(any_api):
    await any_api.call("deposit", {"user": ALICE, "amount": 1000})
    original = await charge(any_api, 100)
    r = await any_api.call("refund", {"user": ALICE, "amount": 101, "originalTransactionId": original})
    assert_error(any_api, r, "invalid_params", "refund exceeds original: 100 of 100 cents left to refund", "amount")
    assert await balance(any_api) == 900


@pytest.mark.parametrize("kind", ["deposit", "starter credit", "refund"])
async def test_refund_of_anything_but_a_charge_is_invalid(any_api, db_path, kind):
    """Only a charge (a withdraw) can be refunded; the refusal names the original's type."""
    await any_api.call("deposit", {"user": ALICE, "amount": 1000})
    if kind == "deposit":
        original = (await any_api.call("deposit", {"user": ALICE, "amount": 100})).result["transactionId"]
    elif kind == "starter credit":
        original = (await any_api.call("grantStarterCredit", {"user": ALICE})).result["transactionId"]
    else:
        r = await any_api.call("refund", {"user": ALICE, "amount": 100, "originalTransactionId": await charge(any_api, 100)})
        original = r.result["transactionId"]
    before, rows = await balance(any_api), ledger_rows(db_path, ALICE)
    r = await any_api.call("refund", {"user": ALICE, "amount": 1, "originalTransactionId": original})
    assert_error(any_api, r, "invalid_params", f"only a charge can be refunded: {original} is a deposit",
                 "originalTransactionId")
    assert await balance(any_api) == before
    assert ledger_rows(db_path, ALICE) == rows


@pytest.mark.parametrize("method", ["recordUsage", "deposit", "refund"])
@pytest.mark.parametrize("amount", ["5", 5.5, 5.0])
async def test_amount_is_strictly_an_integer(any_api, method, amount):
    await any_api.call("deposit", {"user": ALICE, "amount": 110})
    original = await charge(any_api, 10)  # a refundable original: only the amount is wrong
    r = await any_api.call(method, amount_params(method, amount, original))
    assert_error(any_api, r, "invalid_params", "amount", "amount")
    assert await balance(any_api) == 100  # nothing was coerced and written


@pytest.mark.parametrize("field,value", [("totalTokens", "10"), ("promptTokens", 1.5), ("premium", "true")])
async def test_record_usage_fields_are_strictly_typed(any_api, field, value):
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 5, "model": "m", field: value})
    assert_error(any_api, r, "invalid_params", field, field)
    assert await balance(any_api) == 0


async def test_deposit_expires_in_is_strictly_an_integer(any_api):
    r = await any_api.call("deposit", {"user": ALICE, "amount": 5, "expiresIn": "7"})
    assert_error(any_api, r, "invalid_params", "expiresIn", "expiresIn")


async def test_deposit_expires_in_is_at_most_36500_days(any_api):
    assert (await any_api.call("deposit", {"user": ALICE, "amount": 5, "expiresIn": 36_500})).ok
    r = await any_api.call("deposit", {"user": ALICE, "amount": 5, "expiresIn": 36_501})
    assert_error(any_api, r, "invalid_params", "expiresIn", "expiresIn")
    assert await balance(any_api) == 5


@pytest.mark.parametrize("method", ["recordUsage", "deposit", "refund"])
async def test_amount_outside_int64_is_invalid(any_api, method):
    await any_api.call("deposit", {"user": ALICE, "amount": 110})
    original = await charge(any_api, 10)  # a refundable original: only the amount is wrong
    r = await any_api.call(method, amount_params(method, 2**63, original))
    assert_error(any_api, r, "invalid_params", "amount", "amount")
    assert await balance(any_api) == 100


async def test_deposit_overflowing_the_balance_is_rejected_and_changes_nothing(any_api):
    r = await any_api.call("deposit", {"user": ALICE, "amount": INT64_MAX})
    assert r.ok, r.error
    r = await any_api.call("deposit", {"user": ALICE, "amount": 1})
    assert_error(any_api, r, "invalid_params", "")
    assert await balance(any_api) == INT64_MAX
    r = await any_api.call("getBalanceAll", {"user": ALICE})
    assert r.result["balances"] == [{"currency": "usd", "balance": INT64_MAX, "holds": 0, "available": INT64_MAX}]


async def test_usage_overflowing_the_balance_downwards_is_rejected_and_changes_nothing(any_api):
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": INT64_MAX, "model": "m"})
    assert r.ok, r.error
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 2, "model": "m"})
    assert_error(any_api, r, "invalid_params", "")
    assert await balance(any_api) == -INT64_MAX
    assert (await any_api.call("getUsage", {"user": ALICE})).result["count"] == 1


async def test_validation_reports_the_first_failure_in_contract_order(any_api):
    # deposit params in contract order: user, currency, amount
    r = await any_api.call("deposit", {"amount": 0, "currency": "xyz"})
    assert_error(any_api, r, "invalid_params", "user is required", "user")
    r = await any_api.call("deposit", {"user": ALICE, "amount": 0, "currency": "xyz"})
    assert_error(any_api, r, "invalid_params", "unknown currency: xyz", "currency")
    # refund: user, currency, amount, originalTransactionId
    r = await any_api.call("refund", {"user": ALICE, "amount": 0})
    assert_error(any_api, r, "invalid_params", "amount must be positive", "amount")


async def test_get_usage_empty_optional_params_mean_absent(any_api):
    """README: nulls and empty strings in params mean "absent"; the three transports agree."""
    u = await any_api.call("recordUsage", {"user": ALICE, "amount": 1, "model": "m"})
    for params in ({"currency": ""}, {"startingAfter": ""}, {"currency": None}, {"startingAfter": None}, {"limit": None}):
        if any_api.transport == "rest" and None in params.values():
            continue  # a query string has no null
        r = await any_api.call("getUsage", {"user": ALICE, **params})
        assert r.status == 200, (params, r.error)
        assert [x["transactionId"] for x in r.result["usage"]] == [u.result["transactionId"]], params


async def test_rest_post_with_empty_body_means_empty_params(api):
    for path in ("/api/v1/billing/usage", "/api/v1/billing/deposit", "/api/v1/billing/credit", "/api/v1/billing/refund"):
        status, body = await api.rest("POST", path)
        assert status == 400, (path, status, body)
        assert body["error"]["code"] == "invalid_params" and "user is required" in body["error"]["message"], body


async def test_expired_deposit_does_not_pay_for_later_usage(any_api, clock):
    await any_api.call("deposit", {"user": ALICE, "amount": 500, "expiresIn": 3})
    clock.advance(days=4)
    r = await any_api.call("recordUsage", {"user": ALICE, "amount": 100, "model": "m"})
    assert r.ok, r.error
    assert await balance(any_api) == -100
