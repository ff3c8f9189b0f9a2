"""Credit grants and their journal on PostgreSQL (the SQLite module's semantics: ../sqlite/grants.py).
A grant's `remaining` is a cache of its journal: every change to it (creation, a burn, a void,
expiry) writes an immutable `credit_transactions` row in the same transaction.

SQLite's single writer made each of those a read of remainders and a write that nothing could
overtake. Here many servers write at once, so every write that changes a remainder first locks
the user's grants (rule 3 of connection.py: `_lock_user`, creation order) and only then reads
the remainders it decides on; two burns of one user queue on those rows, and the second reads
what the first left (READ COMMITTED: each statement sees the latest commits)."""
from __future__ import annotations


import asyncpg

from ..base import SYSTEM_KEY, Burn, BurnedGrant, BurnPlan, GrantChange, GrantRow, Idempotency, NewGrant
from ..herald import Outbox
from ..ids import new_id
from ..refusals import AlreadyVoided, Missing
from ..rows import CHANGE_COLUMNS as _CHANGE, GRANT_COLUMNS as _GRANT, change_row, grant_row, json_text
from .connection import PgBase
from .outbox import emit_many, event_args

# Effective from creation on even when the clock has been set back behind it since (billing/
# grants.py is_active says the same). `{now}` is the parameter holding the call's instant.
_ACTIVE = ("voided_at IS NULL AND remaining > 0 AND effective_at <= GREATEST({now}, created_at)"
           " AND (expires_at IS NULL OR expires_at > {now})")


