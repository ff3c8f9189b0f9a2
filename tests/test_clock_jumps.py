"""The clock jumps backwards and forwards (issue 16, item 3): the server's clock is injected
(conftest's FakeClock) and moved between calls, hours and days either way, on the real server and
a real SQLite file. What must hold whatever the clock does:

- no negative duration in an answer: expiresAt >= createdAt, and a hold's settledAt >= its
  createdAt (a hold captured or released after the clock went back behind its creation is
  settled at its creation instant: the store never dates a row's change before the row);
- nothing expires before its expiresAt as the clock says: a hold or an expiring deposit made
  before the clock went back is not expired afterwards, and is spent and held as before; once
  the clock passes expiresAt it expires, and what a write or the sweep recorded then (a forfeit
  of expired credit, a hold marked expired) stays so when the clock goes back again;
- ids stay unique, and lists keep their stated order and page without a gap or a repeat, when
  the clock ids are made from (time.time_ns, the real clock, not the injected one) jumps
  backwards, so that ids made later sort earlier: nothing orders or pages by id. An id made
  twice (clock stopped, random part fixed) is refused by the UNIQUE index, never stored twice;
- idempotency keys are not dropped early by a forward jump: the sweep's horizon advances at
  most as fast as real time since the process's last purge (store/connection.py).

What a jump does not change: times are the clock's. Rows written after the clock went back carry
the earlier times (a capture's charge may be dated before its hold). Histories ordered by time
(listTransactions, listCreditTransactions: newest createdAt first, one instant's rows last
written first) put such rows among the older ones; lists ordered by writing (getUsage, listHolds,
listCreditGrants) do not move them; createdAfter/createdBefore select by the times rows carry.
"""
from __future__ import annotations

import re
import time
from types import SimpleNamespace
from datetime import datetime, timezone
from typing import Any

from conftest import ok

from invariants import check_invariants
from zapbilling.app import STORE, sweep_once
from zapbilling.store import ids

ALICE = "hanzo/alice"
HOUR = 3600
DAY = 86_400


def us(text: str) -> int:
    delta = datetime.fromisoformat(text.replace("Z", "+00:00")) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * DAY + delta.seconds) * 1_000_000 + delta.microseconds


def no_negative_duration(hold: dict[str, Any]) -> None:
    created = us(hold["createdAt"])
    assert us(hold["expiresAt"]) >= created, hold
    if "settledAt" in hold:
        assert us(hold["settledAt"]) >= created, f"settled before it was created: {hold}"


async def holds_of(api, user: str = ALICE) -> list[dict[str, Any]]:
    page = await ok(api, "listHolds", {"user": user, "limit": 1000})
    for h in page["holds"]:
        no_negative_duration(h)
    return page["holds"]


async def test_a_hold_settled_after_the_clock_went_back_is_not_settled_before_its_creation(any_api, clock, db_path):
    await ok(any_api, "deposit", {"user": ALICE, "amount": 1000})
    captured = await ok(any_api, "createHold", {"user": ALICE, "amount": 300, "expiresIn": 600})
    released = await ok(any_api, "createHold", {"user": ALICE, "amount": 200, "expiresIn": 600})
    clock.advance(seconds=-HOUR)  # behind both holds' creation

    # not expired early: both still pending and held
    for h in (captured, released):
        got = await ok(any_api, "getHold", {"id": h["holdId"]})
        assert got["status"] == "pending", got
    assert (await ok(any_api, "getBalance", {"user": ALICE}))["holds"] == 500

    c = await ok(any_api, "captureHold", {"id": captured["holdId"], "amount": 250, "model": "m"})
    r = await ok(any_api, "releaseHold", {"id": released["holdId"]})
    for settled, made in ((c, captured), (r, released)):
        no_negative_duration(settled)
        assert settled["createdAt"] == made["createdAt"] and settled["expiresAt"] == made["expiresAt"], settled
        assert settled["settledAt"] == made["createdAt"], "settled at its creation, the earliest it can be"
    assert c["status"] == "captured" and r["status"] == "released"
    # the charge itself carries the clock's time (rows are dated by the clock; only a row's own
    # change is kept from going before the row)
    charge = (await ok(any_api, "listTransactions", {"user": ALICE, "type": "withdraw"}))["transactions"][0]
    assert charge["transactionId"] == c["transactionId"] and us(charge["createdAt"]) == clock.now, charge
    assert (await ok(any_api, "getBalance", {"user": ALICE})) == {
        "user": ALICE, "currency": "usd", "balance": 750, "holds": 0, "available": 750}

    clock.advance(days=2)  # and far ahead: nothing changes what was settled
    for h in await holds_of(any_api):
        assert h["status"] in ("captured", "released"), h
    check_invariants(db_path)


