"""The delivery workers' queries on SQLite (the sender: zapbilling/events/sender.py): dispatching
the outbox into deliveries, leasing due deliveries, recording attempts and disabling an endpoint
whose deliveries keep failing.

Every step that writes is one job on the writer, that is one `BEGIN IMMEDIATE` transaction:
SQLite lets one writer at a time hold the file, across processes too, so a dispatch (read the
undispatched events, insert their deliveries, mark them) or a claim (read the due deliveries,
lease them) cannot interleave with another process's on the same file (`serve --workers N`):
each event is dispatched once and each lease is taken by one sender. The lease itself (a
conditional `lease_until`) is what keeps a second sender away while the first is sending,
outside any transaction."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..base import ALL_EVENTS, USAGE_RECORDED, AttemptOutcome, DeliveryJob, Disabling, EndpointRow
from . import outbox
from .connection import SqliteBase

_DUE = "status = 'pending' AND due_at <= :now AND (lease_until IS NULL OR lease_until <= :now)"
"""A delivery a sender may take now: pending, due, and not leased (or its lease ran out)."""


class DeliveryQueries(SqliteBase):
    async def deliveries_waiting(self, now: int) -> tuple[bool, bool]:
        rows = await self._read(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE dispatched = 0), EXISTS (SELECT 1 FROM deliveries WHERE {_DUE})",
            {"now": now},
        )
        return bool(rows[0][0]), bool(rows[0][1])

    async def dispatch_events(self, now: int, limit: int = 500) -> int:
        return await self._run(_dispatch, now, limit)

    async def claim_deliveries(
        self, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]
    ) -> list[DeliveryJob]:
        return await self._run(_claim, now, lease_until, limit, per_endpoint, busy)

    async def record_attempt(self, outcome: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
        return await self._run(_record, outcome, disable_after, disabling)


_BATCH = "SELECT seq FROM events WHERE dispatched = 0 ORDER BY seq LIMIT :limit"
"""The events a dispatch takes: the oldest undispatched (the same rows for both statements below:
the writer runs the job alone on the file)."""

_DISPATCH = f"""
INSERT INTO deliveries (tenant, event_id, endpoint_id, due_at, created_at)
SELECT e.tenant, e.id, w.id, :now, :now
FROM events e JOIN webhook_endpoints w
  ON w.tenant = e.tenant AND w.status = 'enabled' AND w.deleted_at IS NULL
WHERE e.seq IN ({_BATCH})
  AND EXISTS (SELECT 1 FROM json_each(w.events) j
              WHERE j.value = e.type OR (j.value = '{ALL_EVENTS}' AND e.type <> '{USAGE_RECORDED}'))
ORDER BY e.seq, w.seq
"""
"""One delivery per event and endpoint enabled that subscribes to its type (base.subscribes, in
SQL). Why one statement rather than the rows read into Python and written back with executemany
(callgrind, 3,000 usage.recorded events to one endpoint, batches of 500): the executemany way
cost 78k instructions per event, this and the UPDATE below 31k."""


def _dispatch(conn: sqlite3.Connection, now: int, limit: int) -> int:
    conn.execute(_DISPATCH, {"now": now, "limit": limit})
    return conn.execute(f"UPDATE events SET dispatched = 1 WHERE seq IN ({_BATCH})", {"limit": limit}).rowcount


_CANDIDATES = """
SELECT seq, endpoint_id FROM deliveries
WHERE status = 'pending' AND due_at <= :now AND (lease_until IS NULL OR lease_until <= :now)
  AND endpoint_id NOT IN (SELECT value FROM json_each(:busy))
