"""Many clients at once against the real server (real HTTP, one SQLite file, the single writer
with group commit), over REST, ZAP/JSON and ZAP/msgpack mixed. Each scenario fires at least 60
calls together with asyncio.gather, then checks that

- every caller got an answer the contract allows (and the same answer where it must: a repeated
  requestId, starter credit, meter event key or Idempotency-Key names one original),
- what the database holds equals exactly what was acknowledged: balances are recomputed from the
  answers the clients got, grants from the burns they were told about,
- check_invariants(db_path) holds (also after every test: the autouse fixture).

The last section proves the checker itself: a copy of a database after real traffic, corrupted
with one direct UPDATE or INSERT, must make check_invariants fail naming the problem.
"""
from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Awaitable, Iterable

import pytest
from conftest import REGISTRY, TRANSPORTS, Api, Reply, assert_error, balance, created_status, ledger_rows, ok
from invariants import check_invariants, copy_db, corrupt, find_violations
from zapbilling.app import STORE

CLIENTS = 60
ALICE, BOB, CAROL = "hanzo/alice", "hanzo/bob", "hanzo/carol"


@pytest.fixture(autouse=True)
async def invariants_hold_after_the_test(server, db_path):
    yield
    check_invariants(db_path)


# -- helpers --------------------------------------------------------------------------------------

def client(api: Api, i: int) -> Api:
    """The i-th client's transport: REST, ZAP/JSON, ZAP/msgpack in turn."""
    return api.using(TRANSPORTS[i % len(TRANSPORTS)])


async def together(calls: Iterable[Awaitable[Reply]]) -> list[Reply]:
    return list(await asyncio.gather(*calls))