async def test_a_hold_expires_when_the_clock_passes_expires_at_and_stays_expired(api, server, clock, db_path):
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    h = await ok(api, "createHold", {"user": ALICE, "amount": 400, "expiresIn": 60})
    clock.advance(seconds=-DAY)
    assert (await ok(api, "getHold", {"id": h["holdId"]}))["status"] == "pending"
    clock.advance(seconds=DAY + 59)  # 59 s after its creation
    assert (await ok(api, "getHold", {"id": h["holdId"]}))["status"] == "pending"
    assert (await ok(api, "getBalance", {"user": ALICE}))["holds"] == 400
    clock.advance(seconds=1)  # exactly at expiresAt
    expired = await ok(api, "getHold", {"id": h["holdId"]})
    assert expired["status"] == "expired" and expired["settledAt"] == expired["expiresAt"], expired
    await sweep_once(server.app[STORE], clock())  # recorded as expired
    clock.advance(seconds=-HOUR)  # back behind expiresAt: what was recorded stands
    again = await ok(api, "getHold", {"id": h["holdId"]})
    assert again == expired, again
    no_negative_duration(again)
    r = await api.call("captureHold", {"id": h["holdId"], "amount": 1, "model": "m"})
    assert r.error and r.error["kind"] == "conflict" and "expired" in r.error["message"], r
    assert (await ok(api, "getBalance", {"user": ALICE}))["holds"] == 0
    check_invariants(db_path)


async def test_expiring_deposits_expire_by_the_clock_never_early_and_forfeits_stand(api, clock, db_path):
    await ok(api, "deposit", {"user": ALICE, "amount": 1000, "expiresIn": 1})  # one day
    clock.advance(days=-2)  # before the deposit was made: it is not expired, and is spent first
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 1000
    await ok(api, "recordUsage", {"user": ALICE, "amount": 100, "model": "m", "requestId": "r1"})
    await ok(api, "deposit", {"user": ALICE, "amount": 50, "expiresIn": 1})  # expires before the first was made
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 950

    clock.advance(days=3, seconds=-1)  # a second before the first expires (the second expired two days ago)
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 900
    clock.advance(seconds=1)  # the first expires: what is left of it (900, after the usage) no longer counts
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 0
    await ok(api, "deposit", {"user": ALICE, "amount": 5})  # a write forfeits the expired credit
    clock.advance(days=-3)  # far back: the forfeits stand, nothing comes back
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 5
    rows = (await ok(api, "listTransactions", {"user": ALICE}))["transactions"]
    forfeits = [t for t in rows if t["tags"] == "credit-expired"]
    assert sorted(t["amount"] for t in forfeits) == [50, 900], rows
    lots = {t["amount"]: t for t in rows if t["type"] == "deposit" and "expiresAt" in t}
    assert set(lots) == {1000, 50}, rows
    for lot in lots.values():
        assert us(lot["expiresAt"]) - us(lot["createdAt"]) == DAY * 1_000_000, lot
    for f in forfeits:  # each forfeit is dated at or after the expiry of what it forfeited
        lot = lots[1000 if f["amount"] == 900 else 50]
        assert us(f["createdAt"]) >= us(lot["expiresAt"]), (f, lot)
    check_invariants(db_path)


