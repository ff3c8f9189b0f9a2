"""Meters and meter events. Aggregation happens in SQL over the (tenant, meter, user, ts)
index; events are never loaded into Python to be summed."""
from __future__ import annotations

import functools
import itertools
import json
import operator
import sqlite3
from typing import Any

from ..base import Idempotency, MeterEventDraft, MeterRow, MeterUsage, NewMeter, recorded
from ..ids import new_id, new_ids
from .connection import SqliteBase
from .outbox import watch
from .writer import TOGETHER
from .watch import after_meter_events
from ..refusals import AlreadyExists, Missing, QuotaReached, SumOutOfRange
from ..rows import METER_COLUMNS as _METER, meter_row, json_text
from ...loop_turn import converted
from ..rows import ROWS_PER_STEP
from .sums import sum_overflowed


AGGREGATES = {
    "sum": "COALESCE(SUM(value), 0)",
    "count": "COUNT(*)",
    "max": "COALESCE(MAX(value), 0)",
    "min": "COALESCE(MIN(value), 0)",
    "unique_count": "COUNT(DISTINCT value)",
    # the value of the latest event; equal timestamps: the one inserted last
    "last": "COALESCE((SELECT value FROM meter_events WHERE {where} ORDER BY ts DESC, seq DESC LIMIT 1), 0)",
}

# A sum that cannot overflow: value >> 32 is arithmetic in SQLite, value & 0xFFFFFFFF the low bits.
_EXACT_SUM = "COALESCE(SUM(value >> 32), 0), COALESCE(SUM(value & 4294967295), 0)"

# Every meter of a tenant, and its usage by one user over a period, in one statement: a
# correlated subquery per meter computes what aggregate_events computes (the same AGGREGATES
# expression, over the same (tenant, meter, user, ts) index range), and CASE runs only the
# meter's own aggregation's subquery. One aggregate per meter, each its own trip to the reader's
# thread, made 5,000 meters cost 0.56 s a preview; a join grouped by meter measured 1.2x the
# time per event of this (GROUP BY's work on every row) and one CASE per aggregate inside it
# 3x. Each subquery answers json_array(events, value), or with the sum split in two (the exact
# sum, when a plain SUM overflows) json_array(events, high, low).
_EVENTS_OF_METER = "tenant = m.tenant AND meter = m.seq AND user_id = :user{period}"

METER = "(SELECT seq FROM meters WHERE tenant = :tenant AND id = :meter)"
"""The seq of the meter whose id is :meter, by which its events name it (migration 16); SQLite
works the subquery out once and seeks the summary index with it."""


@functools.lru_cache(maxsize=None)  # four periods (bounded or not on each side) x exact or not
def _usage_sql(period: str, exact: bool) -> str:
    where = _EVENTS_OF_METER.format(period=period)
    cases = " ".join(
        f"WHEN '{aggregation}' THEN (SELECT json_array(COUNT(*), "
        f"{_EXACT_SUM if exact and aggregation == 'sum' else aggregate.format(where=where)}) FROM meter_events WHERE {where})"
        for aggregation, aggregate in AGGREGATES.items()
    )
    return f"SELECT m.id, m.name, m.aggregation, CASE m.aggregation {cases} END FROM meters m WHERE m.tenant = :tenant ORDER BY m.seq"


