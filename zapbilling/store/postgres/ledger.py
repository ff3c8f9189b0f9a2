"""The ledger on PostgreSQL (as ../sqlite/ledger.py): rows, running balances kept in the same
transaction, expiring deposits spent first and forfeited only for their unspent remainder.

Every write to an account takes its lock first (`lock_account`, rule 1 of connection.py), so
the dedupe check, the lots walk, a refund's claim and the balance update all read what the
previous writer of that account committed, and none can be overtaken between read and write.
"""
from __future__ import annotations

import functools
import operator
import time
from typing import Any, Iterator, Sequence

import asyncpg

from ..base import INT64_MAX, INT64_MIN, SYSTEM_KEY, Idempotency, LedgerFilter, LedgerRow, Lot, LotRules
from ..base import NewEntry, Note, Refundable, moved as note_moved
from ..herald import Herald, Outbox, Told
from ..ids import new_id, row_event_id
from ..ledger_filters import Dialect, needs_probe, never_matches, page, probe, walk_for
from ..refusals import Missing, NotRefundable, OutOfRange, RefundLeft
from ..rows import LEDGER_COLUMNS as _ROW, ledger_row as _row, json_text
from .connection import _SNAPSHOT, UNCHECKED_KEY, KEY_VALID, PgBase, affected, lock_account
from .outbox import NOTHING, Watch, emit_many, event_args, forfeit_row, lock_watching
from .pool import Lease
from .sums import ACCOUNT, ACCOUNT_OF, EXPIRED, HELD
from .turns import TurnBatch
from .watch import after_account_write, after_meter_events
from ...loop_turn import converted
from ..rows import LEDGER_ROWS_PER_STEP

# One account's balance row, expired unforfeited credit and pending holds: ACCOUNT, EXPIRED and
# HELD (sums.py, shared with the alerts and the watch; BIGINT sums, ints on every backend).
ACCOUNT_AND_KEY = f"{ACCOUNT}, ({KEY_VALID.replace('$1', '$5')})"
"""ACCOUNT and whether the API key whose digest is $5 is valid, in one statement."""
_EACH_READ = dict(tenant="r.t", user="r.u", currency="r.c", now="r.n")
ACCOUNTS = (
    f"SELECT {ACCOUNT_OF.format(**_EACH_READ)}, r.d IS NULL OR ({KEY_VALID.replace('$1', 'r.d')})"
    " FROM unnest($1::account_read[]) WITH ORDINALITY AS r (t, u, c, n, d, i) ORDER BY r.i"
)
"""ACCOUNT_AND_KEY for many accounts at once (turns.py), in the order of the rows of $1, each an
AccountRead (migration 17's account_read: one array of rows rather than five arrays, for the
checks asyncpg makes of each element, as _APPEND_MANY below)."""
AccountRead = tuple[int, str, str, int, "str | None"]
"""An account read's arguments: tenant, user, currency, now, the digest of a key to check (or None)."""
_EACH = dict(tenant="$1", user="$2", currency="c.currency", now="$3")

HAS_ROWS = (
    "(SELECT 1 FROM ledger l WHERE l.tenant = {b}.tenant AND l.user_id = {b}.user_id AND l.currency = {b}.currency"
    " LIMIT 1) IS NOT NULL"
)
"""Whether the balances row `{b}` stands for an account with a ledger row. On SQLite a balances
row exists only then; here `lock_account` also creates one at 0 for writes that append no row
(a hold placed or released), and the listings (a currency of `balances`, a user of
`listAccounts`) must not show such an account once its hold has gone. A walk of the user's
ledger_history entries that stops at the first row in the currency: the first one for a user of
one currency. A scalar subquery, not EXISTS: PostgreSQL turns EXISTS into a merge semi join that
reads the tenant's whole ledger from its start (132 ms for a page of 100 at the 10,000th of
50,000 accounts), where a subquery per walked row costs one index probe (a page: ms below)."""