def shuffled(items: list[Any], seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def assert_created(api: Api, r: Reply, what: str) -> Any:
    assert r.ok, (what, api.transport, r.status, r.error)
    assert r.status == created_status(api), (what, api.transport, r.status)
    return r.result


# -- deposits ---------------------------------------------------------------------------------------

async def test_concurrent_deposits_each_count_exactly_once(api, db_path):
    rng = random.Random(1)
    users, currencies = [f"hanzo/u{n}" for n in range(5)], ["usd", "eur", "jpy"]
    plan = [(i, rng.choice(users), rng.choice(currencies), rng.randint(1, 10_000), rng.choice([0, 0, 7])) for i in range(CLIENTS)]
    calls = [
        client(api, i).call("deposit", {"user": u, "currency": c, "amount": a, "expiresIn": e, "metadata": {"client": i}})
        for i, u, c, a, e in plan
    ]
    reads = [client(api, i).call("getBalance", {"user": users[0], "currency": "usd"}) for i in range(CLIENTS // 6)]
    replies = await together(calls + reads)
    deposits, peeks = replies[:CLIENTS], replies[CLIENTS:]

    expected: Counter[tuple[str, str]] = Counter()
    tx_ids = set()
    for (i, u, c, a, _), r in zip(plan, deposits):
        res = assert_created(client(api, i), r, "deposit")
        assert (res["user"], res["currency"], res["amount"], res["type"], res["metadata"]) == (u, c, a, "deposit", {"client": i})
        tx_ids.add(res["transactionId"])
        expected[(u, c)] += a
    assert len(tx_ids) == CLIENTS, "two deposits were given the same transaction id"
    # a read during the writes sees some of them, each whole: a sum of a subset of the deposits
    possible = {0}
    for _, u, c, a, _ in plan:
        if (u, c) == (users[0], "usd"):
            possible |= {p + a for p in possible}
    for r in peeks:
        assert r.ok and r.result["balance"] in possible and r.result["available"] == r.result["balance"], r

    for u in users:
        got = {b["currency"]: b["balance"] for b in (await ok(api, "getBalanceAll", {"user": u}))["balances"]}
        assert got == {c: v for (uu, c), v in expected.items() if uu == u}, u
        assert len(ledger_rows(db_path, u)) == sum(1 for _, uu, *_ in plan if uu == u)
    check_invariants(db_path)


# -- recordUsage with repeated requestIds ---------------------------------------------------------------

async def test_concurrent_usage_with_repeated_request_id_charges_once(api, db_path):
    await ok(api, "createMeter", {"name": "usage", "eventName": "api-usage"})
    meter = (await ok(api, "listMeters", {}))["meters"][0]["id"]
    for user in (ALICE, BOB):
        await ok(api, "deposit", {"user": user, "amount": 100_000})
    # ten requestIds for alice, each sent by six clients; five of the same ids for bob, twice each:
    # the dedupe is per user, so bob's are charges of their own
    sends = [(ALICE, f"req-{k}", 10 * (k + 1)) for k in range(10) for _ in range(6)]
    sends += [(BOB, f"req-{k}", 7 * (k + 1)) for k in range(5) for _ in range(2)]
    sends = shuffled(sends, 2)
    replies = await together(
        client(api, i).call("recordUsage", {"user": u, "amount": a, "requestId": rid, "model": "m", "provider": "p", "totalTokens": 3})
        for i, (u, rid, a) in enumerate(sends)
    )

    tx_by_request: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i, ((u, rid, a), r) in enumerate(zip(sends, replies)):
        res = assert_created(client(api, i), r, "recordUsage")
        assert (res["user"], res["amount"], res["currency"], res["type"]) == (u, a, "usd", "withdraw"), res
        tx_by_request[(u, rid)].add(res["transactionId"])
    for key, txs in tx_by_request.items():
        assert len(txs) == 1, f"{key}: one requestId charged {len(txs)} times: {txs}"
    all_tx = {next(iter(t)) for t in tx_by_request.values()}
    assert len(all_tx) == 15, "two requestIds (or users) share a transaction"

    charged = {u: sum(a for (uu, _, a) in set(sends) if uu == u) for u in (ALICE, BOB)}
    for user, n in ((ALICE, 10), (BOB, 5)):
        rows = ledger_rows(db_path, user, tags="api-usage")
        assert len(rows) == n and {r["id"] for r in rows} <= all_tx
        assert sum(r["amount"] for r in rows) == charged[user]
        assert await balance(api, user) == 100_000 - charged[user]
        page = await ok(api, "getUsage", {"user": user, "limit": 1000})
        assert page["count"] == n
        summary = await ok(api, "getMeterEventsSummary", {"meterId": meter, "userId": user})
        assert (summary["eventCount"], summary["value"]) == (n, charged[user]), "the usage meter event was recorded more than once"
    check_invariants(db_path)


# -- burns on shared credit grants -----------------------------------------------------------------------

async def _grants(api: Api, user: str) -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in (await ok(api, "listCreditGrants", {"userId": user}))["grants"]}


def _burn_totals(replies: list[Reply], api: Api, requested: list[int]) -> Counter[str]:
    """Per grant, what the acknowledged burns say they took; checks each answer's own sums."""
    per_grant: Counter[str] = Counter()
    for i, (r, amount) in enumerate(zip(replies, requested)):
        assert r.ok and r.status == 200, (client(api, i).transport, r)
        res = r.result
        assert res["requested"] == amount and res["burned"] + res["overage"] == amount, res
        assert res["burned"] == sum(g["burned"] for g in res["grants"]) and all(g["burned"] > 0 for g in res["grants"]), res
        for g in res["grants"]:
            per_grant[g["id"]] += g["burned"]
    return per_grant


async def test_concurrent_burns_never_burn_more_than_the_grants_hold(api, db_path):
    sizes = {"p0": (500, 0, None), "p1": (300, 1, "720h"), "p2": (200, 2, None)}
    ids = {}
    for name, (amount, priority, expires) in sizes.items():
        ids[name] = (await ok(api, "createCreditGrant", {"userId": ALICE, "name": name, "amountCents": amount, "priority": priority,
                                                         **({"expiresIn": expires} if expires else {})}))["id"]
    eur = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 1000, "currency": "eur"}))["id"]
    bobs = (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 250}))["id"]
    total = sum(a for a, _, _ in sizes.values())

    rng = random.Random(3)
    requested = [rng.randint(10, 40) for _ in range(CLIENTS)]
    assert sum(requested) > total
    calls = [client(api, i).call("burnCredits", {"userId": ALICE, "amount": a}) for i, a in enumerate(requested)]
    calls += [client(api, i).call("invoicePreview", {"userId": ALICE}) for i in range(6)]  # reads in between change nothing
    replies = await together(calls)
    burns = replies[:CLIENTS]
    per_grant = _burn_totals(burns, api, requested)

    burned = sum(r.result["burned"] for r in burns)
    assert burned == min(sum(requested), total), f"burned {burned} of grants holding {total} for {sum(requested)} requested"
    assert sum(r.result["overage"] for r in burns) == sum(requested) - burned
    grants = await _grants(api, ALICE)
    for name, gid in ids.items():
        assert grants[gid]["remainingCents"] == grants[gid]["amountCents"] - per_grant[gid] == 0, name
    assert grants[eur]["remainingCents"] == 1000 and eur not in per_grant, "a usd burn touched an eur grant"
    assert (await _grants(api, BOB))[bobs]["remainingCents"] == 250, "alice's burns touched bob's grant"
    assert (await ok(api, "getCreditBalance", {"userId": ALICE}))["balances"] == [{"currency": "eur", "available": 1000}]
    check_invariants(db_path)


