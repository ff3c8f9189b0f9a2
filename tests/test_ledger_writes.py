"""A ledger write's round trips on PostgreSQL, and the lot cases its shortcuts must not change.

On PostgreSQL a usage withdrawal or a deposit on an account without expiring money is one
statement that commits by itself (ledger_append: store/postgres/ledger.py, `_append_at_once`);
what needs more goes the transaction's way, where it is two statements after BEGIN: the
account's lock, then one statement that inserts the row, moves the balance, writes the usage
meter event and reads the account's lots (append_entry). The cases below are those where that
statement's shortcuts could differ from a walk of the lots read after the insert: many lots
(more than the first page), an expiring deposit into an account with an expired lot, and a
deposit whose new balance passes int64 unless the lots forfeited on the way bring it back.
They run on both backends, so SQLite's answers are the reference.
"""
from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from conftest import assert_error, balance, ledger_rows, ok

INT64_MAX = 2**63 - 1
ALICE = "hanzo/alice"
APPEND = "SELECT ledger_append("


class Statements:
    """The SQL sent on any asyncpg connection of this process (the test server runs in it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        for name in ("execute", "executemany", "fetch", "fetchval", "fetchrow"):
            self._wrap(monkeypatch, name)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        original = getattr(asyncpg.Connection, name)

        async def counted(conn: Any, query: str, *args: Any, **kw: Any) -> Any:
            self.sent.append(" ".join(query.split()))
            return await original(conn, query, *args, **kw)

        monkeypatch.setattr(asyncpg.Connection, name, counted)

    def in_transaction(self) -> list[str]:
        """The statements between the last BEGIN (which may carry the key's check: store/postgres/
        connection.py `_begin`) and its COMMIT."""
        begin = max(i for i, q in enumerate(self.sent) if q.startswith("BEGIN"))
        end = next(i for i in range(begin, len(self.sent)) if self.sent[i].rstrip(";") == "COMMIT")
        return self.sent[begin + 1:end]


@pytest.mark.postgres_only("counts PostgreSQL statements")
async def test_usage_and_deposit_are_one_statement_that_commits_itself(api, monkeypatch):
    meter = await ok(api, "createMeter", {"name": "Usage", "eventName": "api-usage"})
    sent = Statements(monkeypatch)
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    # no account yet: ledger_append writes nothing, and the transaction's way creates it
    assert sent.sent[0].startswith(APPEND) and sent.in_transaction(), sent.sent
    sent.sent.clear()
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m", "requestId": "r1"})
    assert [q[:len(APPEND)] for q in sent.sent] == [APPEND], sent.sent
    sent.sent.clear()
    await ok(api, "deposit", {"user": ALICE, "amount": 3})
    assert [q[:len(APPEND)] for q in sent.sent] == [APPEND], sent.sent
    # what the one statement wrote: the row, the balance, the meter event linked to the row
    assert await balance(api) == 996
    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter["id"]})
    assert (summary["value"], summary["eventCount"]) == (7, 1), summary
    # a repeat of the requestId: ledger_append writes nothing, the transaction's way answers the first row
    sent.sent.clear()
    again = await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m", "requestId": "r1"})
    assert sent.sent[0].startswith(APPEND) and sent.in_transaction(), sent.sent
    assert again["transactionId"] == usage["transactionId"]
    assert await balance(api) == 996
    summary = await ok(api, "getMeterEventsSummary", {"meterId": meter["id"]})
    assert (summary["value"], summary["eventCount"]) == (7, 1), summary


@pytest.mark.postgres_only("counts PostgreSQL statements")
async def test_writes_that_need_more_go_the_transactions_way(api, monkeypatch, clock):
    """An account with lots (expiring money) and a tenant with an alert make ledger_append write
    nothing; the transaction's way then does what they need."""
    await ok(api, "deposit", {"user": ALICE, "amount": 10, "expiresIn": 1})
    clock.advance(days=2)
    sent = Statements(monkeypatch)
    await ok(api, "deposit", {"user": ALICE, "amount": 5})  # forfeits the expired 10 on the way
    assert sent.sent[0].startswith(APPEND) and sent.in_transaction(), sent.sent
    assert await balance(api) == 5
    await ok(api, "createAlert", {"type": "balance_below", "userId": ALICE, "threshold": 3})
    sent.sent.clear()
    await ok(api, "recordUsage", {"user": ALICE, "amount": 4, "model": "m"})  # the alert fires
    assert sent.sent[0].startswith(APPEND) and sent.in_transaction(), sent.sent
    assert await balance(api) == 1
    events = await ok(api, "listEvents", {"type": "alert.triggered"})
    assert events["count"] == 1 and events["events"][0]["data"]["userId"] == ALICE, events


async def test_usage_spends_more_lots_than_the_first_page(api, db_path, clock):
    for _ in range(70):  # LOT_PAGE is 64: the walk asks for a second, longer page
        await ok(api, "deposit", {"user": ALICE, "amount": 1, "expiresIn": 5})
    await ok(api, "recordUsage", {"user": ALICE, "amount": 75, "model": "m"})
    assert await balance(api) == -5
    assert all(r["remaining"] == 0 for r in ledger_rows(db_path, ALICE, type="deposit"))
    clock.advance(days=6)  # nothing left to forfeit
    assert await balance(api) == -5
    await ok(api, "deposit", {"user": ALICE, "amount": 5})
    assert await balance(api) == 0
    assert not ledger_rows(db_path, ALICE, tags="credit-expired")


async def test_expiring_deposit_forfeits_an_expired_lot_and_keeps_its_own(api, db_path, clock):
    await ok(api, "deposit", {"user": ALICE, "amount": 100, "expiresIn": 1})
    clock.advance(days=2)
    await ok(api, "deposit", {"user": ALICE, "amount": 50, "expiresIn": 1})
    forfeits = ledger_rows(db_path, ALICE, tags="credit-expired")
    assert [r["amount"] for r in forfeits] == [100]
    assert await balance(api) == 50
    await ok(api, "recordUsage", {"user": ALICE, "amount": 20, "model": "m"})
    assert [r["remaining"] for r in ledger_rows(db_path, ALICE, type="deposit")] == [0, 30]
    clock.advance(days=2)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 1, "model": "m"})  # forfeits the 30 left
    assert [r["amount"] for r in ledger_rows(db_path, ALICE, tags="credit-expired")] == [100, 30]
    assert await balance(api) == -1


async def test_deposit_past_int64_is_taken_when_a_forfeit_brings_the_balance_back(api, db_path, clock):
    await ok(api, "deposit", {"user": ALICE, "amount": 10, "expiresIn": 1})
    await ok(api, "deposit", {"user": ALICE, "amount": INT64_MAX - 10})
    clock.advance(days=2)
    assert await balance(api) == INT64_MAX - 10  # the expired 10 not yet forfeited
    await ok(api, "deposit", {"user": ALICE, "amount": 5})  # INT64_MAX + 5 before the forfeit
    assert await balance(api) == INT64_MAX - 5
    assert [r["amount"] for r in ledger_rows(db_path, ALICE, tags="credit-expired")] == [10]
    r = await api.call("deposit", {"user": ALICE, "amount": 6})
    assert_error(api, r, "invalid_params", "amount would take the balance outside the signed 64-bit range", "amount")
    assert await balance(api) == INT64_MAX - 5
