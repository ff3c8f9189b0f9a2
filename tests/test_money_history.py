"""The money history end to end (listTransactions, listAccounts, listCreditTransactions) on the
real server and a real SQLite file, over REST, ZAP/JSON and ZAP/msgpack (`any_api`) where the
transport matters, with exact values throughout:

- listTransactions: every kind of ledger row (deposits, refunds, usage, hold captures, forfeits
  of expired credit written by a call or by the sweep), newest first with equal times last
  written first, every filter, paging with no row lost or repeated, 404s, bad times, keyId;
- listAccounts: byte order, who is listed (pending holds yes, lapsed or released holds no),
  figures equal to getBalance's at the same instant, maxAvailable with paging, currencies;
- listCreditTransactions: grant / burn / void / expire rows and their amounts, remainingAfter,
  burnId and meterId, expire rows written by the next write or by the sweep, grantId, paging;
  invoicePreview writes no row; every grant's rows sum to its remainingCents;
- isolation between orgs and modes, and a read-only key calling all three.

The FakeClock is set to a fixed instant so that bare-date filters and equal times are exact.
check_invariants holds after every test (autouse fixture).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import REGISTRY, Api, assert_error, ok
from invariants import check_invariants

from zapbilling.app import STORE, sweep_once

ALICE, BOB, CAROL = "hanzo/alice", "hanzo/bob", "hanzo/carol"
SECOND = 1_000_000
HOUR = 3600 * SECOND
DAY = 86_400 * SECOND
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(text: str) -> int:
    """An RFC 3339 UTC time (or a bare date: its 00:00) as microseconds since the epoch."""
    if len(text) == 10:
        text += "T00:00:00Z"
    delta = datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds


def iso(t: int) -> str:
    """What the server writes for the time `t`: RFC 3339, UTC, microseconds."""
    return (EPOCH + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


T0 = us("2031-05-20T10:00:00Z")


@pytest.fixture(autouse=True)
async def invariants_hold_after_the_test(server, db_path, clock):
    clock.now = T0
    yield
    check_invariants(db_path)


# -- helpers --------------------------------------------------------------------------------

def conforms(method: str, result: Any) -> Any:
    """The result is exactly what the schema declares for `method` (no extra, none missing)."""
    REGISTRY.commands[f"billing.{method}"].result_model.model_validate({"value": result})
    return result


async def listed(api: Api, method: str, **params: Any) -> dict[str, Any]:
    return conforms(method, await ok(api, method, params))


async def transactions(api: Api, user: str = ALICE, **params: Any) -> list[dict[str, Any]]:
    """One page of listTransactions (the whole history when it fits in one)."""
    page = await listed(api, "listTransactions", user=user, **params)
    assert page["user"] == user and page["count"] == len(page["transactions"]), page
    return page["transactions"]


async def credit_rows(api: Api, user: str = ALICE, **params: Any) -> list[dict[str, Any]]:
    page = await listed(api, "listCreditTransactions", userId=user, **params)
    assert page["userId"] == user and page["count"] == len(page["transactions"]) and not page["hasMore"], page
    return page["transactions"]


async def accounts(api: Api, **params: Any) -> list[dict[str, Any]]:
    page = await listed(api, "listAccounts", **params)
    assert page["count"] == len(page["accounts"]) and not page["hasMore"], page
    return page["accounts"]


async def every_page(api: Api, method: str, rows_of: str, next_of: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    """Walk a paged list with `limit`: every page's rows, checking count and hasMore on each."""
    pages: list[list[dict[str, Any]]] = []
    after: str | None = None
    while True:
        page = await listed(api, method, limit=limit, **params, **({"startingAfter": after} if after else {}))
        rows = page[rows_of]
        assert page["count"] == len(rows) <= limit, page
        pages.append(rows)
        if not page["hasMore"]:
            return pages
        assert len(rows) == limit, ("hasMore with a short page", page)
        after = rows[-1][next_of]
        assert len(pages) < 100, "paging does not end"


async def key_id_of(server, secret: str) -> str:
    """The id of the key `secret`, found as an operator would: in the store's list of keys."""
    found = [k.id for k in await server.app[STORE].list_keys() if secret.startswith(k.hint)]
    assert len(found) == 1, found
    return found[0]