# The listing's walks (../ledger_filters.py). The planner takes ledger_by_type for an equality
# on type by itself. The tags walk's ledger rows are looked up one by one by seq (a LATERAL
# subquery that LIMIT keeps from being flattened into a join): as a plain join the planner,
# judging ledger_tags small, chose a merge join with a backward walk of the ledger's primary
# key (seen on 1,000,000 rows), which reads the ledger down to the oldest entry's seq. Measured
# (1,000,000 usage rows, dev cluster): a page filtered by a tag of one row 0.3-0.5 ms, by that
# tag and a type it does not have 1.1 ms; testing every row as before, 372-518 ms.
_DIALECT = Dialect(
    mark=lambda n: f"${n}",
    tag_test="strpos(',' || tags || ',', ',' || {}::text || ',') > 0",
    history="ledger",
    by_type="ledger",
    tagged="ledger_tags t CROSS JOIN LATERAL (SELECT * FROM ledger WHERE seq = t.seq LIMIT 1) l",
)


class LedgerQueries(PgBase):
    _outbox: Outbox | None = None
    """The domain's herald (store/herald.py), installed at start-up: None records no events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accounts: TurnBatch[AccountRead, tuple[int, int, int, bool]] = TurnBatch(self._account, self._accounts_at_once)
        self._appends: TurnBatch[AppendArgs, int] = TurnBatch(self._append_one, self._append_many)

    def announce_with(self, herald: Herald) -> None:
        self._outbox = Outbox(herald)

    async def balance(self, tenant: int, user: str, currency: str, now: int) -> tuple[int, int]:
        # The request's key is checked by the same statement (keys.py): one round trip, not two;
        # and reads made at nearly the same time share one (turns.py).
        digest = UNCHECKED_KEY.get()
        if _SNAPSHOT.get() is not None:  # inside a snapshot, its transaction's reads
            b, expired, held, valid = await self._account((tenant, user, currency, now, digest))
        else:
            b, expired, held, valid = await self._accounts.call((tenant, user, currency, now, digest))
        if digest is not None:
            self._key_checked(digest, valid)
        return b - expired, held

    async def _account(self, a: AccountRead) -> tuple[int, int, int, bool]:
        if a[4] is None:
            b, expired, held = (await self._read(ACCOUNT, *a[:4]))[0]
            return b, expired, held, True
        b, expired, held, valid = (await self._read(ACCOUNT_AND_KEY, *a))[0]
        return b, expired, held, valid

    async def _accounts_at_once(self, reads: Sequence[AccountRead]) -> list[tuple[int, int, int, bool]]:
        async with Lease(self.pool) as conn:
            rows = await conn.fetch(ACCOUNTS, reads)
        return [tuple(r) for r in rows]

    async def balances(self, tenant: int, user: str, now: int) -> list[tuple[str, int, int]]:
        """Every currency with a ledger row, or with a hold pending now, by currency."""
        rows = await self._read(
            "SELECT c.currency,"
            " COALESCE((SELECT balance FROM balances WHERE tenant = $1 AND user_id = $2 AND currency = c.currency), 0),"
            f" ({EXPIRED.format(**_EACH)}), ({HELD.format(**_EACH)})"
            f" FROM (SELECT currency FROM balances b WHERE tenant = $1 AND user_id = $2 AND {HAS_ROWS.format(b='b')}"
            "  UNION SELECT currency FROM holds WHERE tenant = $1 AND user_id = $2"
            "  AND status = 'pending' AND expires_at > $3) c ORDER BY c.currency",
            tenant, user, now,
        )
        return [(c, b - expired, held) for c, b, expired, held in rows]

    async def usage_page(
        self, tenant: int, user: str, currency: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        # Usage is the usage withdrawals: a deposit the caller tagged api-usage is none. A range
        # of the ledger_usage index (WHERE tags = 'api-usage'), the type a test on each row.
        where, params = "tenant = $1 AND user_id = $2 AND tags = 'api-usage' AND type = 'withdraw'", [tenant, user]
        if starting_after is not None:
            found = await self._read(f"SELECT seq FROM ledger WHERE {where} AND id = $3", tenant, user, starting_after)
            if not found:
                raise Missing("ledger row")
            params.append(found[0][0])
            where += f" AND seq < ${len(params)}"
        if currency is not None:
            params.append(currency)
            where += f" AND currency = ${len(params)}"
        params.append(limit + 1)
        rows = await self._read(f"SELECT {_ROW} FROM ledger WHERE {where} ORDER BY seq DESC LIMIT ${len(params)}", *params)
        return await converted(rows[:limit], _row, LEDGER_ROWS_PER_STEP), len(rows) > limit

    async def ledger_page(
        self, tenant: int, user: str, where: LedgerFilter, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        """The first `limit` rows of one walk (../ledger_filters.py), as the SQLite store."""
        cursor: tuple[int, int] | None = None
        if starting_after is not None:
            found = await self._read("SELECT created_at, seq FROM ledger WHERE tenant = $1 AND user_id = $2 AND id = $3",
                                     tenant, user, starting_after)
            if not found:
                raise Missing("ledger row")
            cursor = (found[0][0], found[0][1])
        if never_matches(where):
            return [], False
        sizes = None
        if needs_probe(where):
            probed = probe(_DIALECT, tenant, user, where, cursor)
            (a, b), = await self._read(probed.sql, *probed.params)
            sizes = (a, b)
        s = page(_DIALECT, walk_for(where, sizes), tenant, user, where, cursor, limit + 1)
        rows = await self._read(s.sql, *s.params)
        return await converted(rows[:limit], _row, LEDGER_ROWS_PER_STEP), len(rows) > limit

    async def append_ledger_row(
        self, tenant: int, entry: NewEntry, idempotency: Idempotency | None = None, refundable: Refundable | None = None
    ) -> LedgerRow:
        """`refundable`: for a refund (`entry.refund_of`), whether the original may be refunded."""
        if may_append_at_once(entry, idempotency):
            row = await self._append_at_once(tenant, entry)
            if row is not None:
                return row
        return await self._write(tenant, idempotency, entry.now, _append, tenant, entry, refundable, self._outbox)  # type: ignore[no-any-return]

    async def _append_at_once(self, tenant: int, e: NewEntry) -> LedgerRow | None:
        """The usual write (`may_append_at_once`) as one statement that commits by itself, and
        with the usual writes of other requests made at nearly the same time (turns.py): one
        statement and one commit for all of them. ledger_append takes the account's lock, looks
        at what would need more (no account row yet, lots, alerts or spend caps, a seen dedupe
        key, an unrendered usage event the tenant wants) and writes the row, the balance, the
        usage meter event and the row's event, or nothing: then this answers None and the
        caller goes the transaction's way. The request's key, if still unchecked, is checked
        by the same statement before anything of its own is written (keys.py).

        Measured (bench scenario 2 on PostgreSQL, recordUsage full, README): four round trips
        each (BEGIN with the key's check, the lock, the append statement, COMMIT) became one
        statement per batch; 2,508 -> 5,733 req/s, server CPU 277 -> 108 us and PostgreSQL's
        347 -> 98 us per request. PostgreSQL's CPU per write alone (one connection, the dev
        cluster, synchronous_commit on): the transaction's way ~260 us, ledger_append alone
        ~226-260 us, in batches of 32 ~97 us."""
        outbox = self._outbox
        digest = UNCHECKED_KEY.get()
        row, told, event = _rendered(tenant, e, outbox)
        args = append_args(digest, tenant, e, row, told, event, outbox)
        code = await self._appends.call(args)  # a batch refused for one write's sake: each alone says whose (turns.py)
        if digest is not None:
            self._key_checked(digest, code != -2)
        if code < 0:
            return None
        if outbox is not None and outbox.usage_hooks.get(tenant, 0) != code:
            outbox.usage_hooks[tenant] = code
        return row

    async def _append_one(self, args: AppendArgs) -> int:
        started = time.perf_counter()
        code: int = await self._statement(_APPEND_ONE, *args)
        if code >= 0:
            self._committed(started, [_written(args)], 1)
        return code

    async def _append_many(self, batch: Sequence[AppendArgs]) -> list[int]:
        order = sorted(range(len(batch)), key=lambda i: _ACCOUNT_OF(batch[i]))
        started = time.perf_counter()
        codes = await self._statement(_APPEND_MANY, [batch[i] for i in order])
        answers = [0] * len(batch)
        for i, code in zip(order, codes, strict=True):
            answers[i] = code
        written = [_written(args) for args, code in zip(batch, answers) if code >= 0]
        self._committed(started, written, len(written))
        return answers

    async def forfeit_expired(self, now: int, lots: LotRules, limit: int = 500) -> int:
        """One account per transaction, each under its lock (so the sweep never holds two
        accounts' locks and cannot deadlock with the writes; a write that forfeited the lots
        meanwhile leaves the sweep nothing to do). Accounts are found without a lock: the lots
        are read again under it."""
        accounts = await self._read(
            "SELECT DISTINCT tenant, user_id, currency FROM ledger WHERE remaining > 0 AND expires_at <= $1 LIMIT $2",
            now, limit,
        )
        for tenant, user, currency in sorted(tuple(a) for a in accounts):
            await self._tx(_forfeit_account, tenant, user, currency, now, lots, self._outbox)
        return len(accounts)


LOT_PAGE = 64
"""Lots read at first; the usual write finds none or one or two."""

# The write itself after the account's lock, in one statement (a round trip each otherwise):
# the row's insert (ON CONFLICT: a seen dedupe key inserts nothing, and then nothing else is
# written); the balance update, whose new value is known from the locked row ($17; NULL when
# the lots decide it, see append_entry); the usage meter event when the tenant has a meter for
# it (its idempotency key is NULL, so no conflict can skip it);
# and the account's first page of lots, read in the same snapshot, which is taken after the
# lock was granted, so it holds every earlier writer's lots. The sub-statements see that
# snapshot and not each other's rows: the lots are those before this insert.
# Measured (bench scenario 2, recordUsage, quick runs of 3 x 2 s on the shared 2-core machine): 6
# statements in the transaction became 2; server CPU per request 962 -> 656 us, PostgreSQL's
# 780 -> 621 us, 683 -> 979 req/s (durability full).
_INSERT_ROW = (
    "ins AS (INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at,"
    " expires_at, remaining, refund_of, dedupe_key, key_id, hold_id)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    " ON CONFLICT (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING 1),"
    " bal AS (UPDATE balances SET balance = $17::bigint WHERE tenant = $2 AND user_id = $3 AND currency = $4"
    " AND $17::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM ins))"
)
_USAGE_EVENT = (
    ", mtr AS (SELECT id, seq FROM meters WHERE tenant = $2 AND event_name = $20)"
    ", ev AS (INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions,"
    " created_at, ledger_id) SELECT $18, $2, mtr.seq, $3, $6, $10, NULL, $19, $10, $1 FROM mtr"
    " WHERE EXISTS (SELECT 1 FROM ins) RETURNING 1)"
)
# The row's event (outbox.py) as one more branch, $N..$N+2 its id, type and data: written when the
# row is (not for a dedupe repeat). A usage event is gated on the tenant's usage_hooks, read in
# the statement's snapshot, so it is written exactly when the database says an endpoint names it.
_ROW_EVENT = (
    ", evt AS (INSERT INTO events (id, tenant, type, data, created_at, subject) SELECT ${0}, $2, ${1}, ${2}, $10, $1"
    " WHERE EXISTS (SELECT 1 FROM ins){3})"
)
_GATE = " AND (SELECT usage_hooks FROM tenants WHERE id = $2) > 0"
# The final SELECT: whether the row was inserted, the tenant's Watch (outbox.Watch: read here,
# in a statement the write makes anyway, not in one of its own), the usage meter event's meter,
# then the lots.
_WITH_LOTS = (
    " SELECT (SELECT COUNT(*) FROM ins), w.alerts, w.spend_caps, w.usage_hooks, {meter},"
    " l.seq, l.id, l.remaining, l.expires_at FROM (SELECT 1) one LEFT JOIN tenants w ON w.id = $2"
    " LEFT JOIN (SELECT seq, id, remaining, expires_at FROM ledger WHERE tenant = $2 AND user_id = $3 AND currency = $4"
    f" AND remaining > 0 ORDER BY expires_at, seq LIMIT {LOT_PAGE}) l ON true ORDER BY l.expires_at, l.seq"
)
_LOTS_AT = 5
"""Where a lot's columns start in a row of the append statement."""