ORDER BY due_at, seq
LIMIT :scan
"""
"""The due deliveries a claim looks at, oldest due first: two columns each. Their endpoints and
events are read only for the ones taken (_ENDPOINTS, _TAKEN): the claim used to join both to
every candidate, up to limit x SCAN rows (event data included) for the one or few attempts a
turn starts when an attempt ends; see sender.py for what that cost a delivery."""

_ENDPOINTS = """
SELECT id, url, secret, old_secret, old_secret_until, status = 'enabled' AND deleted_at IS NULL
FROM webhook_endpoints WHERE id IN (SELECT value FROM json_each(?))
"""

_TAKEN = f"""
SELECT d.seq, d.tenant, d.attempts, e.id, e.type, e.created_at, {outbox.event_data('e.')}
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.seq IN (SELECT value FROM json_each(?))
"""


def full(busy: dict[str, int], per_endpoint: int) -> list[str]:
    """The endpoints that may have no more attempts under way now."""
    return [endpoint for endpoint, n in busy.items() if n >= per_endpoint]


Endpoints = dict[str, tuple[str, str, str | None, int | None, bool]]
"""By endpoint id: (url, secret, old secret, old secret's end, enabled and not deleted)."""


def pick(candidates: list[tuple[int, str]], endpoints: Endpoints, limit: int, per_endpoint: int,
         busy: dict[str, int]) -> tuple[list[tuple[int, str]], list[int]]:
    """Of the candidates ((delivery, endpoint), oldest due first, as _CANDIDATES): the attempts
    to make now, at most `per_endpoint` per endpoint with those under way (`busy`) and `limit`
    in all, and the deliveries whose endpoint is gone (deleted or disabled since), which fail
    without an attempt. Shared by both backends."""
    taken: list[tuple[int, str]] = []
    gone: list[int] = []
    counts = dict(busy)
    for seq, endpoint in candidates:
        found = endpoints.get(endpoint)
        if found is None or not found[4]:
            gone.append(seq)
            continue
        if len(taken) >= limit or counts.get(endpoint, 0) >= per_endpoint:
            continue
        counts[endpoint] = counts.get(endpoint, 0) + 1
        taken.append((seq, endpoint))
    return taken, gone


def jobs_of(taken: list[tuple[int, str]], endpoints: Endpoints, rows: list[Any], now: int) -> list[DeliveryJob]:
    """The jobs of the deliveries taken (in their order), from their rows as _TAKEN reads them."""
    by_seq = {r[0]: r for r in rows}
    jobs: list[DeliveryJob] = []
    for seq, endpoint in taken:
        _, tenant, attempts, event_id, type, created_at, data = by_seq[seq]
        url, secret, old, old_until, _enabled = endpoints[endpoint]
        secrets = (secret, old) if old is not None and old_until is not None and old_until > now else (secret,)
        jobs.append(DeliveryJob(seq, tenant, attempts + 1, endpoint, url, secrets, event_id, type, created_at, data))
    return jobs


SCAN = 4
"""Candidates read per claim, as a multiple of `limit`: enough that one endpoint's backlog of due
deliveries (taken at most `per_endpoint` at a time) leaves room for the other endpoints'."""


def _claim(conn: sqlite3.Connection, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]) -> list[DeliveryJob]:
    candidates = conn.execute(
        _CANDIDATES, {"now": now, "busy": json.dumps(full(busy, per_endpoint)), "scan": limit * SCAN}
    ).fetchall()
    if not candidates:
        return []
    endpoints: Endpoints = {r[0]: (r[1], r[2], r[3], r[4], bool(r[5])) for r in conn.execute(
        _ENDPOINTS, (json.dumps(list({c[1] for c in candidates})),))}
    taken, gone = pick(candidates, endpoints, limit, per_endpoint, busy)
    if gone:
        conn.executemany("UPDATE deliveries SET status = 'failed', lease_until = NULL WHERE seq = ?", [(seq,) for seq in gone])
    if not taken:
        return []
    seqs = json.dumps([seq for seq, _ in taken])
    conn.execute("UPDATE deliveries SET lease_until = ? WHERE seq IN (SELECT value FROM json_each(?))", (lease_until, seqs))
    return jobs_of(taken, endpoints, conn.execute(_TAKEN, (seqs,)).fetchall(), now)


def _record(conn: sqlite3.Connection, o: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
    status = "succeeded" if o.succeeded else "failed"
    logged = conn.execute(
        "INSERT INTO delivery_attempts (delivery, attempt, status, response_status, error, at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (delivery, attempt) DO NOTHING",
        (o.delivery, o.attempt, status, o.response_status, o.error, o.at),
    ).rowcount
    if not logged:
        return False  # recorded by the sender that took over after our lease ran out
    final = "pending" if not o.succeeded and o.next_due is not None else status
    row = conn.execute(
        "UPDATE deliveries SET attempts = ?, status = ?, due_at = COALESCE(?, due_at), lease_until = NULL"
        " WHERE seq = ? AND attempts = ? RETURNING endpoint_id",
        (o.attempt, final, o.next_due, o.delivery, o.attempt - 1),
    ).fetchone()
    if row is None or final == "pending":
        return False
    if final == "succeeded":
        conn.execute("UPDATE webhook_endpoints SET failed_in_row = 0 WHERE id = ? AND failed_in_row <> 0", (row[0],))
        return False
    found = conn.execute(
        "UPDATE webhook_endpoints SET failed_in_row = failed_in_row + 1 WHERE id = ?"
        " RETURNING failed_in_row, status = 'enabled' AND deleted_at IS NULL, tenant, id, url, events, description, created_at",
        (row[0],),
    ).fetchone()
    failed, enabled, tenant, *shown = found
    if failed < disable_after or not enabled:
        return False
    conn.execute("UPDATE webhook_endpoints SET status = 'disabled' WHERE id = ?", (row[0],))
    endpoint = _disabled_row(*shown)
    if USAGE_RECORDED in endpoint["events"]:
        conn.execute("UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = ?", (tenant,))
    type, data = disabling(endpoint)
    outbox.emit(conn, tenant, type, data, o.at)
    return True


def _disabled_row(id: str, url: str, events: str, description: str, created_at: int) -> EndpointRow:
    return {"id": id, "url": url, "events": json.loads(events), "description": description, "status": "disabled", "createdAt": created_at}