async def new_key(server, org: str = "acme", mode: str = "live", scope: str = "admin") -> tuple[str, str]:
    """(key id, secret) of a new key."""
    return await server.app[STORE].create_key(org, mode, scope, T0)


def usage_metadata(model: str = "m", total: int = 0, request_id: str | None = None) -> dict[str, Any]:
    return {"model": model, "provider": "", "promptTokens": 0, "completionTokens": 0, "totalTokens": total,
            "requestId": request_id, "premium": False, "stream": False, "status": "", "clientIp": ""}


def tx(tx_id: str, at: int, key: str, type: str, amount: int, tags: str, notes: str, metadata: dict[str, Any],
       user: str = ALICE, currency: str = "usd", **optional: Any) -> dict[str, Any]:
    """An expected listTransactions row."""
    return {"transactionId": tx_id, "user": user, "currency": currency, "type": type, "amount": amount, "tags": tags,
            "notes": notes, "metadata": metadata, "createdAt": iso(at), **optional, "keyId": key}


def without_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids), ids
    return [{k: v for k, v in r.items() if k != "id"} for r in rows]


def ct(grant: str, type: str, amount: int, after: int, at: int, key: str, user: str = ALICE, currency: str = "usd",
       **optional: Any) -> dict[str, Any]:
    """An expected listCreditTransactions row, without its id."""
    return {"grantId": grant, "userId": user, "currency": currency, "type": type, "amount": amount,
            "remainingAfter": after, **optional, "createdAt": iso(at), "keyId": key}


async def grants_of(api: Api, user: str = ALICE) -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in (await ok(api, "listCreditGrants", {"userId": user}))["grants"]}


async def assert_journal_sums(api: Api, user: str = ALICE) -> None:
    """For every grant of `user`, its journal rows sum to remainingCents as listCreditGrants
    reports it (the whole journal read in small pages)."""
    rows = [r for page in await every_page(api, "listCreditTransactions", "transactions", "id", 2, userId=user) for r in page]
    for grant in (await grants_of(api, user)).values():
        mine = [r["amount"] for r in rows if r["grantId"] == grant["id"]]
        assert mine and sum(mine) == grant["remainingCents"], (grant, mine)
        assert mine[-1] == grant["amountCents"], "the oldest row is the grant's creation"


async def account_of(api: Api, user: str, currency: str = "usd") -> dict[str, Any]:
    b = await ok(api, "getBalance", {"user": user, "currency": currency})
    return {"user": user, "balance": b["balance"], "holds": b["holds"], "available": b["available"]}


# -- listTransactions ---------------------------------------------------------------------------

