"""Sustained ingestion (issue 19): recordMeterEvents for minutes, not seconds, on each backend.

    python -m bench.ingest [--backend sqlite|postgres|both] [--minutes 5] [--peak-seconds 10]
                           [--slice 10] [--connections 64] [--json FILE]

For each backend: `zapbilling serve --durability full` on a fresh database (a SQLite file; a
database on the bench's own throwaway PostgreSQL cluster), one meter, then scenario 3's load
(batches of 100 events over msgpack, bench/lua/meter_events.lua, 64 connections):

1. the peak: one run of --peak-seconds, its rate the reference;
2. the sustained run: --minutes of the same load, in slices of --slice seconds (wrk runs one
   slice at a time, so each slice's rate and latency are known; the connections are opened
   again between slices, a few milliseconds), the server's RSS (its process tree) read after
   each slice;
3. afterwards, with the server still up: getMeterEventsSummary over the ingested events of one
   user, timed 21 times, against the raw SQL aggregate over the same rows in-process (scenario
   4's comparison; its bound is 1.5x);
4. the server stopped: the events counted in the database against the acknowledged batches.

It judges: every slice at >= 80% of the peak rate; RSS after the last slice < 10% above RSS
after the first (the warm-up); events in the database >= 100 x the acknowledged batches, and
no more than what the connections may have had in flight when each slice ended (answers wrk
never read); the summary's p50 <= 1.5x the raw SQL's. Exit status 1 if any fails. Both
backends of a full run take about 13 minutes and write ~20 million rows each (disk: a few GB
in the work folder, removed at the end).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .baselines.raw_sql import AGGREGATE_SQL
from .load import MB, _tree, http, wrk
from .postgres import dollar_params, is_url
from .scenarios import Bench, Settings, Template, create_meter

BATCH = 100
USER = "bench/u0"


def rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in _tree(pid))


def _period() -> tuple[str, str, int, int]:
    """Yesterday to the day after tomorrow (UTC dates and their microseconds): every event of a
    run that may cross midnight."""
    today = dt.datetime.now(dt.timezone.utc).date()
    start, end = today - dt.timedelta(days=1), today + dt.timedelta(days=2)
    us = lambda d: int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000  # noqa: E731
    return start.isoformat(), end.isoformat(), us(start), us(end)


def _timed(call: Any, n: int = 21) -> float:
    """The median of n calls' wall time, in ms."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _raw_aggregate(db: Path | str, tpl: Template, meter: str, start: int, end: int) -> tuple[float, tuple[int, int]]:
    params = (tpl.tenant, meter, USER, start, end)
    if is_url(db):
        import asyncpg

        async def go() -> tuple[float, tuple[int, int]]:
            conn = await asyncpg.connect(str(db), server_settings={"jit": "off"})
            try:
                sql = dollar_params(AGGREGATE_SQL)
                times = []
                for _ in range(21):
                    t = time.perf_counter()
                    row = await conn.fetchrow(sql, *params)
                    times.append((time.perf_counter() - t) * 1e3)
                return statistics.median(times), (int(row[0]), int(row[1]))
            finally:
                await conn.close()
        return asyncio.run(go())
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: list[Any] = []
        p50 = _timed(lambda: found.append(conn.execute(AGGREGATE_SQL, params).fetchone()))
        return p50, (found[-1][0], found[-1][1])
    finally:
        conn.close()