async def test_concurrent_burns_honour_eligibility_and_account_every_cent(api, db_path):
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    only_meter = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 400, "eligibility": [meter]}))["id"]
    anything = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 300, "priority": 1}))["id"]
    voided = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 900, "priority": 2}))["id"]
    requested = [20] * CLIENTS
    with_meter = [i % 2 == 0 for i in range(CLIENTS)]
    calls = [
        client(api, i).call("burnCredits", {"userId": ALICE, "amount": a, **({"meterId": meter} if m else {})})
        for i, (a, m) in enumerate(zip(requested, with_meter))
    ]
    calls.append(api.call("voidCreditGrant", {"id": voided}))  # racing the burns: whatever they burned first stays burned
    replies = await together(calls)
    assert replies[-1].ok, replies[-1]
    burns = replies[:-1]
    per_grant = _burn_totals(burns, api, requested)

    for i, r in enumerate(burns):
        if not with_meter[i]:
            assert only_meter not in {g["id"] for g in r.result["grants"]}, "a burn without meterId used a meter-only grant"
    grants = await _grants(api, ALICE)
    for gid in (only_meter, anything):
        assert grants[gid]["remainingCents"] == grants[gid]["amountCents"] - per_grant[gid], gid
    # the void took whatever the burns had left of its grant: nothing remains, and its journal's
    # void row holds exactly that remainder (burns and void account for all 900 cents)
    assert (grants[voided]["voided"], grants[voided]["active"], grants[voided]["remainingCents"]) == (True, False, 0)
    journal = (await ok(api, "listCreditTransactions", {"userId": ALICE, "grantId": voided, "limit": 1000}))["transactions"]
    (void_row,) = [t for t in journal if t["type"] == "void"]
    assert void_row["amount"] == -(900 - per_grant[voided]) and void_row["remainingAfter"] == 0, void_row
    assert sum(t["amount"] for t in journal) == 0, journal
    # a burn left with overage found every grant it may use empty (or voided) at that moment, and
    # a grant only shrinks: so the grants it may use are empty at the end, the voided one aside
    if any(r.result["overage"] for r, m in zip(burns, with_meter) if not m):
        assert per_grant[anything] == 300, "a burn without meterId fell short while the open grant had credit"
    if any(r.result["overage"] for r, m in zip(burns, with_meter) if m):
        assert per_grant[only_meter] == 400 and per_grant[anything] == 300, "a metered burn fell short while credit was left"
    assert sum(r.result["burned"] for r in burns) == sum(per_grant.values()) <= 400 + 300 + 900
    check_invariants(db_path)


# -- invoice preview ------------------------------------------------------------------------------------

async def test_invoice_preview_reads_one_snapshot_while_usage_and_burns_land(api, db_path):
    """Writers each burn 1 cent of a grant, then record 1 unit of usage priced at 2 cents: at
    every moment the grant has been burned at least as often as usage was recorded. A preview
    shows both (creditApplied is all that is left of the grant, subtotal twice the usage), so
    one that read the grant before a burn and the usage after that burn's event breaks the
    rule. The metered meter comes after 30 empty ones, so a preview that reads each piece in
    its own transaction has time between the grant and the usage for writes to land."""
    for n in range(30):
        await ok(api, "createMeter", {"name": f"idle{n}", "eventName": f"idle{n}"})
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    await ok(api, "createPricingRule", {"meterId": meter, "unitPrice": 2})
    grant_cents = 10_000
    await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": grant_cents})
    # start with 4,000 burned and 4,000 used: the grant then never covers the whole subtotal,
    # so creditApplied is exactly what is left of it
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 4_000})
    await ok(api, "recordMeterEvents", {"events": [{"meterId": meter, "userId": ALICE, "value": 4_000}]})

    async def writer(w: int) -> None:
        for _ in range(25):
            burn = await client(api, w).call("burnCredits", {"userId": ALICE, "amount": 1})
            assert burn.ok and burn.result["burned"] == 1, burn
            event = await client(api, w).call("recordMeterEvents", {"events": [{"meterId": meter, "userId": ALICE, "value": 1}]})
            assert event.ok, event

    previews: list[dict[str, Any]] = []

    async def previewer(p: int) -> None:
        for _ in range(15):
            previews.append(await ok(client(api, p), "invoicePreview", {"userId": ALICE}))

    await asyncio.gather(*(writer(w) for w in range(6)), *(previewer(p) for p in range(4)))
    for preview in previews:
        used, burned = preview["subtotal"] // 2, grant_cents - preview["creditApplied"]
        assert burned >= used, f"a preview saw {used} units used but only {burned} cents burned: not one snapshot"
    final = await ok(api, "invoicePreview", {"userId": ALICE})
    assert (final["subtotal"], final["creditApplied"]) == (2 * (4_000 + 150), grant_cents - 4_000 - 150)


# -- duplicate meter events ------------------------------------------------------------------------------

