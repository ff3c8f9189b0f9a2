"""Meters and meter events on PostgreSQL (as ../sqlite/metering.py). Aggregation happens in
SQL over the (tenant, meter, user, ts) index; events are never loaded into Python to be summed.

Sums: PostgreSQL sums BIGINT into NUMERIC, exactly and without overflow, so the SQLite
store's split into high and low 32 bits is not needed here; a sum outside int64 is the same
SumOutOfRange."""
from __future__ import annotations

import functools
import time
from typing import Any

import asyncpg

from ..base import Idempotency, MeterEventDraft, MeterRow, MeterUsage, NewMeter, Recorded, recorded
from ..ids import new_id, new_ids
from ..refusals import AlreadyExists, Missing, QuotaReached, SumOutOfRange
from ..rows import METER_COLUMNS as _METER, meter_row, json_text
from .connection import KEY_VALID, UNCHECKED_KEY, PgBase
from .outbox import NOTHING, Watch
from .watch import after_meter_events
from ...loop_turn import converted
from ..rows import ROWS_PER_STEP

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

AGGREGATES = {
    "sum": "COALESCE(SUM(value), 0)",  # NUMERIC: exact, judged against int64 in Python
    "count": "COUNT(*)",
    "max": "COALESCE(MAX(value), 0)",
    "min": "COALESCE(MIN(value), 0)",
    "unique_count": "COUNT(DISTINCT value)",
    # the value of the latest event; equal timestamps: the one inserted last
    "last": "COALESCE((SELECT value FROM meter_events WHERE {where} ORDER BY ts DESC, seq DESC LIMIT 1), 0)",
}

# Every meter of a tenant and its usage by one user over a period, in one statement, as the
# SQLite store does it (see its _usage_sql for the measurements behind the shape): a correlated
# subquery per meter over the (tenant, meter, user, ts) index range, CASE running only the
# meter's own aggregation's. Each subquery answers ARRAY[events, value] as NUMERIC[] (one type
# for every CASE branch; a sum may pass int64).
_EVENTS_OF_METER = "tenant = m.tenant AND meter = m.seq AND user_id = $2{period}"

METER = "(SELECT seq FROM meters WHERE tenant = $1 AND id = $2)"
"""The seq of the meter whose id is $2, by which its events name it (migration 16)."""


@functools.lru_cache(maxsize=None)  # four periods: bounded or not on each side
def _usage_sql(period: str) -> str:
    where = _EVENTS_OF_METER.format(period=period)
    cases = " ".join(
        f"WHEN '{aggregation}' THEN (SELECT ARRAY[COUNT(*), {aggregate.format(where=where)}]::numeric[]"
        f" FROM meter_events WHERE {where})"
        for aggregation, aggregate in AGGREGATES.items()
    )
    return f"SELECT m.id, m.name, CASE m.aggregation {cases} END FROM meters m WHERE m.tenant = $1 ORDER BY m.seq"


def _period(start: int | None, end: int | None, first: int) -> tuple[str, list[int]]:
    """The `ts` bounds as SQL with parameters numbered from `first`, and their values."""
    sql, params = "", list[int]()
    for op, bound in ((">=", start), ("<", end)):
        if bound is not None:
            params.append(bound)
            sql += f" AND ts {op} ${first + len(params) - 1}"
    return sql, params


def _int64(value: Any) -> int:
    exact = int(value)
    if not INT64_MIN <= exact <= INT64_MAX:
        raise SumOutOfRange()
    return exact


