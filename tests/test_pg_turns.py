"""Reads made at nearly the same time answered by one statement (store/postgres/turns.py): the
batching itself with stand-in statements (on every backend: it is plain asyncio), then
getBalance's reads on a real PostgreSQL, where a batch holds many accounts and keys."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Sequence

import asyncpg
import pytest

from zapbilling.billing.ledger import LOTS
from zapbilling.store.base import KeyRevoked, NewEntry
from zapbilling.store.postgres.turns import TurnBatch


class Statements:
    """Stand-ins for the one-read and many-reads statements: each answers its arguments doubled,
    after a loop turn (as a round trip would), and records how it was called."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, list[int]]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def one(self, a: int) -> int:
        self.calls.append(("one", [a]))
        await self.gate.wait()
        if self.fail:
            raise ConnectionResetError("the database went away")
        return 2 * a

    async def many(self, reads: Sequence[int]) -> list[int]:
        self.calls.append(("many", list(reads)))
        await self.gate.wait()
        if self.fail:
            raise ConnectionResetError("the database went away")
        return [2 * a for a in reads]


async def test_reads_started_in_one_loop_turn_are_one_statement_each_answered_its_own():
    s = Statements()
    batch = TurnBatch(s.one, s.many)
    assert await asyncio.gather(*(batch.call(a) for a in range(10))) == [2 * a for a in range(10)]
    assert s.calls == [("many", list(range(10)))]


async def test_a_read_alone_in_its_turn_is_the_one_read_statement_and_later_reads_a_new_batch():
    s = Statements()
    batch = TurnBatch(s.one, s.many)
    assert await batch.call(7) == 14
    assert await asyncio.gather(batch.call(1), batch.call(2)) == [2, 4]
    assert s.calls == [("one", [7]), ("many", [1, 2])]


async def test_reads_that_arrive_while_a_batch_is_under_way_make_the_next_batch():
    s = Statements()
    s.gate.clear()
    batch = TurnBatch(s.one, s.many)
    first = [asyncio.ensure_future(batch.call(a)) for a in (1, 2)]
    await asyncio.sleep(0.01)  # the first batch has been sent and waits for its answer
    second = [asyncio.ensure_future(batch.call(a)) for a in (3, 4)]
    await asyncio.sleep(0.01)
    s.gate.set()
    assert await asyncio.gather(*first, *second) == [2, 4, 6, 8]
    assert s.calls == [("many", [1, 2]), ("many", [3, 4])]