async def test_concurrent_duplicate_meter_events_create_exactly_one(api, db_path):
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]

    def batch(i: int) -> list[dict[str, Any]]:
        return [
            {"meterId": meter, "userId": ALICE, "value": 7, "idempotency": "shared"},
            {"meterId": meter, "userId": ALICE, "value": i % 5 + 1, "idempotency": f"k-{i % 5}"},
            {"meterId": meter, "userId": ALICE, "value": 1},                                  # no key: always new
            {"meterId": meter, "userId": ALICE, "value": 7, "idempotency": "shared"},        # again within the batch
        ]

    replies = await together(client(api, i).call("recordMeterEvents", {"events": batch(i)}) for i in range(CLIENTS))
    by_key: dict[str, list[dict[str, str]]] = defaultdict(list)
    unkeyed = []
    for i, r in enumerate(replies):
        res = assert_created(client(api, i), r, "recordMeterEvents")
        assert res["count"] == 4 and len(res["events"]) == 4
        first, keyed, plain, again = res["events"]
        by_key["shared"].append(first)
        by_key[f"k-{i % 5}"].append(keyed)
        unkeyed.append(plain)
        assert again == {"id": first["id"], "status": "duplicate"}, "a repeat within one batch is a duplicate of the first"
    for key, outcomes in by_key.items():
        statuses = Counter(o["status"] for o in outcomes)
        assert statuses["created"] == 1, f"key {key!r}: {statuses['created']} created among {len(outcomes)} concurrent sends"
        assert len({o["id"] for o in outcomes}) == 1, f"key {key!r}: duplicates report different ids"
    assert all(o["status"] == "created" for o in unkeyed) and len({o["id"] for o in unkeyed}) == CLIENTS

    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter, "userId": ALICE})
    assert summary["eventCount"] == 1 + 5 + CLIENTS
    assert summary["value"] == 7 + sum(range(1, 6)) + CLIENTS
    check_invariants(db_path)


# -- refunds against one original --------------------------------------------------------------------------

async def test_concurrent_refunds_never_exceed_the_original(api, db_path):
    """Two charges refunded by many clients at once, with refunds of a deposit (not a charge)
    among them: every one of those is refused, whatever the interleaving."""
    deposit = (await ok(api, "deposit", {"user": ALICE, "amount": 2000}))["transactionId"]
    big = (await ok(api, "recordUsage", {"user": ALICE, "amount": 1000, "model": "m"}))["transactionId"]
    usage = (await ok(api, "recordUsage", {"user": ALICE, "amount": 600, "model": "m"}))["transactionId"]
    rng = random.Random(5)
    plan = [(big, 30) for _ in range(40)] + [(usage, rng.randint(20, 60)) for _ in range(20)] + [(deposit, 10) for _ in range(6)]
    plan = shuffled(plan, 6)
    replies = await together(
        client(api, i).call("refund", {"user": ALICE, "amount": a, "originalTransactionId": o}) for i, (o, a) in enumerate(plan)
    )

    accepted: Counter[str] = Counter()
    rejected: dict[str, list[int]] = defaultdict(list)
    for i, ((original, amount), r) in enumerate(zip(plan, replies)):
        c = client(api, i)
        if r.ok:
            res = assert_created(c, r, "refund")
            assert (res["amount"], res["originalTransactionId"], res["tags"], res["type"]) == (amount, original, "refund", "deposit")
            accepted[original] += amount
        elif original == deposit:
            assert_error(c, r, "invalid_params", f"only a charge can be refunded: {deposit} is a deposit", param="originalTransactionId")
            rejected[original].append(amount)
        else:
            assert_error(c, r, "invalid_params", "refund exceeds original", param="amount")
            rejected[original].append(amount)
    assert accepted[big] == 990 and len(rejected[big]) == 7, "33 refunds of 30 fit in 1000, no more and no fewer"
    assert accepted[usage] <= 600 and rejected[usage], "the usage refunds ask for more than 600 in all"
    assert min(rejected[usage]) > 600 - accepted[usage], "a refund that still fitted was refused"
    assert accepted[deposit] == 0 and len(rejected[deposit]) == 6, "a deposit is no charge"
    for original, amount in ((big, 1000), (usage, 600), (deposit, 2000)):
        (row,) = [r for r in ledger_rows(db_path, ALICE) if r["id"] == original]
        assert row["refunded"] == accepted[original] <= amount
        assert sum(r["amount"] for r in ledger_rows(db_path, ALICE, refund_of=original)) == accepted[original]
    assert await balance(api, ALICE) == 2000 - 1000 - 600 + accepted[big] + accepted[usage]
    check_invariants(db_path)


# -- starter credit ------------------------------------------------------------------------------------------

async def test_concurrent_starter_credit_is_granted_once_per_user(api, db_path):
    users = [ALICE] * 50 + [BOB] * 10
    replies = await together(client(api, i).call("grantStarterCredit", {"user": u}) for i, u in enumerate(users))
    txs: dict[str, set[str]] = defaultdict(set)
    for i, (u, r) in enumerate(zip(users, replies)):
        res = assert_created(client(api, i), r, "grantStarterCredit")
        assert (res["user"], res["amount"], res["currency"], res["tags"]) == (u, 500, "usd", "starter-credit")
        txs[u].add(res["transactionId"])
    for u in (ALICE, BOB):
        assert len(txs[u]) == 1, f"{u} was granted starter credit {len(txs[u])} times"
        assert [r["id"] for r in ledger_rows(db_path, u, tags="starter-credit")] == list(txs[u])
        assert await balance(api, u) == 500
    check_invariants(db_path)


# -- Idempotency-Key -------------------------------------------------------------------------------------------