def _count(db: Path | str) -> int:
    if is_url(db):
        from .postgres import one
        return int(one(str(db), "SELECT COUNT(*) FROM meter_events"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM meter_events").fetchone()[0])
    finally:
        conn.close()


def run(bench: Bench, backend: str, minutes: float, peak_seconds: int, slice_seconds: int, connections: int) -> dict[str, Any]:
    log = bench.s.log
    db, tpl = bench.fresh_pg("empty", "ingest") if backend == "postgres" else bench.fresh("empty", "ingest")
    srv = bench.zapbilling(db, f"ingest-{backend}", "full", None, False)
    srv.start()
    slices: list[dict[str, Any]] = []
    answered = 0
    try:
        env = {"BENCH_PATH": "/api/v1/zap", **create_meter(bench, srv, tpl)}
        meter = env["BENCH_METER"]
        common = dict(connections=connections, threads=bench.s.threads, key=tpl.key)
        warm = wrk(srv.url + "/api/v1/zap", "meter_events.lua", env | {"BENCH_NONCE": "warm"}, seconds=2, check=True,
                   expect="created", **common)  # type: ignore[arg-type]
        if warm.failed or warm.checked == 0:
            raise RuntimeError(f"warm-up: {warm.bad} wrong answers, errors {warm.errors}; first: {warm.first_bad[:200]}")
        answered += warm.ok
        peak = wrk(srv.url + "/api/v1/zap", "meter_events.lua", env | {"BENCH_NONCE": "peak"}, seconds=peak_seconds, **common)  # type: ignore[arg-type]
        answered += peak.ok
        peak_rate = peak.rate * BATCH
        log(f"{backend}: peak {peak_rate:,.0f} events/s (p50 {peak.p50_ms:.1f} ms, p99 {peak.p99_ms:.1f} ms)")
        cpu0, t0 = srv.cpu_seconds(), time.monotonic()
        for i in range(max(1, round(minutes * 60 / slice_seconds))):
            res = wrk(srv.url + "/api/v1/zap", "meter_events.lua", env | {"BENCH_NONCE": f"s{i}"}, seconds=slice_seconds, **common)  # type: ignore[arg-type]
            answered += res.ok
            slices.append({"rate": res.rate * BATCH, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "rss_mb": rss(srv.pid) / MB,
                           "errors": res.errors})
            log(f"  slice {i + 1}: {slices[-1]['rate']:,.0f} events/s, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms,"
                f" RSS {slices[-1]['rss_mb']:.0f} MB")
        cpu_us = (srv.cpu_seconds() - cpu0) * 1e6 / max(1, sum(s["rate"] for s in slices) * slice_seconds)
        sustained = (time.monotonic() - t0)
        start_text, end_text, start_us, end_us = _period()
        params = {"meterId": meter, "userId": USER, "periodStart": start_text, "periodEnd": end_text}
        answers: list[Any] = []
        summary_ms = _timed(lambda: answers.append(http(f"{srv.url}/api/v1/zap", {
            "method": "billing.getMeterEventsSummary", "id": 1, "params": params}, key=tpl.key)))
        summary = answers[-1]["result"]
    finally:
        code = srv.stop()
    raw_ms, (raw_value, raw_count) = _raw_aggregate(db, tpl, meter, start_us, end_us)
    stored = _count(db)
    rates = [s["rate"] for s in slices]
    worst = min(rates)
    growth = slices[-1]["rss_mb"] / slices[0]["rss_mb"] - 1
    in_flight_bound = BATCH * connections * (len(slices) + 2)  # answers left unread when each wrk run ended
    problems = []
    if worst < 0.8 * peak_rate:
        problems.append(f"a slice ran at {worst:,.0f} events/s, below 80% of the peak {peak_rate:,.0f}")
    if growth >= 0.10:
        problems.append(f"RSS grew {growth:.1%} after the first slice")
    if stored < BATCH * answered:
        problems.append(f"{answered} batches acknowledged but only {stored} events stored")
    if stored > BATCH * answered + in_flight_bound:
        problems.append(f"{stored} events stored, more than the {answered} acknowledged batches and those in flight")
    if (summary["value"], summary["eventCount"]) != (raw_value, raw_count):
        problems.append(f"the summary {summary['value']}/{summary['eventCount']} is not the raw SQL's {raw_value}/{raw_count}")
    if summary_ms > 1.5 * raw_ms:
        problems.append(f"the summary's p50 {summary_ms:.1f} ms is past 1.5x the raw SQL's {raw_ms:.1f} ms")
    if code != 0 or srv.log_has_traceback():
        problems.append(f"the server exited {code} or logged a traceback ({srv.log})")
    if backend == "postgres":
        bench.postgres().drop(str(db))
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {
        "backend": backend, "peak_rate": peak_rate, "minutes": sustained / 60, "slices": slices,
        "sustained_rate": statistics.mean(rates), "worst_slice_rate": worst, "worst_vs_peak": worst / peak_rate,
        "p50_ms_median": statistics.median(s["p50_ms"] for s in slices),
        "p99_ms_worst": max(s["p99_ms"] for s in slices), "server_cpu_us_per_event": cpu_us,
        "rss_mb_first": slices[0]["rss_mb"], "rss_mb_last": slices[-1]["rss_mb"], "rss_growth": growth,
        "acknowledged_events": BATCH * answered, "stored_events": stored,
        "summary_p50_ms": summary_ms, "raw_sql_p50_ms": raw_ms, "summary_vs_raw": summary_ms / raw_ms,
        "summary_events": summary["eventCount"], "problems": problems,
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--peak-seconds", type=int, default=10)
    ap.add_argument("--slice", type=int, default=10, help="seconds per wrk run of the sustained load")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="zapbilling-ingest-"))
    bench = Bench(Settings(seconds=args.slice, warmup=2, rounds=1, big_rows=0, workdir=workdir,
                           log=lambda m: print(m, file=sys.stderr, flush=True)))
    results = []
    try:
        for backend in (("sqlite", "postgres") if args.backend == "both" else (args.backend,)):
            results.append(run(bench, backend, args.minutes, args.peak_seconds, args.slice, args.connections))
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    for r in results:
        print(f"{r['backend']}: {r['minutes']:.1f} min at {r['sustained_rate']:,.0f} events/s (worst slice"
              f" {r['worst_slice_rate']:,.0f}, {r['worst_vs_peak']:.0%} of the peak {r['peak_rate']:,.0f}); p50 per batch"
              f" {r['p50_ms_median']:.1f} ms, worst p99 {r['p99_ms_worst']:.1f} ms; {r['server_cpu_us_per_event']:.1f} us of"
              f" server CPU per event; RSS {r['rss_mb_first']:.0f} -> {r['rss_mb_last']:.0f} MB ({r['rss_growth']:+.1%});"
              f" {r['stored_events']:,} events stored for {r['acknowledged_events']:,} acknowledged; summary over"
              f" {r['summary_events']:,} events p50 {r['summary_p50_ms']:.1f} ms vs raw SQL {r['raw_sql_p50_ms']:.1f} ms"
              f" ({r['summary_vs_raw']:.2f}x)")
        for p in r["problems"]:
            print(f"  FAIL {p}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