@functools.lru_cache(maxsize=None)  # 2 x 3 texts
def _append_sql(usage: bool, event: str | None) -> str:
    """The append statement: with the usage meter event or not; with the row's event
    (`plain`), its usage event (`gated`), or none. Rows: (1 if the row was inserted else 0, the
    Watch's three counts, the usage event's meter id or NULL, then a lot's seq, id, remaining,
    expires_at), one row per lot in the ledger_lots index's order, or one row of NULLs after
    the first five if none."""
    sql = "WITH " + _INSERT_ROW
    n = 18
    if usage:
        sql += _USAGE_EVENT
        n = 21
    if event is not None:
        sql += _ROW_EVENT.format(n, n + 1, n + 2, _GATE if event == "gated" else "")
    return sql + _WITH_LOTS.format(meter="(SELECT id FROM mtr WHERE EXISTS (SELECT 1 FROM ev))" if usage else "NULL")

_SIGN = {"withdraw": -1, "deposit": 1}


async def _append(
    conn: asyncpg.Connection, tenant: int, e: NewEntry, refundable: Refundable | None, outbox: Outbox | None
) -> LedgerRow:
    row, w = await append_entry(conn, tenant, e, outbox, refundable)
    if w.alerts or w.spend_caps:
        await after_account_write(conn, tenant, e.user, e.currency, e.now, w)
    return row


