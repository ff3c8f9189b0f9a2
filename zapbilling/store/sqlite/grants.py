"""Credit grants and their journal. A grant's `remaining` is a cache of its journal: every
change to it (creation, a burn, a void, expiry) writes an immutable `credit_transactions` row
in the same transaction, so the rows of a grant always sum to its remaining cents. A burn is
one transaction, so two concurrent burns can never spend the same cents."""
from __future__ import annotations

import sqlite3

from ..base import SYSTEM_KEY, Burn, BurnedGrant, BurnPlan, GrantChange, GrantRow, Idempotency, NewGrant
from ..herald import Outbox
from ..ids import new_id
from .connection import SqliteBase
from .outbox import emit
from ..refusals import AlreadyVoided, Missing
from ..rows import CHANGE_COLUMNS as _CHANGE, GRANT_COLUMNS as _GRANT, change_row, grant_row, json_text

# Effective from creation on even when the clock has been set back behind it since (billing/
# grants.py is_active says the same).
_ACTIVE = ("voided_at IS NULL AND remaining > 0 AND effective_at <= MAX(:now, created_at)"
           " AND (expires_at IS NULL OR expires_at > :now)")


class GrantQueries(SqliteBase):
    _outbox: Outbox | None = None  # see LedgerQueries.announce_with

    async def create_grant(self, tenant: int, grant: NewGrant, idempotency: Idempotency | None = None) -> GrantRow:
        return await self._write(tenant, idempotency, grant.now, _create_grant, tenant, new_id("cg"), grant, self._outbox)

    async def list_grants(self, tenant: int, user: str) -> list[GrantRow]:
        rows = await self._read(f"SELECT {_GRANT} FROM credit_grants WHERE tenant = ? AND user_id = ? ORDER BY seq", (tenant, user))
        return [grant_row(r) for r in rows]

    async def active_grants(self, tenant: int, user: str, now: int, currency: str | None = None) -> list[GrantRow]:
        """Active grants (of one currency, if given) in creation order."""
        where = "tenant = :tenant AND user_id = :user" + (" AND currency = :currency" if currency is not None else "")
        rows = await self._read(
            f"SELECT {_GRANT} FROM credit_grants WHERE {where} AND {_ACTIVE} ORDER BY seq",
            {"tenant": tenant, "user": user, "currency": currency, "now": now},
        )
        return [grant_row(r) for r in rows]

    async def void_grant(
        self, tenant: int, grant_id: str, now: int, key_id: str, idempotency: Idempotency | None = None
    ) -> GrantRow:
        return await self._write(tenant, idempotency, now, _void_grant, tenant, grant_id, now, key_id, self._outbox)

    async def burn_grants(
        self, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int, key_id: str,
        plan: BurnPlan, idempotency: Idempotency | None = None,
    ) -> Burn:
        """Burn `amount` from the active grants as `plan` (the domain's burn order) decides,
        inside one transaction, one journal row per grant touched."""
        return await self._write(
            tenant, idempotency, now, _burn, tenant, user, currency, amount, meter_id, now, key_id, plan, self._outbox
        )

    async def grant_changes_page(
        self, tenant: int, user: str, grant_id: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[GrantChange], bool]:
        """Newest first (equal times: last written first), walking the user's (or the grant's)
        end of a (.., created_at, seq) index: a page costs the same however long the journal."""
        if grant_id is None:
            where, params = "tenant = ? AND user_id = ?", [tenant, user]
        else:
            if not await self._read("SELECT 1 FROM credit_grants WHERE tenant = ? AND user_id = ? AND id = ?", (tenant, user, grant_id)):
                raise Missing("grant")
            where, params = "grant_id = ?", [grant_id]
        if starting_after is not None:
            found = await self._read(f"SELECT created_at, seq FROM credit_transactions WHERE {where} AND id = ?", (*params, starting_after))
            if not found:
                raise Missing("grant change")
            where += " AND (created_at, seq) < (?, ?)"
            params += found[0]
        rows = await self._read(
            f"SELECT {_CHANGE} FROM credit_transactions WHERE {where} ORDER BY created_at DESC, seq DESC LIMIT ?",
            (*params, limit + 1),
        )
        return [change_row(r) for r in rows[:limit]], len(rows) > limit

    async def expire_grants(self, now: int, limit: int = 500) -> int:
        """Journal the expiry of up to `limit` users' grants that expired with cents left;
        returns how many users. Reads never need this (an expired grant is inactive from its
        expiresAt on); it brings `remaining` and the journal up to date for users who never
        come back."""
        return await self._run(_sweep_expired, now, limit, self._outbox)


def _journal(conn: sqlite3.Connection, tenant: int, grant: GrantRow, type: str, amount: int, remaining_after: int,
             now: int, key_id: str, burn_id: str | None = None, meter_id: str | None = None) -> None:
    conn.execute(
        "INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after,"
        " burn_id, meter_id, created_at, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id("ct"), tenant, grant["id"], grant["userId"], grant["currency"], type, amount, remaining_after,
         burn_id, meter_id, now, key_id),
    )


