"""Holds on PostgreSQL (the SQLite module's semantics: ../sqlite/holds.py): money reserved in a
table of its own.

SQLite's single writer made the funds check and the insert, and the pending check and the
settlement, each one step nothing could overtake. Here every such write first takes the
account's lock (rule 1 of connection.py: `lock_account`), so a hold placed, captured or released
and every ledger write of the same account queue there, and each reads the balance and the
pending holds after the previous one committed; a settlement then locks its hold's row (rule 2)
before it reads the status it decides on."""
from __future__ import annotations

from typing import Any

import asyncpg

from ..base import INT64_MAX, HoldCharge, HoldRow, Idempotency, NewHold
from ..ids import new_id
from ..refusals import Missing, NotPending, OutOfRange, OverCapture, ShortOfFunds
from ..rows import HOLD_COLUMNS, HOLD_STATUS_IS, hold_row, json_text
from ..herald import Outbox
from .connection import PgBase
from .ledger import append_entry
from .sums import ACCOUNT
from .outbox import Watch, emit_many, event_args, lock_watching, watch
from .watch import after_account_write, check_spend_cap

# A hold's status as at `{now}`, the parameter holding the instant (../rows.py).
_HOLD = HOLD_COLUMNS
_STATUS_IS = HOLD_STATUS_IS
# When a hold is captured or released. Never before its creation: after the clock went back
# behind a hold's created_at (an NTP step, a restored VM), a settlement dated by the clock would
# answer a negative duration (settledAt < createdAt); it is dated at the creation instant
# instead, the earliest moment the store has seen for this row (tests/test_clock_jumps.py).
_SETTLED_AT = "GREATEST({now}, created_at)"


def _hold(now: str) -> str:
    """The hold's columns, its status and settledAt as at the parameter `now` names."""
    return _HOLD.format(now=now)


class HoldQueries(PgBase):
    HOLD_STATUSES = frozenset(_STATUS_IS)
    _outbox: Outbox | None = None  # see LedgerQueries.announce_with

    async def create_hold(self, tenant: int, hold: NewHold, idempotency: Idempotency | None = None) -> HoldRow:
        return await self._write(tenant, idempotency, hold.now, _create_hold, tenant, new_id("hold"), hold)  # type: ignore[no-any-return]

    async def capture_hold(
        self, tenant: int, hold_id: str, amount: int | None, now: int, charge: HoldCharge,
        idempotency: Idempotency | None = None,
    ) -> HoldRow:
        """Settle the hold as captured for `amount` (None: all of it) and append the ledger row
        `charge` makes, in one transaction."""
        return await self._write(  # type: ignore[no-any-return]
            tenant, idempotency, now, _capture_hold, tenant, hold_id, amount, now, charge, self._outbox
        )

    async def release_hold(self, tenant: int, hold_id: str, now: int, idempotency: Idempotency | None = None) -> HoldRow:
        return await self._write(tenant, idempotency, now, _release_hold, tenant, hold_id, now, self._outbox)  # type: ignore[no-any-return]

    async def get_hold(self, tenant: int, hold_id: str, now: int) -> HoldRow | None:
        rows = await self._read(f"SELECT {_hold('$3')} FROM holds WHERE tenant = $1 AND id = $2", tenant, hold_id, now)
        return hold_row(rows[0]) if rows else None

    async def list_holds(
        self, tenant: int, user: str | None, status: str | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[HoldRow], bool]:
        """Newest first; `status` filters on the status at `now`. `starting_after` must be a
        hold of the same listing (this tenant, this user if given), whatever its status."""
        where = "tenant = $1"
        params: list[Any] = [tenant]
        if user is not None:
            params.append(user)
            where += f" AND user_id = ${len(params)}"
        if starting_after is not None:
            found = await self._read(f"SELECT seq FROM holds WHERE {where} AND id = ${len(params) + 1}", *params, starting_after)
            if not found:
                raise Missing("hold")
            params.append(found[0][0])
            where += f" AND seq < ${len(params)}"
        params.append(now)
        at = f"${len(params)}"
        if status is not None:
            where += f" AND {_STATUS_IS[status].format(now=at)}"
        params.append(limit + 1)
        rows = await self._read(f"SELECT {_hold(at)} FROM holds WHERE {where} ORDER BY seq DESC LIMIT ${len(params)}", *params)
        return [hold_row(r) for r in rows[:limit]], len(rows) > limit

    async def expire_holds(self, now: int, limit: int = 500) -> int:
        """Mark up to `limit` lapsed pending holds expired; returns how many. Reads never need
        this (they compute the status at their own instant); it keeps the column honest, and
        records each hold's expiry event (so a hold's hold.expired comes with the sweep)."""
        return await self._tx(_expire_holds, now, limit, self._outbox)


