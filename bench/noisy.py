"""Scenario 7, noisy neighbour (issue 17, item 8): one tenant's abuse must not reach another.

Org B sends a steady getBalance load (500 requests/s, ZAP/msgpack, an open loop over a pool of
4 to 32 keep-alive connections: bench/noisy_load.py) and its latency and errors are measured twice on the same
server: alone, then while org A does everything issue 17 found at once (slow bodies, the
largest and over-large metadata deposits, batches of invoicePreview / unique_count summaries /
listMeters / listTransactions / getUsage, and a getBalance flood far over its rate limit).
Target: B's p99 with A at most 2x its p99 alone, and 0 errors for B.

The server runs as in production with its default limits: `zapbilling serve --db --port` and
nothing else (no ZAPBILLING_* variable reaches it: bench/load.py `child_env`), since the
defaults are what is claimed to protect neighbours. B stays well under the default per-key rate
(5,000/s) and in-flight bound. Org A has four keys, as one org may: a read key for the slow
bodies, another for the expensive reads, an admin key for the deposits and one for the flood, so
each abuse meets its own per-key bounds (with one read key, the slow bodies hold all of its
in-flight slots and the reads never run: A would only throttle itself).

Both phases of a round run on one server (one start, one warm cache), so `s7.quiet` measures
both and hands the second to `s7.noisy`, which the runner calls next. Trouble on the server
side (a non-zero exit, tracebacks in its log) is reported in the run's summary lines, not as a
broken run: under abuse it is a finding about the server, not about the benchmark.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zapbilling.limits import Limits

from . import populate
from .load import MB, Proc, Server, busy_cpu_seconds, child_env, copy_db, free_port, zap, zap_batch, zapbilling_cmd
from .noisy_load import legal_metadata
from .scenarios import Bench, Run, Scenario, Settings, Target, period

NUMBER = 7
TEMPLATE = "noisy"
B_USERS = 100
B_BALANCE = 1_000_000
B_RATE = 500.0
"""Org B's requests per second: a tenth of the default per-key rate, a few % of one server CPU."""
B_CONNECTIONS = 4
"""Kept open from the start; more are opened while every one is busy, up to B_MAX_CONNECTIONS
(half the per-key in-flight bound): a client's pool, so that B's own connections are never
what makes it late, only the server."""
B_MAX_CONNECTIONS = 32
B_TIMEOUT = 10.0
"""Seconds B waits for an answer before counting an error (the body deadline is 10 s too)."""
RAMP = 2.0
"""Seconds A runs before B's warm-up starts: slow sockets opened, the flood's burst spent."""
USAGE_ROWS = 10_000
META_ROWS = 200
"""Rows of the largest legal metadata the listTransactions user starts with (A adds more)."""


@dataclass(frozen=True)
class Abuse:
    """How hard org A pushes; the issue's figures where it gave them."""

    slow_sockets: int = 300
    """Issue 17: 260 slow sockets held every slot of the 256-slot in-flight bound."""
    depositors: int = 4
    """Each alternates the largest legal metadata with an over-large one."""
    readers: int = 6
    """Concurrent batches of expensive reads (the issue: 8 summaries took others to 23-26 s)."""
    batch: int = 100
    """Entries per read batch: the most a batch may carry."""
    flood_connections: int = 4
    flood_depth: int = 16
    """Requests pipelined per flood connection: as fast as the server answers."""
    flood_batch: int = 10
    """getBalance entries per flood request: a batch takes a token per entry, so the flood is
    far over the 5,000/s rate even where the server answers fewer requests than that."""
    deposit_kinds: tuple[str, ...] = ("largest_legal", "oversize")
    read_kinds: tuple[str, ...] = ("invoicePreview", "uniqueCountSummary", "listMeters", "listTransactions", "getUsage")
    """Fewer kinds, to find which one hurts (bench/noisy_load.py `abuse` names them)."""


@dataclass
class NoisyTemplate:
    path: Path
    keys: dict[str, str]
    """b (org B's admin key); org A's: admin (deposits), read (slow bodies), reads, flood."""
    info: dict[str, Any] = field(default_factory=dict)