async def append_entry(
    conn: asyncpg.Connection, tenant: int, e: NewEntry, outbox: Outbox | None, refundable: Refundable | None = None
) -> tuple[LedgerRow, Watch]:
    """Append one row inside the caller's transaction (a capture appends its withdrawal this
    way), under the account's lock, which this takes first (a capture holds it already: taking
    it again is a no-op); returns it and the tenant's Watch (NOTHING for a dedupe repeat, which
    writes nothing). The caller calls watch.after_account_write.

    Two statements for the usual write (an account without expiring money): the lock, then
    the append statement (_append_sql: the row, the balance, the meter event, the row's event,
    the Watch, the lots, which are none). Where there are
    lots, the rule walks them and the balance moves again by what it forfeited, as before. The
    new balance is judged in Python as before: outside int64, $17 is NULL (nothing written),
    and OutOfRange is raised once the lots are settled (a deposit's forfeits can bring it
    back), which undoes the whole transaction; a seen dedupe key answers the first row
    whatever the balance.

    The row's event rides in the append statement. A usage withdrawal's event is rendered only
    when the tenant's writes were last seen with usage hooks (Outbox.usage_hooks, a hint kept
    per process): then it rides gated on the database's count; otherwise nothing is rendered,
    and should the statement's Watch say hooks exist after all (the first write after an
    endpoint subscribed), it is written by a statement of its own. So recordUsage without hooks
    renders nothing, and with them makes no more round trips than without: recordUsage and
    deposit made 4 round trips (BEGIN with the key's check, the lock, this statement, COMMIT)
    before the events as after them. Bench scenario 2, quick runs (2 s, a shared 2-core machine
    whose noise dominates): recordUsage 1,035 -> 1,305 req/s (full), 1,450 -> 1,539 (normal);
    server CPU 470 -> 397 us per request, PostgreSQL's 546 -> 466: no cost visible. (The usual
    write now goes `_append_at_once`'s way, one statement; this one takes the rest.)"""
    balance = await lock_account(conn, tenant, e.user, e.currency)
    if e.refund_of is not None:
        assert refundable is not None, "a refund needs the domain's rule for what may be refunded"
        await _claim_refund(conn, tenant, e, refundable)
    if e.type not in _SIGN:
        raise ValueError(f"unknown ledger entry type {e.type!r}")
    row, told, event = _rendered(tenant, e, outbox)
    tx_id = row["id"]
    own = Lot(tx_id, e.amount, e.expires_at) if e.type == "deposit" and e.expires_at is not None else None
    remaining = None if own is None else own.remaining
    moved = balance + _SIGN[e.type] * e.amount
    params: list[Any] = [
        tx_id, tenant, e.user, e.currency, e.type, e.amount, e.tags, e.notes,
        json_text(e.metadata) if e.metadata is not None else None, e.now, e.expires_at, remaining, e.refund_of,
        e.dedupe_key, e.key_id, e.hold_id, moved if INT64_MIN <= moved <= INT64_MAX else None,
    ]
    if e.usage_event is not None:
        dimensions = e.usage_event.dimensions
        params += [new_id("evt"), json_text(dimensions) if dimensions is not None else None, e.usage_event.event_name]
    if told is not None:
        params += [row_event_id(tx_id), told[0], json_text(told[1])]
    rows = await conn.fetch(_append_sql(e.usage_event is not None, event), *params)
    first = rows[0]
    if not first[0]:  # the dedupe key was seen: the original row is the answer
        return _row(await conn.fetchrow(
            f"SELECT {_ROW} FROM ledger WHERE tenant = $1 AND user_id = $2 AND dedupe_key = $3", tenant, e.user, e.dedupe_key
        )), NOTHING
    w = NOTHING if first[1] is None else Watch(first[1], first[2], first[3])
    if outbox is not None:
        if outbox.usage_hooks.get(tenant, 0) != w.usage_hooks:
            outbox.usage_hooks[tenant] = w.usage_hooks
        if told is None and w.usage_hooks:  # hooks the hint did not know of: the event on its own
            late = outbox.herald.usage(row)
            if late is not None:
                await emit_many(conn, [event_args(tenant, late, e.now, tx_id, row_event_id(tx_id))])
    note_moved(e.currency, e.type, e.tags, e.amount, e.refund_of is not None, e.hold_id is not None)  # for the metrics
    lots = [tuple(r)[_LOTS_AT:] for r in rows if r[_LOTS_AT] is not None]
    spend = e.amount if e.type == "withdraw" else 0
    if own is not None and (lots or _takes_any(e.lots, own, e.now)):
        # The statement's lots predate this deposit's own lot, which the rule must see as well:
        # read them again (a rare write: an expiring deposit into an account with lots).
        forfeited = await _settle_lots(conn, tenant, e.user, e.currency, e.now, spend, e.key_id, e.lots, outbox)
    elif lots:
        forfeited = await _settle_lots(conn, tenant, e.user, e.currency, e.now, spend, e.key_id, e.lots, outbox, lots)
    else:
        forfeited = 0
    if forfeited or params[16] is None:
        await _set_balance(conn, tenant, e.user, e.currency, moved - forfeited)
    if own is not None:  # as the SQLite store's _bound_credit: the account's unspent credit within int64
        credit = await conn.fetchval("SELECT SUM(remaining) FROM ledger WHERE tenant = $1 AND user_id = $2 AND currency = $3"
                                     " AND remaining > 0", tenant, e.user, e.currency)
        if credit > INT64_MAX:  # a NUMERIC sum: exact
            raise OutOfRange("credit")
    if first[4] is not None and w.alerts:
        await after_meter_events(conn, tenant, {(first[4], e.user)}, e.now, w)
    return row, w