async def test_concurrent_same_idempotency_key_on_deposit_writes_once(api, db_path):
    params = {"user": ALICE, "amount": 4321, "currency": "eur", "notes": "once"}
    replies = await together(client(api, i).call("deposit", dict(params), idempotency_key="dep-1") for i in range(CLIENTS))
    results = [assert_created(client(api, i), r, "deposit") for i, r in enumerate(replies)]
    assert all(res == results[0] for res in results), "a replay answered differently from the original"
    assert len(ledger_rows(db_path, ALICE)) == 1
    assert await balance(api, ALICE, "eur") == 4321
    check_invariants(db_path)


async def test_concurrent_same_idempotency_key_with_different_params_writes_one_of_them(api, db_path):
    amounts = shuffled([100] * 30 + [200] * 30, 8)
    replies = await together(
        client(api, i).call("deposit", {"user": ALICE, "amount": a}, idempotency_key="dep-2") for i, a in enumerate(amounts)
    )
    winners = {r.result["amount"] for r in replies if r.ok}
    assert len(winners) == 1, f"both param sets were written under one key: {winners}"
    (won,) = winners
    txs = set()
    for i, (a, r) in enumerate(zip(amounts, replies)):
        if a == won:
            txs.add(assert_created(client(api, i), r, "deposit")["transactionId"])
        else:
            assert_error(client(api, i), r, "conflict", "idempotency key", param="idempotencyKey")
    assert len(txs) == 1
    assert [r["amount"] for r in ledger_rows(db_path, ALICE)] == [won]
    assert await balance(api, ALICE) == won
    check_invariants(db_path)


# -- holds (when the schema has them) ------------------------------------------------------------------------------

needs_holds = pytest.mark.skipif("billing.createHold" not in REGISTRY.commands, reason="the schema has no holds yet")


@needs_holds
async def test_concurrent_holds_never_exceed_available(api, db_path):
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    replies = await together(client(api, i).call("createHold", {"user": ALICE, "amount": 40}) for i in range(CLIENTS))
    held = []
    for i, r in enumerate(replies):
        if r.ok:
            res = assert_created(client(api, i), r, "createHold")
            assert (res["status"], res["amount"]) == ("pending", 40), res
            held.append(res["holdId"])
        else:
            assert_error(client(api, i), r, "insufficient_funds", "insufficient funds", param="amount")
    assert len(held) == len(set(held)) == 25, "25 holds of 40 fit in 1000, no more and no fewer"
    assert await ok(api, "getBalance", {"user": ALICE}) == {"user": ALICE, "currency": "usd", "balance": 1000, "holds": 1000, "available": 0}
    check_invariants(db_path)


@needs_holds
async def test_concurrent_settlements_settle_each_hold_once(api, db_path):
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    holds = [(await ok(api, "createHold", {"user": ALICE, "amount": 50}))["holdId"] for _ in range(12)]
    racing, keyed = holds[:10], holds[10]
    plan = [(h, "captureHold", {"id": h, "amount": 20 + n}, None) for n, h in enumerate(racing) for _ in range(3)]
    plan += [(h, "releaseHold", {"id": h}, None) for h in racing for _ in range(3)]
    plan += [(keyed, "captureHold", {"id": keyed, "amount": 30}, "capture-once") for _ in range(8)]
    plan = shuffled(plan, 11)
    replies = await together(client(api, i).call(m, dict(p), idempotency_key=k) for i, (_, m, p, k) in enumerate(plan))

    settled: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, ((hold, method, params, key), r) in enumerate(zip(plan, replies)):
        if r.ok:
            settled[hold].append(r.result)
            assert r.result["status"] == ("captured" if method == "captureHold" else "released"), r.result
        else:
            assert key is None, ("a retry with the capture's Idempotency-Key must get the original result", r)
            assert_error(client(api, i), r, "conflict", "hold is not pending")
    for hold in racing:
        assert len(settled[hold]) == 1, f"hold {hold} settled {len(settled[hold])} times"
    assert len(settled[keyed]) == 8 and all(res == settled[keyed][0] for res in settled[keyed]), "replays differ"
    captured = {h: settled[h][0] for h in holds[:11] if settled[h][0]["status"] == "captured"}  # replays counted once
    assert {res["transactionId"] for res in captured.values()} == {r["id"] for r in ledger_rows(db_path, ALICE, type="withdraw")}
    charged = sum(res["capturedAmount"] for res in captured.values())
    assert await ok(api, "getBalance", {"user": ALICE}) == {
        "user": ALICE, "currency": "usd", "balance": 1000 - charged, "holds": 50, "available": 1000 - charged - 50}
    check_invariants(db_path)


# -- everything at once -------------------------------------------------------------------------------------------

