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

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import REGISTRY, TRANSPORTS, Api, assert_error, ok
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
    # the two types interleaved at one time
    for amount in (1, 2, 3, 4):
        if amount % 2:
            await ok(api, "deposit", {"user": ALICE, "amount": amount})
        else:
            await ok(api, "recordUsage", {"user": ALICE, "amount": amount, "model": "m"})
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
        # a test on the rows (every row passes it) walks the same merge and reads the rows after it
        pages = await every_page(api, "listTransactions", "transactions", "transactionId", limit, user=ALICE, currency="usd")
        assert [r for p in pages for r in p] == rows, limit
    assert [r["amount"] for r in await transactions(api, tag="api-usage")] == [4, 2]  # the tested walk, with a test some rows fail


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


# -- listAccounts ------------------------------------------------------------------------------

async def test_list_accounts_in_byte_order_with_getbalance_figures(any_api, clock, server):
    api = any_api
    # "ab": money that never expires and an expiring deposit partly spent, expiring unforfeited below
    await ok(api, "deposit", {"user": "ab", "amount": 700})
    await ok(api, "deposit", {"user": "ab", "amount": 500, "expiresIn": 1})
    await ok(api, "recordUsage", {"user": "ab", "amount": 100, "model": "m"})
    # "Z": only a hold, which lapses below without a sweep
    await ok(api, "createHold", {"user": "Z", "amount": 100, "expiresIn": 60, "allowOverdraft": True})
    clock.advance(days=2)
    await ok(api, "deposit", {"user": "a", "amount": 1000})
    await ok(api, "deposit", {"user": "B", "amount": 300})
    await ok(api, "createHold", {"user": "B", "amount": 100})
    await ok(api, "createHold", {"user": "b", "amount": 250, "allowOverdraft": True})  # only a pending hold
    await ok(api, "recordUsage", {"user": "~", "amount": 80, "model": "m"})  # overdrawn
    await ok(api, "deposit", {"user": "é", "amount": 50, "currency": "eur"})
    released = await ok(api, "createHold", {"user": "a/b", "amount": 10, "allowOverdraft": True})
    await ok(api, "releaseHold", {"id": released["holdId"]})

    listed_usd = await accounts(api)
    assert listed_usd == await accounts(api, currency="usd"), "usd is the default"
    assert [a["user"] for a in listed_usd] == ["B", "a", "ab", "b", "~"], "byte order; no lapsed or released hold alone"
    assert listed_usd == [
        {"user": "B", "balance": 300, "holds": 100, "available": 200},
        {"user": "a", "balance": 1000, "holds": 0, "available": 1000},
        {"user": "ab", "balance": 700, "holds": 0, "available": 700},  # 1200 - 100 spent - 400 expired, not yet forfeited
        {"user": "b", "balance": 0, "holds": 250, "available": 0},
        {"user": "~", "balance": -80, "holds": 0, "available": 0},
    ]
    for a in listed_usd:
        assert a == await account_of(api, a["user"]), "as getBalance at the same instant"
    page = await listed(api, "listAccounts", currency="eur")
    assert page == {"currency": "eur", "count": 1, "hasMore": False,
                    "accounts": [{"user": "é", "balance": 50, "holds": 0, "available": 50}]}
    assert await accounts(api, currency="EUR") == page["accounts"]
    assert await accounts(api, currency="jpy") == []
    # the sweep changes rows, not figures
    await sweep_once(server.app[STORE], clock())
    assert await accounts(api) == listed_usd


async def test_list_accounts_byte_order_is_not_case_or_locale_order(api):
    users = ["b", "B", "a", "A", "á", "ä", "z", "Ω", "a/b", "a0", "ab", "\U0001F600", "~x", "_", " a"]
    for i, user in enumerate(users):
        await ok(api, "deposit", {"user": user, "amount": i + 1})
    want = sorted(users, key=lambda u: u.encode())
    assert [a["user"] for a in await accounts(api)] == want
    for limit in (1, 4):
        pages = await every_page(api, "listAccounts", "accounts", "user", limit)
        assert [a["user"] for p in pages for a in p] == want, limit