async def test_list_transactions_lists_every_kind_of_row_newest_first(any_api, clock, server):
    api, key = any_api, await key_id_of(server, any_api.key)
    at: dict[str, int] = {}

    def tick(name: str, seconds: float = 1) -> None:
        clock.advance(seconds)
        at[name] = clock()

    tick("deposit")
    dep = await ok(api, "deposit", {"user": ALICE, "amount": 1000, "tags": "topup", "metadata": {"po": "7"}})
    tick("usage")
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 120, "model": "m", "totalTokens": 10, "requestId": "r1"})
    tick("refund")
    refund = await ok(api, "refund", {"user": ALICE, "amount": 20, "originalTransactionId": usage["transactionId"]})
    tick("hold")
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 300})
    tick("capture")
    capture = await ok(api, "captureHold", {"id": hold["holdId"], "amount": 200, "model": "gpt"})
    tick("expiring")
    expiring = await ok(api, "deposit", {"user": ALICE, "amount": 500, "expiresIn": 1, "tags": "promo,trial"})
    tick("usage2")
    usage2 = await ok(api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "totalTokens": 5})  # spends the promo first
    tick("usage3", 2 * 86_400)
    usage3 = await ok(api, "recordUsage", {"user": ALICE, "amount": 50, "model": "m2", "totalTokens": 1})  # forfeits 400

    page = await listed(api, "listTransactions", user=ALICE)
    assert (page["user"], page["count"], page["hasMore"]) == (ALICE, 8, False)
    rows = page["transactions"]
    forfeit = rows[0]["transactionId"]
    expires_at = at["expiring"] + DAY
    assert rows == [
        # written after usage3, in its transaction and at its time: last written, first listed
        tx(forfeit, at["usage3"], key, "withdraw", 400, "credit-expired",
           f"Expired credit: 400 cents usd (deposit {expiring['transactionId']})",
           {"expiredTransactionId": expiring["transactionId"], "expiredAt": iso(expires_at)}),
        tx(usage3["transactionId"], at["usage3"], key, "withdraw", 50, "api-usage", "API usage: m2 (1 tokens)",
           usage_metadata("m2", 1)),
        tx(usage2["transactionId"], at["usage2"], key, "withdraw", 100, "api-usage", "API usage: m (5 tokens)",
           usage_metadata("m", 5)),
        tx(expiring["transactionId"], at["expiring"], key, "deposit", 500, "promo,trial", "Deposit: 500 cents usd", {},
           expiresAt=iso(expires_at)),
        tx(capture["transactionId"], at["capture"], key, "withdraw", 200, "api-usage",
           f"API usage: gpt (hold {hold['holdId']})", {"holdId": hold["holdId"], "model": "gpt"}, holdId=hold["holdId"]),
        tx(refund["transactionId"], at["refund"], key, "deposit", 20, "refund",
           f"Refund: 20 cents usd (original tx: {usage['transactionId']})",
           {"refundType": "billing-correction", "originalTransactionId": usage["transactionId"]},
           originalTransactionId=usage["transactionId"]),
        tx(usage["transactionId"], at["usage"], key, "withdraw", 120, "api-usage", "API usage: m (10 tokens)",
           usage_metadata("m", 10, "r1")),
        tx(dep["transactionId"], at["deposit"], key, "deposit", 1000, "topup", "Deposit: 1000 cents usd", {"po": "7"}),
    ]
    assert forfeit not in {r["transactionId"] for r in rows[1:]}
    # the rows add up to the balance: 1000 - 120 + 20 - 200 + 500 - 100 - 50 - 400
    sign = {"deposit": 1, "withdraw": -1}
    assert sum(sign[r["type"]] * r["amount"] for r in rows) == 650 == (await account_of(api, ALICE))["balance"]


async def test_a_forfeit_written_by_the_sweep_is_keyed_system(api, clock, server):
    key = await key_id_of(server, api.key)
    expiring = await ok(api, "deposit", {"user": ALICE, "amount": 500, "expiresIn": 1})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 80, "model": "m"})
    clock.advance(days=1)  # expiresAt exactly: expired from this instant
    before = await transactions(api)
    assert [(r["type"], r["amount"]) for r in before] == [("withdraw", 80), ("deposit", 500)], "nothing forfeited yet"
    assert await account_of(api, ALICE) == {"user": ALICE, "balance": 0, "holds": 0, "available": 0}, "but the read subtracts it"

    clock.advance(seconds=5)
    swept_at = clock()
    await sweep_once(server.app[STORE], swept_at)
    rows = await transactions(api)
    assert rows[1:] == before
    assert rows[0] == tx(rows[0]["transactionId"], swept_at, "system", "withdraw", 420, "credit-expired",
                         f"Expired credit: 420 cents usd (deposit {expiring['transactionId']})",
                         {"expiredTransactionId": expiring["transactionId"], "expiredAt": iso(T0 + DAY)})
    assert rows[0]["keyId"] != key
    assert await account_of(api, ALICE) == {"user": ALICE, "balance": 0, "holds": 0, "available": 0}
    await sweep_once(server.app[STORE], clock())
    assert await transactions(api) == rows, "a second sweep forfeits nothing more"
    await ok(api, "deposit", {"user": ALICE, "amount": 1})
    assert [r["tags"] for r in await transactions(api, tag="credit-expired")] == ["credit-expired"]