async def test_big_mixed_scenario_totals_equal_what_was_acknowledged(api, clock, db_path):
    users = [ALICE, BOB, CAROL]
    meter = (await ok(api, "createMeter", {"name": "usage", "eventName": "api-usage"}))["id"]
    grant_ids = [(await ok(api, "createCreditGrant", {"userId": u, "amountCents": 400, "priority": n}))["id"]
                 for n, u in enumerate([ALICE, ALICE, BOB])]
    original = await ok(api, "recordUsage", {"user": BOB, "amount": 500, "currency": "eur", "model": "m"})  # a charge to refund
    # carol's expiring credit: 100 of 300 spent, then it expires; the first write forfeits 200, once
    await ok(api, "deposit", {"user": CAROL, "amount": 300, "expiresIn": 1})
    await ok(api, "recordUsage", {"user": CAROL, "amount": 100, "model": "m"})
    clock.advance(days=2)
    setup_rows = {u: len(ledger_rows(db_path, u)) for u in users}

    ops: list[tuple[str, str, dict[str, Any], str | None]] = []  # (kind, method, params, idempotency key)
    rng = random.Random(9)
    for n in range(24):
        u, c = rng.choice(users), rng.choice(["usd", "eur"])
        ops.append(("deposit", "deposit", {"user": u, "currency": c, "amount": rng.randint(1, 5000)}, None))
    for _ in range(6):
        ops.append(("deposit", "deposit", {"user": ALICE, "amount": 777}, "mixed-key"))
    for k in range(6):
        for _ in range(3):
            ops.append(("usage", "recordUsage", {"user": users[k % 3], "amount": 11 * (k + 1), "requestId": f"mix-{k}", "model": "m"}, None))
    for u in users:
        for _ in range(4):
            ops.append(("starter", "grantStarterCredit", {"user": u}, None))
    for _ in range(12):
        ops.append(("refund", "refund", {"user": BOB, "currency": "eur", "amount": 60, "originalTransactionId": original["transactionId"]}, None))
    for n in range(16):
        ops.append(("burn", "burnCredits", {"userId": ALICE if n % 4 else BOB, "amount": 90}, None))
    for n in range(8):
        ops.append(("events", "recordMeterEvents", {"events": [{"meterId": meter, "userId": CAROL, "value": 5, "idempotency": f"ev-{n % 3}"}]}, None))
    for u in users:
        ops.append(("read", "getBalanceAll", {"user": u}, None))
        ops.append(("read", "invoicePreview", {"userId": u}, None))
    ops = shuffled(ops, 10)
    assert len(ops) >= 90
    replies = await together(client(api, i).call(m, p, idempotency_key=k) for i, (_, m, p, k) in enumerate(ops))

    expected: Counter[tuple[str, str]] = Counter({(BOB, "eur"): -500, (CAROL, "usd"): 0})
    seen_tx: set[str] = set()
    burned: Counter[str] = Counter()
    events: dict[str, list[tuple[str, str]]] = defaultdict(list)
    usage_tx: dict[tuple[str, str], set[str]] = defaultdict(set)
    refunded = 0
    for i, ((kind, method, p, _), r) in enumerate(zip(ops, replies)):
        c = client(api, i)
        if kind == "refund" and not r.ok:
            assert_error(c, r, "invalid_params", "refund exceeds original")
            continue
        assert r.ok, (kind, c.transport, p, r)
        res = r.result
        if kind in ("deposit", "usage", "starter", "refund"):
            if kind == "usage":
                usage_tx[(p["user"], p["requestId"])].add(res["transactionId"])
            if res["transactionId"] in seen_tx:
                continue  # a replay of an acknowledged write: counted once
            seen_tx.add(res["transactionId"])
            sign = -1 if res["type"] == "withdraw" else 1
            expected[(res["user"], res["currency"])] += sign * res["amount"]
            refunded += res["amount"] if kind == "refund" else 0
        elif kind == "burn":
            assert ("burnId" in res) == bool(res["grants"]), res
            for g in res["grants"]:
                burned[g["id"]] += g["burned"]
        elif kind == "events":
            events[p["events"][0]["idempotency"]].append((res["events"][0]["id"], res["events"][0]["status"]))
    expected[(CAROL, "usd")] += 300 - 100 - 200  # the setup: deposit, usage, forfeit of the expired rest

    assert all(len(t) == 1 for t in usage_tx.values()), usage_tx
    assert refunded == 480, "12 refunds of 60 against 500: 8 fit"
    for u in users:
        got = {b["currency"]: b["balance"] for b in (await ok(api, "getBalanceAll", {"user": u}))["balances"]}
        assert got == {c: v for (uu, c), v in expected.items() if uu == u}, u
    acknowledged: Counter[str] = Counter()  # rows the scenario wrote, per user (forfeits aside)
    for u in users:
        rows = ledger_rows(db_path, u)
        new = [r for r in rows[setup_rows[u]:] if r["tags"] != "credit-expired"]
        assert {r["id"] for r in new} <= seen_tx and len(new) == len({r["id"] for r in new})
        acknowledged[u] = len(new)
    assert sum(acknowledged.values()) == len(seen_tx), "a row was written that no client was told about, or the reverse"
    forfeits = ledger_rows(db_path, CAROL, tags="credit-expired")
    assert [r["amount"] for r in forfeits] == [200], "the expired remainder was forfeited more or less than once"

    grants = {**await _grants(api, ALICE), **await _grants(api, BOB)}
    for gid in grant_ids:
        assert grants[gid]["remainingCents"] == 400 - burned[gid], gid
    assert burned[grant_ids[0]] + burned[grant_ids[1]] == 800, "12 burns of 90 for alice exhaust her 800"
    assert burned[grant_ids[2]] == 360, "4 burns of 90 for bob fit in his 400"
    for key, outcomes in events.items():
        assert len({e for e, _ in outcomes}) == 1, f"event key {key}: several ids {outcomes}"
        assert [s for _, s in outcomes].count("created") == 1, f"event key {key}: {outcomes}"
    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter, "userId": CAROL})
    carol_usage = {p["requestId"]: p["amount"] for kind, _, p, _ in ops if kind == "usage" and p["user"] == CAROL}
    # one event per event key, one per charged requestId, and the setup's usage of 100
    assert summary["eventCount"] == 3 + len(carol_usage) + 1
    assert summary["value"] == 3 * 5 + sum(carol_usage.values()) + 100
    check_invariants(db_path)