async def _create_hold(conn: asyncpg.Connection, tenant: int, hold_id: str, h: NewHold) -> HoldRow:
    # The account's lock first: the funds read below then sees every earlier write of this
    # account committed, and no other hold or withdrawal can land before this one commits.
    # The Watch rides on the lock's statement (outbox.lock_watching).
    _, w = await lock_watching(conn, tenant, h.user, h.currency)
    if w.spend_caps:
        if h.request_id is not None:  # a requestId seen before answers its hold, refused by no cap
            seen = await conn.fetchrow(
                f"SELECT {_hold('$4')} FROM holds WHERE tenant = $1 AND user_id = $2 AND request_id = $3",
                tenant, h.user, h.request_id, h.now,
            )
            if seen is not None:
                return hold_row(seen)
        await check_spend_cap(conn, tenant, h.user, h.currency, h.amount, h.now)
    balance, expired, held = await conn.fetchrow(ACCOUNT, tenant, h.user, h.currency, h.now)
    # The insert before the checks, as on SQLite: a requestId seen before answers its hold
    # whatever the account holds now. A concurrent twin waits on the unique index for this
    # insert's commit, then finds the row.
    row = await conn.fetchrow(
        f"INSERT INTO holds (id, tenant, user_id, currency, amount, expires_at, created_at, request_id, metadata)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        f" ON CONFLICT (tenant, user_id, request_id) DO NOTHING RETURNING {_hold('$7')}",
        hold_id, tenant, h.user, h.currency, h.amount, h.expires_at, h.now, h.request_id,
        json_text(h.metadata) if h.metadata is not None else None,
    )
    if row is None:  # the requestId was seen for this user: the original hold is the answer
        return hold_row(await conn.fetchrow(
            f"SELECT {_hold('$4')} FROM holds WHERE tenant = $1 AND user_id = $2 AND request_id = $3",
            tenant, h.user, h.request_id, h.now,
        ))
    if held + h.amount > INT64_MAX:
        raise OutOfRange("holds")
    if not h.covered(balance - expired, held):
        raise ShortOfFunds(balance - expired, held)
    if w.alerts or w.spend_caps:
        await after_account_write(conn, tenant, h.user, h.currency, h.now, w)
    return hold_row(row)


async def _lock_hold(conn: asyncpg.Connection, tenant: int, hold_id: str, now: int) -> tuple[int, Watch]:
    """The settlement's locks in the protocol's order: the hold's account (read without a lock:
    a hold's user and currency never change), then the hold's row. Refuses a hold that is not
    here or not pending at `now`; returns its amount and the tenant's Watch (read by the lock's
    statement)."""
    account = await conn.fetchrow("SELECT user_id, currency FROM holds WHERE tenant = $1 AND id = $2", tenant, hold_id)
    if account is None:
        raise Missing("hold")
    _, w = await lock_watching(conn, tenant, account[0], account[1])
    found = await conn.fetchrow(
        "SELECT CASE WHEN status = 'pending' AND expires_at <= $3 THEN 'expired' ELSE status END, amount FROM holds"
        " WHERE tenant = $1 AND id = $2 FOR UPDATE",
        tenant, hold_id, now,
    )
    if found[0] != "pending":
        raise NotPending(found[0])
    return int(found[1]), w