class MeteringQueries(SqliteBase):
    AGGREGATIONS = frozenset(AGGREGATES)

    async def create_meter(
        self, tenant: int, meter: NewMeter, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> MeterRow:
        return await self._write(tenant, idempotency, meter.now, _create_meter, tenant, new_id("mtr"), meter, quota)

    async def meters_page(self, tenant: int, limit: int, starting_after: str | None = None) -> tuple[list[MeterRow], bool]:
        """In creation order; Missing("meter") when `starting_after` is not a meter of the tenant."""
        where, params = "tenant = ?", [tenant]
        if starting_after is not None:
            found = await self._read("SELECT seq FROM meters WHERE tenant = ? AND id = ?", (tenant, starting_after))
            if not found:
                raise Missing("meter")
            where += " AND seq > ?"
            params.append(found[0][0])
        rows = await self._read(f"SELECT {_METER} FROM meters WHERE {where} ORDER BY seq LIMIT ?", (*params, limit + 1))
        return [meter_row(r) for r in rows[:limit]], len(rows) > limit

    async def get_meter(self, tenant: int, meter_id: str) -> MeterRow | None:
        rows = self._read_point(f"SELECT {_METER} FROM meters WHERE tenant = ? AND id = ?", (tenant, meter_id))
        return meter_row(rows[0]) if rows else None

    async def record_meter_events(
        self, tenant: int, events: list[MeterEventDraft], now: int, idempotency: Idempotency | None = None
    ) -> list[tuple[str, str]]:
        return await self._write(tenant, idempotency, now, _record_events, tenant, events, now)

    async def aggregate_events(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int | None, end: int | None
    ) -> tuple[int, int]:
        """(value by the meter's aggregation, number of events) over [start, end)."""
        where = f"tenant = :tenant AND meter = {METER}"
        params: dict[str, Any] = {"tenant": tenant, "meter": meter_id}
        if user is not None:
            where += " AND user_id = :user"
            params["user"] = user
        if start is not None:
            where += " AND ts >= :start"
            params["start"] = start
        if end is not None:
            where += " AND ts < :end"
            params["end"] = end
        aggregate = AGGREGATES[aggregation].format(where=where)
        try:
            (value, count), = await self._aggregate(tenant, f"SELECT {aggregate}, COUNT(*) FROM meter_events WHERE {where}", params)
        except sqlite3.OperationalError as exc:
            if not sum_overflowed(exc):
                raise
            # Only a sum overflows. SUM() fails as soon as a running total leaves int64, even when the sum itself fits
            # (values of both signs near the edges): then sum each value's high and low 32 bits
            # apart (neither total can overflow) and judge the exact sum.
            (high, low, count), = await self._aggregate(tenant, f"SELECT {_EXACT_SUM}, COUNT(*) FROM meter_events WHERE {where}", params)
            value = _exact_sum(high, low)
        return value, count

    async def meter_usage(self, tenant: int, user: str, start: int | None, end: int | None) -> list[MeterUsage]:
        """Each meter with events of `user` in [start, end), in creation order: its usage by
        its aggregation, as aggregate_events answers it, in one statement (see _usage_sql).
        SumOutOfRange when a sum meter's sum passes int64."""
        params: dict[str, Any] = {"tenant": tenant, "user": user, "start": start, "end": end}
        period = (" AND ts >= :start" if start is not None else "") + (" AND ts < :end" if end is not None else "")
        try:
            rows = await self._aggregate(tenant, _usage_sql(period, exact=False), params)
        except sqlite3.OperationalError as exc:
            if not sum_overflowed(exc):
                raise
            rows = await self._aggregate(tenant, _usage_sql(period, exact=True), params)  # see aggregate_events
        return [u for u in await converted(rows, _usage, ROWS_PER_STEP) if u is not None]


def _usage(row: tuple[Any, ...]) -> MeterUsage | None:
    meter_id, name, aggregation, usage = row
    count, value, *low = json.loads(usage)
    return MeterUsage(meter_id, name, _exact_sum(value, low[0]) if low else value, count) if count else None


def _exact_sum(high: int, low: int) -> int:
    value = (high << 32) + low
    if not -(2**63) <= value < 2**63:
        raise SumOutOfRange() from None
    return value


def _create_meter(conn: sqlite3.Connection, tenant: int, meter_id: str, m: NewMeter, quota: int | None) -> MeterRow:
    """The count and the insert in one job on the writer (one transaction): two creates at the
    bound cannot both see room for one more."""
    if quota is not None:
        (held,), = conn.execute("SELECT COUNT(*) FROM meters WHERE tenant = ?", (tenant,)).fetchall()
        if held >= quota:
            raise QuotaReached("meter", quota)
    row = conn.execute(
        f"INSERT INTO meters (id, tenant, name, event_name, aggregation, currency, dimensions, created_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, event_name) DO NOTHING RETURNING {_METER}",
        (meter_id, tenant, m.name, m.event_name, m.aggregation, m.currency, json_text(m.dimensions), m.now),
    ).fetchone()
    if row is None:
        raise AlreadyExists("meter", m.event_name)
    return meter_row(row)


def _record_events(conn: sqlite3.Connection, tenant: int, events: list[MeterEventDraft], now: int) -> list[tuple[str, str]]:
    """All or nothing: every meter id is checked before the first insert, and the writer
    undoes everything if anything fails (its batch runs again with a savepoint per job). A seen
    idempotency key (also earlier in this batch) is a duplicate that reports the original
    event's id; the unique index decides."""
    return _insert_checked(conn, tenant, events, _meter_seqs(conn, tenant, events), now)


def _meter_seqs(conn: sqlite3.Connection, tenant: int, events: list[MeterEventDraft]) -> dict[str, int]:
    """Each meter id of the batch and its seq; Missing names the first event whose meter is not
    the tenant's."""
    wanted = sorted({e.meter_id for e in events})
    known: dict[str, int] = dict(conn.execute(
        f"SELECT id, seq FROM meters WHERE tenant = ? AND id IN ({', '.join('?' * len(wanted))})", (tenant, *wanted)
    ).fetchall())
    if len(known) < len(wanted):
        for i, e in enumerate(events):
            if e.meter_id not in known:
                raise Missing("meter", i)
    return known


def _insert_checked(
    conn: sqlite3.Connection, tenant: int, events: list[MeterEventDraft], known: dict[str, int], now: int
) -> list[tuple[str, str]]:
    outcomes = _insert_events(conn, tenant, events, known, now)
    created = sum(1 for _, status in outcomes if status == "created")
    recorded(created, len(outcomes) - created)  # for the metrics
    if created:  # the Watch once per batch: one point read beside up to 100 inserts
        w = watch(conn, tenant)
        if w.alerts:
            touched = {(e.meter_id, e.user) for e, (_, status) in zip(events, outcomes) if status == "created"}
            after_meter_events(conn, tenant, touched, now, w)
    return outcomes


def _record_together(conn: sqlite3.Connection, calls: list[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
    """Several callers' batches of one commit (the writer's TOGETHER), each answered as
    _record_events answers it, their usual events written at once, ordered by user.

    Why: the summary index `(tenant, meter, user_id, ts)` takes each event at its user's place,
    a hundred places a batch, and an insert far from the one before it pays for walking a part
    of the tree that is no longer in the CPU's caches. Sixteen batches of scenario 3's hundred
    users written user by user put each user's sixteen entries in a row. Measured in one process
    (the store's rows, 16 x 100 a commit, synchronous off, seqs given in the callers' order):
    ~4.1 -> ~3.5 us a row, the sort and the flattening ~0.1-0.2 us of it.

    The order the contract sees stays the callers': a batch's events get seqs in the batch's
    order (ties between equal timestamps break by seq), the next batch's follow, and a call
    this form does not take (an event with a key or dimensions, a tenant with alerts, which
    read the rows written) first writes the rows gathered so far, then runs as _record_events."""
    results: list[tuple[bool, Any]] = []
    rows: list[tuple[Any, ...]] = []
    alerts: dict[int, bool] = {}
    top = _last_seq(conn)
    for tenant, events, now in calls:
        try:
            known = _meter_seqs(conn, tenant, events)
        except Missing as exc:
            results.append((False, exc))
            continue
        watched = alerts.get(tenant)
        if watched is None:
            watched = alerts[tenant] = bool(watch(conn, tenant).alerts)
        made = None if watched else _usual_rows(tenant, events, known, now, top)
        if made is None:
            _write_ordered(conn, rows)
            rows = []
            results.append((True, _insert_checked(conn, tenant, events, known, now)))
            top = _last_seq(conn)
            continue
        rows += made
        top += len(made)
        recorded(len(made), 0)
        results.append((True, [(row[1], "created") for row in made]))
    _write_ordered(conn, rows)
    return results


def _usual_rows(
    tenant: int, events: list[MeterEventDraft], meters: dict[str, int], now: int, top: int
) -> list[tuple[Any, ...]] | None:
    """The batch's rows, seqs from top + 1, or None if any event is not a usual one."""
    ids = new_ids("evt", len(events))
    rows = []
    for seq, (event_id, e) in enumerate(zip(ids, events), top + 1):
        if e.idempotency is not None or e.dimensions is not None or e.ledger_id is not None:
            return None
        rows.append((seq, event_id, tenant, meters[e.meter_id], e.user, e.value, e.timestamp, now))
    return rows


def _last_seq(conn: sqlite3.Connection) -> int:
    (seq,), = conn.execute("SELECT max(seq) FROM meter_events").fetchall()
    return seq or 0


_BY_USER = operator.itemgetter(4)


def _write_ordered(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """`rows` ((seq, id, tenant, meter, user, value, ts, created_at) each) sorted by user alone:
    a sort on text keys only takes CPython's string-compare path (~0.05-0.13 us a row for 1,600
    rows; the (tenant, meter, user) tuple ~0.3-0.45 us), and a commit's events are mostly of
    one tenant and meter. The sort is stable: one user's rows keep their seqs' order."""
    if not rows:
        return
    rows.sort(key=_BY_USER)
    flat = list(itertools.chain.from_iterable(rows))
    n, at = len(rows), 0
    for size in _ORDERED_CHUNKS:
        while n - at >= size:
            conn.execute(_INSERT_NUMBERED[size], flat[at * 8:(at + size) * 8])
            at += size


TOGETHER[_record_events] = _record_together


_INTO = "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id)"
_INSERT = _INTO + " VALUES (?, ?, ?, ?, ?, ?, {key}, ?, ?, ?)"
_INSERT_PLAIN = _INSERT.format(key="NULL")
_INSERT_KEYED = _INSERT.format(key="?") + " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
_BARE_VALUES = "(?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL)"
_BARE_WIDTH = 7
_BARE_CHUNKS = (64, 32, 16, 8, 4, 2, 1)
_INSERT_BARE = {n: _INTO + " VALUES " + ", ".join([_BARE_VALUES] * n) for n in _BARE_CHUNKS}
"""Events with no key, no dimensions and no ledger row, the usual ones, by how many one
statement writes. Their NULLs are written in the statement, not bound: a bound None costs the
sqlite3 module an adapter lookup (see connection.py; callgrind, scenario 3's batches: 70.2k ->
68.6k instructions per event). A run of them is written as few multi-row statements (a run of
100: 64, 32 and 4 rows) instead of one executemany, whose every row is a step of its own, and
the writer thread lets go of the GIL around each step: 100 times a batch, each a chance for the
event loop to take it until its next switch interval. Seven statement texts at most, so that they
stay in the connection's statement cache."""
_ORDERED_CHUNKS = (512, 128, 32, 8, 2, 1)
_INSERT_NUMBERED = {
    n: _INTO.replace("(id,", "(seq, id,") + " VALUES " + ", ".join(["(?, " + _BARE_VALUES[1:]] * n) for n in _ORDERED_CHUNKS
}
"""The same with each row's seq given (_record_together), in statements of up to 512 rows
(4,096 parameters; SQLite allows 32,766): a commit's 1,600-2,500 rows in 4-6 statements instead
of 25-40 of 64 rows, each of which opens a cursor on the table and each index and lets go of the
GIL and takes it back. The store's record_meter_events in one process, 16 and 25 batches of 100
a commit, three alternating runs each: 5.62 -> 5.17 and 5.07 -> 4.86 us of CPU per event."""


def _insert_events(
    conn: sqlite3.Connection, tenant: int, events: list[MeterEventDraft], meters: dict[str, int], now: int
) -> list[tuple[str, str]]:
    """A caller's batch, inserted in its order (the `last` aggregate's tie-break on equal
    timestamps is the insertion order; a multi-row INSERT writes its rows in the order of its
    VALUES). Events without an idempotency key cannot conflict (the dedupe index holds only
    keyed ones) and are all created: each run of them is written at once (_write_run), where a
    statement each cost ~9% of recordMeterEvents' samples (bench.profile); a keyed event is
    inserted alone, to learn whether it was a duplicate. `meters`: each meter id's seq."""
    ids = new_ids("evt", len(events))
    outcomes: list[tuple[str, str]] = []
    run: list[Any] = []
    bare = True
    for event_id, e in zip(ids, events):
        if e.idempotency is not None:
            _write_run(conn, run, bare)
            run = []
            outcomes.append(insert_event(conn, tenant, e, meters[e.meter_id], now, event_id))
            continue
        usual = e.dimensions is None and e.ledger_id is None
        if usual is not bare:
            _write_run(conn, run, bare)
            run, bare = [], usual
        if usual:
            run += (event_id, tenant, meters[e.meter_id], e.user, e.value, e.timestamp, now)
        else:
            run.append((event_id, tenant, meters[e.meter_id], e.user, e.value, e.timestamp,
                        json_text(e.dimensions) if e.dimensions is not None else None, now, e.ledger_id))
        outcomes.append((event_id, "created"))
    _write_run(conn, run, bare)
    return outcomes


def _write_run(conn: sqlite3.Connection, run: list[Any], bare: bool) -> None:
    """`bare`: `run` holds usual events' values, _BARE_WIDTH each; else one tuple per event."""
    if not run:
        return
    if not bare:
        conn.executemany(_INSERT_PLAIN, run)
        return
    n, at = len(run) // _BARE_WIDTH, 0
    for size in _BARE_CHUNKS:
        while n - at >= size:
            conn.execute(_INSERT_BARE[size], run[at * _BARE_WIDTH:(at + size) * _BARE_WIDTH])
            at += size


def insert_event(
    conn: sqlite3.Connection, tenant: int, e: MeterEventDraft, meter: int, now: int, event_id: str | None = None
) -> tuple[str, str]:
    """`e` under the meter whose seq is `meter`: (its id, "created"), or (the first event's id,
    "duplicate") when its idempotency key is taken."""
    event_id = event_id or new_id("evt")
    inserted = conn.execute(  # rowcount, not RETURNING: see append_entry
        _INSERT_KEYED,
        (event_id, tenant, meter, e.user, e.value, e.timestamp, e.idempotency,
         json_text(e.dimensions) if e.dimensions is not None else None, now, e.ledger_id),
    ).rowcount
    if inserted:
        return event_id, "created"
    (original,), = conn.execute(
        "SELECT id FROM meter_events WHERE tenant = ? AND idempotency_key = ?", (tenant, e.idempotency)
    ).fetchall()
    return original, "duplicate"