def _rendered(tenant: int, e: NewEntry, outbox: Outbox | None) -> tuple[LedgerRow, Told | None, str | None]:
    """The new row as answered, and its event: (type, data) and how it is written (`plain`;
    `gated` on the tenant's usage hooks, for a usage event rendered because the hint said the
    tenant has some; None: no event rendered)."""
    row: LedgerRow = {
        "id": new_id("tx"), "user": e.user, "currency": e.currency, "type": e.type, "amount": e.amount, "tags": e.tags,
        "notes": e.notes, "metadata": e.metadata, "createdAt": e.now, "expiresAt": e.expires_at, "refundOf": e.refund_of,
        "holdId": e.hold_id, "keyId": e.key_id,
    }
    if outbox is None:
        return row, None, None
    told = outbox.herald.entry(row)
    if told is not None:
        return row, told, "plain"
    if outbox.usage_hooks.get(tenant):
        told = outbox.herald.usage(row)
        if told is not None:
            return row, told, "gated"
    return row, None, None


AppendArgs = tuple[Any, ...]
"""The 23 arguments of ledger_append (migrations/postgres/0011_ledger_append.sql), in its order."""
_APPEND_ONE = "SELECT ledger_append(" + ", ".join(f"${n}" for n in range(1, 24)) + ")"
_APPEND_MANY = "SELECT ledger_append_rows($1::ledger_append_args[])"
"""The writes as one array of rows, each an AppendArgs (migration 17): asyncpg checks each
element of an array parameter against collections.abc on its way out, ~35 checks per write as
23 arrays, 4 as one row (callgrind, `bench.instructions --op recordUsage --pg-servers 1`: see
the README, "On PostgreSQL")."""
_ACCOUNT_OF = operator.itemgetter(2, 3, 4)
"""An AppendArgs' account (tenant, user, currency): a batch's order, so that batches take their
locks in one order and cannot deadlock one another."""


