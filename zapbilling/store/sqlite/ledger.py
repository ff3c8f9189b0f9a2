"""The ledger: rows, running balances kept in the same transaction, expiring deposits spent
first and forfeited only for their unspent remainder."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterator

from ..base import SYSTEM_KEY, USAGE_RECORDED, Idempotency, LedgerFilter, LedgerRow, Lot, LotRules, MeterEventDraft, NewEntry, Refundable
from ..base import INT64_MAX, INT64_MIN, LEDGER_TYPES, moved as note_moved
from ..herald import Herald, Outbox
from ..ids import new_id, row_event_id
from ..ledger_filters import Dialect, needs_probe, never_matches, page, probe, walk_for
from .connection import SqliteBase
from .metering import insert_event
from .outbox import NOTHING, WATCHED_MASK, WATCHES, Watch, check_usage_data, emit, forfeit_row
from .watch import after_account_write, after_meter_events
from ..refusals import Missing, NotRefundable, OutOfRange, RefundLeft
from ..rows import LEDGER_COLUMNS as _ROW, ledger_row as _row, json_text
from .sums import ACCOUNT, ACCOUNT_SPAN, EXPIRED, HELD, sum_overflowed
from ...loop_turn import converted
from ..rows import LEDGER_ROWS_PER_STEP


# One account's balance row, expired unforfeited credit and pending holds: ACCOUNT, EXPIRED and
# HELD (sums.py, shared with the alerts and the watch).
_EACH = dict(tenant=":tenant", user=":user", currency="c.currency", now=":now")


# The listing's walks (../ledger_filters.py): SQLite names the index of each, so that no plan
# can walk another range and test its rows.
_DIALECT = Dialect(
    mark=lambda n: "?",
    tag_test="instr(',' || tags || ',', ',' || {} || ',') > 0",
    history=None,  # no ledger_history since migration 19: the merge of the two ledger_by_type ranges
    by_type="ledger INDEXED BY ledger_by_type",
    tagged="ledger_tags t CROSS JOIN ledger l ON l.seq = t.seq",  # CROSS JOIN: the left table is the outer loop
)


class LedgerQueries(SqliteBase):
    _outbox: Outbox | None = None
    """The domain's herald (store/herald.py), installed at start-up: None records no events."""

    def announce_with(self, herald: Herald) -> None:
        check_usage_data(herald)
        self._outbox = Outbox(herald)

    async def balance(self, tenant: int, user: str, currency: str, now: int) -> tuple[int, int]:
        """(balance less expired credit, pending holds) at `now`. Kept in the point reads' memo
        (reads.py `_memo`) while the data is unchanged and until its first unspent lot expires,
        so that a balance asked again and again costs a dict look-up. Not kept: an account
        with holds pending now (its answer changes as each lapses) or with credit expired and
        not yet forfeited (the sweep soon writes)."""
        memo, key = self._memo(), ("balance", tenant, user, currency)
        kept = memo.get(key)
        if kept is not None and kept[1] <= now < kept[2]:
            return kept[0], 0
        params = (tenant, user, currency, now)
        (b, first_lot, held), = self._read_point(ACCOUNT_SPAN, params)
        if first_lot is not None and first_lot <= now:
            (b, expired, held), = self._read_point(ACCOUNT, params)
            return b - expired, held
        if not held:
            self._memoize(key, (b, now, first_lot if first_lot is not None else INT64_MAX))
        return b, held

    async def balances(self, tenant: int, user: str, now: int) -> list[tuple[str, int, int]]:
        """Every currency with a ledger row, or with a hold pending now, by currency."""
        rows = await self._read(
            "SELECT c.currency,"
            " COALESCE((SELECT balance FROM balances WHERE tenant = :tenant AND user_id = :user AND currency = c.currency), 0),"
            f" ({EXPIRED.format(**_EACH)}), ({HELD.format(**_EACH)})"
            " FROM (SELECT currency FROM balances WHERE tenant = :tenant AND user_id = :user"
            "  UNION SELECT currency FROM holds WHERE tenant = :tenant AND user_id = :user"
            "  AND status = 'pending' AND expires_at > :now) c ORDER BY c.currency",
            {"tenant": tenant, "user": user, "now": now},
        )
        return [(c, b - expired, held) for c, b, expired, held in rows]

    async def usage_page(
        self, tenant: int, user: str, currency: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        # Usage is the usage withdrawals: a deposit the caller tagged api-usage is none. The
        # user's usage rows are two ranges, merged newest first: the ledger_usage index's (rows
        # without a usage.recorded event) and ledger_usage_evented's (migration 12); the type a
        # test on each row.
        where = "tenant = ?1 AND user_id = ?2 AND tags = 'api-usage' AND type = 'withdraw'"
        params: list[Any] = [tenant, user]
        if starting_after is not None:
            found = await self._read(f"SELECT seq FROM ledger WHERE {where} AND id = ?3", (tenant, user, starting_after))
            if not found:
                raise Missing("ledger row")
            where += " AND seq < ?3"
            params.append(found[0][0])
        else:
            params.append(None)
        if currency is not None:
            where += " AND currency = ?4"
        params += [currency, limit + 1]
        rows = await self._read(
            f"SELECT {_ROW} FROM (SELECT seq, {_ROW} FROM ledger WHERE {where} AND evented = 0"
            f" UNION ALL SELECT seq, {_ROW} FROM ledger WHERE {where} AND evented = 1 ORDER BY 1 DESC LIMIT ?5)"
            " ORDER BY seq DESC", tuple(params)
        )
        return await converted(rows[:limit], _row, LEDGER_ROWS_PER_STEP), len(rows) > limit

    async def ledger_page(
        self, tenant: int, user: str, where: LedgerFilter, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        """The first `limit` rows of one walk (../ledger_filters.py): the user's history, their
        rows of one type or their rows bearing one tag, whichever holds fewest rows to pass
        over; every other filter a test on the rows walked."""
        cursor: tuple[int, int] | None = None
        if starting_after is not None:
            found = await self._read("SELECT created_at, seq FROM ledger WHERE tenant = ? AND user_id = ? AND id = ?",
                                     (tenant, user, starting_after))
            if not found:
                raise Missing("ledger row")
            cursor = (found[0][0], found[0][1])
        if never_matches(where):
            return [], False
        sizes = None
        if needs_probe(where):
            probed = probe(_DIALECT, tenant, user, where, cursor)
            (a, b), = await self._read(probed.sql, tuple(probed.params))
            sizes = (a, b)
        s = page(_DIALECT, walk_for(where, sizes), tenant, user, where, cursor, limit + 1)
        rows = await self._read(s.sql, tuple(s.params))
        return await converted(rows[:limit], _row, LEDGER_ROWS_PER_STEP), len(rows) > limit

    async def append_ledger_row(
        self, tenant: int, entry: NewEntry, idempotency: Idempotency | None = None, refundable: Refundable | None = None
    ) -> LedgerRow:
        """`refundable`: for a refund (`entry.refund_of`), whether the original may be refunded."""
        return await self._write(tenant, idempotency, entry.now, _append, tenant, entry, refundable, self._outbox)

    async def forfeit_expired(self, now: int, lots: LotRules, limit: int = 500) -> int:
        return await self._run(_sweep_expired, now, lots, limit, self._outbox)


def _append(conn: sqlite3.Connection, tenant: int, e: NewEntry, refundable: Refundable | None, outbox: Outbox | None) -> LedgerRow:
    row, w = append_entry(conn, tenant, e, outbox, refundable)
    if w.alerts or w.spend_caps:
        after_account_write(conn, tenant, e.user, e.currency, e.now, w)
    return row


def append_entry(
    conn: sqlite3.Connection, tenant: int, e: NewEntry, outbox: Outbox | None, refundable: Refundable | None = None
) -> tuple[LedgerRow, Watch]:
    """Append one row inside the caller's job (a capture appends its withdrawal this way), with
    its events (the row's own, and a forfeit's); returns it and the tenant's Watch, read in the
    balance's statement (NOTHING for a dedupe repeat, which writes nothing). The caller calls
    watch.after_account_write (a capture once for the row and the hold together).

    What the events cost recordUsage (`python -m bench.instructions --op recordUsage`, three
    runs each, spread about +-2.5k): 625.6k instructions per request before them, 632.2k after
    (+1.0%: the Watch's bit mask and the herald's look at the row); with an endpoint subscribed
    to usage.recorded 735k (0.86x: the event rendered, encoded and inserted, ~45k of it the
    insert into `events` and its indexes). A deposit's job (callgrind, appends in a loop on the
    writer's connection) 143k -> 219k instructions: its deposit.created, always written."""
    if e.refund_of is not None:
        assert refundable is not None, "a refund needs the domain's rule for what may be refunded"
        _claim_refund(conn, tenant, e, refundable)
    tx_id = new_id("tx")
    remaining = e.amount if e.type == "deposit" and e.expires_at is not None else None
    # `evented` (migration 12): whether the row's usage.recorded event will be written, as the
    # tenant's last write saw its usage hooks. Known only after the balance's statement, so it is
    # guessed here and set right below in the rare write that guessed wrong (the first after an
    # endpoint on usage.recorded came or went): a later UPDATE would move every row from one
    # half of the ledger_usage split to the other, the very index page it is there to save.
    evented = outbox is not None and e.tags == "api-usage" and e.type == "withdraw" and outbox.usage_hooks.get(tenant, 0) > 0
    # No RETURNING: SQLite buffers RETURNING rows in a temporary table, which made this insert
    # cost ~75% more; the row's values are all known here, and rowcount tells a dedupe repeat.
    inserted = conn.execute(
        "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at,"
        " expires_at, remaining, refund_of, dedupe_key, key_id, hold_id, evented)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant, user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
        (tx_id, tenant, e.user, e.currency, e.type, e.amount, e.tags, e.notes,
         json_text(e.metadata) if e.metadata is not None else None, e.now, e.expires_at, remaining, e.refund_of,
         e.dedupe_key, e.key_id, e.hold_id, evented),
    ).rowcount
    if not inserted:  # the dedupe key was seen: the original row is the answer
        return _row(conn.execute(
            f"SELECT {_ROW} FROM ledger WHERE tenant = ? AND user_id = ? AND dedupe_key = ?", (tenant, e.user, e.dedupe_key)
        ).fetchone()), NOTHING
    note_moved(e.currency, e.type, e.tags, e.amount, e.refund_of is not None, e.hold_id is not None)  # for the metrics
    balance, mask, has_lots, meter_id, meter_seq = conn.execute(
        _ACCOUNT, (tenant, e.user, e.currency, e.usage_event.event_name if e.usage_event is not None else None)
    ).fetchone()
    w = NOTHING if mask is None else WATCHES[mask]  # None: a tenant without a row (a store tested alone)
    if e.type not in LEDGER_TYPES:
        raise ValueError(f"unknown ledger entry type {e.type!r}")
    withdraw = e.type == "withdraw"
    spend = e.amount if withdraw else 0  # a deposit spends nothing: it only forfeits
    forfeited = _settle_lots(conn, tenant, e.user, e.currency, e.now, spend, e.key_id, e.lots, outbox) if has_lots else 0
    _set_balance(conn, tenant, e.user, e.currency, (balance or 0) - forfeited + (-e.amount if withdraw else e.amount))
    if remaining is not None:
        _bound_credit(conn, tenant, e.user, e.currency)
    row: LedgerRow = {
        "id": tx_id, "user": e.user, "currency": e.currency, "type": e.type, "amount": e.amount, "tags": e.tags,
        "notes": e.notes, "metadata": e.metadata, "createdAt": e.now, "expiresAt": e.expires_at, "refundOf": e.refund_of,
        "holdId": e.hold_id, "keyId": e.key_id,
    }
    if outbox is not None:  # the row's event (outbox.tell_entry's work, inlined: recordUsage's path)
        herald = outbox.herald
        told = herald.entry(row)
        usage = None
        if told is not None:
            emit(conn, tenant, told[0], told[1], e.now, tx_id, row_event_id(tx_id))
        elif w.usage_hooks:  # asked only then: without hooks a withdrawal has no event
            usage = herald.usage_type(row)
            if usage is not None:  # its data is the row's, made when the event is read (outbox.USAGE_DATA)
                emit(conn, tenant, usage, None, e.now, tx_id, row_event_id(tx_id))
        outbox.usage_hooks[tenant] = w.usage_hooks
        if evented != (usage == USAGE_RECORDED):
            conn.execute("UPDATE ledger SET evented = ? WHERE id = ?", (not evented, tx_id))
    if meter_id is not None:  # a usage withdrawal's meter event (see UsageEvent), linked to its row
        assert e.usage_event is not None  # the meter was looked up by its event name
        insert_event(conn, tenant, MeterEventDraft(meter_id, e.user, e.amount, e.now, None, e.usage_event.dimensions, tx_id), meter_seq, e.now)
        if w.alerts:
            after_meter_events(conn, tenant, {(str(meter_id), e.user)}, e.now, w)
    return row, w


# What a write needs to know of the account, read in one statement after the row's own insert:
# its balance (NULL: a new account), the tenant's Watch as a bit mask (outbox.WATCHES; the write
# reads it here and nowhere else), whether it holds unspent lots (the ledger_lots index; the
# usual account holds none, and its lots are then not walked at all), and the id and seq of the
# tenant's meter for the row's usage event (?4: NULL when the row has none, which no meter's
# event_name equals). Nothing between this read and the balance's write changes the balance:
# settling lots writes ledger rows only. One statement where there were three (the lots' first
# page, the balance with the Watch, the meter): bench.instructions --op recordUsage, 565-568k ->
# 548-549k instructions per request (two runs each). Scalar subqueries, because they were the
# cheapest way to add the Watch to the balance's read (callgrind, appends in a loop on the
# writer's connection: +4.1k instructions over the plain balance read; the three counts as
# columns of a LEFT JOIN of tenants +9.7k; a statement of their own more still).
_ACCOUNT = (
    "SELECT (SELECT balance FROM balances WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3),"
    f" (SELECT {WATCHED_MASK} FROM tenants WHERE id = ?1),"
    " EXISTS (SELECT 1 FROM ledger WHERE tenant = ?1 AND user_id = ?2 AND currency = ?3 AND remaining > 0),"
    " (SELECT id FROM meters WHERE tenant = ?1 AND event_name = ?4),"  # two seeks of one index entry: cheaper than a join (above)
    " (SELECT seq FROM meters WHERE tenant = ?1 AND event_name = ?4)"
)


def _claim_refund(conn: sqlite3.Connection, tenant: int, e: NewEntry, refundable: Refundable) -> None:
    """The refund's claim on its original, in the refund's transaction: concurrent refunds of
    one original are serialised by the writer and bounded by the `refunded` CHECK all the same."""
    found = conn.execute(
        f"SELECT {_ROW}, refunded FROM ledger WHERE id = ? AND tenant = ? AND user_id = ? AND currency = ?",
        (e.refund_of, tenant, e.user, e.currency),
    ).fetchone()
    if found is None:
        raise Missing("ledger row")
    original, refunded = _row(found[:-1]), found[-1]
    if not refundable(original):
        raise NotRefundable(original["type"], original["tags"])
    if e.amount > original["amount"] - refunded:
        raise RefundLeft(original["amount"] - refunded, original["amount"])
    conn.execute("UPDATE ledger SET refunded = refunded + ? WHERE id = ?", (e.amount, e.refund_of))


LOT_PAGE = 64


_LOTS = ("SELECT seq, id, remaining, expires_at FROM ledger WHERE tenant = ? AND user_id = ? AND currency = ?"
         " AND remaining > 0{after} ORDER BY expires_at, seq LIMIT ?")
_FIRST_LOTS = _LOTS.format(after="")
_NEXT_LOTS = _LOTS.format(after=" AND (expires_at, seq) > (?, ?)")


def _settle_lots(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int, spend: int, key_id: str,
                 rules: LotRules, outbox: Outbox | None) -> int:
    """Take from the account's lots what `rules.takes` decides: a forfeit writes the lot off as
    a withdraw of its own, with its event; spending only lowers the lot's remainder (the write's
    own row moves the balance). Returns the total forfeited.

    The lots come in the ledger_lots index's order (expiry, then oldest first: expired lots come
    first), a page at a time as the rule asks for more. The usual account has no expiring money:
    a write calls this only when `_ACCOUNT` found a lot (the sweep calls it for accounts it found
    with one), and the rule is not run for an empty page (running it for nothing cost ~4k
    instructions per recordUsage: 598k -> 594k under bench.instructions)."""
    page = conn.execute(_FIRST_LOTS, (tenant, user, currency, LOT_PAGE)).fetchall()
    if not page:
        return 0
    seqs: dict[str, int] = {}

    def walk(page: list[tuple[int, str, int, int]]) -> Iterator[Lot]:
        while True:
            for seq, lot_id, remaining, expires_at in page:
                seqs[lot_id] = seq
                yield Lot(lot_id, remaining, expires_at)
            if len(page) < LOT_PAGE:
                return
            after = (page[-1][3], page[-1][0])
            page = conn.execute(_NEXT_LOTS, (tenant, user, currency, *after, LOT_PAGE)).fetchall()

    forfeited = 0
    for lot, cents, forfeit in rules.takes(walk(page), spend, now):
        conn.execute("UPDATE ledger SET remaining = remaining - ? WHERE seq = ?", (cents, seqs[lot.id]))
        if forfeit:
            tags, notes, metadata = rules.forfeiture(lot, currency, cents)
            forfeit_id = new_id("tx")
            conn.execute(
                "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, key_id)"
                " VALUES (?, ?, ?, ?, 'withdraw', ?, ?, ?, ?, ?, ?)",
                (forfeit_id, tenant, user, currency, cents, tags, notes, json_text(metadata), now, key_id),
            )
            note_moved(currency, "withdraw", tags, cents)  # for the metrics
            if outbox is not None:
                told = outbox.herald.forfeit(forfeit_row(forfeit_id, user, currency, cents, tags, notes, metadata, now, key_id))
                emit(conn, tenant, told[0], told[1], now, forfeit_id, row_event_id(forfeit_id))
            forfeited += cents
    return forfeited


def _set_balance(conn: sqlite3.Connection, tenant: int, user: str, currency: str, new: int) -> None:
    if not INT64_MIN <= new <= INT64_MAX:
        raise OutOfRange("balance")
    conn.execute(
        "INSERT INTO balances (tenant, user_id, currency, balance) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant, user_id, currency) DO UPDATE SET balance = excluded.balance",
        (tenant, user, currency, new),
    )


def _bound_credit(conn: sqlite3.Connection, tenant: int, user: str, currency: str) -> None:
    """After an expiring deposit: the account's unspent expiring credit stays within int64, so
    that every sum of part of it (getBalance's and listAccounts' expired credit, a hold's
    available, the alerts' balance) is a plain int64 SUM. Usage may take a balance far below
    zero and a deposit does not pay the debt first, so two deposits could otherwise leave more
    credit than int64 holds, and every read of the account then failed. SQLite's SUM raises
    on an integer overflow (documented; every value is positive, so the running sum leaves the
    range only when the whole does), which is the test. It reads each unspent lot of the
    account (ledger_lots finds them; `remaining` is read from the row): an expiring deposit
    costs as many reads as the account has lots, as a withdrawal's walk of them may."""
    try:
        conn.execute("SELECT SUM(remaining) FROM ledger WHERE tenant = ? AND user_id = ? AND currency = ? AND remaining > 0",
                     (tenant, user, currency)).fetchone()
    except sqlite3.OperationalError as exc:
        if not sum_overflowed(exc):
            raise
        raise OutOfRange("credit") from None


def _sweep_expired(conn: sqlite3.Connection, now: int, rules: LotRules, limit: int, outbox: Outbox | None) -> int:
    accounts = conn.execute(
        "SELECT DISTINCT tenant, user_id, currency FROM ledger WHERE remaining > 0 AND expires_at <= ? LIMIT ?",
        (now, limit),
    ).fetchall()
    for tenant, user, currency in accounts:
        balance, mask, *_ = conn.execute(_ACCOUNT, (tenant, user, currency, None)).fetchone()
        forfeited = _settle_lots(conn, tenant, user, currency, now, 0, SYSTEM_KEY, rules, outbox)
        _set_balance(conn, tenant, user, currency, (balance or 0) - forfeited)
        w = NOTHING if mask is None else WATCHES[mask]
        if w.alerts or w.spend_caps:
            after_account_write(conn, tenant, user, currency, now, w)
    return len(accounts)