async def test_credit_grants_expire_by_the_clock_never_early_and_expiry_stands(api, server, clock, db_path):
    g = await ok(api, "createCreditGrant", {"userId": ALICE, "name": "promo", "amountCents": 500, "expiresIn": "1h"})
    assert us(g["expiresAt"]) - us(g["createdAt"]) == HOUR * 1_000_000
    clock.advance(seconds=HOUR - 1)
    burn = await ok(api, "burnCredits", {"userId": ALICE, "amount": 100})
    assert burn["burned"] == 100, burn
    clock.advance(seconds=1)  # at expiresAt: expired
    listed = (await ok(api, "listCreditGrants", {"userId": ALICE}))["grants"]
    assert [x["active"] for x in listed] == [False]
    await sweep_once(server.app[STORE], clock())  # journals the expiry of the 400 left
    clock.advance(seconds=-2 * HOUR)  # behind the expiry, even behind the grant's creation
    assert (await ok(api, "burnCredits", {"userId": ALICE, "amount": 100}))["burned"] == 0
    listed = (await ok(api, "listCreditGrants", {"userId": ALICE}))["grants"]
    assert [(x["remainingCents"], x["active"]) for x in listed] == [(0, False)], listed
    assert us(listed[0]["expiresAt"]) >= us(listed[0]["createdAt"])
    journal = (await ok(api, "listCreditTransactions", {"userId": ALICE}))["transactions"]
    assert [(t["type"], t["amount"]) for t in journal] == [("expire", -400), ("burn", -100), ("grant", 500)], journal
    check_invariants(db_path)


async def test_a_credit_grant_made_before_the_clock_went_back_can_be_burned_after(api, clock):
    """A grant is effective from its creation on: a clock set back behind it must not hide it
    (burns charged overage for credit the user had)."""
    grant = await ok(api, "createCreditGrant", {"userId": ALICE, "name": "promo", "amountCents": 500, "expiresIn": "1h"})
    clock.advance(seconds=-60)
    (listed,) = (await ok(api, "listCreditGrants", {"userId": ALICE}))["grants"]
    assert (listed["id"], listed["active"]) == (grant["id"], True)
    assert await ok(api, "getCreditBalance", {"userId": ALICE}) == {"userId": ALICE, "balances": [{"currency": "usd", "available": 500}]}
    assert (await ok(api, "burnCredits", {"userId": ALICE, "amount": 100}))["burned"] == 100