def may_append_at_once(e: NewEntry, idempotency: Idempotency | None) -> bool:
    """Whether `ledger_append` may write the entry: not a refund (its claim on the original), not
    an expiring deposit (its lot), not a call with an idempotency key (its stored answer); and
    not an unknown type, which the transaction's way refuses."""
    return idempotency is None and e.refund_of is None and e.expires_at is None and e.type in _SIGN


def append_args(digest: str | None, tenant: int, e: NewEntry, row: LedgerRow, told: Told | None, event: str | None,
                outbox: Outbox | None) -> AppendArgs:
    usage = e.usage_event
    dimensions = None if usage is None or usage.dimensions is None else json_text(usage.dimensions)
    return (
        digest, row["id"], tenant, e.user, e.currency, e.type, e.amount, _SIGN[e.type] * e.amount,
        e.tags, e.notes, json_text(e.metadata) if e.metadata is not None else None, e.now, e.dedupe_key, e.key_id,
        e.hold_id, None if usage is None else new_id("evt"), dimensions, None if usage is None else usage.event_name,
        None if told is None else row_event_id(row["id"]), None if told is None else told[0],
        None if told is None else json_text(told[1]), event == "gated",
        outbox is not None and told is None and not outbox.usage_hooks.get(tenant),
    )


def _written(args: AppendArgs) -> Note:
    """base.moved's note of a row ledger_append wrote, for the metrics."""
    return (args[4], args[5], args[8], args[6], False, args[14] is not None)