@pytest.mark.sqlite_only("the SQLite writer's group commit")
async def test_concurrent_clients_really_share_group_commits(api, server, db_path):
    """A guard on the suite itself: the calls above reach the single writer together, so that
    several jobs share one commit (were it never so, these tests would prove little)."""
    writer = server.app[STORE]._writer
    batches: list[int] = []
    run_batch = writer._run_batch
    writer._run_batch = lambda jobs: (batches.append(len(jobs)), run_batch(jobs))[1]
    replies = await together(client(api, i).call("deposit", {"user": ALICE, "amount": 1}) for i in range(CLIENTS))
    assert all(r.ok for r in replies)
    assert sum(batches) == CLIENTS and max(batches) > 1, f"commit batch sizes: {batches}"
    assert await balance(api, ALICE) == CLIENTS
    check_invariants(db_path)


# -- the checker catches corruption ---------------------------------------------------------------------------------

@pytest.fixture
async def traffic(api, make_key, clock, db_path) -> dict[str, str]:
    """A database after real traffic of every kind the checker looks at; returns ids in it."""
    ids: dict[str, str] = {}
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    ids["deposit"] = (await ok(api, "deposit", {"user": ALICE, "amount": 1000}))["transactionId"]
    await ok(api, "deposit", {"user": ALICE, "amount": 300, "currency": "eur", "expiresIn": 1})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 120, "currency": "eur", "requestId": "r1", "model": "m"})
    clock.advance(days=2)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 5, "currency": "eur", "model": "m"})  # forfeits 180 eur
    await ok(api, "deposit", {"user": BOB, "amount": 400, "expiresIn": 30})
    ids["charge"] = (await ok(api, "recordUsage", {"user": ALICE, "amount": 1000, "model": "m"}))["transactionId"]
    ids["refund"] = (await ok(api, "refund", {"user": ALICE, "amount": 250, "originalTransactionId": ids["charge"]}))["transactionId"]
    await ok(api, "grantStarterCredit", {"user": BOB})
    ids["grant"] = (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 800}))["id"]
    await ok(api, "burnCredits", {"userId": ALICE, "amount": 300})
    await ok(api, "recordMeterEvents", {"events": [{"meterId": meter, "userId": ALICE, "value": 3, "idempotency": "k1"}]})
    other = api.with_key(await make_key("globex", "test"))
    await ok(other, "deposit", {"user": ALICE, "amount": 50})
    assert [r["tags"] for r in ledger_rows(db_path, ALICE, tags="credit-expired")] == ["credit-expired"]
    return ids


def violations_of(path: str) -> str:
    with pytest.raises(AssertionError) as caught:
        check_invariants(path)
    return str(caught.value)


INSERT_COPY = (
    "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, expires_at, remaining,"
    " refund_of, refunded, dedupe_key, key_id, hold_id) SELECT id || '-copy', tenant, user_id, currency, type, amount, tags, notes,"
    " metadata, created_at, expires_at, remaining, refund_of, refunded, NULL, key_id, hold_id FROM ledger WHERE {where}"
)


async def test_checker_passes_on_real_traffic(traffic, db_path, tmp_path):
    assert find_violations(db_path) == []
    assert find_violations(copy_db(db_path, tmp_path / "copy.db")) == []


async def test_checker_catches_a_balance_off_by_one(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "UPDATE balances SET balance = balance + 1 WHERE tenant = 1 AND user_id = 'hanzo/alice' AND currency = 'usd'")
    message = violations_of(path)
    assert "1 invariant violation(s)" in message
    assert "balance of tenant 1 user 'hanzo/alice' usd: stored 251 != ledger sum 250 (off by +1)" in message, message


async def test_checker_lists_every_violation_not_just_the_first(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "UPDATE balances SET balance = balance - 3 WHERE user_id = 'hanzo/bob'",
            "UPDATE balances SET balance = balance + 2 WHERE user_id = 'hanzo/alice' AND currency = 'eur'")
    message = violations_of(path)
    assert "2 invariant violation(s)" in message
    assert "'hanzo/bob' usd" in message and "(off by -3)" in message and "'hanzo/alice' eur" in message and "(off by +2)" in message


