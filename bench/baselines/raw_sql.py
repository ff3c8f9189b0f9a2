"""In-process baselines, no HTTP: what SQLite itself does with the same rows and queries.

    python -m bench.baselines.raw_sql insert --db PATH --tenant T --meter SEQ [--batch 100]
        [--per-commit 1] [--synchronous FULL|NORMAL] [--warmup S] [--seconds S]
    python -m bench.baselines.raw_sql aggregate --db PATH --tenant T --meter M --user U
        --start US --end US [--warmup S] [--seconds S]
    python -m bench.baselines.raw_sql series --db PATH --tenant T --meter M --user U
        --start US --end US [--width US] [--warmup S] [--seconds S]
    python -m bench.baselines.raw_sql usage --db PATH --tenant T --user U --start US --end US
        [--warmup S] [--seconds S]

insert: meter-event rows as zapbilling's insert_event writes them (id evt_<24 hex>, ts and
created_at = now, no idempotency key, no dimensions), `executemany` of --batch rows, --per-commit
of them in one transaction (BEGIN; executemany x N; COMMIT) on a WAL file at the given
synchronous level, one after the other for --seconds. --per-commit 1 is a commit (an fsync, at
FULL) per batch; more is the group-commit ceiling: what the database does when many callers'
batches share a commit, as zapbilling's writer makes them. Latency: one transaction.
aggregate: the SQL zapbilling's getMeterEventsSummary runs for a sum meter, over the same
rows, repeated for --seconds. Latency: one query.
series: the grouped query zapbilling's getMeterEventsSeries runs for a sum meter (one row per
window of --width microseconds holding events), over the same rows. Latency: one query.
usage: every meter's sum and event count of one user over a period in one GROUP BY (what a
hand-written invoice needs at least), repeated for --seconds. Latency: one query.

Prints one JSON object: {"ops", "seconds", "cpu_s" (this process, measured part), "rate"
(rows/s for insert, queries/s for aggregate), "p50_ms", "p99_ms", "result"}.
"""
from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import statistics
import time
from typing import Any, Callable

AGGREGATE_SQL = (
    "SELECT COALESCE(SUM(value), 0), COUNT(*) FROM meter_events"
    " WHERE tenant = ? AND meter = (SELECT seq FROM meters WHERE id = ?) AND user_id = ? AND ts >= ? AND ts < ?"
)
SERIES_SQL = (
    "SELECT (ts - ?) / ? AS w, COALESCE(SUM(value), 0), COUNT(*) FROM meter_events"
    " WHERE tenant = ? AND meter = (SELECT seq FROM meters WHERE id = ?) AND user_id = ? AND ts >= ? AND ts < ? GROUP BY w"
)
USAGE_SQL = (
    "SELECT meter, SUM(value), COUNT(*) FROM meter_events"
    " WHERE tenant = ? AND user_id = ? AND ts >= ? AND ts < ? GROUP BY meter"
)
INSERT_SQL = (
    "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)"
)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def _loop(op, warmup: float, seconds: float) -> tuple[int, float, float, list[float], object]:  # type: ignore[no-untyped-def]
    """Run op() for `warmup`, then for `seconds` timing each call: (calls, elapsed, CPU seconds
    of this process, latencies, last result)."""
    end = time.perf_counter() + warmup
    result = None
    while time.perf_counter() < end:
        result = op()
    latencies: list[float] = []
    start = time.perf_counter()
    cpu = time.process_time()
    end = start + seconds
    while True:
        t = time.perf_counter()
        if t >= end and latencies:
            break
        result = op()
        latencies.append(time.perf_counter() - t)
    return len(latencies), time.perf_counter() - start, time.process_time() - cpu, latencies, result


def insert(args: argparse.Namespace) -> dict[str, object]:
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {args.synchronous}")
    counter = 0

    def op() -> int:
        nonlocal counter
        now = time.time_ns() // 1000
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(args.per_commit):
            rows = []  # ids of zapbilling's shape: the creation millisecond, then random bits
            for _ in range(args.batch):
                counter += 1
                rows.append((f"evt_{now // 1000:011x}{secrets.randbits(52):013x}", args.tenant, int(args.meter), f"bench/u{counter % 100}", counter % 10 + 1, now, now))
            conn.executemany(INSERT_SQL, rows)
        conn.execute("COMMIT")
        return counter

    ops, elapsed, cpu, latencies, _ = _loop(op, args.warmup, args.seconds)
    (stored,), = conn.execute("SELECT COUNT(*) FROM meter_events WHERE meter = ?", (args.meter,)).fetchall()
    conn.close()
    assert stored == counter, (stored, counter)
    latencies.sort()
    return {"ops": ops, "seconds": elapsed, "cpu_s": cpu, "rate": ops * args.per_commit * args.batch / elapsed, "p50_ms": _percentile(latencies, 0.5) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3, "result": {"rows_written": stored}}


def _reads(
    args: argparse.Namespace, sql: str, params: tuple[object, ...], fetch: Callable[[sqlite3.Cursor], Any]
) -> tuple[dict[str, object], Any]:
    """The read baselines' one shape: `sql` run and fetched again and again on a read-only
    connection (--warmup, then --seconds, see _loop); the measurement and the last result."""
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    ops, elapsed, cpu, latencies, result = _loop(lambda: fetch(conn.execute(sql, params)), args.warmup, args.seconds)
    conn.close()
    latencies.sort()
    return {"ops": ops, "seconds": elapsed, "cpu_s": cpu, "rate": ops / elapsed, "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3}, result


def aggregate(args: argparse.Namespace) -> dict[str, object]:
    measured, row = _reads(args, AGGREGATE_SQL, (args.tenant, args.meter, args.user, args.start, args.end), sqlite3.Cursor.fetchone)
    return measured | {"result": list(row)}


def series(args: argparse.Namespace) -> dict[str, object]:
    params = (args.start - args.start % args.width, args.width, args.tenant, args.meter, args.user, args.start, args.end)
    measured, rows = _reads(args, SERIES_SQL, params, sqlite3.Cursor.fetchall)
    return measured | {"result": {"windows": len(rows), "events": sum(r[2] for r in rows)}}


def usage(args: argparse.Namespace) -> dict[str, object]:
    measured, rows = _reads(args, USAGE_SQL, (args.tenant, args.user, args.start, args.end), sqlite3.Cursor.fetchall)
    return measured | {"result": {"meters": len(rows), "events": sum(r[2] for r in rows)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("insert", "aggregate", "series", "usage"):
        p = sub.add_parser(name)
        p.add_argument("--db", required=True)
        p.add_argument("--tenant", type=int, required=True)
        if name != "usage":  # insert: a meter's seq (rows name their meter by it); else its id
            p.add_argument("--meter", required=True)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--seconds", type=float, default=5.0)
        if name == "insert":
            p.add_argument("--batch", type=int, default=100)
            p.add_argument("--per-commit", type=int, default=1, help="batches per transaction (default 1)")
            p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))
        else:
            p.add_argument("--user", required=True)
            p.add_argument("--start", type=int, required=True)
            p.add_argument("--end", type=int, required=True)
        if name == "series":
            p.add_argument("--width", type=int, default=3_600_000_000, help="microseconds per window (default: an hour)")
    args = ap.parse_args()
    print(json.dumps({"insert": insert, "aggregate": aggregate, "series": series, "usage": usage}[args.mode](args)))


if __name__ == "__main__":
    main()