def _takes_any(rules: LotRules, lot: Lot, now: int) -> bool:
    """Whether the rule takes anything when a deposit's own lot is the account's only one (an
    unexpired lot and nothing to spend: not with the domain's rule)."""
    return any(True for _ in rules.takes(iter([lot]), 0, now))


async def _claim_refund(conn: asyncpg.Connection, tenant: int, e: NewEntry, refundable: Refundable) -> None:
    """The refund's claim on its original, after the account's lock (the original is a row of
    the same account, so every refund of it queues there and reads what the previous one
    committed). The update is conditional all the same, so a claim can never pass the amount
    whatever locks a future writer forgets (and `refunded <= amount - n` cannot overflow)."""
    found = await conn.fetchrow(
        f"SELECT {_ROW}, refunded FROM ledger WHERE id = $1 AND tenant = $2 AND user_id = $3 AND currency = $4",
        e.refund_of, tenant, e.user, e.currency,
    )
    if found is None:
        raise Missing("ledger row")
    original, refunded = _row(found), found["refunded"]
    if not refundable(original):
        raise NotRefundable(original["type"], original["tags"])
    if e.amount > original["amount"] - refunded:
        raise RefundLeft(original["amount"] - refunded, original["amount"])
    status = await conn.execute(
        "UPDATE ledger SET refunded = refunded + $1 WHERE tenant = $2 AND id = $3 AND refunded <= amount - $1",
        e.amount, tenant, e.refund_of,
    )
    if not affected(status):  # only if a writer changed it without the account's lock
        left = await conn.fetchval("SELECT amount - refunded FROM ledger WHERE tenant = $1 AND id = $2", tenant, e.refund_of)
        raise RefundLeft(left, original["amount"])


_LOTS = ("SELECT seq, id, remaining, expires_at FROM ledger WHERE tenant = $1 AND user_id = $2 AND currency = $3"
         " AND remaining > 0 ORDER BY expires_at, seq LIMIT $4")