async def test_equal_times_list_last_written_first_and_time_before_write_order(api, clock):
    for amount in (1, 2, 3):
        await ok(api, "deposit", {"user": ALICE, "amount": amount})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 4, "model": "m"})
    clock.advance(seconds=1)
    await ok(api, "deposit", {"user": ALICE, "amount": 5})
    clock.now = T0 - SECOND  # a row written last with an earlier time (a clock stepped back) sorts by its time
    await ok(api, "deposit", {"user": ALICE, "amount": 6})
    rows = await transactions(api)
    assert [r["amount"] for r in rows] == [5, 4, 3, 2, 1, 6]
    assert [r["createdAt"] for r in rows] == [iso(T0 + SECOND)] + [iso(T0)] * 4 + [iso(T0 - SECOND)]
    # pages split between rows of equal time lose and repeat nothing
    for limit in (1, 2, 3, 4):
        pages = await every_page(api, "listTransactions", "transactions", "transactionId", limit, user=ALICE)
        assert [r for p in pages for r in p] == rows, limit


async def test_list_transactions_filters(api, clock):
    async def at(when: str, method: str, **params: Any) -> str:
        clock.now = us(when)
        return (await ok(api, method, {"user": ALICE, **params}))["transactionId"]

    r1 = await at("2031-05-20T00:00:00Z", "deposit", amount=100, tags="a,b")
    r2 = await at("2031-05-20T12:00:00Z", "deposit", amount=200, currency="eur", tags="ab")
    r3 = await at("2031-05-20T23:59:59.999999Z", "recordUsage", amount=30, model="m")
    r4 = await at("2031-05-21T00:00:00Z", "deposit", amount=400, tags="b")
    r5 = await at("2031-05-21T06:00:00Z", "recordUsage", amount=50, currency="eur", model="m")
    r6 = await at("2031-05-22T00:00:01Z", "deposit", amount=600, tags="x,a")
    await ok(api, "deposit", {"user": BOB, "amount": 700, "tags": "a,b"})  # another user's rows never show

    async def ids(**where: Any) -> list[str]:
        return [r["transactionId"] for r in await transactions(api, **where)]

    assert await ids() == [r6, r5, r4, r3, r2, r1]
    assert await ids(currency="eur") == [r5, r2]
    assert await ids(currency="EUR") == [r5, r2]
    assert await ids(currency="usd") == [r6, r4, r3, r1]
    assert await ids(currency="jpy") == []
    assert await ids(type="withdraw") == [r5, r3]
    assert await ids(type="deposit") == [r6, r4, r2, r1]
    assert await ids(type="hold") == []
    # a tag matches one of the comma-separated tags exactly
    assert await ids(tag="b") == [r4, r1], "'a,b' has tag b; 'ab' does not"
    assert await ids(tag="ab") == [r2]
    assert await ids(tag="a") == [r6, r1]
    assert await ids(tag="x") == [r6]
    assert await ids(tag="api-usage") == [r5, r3]
    assert await ids(tag="api") == []
    # createdAfter inclusive; createdBefore exclusive; a bare date as an end includes that day
    assert await ids(createdAfter="2031-05-20T12:00:00Z") == [r6, r5, r4, r3, r2]
    assert await ids(createdAfter="2031-05-20T12:00:00.000001Z") == [r6, r5, r4, r3]
    assert await ids(createdAfter="2031-05-21") == [r6, r5, r4]
    assert await ids(createdAfter="2031-05-21T02:00:00+02:00") == [r6, r5, r4]
    assert await ids(createdBefore="2031-05-21T00:00:00Z") == [r3, r2, r1]
    assert await ids(createdBefore="2031-05-20T12:00:00Z") == [r1]
    assert await ids(createdBefore="2031-05-20") == [r3, r2, r1], "the whole of May 20, to its last microsecond"
    assert await ids(createdBefore="2031-05-19") == []
    assert await ids(createdBefore="2031-05-22") == [r6, r5, r4, r3, r2, r1]
    assert await ids(createdAfter="2031-05-21", createdBefore="2031-05-21") == [r5, r4], "one day"
    assert await ids(createdAfter="2031-05-22T00:00:01Z", createdBefore="2031-05-22T00:00:01Z") == []
    assert await ids(currency="usd", type="deposit", tag="a") == [r6, r1]
    assert await ids(currency="usd", type="deposit", createdBefore="2031-05-21") == [r4, r1]
    # filters and paging together
    for limit in (1, 2):
        pages = await every_page(api, "listTransactions", "transactions", "transactionId", limit, user=ALICE, currency="usd")
        assert [r["transactionId"] for p in pages for r in p] == [r6, r4, r3, r1], limit
        pages = await every_page(api, "listTransactions", "transactions", "transactionId", limit, user=ALICE,
                                 createdAfter="2031-05-20T12:00:00Z", createdBefore="2031-05-21")
        assert [r["transactionId"] for p in pages for r in p] == [r5, r4, r3, r2], limit
    # a page may start after a row the filter leaves out: it is a position
    assert await ids(type="deposit", startingAfter=r5) == [r4, r2, r1]