class JumpingTime:
    """Stands in for the `time` module where ids are made (store/ids.py's new_id reads
    time.time_ns): real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def time_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


async def test_ids_stay_unique_and_lists_keep_their_order_when_the_id_clock_goes_back(api, clock, monkeypatch):
    jumping = JumpingTime()
    monkeypatch.setattr(ids, "time", jumping)
    offsets = [0, -HOUR, HOUR, -DAY, 0, -DAY - HOUR, 2 * DAY, -1]  # seconds, for the id clock and the server's
    written: list[str] = []  # transaction ids in the order written
    holds: list[str] = []
    for i in range(80):
        step = offsets[i % len(offsets)]
        jumping.offset_ns = step * 1_000_000_000
        clock.advance(seconds=step / 10)
        if i % 4 == 3:
            holds.append((await ok(api, "createHold", {"user": ALICE, "amount": 1, "expiresIn": 600}))["holdId"])
        elif i % 2:
            written.append((await ok(api, "recordUsage", {"user": ALICE, "amount": 1, "model": "m", "requestId": f"r{i}"}))["transactionId"])
        else:
            written.append((await ok(api, "deposit", {"user": ALICE, "amount": 10}))["transactionId"])
    assert len(set(written)) == len(written) and len(set(holds)) == len(holds)
    assert sorted(written) != written, "the id clock's jumps should have made later ids sort earlier"

    # listTransactions is newest first by createdAt (the server's clock), rows of one instant
    # last written first: a total order, so every row is on exactly one page
    page = await ok(api, "listTransactions", {"user": ALICE, "limit": 1000})
    rows = page["transactions"]
    order = {tx: i for i, tx in enumerate(written)}
    assert sorted(t["transactionId"] for t in rows) == sorted(written)
    assert [t["transactionId"] for t in rows] == [t["transactionId"] for t in sorted(
        rows, key=lambda t: (us(t["createdAt"]), order[t["transactionId"]]), reverse=True)]
    paged: list[str] = []
    after = None
    while True:
        params = {"user": ALICE, "limit": 7, **({"startingAfter": after} if after else {})}
        p = await ok(api, "listTransactions", params)
        paged += [t["transactionId"] for t in p["transactions"]]
        if not p["hasMore"]:
            break
        after = paged[-1]
    assert paged == [t["transactionId"] for t in rows], "pages by (createdAt, position), never by id"
    newest_first = list(reversed(written))
    listed_holds = await holds_of(api)
    assert [h["holdId"] for h in listed_holds] == list(reversed(holds))
    usage = (await ok(api, "getUsage", {"user": ALICE, "limit": 1000}))["usage"]
    assert [u["transactionId"] for u in usage] == [t for t in newest_first if t in {u["transactionId"] for u in usage}]

    # createdAfter/createdBefore select by the times the rows carry, whatever their order
    rows = page["transactions"]
    middle = sorted(us(t["createdAt"]) for t in rows)[len(rows) // 2]
    text = datetime.fromtimestamp(middle / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    before = await ok(api, "listTransactions", {"user": ALICE, "createdBefore": text, "limit": 1000})
    since = await ok(api, "listTransactions", {"user": ALICE, "createdAfter": text, "limit": 1000})
    assert {t["transactionId"] for t in before["transactions"]} == {t["transactionId"] for t in rows if us(t["createdAt"]) < middle}
    assert {t["transactionId"] for t in since["transactions"]} == {t["transactionId"] for t in rows if us(t["createdAt"]) >= middle}


async def test_a_forward_jump_does_not_drop_idempotency_keys_early(api, server, clock):
    """Keys are kept at least 24 hours. The sweep drops those older than that by the clock;
    when the clock is stepped two days ahead between two sweeps, the second one may drop no
    key younger (in real time) than the keep time, so a retry still gets its first answer."""
    store = server.app[STORE]
    first = await ok(api, "deposit", {"user": ALICE, "amount": 100}, idempotency_key="k1")
    await sweep_once(store, clock())
    clock.advance(days=2)
    await sweep_once(store, clock())
    again = await ok(api, "deposit", {"user": ALICE, "amount": 100}, idempotency_key="k1")
    assert again == first
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 100


async def test_an_id_made_twice_is_refused_never_stored_twice(api, monkeypatch, db_path):
    """Uniqueness does not rest on the clock moving on: with the id clock stopped and the random
    part fixed, the second id made is the first one again, and the UNIQUE index refuses the
    write (an internal error, nothing written) rather than store two rows under one id."""
    stopped = JumpingTime()
    stopped.time_ns = lambda: 1_800_000_000_000_000_000  # type: ignore[method-assign]
    monkeypatch.setattr(ids, "time", stopped)
    monkeypatch.setattr(ids, "_parts", SimpleNamespace(pop=lambda: "0" * 13))  # every random part the same
    first = await ok(api, "deposit", {"user": ALICE, "amount": 100})
    r = await api.call("deposit", {"user": ALICE, "amount": 100})
    assert r.status == 500 and r.error is not None and r.error["kind"] == "internal_error" and r.error["param"] is None, r
    assert re.fullmatch(r"internal error \(error id [0-9a-f]{12}\)", r.error["message"]), r  # the id its log record carries
    monkeypatch.undo()
    rows = (await ok(api, "listTransactions", {"user": ALICE}))["transactions"]
    assert [t["transactionId"] for t in rows] == [first["transactionId"]]
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 100
    check_invariants(db_path)