async def test_list_accounts_max_available_and_paging(any_api):
    api = any_api
    figures = {"u0": 0, "u1": 50, "u2": 100, "u3": 101, "u4": 500, "u5": 100, "u6": 1000, "u7": 99, "u8": 0, "u9": 7}
    for user, available in figures.items():
        if available:
            await ok(api, "deposit", {"user": user, "amount": available + 40})
            await ok(api, "createHold", {"user": user, "amount": 40})
    await ok(api, "recordUsage", {"user": "u0", "amount": 5, "model": "m"})  # overdrawn: available 0
    await ok(api, "createHold", {"user": "u8", "amount": 9, "allowOverdraft": True})  # a hold, no money

    everyone = await accounts(api)
    assert [(a["user"], a["available"]) for a in everyone] == sorted(figures.items())
    assert [a["user"] for a in await accounts(api, maxAvailable=100)] == ["u0", "u1", "u2", "u5", "u7", "u8", "u9"]
    assert [a["user"] for a in await accounts(api, maxAvailable=0)] == ["u0", "u8"]
    assert await accounts(api, maxAvailable=-1) == []
    assert [a["user"] for a in await accounts(api, maxAvailable=2**63 - 1)] == sorted(figures)
    assert [a for a in everyone if a["available"] <= 100] == await accounts(api, maxAvailable=100), "the same figures"
    # paged, with the filter: the accounts it drops never show up and never end a page early
    for limit, sizes in ((2, [2, 2, 2, 1]), (3, [3, 3, 1]), (7, [7])):
        pages = await every_page(api, "listAccounts", "accounts", "user", limit, maxAvailable=100)
        assert [len(p) for p in pages] == sizes
        assert [a["user"] for p in pages for a in p] == ["u0", "u1", "u2", "u5", "u7", "u8", "u9"], limit
    pages = await every_page(api, "listAccounts", "accounts", "user", 2, maxAvailable=99)
    assert [[a["user"] for a in p] for p in pages] == [["u0", "u1"], ["u7", "u8"], ["u9"]]
    page = await listed(api, "listAccounts", maxAvailable=7, limit=3)
    assert ([a["user"] for a in page["accounts"]], page["hasMore"]) == (["u0", "u8", "u9"], False), "nothing after u9 qualifies"
    # without the filter
    pages = await every_page(api, "listAccounts", "accounts", "user", 4)
    assert [len(p) for p in pages] == [4, 4, 2] and [a for p in pages for a in p] == everyone
    # startingAfter is a position, not a row: any string, never 404
    assert [a["user"] for a in await accounts(api, startingAfter="u35")] == ["u4", "u5", "u6", "u7", "u8", "u9"]
    assert [a["user"] for a in await accounts(api, startingAfter="u35", maxAvailable=100)] == ["u5", "u7", "u8", "u9"]
    assert await accounts(api, startingAfter="zzz") == []
    assert [a["user"] for a in await accounts(api, startingAfter="A")] == sorted(figures)


async def test_accounts_and_transactions_of_another_org_or_mode_are_invisible(any_api, make_key, clock):
    api = any_api
    await ok(api, "deposit", {"user": ALICE, "amount": 100})
    await ok(api, "createHold", {"user": BOB, "amount": 10, "allowOverdraft": True})
    grant = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 50}))["id"]
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 5})
    mine = await transactions(api)
    mine_credit = await credit_rows(api)
    for org, mode in (("globex", "live"), ("acme", "test")):
        other = api.with_key(await make_key(org, mode))
        assert await transactions(other) == []
        assert await accounts(other) == []
        assert await credit_rows(other) == []
        assert_error(other, await other.call("listCreditTransactions", {"userId": ALICE, "grantId": grant}),
                     "not_found", "credit grant not found", "grantId")
        assert_error(other, await other.call("listTransactions", {"user": ALICE, "startingAfter": mine[0]["transactionId"]}),
                     "not_found", "transaction not found", "startingAfter")
        r = await other.call("listCreditTransactions", {"userId": ALICE, "startingAfter": mine_credit[0]["id"]})
        assert_error(other, r, "not_found", "not found", "startingAfter")
        # their own rows, which the first tenant does not see in turn
        await ok(other, "deposit", {"user": CAROL, "amount": 7})
        await ok(other, "createCreditGrant", {"userId": ALICE, "amountCents": 9})
        assert [a["user"] for a in await accounts(other)] == [CAROL]
    assert [a["user"] for a in await accounts(api)] == [ALICE, BOB]
    assert await transactions(api) == mine and await transactions(api, user=CAROL) == []
    assert await credit_rows(api) == mine_credit