async def _capture_hold(
    conn: asyncpg.Connection, tenant: int, hold_id: str, amount: int | None, now: int, charge: HoldCharge,
    outbox: Outbox | None,
) -> HoldRow:
    held, _ = await _lock_hold(conn, tenant, hold_id, now)
    if amount is not None and amount > held:
        raise OverCapture(amount, held)
    row = await conn.fetchrow(
        f"UPDATE holds SET status = 'captured', captured_amount = $3, settled_at = {_SETTLED_AT.format(now='$4')}"
        f" WHERE tenant = $1 AND id = $2 RETURNING {_hold('$4')}",
        tenant, hold_id, held if amount is None else amount, now,
    )
    hold = hold_row(row)
    captured = hold["capturedAmount"]
    assert captured is not None, "the capture's UPDATE set it"
    tx, w = await append_entry(conn, tenant, charge(hold, captured), outbox)  # its Watch is the fresher one
    await conn.execute("UPDATE holds SET transaction_id = $3 WHERE tenant = $1 AND id = $2", tenant, hold_id, tx["id"])
    settled: HoldRow = hold | {"transactionId": tx["id"]}
    await _settled(conn, tenant, settled, now, w, outbox)
    return settled


async def _settled(conn: asyncpg.Connection, tenant: int, hold: HoldRow, now: int, w: Watch, outbox: Outbox | None) -> None:
    """A hold captured or released: its event, and the watch's look at its account."""
    if outbox is not None:
        await emit_many(conn, [event_args(tenant, outbox.herald.hold(hold), now, hold["holdId"])])
    if w.alerts or w.spend_caps:
        await after_account_write(conn, tenant, hold["user"], hold["currency"], now, w)


async def _release_hold(conn: asyncpg.Connection, tenant: int, hold_id: str, now: int, outbox: Outbox | None) -> HoldRow:
    _, w = await _lock_hold(conn, tenant, hold_id, now)
    row = await conn.fetchrow(
        f"UPDATE holds SET status = 'released', settled_at = {_SETTLED_AT.format(now='$3')} WHERE tenant = $1 AND id = $2"
        f" RETURNING {_hold('$3')}",
        tenant, hold_id, now,
    )
    hold = hold_row(row)
    await _settled(conn, tenant, hold, now, w, outbox)
    return hold


# A hold's columns in hold_row's order, once its status is settled (no `now` needed).
_SETTLED = ("id, user_id, currency, amount, status, expires_at, created_at, captured_amount, transaction_id, request_id,"
            " metadata, settled_at")


async def _expire_holds(conn: asyncpg.Connection, now: int, limit: int, outbox: Outbox | None) -> int:
    # One conditional UPDATE, no lock taken first: it changes no money (a lapsed hold counts
    # for no reader already), and PostgreSQL re-checks the outer condition on the row's newest
    # version after waiting for a settlement that held it, so a hold captured or released
    # meanwhile is left as its settlement made it.
    # Each hold's event is written in this transaction (one pipelined statement for them all),
    # dated now, the sweep's instant; a tenant's Watch is read once per sweep transaction. The
    # watch's look at the account is taken without the account's lock (this UPDATE takes none,
    # see above): watch.py's marks make a trigger happen once all the same.
    rows = await conn.fetch(
        "UPDATE holds SET status = 'expired', settled_at = expires_at"
        " WHERE seq IN (SELECT seq FROM holds WHERE status = 'pending' AND expires_at <= $1 LIMIT $2)"
        f" AND status = 'pending' AND expires_at <= $1 RETURNING tenant, {_SETTLED}",
        now, limit,
    )
    holds = [(r[0], hold_row(tuple(r)[1:])) for r in rows]
    if outbox is not None:
        await emit_many(conn, [event_args(tenant, outbox.herald.hold(hold), now, hold["holdId"]) for tenant, hold in holds])
    watches: dict[int, Watch] = {}
    for tenant, hold in holds:
        w = watches.get(tenant)
        if w is None:
            w = watches[tenant] = await watch(conn, tenant)
        if w.alerts or w.spend_caps:
            await after_account_write(conn, tenant, hold["user"], hold["currency"], now, w, locked=False)
    return len(holds)