class MeteringQueries(PgBase):
    AGGREGATIONS = frozenset(AGGREGATES)

    async def create_meter(
        self, tenant: int, meter: NewMeter, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> MeterRow:
        return await self._write(tenant, idempotency, meter.now, _create_meter, tenant, new_id("mtr"), meter, quota)  # type: ignore[no-any-return]

    async def meters_page(self, tenant: int, limit: int, starting_after: str | None = None) -> tuple[list[MeterRow], bool]:
        """In creation order; Missing("meter") when `starting_after` is not a meter of the tenant."""
        where, params = "tenant = $1", list[Any]([tenant])
        if starting_after is not None:
            found = await self._read("SELECT seq FROM meters WHERE tenant = $1 AND id = $2", tenant, starting_after)
            if not found:
                raise Missing("meter")
            where += " AND seq > $2"
            params.append(found[0][0])
        rows = await self._read(
            f"SELECT {_METER} FROM meters WHERE {where} ORDER BY seq LIMIT ${len(params) + 1}", *params, limit + 1
        )
        return [meter_row(r) for r in rows[:limit]], len(rows) > limit

    async def get_meter(self, tenant: int, meter_id: str) -> MeterRow | None:
        rows = await self._read(f"SELECT {_METER} FROM meters WHERE tenant = $1 AND id = $2", tenant, meter_id)
        return meter_row(rows[0]) if rows else None

    async def record_meter_events(
        self, tenant: int, events: list[MeterEventDraft], now: int, idempotency: Idempotency | None = None
    ) -> list[tuple[str, str]]:
        if idempotency is None and not self._alerting.get(tenant) and _usual(events):
            written = await self._record_alone(tenant, events, now)
            if written is not None:
                return written
        return await self._write(  # type: ignore[no-any-return]
            tenant, idempotency, now, _record_events, tenant, events, now, self._alerting
        )

    async def _record_alone(self, tenant: int, events: list[MeterEventDraft], now: int) -> list[tuple[str, str]] | None:
        """A batch of usual events as one statement that commits by itself (_INSERT_ALONE), or
        None when it wrote nothing and the transaction's way must answer: a meter missing (its
        Missing), the tenant's alerts (judged in the transaction), the key revoked (refused)."""
        ids = new_ids("evt", len(events))
        digest = UNCHECKED_KEY.get()
        started = time.perf_counter()
        written = await self._statement(
            _INSERT_ALONE, tenant, now, [(i, e.meter_id, e.user, e.value, e.timestamp) for i, e in zip(ids, events)],
            sorted({e.meter_id for e in events}), digest,
        )
        if written != len(events):
            return None
        if digest is not None:
            self._key_checked(digest, True)
        self._committed(started, [Recorded(written, 0)], 1)
        return [(event_id, "created") for event_id in ids]

    async def aggregate_events(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int | None, end: int | None
    ) -> tuple[int, int]:
        """(value by the meter's aggregation, number of events) over [start, end);
        SumOutOfRange when a sum passes int64 (the NUMERIC sum itself is exact)."""
        where, params = f"tenant = $1 AND meter = {METER}", list[Any]([tenant, meter_id])
        if user is not None:
            params.append(user)
            where += f" AND user_id = ${len(params)}"
        period, bounds = _period(start, end, len(params) + 1)
        where += period
        params += bounds
        aggregate = AGGREGATES[aggregation].format(where=where)
        (value, count), = await self._aggregate(tenant, f"SELECT {aggregate}, COUNT(*) FROM meter_events WHERE {where}", *params)
        return _int64(value), count

    async def meter_usage(self, tenant: int, user: str, start: int | None, end: int | None) -> list[MeterUsage]:
        """Each meter with events of `user` in [start, end), in creation order: its usage by
        its aggregation, as aggregate_events answers it, in one statement (see _usage_sql).
        SumOutOfRange when a sum meter's sum passes int64."""
        period, bounds = _period(start, end, 3)
        rows = await self._aggregate(tenant, _usage_sql(period), tenant, user, *bounds)
        return [u for u in await converted(rows, _usage, ROWS_PER_STEP) if u is not None]


def _usage(row: Any) -> MeterUsage | None:
    meter_id, name, (count, value) = row
    return MeterUsage(meter_id, name, _int64(value), int(count)) if count else None


async def _create_meter(conn: asyncpg.Connection, tenant: int, meter_id: str, m: NewMeter, quota: int | None) -> MeterRow:
    """The count and the insert in one transaction. Under READ COMMITTED two creates at the
    bound could both count the same meters and both insert, so a create under a quota first
    locks the tenant's row in `tenants` FOR UPDATE: creates of one tenant's meters queue there,
    and each counts after the previous one's commit. (No other write locks a tenants row
    together with another row, so this lock joins no cycle; an authenticated tenant always has
    its row.)"""
    if quota is not None:
        await conn.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", tenant)
        held = await conn.fetchval("SELECT COUNT(*) FROM meters WHERE tenant = $1", tenant)
        if held >= quota:
            raise QuotaReached("meter", quota)
    row = await conn.fetchrow(
        f"INSERT INTO meters (id, tenant, name, event_name, aggregation, currency, dimensions, created_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant, event_name) DO NOTHING RETURNING {_METER}",
        meter_id, tenant, m.name, m.event_name, m.aggregation, m.currency, json_text(m.dimensions), m.now,
    )
    if row is None:
        raise AlreadyExists("meter", m.event_name)
    return meter_row(row)


# A batch as one statement: the events as one array of rows (migration 17's meter_event_row;
# once parallel arrays, see _INSERT_ALONE for why not), unnested in batch order (ORDER BY
# the ordinality: that order gives them their seq, which "last" breaks ties by, and decides
# which of two events with one key in the batch is the first). ON CONFLICT DO NOTHING skips an
# event whose key is taken, by an earlier event or by one earlier in this very statement (the
# unique index sees the statement's own rows), and waits for a concurrent insert of the key to
# commit. What it saves over one INSERT per event (100 round trips and
# 100 statements a batch), measured on the dev cluster (PostgreSQL 15 on loopback, 2 shared
# cores, one client, batches of 100 keyed events each its own transaction, median of 5 rounds of
# 40 batches): 24,400 events/s as one statement against 6,500 events/s one by one (3.8x); a
# batch of 100 repeats (all duplicates, answered by one more SELECT) 27,100 events/s. The cost:
# the rows are built in Python, and duplicates take that second statement.
_INTO = "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at, ledger_id)"
_INSERT_USUAL = (
    _INTO +
    " SELECT e.id, $1, e.meter, e.user_id, e.value, e.ts, e.key, e.dimensions, $2, e.ledger_id"
    " FROM unnest($3::meter_event_row[]) WITH ORDINALITY AS e (id, meter, user_id, value, ts, key, dimensions, ledger_id, n)"
    " ORDER BY e.n"
)
"""_INSERT_BATCH for a batch of usual events only (no idempotency key, no dimensions, no ledger
row): nothing can conflict, so every row is created and none is returned (no 100 returned rows
to decode). Scenario 3 on PostgreSQL, when it came (as five arrays then, `python -m bench
--backend postgres --only 3 --rounds 1`, two interleaved pairs): 53.4k and 53.8k -> 65.8k and
83.8k events/s; server CPU per event 12.5 and 11.6 -> 10.0 and 7.9 us, PostgreSQL's 16.9 and
18.9 -> 13.5 and 10.5 us."""
_INSERT_BATCH = (
    _INSERT_USUAL + " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id"
)

_INSERT_ALONE = (
    "WITH m AS (SELECT id, seq FROM meters WHERE tenant = $1 AND id = ANY($4::text[])),"
    " go AS (SELECT (SELECT count(*) FROM m) = cardinality($4::text[])"
    " AND COALESCE((SELECT alerts FROM tenants WHERE id = $1), 0) = 0"
    f" AND ($5::text IS NULL OR ({KEY_VALID.replace('$1', '$5')})) AS go),"
    " ins AS (" + _INTO +
    " SELECT e.id, $1, m.seq, e.user_id, e.value, e.ts, NULL, NULL, $2, NULL"
    " FROM unnest($3::usual_meter_event[]) WITH ORDINALITY AS e (id, meter_id, user_id, value, ts, n)"
    " JOIN m ON m.id = e.meter_id WHERE (SELECT go FROM go) ORDER BY e.n RETURNING 1)"
    " SELECT count(*) FROM ins"
)
"""A batch of usual events and its checks in one statement that commits by itself: every meter
the tenant's, no alert to judge (tenants.alerts), the key valid when it came from the cache
(keys.py); all of them or nothing is written, as _record_events would. One round trip where
the transaction's way makes four (BEGIN with the key's check, the meters and the Watch, the
insert, COMMIT). The events come as one array of rows (migration 17, usual_meter_event): asyncpg
checks each element of an array parameter against collections.abc, 8 checks an event as five
arrays, 4 as one row (README, "On PostgreSQL")."""


# The batch's meters that exist (their ids and seqs, in one order) and the tenant's Watch
# (outbox.Watch) in one statement: the batch reads its Watch without a round trip of its own.
_KNOWN_AND_WATCH = (
    "SELECT k.ids, k.seqs, t.alerts, t.spend_caps, t.usage_hooks FROM (SELECT array_agg(id) AS ids, array_agg(seq) AS seqs"
    " FROM meters WHERE tenant = $1 AND id = ANY($2::text[])) k LEFT JOIN tenants t ON t.id = $1"
)


def _usual(events: list[MeterEventDraft]) -> bool:
    """No event with a key, dimensions or a ledger row: nothing in the batch can conflict."""
    return all(e.idempotency is None and e.dimensions is None and e.ledger_id is None for e in events)


async def _record_events(
    conn: asyncpg.Connection, tenant: int, events: list[MeterEventDraft], now: int, alerting: dict[int, int]
) -> list[tuple[str, str]]:
    """All or nothing: every meter id is checked before the insert, and the transaction undoes
    everything if anything fails. A seen idempotency key (also earlier in this batch) is a
    duplicate that reports the original event's id; the unique index decides, and the originals
    are read after the insert (which waited for any concurrent holder of a key to commit)."""
    wanted = sorted({e.meter_id for e in events})
    found, seqs, alerts, spend_caps, usage_hooks = await conn.fetchrow(_KNOWN_AND_WATCH, tenant, wanted)
    known: dict[str, int] = dict(zip(found or (), seqs or ()))
    w = NOTHING if alerts is None else Watch(alerts, spend_caps, usage_hooks)
    alerting[tenant] = w.alerts
    for i, e in enumerate(events):
        if e.meter_id not in known:
            raise Missing("meter", i)
    ids = new_ids("evt", len(events))
    rows = [(event_id, known[e.meter_id], e.user, e.value, e.timestamp, e.idempotency,
             json_text(e.dimensions) if e.dimensions is not None else None, e.ledger_id) for event_id, e in zip(ids, events)]
    if _usual(events):
        await conn.execute(_INSERT_USUAL, tenant, now, rows)
        if w.alerts:
            await after_meter_events(conn, tenant, {(e.meter_id, e.user) for e in events}, now, w)
        recorded(len(ids), 0)  # for the metrics
        return [(event_id, "created") for event_id in ids]
    inserted = {r[0] for r in await conn.fetch(_INSERT_BATCH, tenant, now, rows)}
    if w.alerts and inserted:
        touched = {(e.meter_id, e.user) for event_id, e in zip(ids, events) if event_id in inserted}
        await after_meter_events(conn, tenant, touched, now, w)
    if len(inserted) == len(events):
        recorded(len(ids), 0)  # for the metrics
        return [(event_id, "created") for event_id in ids]
    skipped = sorted({e.idempotency for event_id, e in zip(ids, events) if event_id not in inserted if e.idempotency is not None})
    originals = dict(list(await conn.fetch(
        "SELECT idempotency_key, id FROM meter_events WHERE tenant = $1 AND idempotency_key = ANY($2::text[])", tenant, skipped
    )))
    outcomes = [
        (event_id, "created") if event_id in inserted else (originals[e.idempotency], "duplicate")
        for event_id, e in zip(ids, events)
    ]
    recorded(len(inserted), len(events) - len(inserted))  # for the metrics
    return outcomes