async def test_a_read_only_key_may_list_all_three(any_api, server):
    api = any_api
    await ok(api, "deposit", {"user": ALICE, "amount": 100})
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 50})
    reader = api.with_key((await new_key(server, scope="read"))[1])
    assert [r["amount"] for r in await transactions(reader)] == [100]
    assert await accounts(reader) == [{"user": ALICE, "balance": 100, "holds": 0, "available": 100}]
    assert [(r["type"], r["amount"]) for r in await credit_rows(reader)] == [("grant", 50)]
    assert_error(reader, await reader.call("deposit", {"user": ALICE, "amount": 1}), "forbidden", "")


# -- listCreditTransactions --------------------------------------------------------------------

async def test_credit_journal_rows_of_grants_burns_and_voids(any_api, clock, server):
    api, key = any_api, await key_id_of(server, any_api.key)
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    at: list[int] = []

    async def step(method: str, params: dict[str, Any]) -> dict[str, Any]:
        clock.advance(seconds=1)
        at.append(clock())
        return await ok(api, method, params)

    g1 = (await step("createCreditGrant", {"userId": ALICE, "amountCents": 1000, "name": "one"}))["id"]
    g2 = (await step("createCreditGrant", {"userId": ALICE, "amountCents": 500, "priority": 1}))["id"]
    g3 = (await step("createCreditGrant", {"userId": ALICE, "amountCents": 400, "eligibility": [meter]}))["id"]
    b1 = await step("burnCredits", {"userId": ALICE, "amount": 1200})  # g1 to 0, then 200 of g2; g3 pays only for its meter
    b2 = await step("burnCredits", {"userId": ALICE, "amount": 100, "meterId": meter})  # g3 (priority 0) first
    await step("voidCreditGrant", {"id": g2})  # 300 left
    await step("voidCreditGrant", {"id": g1})  # nothing left: a void of 0

    assert [(g["id"], g["burned"], g["remainingCents"]) for g in b1["grants"]] == [(g1, 1000, 0), (g2, 200, 300)]
    assert [(g["id"], g["burned"], g["remainingCents"]) for g in b2["grants"]] == [(g3, 100, 300)]
    assert b1["burnId"] != b2["burnId"] and all(isinstance(b["burnId"], str) and b["burnId"] for b in (b1, b2))
    rows = await credit_rows(api)
    assert without_ids(rows) == [
        ct(g1, "void", 0, 0, at[6], key),
        ct(g2, "void", -300, 0, at[5], key),
        ct(g3, "burn", -100, 300, at[4], key, burnId=b2["burnId"], meterId=meter),
        ct(g2, "burn", -200, 300, at[3], key, burnId=b1["burnId"]),  # one row per grant touched; last written first
        ct(g1, "burn", -1000, 0, at[3], key, burnId=b1["burnId"]),
        ct(g3, "grant", 400, 400, at[2], key),
        ct(g2, "grant", 500, 500, at[1], key),
        ct(g1, "grant", 1000, 1000, at[0], key),
    ]
    grants = await grants_of(api)
    assert {g: (grants[g]["remainingCents"], grants[g]["voided"]) for g in grants} == {g1: (0, True), g2: (0, True), g3: (300, False)}
    await assert_journal_sums(api)

    # a burn that burns nothing writes nothing and names no burn
    nothing = await ok(api, "burnCredits", {"userId": ALICE, "amount": 50})  # only g3 is left, and only for its meter
    assert (nothing["burned"], nothing["grants"]) == (0, []) and "burnId" not in nothing
    assert "burnId" not in await ok(api, "burnCredits", {"userId": BOB, "amount": 50})
    assert await credit_rows(api) == rows and await credit_rows(api, user=BOB) == []


