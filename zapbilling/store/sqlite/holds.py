"""Holds: money reserved in a table of its own. Placing a hold (funds check and insert) and
settling one (pending check, status change and the capture's withdrawal) are each one job on
the single writer, so no other write can slip between the check and the change; the settling
UPDATE is conditional on the hold still being pending all the same, so that a hold is settled
exactly once even if writes ever stop being serialised."""
from __future__ import annotations

import sqlite3
from typing import Any

from ..base import HoldCharge, HoldRow, Idempotency, NewHold
from ..base import INT64_MAX
from ..herald import Outbox
from ..ids import new_id
from .connection import SqliteBase
from .ledger import append_entry
from .sums import ACCOUNT
from .outbox import Watch, emit, watch
from .watch import after_account_write, check_spend_cap
from ..refusals import Missing, NotPending, OutOfRange, OverCapture, ShortOfFunds
from ..rows import HOLD_COLUMNS, HOLD_PENDING, HOLD_STATUS_IS, hold_row, json_text

# A hold's status as at :now (../rows.py).
_PENDING = HOLD_PENDING.format(now=":now")
_HOLD = HOLD_COLUMNS.format(now=":now")
_STATUS_IS = {status: condition.format(now=":now") for status, condition in HOLD_STATUS_IS.items()}
# When a hold is captured or released. Never before its creation: after the clock went back
# behind a hold's created_at (an NTP step, a restored VM), a settlement dated by the clock would
# answer a negative duration (settledAt < createdAt); it is dated at the creation instant
# instead, the earliest moment the store has seen for this row (tests/test_clock_jumps.py).
_SETTLED_AT = "MAX(:now, created_at)"


class HoldQueries(SqliteBase):
    HOLD_STATUSES = frozenset(_STATUS_IS)
    _outbox: Outbox | None = None  # see LedgerQueries.announce_with

    async def create_hold(self, tenant: int, hold: NewHold, idempotency: Idempotency | None = None) -> HoldRow:
        return await self._write(tenant, idempotency, hold.now, _create_hold, tenant, new_id("hold"), hold)

    async def capture_hold(
        self, tenant: int, hold_id: str, amount: int | None, now: int, charge: HoldCharge,
        idempotency: Idempotency | None = None,
    ) -> HoldRow:
        """Settle the hold as captured for `amount` (None: all of it) and append the ledger row
        `charge` makes, in one transaction."""
        return await self._write(tenant, idempotency, now, _capture_hold, tenant, hold_id, amount, now, charge, self._outbox)

    async def release_hold(self, tenant: int, hold_id: str, now: int, idempotency: Idempotency | None = None) -> HoldRow:
        return await self._write(tenant, idempotency, now, _release_hold, tenant, hold_id, now, self._outbox)

    async def get_hold(self, tenant: int, hold_id: str, now: int) -> HoldRow | None:
        rows = self._read_point(f"SELECT {_HOLD} FROM holds WHERE tenant = :tenant AND id = :id", {"tenant": tenant, "id": hold_id, "now": now})
        return hold_row(rows[0]) if rows else None

    async def list_holds(
        self, tenant: int, user: str | None, status: str | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[HoldRow], bool]:
        """Newest first; `status` filters on the status at `now`. `starting_after` must be a
        hold of the same listing (this tenant, this user if given), whatever its status."""
        where = "tenant = :tenant"
        params: dict[str, Any] = {"tenant": tenant, "user": user, "now": now, "after": starting_after, "limit": limit + 1}
        if user is not None:
            where += " AND user_id = :user"
        if starting_after is not None:
            found = await self._read(f"SELECT seq FROM holds WHERE {where} AND id = :after", params)
            if not found:
                raise Missing("hold")
            where += " AND seq < :seq"
            params["seq"] = found[0][0]
        if status is not None:
            where += f" AND {_STATUS_IS[status]}"
        rows = await self._read(f"SELECT {_HOLD} FROM holds WHERE {where} ORDER BY seq DESC LIMIT :limit", params)
        return [hold_row(r) for r in rows[:limit]], len(rows) > limit

    async def expire_holds(self, now: int, limit: int = 500) -> int:
        """Mark up to `limit` lapsed pending holds expired; returns how many. Reads never need
        this (they compute the status at their own instant); it keeps the column honest, and
        records each hold's expiry event (so a hold's hold.expired comes with the sweep)."""
        return await self._run(_expire_holds, now, limit, self._outbox)