class _Page:
    """The lots of one fetch for the rule to walk, noting whether it asked for one past the last."""

    def __init__(self, rows: list[Any]):
        self.rows = rows
        self.wants_more = False

    def __iter__(self) -> Iterator[Lot]:
        for _, lot_id, remaining, expires_at in self.rows:
            yield Lot(lot_id, remaining, expires_at)
        self.wants_more = True


async def _settle_lots(conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int, spend: int, key_id: str,
                       rules: LotRules, outbox: Outbox | None, first: list[Any] | None = None) -> int:
    """Take from the account's lots what `rules.takes` decides: a forfeit writes the lot off as
    a withdraw of its own, with its event; spending only lowers the lot's remainder (the write's own row moves
    the balance). Returns the total forfeited.

    The lots come in the ledger_lots index's order (expiry, then oldest first: expired lots come
    first). The SQLite store fetches further pages from inside the iterator the rule walks; with
    asyncpg a fetch is a coroutine, which a synchronous iterator cannot await. So the rule walks
    a fetched list, and if it asked for a lot past the end of a full list, the list is fetched
    again twice as long and the rule rerun from scratch: it is a pure function of (lots, spend,
    now), and nothing is written before its final run, so the answer is the one a lazy walk
    gives. The usual account has no expiring money: one index lookup that finds nothing, and the
    rule is not run at all. `first`: the first page (LOT_PAGE lots, or all of them if fewer)
    when the caller read it already, in a statement under the account's lock."""
    size = LOT_PAGE
    rows = first if first is not None else await conn.fetch(_LOTS, tenant, user, currency, size)
    if not rows:
        return 0
    while True:
        page = _Page(rows)
        takes = list(rules.takes(page, spend, now))
        if not page.wants_more or len(rows) < size:
            break
        size *= 2
        rows = await conn.fetch(_LOTS, tenant, user, currency, size)
    seqs = {r[1]: r[0] for r in rows}
    forfeits = []
    events = []
    for lot, cents, forfeit in takes:
        if forfeit:
            tags, notes, metadata = rules.forfeiture(lot, currency, cents)
            forfeit_id = new_id("tx")
            forfeits.append((forfeit_id, tenant, user, currency, cents, tags, notes, json_text(metadata), now, key_id))
            note_moved(currency, "withdraw", tags, cents)  # for the metrics
            if outbox is not None:
                told = outbox.herald.forfeit(forfeit_row(forfeit_id, user, currency, cents, tags, notes, metadata, now, key_id))
                events.append(event_args(tenant, told, now, forfeit_id, row_event_id(forfeit_id)))
    # One pipelined statement each (executemany): a round trip per lot otherwise.
    if takes:
        await conn.executemany("UPDATE ledger SET remaining = remaining - $1 WHERE seq = $2",
                               [(cents, seqs[lot.id]) for lot, cents, _ in takes])
    if forfeits:
        await conn.executemany(
            "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, key_id)"
            " VALUES ($1, $2, $3, $4, 'withdraw', $5, $6, $7, $8, $9, $10)",
            forfeits,
        )
        await emit_many(conn, events)
    return sum(cents for _, cents, forfeit in takes if forfeit)


async def _set_balance(conn: asyncpg.Connection, tenant: int, user: str, currency: str, new: int) -> None:
    """The account's new balance, computed from the one its lock returned."""
    if not INT64_MIN <= new <= INT64_MAX:
        raise OutOfRange("balance")
    await conn.execute(
        "UPDATE balances SET balance = $4 WHERE tenant = $1 AND user_id = $2 AND currency = $3", tenant, user, currency, new
    )


async def _forfeit_account(
    conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int, rules: LotRules, outbox: Outbox | None
) -> None:
    balance, w = await lock_watching(conn, tenant, user, currency)
    forfeited = await _settle_lots(conn, tenant, user, currency, now, 0, SYSTEM_KEY, rules, outbox)
    if forfeited:
        await _set_balance(conn, tenant, user, currency, balance - forfeited)
        if w.alerts or w.spend_caps:
            await after_account_write(conn, tenant, user, currency, now, w)