async def test_the_journal_is_per_currency_and_per_user(api, server):
    key = await key_id_of(server, api.key)
    usd = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100}))["id"]
    eur = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 200, "currency": "eur"}))["id"]
    bobs = (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 300}))["id"]
    burn = await ok(api, "burnCredits", {"userId": ALICE, "amount": 150, "currency": "eur"})
    assert without_ids(await credit_rows(api)) == [
        ct(eur, "burn", -150, 50, T0, key, currency="eur", burnId=burn["burnId"]),
        ct(eur, "grant", 200, 200, T0, key, currency="eur"),
        ct(usd, "grant", 100, 100, T0, key),
    ]
    assert without_ids(await credit_rows(api, user=BOB)) == [ct(bobs, "grant", 300, 300, T0, key, user=BOB)]
    await assert_journal_sums(api)


@pytest.mark.parametrize("write", ["burn", "create", "void", "void the expired grant"])
async def test_the_expire_row_is_written_by_the_next_write_on_the_users_grants(api, clock, server, write):
    key = await key_id_of(server, api.key)
    expiring = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 700, "expiresIn": "1h", "priority": -1}))["id"]
    spent = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 20, "expiresIn": "1h", "priority": -2}))["id"]
    lasting = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100}))["id"]
    burn = await ok(api, "burnCredits", {"userId": ALICE, "amount": 70})  # all of `spent`, then 50 of `expiring`
    assert [(g["id"], g["burned"]) for g in burn["grants"]] == [(spent, 20), (expiring, 50)]
    before = await credit_rows(api)
    assert len(before) == 5
    assert {r["keyId"] for r in before} == {key}, "the rows so far are the first key's; the expire row will be the writer's"

    clock.advance(seconds=3600)  # expiresAt exactly: inactive from this instant
    grants = await grants_of(api)
    assert (grants[expiring]["active"], grants[expiring]["remainingCents"]) == (False, 650), "inactive, not yet journalled"
    assert (await ok(api, "getCreditBalance", {"userId": ALICE}))["balances"] == [{"currency": "usd", "available": 100}]
    assert await credit_rows(api) == before, "no expire row before a write"
    await assert_journal_sums(api)
    # reads and writes that do not touch alice's grants write none either
    await ok(api, "invoicePreview", {"userId": ALICE})
    await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 5})
    await ok(api, "burnCredits", {"userId": BOB, "amount": 1})
    await ok(api, "deposit", {"user": ALICE, "amount": 5})
    assert await credit_rows(api) == before

    clock.advance(seconds=10)
    written_at = clock()
    writer_id, secret = await new_key(server)
    writer = api.with_key(secret)
    if write == "burn":
        burned = await ok(writer, "burnCredits", {"userId": ALICE, "amount": 10})
        assert [(g["id"], g["burned"]) for g in burned["grants"]] == [(lasting, 10)]
        then = [ct(lasting, "burn", -10, 90, written_at, writer_id, burnId=burned["burnId"])]
    elif write == "create":
        made = (await ok(writer, "createCreditGrant", {"userId": ALICE, "amountCents": 10}))["id"]
        then = [ct(made, "grant", 10, 10, written_at, writer_id)]
    elif write == "void":
        await ok(writer, "voidCreditGrant", {"id": lasting})
        then = [ct(lasting, "void", -100, 0, written_at, writer_id)]
    else:  # expired first, then voided with nothing left
        await ok(writer, "voidCreditGrant", {"id": expiring})
        then = [ct(expiring, "void", 0, 0, written_at, writer_id)]
    rows = await credit_rows(api)
    assert rows[len(then) + 1:] == before
    assert without_ids(rows[:len(then) + 1]) == then + [
        # dated when written, by the key of the call that wrote it; only a grant with cents left
        ct(expiring, "expire", -650, 0, written_at, writer_id),
    ]
    grants = await grants_of(api)
    assert (grants[expiring]["remainingCents"], grants[spent]["remainingCents"]) == (0, 0)
    await assert_journal_sums(api)
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 1})
    assert [r["type"] for r in await credit_rows(api, grantId=expiring)] in (
        ["expire", "burn", "grant"], ["void", "expire", "burn", "grant"]), "expired once"
    assert [r["type"] for r in await credit_rows(api, grantId=spent)] == ["burn", "grant"], "nothing left to expire"