def _create_hold(conn: sqlite3.Connection, tenant: int, hold_id: str, h: NewHold) -> HoldRow:
    w = watch(conn, tenant)
    if w.spend_caps:
        if h.request_id is not None:  # a requestId seen before answers its hold, refused by no cap
            seen = conn.execute(
                f"SELECT {_HOLD} FROM holds WHERE tenant = :tenant AND user_id = :user AND request_id = :request",
                {"tenant": tenant, "user": h.user, "request": h.request_id, "now": h.now},
            ).fetchone()
            if seen is not None:
                return hold_row(seen)
        check_spend_cap(conn, tenant, h.user, h.currency, h.amount, h.now)
    balance, expired, held = conn.execute(ACCOUNT, (tenant, h.user, h.currency, h.now)).fetchone()
    params = {
        "id": hold_id, "tenant": tenant, "user": h.user, "currency": h.currency, "amount": h.amount,
        "expires": h.expires_at, "now": h.now, "request": h.request_id,
        "metadata": json_text(h.metadata) if h.metadata is not None else None,
    }
    row = conn.execute(
        f"INSERT INTO holds (id, tenant, user_id, currency, amount, expires_at, created_at, request_id, metadata)"
        f" VALUES (:id, :tenant, :user, :currency, :amount, :expires, :now, :request, :metadata)"
        f" ON CONFLICT (tenant, user_id, request_id) DO NOTHING RETURNING {_HOLD}",
        params,
    ).fetchone()
    if row is None:  # the requestId was seen for this user: the original hold is the answer
        return hold_row(conn.execute(
            f"SELECT {_HOLD} FROM holds WHERE tenant = :tenant AND user_id = :user AND request_id = :request", params
        ).fetchone())
    if held + h.amount > INT64_MAX:
        raise OutOfRange("holds")
    if not h.covered(balance - expired, held):
        raise ShortOfFunds(balance - expired, held)
    if w.alerts or w.spend_caps:
        after_account_write(conn, tenant, h.user, h.currency, h.now, w)
    return hold_row(row)


def _capture_hold(
    conn: sqlite3.Connection, tenant: int, hold_id: str, amount: int | None, now: int, charge: HoldCharge,
    outbox: Outbox | None,
) -> HoldRow:
    row = conn.execute(
        f"UPDATE holds SET status = 'captured', captured_amount = COALESCE(:amount, amount), settled_at = {_SETTLED_AT}"
        f" WHERE tenant = :tenant AND id = :id AND {_PENDING} AND COALESCE(:amount, amount) <= amount RETURNING {_HOLD}",
        {"tenant": tenant, "id": hold_id, "now": now, "amount": amount},
    ).fetchone()
    if row is None:
        held = _refuse_settlement(conn, tenant, hold_id, now)
        raise OverCapture(amount or held, held)
    hold = hold_row(row)
    captured = hold["capturedAmount"]
    assert captured is not None, "the capture's UPDATE set it"
    tx, w = append_entry(conn, tenant, charge(hold, captured), outbox)
    conn.execute("UPDATE holds SET transaction_id = ? WHERE tenant = ? AND id = ?", (tx["id"], tenant, hold_id))
    settled: HoldRow = hold | {"transactionId": tx["id"]}
    _settled(conn, tenant, settled, now, w, outbox)
    return settled


def _settled(conn: sqlite3.Connection, tenant: int, hold: HoldRow, now: int, w: Watch, outbox: Outbox | None) -> None:
    """A hold captured, released or expired: its event, and the watch's look at its account."""
    if outbox is not None:
        told = outbox.herald.hold(hold)
        emit(conn, tenant, told[0], told[1], now, hold["holdId"])
    if w.alerts or w.spend_caps:
        after_account_write(conn, tenant, hold["user"], hold["currency"], now, w)


def _release_hold(conn: sqlite3.Connection, tenant: int, hold_id: str, now: int, outbox: Outbox | None) -> HoldRow:
    row = conn.execute(
        f"UPDATE holds SET status = 'released', settled_at = {_SETTLED_AT} WHERE tenant = :tenant AND id = :id AND {_PENDING}"
        f" RETURNING {_HOLD}",
        {"tenant": tenant, "id": hold_id, "now": now},
    ).fetchone()
    if row is None:
        _refuse_settlement(conn, tenant, hold_id, now)
        raise AssertionError("a pending, unexpired hold did not match the release")
    hold = hold_row(row)
    _settled(conn, tenant, hold, now, watch(conn, tenant), outbox)
    return hold


def _refuse_settlement(conn: sqlite3.Connection, tenant: int, hold_id: str, now: int) -> int:
    """Why a settling UPDATE matched nothing: no such hold here, or not pending. Returns the
    hold's amount only when it is pending, for the caller to name its reason."""
    found = conn.execute(
        "SELECT CASE WHEN status = 'pending' AND expires_at <= ? THEN 'expired' ELSE status END, amount FROM holds"
        " WHERE tenant = ? AND id = ?",
        (now, tenant, hold_id),
    ).fetchone()
    if found is None:
        raise Missing("hold")
    if found[0] != "pending":
        raise NotPending(found[0])
    return int(found[1])


# A hold's columns in hold_row's order, once its status is settled (no `now` needed).
_SETTLED = ("id, user_id, currency, amount, status, expires_at, created_at, captured_amount, transaction_id, request_id,"
            " metadata, settled_at")


def _expire_holds(conn: sqlite3.Connection, now: int, limit: int, outbox: Outbox | None) -> int:
    """Mark lapsed holds expired, each with its event, dated now (the sweep's instant), and the
    watch's look at its account; a tenant's Watch is read once per sweep job."""
    rows = conn.execute(
        "UPDATE holds SET status = 'expired', settled_at = expires_at"
        f" WHERE seq IN (SELECT seq FROM holds WHERE status = 'pending' AND expires_at <= ? LIMIT ?) RETURNING tenant, {_SETTLED}",
        (now, limit),
    ).fetchall()
    watches: dict[int, Watch] = {}
    for tenant, *columns in rows:
        w = watches.get(tenant)
        if w is None:
            w = watches[tenant] = watch(conn, tenant)
        _settled(conn, tenant, hold_row(columns), now, w, outbox)
    return len(rows)