class GrantQueries(PgBase):
    _outbox: Outbox | None = None  # see LedgerQueries.announce_with

    async def create_grant(self, tenant: int, grant: NewGrant, idempotency: Idempotency | None = None) -> GrantRow:
        return await self._write(tenant, idempotency, grant.now, _create_grant, tenant, new_id("cg"), grant, self._outbox)  # type: ignore[no-any-return]

    async def list_grants(self, tenant: int, user: str) -> list[GrantRow]:
        rows = await self._read(f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND user_id = $2 ORDER BY seq", tenant, user)
        return [grant_row(r) for r in rows]

    async def active_grants(self, tenant: int, user: str, now: int, currency: str | None = None) -> list[GrantRow]:
        """Active grants (of one currency, if given) in creation order."""
        if currency is None:
            rows = await self._read(
                f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND {_ACTIVE.format(now='$3')}"
                " ORDER BY seq",
                tenant, user, now,
            )
        else:
            rows = await self._read(
                f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND currency = $4"
                f" AND {_ACTIVE.format(now='$3')} ORDER BY seq",
                tenant, user, now, currency,
            )
        return [grant_row(r) for r in rows]

    async def void_grant(
        self, tenant: int, grant_id: str, now: int, key_id: str, idempotency: Idempotency | None = None
    ) -> GrantRow:
        return await self._write(tenant, idempotency, now, _void_grant, tenant, grant_id, now, key_id, self._outbox)  # type: ignore[no-any-return]

    async def burn_grants(
        self, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int, key_id: str,
        plan: BurnPlan, idempotency: Idempotency | None = None,
    ) -> Burn:
        """Burn `amount` from the active grants as `plan` (the domain's burn order) decides,
        inside one transaction that holds the user's grants locked, one journal row per grant
        touched."""
        return await self._write(  # type: ignore[no-any-return]
            tenant, idempotency, now, _burn, tenant, user, currency, amount, meter_id, now, key_id, plan, self._outbox
        )

    async def grant_changes_page(
        self, tenant: int, user: str, grant_id: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[GrantChange], bool]:
        """Newest first (equal times: last written first), walking the user's (or the grant's)
        end of a (.., created_at, seq) index: a page costs the same however long the journal."""
        if grant_id is None:
            where, params = "tenant = $1 AND user_id = $2", [tenant, user]
        else:
            if not await self._read("SELECT 1 FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND id = $3", tenant, user, grant_id):
                raise Missing("grant")
            where, params = "grant_id = $1", [grant_id]
        if starting_after is not None:
            n = len(params)
            found = await self._read(f"SELECT created_at, seq FROM credit_transactions WHERE {where} AND id = ${n + 1}", *params, starting_after)
            if not found:
                raise Missing("grant change")
            where += f" AND (created_at, seq) < (${n + 1}, ${n + 2})"
            params += [found[0][0], found[0][1]]
        rows = await self._read(
            f"SELECT {_CHANGE} FROM credit_transactions WHERE {where} ORDER BY created_at DESC, seq DESC LIMIT ${len(params) + 1}",
            *params, limit + 1,
        )
        return [change_row(r) for r in rows[:limit]], len(rows) > limit

    async def expire_grants(self, now: int, limit: int = 500) -> int:
        """Journal the expiry of up to `limit` users' grants that expired with cents left;
        returns how many users it found with some (as SQLite's, so that the caller's loop
        goes on while any are left, even when another server's sweep took them first). Reads never need this (an expired grant is inactive
        from its expiresAt on); it brings `remaining` and the journal up to date for users who
        never come back.

        One transaction per user, each locking that user's grants only (as a burn does): a
        sweep never holds two users' locks, so it cannot form a lock cycle with the writes of
        requests, nor make them wait for more than one user's expiry. A user another server's
        sweep (or a burn) expired meanwhile is found with nothing left once locked."""
        users = await self._read(
            "SELECT DISTINCT tenant, user_id FROM credit_grants WHERE remaining > 0 AND expires_at IS NOT NULL"
            " AND expires_at <= $1 ORDER BY tenant, user_id LIMIT $2",
            now, limit,
        )
        for tenant, user in users:
            await self._tx(_expire_one, tenant, user, now, self._outbox)
        return len(users)


async def _lock_user(conn: asyncpg.Connection, tenant: int, user: str, also: str | None = None) -> list[int]:
    """Rule 3 of connection.py: lock the user's grants that still hold cents, and the grant
    `also` (a void's, whatever it holds), in creation order, until the transaction ends;
    returns the seqs of those holding cents. Only those: a grant at 0 has no remainder left to
    change, and locking every grant a user ever had would make each burn write a lock into
    ever more rows. A void's grant is locked here, in its place in the order, not after: a
    concurrent lock of this statement that waited for a grant and then found it burned to 0
    keeps that lock (PostgreSQL's recheck skips the row but does not unlock it), so taking a
    grant out of order deadlocked (measured: 6 to 25 deadlocks retried in each of three runs of
    400 mixed burns, creates and voids from two pools, each cycle through a void; none in three
    runs since, tests/test_pg_grant_locks.py).

    What follows reads and changes these rows only (`seq = ANY(locked)`), never a grant whose
    creation committed after this statement began: two grants created at once may commit out
    of seq order, so locking such a late one afterwards could take a lower seq after higher
    ones, out of the protocol's order, and changing it unlocked could overtake another writer's
    read. A write that does not see such a grant is one ordered before its creation."""
    rows = await conn.fetch(
        "SELECT seq, remaining FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND (remaining > 0 OR id = $3)"
        " ORDER BY seq FOR UPDATE",
        tenant, user, also,
    )
    return [r[0] for r in rows if r[1] > 0]


async def _journal(conn: asyncpg.Connection, tenant: int, grant: GrantRow, type: str, amount: int, remaining_after: int,
                   now: int, key_id: str, burn_id: str | None = None, meter_id: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after,"
        " burn_id, meter_id, created_at, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        new_id("ct"), tenant, grant["id"], grant["userId"], grant["currency"], type, amount, remaining_after,
        burn_id, meter_id, now, key_id,
    )


async def _tell(conn: asyncpg.Connection, outbox: Outbox | None, tenant: int, grant: GrantRow, change: str, now: int) -> None:
    """A grant's event for a journal row of type `change` (burn: only the one that emptied it)."""
    if outbox is not None:
        await emit_many(conn, [event_args(tenant, outbox.herald.grant(grant, change, now), now, grant["id"])])


async def _expire_user(
    conn: asyncpg.Connection, tenant: int, user: str, now: int, key_id: str, locked: list[int], outbox: Outbox | None
) -> int:
    """Journal what was left of the user's grants that expired by `now`, of those the caller
    holds `locked` (`_lock_user`); returns how many. The first write that touches the
    user's grants does this before anything else, so every grant change it makes starts from a
    journal that is up to date."""
    rows = await conn.fetch(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND remaining > 0 AND expires_at <= $3"
        " AND seq = ANY($4::bigint[]) ORDER BY expires_at, seq",
        tenant, user, now, locked,
    )
    for r in rows:
        grant = grant_row(r)
        await conn.execute("UPDATE credit_grants SET remaining = 0 WHERE id = $1", grant["id"])
        # dated when written, like the ledger's forfeits (a row dated in the past would slip in
        # behind a page a caller has already read)
        await _journal(conn, tenant, grant, "expire", -grant["remainingCents"], 0, now, key_id)
        await _tell(conn, outbox, tenant, grant | {"remainingCents": 0}, "expire", now)
    return len(rows)


async def _expire_one(conn: asyncpg.Connection, tenant: int, user: str, now: int, outbox: Outbox | None) -> None:
    """The sweep's job for one user."""
    locked = await _lock_user(conn, tenant, user)
    await _expire_user(conn, tenant, user, now, SYSTEM_KEY, locked, outbox)


async def _check_meters(conn: asyncpg.Connection, tenant: int, meter_ids: list[str]) -> None:
    for i, meter_id in enumerate(meter_ids):
        if await conn.fetchval("SELECT 1 FROM meters WHERE tenant = $1 AND id = $2", tenant, meter_id) is None:
            raise Missing("meter", i)


async def _create_grant(conn: asyncpg.Connection, tenant: int, grant_id: str, g: NewGrant, outbox: Outbox | None) -> GrantRow:
    await _check_meters(conn, tenant, g.eligibility)
    locked = await _lock_user(conn, tenant, g.user)
    await _expire_user(conn, tenant, g.user, g.now, g.key_id, locked, outbox)
    row = await conn.fetchrow(
        f"INSERT INTO credit_grants (id, tenant, user_id, name, amount, remaining, currency, priority, effective_at,"
        f" expires_at, eligibility, tags, created_at) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12)"
        f" RETURNING {_GRANT}",
        grant_id, tenant, g.user, g.name, g.amount, g.currency, g.priority, g.effective_at, g.expires_at,
        json_text(g.eligibility), g.tags, g.now,
    )
    grant = grant_row(row)
    await _journal(conn, tenant, grant, "grant", g.amount, g.amount, g.now, g.key_id)
    return grant


async def _void_grant(
    conn: asyncpg.Connection, tenant: int, grant_id: str, now: int, key_id: str, outbox: Outbox | None
) -> GrantRow:
    user = await conn.fetchval("SELECT user_id FROM credit_grants WHERE tenant = $1 AND id = $2", tenant, grant_id)
    if user is None:
        raise Missing("grant")
    locked = await _lock_user(conn, tenant, user, grant_id)
    await _expire_user(conn, tenant, user, now, key_id, locked, outbox)
    # The row as it is now, locked above: of two concurrent voids the second waits there and
    # then finds it voided.
    row = await conn.fetchrow(f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND id = $2", tenant, grant_id)
    if row is None or row["voided_at"] is not None:
        raise AlreadyVoided()
    grant = grant_row(row)
    voided = await conn.fetchrow(
        f"UPDATE credit_grants SET voided_at = $2, remaining = 0 WHERE id = $1 RETURNING {_GRANT}", grant_id, now
    )
    await _journal(conn, tenant, grant, "void", -grant["remainingCents"], 0, now, key_id)
    after = grant_row(voided)
    await _tell(conn, outbox, tenant, after, "void", now)
    return after


async def _burn(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int,
    key_id: str, plan: BurnPlan, outbox: Outbox | None,
) -> Burn:
    if meter_id is not None:
        await _check_meters(conn, tenant, [meter_id])
    locked = await _lock_user(conn, tenant, user)
    await _expire_user(conn, tenant, user, now, key_id, locked, outbox)
    # The remainders the plan decides on are those of rows this transaction holds locked.
    rows = await conn.fetch(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = $1 AND user_id = $2 AND currency = $3"
        f" AND {_ACTIVE.format(now='$4')} AND seq = ANY($5::bigint[]) ORDER BY seq",
        tenant, user, currency, now, locked,
    )
    burn_id = new_id("burn")
    burned: list[BurnedGrant] = []
    for grant, take in plan([grant_row(r) for r in rows], amount, meter_id):
        # Conditional all the same: a plan that asked for more than a grant holds fails loudly
        # rather than storing a negative remainder.
        left = await conn.fetchval(
            "UPDATE credit_grants SET remaining = remaining - $1 WHERE id = $2 AND remaining >= $1 RETURNING remaining",
            take, grant["id"],
        )
        assert left is not None, f"the burn plan took {take} from grant {grant['id']}, which holds less"
        await _journal(conn, tenant, grant, "burn", -take, left, now, key_id, burn_id, meter_id)
        if left == 0:
            await _tell(conn, outbox, tenant, grant | {"remainingCents": 0}, "burn", now)
        burned.append({"id": grant["id"], "burned": take, "remainingCents": left})
    return {"burnId": burn_id if burned else None, "grants": burned}