async def test_the_expire_row_is_written_by_the_sweep(api, clock, server):
    key = await key_id_of(server, api.key)
    a = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 300, "expiresIn": "30m"}))["id"]
    b = (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 200, "expiresIn": "30m"}))["id"]
    await ok(api, "burnCredits", {"userId": BOB, "amount": 50})
    clock.advance(seconds=3600)
    assert [r["type"] for r in await credit_rows(api)] == ["grant"]
    assert (await grants_of(api))[a]["active"] is False
    swept_at = clock()
    await sweep_once(server.app[STORE], swept_at)
    assert without_ids(await credit_rows(api)) == [ct(a, "expire", -300, 0, swept_at, "system"), ct(a, "grant", 300, 300, T0, key)]
    assert without_ids((await credit_rows(api, user=BOB))[:1]) == [ct(b, "expire", -150, 0, swept_at, "system", user=BOB)]
    for user in (ALICE, BOB):
        await assert_journal_sums(api, user)
    clock.advance(seconds=1)
    await sweep_once(server.app[STORE], clock())
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 10})
    assert [r["type"] for r in await credit_rows(api)] == ["expire", "grant"], "nothing journalled twice"


async def test_grant_id_narrows_and_unknown_or_foreign_grants_are_404(any_api, make_key):
    api = any_api
    g1 = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100}))["id"]
    g2 = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100}))["id"]
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 150})
    bobs = (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 100}))["id"]
    everything = await credit_rows(api)
    assert await credit_rows(api, grantId=g1) == [r for r in everything if r["grantId"] == g1]
    assert [(r["type"], r["amount"]) for r in await credit_rows(api, grantId=g2)] == [("burn", -50), ("grant", 100)]
    foreign = (await ok(api.with_key(await make_key("acme", "test")), "createCreditGrant", {"userId": ALICE, "amountCents": 1}))["id"]
    for grant in ("cg_nope", bobs, foreign):
        r = await api.call("listCreditTransactions", {"userId": ALICE, "grantId": grant})
        assert_error(api, r, "not_found", "credit grant not found", "grantId")
    r = await api.call("listCreditTransactions", {"userId": ALICE, "startingAfter": "ct_nope"})
    assert_error(api, r, "not_found", "not found", "startingAfter")
    bob_row = (await credit_rows(api, user=BOB))[0]["id"]
    r = await api.call("listCreditTransactions", {"userId": ALICE, "startingAfter": bob_row})
    assert_error(api, r, "not_found", "not found", "startingAfter")
    r = await api.call("listCreditTransactions", {"userId": ALICE, "grantId": g2, "startingAfter": everything[-1]["id"]})
    assert_error(api, r, "not_found", "not found", "startingAfter")  # a row of g1, not of g2


