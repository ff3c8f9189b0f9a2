"""The scenarios of issue 8 (and scenario 6, the money history's listings), their baselines and their targets, and how one run of each is
measured. bench/__main__.py picks, repeats and reports them.

A run: copy a prepared database (made by zapbilling itself, see `Bench.template`) to a fresh
file, start the server on it as its own process, warm up with wrk while checking every answer
in Lua, measure with wrk (without the check), stop the server, then check what it wrote.
In-process baselines (bench/baselines/raw_sql.py) run as their own process on the same kind of
file. Every process's tree RSS is sampled the whole time (peak reported), and CPU time is read
around the measured window for the server, for wrk and for the whole machine, so that a busy
machine or a saturated load generator shows in the figures.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import msgpack

from . import meters, populate
from .load import (CPUS, MB, Proc, Server, busy_cpu_seconds, child_env, copy_db, free_port, wrk, wrk_many, zap,
                   zap_batch, zapbilling_cmd)
from .postgres import PgCluster, is_url
from .postgres import one as pg_one
from .webhooks import ThreadReceiver

USERS = 100
"""Scenario 1 and 5 spread reads over this many users (each with a deposit and usage rows)."""
SMALL_ROWS = 1_000


# -- settings and prepared databases ----------------------------------------------------------

@dataclass
class Settings:
    seconds: float
    warmup: float
    rounds: int
    big_rows: int
    connections: int = 64
    threads: int = 2
    pin: bool = False
    workdir: Path = Path("/tmp")
    log: Callable[[str], None] = print


@dataclass
class Template:
    """A prepared database: the file, the admin key made by `zapbilling keys create`, the
    tenant that key belongs to, and what the preparation made (meter ids, expected sums)."""

    path: Path
    key: str
    tenant: int
    info: dict[str, Any] = field(default_factory=dict)


def _create_key(db: Path) -> str:
    r = subprocess.run([*zapbilling_cmd(), "keys", "create", "--db", str(db), "--org", "bench", "--mode", "test", "--create-db"],
                       capture_output=True, text=True, env=child_env(), timeout=60)
    if r.returncode != 0 or len(r.stdout.split()) != 1:
        raise RuntimeError(f"zapbilling keys create failed ({r.returncode}): {r.stderr} {r.stdout}")
    return r.stdout.strip()


def _tenant(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        (tenant,), = conn.execute("SELECT tenant FROM api_keys").fetchall()
    finally:
        conn.close()
    return tenant


def _one(db: Path | str, sql: str, *params: Any) -> Any:
    """The first column of the first row of a read-only query (a count, an id), on a SQLite
    file or a PostgreSQL database's URL."""
    if is_url(db):
        return pg_one(str(db), sql, *params)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def period() -> tuple[str, str, int, int]:
    """Scenario 4's period: the 30 days before today as bare dates (periodEnd inclusive), and
    the same bounds in microseconds as zapbilling reads them: [start 00:00, day after end 00:00)."""
    today = datetime.now(timezone.utc).date()
    start, end = today - timedelta(days=30), today - timedelta(days=1)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def us(d: Any) -> int:
        return int((datetime(d.year, d.month, d.day, tzinfo=timezone.utc) - epoch).total_seconds()) * 1_000_000

    return start.isoformat(), end.isoformat(), us(start), us(end + timedelta(days=1))