async def test_list_transactions_paging(any_api, clock):
    api = any_api
    made = []
    for i in range(7):
        if i % 3 == 0:
            clock.advance(seconds=1)  # some equal times, some not
        made.append((await ok(api, "deposit", {"user": ALICE, "amount": i + 1}))["transactionId"])
    newest_first = made[::-1]
    for limit, sizes in ((3, [3, 3, 1]), (2, [2, 2, 2, 1]), (7, [7]), (1, [1] * 7), (100, [7])):
        pages = await every_page(api, "listTransactions", "transactions", "transactionId", limit, user=ALICE)
        assert [len(p) for p in pages] == sizes
        assert [r["transactionId"] for p in pages for r in p] == newest_first, limit
    page = await listed(api, "listTransactions", user=ALICE, limit=6)
    assert (page["count"], page["hasMore"]) == (6, True)
    page = await listed(api, "listTransactions", user=ALICE, startingAfter=made[0])
    assert (page["count"], page["hasMore"], page["transactions"]) == (0, False, [])
    page = await listed(api, "listTransactions", user=CAROL)
    assert (page["count"], page["hasMore"], page["transactions"]) == (0, False, []), "a user never seen: empty, not 404"


async def test_list_transactions_starting_after_unknown_or_foreign_is_404(any_api, make_key):
    api = any_api
    await ok(api, "deposit", {"user": ALICE, "amount": 10})
    bobs = (await ok(api, "deposit", {"user": BOB, "amount": 10}))["transactionId"]
    others = (await ok(api.with_key(await make_key("globex", "live")), "deposit", {"user": ALICE, "amount": 10}))["transactionId"]
    tests = (await ok(api.with_key(await make_key("acme", "test")), "deposit", {"user": ALICE, "amount": 10}))["transactionId"]
    for after in ("tx_nope", "x" * 40, bobs, others, tests):
        r = await api.call("listTransactions", {"user": ALICE, "startingAfter": after})
        assert_error(api, r, "not_found", "transaction not found", "startingAfter")


@pytest.mark.parametrize("field", ["createdAfter", "createdBefore"])
async def test_list_transactions_bad_times_are_invalid(any_api, field):
    for bad in ("yesterday", "2031-02-30", "2031-05-20T25:00:00Z", "2031-05-20T10:00:00", "20310520", "1716199200"):
        r = await any_api.call("listTransactions", {"user": ALICE, field: bad})
        assert_error(any_api, r, "invalid_params", f"invalid {field}", field)


async def test_key_id_is_the_key_that_made_the_call(any_api, server):
    api = any_api
    first = await key_id_of(server, api.key)
    second, secret = await new_key(server)
    other = api.with_key(secret)
    assert first != second
    a = await ok(api, "deposit", {"user": ALICE, "amount": 100})
    b = await ok(other, "deposit", {"user": ALICE, "amount": 200})
    c = await ok(other, "recordUsage", {"user": ALICE, "amount": 30, "model": "m"})
    reader = api.with_key((await new_key(server, scope="read"))[1])
    rows = await transactions(reader)
    assert [(r["transactionId"], r["keyId"]) for r in rows] == [
        (c["transactionId"], second), (b["transactionId"], second), (a["transactionId"], first)
    ], "the writer's key, whoever reads"