async def test_credit_journal_paging(any_api, clock):
    api = any_api
    g1 = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 1000}))["id"]
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 1000})
    for i in range(5):
        if i % 2:
            clock.advance(seconds=1)
        await ok(api, "burnCredits", {"userId": ALICE, "amount": 300})  # 300, 300, 300, 100+200, 300
    everything = await credit_rows(api)
    assert len(everything) == 8
    for limit, sizes in ((3, [3, 3, 2]), (1, [1] * 8), (8, [8])):
        pages = await every_page(api, "listCreditTransactions", "transactions", "id", limit, userId=ALICE)
        assert [len(p) for p in pages] == sizes and [r for p in pages for r in p] == everything, limit
    mine = [r for r in everything if r["grantId"] == g1]
    assert [r["type"] for r in mine] == ["burn"] * 4 + ["grant"]
    for limit in (1, 2):
        pages = await every_page(api, "listCreditTransactions", "transactions", "id", limit, userId=ALICE, grantId=g1)
        assert [r for p in pages for r in p] == mine, limit
    page = await listed(api, "listCreditTransactions", userId=ALICE, limit=7)
    assert (page["count"], page["hasMore"]) == (7, True)
    page = await listed(api, "listCreditTransactions", userId=ALICE, startingAfter=everything[-1]["id"])
    assert (page["count"], page["hasMore"], page["transactions"]) == (0, False, [])
    await assert_journal_sums(api)


async def test_invoice_preview_writes_no_journal_row(any_api, clock):
    api = any_api
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    await ok(api, "createPricingRule", {"meterId": meter, "unitPrice": 10})
    await ok(api, "recordMeterEvents", {"events": [{"meterId": meter, "userId": ALICE, "value": 5}]})
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 30})
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100, "expiresIn": "1h"})
    before = await credit_rows(api)
    grants = await grants_of(api)
    preview = await ok(api, "invoicePreview", {"userId": ALICE})
    assert (preview["subtotal"], preview["creditApplied"], preview["amountDue"]) == (50, 50, 0)
    clock.advance(seconds=7200)  # one grant expires: a preview does not journal it either
    preview = await ok(api, "invoicePreview", {"userId": ALICE})
    assert (preview["subtotal"], preview["creditApplied"], preview["amountDue"]) == (50, 30, 20)
    assert await credit_rows(api) == before
    assert {g: r["remainingCents"] for g, r in (await grants_of(api)).items()} == {g: r["remainingCents"] for g, r in grants.items()}
    await assert_journal_sums(api)


async def test_each_burn_id_names_exactly_the_rows_of_its_call_even_concurrently(api):
    for i in range(4):
        await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 250, "priority": i % 2})
    calls = [api.using(TRANSPORTS[i % 3]).call("burnCredits", {"userId": ALICE, "amount": 7 + i % 5 * 20}) for i in range(30)]
    burns = [r.result for r in await asyncio.gather(*calls)]
    assert all(burns) and sum(b["burned"] for b in burns) == 1000, "the grants run out: some burns get nothing"
    rows = [r for p in await every_page(api, "listCreditTransactions", "transactions", "id", 1000, userId=ALICE) for r in p]
    by_burn: dict[str, list[tuple[str, int, int]]] = {}
    for r in reversed(rows):  # oldest first: the order each burn wrote its rows
        if r["type"] == "burn":
            by_burn.setdefault(r["burnId"], []).append((r["grantId"], -r["amount"], r["remainingAfter"]))
    burned = [b for b in burns if b["burned"]]
    assert len(by_burn) == len(burned), "one burnId per call that burned"
    for b in burns:
        if b["burned"]:
            assert by_burn[b["burnId"]] == [(g["id"], g["burned"], g["remainingCents"]) for g in b["grants"]], b
        else:
            assert "burnId" not in b and b["grants"] == []
    await assert_journal_sums(api)


async def test_a_replayed_burn_answers_its_burn_id_and_writes_nothing(any_api):
    api = any_api
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 100})
    first = await ok(api, "burnCredits", {"userId": ALICE, "amount": 30}, idempotency_key="burn-1")
    rows = await credit_rows(api)
    again = await ok(api, "burnCredits", {"userId": ALICE, "amount": 30}, idempotency_key="burn-1")
    assert again == first and await credit_rows(api) == rows
    assert [r.get("burnId") for r in rows] == [first["burnId"], None]