class Bench:
    def __init__(self, settings: Settings):
        self.s = settings
        self.templates: dict[str, Template] = {}
        self.logs = settings.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._pg: PgCluster | None = None
        self._receiver: ThreadReceiver | None = None

    def postgres(self) -> PgCluster:
        """The bench's PostgreSQL cluster, started on first use (bench/postgres.py)."""
        if self._pg is None:
            self._pg = PgCluster(self.s.log)
        return self._pg

    def close(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None

    def receiver(self) -> ThreadReceiver:
        """A webhook receiver on loopback answering 200 (one for the whole bench, started on first use)."""
        if self._receiver is None:
            self._receiver = ThreadReceiver().start()
        return self._receiver

    def _name(self, tag: str) -> str:
        self._n += 1
        return f"{self._n:03d}-{tag}"

    # -- processes ----------------------------------------------------------------------------
    def server_cpus(self, processes: int = 1, pin: bool = True) -> set[int] | None:
        """--pin on a machine of 2+ CPUs: one-process servers on the last CPU, wrk on the others;
        multi-process servers (and their wrk), and runs that ask not to be pinned, are left to
        the scheduler."""
        if not (self.s.pin and pin) or CPUS < 2 or processes > 1:
            return None
        return {CPUS - 1}

    def load_cpus(self, processes: int = 1, pin: bool = True) -> set[int] | None:
        if not (self.s.pin and pin) or CPUS < 2 or processes > 1:
            return None
        return set(range(CPUS - 1))

    def zapbilling(self, db: Path | str, tag: str, durability: str = "full", workers: int | None = None, pin: bool = True,
                   *extra: str) -> Server:
        port = free_port()
        argv = [*zapbilling_cmd(), "serve", "--db", str(db), "--port", str(port), "--durability", durability, *extra]
        argv += ["--rate-per-second", "0"]  # one key drives >20k req/s here: the per-key rate limit would be what is measured
        if workers is not None:
            argv += ["--workers", str(workers)]
        name = self._name(tag)
        cpus = self.server_cpus(workers or 1, pin)
        return Server(name, argv, port, log=self.logs / f"{name}.log", cpus=cpus, sender_cpus=self.load_cpus() if cpus else None)

    def baseline(self, module: str, db: Path | str | None, tag: str, *extra: str, key: str = "") -> Server:
        port = free_port()
        argv = [sys.executable, "-m", f"bench.baselines.{module}", "--port", str(port)]
        if db is not None:
            argv += ["--db", str(db), "--key", key]
        name = self._name(tag)
        return Server(name, [*argv, *extra], port, log=self.logs / f"{name}.log", cpus=self.server_cpus())

    def fresh(self, template: str, tag: str) -> tuple[Path, Template]:
        tpl = self.template(template)
        return copy_db(tpl.path, self.s.workdir / f"{self._name(tag)}.db"), tpl

    def fresh_pg(self, template: str, tag: str) -> tuple[str, Template]:
        """A fresh PostgreSQL database holding the prepared SQLite database's rows; its URL."""
        tpl = self.template(template)
        pg = self.postgres()
        if template not in pg.templates:
            started = time.perf_counter()
            pg.template(template, tpl.path)
            self.s.log(f"  copied database {template!r} into PostgreSQL in {time.perf_counter() - started:.1f}s")
        return pg.fresh(pg.templates[template], tag), tpl

    # -- prepared databases -------------------------------------------------------------------
    def template(self, name: str) -> Template:
        if name not in self.templates:
            started = time.perf_counter()
            self.templates[name] = getattr(self, f"_make_{name}")()
            self.s.log(f"  prepared database {name!r} in {time.perf_counter() - started:.1f}s")
        return self.templates[name]

    def _new(self, name: str) -> tuple[Path, str]:
        db = self.s.workdir / f"template-{name}.db"
        return db, _create_key(db)

    def _make_empty(self) -> Template:
        """A database with its tenant and admin key only."""
        db, key = self._new("empty")
        return Template(db, key, _tenant(db))

    def _make_balance(self) -> Template:
        """USERS users bench/u0.. with a deposit and 10 usage rows each, all through the API."""
        db, key = self._new("balance")
        with self.zapbilling(db, "prepare-balance", durability="normal") as srv:
            zap_batch(srv.url, key, [("billing.deposit", {"user": f"bench/u{i}", "amount": 1_000_000}) for i in range(USERS)])
            for r in range(10):
                zap_batch(srv.url, key, [("billing.recordUsage", {
                    "user": f"bench/u{i}", "amount": 1 + (i + r) % 5, "model": "gpt-bench", "totalTokens": 42,
                    "requestId": f"prep-{r}-{i}"}) for i in range(USERS)])
            expected = zap(srv.url, key, "billing.getBalance", {"user": "bench/u0"})
        populate.checkpoint(str(db))
        return Template(db, key, _tenant(db), {"u0": expected})

    def _make_s4small(self) -> Template:
        return self._scenario4("s4small", "bench/small", SMALL_ROWS, events=0)

    def _make_s4big(self) -> Template:
        return self._scenario4("s4big", "bench/big", self.s.big_rows, events=self.s.big_rows)

    def _make_s4meters(self) -> Template:
        return meters.make_template(self)

    def _scenario4(self, name: str, user: str, ledger_rows: int, events: int) -> Template:
        """A meter (sum), a per-unit pricing rule, a credit grant and a deposit through the API;
        then ledger_rows - 1 usage withdrawals and `events` meter events in the period written
        with SQL (bench/populate.py); then read back through the API and compared."""
        db, key = self._new(name)
        with self.zapbilling(db, f"prepare-{name}", durability="normal") as srv:
            meter = zap(srv.url, key, "billing.createMeter", {"name": "Tokens", "eventName": "tokens", "aggregationType": "sum"})
            zap(srv.url, key, "billing.createPricingRule", {"meterId": meter["id"], "model": "per_unit", "unitPrice": 2})
            zap(srv.url, key, "billing.createCreditGrant", {"userId": user, "name": "bench", "amountCents": 5000})
            deposit = 1_000_000_000
            zap(srv.url, key, "billing.deposit", {"user": user, "amount": deposit})
        tenant = _tenant(db)
        start, end, start_us, end_us = period()
        spent = populate.usage_rows(str(db), tenant, user, ledger_rows - 1, start_us=time.time_ns() // 1000 + 1, step_us=1)
        value = populate.meter_events(str(db), tenant, meter["id"], user, events, start_us=start_us, end_us=end_us) if events else 0
        with self.zapbilling(db, f"check-{name}", durability="normal") as srv:
            balance = zap(srv.url, key, "billing.getBalance", {"user": user})
            if balance["balance"] != deposit - spent:
                raise RuntimeError(f"populated balance {balance} != {deposit - spent}")
            last = ledger_rows - 2
            usage = zap(srv.url, key, "billing.getUsage", {"user": user, "limit": 1})
            want = populate.usage_metadata("gpt-bench", usage["usage"][0]["amount"] * 10, f"bulk-{last:09d}")
            if usage["usage"][0]["metadata"] != want or not usage["hasMore"]:
                raise RuntimeError(f"populated usage reads back as {usage}, expected metadata {want}")
            summary = zap(srv.url, key, "billing.getMeterEventsSummary",
                          {"meterId": meter["id"], "userId": user, "periodStart": start, "periodEnd": end})
            if (summary["value"], summary["eventCount"]) != (value, events):
                raise RuntimeError(f"populated events read back as {summary}, expected {value} over {events}")
        populate.checkpoint(str(db))
        rows = _one(db, "SELECT COUNT(*) FROM ledger WHERE user_id = ?", user)
        if rows != ledger_rows:
            raise RuntimeError(f"{user} has {rows} ledger rows, expected {ledger_rows}")
        return Template(db, key, tenant, {"user": user, "meter": meter["id"], "ledger_rows": rows, "events": events,
                                           "period": [start, end, start_us, end_us], "balance": balance})


    def _make_s6small(self) -> Template:
        return self._scenario6("s6small", SMALL_ROWS)

    def _make_s6big(self) -> Template:
        return self._scenario6("s6big", self.s.big_rows)

    def _scenario6(self, name: str, rows: int) -> Template:
        """The money history at `rows` rows: one user (bench/hist) with `rows` ledger rows (a
        deposit through the API, then usage withdrawals), one grant of theirs with `rows`
        journal rows (created through the API, then burns) and `rows` accounts in usd
        (bench/hist and users bench/acct0000000.., one deposit each), the bulk written with SQL
        (bench/populate.py); read back through the API and compared. `info` holds the ids
        of rows in the middle of each listing, for the deep pages."""
        user, prefix = "bench/hist", "bench/acct"
        db, key = self._new(name)
        deposit, grant_cents = 1_000_000_000, 1_000_000_000
        with self.zapbilling(db, f"prepare-{name}", durability="normal") as srv:
            grant = zap(srv.url, key, "billing.createCreditGrant", {"userId": user, "name": "bench", "amountCents": grant_cents})
            zap(srv.url, key, "billing.deposit", {"user": user, "amount": deposit})
        tenant = _tenant(db)
        now = time.time_ns() // 1000
        spent = populate.usage_rows(str(db), tenant, user, rows - 1, start_us=now + 1, step_us=1)
        burned = populate.credit_burns(str(db), tenant, grant["id"], rows - 1, start_us=now + 1, step_us=1)
        populate.accounts(str(db), tenant, prefix, rows - 1, start_us=now + rows, step_us=1)
        middle = rows // 2
        mid_tx = _one(db, "SELECT id FROM ledger WHERE user_id = ? ORDER BY created_at, seq LIMIT 1 OFFSET ?", user, middle)
        mid_ct = _one(db, "SELECT id FROM credit_transactions WHERE user_id = ? ORDER BY created_at, seq LIMIT 1 OFFSET ?",
                      user, middle)
        mid_acct = populate.account_name(prefix, middle)
        with self.zapbilling(db, f"check-{name}", durability="normal") as srv:
            txs = zap(srv.url, key, "billing.listTransactions", {"user": user, "limit": 100})
            newest = _one(db, "SELECT id FROM ledger WHERE user_id = ? ORDER BY seq DESC LIMIT 1", user)
            if txs["count"] != 100 or not txs["hasMore"] or txs["transactions"][0]["transactionId"] != newest:
                raise RuntimeError(f"populated ledger reads back wrong: {str(txs)[:300]}")
            balance = zap(srv.url, key, "billing.getBalance", {"user": user})
            if balance["balance"] != deposit - spent:
                raise RuntimeError(f"populated balance {balance} != {deposit - spent}")
            cts = zap(srv.url, key, "billing.listCreditTransactions", {"userId": user, "limit": 100, "startingAfter": mid_ct})
            if cts["count"] != 100 or cts["transactions"][0]["type"] != "burn":
                raise RuntimeError(f"populated journal reads back wrong: {str(cts)[:300]}")
            grants = zap(srv.url, key, "billing.listCreditGrants", {"userId": user})
            if grants["grants"][0]["remainingCents"] != grant_cents - burned:
                raise RuntimeError(f"populated grant {grants} != {grant_cents - burned} left")
            accts = zap(srv.url, key, "billing.listAccounts", {"limit": 100, "startingAfter": mid_acct})
            if accts["count"] != 100 or accts["accounts"][0]["user"] != populate.account_name(prefix, middle + 1):
                raise RuntimeError(f"populated accounts read back wrong: {str(accts)[:300]}")
        populate.checkpoint(str(db))
        counts = (_one(db, "SELECT COUNT(*) FROM ledger WHERE user_id = ?", user),
                  _one(db, "SELECT COUNT(*) FROM credit_transactions WHERE user_id = ?", user),
                  _one(db, "SELECT COUNT(*) FROM balances WHERE currency = 'usd'"))
        if counts != (rows, rows, rows):
            raise RuntimeError(f"{name}: (ledger, journal, accounts) rows {counts}, expected {rows} each")
        return Template(db, key, tenant, {"user": user, "mid_tx": mid_tx, "mid_ct": mid_ct, "mid_acct": mid_acct, "rows": rows})




# -- runs -------------------------------------------------------------------------------------

@dataclass
class Run:
    key: str
    label: str
    scenario: int
    unit: str = "req/s"
    """req/s, events/s (rate x per_request), or ms: a latency run reported by its p50."""
    per_request: int = 1

    def measure(self, bench: Bench, rnd: int) -> dict[str, Any]:
        raise NotImplementedError


RETRIES_LOGGED = re.compile(r"(\d+) transactions retried after a deadlock or serialisation failure")
"""The line a PostgreSQL store logs when it closes (zapbilling/store/postgres/connection.py)."""


@dataclass
class HttpRun(Run):
    server: str = "zapbilling"
    """zapbilling, or a module of bench/baselines."""
    server_args: tuple[str, ...] = ()
    durability: str = "full"
    workers: int | None = None
    pin: bool = True
    """False: never pinned, even with --pin (scenario 5 runs both worker counts the same way)."""
    backend: str = "sqlite"
    """sqlite: a copy of the prepared file; postgres: a fresh database on the bench's cluster
    holding the same rows (always a fresh one, whatever `copy` says)."""
    servers: int = 1
    """zapbilling serve processes on the one database, each on its own port, the load split
    evenly over them (one wrk each); more than one is never pinned."""
    template: str = "balance"
    copy: bool = True
    """False: serve the prepared file itself (scenario 4: read-only runs, a file too big to copy)."""
    script: str = "balance.lua"
    path: str = "/api/v1/zap"
    env: dict[str, str] = field(default_factory=dict)
    expect: str = ""
    connections: int | None = None
    threads: int | None = None
    setup: Callable[[Bench, Server, Template], dict[str, str]] | None = None
    """Called with the server up, before the warm-up; returns more BENCH_* variables."""
    after: Callable[[Server, Path | str], None] | None = None
    """Called with the server (the first) and its database, the server still up, after the measured run."""
    body: Callable[[Bench, Template], tuple[str, str, bytes]] | None = None
    """(content type, path, body) of the one request static.lua sends."""
    verify: Callable[[Path | str, Template, int], str | None] | None = None
    """After the server stopped: (file or URL, template, answers that were 2xx) -> a problem or None."""

    def measure(self, bench: Bench, rnd: int) -> dict[str, Any]:
        s = bench.s
        pg = bench.postgres() if self.backend == "postgres" else None
        db: Path | str
        if pg is not None:
            db, tpl = bench.fresh_pg(self.template, self.key)
        elif self.copy:
            db, tpl = bench.fresh(self.template, self.key)
        else:
            tpl = bench.template(self.template)
            db = tpl.path
        pin = self.pin and self.servers == 1
        if self.server == "zapbilling":
            srvs = [bench.zapbilling(db, self.key, self.durability, self.workers, pin, *self.server_args)
                    for _ in range(self.servers)]
        else:
            srvs = [bench.baseline(self.server, db, self.key, *self.server_args, key=tpl.key)]
        processes = max(self.workers or 1, self.servers)
        conns = self.connections or s.connections
        threads = self.threads or s.threads
        if self.servers > 1:  # the client's threads and connections shared out, not multiplied
            threads = max(1, threads // self.servers)
        env = dict(self.env, BENCH_PATH=self.path)
        problems: list[str] = []
        started: list[Server] = []
        try:
            for srv in srvs:
                started.append(srv.start())
            if self.setup:
                env.update(self.setup(bench, srvs[0], tpl))
            if self.body:
                ctype, path, body = self.body(bench, tpl)
                body_file = s.workdir / f"{self.key}.body"
                body_file.write_bytes(body)
                env.update(BENCH_METHOD="POST", BENCH_PATH=path, BENCH_BODY_FILE=str(body_file), BENCH_CONTENT_TYPE=ctype)
            common = dict(connections=conns, threads=threads, key=tpl.key, cpus=bench.load_cpus(processes, pin),
                          expect=self.expect)
            urls = [srv.url + (self.path if not self.body else "/") for srv in srvs]
            warm = wrk_many(urls, self.script, env | {"BENCH_NONCE": f"{self.key}-{rnd}-w-{secrets.token_hex(3)}"},
                            seconds=s.warmup, check=True, **common)
            if warm.failed:
                problems.append(f"warm-up: {warm.bad} wrong answers, errors {warm.errors}; first: {warm.first_bad[:200]}")
            if warm.checked == 0:
                problems.append("warm-up checked no answer")
            pg0 = pg.cpu_seconds() if pg else 0.0
            busy0, cpu0, t0 = busy_cpu_seconds(), sum(srv.cpu_seconds() for srv in srvs), time.monotonic()
            pre0 = sum(srv.preemptions() for srv in srvs)
            res = wrk_many(urls, self.script, env | {"BENCH_NONCE": f"{self.key}-{rnd}-m-{secrets.token_hex(3)}"},
                           seconds=s.seconds, **common)
            busy1, cpu1, t1 = busy_cpu_seconds(), sum(srv.cpu_seconds() for srv in srvs), time.monotonic()
            pre1 = sum(srv.preemptions() for srv in srvs)
            pg1 = pg.cpu_seconds() if pg else 0.0
            if res.failed:
                problems.append(f"measured run: errors {res.errors}")
            processes = sum(srv.processes() for srv in srvs)
            if self.after:
                self.after(srvs[0], db)
        finally:
            codes = [srv.stop() for srv in started]
        for srv, rc in zip(srvs, codes):
            if rc != 0 and not (rc == -15 and self.server == "fastapi_app"):  # uvicorn re-raises SIGTERM once stopped
                problems.append(f"server exited {rc}: {srv.log_tail(5)}")
            if srv.log_has_traceback():
                problems.append(f"traceback in the server log {srv.log}")
        retries = None
        if pg is not None and self.server == "zapbilling":  # a baseline retries nothing and says so nowhere
            counts = [_retries_logged(srv) for srv in srvs]
            if None in counts:
                problems.append("a server's log has no count of retried transactions (it did not close its pool)")
            retries = sum(c or 0 for c in counts)
        if self.verify:
            problem = self.verify(db, tpl, warm.ok + res.ok)
            if problem:
                problems.append(problem)
        if pg is not None:
            pg.drop(str(db))
        elif self.copy:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        window = t1 - t0
        server_cpu = (cpu1 - cpu0) / window * 100
        load_cpu = res.cpu_seconds / window * 100
        pg_cpu = (pg1 - pg0) / window * 100
        units = max(res.requests * self.per_request, 1)
        out = {
            "rate": res.rate * self.per_request, "requests": res.requests, "p50_ms": res.p50_ms, "p90_ms": res.p90_ms,
            # several servers are several deployments: the largest one's memory, not their sum
            "p99_ms": res.p99_ms, "max_ms": res.max_ms, "rss_mb": max(srv.peak_rss for srv in srvs) / MB,
            "pss_mb": max(srv.peak_pss for srv in srvs) / MB, "rss_by_process": [b for srv in srvs for b in srv.peak_breakdown],
            "cpu_us_per_unit": (cpu1 - cpu0) * 1e6 / units, "server_cpu_pct": server_cpu,
            "preempted_per_1k": (pre1 - pre0) * 1000 / units,
            "load_cpu_pct": load_cpu, "other_cpu_pct": max(0.0, (busy1 - busy0) / window * 100 - server_cpu - load_cpu - pg_cpu),
            "server_processes": processes // self.servers, "servers": self.servers, "connections": conns, "wrk_threads": threads, "problems": problems,
            "wrk": " ".join(Path(a).name if a.startswith("/") else a for a in res.argv),
        }
        if pg is not None:
            out.update(pg_cpu_pct=pg_cpu, pg_cpu_us_per_unit=(pg1 - pg0) * 1e6 / units)
            if retries is not None:  # zapbilling's count; a baseline has none
                out.update(retries=retries, retry_pct=retries * 100 / max(warm.requests + res.requests, 1))
        return out


def _retries_logged(srv: Server) -> int | None:
    """The transactions a PostgreSQL server retried, from the line it logs at shutdown."""
    try:
        found = RETRIES_LOGGED.findall(srv.log.read_text(errors="replace"))
    except OSError:
        return None
    return sum(int(n) for n in found) if found else None


@dataclass
class InprocRun(Run):
    """bench/baselines/raw_sql.py as its own process; `args` builds its command line."""

    template: str = "empty"
    copy: bool = True
    args: Callable[[Bench, Template], list[str]] | None = None

    def measure(self, bench: Bench, rnd: int) -> dict[str, Any]:
        if self.copy:
            db, tpl = bench.fresh(self.template, self.key)
        else:
            tpl = bench.template(self.template)
            db = tpl.path
        assert self.args is not None
        name = bench._name(self.key)
        argv = [sys.executable, "-m", "bench.baselines.raw_sql", *self.args(bench, tpl), "--db", str(db),
                "--warmup", f"{bench.s.warmup:g}", "--seconds", f"{bench.s.seconds:g}"]
        proc = Proc(name, argv, log=bench.logs / f"{name}.log", cpus=bench.server_cpus(), capture=True).start()
        busy0, t0 = busy_cpu_seconds(), time.monotonic()
        out = json.loads(proc.communicate(timeout=bench.s.warmup + bench.s.seconds + 120))
        busy1, t1 = busy_cpu_seconds(), time.monotonic()
        # this process's own CPU during its measured loop, and the rest of the machine's meanwhile
        other = max(0.0, (busy1 - busy0) / (t1 - t0) * 100 - out["cpu_s"] / out["seconds"] * 100)
        if self.copy:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        return {
            "rate": out["rate"], "requests": out["ops"], "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
            "cpu_us_per_unit": out["cpu_s"] * 1e6 / max(out["ops"] * self.per_request, 1), "server_cpu_pct": out["cpu_s"] / out["seconds"] * 100,
            "rss_mb": proc.peak_rss / MB, "pss_mb": proc.peak_pss / MB, "other_cpu_pct": other, "result": out["result"],
            "problems": [],
        }


# -- checks after a run -----------------------------------------------------------------------

def usage_rows_at_least(db: Path | str, tpl: Template, answered: int) -> str | None:
    """Every 2xx recordUsage answer is a committed ledger row (more may have been in flight)."""
    rows = _one(db, "SELECT COUNT(*) FROM ledger WHERE tags = 'api-usage'")
    if rows < answered:
        return f"{answered} usage writes answered but only {rows} ledger rows in the file"
    return None


def events_at_least(db: Path | str, tpl: Template, answered: int) -> str | None:
    rows = _one(db, "SELECT COUNT(*) FROM meter_events")
    if rows < 100 * answered:
        return f"{answered} batches of 100 answered but only {rows} meter events in the file"
    return None


def usage_rows_with_events(db: Path | str, tpl: Template, answered: int) -> str | None:
    """As usage_rows_at_least, and every usage row has its usage.recorded event (the endpoint
    was subscribed all along: the run measured what it says)."""
    problem = usage_rows_at_least(db, tpl, answered)
    rows = _one(db, "SELECT COUNT(*) FROM ledger WHERE tags = 'api-usage'")
    events = _one(db, "SELECT COUNT(*) FROM events WHERE type = 'usage.recorded'")
    return problem or (None if events == rows else f"{rows} usage rows but {events} usage.recorded events")


def usage_endpoint(bench: Bench, srv: Server, tpl: Template) -> dict[str, str]:
    """One webhook endpoint subscribed to usage.recorded, sent to the bench's local receiver."""
    zap(srv.url, tpl.key, "billing.createWebhookEndpoint", {"url": bench.receiver().url, "events": ["usage.recorded"]})
    return {}


def usage_endpoint_held(bench: Bench, srv: Server, tpl: Template) -> dict[str, str]:
    """usage_endpoint, with the server's webhook sender paused (SIGSTOP) until `deliver_held`:
    the run measures what the outbox costs the write path alone, every event written in its
    write's transaction, none sent meanwhile."""
    usage_endpoint(bench, srv, tpl)
    srv.sender().suspend()
    return {}


DELIVERED_WITHIN = 300.0


def deliver_held(srv: Server, db: Path | str) -> None:
    """The paused sender resumed, and back once every event is delivered (a run whose events are
    not all delivered within DELIVERED_WITHIN seconds fails usage_rows_delivered)."""
    srv.sender().resume()
    deadline = time.monotonic() + DELIVERED_WITHIN
    while time.monotonic() < deadline and _one(
            db, "SELECT (SELECT COUNT(*) FROM events WHERE dispatched = 0)"
            " + (SELECT COUNT(*) FROM deliveries WHERE status <> 'succeeded')"):
        time.sleep(0.5)


def usage_rows_delivered(db: Path | str, tpl: Template, answered: int) -> str | None:
    """As usage_rows_with_events, and every event delivered once (deliver_held waited for it)."""
    problem = usage_rows_with_events(db, tpl, answered)
    events = _one(db, "SELECT COUNT(*) FROM events WHERE type = 'usage.recorded'")
    delivered = _one(db, "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'")
    return problem or (None if delivered == events else f"{events} usage.recorded events but {delivered} delivered")


def create_meter(bench: Bench, srv: Server, tpl: Template) -> dict[str, str]:
    meter = zap(srv.url, tpl.key, "billing.createMeter", {"name": "Requests", "eventName": "requests"})
    return {"BENCH_METER": meter["id"]}


def msgpack_call(method: str, params: Callable[[Template], dict[str, Any]]):  # type: ignore[no-untyped-def]
    def body(bench: Bench, tpl: Template) -> tuple[str, str, bytes]:
        return "application/msgpack", "/api/v1/zap", msgpack.packb({"method": method, "id": 1, "params": params(tpl)})
    return body


def _summary_params(tpl: Template) -> dict[str, Any]:
    start, end, _, _ = tpl.info["period"]
    return {"meterId": tpl.info["meter"], "userId": tpl.info["user"], "periodStart": start, "periodEnd": end}


def _series_params(tpl: Template) -> dict[str, Any]:
    return _summary_params(tpl) | {"windowSize": "hour"}


def _preview_params(tpl: Template) -> dict[str, Any]:
    start, end, _, _ = tpl.info["period"]
    return {"userId": tpl.info["user"], "periodStart": start, "periodEnd": end}


def _aggregate_args(bench: Bench, tpl: Template) -> list[str]:
    _, _, start_us, end_us = tpl.info["period"]
    return ["aggregate", "--tenant", str(tpl.tenant), "--meter", tpl.info["meter"], "--user", tpl.info["user"],
            "--start", str(start_us), "--end", str(end_us)]


def _series_args(bench: Bench, tpl: Template) -> list[str]:
    return ["series", *_aggregate_args(bench, tpl)[1:]]


def _executemany_args(bench: Bench, tpl: Template, per_commit: int = 1) -> list[str]:
    return ["insert", "--tenant", str(tpl.tenant), "--meter", str(10**6 + secrets.randbelow(10**6)), "--batch", "100",
            "--per-commit", str(per_commit), "--synchronous", "FULL"]


GROUP_COMMIT = 16
"""Batches of 100 sharing one commit in scenario 3's group-commit ceiling: about what zapbilling's
writer gathers into one commit under the scenario's 64 connections (its queue holds one job per
request in flight)."""


# Scenario 6's listings: (key, label, method, params of the first page, params of a page in the middle).
HISTORY_PAGES: list[tuple[str, str, str, Callable[[Template], dict[str, Any]], Callable[[Template], dict[str, Any]]]] = [
    ("tx", "listTransactions", "billing.listTransactions",
     lambda t: {"user": t.info["user"], "limit": 100},
     lambda t: {"user": t.info["user"], "limit": 100, "startingAfter": t.info["mid_tx"]}),
    ("ct", "listCreditTransactions", "billing.listCreditTransactions",
     lambda t: {"userId": t.info["user"], "limit": 100},
     lambda t: {"userId": t.info["user"], "limit": 100, "startingAfter": t.info["mid_ct"]}),
    ("acct", "listAccounts", "billing.listAccounts",
     lambda t: {"limit": 100},
     lambda t: {"limit": 100, "startingAfter": t.info["mid_acct"]}),
]
HISTORY_ROWS = {"tx": "ledger rows of one user", "ct": "journal rows of one user", "acct": "accounts"}


def scenario6(settings: Settings) -> Scenario:
    """p50 at 1 connection of a page of 100 of each money-history listing at SMALL_ROWS and at
    big_rows rows: the first page and one from the middle (startingAfter), each <= 1.2x."""
    big = f"{settings.big_rows:,}"
    runs: list[Run] = []
    targets = []
    for key, name, method, first, deep in HISTORY_PAGES:
        for page, params in (("first", first), ("deep", deep)):
            where = "first page" if page == "first" else "a page from the middle"
            for size, template, count in (("small", "s6small", f"{SMALL_ROWS:,}"), ("big", "s6big", big)):
                runs.append(HttpRun(f"s6.{key}_{page}_{size}", f"{name} {where}, {count} {HISTORY_ROWS[key]}", 6,
                                    unit="ms", template=template, copy=False, connections=1, threads=1,
                                    script="static.lua", body=msgpack_call(method, params), expect="hasMore"))
            targets.append(Target(f"{name} {where} p50: {big} vs {SMALL_ROWS:,}", f"s6.{key}_{page}_big",
                                  f"s6.{key}_{page}_small", "<=", 1.2, "p50_ms"))
    # The server's CPU per request, for information: steadier than a p50 of ~1 ms on a machine
    # whose other work delays the server by a scheduler tick now and then.
    for key, name, *_ in HISTORY_PAGES:
        for page in ("first", "deep"):
            targets.append(Target(f"{name} {page} page, server CPU: {big} vs {SMALL_ROWS:,}", f"s6.{key}_{page}_big",
                                  f"s6.{key}_{page}_small", metric="cpu_us_per_unit"))
    return Scenario(6, "money history: a page of 100 at 1,000 vs many rows (1 connection: p50 latency)", runs, targets)


# -- the scenarios ----------------------------------------------------------------------------

@dataclass
class Target:
    label: str
    subject: str
    baseline: str
    op: str | None = None
    """">=" (a rate ratio) or "<=" (a latency ratio); None: shown for information, no target."""
    threshold: float = 0.0
    metric: str = "rate"


@dataclass
class Scenario:
    number: int
    title: str
    runs: list[Run]
    targets: list[Target]
    skipped: str | None = None


def serve_has_workers() -> bool:
    r = subprocess.run([*zapbilling_cmd(), "serve", "--help"], capture_output=True, text=True, env=child_env(), timeout=60)
    return "--workers" in r.stdout


def scenarios(settings: Settings) -> list[Scenario]:
    big = f"{settings.big_rows:,}"
    zap_read = dict(script="balance.lua", env={"BENCH_STYLE": "zap", "BENCH_CODEC": "msgpack"}, expect="available")
    rest_read = dict(script="balance.lua", path="/api/v1/billing/balance", env={"BENCH_STYLE": "rest"}, expect="available")
    usage = dict(template="empty", script="usage.lua", expect="transactionId", verify=usage_rows_at_least)
    one_conn = dict(connections=1, threads=1, copy=False)
    # Both worker counts unpinned: one worker pinned alone to a CPU, with wrk on the other, would
    # be compared with two that share both CPUs with wrk. Scenario 1's pinned worker is shown too.
    s5: list[Run] = [
        HttpRun("s5.workers1", "getBalance ZAP/msgpack, serve --workers 1 (unpinned)", 5, workers=1, pin=False, **zap_read),  # type: ignore[arg-type]
        HttpRun("s5.workers2", "getBalance ZAP/msgpack, serve --workers 2", 5, workers=2, pin=False, **zap_read),  # type: ignore[arg-type]
    ]
    s4 = [
        HttpRun("s4.balance_small", f"getBalance, user with {SMALL_ROWS:,} ledger rows", 4, unit="ms",
                template="s4small", env={"BENCH_STYLE": "zap", "BENCH_CODEC": "msgpack", "BENCH_USER": "bench/small"},
                expect="available", **one_conn),  # type: ignore[arg-type]
        HttpRun("s4.balance_big", f"getBalance, user with {big} ledger rows", 4, unit="ms", template="s4big",
                env={"BENCH_STYLE": "zap", "BENCH_CODEC": "msgpack", "BENCH_USER": "bench/big"},
                expect="available", **one_conn),  # type: ignore[arg-type]
        HttpRun("s4.summary", f"getMeterEventsSummary over {big} events", 4, unit="ms", template="s4big",
                script="static.lua", body=msgpack_call("billing.getMeterEventsSummary", _summary_params),
                expect="eventCount", **one_conn),  # type: ignore[arg-type]
        HttpRun("s4.series", f"getMeterEventsSeries by the hour (720 windows) over {big} events", 4, unit="ms",
                template="s4big", script="static.lua", body=msgpack_call("billing.getMeterEventsSeries", _series_params),
                expect="windows", **one_conn),  # type: ignore[arg-type]
        HttpRun("s4.invoice", f"invoicePreview over {big} events", 4, unit="ms", template="s4big",
                script="static.lua", body=msgpack_call("billing.invoicePreview", _preview_params),
                expect="amountDue", **one_conn),  # type: ignore[arg-type]
        InprocRun("s4.raw_aggregate", f"raw SQL aggregate over the same {big} events", 4, unit="ms",
                  template="s4big", copy=False, args=_aggregate_args),
        InprocRun("s4.raw_series", f"raw SQL grouped by the hour over the same {big} events", 4, unit="ms",
                  template="s4big", copy=False, args=_series_args),
        *meters.runs(),
    ]
    s4_pg = [on_postgres(r) for r in s4 if isinstance(r, HttpRun)]
    return [
        Scenario(1, f"getBalance, {settings.connections} connections", [
            HttpRun("s1.zap_msgpack", "zapbilling ZAP/msgpack", 1, **zap_read),  # type: ignore[arg-type]
            HttpRun("s1.pg_msgpack", "zapbilling ZAP/msgpack on PostgreSQL", 1, backend="postgres", **zap_read),  # type: ignore[arg-type]
            HttpRun("s1.zap_json", "zapbilling ZAP/JSON", 1, script="balance.lua",
                    env={"BENCH_STYLE": "zap", "BENCH_CODEC": "json"}, expect="available"),
            HttpRun("s1.rest", "zapbilling REST GET", 1, **rest_read),  # type: ignore[arg-type]
            HttpRun("s1.bare", "bare aiohttp+uvloop (ceiling)", 1, server="bare", **rest_read),  # type: ignore[arg-type]
            HttpRun("s1.fastapi", "FastAPI on uvicorn (uvloop, httptools)", 1, server="fastapi_app", **rest_read),  # type: ignore[arg-type]
            HttpRun("s1.jsonrpc", "jsonrpcserver in aiohttp+uvloop", 1, server="jsonrpc", script="balance.lua",
                    path="/api/v1/jsonrpc", env={"BENCH_STYLE": "jsonrpc"}, expect="available"),
            HttpRun("s1.bare_pg_keyread", "bare aiohttp+asyncpg: key read + balance read (2 round trips)", 1,
                    server="bare_pg", backend="postgres", **rest_read),  # type: ignore[arg-type]
            HttpRun("s1.bare_pg_keymem", "bare aiohttp+asyncpg: key in memory + balance read (1 round trip)", 1,
                    server="bare_pg", server_args=("--keys", "memory"), backend="postgres", **rest_read),  # type: ignore[arg-type]
        ], [
            # issue 19's 0.9x, met since the plain routes' short cut and the balance memo (README, "Against the bare server now")
            Target("getBalance ZAP/msgpack vs bare aiohttp+uvloop", "s1.zap_msgpack", "s1.bare", ">=", 0.9),
            Target("getBalance ZAP/msgpack vs FastAPI", "s1.zap_msgpack", "s1.fastapi", ">=", 2.0),
            Target("getBalance ZAP/msgpack vs jsonrpcserver", "s1.zap_msgpack", "s1.jsonrpc", ">=", 2.5),
            Target("getBalance ZAP/JSON vs bare aiohttp+uvloop", "s1.zap_json", "s1.bare"),
            Target("getBalance REST vs bare aiohttp+uvloop", "s1.rest", "s1.bare"),
            Target("getBalance ZAP/msgpack: PostgreSQL vs SQLite", "s1.pg_msgpack", "s1.zap_msgpack", ">=", 0.6),
            Target("getBalance on PostgreSQL vs bare aiohttp+asyncpg, the same two round trips", "s1.pg_msgpack", "s1.bare_pg_keyread"),
            Target("bare aiohttp+asyncpg, 2 round trips, vs zapbilling on SQLite (PostgreSQL's ceiling)", "s1.bare_pg_keyread", "s1.zap_msgpack"),
            Target("bare aiohttp+asyncpg, 1 round trip, vs zapbilling on SQLite", "s1.bare_pg_keymem", "s1.zap_msgpack"),
        ]),
        Scenario(2, f"recordUsage over ZAP/msgpack, {settings.connections} connections", [
            HttpRun("s2.full", "zapbilling --durability full", 2, durability="full", **usage),  # type: ignore[arg-type]
            HttpRun("s2.normal", "zapbilling --durability normal", 2, durability="normal", **usage),  # type: ignore[arg-type]
            # Issue 21's cost of the outbox: the same writes with one endpoint subscribed to
            # usage.recorded. s2.full_webhook: what the outbox costs the write path, each write's
            # event written in its transaction while the sender process is paused, then every
            # event delivered after the measured run (checked). s2.full_delivering: the events
            # delivered during the run as well, by the server's sender process (placed beside
            # wrk, off the serving CPU), to a receiver on loopback that answers 200 at once: on
            # 2 CPUs the deliveries (each about a request's work) take CPU from the load too.
            HttpRun("s2.full_webhook", "zapbilling full, a webhook endpoint on usage.recorded, delivered after the run", 2,
                    durability="full", server_args=("--webhook-allow-private",), setup=usage_endpoint_held,
                    after=deliver_held, **(usage | {"verify": usage_rows_delivered})),  # type: ignore[arg-type]
            HttpRun("s2.full_delivering", "zapbilling full, a webhook endpoint on usage.recorded, delivered meanwhile", 2,
                    durability="full", server_args=("--webhook-allow-private",), setup=usage_endpoint,
                    **(usage | {"verify": usage_rows_with_events})),  # type: ignore[arg-type]
            HttpRun("s2.pg_full", "zapbilling --durability full on PostgreSQL", 2, durability="full", backend="postgres",
                    **usage),  # type: ignore[arg-type]
            HttpRun("s2.pg_normal", "zapbilling --durability normal on PostgreSQL", 2, durability="normal",
                    backend="postgres", **usage),  # type: ignore[arg-type]
            HttpRun("s2.bare_insert", "bare aiohttp+uvloop, INSERT+COMMIT, sync=NORMAL", 2, server="bare",
                    server_args=("--synchronous", "NORMAL"), **usage),  # type: ignore[arg-type]
            HttpRun("s2.bare_pg_insert", "bare aiohttp+asyncpg: key read + autocommitted INSERT, synchronous_commit on", 2,
                    server="bare_pg", backend="postgres", **usage),  # type: ignore[arg-type]
        ], [
            # issue 19's 1.3x, not met yet: --strict fails on it until it is (README, "Against the bare server now")
            Target("recordUsage full vs bare INSERT+COMMIT", "s2.full", "s2.bare_insert", ">=", 1.3),
            Target("recordUsage normal vs bare INSERT+COMMIT", "s2.normal", "s2.bare_insert", ">=", 1.0),
            Target("recordUsage full, a webhook endpoint (the outbox's write) vs none", "s2.full_webhook", "s2.full", ">=", 0.9),
            Target("recordUsage full, its events delivered meanwhile vs none", "s2.full_delivering", "s2.full"),
            Target("recordUsage full: PostgreSQL vs SQLite", "s2.pg_full", "s2.full", ">=", 0.5),
            Target("recordUsage normal: PostgreSQL vs SQLite", "s2.pg_normal", "s2.normal"),
            Target("recordUsage full on PostgreSQL vs bare aiohttp+asyncpg INSERT", "s2.pg_full", "s2.bare_pg_insert"),
            Target("bare aiohttp+asyncpg INSERT vs recordUsage full on SQLite (PostgreSQL's ceiling)", "s2.bare_pg_insert", "s2.full"),
            RETRY_TARGET("recordUsage full", "s2.pg_full"),
        ]),
        Scenario(3, "recordMeterEvents, batches of 100 over msgpack", [
            HttpRun("s3.zap_events", "zapbilling, durability full", 3, unit="events/s", per_request=100,
                    template="empty", script="meter_events.lua", expect="created", setup=create_meter, verify=events_at_least),
            InprocRun("s3.raw_executemany", "raw executemany, 100/transaction, sync=FULL", 3, unit="events/s",
                      per_request=100, args=_executemany_args),
            InprocRun("s3.raw_group_commit", f"raw executemany, {GROUP_COMMIT} x 100/transaction, sync=FULL (group-commit ceiling)",
                      3, unit="events/s", per_request=100 * GROUP_COMMIT,
                      args=lambda bench, tpl: _executemany_args(bench, tpl, GROUP_COMMIT)),
            HttpRun("s3.pg_events", "zapbilling on PostgreSQL, durability full", 3, unit="events/s", per_request=100,
                    template="empty", script="meter_events.lua", expect="created", setup=create_meter, verify=events_at_least,
                    backend="postgres"),
        ], [
            Target("recordMeterEvents vs raw executemany", "s3.zap_events", "s3.raw_executemany", ">=", 0.25),
            Target("recordMeterEvents vs the group-commit ceiling", "s3.zap_events", "s3.raw_group_commit"),
            Target("recordMeterEvents on PostgreSQL, events/s (worst round)", "s3.pg_events", "", ">=", 30_000),
            Target("recordMeterEvents: PostgreSQL vs SQLite", "s3.pg_events", "s3.zap_events"),
            RETRY_TARGET("recordMeterEvents", "s3.pg_events"),
        ]),
        Scenario(4, "cost as work grows (1 connection: p50 latency)", [*s4, *s4_pg], [
            Target(f"getBalance p50: {big} vs {SMALL_ROWS:,} ledger rows", "s4.balance_big", "s4.balance_small", "<=", 1.2, "p50_ms"),
            Target(f"getMeterEventsSummary p50 vs raw SQL, {big} events", "s4.summary", "s4.raw_aggregate", "<=", 1.5, "p50_ms"),
            Target(f"getMeterEventsSeries p50 vs raw SQL, {big} events", "s4.series", "s4.raw_series", "<=", 1.5, "p50_ms"),
            Target(f"invoicePreview p50 vs raw SQL, {big} events", "s4.invoice", "s4.raw_aggregate", "<=", 1.5, "p50_ms"),
            *meters.targets(),
            Target(f"PostgreSQL: getBalance p50, {big} vs {SMALL_ROWS:,} ledger rows", "s4.pg_balance_big",
                   "s4.pg_balance_small", "<=", 1.2, "p50_ms"),
            *[Target(f"{r.label.removesuffix(ON_POSTGRES)} p50: PostgreSQL vs SQLite", r.key, r.key.replace(".pg_", "."),
                     metric="p50_ms") for r in s4_pg],
        ]),
        Scenario(5, "serve --workers 2 vs one worker (scenario 1's ZAP/msgpack read)", s5, [
            Target("getBalance ZAP/msgpack, 2 workers vs 1", "s5.workers2", "s5.workers1", ">=", 1.6),
            Target("2 workers vs scenario 1's worker pinned to its own CPU", "s5.workers2", "s1.zap_msgpack"),
        ], skipped=None if serve_has_workers() else "skipped: serve has no --workers"),
        scenario6(settings),
        scale_out(settings),
    ]


ON_POSTGRES = " on PostgreSQL"


def on_postgres(run: HttpRun) -> HttpRun:
    """A zapbilling run's twin on PostgreSQL: the same requests on the same rows, key s<n>.pg_<name>."""
    number, name = run.key.split(".", 1)
    return dataclasses.replace(run, key=f"{number}.pg_{name}", label=run.label + ON_POSTGRES, backend="postgres")


def RETRY_TARGET(what: str, key: str) -> Target:  # noqa: N802 (reads as the Target it makes)
    """No retry storm: transactions retried after a deadlock or serialisation failure, as % of
    the requests sent (warm-up included), in the worst round. 0.1%: a retry now and then is the
    mechanism working; a storm is every write retried."""
    return Target(f"PostgreSQL transactions retried, {what} (% of requests)", key, "", "<=", 0.1, "retry_pct")


def scale_out(settings: Settings) -> Scenario:
    """1, 2 and 3 `zapbilling serve` processes on one PostgreSQL, each on its own port, the same
    64 connections split evenly over them. On a 2-core machine the servers, PostgreSQL and wrk
    share two CPUs, so more servers cannot raise the rate much: what is judged is the cost, the
    server CPU per request (summed over the servers), which must not grow with their number
    (no contention cost: lock waits, retries, connection churn). Nothing is pinned."""
    zap_read = dict(script="balance.lua", env={"BENCH_STYLE": "zap", "BENCH_CODEC": "msgpack"}, expect="available")
    usage = dict(template="empty", script="usage.lua", expect="transactionId", verify=usage_rows_at_least)
    runs: list[Run] = []
    targets: list[Target] = []
    for kind, label, params in (("read", "getBalance ZAP/msgpack", zap_read),
                                ("write", "recordUsage --durability full", usage)):
        for n in (1, 2, 3):
            runs.append(HttpRun(f"s8.{kind}{n}", f"{label}, {n} server{'s' if n > 1 else ''}", 8, backend="postgres",
                                servers=n, pin=False, **params))  # type: ignore[arg-type]
        targets += [
            Target(f"{label}: server CPU/request, 3 servers vs 1", f"s8.{kind}3", f"s8.{kind}1", "<=", 1.15,
                   "cpu_us_per_unit"),
            Target(f"{label}: PostgreSQL CPU/request, 3 servers vs 1", f"s8.{kind}3", f"s8.{kind}1",
                   metric="pg_cpu_us_per_unit"),
            Target(f"{label}: requests/s, 3 servers vs 1", f"s8.{kind}3", f"s8.{kind}1"),
            # the servers' involuntary context switches per 1,000 requests: what sharing the CPUs
            # costs (a preempted server resumes on cold caches), which CPU time counts and
            # `python -m bench.instructions --pg-servers 1 3` does not
            Target(f"{label}: server preemptions/request, 3 servers vs 1", f"s8.{kind}3", f"s8.{kind}1",
                   metric="preempted_per_1k"),
        ]
    targets.append(RETRY_TARGET("recordUsage, 3 servers", "s8.write3"))
    return Scenario(8, f"PostgreSQL: 1, 2 and 3 servers on one database, {settings.connections} connections split "
                       "over them (nothing pinned; judged by CPU per request)", runs, targets)


# -- the load generator's own ceiling ---------------------------------------------------------

CALIBRATION = {
    "balance.lua (ZAP/msgpack)": ("balance.lua", {"BENCH_STYLE": "zap", "BENCH_CODEC": "msgpack"}),
    "balance.lua (REST GET)": ("balance.lua", {"BENCH_STYLE": "rest", "BENCH_PATH": "/api/v1/billing/balance"}),
    "usage.lua": ("usage.lua", {}),
    "meter_events.lua": ("meter_events.lua", {"BENCH_METER": "mtr_calibration"}),
}
"""Which runs each calibration covers: by Lua script."""


def calibrate(bench: Bench) -> dict[str, dict[str, float]]:
    """wrk with each script against bench/baselines/static.py (no framework, no database): the
    request rate wrk reaches with that script on this machine, and its CPU use doing so."""
    out = {}
    srv = bench.baseline("static", None, "calibration")
    srv.start()
    try:
        for name, (script, env) in CALIBRATION.items():
            busy0, t0 = busy_cpu_seconds(), time.monotonic()
            cpu0 = srv.cpu_seconds()
            res = wrk(srv.url + "/", script, env, seconds=max(1, round(bench.s.seconds / 2)), connections=bench.s.connections,
                      threads=bench.s.threads, key="calibration", cpus=bench.load_cpus())
            window = time.monotonic() - t0
            out[name] = {"rate": res.rate, "p50_ms": res.p50_ms, "load_cpu_pct": res.cpu_seconds / window * 100,
                         "server_cpu_pct": (srv.cpu_seconds() - cpu0) / window * 100,
                         "machine_cpu_pct": (busy_cpu_seconds() - busy0) / window * 100, "errors": res.failed}
    finally:
        srv.stop()
    return out


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rate", "p50_ms", "p99_ms", "server_cpu_pct", "load_cpu_pct", "other_cpu_pct", "machine_cpu_pct", "cpu_us_per_unit",
            "pg_cpu_pct", "pg_cpu_us_per_unit", "retry_pct", "preempted_per_1k")
    med: dict[str, Any] = {k: statistics.median(r[k] for r in rounds) for k in keys if all(k in r for r in rounds)}
    med["rss_mb"] = max(r["rss_mb"] for r in rounds)
    med["pss_mb"] = max(r.get("pss_mb", 0.0) for r in rounds)
    med["server_processes"] = max(r.get("server_processes", 1) for r in rounds)
    med["servers"] = max(r.get("servers", 1) for r in rounds)
    if all("retries" in r for r in rounds):
        med["retries"] = sum(r["retries"] for r in rounds)  # every round's, not a median: a storm in one shows
    return med
