"""The grant and hold locks on PostgreSQL, at the store: two stores (two pools, as two servers)
on one database run mixed writes of one user at once, and

- grants: burns, creations, voids and the expiry sweep never take a cent twice (every grant's
  journal sums to its remaining cents, each row's remainingAfter follows from the one before,
  and what the burns answered is what the journal holds), and the locks are taken in one order:
  no transaction was retried after a deadlock (a void that locked its grant after the others
  deadlocked 6 to 25 times per run of this mix);
- holds: placements never pass what the account holds, and of a capture and a release of the
  same hold sent at once exactly one settles it.

PostgreSQL only: on SQLite one writer serialises all of these (test_grants.py and
test_holds.py cover the semantics on both).
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest
from invariants import check_invariants

from zapbilling.billing.grants import plan_burn
from zapbilling.billing.ledger import LOTS
from zapbilling.billing.events import HERALD
from zapbilling.store.base import HoldRow, NewEntry, NewGrant, NewHold
from zapbilling.store.postgres import PostgresStore
from zapbilling.store.refusals import AlreadyVoided, NotPending, ShortOfFunds

pytestmark = pytest.mark.postgres_only("two pools writing one database")

USER = "acme/shared"
SECOND = 1_000_000


@pytest.fixture
async def stores(db_path):
    pair = [PostgresStore(db_path), PostgresStore(db_path)]
    for s in pair:
        s.announce_with(HERALD)  # as a server's store: every change with its event (the checker asks)
        await s.open()
    try:
        yield pair
    finally:
        for s in pair:
            await s.close()


@pytest.fixture
async def caller(stores, clock):
    """A real tenant and key, so that the invariants checker finds every row's owner."""
    _, secret = await stores[0].create_key("acme", "live", "admin", clock())
    principal = await stores[0].authenticate(secret)
    assert principal is not None
    return principal


async def test_concurrent_burns_creates_voids_and_sweeps_take_no_cent_twice_and_never_deadlock(stores, caller, db_path, clock):
    TENANT, KEY = caller.tenant, caller.key_id
    rng = random.Random(18)
    now0 = clock()
    ids: list[str] = []
    for i in range(10):  # every fourth expires within the run, for the sweeps and the writes to journal
        expires = now0 + 2 * SECOND if i % 4 == 0 else None
        g = await stores[0].create_grant(TENANT, NewGrant(USER, f"g{i}", 1_000, "usd", i % 3, now0, expires, [], "", now0, KEY))
        ids.append(g["id"])
    answered = 0

    async def burn(s: PostgresStore, amount: int, now: int) -> None:
        nonlocal answered
        r = await s.burn_grants(TENANT, USER, "usd", amount, None, now, KEY, plan_burn)
        answered += sum(g["burned"] for g in r["grants"])

    async def create(s: PostgresStore, i: int, now: int) -> None:
        g = await s.create_grant(TENANT, NewGrant(USER, f"n{i}", 500, "usd", 0, now, None, [], "", now, KEY))
        ids.append(g["id"])

    async def void(s: PostgresStore, grant_id: str, now: int) -> None:
        try:
            await s.void_grant(TENANT, grant_id, now, KEY)
        except AlreadyVoided:
            pass

    calls: list[Any] = []
    for i in range(400):
        s, now = stores[i % 2], now0 + rng.randrange(4 * SECOND)
        pick = rng.random()
        if pick < 0.7:
            calls.append(burn(s, rng.randint(1, 300), now))
        elif pick < 0.85:
            calls.append(create(s, i, now))
        else:
            calls.append(void(s, rng.choice(ids), now))
    calls += [s.expire_grants(now0 + 3 * SECOND) for s in stores]
    rng.shuffle(calls)
    await asyncio.gather(*calls)

    assert sum(s.retries for s in stores) == 0, "a deadlock: the grant locks were taken out of order"
    conn = await asyncpg.connect(db_path)
    try:
        burned = await conn.fetchval("SELECT -SUM(amount) FROM credit_transactions WHERE type = 'burn'")
        expired = await conn.fetchval("SELECT COUNT(*) FROM credit_transactions WHERE type = 'expire'")
    finally:
        await conn.close()
    assert answered > 10_000 and burned == answered, (answered, burned)  # the mix did burn, and only what it answered
    assert expired > 0  # the expiring grants were journalled by a write or a sweep
    check_invariants(db_path)  # each grant's journal sums to its remaining; remainingAfter chains


async def test_holds_from_two_pools_never_pass_the_balance_and_settle_once(stores, caller, db_path, clock):
    TENANT, KEY = caller.tenant, caller.key_id
    now = clock()
    await stores[0].append_ledger_row(TENANT, NewEntry("deposit", USER, "usd", 10_000, now, KEY, LOTS))

    def covered(balance: int, holds: int) -> bool:
        return 700 <= balance - holds

    async def place(s: PostgresStore) -> HoldRow | None:
        try:
            return await s.create_hold(TENANT, NewHold(USER, "usd", 700, now, now + 60 * SECOND, covered))
        except ShortOfFunds:
            return None

    placed = [h for h in await asyncio.gather(*(place(stores[i % 2]) for i in range(40))) if h is not None]
    assert len(placed) == 10_000 // 700  # 14 fit; the 26 others were refused, none slipped past the check

    def charge(hold: HoldRow, amount: int) -> NewEntry:
        return NewEntry("withdraw", hold["user"], hold["currency"], amount, now, KEY, LOTS, hold_id=hold["holdId"],
                        dedupe_key=f"hold:{hold['holdId']}")

    async def settle(coro: Any) -> bool:
        try:
            await coro
            return True
        except NotPending:
            return False

    outcomes = await asyncio.gather(*(
        settle(stores[i % 2].capture_hold(TENANT, h["holdId"], 300, now, charge)) for i, h in enumerate(placed)
    ), *(settle(stores[(i + 1) % 2].release_hold(TENANT, h["holdId"], now)) for i, h in enumerate(placed)))
    captures, releases = outcomes[:len(placed)], outcomes[len(placed):]
    assert all(c != r for c, r in zip(captures, releases)), "a hold settled twice or not at all"
    balance, held = await stores[1].balance(TENANT, USER, "usd", now)
    assert (balance, held) == (10_000 - 300 * sum(captures), 0)
    assert sum(s.retries for s in stores) == 0
    check_invariants(db_path)