def _tell(conn: sqlite3.Connection, outbox: Outbox | None, tenant: int, grant: GrantRow, change: str, now: int) -> None:
    """A grant's event for a journal row of type `change` (burn: only the one that emptied it)."""
    if outbox is not None:
        told = outbox.herald.grant(grant, change, now)
        emit(conn, tenant, told[0], told[1], now, grant["id"])


def _expire_user(conn: sqlite3.Connection, tenant: int, user: str, now: int, key_id: str, outbox: Outbox | None) -> None:
    """Journal what was left of the user's grants that expired by `now`: the first write that
    touches the user's grants does this before anything else, so every grant change it makes
    starts from a journal that is up to date."""
    rows = conn.execute(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = ? AND user_id = ? AND remaining > 0 AND expires_at <= ?"
        " ORDER BY expires_at, seq",
        (tenant, user, now),
    ).fetchall()
    for r in rows:
        grant = grant_row(r)
        conn.execute("UPDATE credit_grants SET remaining = 0 WHERE id = ?", (grant["id"],))
        # dated when written, like the ledger's forfeits (a row dated in the past would slip in
        # behind a page a caller has already read)
        _journal(conn, tenant, grant, "expire", -grant["remainingCents"], 0, now, key_id)
        _tell(conn, outbox, tenant, grant | {"remainingCents": 0}, "expire", now)


def _sweep_expired(conn: sqlite3.Connection, now: int, limit: int, outbox: Outbox | None) -> int:
    users = conn.execute(
        "SELECT DISTINCT tenant, user_id FROM credit_grants WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= ?"
        " LIMIT ?",
        (now, limit),
    ).fetchall()
    for tenant, user in users:
        _expire_user(conn, tenant, user, now, SYSTEM_KEY, outbox)
    return len(users)


def _check_meters(conn: sqlite3.Connection, tenant: int, meter_ids: list[str]) -> None:
    for i, meter_id in enumerate(meter_ids):
        if conn.execute("SELECT 1 FROM meters WHERE tenant = ? AND id = ?", (tenant, meter_id)).fetchone() is None:
            raise Missing("meter", i)


def _create_grant(conn: sqlite3.Connection, tenant: int, grant_id: str, g: NewGrant, outbox: Outbox | None) -> GrantRow:
    _check_meters(conn, tenant, g.eligibility)
    _expire_user(conn, tenant, g.user, g.now, g.key_id, outbox)
    row = conn.execute(
        f"INSERT INTO credit_grants (id, tenant, user_id, name, amount, remaining, currency, priority, effective_at,"
        f" expires_at, eligibility, tags, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_GRANT}",
        (grant_id, tenant, g.user, g.name, g.amount, g.amount, g.currency, g.priority, g.effective_at, g.expires_at,
         json_text(g.eligibility), g.tags, g.now),
    ).fetchone()
    grant = grant_row(row)
    _journal(conn, tenant, grant, "grant", g.amount, g.amount, g.now, g.key_id)
    return grant


def _void_grant(conn: sqlite3.Connection, tenant: int, grant_id: str, now: int, key_id: str, outbox: Outbox | None) -> GrantRow:
    found = conn.execute("SELECT user_id FROM credit_grants WHERE tenant = ? AND id = ?", (tenant, grant_id)).fetchone()
    if found is None:
        raise Missing("grant")
    _expire_user(conn, tenant, found[0], now, key_id, outbox)
    row = conn.execute(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = ? AND id = ? AND voided_at IS NULL", (tenant, grant_id)
    ).fetchone()
    if row is None:
        raise AlreadyVoided()
    grant = grant_row(row)
    voided = conn.execute(
        f"UPDATE credit_grants SET voided_at = ?, remaining = 0 WHERE id = ? RETURNING {_GRANT}", (now, grant_id)
    ).fetchone()
    _journal(conn, tenant, grant, "void", -grant["remainingCents"], 0, now, key_id)
    after = grant_row(voided)
    _tell(conn, outbox, tenant, after, "void", now)
    return after


def _burn(
    conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int,
    key_id: str, plan: BurnPlan, outbox: Outbox | None,
) -> Burn:
    if meter_id is not None:
        _check_meters(conn, tenant, [meter_id])
    _expire_user(conn, tenant, user, now, key_id, outbox)
    rows = conn.execute(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = :tenant AND user_id = :user AND currency = :currency"
        f" AND {_ACTIVE} ORDER BY seq",
        {"tenant": tenant, "user": user, "currency": currency, "now": now},
    ).fetchall()
    burn_id = new_id("burn")
    burned: list[BurnedGrant] = []
    for grant, take in plan([grant_row(r) for r in rows], amount, meter_id):
        (left,), = conn.execute(
            "UPDATE credit_grants SET remaining = remaining - ? WHERE id = ? AND remaining >= ? RETURNING remaining",
            (take, grant["id"], take),
        ).fetchall()
        _journal(conn, tenant, grant, "burn", -take, left, now, key_id, burn_id, meter_id)
        if left == 0:
            _tell(conn, outbox, tenant, grant | {"remainingCents": 0}, "burn", now)
        burned.append({"id": grant["id"], "burned": take, "remainingCents": left})
    return {"burnId": burn_id if burned else None, "grants": burned}