async def test_a_failed_statement_fails_every_read_of_its_batch_and_the_next_batch_runs():
    s = Statements(fail=True)
    batch = TurnBatch(s.one, s.many)
    results = await asyncio.gather(*(batch.call(a) for a in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionResetError] * 3
    s.fail = False
    assert await asyncio.gather(batch.call(5), batch.call(6)) == [10, 12]


async def test_a_batch_the_database_refuses_for_one_calls_sake_is_made_again_call_by_call():
    """A value one call holds that the database cannot take (its class of error, DataError and
    the like) fails the batch's statement: the calls are then made one by one, so that only
    the one at fault fails, where before every call of the batch answered its error."""
    class OneBad(Statements):
        async def one(self, a: int) -> int:
            self.calls.append(("one", [a]))
            if a == 2:
                raise asyncpg.DataError("invalid byte sequence for encoding \"UTF8\": 0x00")
            return 2 * a

        async def many(self, reads: Sequence[int]) -> list[int]:
            self.calls.append(("many", list(reads)))
            if 2 in reads:
                raise asyncpg.DataError("invalid byte sequence for encoding \"UTF8\": 0x00")
            return [2 * a for a in reads]

    s = OneBad()
    batch = TurnBatch(s.one, s.many)
    results = await asyncio.gather(*(batch.call(a) for a in range(4)), return_exceptions=True)
    assert results[:2] == [0, 2] and results[3] == 6
    assert isinstance(results[2], asyncpg.DataError)
    assert s.calls == [("many", [0, 1, 2, 3]), ("one", [0]), ("one", [1]), ("one", [2]), ("one", [3])]
    assert await asyncio.gather(batch.call(5), batch.call(6)) == [10, 12]  # and the next batch is one statement again
    assert s.calls[-1] == ("many", [5, 6])


async def test_the_batches_are_sent_outside_the_first_callers_context():
    """The sender task is not made in its first caller's context: what a caller's context holds
    (its long work's turn, transport/lane.py) must not be seen while others' calls are made."""
    mine: contextvars.ContextVar[str] = contextvars.ContextVar("mine", default="none")
    seen: list[str] = []

    async def one(a: int) -> int:
        seen.append(mine.get())
        return a

    async def many(reads: Sequence[int]) -> list[int]:
        seen.append(mine.get())
        return list(reads)

    batch = TurnBatch(one, many)

    async def caller(a: int) -> int:
        mine.set(f"caller {a}")
        return await batch.call(a)

    assert await asyncio.gather(caller(1), caller(2)) == [1, 2]
    assert await caller(3) == 3
    assert seen == ["none", "none"]


async def test_a_cancelled_reader_leaves_the_others_of_its_batch_their_answers():
    s = Statements()
    s.gate.clear()
    batch = TurnBatch(s.one, s.many)
    reads = [asyncio.ensure_future(batch.call(a)) for a in range(4)]
    await asyncio.sleep(0.01)
    reads[1].cancel()
    await asyncio.sleep(0)
    s.gate.set()
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert results[0] == 0 and results[2:] == [4, 6]
    assert isinstance(results[1], asyncio.CancelledError)


@contextlib.asynccontextmanager
async def two_keys(db_path, clock):  # type: ignore[no-untyped-def]
    """A PostgreSQL store with two admin keys of one tenant, both remembered by it: (the store,
    the first key's principal, its secret, (the second key's id, its secret))."""
    from zapbilling.store.postgres import PostgresStore

    store = PostgresStore(db_path)
    await store.open()
    try:
        _, secret_a = await store.create_key("acme", "live", "admin", clock())
        key_b, secret_b = await store.create_key("acme", "live", "admin", clock())
        principal = await store.authenticate(secret_a)
        assert principal is not None and await store.authenticate(secret_b) is not None  # both remembered now
        yield store, principal, secret_a, (key_b, secret_b)
    finally:
        await store.close()


def counted(batch: TurnBatch) -> list[int]:
    """The sizes of the batches `batch` sends as one statement of many, from now on."""
    sizes: list[int] = []
    many = batch._many

    async def counting(calls):
        sizes.append(len(calls))
        return await many(calls)

    batch._many = counting
    return sizes


@pytest.mark.postgres_only("the PostgreSQL store's batched account reads")
async def test_a_turns_balance_reads_share_one_statement_each_its_account_and_a_revoked_key_refused_alone(db_path, clock):
    async with two_keys(db_path, clock) as (store, principal, secret_a, (key_b, secret_b)):
        users = [f"acme/u{i}" for i in range(20)]
        for i, user in enumerate(users):
            await store.append_ledger_row(principal.tenant, NewEntry(
                type="deposit", user=user, currency="usd", amount=100 + i, now=clock(), key_id=principal.key_id, lots=LOTS))
        await store.revoke_key(key_b, clock())  # this process still remembers it: the read's statement must check it

        statements = counted(store._accounts)

        async def read(secret: str, user: str) -> tuple[int, int]:
            await store.authenticate(secret)  # remembered: the key is left for the read to check
            return await store.balance(principal.tenant, user, "usd", clock())

        answers = await asyncio.gather(*(read(secret_a, u) for u in users), read(secret_b, users[0]), return_exceptions=True)
        assert answers[:-1] == [(100 + i, 0) for i in range(len(users))]
        assert isinstance(answers[-1], KeyRevoked)
        assert statements == [len(users) + 1]


@pytest.mark.postgres_only("the PostgreSQL store's batched ledger writes")
async def test_a_turns_usual_writes_share_one_statement_and_what_needs_more_goes_alone(db_path, clock):
    """Twenty usual writes, a write of a revoked key, a repeat of a dedupe key and a write to an
    account with expiring money, made at once: one statement (ledger_append_rows) for all,
    which writes the twenty, refuses the revoked key's alone, and leaves the repeat and the
    expiring account to the transaction's way, which answers them as it always has."""
    async with two_keys(db_path, clock) as (store, principal, secret_a, (key_b, secret_b)):
        tenant = principal.tenant

        def entry(user: str, amount: int, type: str = "withdraw", **kw) -> NewEntry:
            return NewEntry(type=type, user=user, currency="usd", amount=amount, now=clock(), key_id=principal.key_id,
                            lots=LOTS, **kw)

        users = [f"acme/u{i}" for i in range(20)]
        for user in users:  # the accounts exist from here on
            await store.append_ledger_row(tenant, entry(user, 100, "deposit"))
        first = await store.append_ledger_row(tenant, entry(users[0], 1, dedupe_key="r1"))
        await store.append_ledger_row(tenant, entry("acme/lots", 50, "deposit", expires_at=clock() + 10**9))
        await store.revoke_key(key_b, clock())  # still remembered: the batch's statement must check it

        statements = counted(store._appends)

        async def write(secret: str, e: NewEntry):
            await store.authenticate(secret)
            return await store.append_ledger_row(tenant, e)

        answers = await asyncio.gather(
            *(write(secret_a, entry(u, 1 + i)) for i, u in enumerate(users)),
            write(secret_b, entry(users[1], 1000)),
            write(secret_a, entry(users[0], 1, dedupe_key="r1")),
            write(secret_a, entry("acme/lots", 5)),
            return_exceptions=True,
        )
        assert statements == [len(users) + 3]
        assert [a["amount"] for a in answers[:20]] == [1 + i for i in range(20)], answers
        assert isinstance(answers[20], KeyRevoked)
        assert answers[21]["id"] == first["id"]
        assert answers[22]["amount"] == 5
        balances = [await store.balance(tenant, u, "usd", clock()) for u in users]
        assert balances == [(99 - 1, 0)] + [(100 - (1 + i), 0) for i in range(1, 20)]
        assert await store.balance(tenant, "acme/lots", "usd", clock()) == (45, 0)


@pytest.mark.postgres_only("the PostgreSQL store's batched ledger writes")
async def test_a_write_the_database_refuses_fails_alone_and_the_others_of_its_batch_are_written(db_path, clock):
    """A write whose text PostgreSQL cannot store (a NUL character: the API refuses it before
    the store, but the store must not let one write's fault spread) made at once with twenty
    usual writes of other accounts: the twenty are written and answered, the one refused."""
    async with two_keys(db_path, clock) as (store, principal, secret_a, _):
        tenant = principal.tenant

        def entry(user: str, amount: int, type: str = "withdraw", **kw) -> NewEntry:
            return NewEntry(type=type, user=user, currency="usd", amount=amount, now=clock(), key_id=principal.key_id,
                            lots=LOTS, **kw)

        users = [f"acme/u{i}" for i in range(21)]
        for user in users:
            await store.append_ledger_row(tenant, entry(user, 100, "deposit"))
        statements = counted(store._appends)
        answers = await asyncio.gather(
            *(store.append_ledger_row(tenant, entry(u, 1 + i)) for i, u in enumerate(users[:20])),
            store.append_ledger_row(tenant, entry(users[20], 7, notes="a\x00b")),
            return_exceptions=True,
        )
        assert statements == [21]
        assert [a["amount"] for a in answers[:20]] == [1 + i for i in range(20)], answers
        assert isinstance(answers[20], asyncpg.DataError)
        assert [await store.balance(tenant, u, "usd", clock()) for u in users] == \
            [(100 - (1 + i), 0) for i in range(20)] + [(100, 0)]