@pytest.mark.parametrize("remaining, says", [("amount + 5", "> amount 800"), ("-1", "remaining -1 is negative")])
async def test_checker_catches_a_wrong_grant_remainder(traffic, db_path, tmp_path, remaining, says):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, f"UPDATE credit_grants SET remaining = {remaining} WHERE id = ?", params=(traffic["grant"],))
    message = violations_of(path)
    assert f"credit grant {traffic['grant']}" in message and says in message, message


async def test_checker_catches_a_duplicate_refund(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, INSERT_COPY.format(where="id = ?"), params=(traffic["refund"],))
    message = violations_of(path)
    assert f"original {traffic['charge']}: refunds sum to 500 but its refunded column is 250" in message, message
    assert "'hanzo/alice' usd: stored" in message, "the extra refund row is also missing from the balance"


async def test_checker_catches_a_refund_beyond_its_original(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "UPDATE ledger SET amount = 1001 WHERE id = ?", params=(traffic["refund"],))
    message = violations_of(path)
    assert f"original {traffic['charge']}: refunds sum to 1001, more than its amount 1000" in message, message


async def test_checker_catches_a_non_positive_ledger_amount(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "UPDATE ledger SET amount = 0 WHERE id = ?", params=(traffic["deposit"],))
    assert f"ledger row {traffic['deposit']} (tenant 1, hanzo/alice, usd, deposit): amount 0 <= 0" in violations_of(path)


async def test_checker_catches_an_expiring_remainder_out_of_range(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "UPDATE ledger SET remaining = amount + 1 WHERE user_id = 'hanzo/bob' AND tags = ''")
    assert "remaining 401 outside 0..400" in violations_of(path)


async def test_checker_catches_a_double_forfeit(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, INSERT_COPY.format(where="tags = 'credit-expired'"))
    message = violations_of(path)
    assert "forfeited 2 times" in message and "'hanzo/alice' eur: stored" in message, message


async def test_checker_catches_a_duplicate_meter_event_key(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "DROP INDEX meter_events_dedupe",  # as a bad migration might: the checker does not rely on it
            "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at)"
            " SELECT id || '-copy', tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at FROM meter_events")
    assert "idempotency key 'k1' appears 2 times in tenant 1" in violations_of(path)


@pytest.mark.sqlite_only("PRAGMA foreign_key_check")
async def test_checker_catches_a_foreign_key_violation(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    corrupt(path, "INSERT INTO api_keys (id, tenant, scope, hash, hint, created_at) VALUES ('key_x', 999, 'admin', 'h', 'zb', 0)")
    message = violations_of(path)
    assert "PRAGMA foreign_key_check: api_keys" in message and "api_keys: 1 row(s) of tenant 999" in message, message


@pytest.mark.sqlite_only("a damaged SQLite index")
async def test_checker_catches_a_damaged_index(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    con = sqlite3.connect(path)
    (page_size,), = con.execute("PRAGMA page_size").fetchall()
    (root,), = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ledger_dedupe'").fetchall()
    con.close()
    data = bytearray(Path(path).read_bytes())
    page = slice((root - 1) * page_size, root * page_size)
    at = data[page].find(b"usage:r1")
    assert at >= 0, "the dedupe index page holds the usage key"
    data[page.start + at + len("usage:")] = ord("X")  # the index entry no longer matches its row
    Path(path).write_bytes(bytes(data))
    assert "PRAGMA integrity_check:" in violations_of(path)


@pytest.mark.sqlite_only("rebuilds SQLite tables by hand")
async def test_checker_catches_bad_holds_and_skips_a_missing_holds_table(traffic, db_path, tmp_path):
    path = copy_db(db_path, tmp_path / "copy.db")
    con = sqlite3.connect(path)
    has_holds = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'holds'").fetchone() is not None
    con.close()
    if not has_holds:
        assert find_violations(path) == [], "no holds table: nothing to check there"
        corrupt(path, "CREATE TABLE holds (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant INTEGER NOT NULL,"
                      " user_id TEXT NOT NULL, currency TEXT NOT NULL, amount INTEGER NOT NULL, status TEXT NOT NULL,"
                      " expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL, captured_amount INTEGER, transaction_id TEXT)")
    insert = ("INSERT INTO holds (id, tenant, user_id, currency, amount, status, expires_at, created_at, captured_amount, transaction_id)"
              " VALUES (?, 1, 'hanzo/alice', 'usd', 100, ?, 0, 0, ?, ?)")
    for hold in (("hold_ok", "released", None, None), ("hold_over", "captured", 150, traffic["deposit"]), ("hold_odd", "bogus", None, None)):
        corrupt(path, insert, params=hold)
    message = violations_of(path)
    assert "hold hold_over: captured amount 150 outside 1..100" in message, message
    assert f"hold hold_over: captured 150, but its transaction {traffic['deposit']} is a deposit of 1000" in message, message
    assert "hold hold_odd: unknown status 'bogus'" in message, message
    assert "hold_ok" not in message, message


async def test_checker_reports_an_unreadable_file(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 300)
    with pytest.raises(AssertionError, match="cannot be read|cannot open"):
        check_invariants(path)
    with pytest.raises(AssertionError, match="no database file"):
        check_invariants(tmp_path / "missing.db")