# -- the prepared database --------------------------------------------------------------------

def _create_key(db: Path, org: str, scope: str = "admin") -> str:
    r = subprocess.run([*zapbilling_cmd(), "keys", "create", "--db", str(db), "--org", org, "--mode", "test", "--scope", scope, "--create-db"],
                       capture_output=True, text=True, env=child_env(), timeout=60)
    if r.returncode != 0 or len(r.stdout.split()) != 1:
        raise RuntimeError(f"zapbilling keys create failed ({r.returncode}): {r.stderr} {r.stdout}")
    return r.stdout.strip()


def _tenants(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {org: tenant for org, tenant in conn.execute("SELECT org, id FROM tenants")}
    finally:
        conn.close()


def _events_on_every_meter(db: Path, tenant: int, meters: list[str], user: str, per_meter: int, start_us: int,
                           end_us: int) -> None:
    """`per_meter` events of `user` on each meter, spread over the period, in one transaction:
    the rows populate.meter_events writes (see its docstring), for many meters at once."""
    recorded = time.time_ns() // 1000
    step = max((end_us - start_us) // per_meter, 1)
    dimensions = json.dumps({"model": "gpt-bench"})
    with populate._loading(str(db)) as conn:
        seqs = dict(conn.execute("SELECT id, seq FROM meters WHERE tenant = ?", (tenant,)).fetchall())  # rows name a meter by seq
        for meter in meters:
            conn.executemany(
                "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                [(event_id, tenant, seqs[meter], user, 1 + i % 7, start_us + i * step, dimensions, recorded)
                 for i, event_id in enumerate(populate._ids("evt", per_meter))])


def template(bench: Bench) -> NoisyTemplate:
    """Made once per bench run, kept with the other templates. Org B: B_USERS users b/u0.. with
    a deposit each. Org A: as many meters as an org may hold (one unique_count, the rest sum),
    a per-unit rule on each, a user (a/preview) with events on every meter, a user (a/events)
    with big_rows events of the unique_count meter, a user (a/meta) with META_ROWS deposits of
    the largest legal metadata, a user (a/usage) with USAGE_ROWS usage withdrawals."""
    if TEMPLATE in bench.templates:
        return bench.templates[TEMPLATE]  # type: ignore[return-value]
    started = time.perf_counter()
    db = bench.s.workdir / "template-noisy.db"
    keys = {"b": _create_key(db, "noisy-b"), "admin": _create_key(db, "noisy-a"),
            "read": _create_key(db, "noisy-a", "read"), "reads": _create_key(db, "noisy-a", "read"),
            "flood": _create_key(db, "noisy-a")}
    tenants = _tenants(db)
    if set(tenants) != {"noisy-a", "noisy-b"}:
        raise RuntimeError(f"expected two orgs, found {tenants}")
    meters_n = min(1000, Limits().meters_per_tenant)
    per_meter = 100 if bench.s.big_rows >= 1_000_000 else 10
    start, end, start_us, end_us = period()
    a = keys["admin"]
    with bench.zapbilling(db, "prepare-noisy", durability="normal") as srv:
        zap_batch(srv.url, keys["b"], [("billing.deposit", {"user": f"b/u{i}", "amount": B_BALANCE}) for i in range(B_USERS)])
        unique = zap(srv.url, a, "billing.createMeter", {"name": "Unique", "eventName": "unique", "aggregationType": "unique_count"})
        meters = [unique["id"]]
        for base in range(0, meters_n - 1, 100):
            meters += [m["id"] for m in zap_batch(srv.url, a, [
                ("billing.createMeter", {"name": f"Meter {i}", "eventName": f"e{i:04d}"})
                for i in range(base, min(meters_n - 1, base + 100))])]
        for base in range(0, len(meters), 100):
            zap_batch(srv.url, a, [("billing.createPricingRule", {"meterId": m, "model": "per_unit", "unitPrice": 1})
                                   for m in meters[base:base + 100]])
        metadata = legal_metadata()
        for _ in range(META_ROWS // 20):  # 20 per batch: ~270 KB, under the 1 MiB body limit
            zap_batch(srv.url, a, [("billing.deposit", {"user": "a/meta", "amount": 1, "metadata": metadata})] * 20)
        zap(srv.url, a, "billing.deposit", {"user": "a/usage", "amount": 1_000_000_000})
    tenant_a = tenants["noisy-a"]
    populate.usage_rows(str(db), tenant_a, "a/usage", USAGE_ROWS, start_us=time.time_ns() // 1000 + 1, step_us=1)
    populate.meter_events(str(db), tenant_a, unique["id"], "a/events", bench.s.big_rows, start_us=start_us, end_us=end_us)
    _events_on_every_meter(db, tenant_a, meters, "a/preview", per_meter, start_us, end_us)
    with bench.zapbilling(db, "check-noisy", durability="normal") as srv:
        summary = zap(srv.url, keys["read"], "billing.getMeterEventsSummary", {"meterId": unique["id"], "userId": "a/events"})
        if summary["eventCount"] != bench.s.big_rows or summary["value"] != 100:
            raise RuntimeError(f"populated unique_count events read back as {summary}")
        preview = zap(srv.url, keys["read"], "billing.invoicePreview", {"userId": "a/preview", "periodStart": start, "periodEnd": end})
        if len(preview["lineItems"]) != len(meters):
            raise RuntimeError(f"invoicePreview of a/preview has {len(preview['lineItems'])} line items, expected {len(meters)}")
        if zap(srv.url, keys["b"], "billing.getBalance", {"user": "b/u0"})["balance"] != B_BALANCE:
            raise RuntimeError("org B's users were not funded")
    populate.checkpoint(str(db))
    tpl = NoisyTemplate(db, keys, {"meters": len(meters), "unique_meter": unique["id"], "events": bench.s.big_rows,
                                   "events_per_meter": per_meter, "period": [start, end]})
    bench.templates[TEMPLATE] = tpl  # type: ignore[assignment]
    bench.s.log(f"  prepared database {TEMPLATE!r} in {time.perf_counter() - started:.1f}s")
    return tpl


# -- one round: both phases on one server ----------------------------------------------------

def _loader(bench: Bench, name: str, role: str, cfg: dict[str, Any]) -> Proc:
    """A tenant's process (bench/noisy_load.py) on the load CPUs; it prints its figures as JSON."""
    argv = [sys.executable, "-m", "bench.noisy_load", role, json.dumps(cfg)]
    name = bench._name(name)
    return Proc(name, argv, log=bench.logs / f"{name}.log", cpus=bench.load_cpus(), capture=True).start()


def _result(proc: Proc, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(proc.communicate(timeout=timeout).decode().strip().splitlines()[-1])
    return out


def _phase(bench: Bench, srv: Server, tpl: NoisyTemplate, tag: str) -> tuple[dict[str, Any], dict[str, float]]:
    """Org B's load once (warm-up, then the measured seconds): its figures, and the server's CPU
    and the machine's meanwhile."""
    s = bench.s
    cfg = {"host": "127.0.0.1", "port": srv.port, "key": tpl.keys["b"], "users": [f"b/u{i}" for i in range(B_USERS)],
           "balance": B_BALANCE, "rate": B_RATE, "connections": B_CONNECTIONS,
           "max_connections": min(B_MAX_CONNECTIONS, Limits().inflight_per_key // 2), "warmup": s.warmup, "seconds": s.seconds,
           "timeout": B_TIMEOUT}
    busy0, cpu0, t0 = busy_cpu_seconds(), srv.cpu_seconds(), time.monotonic()
    b = _result(_loader(bench, f"s7-b-{tag}", "quiet", cfg), s.warmup + s.seconds + B_TIMEOUT + 60)
    busy1, cpu1, t1 = busy_cpu_seconds(), srv.cpu_seconds(), time.monotonic()
    return b, {"server_cpu_s": cpu1 - cpu0, "busy_s": busy1 - busy0, "window_s": t1 - t0}


def _figures(b: dict[str, Any], cpu: dict[str, float], extra_load_cpu_s: float = 0.0) -> dict[str, Any]:
    window = cpu["window_s"]
    server_pct = cpu["server_cpu_s"] / window * 100
    load_pct = (b["cpu_s"] + extra_load_cpu_s) / window * 100
    p50, p99 = b["p50_ms"], b["p99_ms"]
    if not b["ok"]:  # nothing answered: every request took at least the timeout
        p50 = p99 = B_TIMEOUT * 1000
    return {"rate": b["rate"], "requests": b["requests"], "p50_ms": p50, "p90_ms": b["p90_ms"], "p99_ms": p99,
            "max_ms": b["max_ms"], "errors": b["errors"], "server_cpu_pct": server_pct, "load_cpu_pct": load_pct,
            "other_cpu_pct": max(0.0, cpu["busy_s"] / window * 100 - server_pct - load_pct), "b": b}


def _abuse_lines(a: dict[str, Any]) -> list[str]:
    t = a["tallies"]
    fl = t.get("flood", {})
    lines = [f"org A flood: {fl.get('sent', 0):,} requests of {fl.get('entries_per_request', 1)} getBalance "
             f"({fl.get('rate_per_s', 0):,} requests/s): {_outcomes(fl)}"
             f"; 429s with Retry-After {fl.get('429_with_retry_after', 0):,}"]
    sl = t.get("slow_bodies", {})
    lines.append(f"org A slow bodies: {sl.get('sent', 0):,} sockets opened (peak {sl.get('peak_open', 0)} at once), "
                 f"ended by the server: {_outcomes(sl)}; longest held {sl.get('slowest_s', 0):.1f} s")
    for kind in ("deposits_largest_legal", "deposits_oversize"):
        d = t.get(kind, {})
        lines.append(f"org A {kind.replace('_', ' ')}: {d.get('sent', 0):,} sent: {_outcomes(d)}; slowest {d.get('slowest_s', 0):.2f} s")
    for kind, r in t.items():
        if kind.startswith("reads_"):
            lines.append(f"org A {kind[6:]} batches: {r.get('sent', 0):,} sent, {r.get('bytes_in', 0) / MB:,.1f} MB back: "
                         f"{_outcomes(r)}; slowest {r.get('slowest_s', 0):.2f} s")
    return lines


def _outcomes(t: dict[str, Any]) -> str:
    parts = [f"{k} x{v:,}" for k, v in t.get("outcomes", {}).items()]
    parts += [f"{k} x{v:,} (client side)" for k, v in t.get("failures", {}).items()]
    return ", ".join(parts) or "none"


def run_round(bench: Bench, rnd: int, abuse: Abuse) -> dict[str, dict[str, Any]]:
    """Start the server with its defaults on a fresh copy, measure B alone, then B with A."""
    s = bench.s
    tpl = template(bench)
    name = bench._name(f"s7-round{rnd}")
    db = copy_db(tpl.path, s.workdir / f"{name}.db")
    port = free_port()
    srv = Server(name, [*zapbilling_cmd(), "serve", "--db", str(db), "--port", str(port)], port,
                 log=bench.logs / f"{name}.log", cpus=bench.server_cpus(), sender_cpus=bench.load_cpus())
    srv.start()
    try:
        b_quiet, cpu_quiet = _phase(bench, srv, tpl, "quiet")
        quiet_rss = srv.peak_rss
        start, end = tpl.info["period"]
        cfg = {"host": "127.0.0.1", "port": port, "keys": {k: tpl.keys[k] for k in ("admin", "read", "reads", "flood")},
               "seconds": RAMP + s.warmup + s.seconds + 1.0, "slow_sockets": abuse.slow_sockets,
               "depositors": abuse.depositors, "deposit_kinds": abuse.deposit_kinds, "readers": abuse.readers,
               "read_kinds": abuse.read_kinds, "batch": abuse.batch,
               "flood_connections": abuse.flood_connections, "flood_depth": abuse.flood_depth, "flood_batch": abuse.flood_batch,
               "preview_user": "a/preview", "events_user": "a/events", "unique_meter": tpl.info["unique_meter"],
               "meta_user": "a/meta", "usage_user": "a/usage", "period": [start, end]}
        a_proc = _loader(bench, "s7-a-abuse", "abuse", cfg)
        time.sleep(RAMP)
        b_noisy, cpu_noisy = _phase(bench, srv, tpl, "noisy")
        a = _result(a_proc, cfg["seconds"] + 120)
        alive = srv.alive()
    finally:
        rc = srv.stop()
    log_text = srv.log.read_text(errors="replace") if srv.log.exists() else ""
    tracebacks = log_text.count("Traceback (most recent call last)")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    quiet = _figures(b_quiet, cpu_quiet)
    quiet.update(rss_mb=quiet_rss / MB, cpu_us_per_unit=cpu_quiet["server_cpu_s"] * 1e6 / max(b_quiet["requests"], 1),
                 problems=[], summary=_b_lines(b_quiet))
    if b_quiet["errors"]:
        quiet["problems"].append(f"org B had {b_quiet['errors']} errors with no neighbour: {b_quiet['first_error']}")
    # A's process CPU is counted over its whole life; B's window is most of it
    noisy = _figures(b_noisy, cpu_noisy, extra_load_cpu_s=a["cpu_s"] * cpu_noisy["window_s"] / max(a["seconds"], 1e-9))
    server = (f"server: peak RSS {srv.peak_rss / MB:.0f} MB, CPU {noisy['server_cpu_pct']:.0f}% of one CPU with A "
              f"({quiet['server_cpu_pct']:.0f}% without), {'alive' if alive else 'DEAD'} after the abuse, exit {rc}, "
              f"{tracebacks} tracebacks in {srv.log.name}")
    noisy.update(rss_mb=srv.peak_rss / MB, problems=[], abuse=a, server_exit=rc, server_tracebacks=tracebacks,
                 summary=_b_lines(b_noisy, b_quiet) + _abuse_lines(a) + [server])
    return {"quiet": quiet, "noisy": noisy}


def _b_lines(b: dict[str, Any], quiet: dict[str, Any] | None = None) -> list[str]:
    ratio = f" ({b['p99_ms'] / quiet['p99_ms']:.2f}x alone)" if quiet and quiet["p99_ms"] else ""
    errors = f"{b['errors']} errors {b['error_kinds']}" + (f", first: {b['first_error']}" if b["first_error"] else "")
    return [f"org B: {b['ok']:,} answers at {b['rate']:,.0f}/s, p50 {b['p50_ms']:.2f} p99 {b['p99_ms']:.2f}{ratio} "
            f"p99.9 {b['p999_ms']:.2f} max {b['max_ms']:.1f} ms; {errors}; "
            f"{b['connections_used']} connections; its own timer lag p99 {b['timer_lag_p99_ms']:.2f} ms"]


@dataclass
class NoisyRun(Run):
    """One side of scenario 7; `pair` is shared by the two runs of the scenario."""

    phase: str = "quiet"
    abuse: Abuse = field(default_factory=Abuse)
    pair: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def measure(self, bench: Bench, rnd: int) -> dict[str, Any]:
        if self.phase == "quiet":
            self.pair[rnd] = run_round(bench, rnd, self.abuse)
            return self.pair[rnd]["quiet"]
        both = self.pair.pop(rnd, None)
        if both is None:
            raise RuntimeError("the quiet phase of this round did not run, so neither did this one")
        return both["noisy"]


def noisy_scenario(settings: Settings, abuse: Abuse = Abuse()) -> Scenario:
    pair: dict[int, dict[str, dict[str, Any]]] = {}
    b = f"org B getBalance, {B_RATE:,.0f}/s, open loop"
    return Scenario(NUMBER, "noisy neighbour: org B's getBalance alone and while org A abuses (default limits)", [
        NoisyRun("s7.quiet", f"{b}, alone", NUMBER, unit="ms", pair=pair, phase="quiet", abuse=abuse),
        NoisyRun("s7.noisy", f"{b}, while org A abuses", NUMBER, unit="ms", pair=pair, phase="noisy", abuse=abuse),
    ], [
        Target("org B getBalance p99: while org A abuses vs alone", "s7.noisy", "s7.quiet", "<=", 2.0, "p99_ms"),
        Target("org B errors while org A abuses (worst round)", "s7.noisy", "", "<=", 0, "errors"),
    ])
