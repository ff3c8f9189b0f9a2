"""`GET /metrics` of a real `zapbilling serve --workers 2`: one view over both workers, counters
that move by exactly what the test did, no org, user or key in any label, and a key required.

The exposition is read by an independent parser: `parse-prometheus-text-format` (npm, pinned in
tests/node; not prometheus_client's own). That parser folds a labelled histogram's series
together, so the histogram families are handed to it without their HELP and TYPE lines: each
of their series (`_bucket`, `_sum`, `_count`) is then read as a plain sample with its labels.

Every request goes on a new connection, so the kernel (SO_REUSEPORT) spreads them over the
workers; which worker answered each is read from the kernel's socket table (psutil), and the
test insists that both did. A worker's counts reach the shared view at its next flush (at
most half a second later): the test waits until the request counts have reached what it sent,
which the same flush carries with everything those requests wrote, and then asserts exact
values.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import ClientSession, TCPConnector

import pg
from conftest import ok
from procs import ServerProcess, create_key, free_port
from zapbilling.app import STORE, sweep_once
from zapbilling.metrics import directory
from zapbilling.store.postgres.connection import POOL_SIZE

NODE = Path(__file__).parent / "node"
PARSER = NODE / "node_modules" / "parse-prometheus-text-format"
ORG = "metricsorg-7c1f"
USERS = [f"metricsuser-{i}-a9" for i in range(3)]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def require(condition: bool, why: str) -> None:
    if not condition:
        pytest.fail(why)  # the test tools are part of the test command: missing is a failure, not a skip


def parse(text: str) -> Samples:
    """(name, labels) -> value, by the independent parser (see the module docstring)."""
    require(shutil.which("node") is not None, "node is not installed")
    require(PARSER.exists(), "tests/node is not installed (npm ci --prefix tests/node)")
    histograms = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.split()[3] == "histogram"}
    kept = "\n".join(line for line in text.splitlines()
                     if not (line.startswith("# ") and len(line.split()) > 2 and line.split()[2] in histograms)) + "\n"
    script = ("const parse = require(process.argv[1]); let s = '';"
              "process.stdin.on('data', d => s += d).on('end', () => console.log(JSON.stringify(parse(s))));")
    r = subprocess.run(["node", "-e", script, str(PARSER)], input=kept, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: Samples = {}
    for family in json.loads(r.stdout):
        for metric in family["metrics"]:
            key = (family["name"], frozenset((metric.get("labels") or {}).items()))
            assert key not in out, f"series twice: {key}"
            out[key] = float(metric["value"])
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class Client:
    """Every request on a connection of its own, noting which server process answered it (the one
    holding the connection's other end once it has answered)."""

    def __init__(self, server: ServerProcess, key: str | None):
        self.server, self.key = server, key
        self.pids: set[int] = set()

    async def request(self, verb: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        h |= headers or {}
        port = free_port()  # the client's own port, to find the connection by
        async with ClientSession(connector=TCPConnector(local_addr=("127.0.0.1", port))) as s:
            async with s.request(verb, self.server.base + path, json=body, headers=h) as r:
                text = await r.text()
            # answered, and kept alive (pooled) until the session closes: the worker holds it now
            self.pids.add(_serving_pid(self.server.port, port))
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    async def zap(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.request("POST", "/api/v1/zap", {"method": method, "id": 1, "params": params})
        assert status == 200, answer
        assert "error" not in answer, answer
        return answer["result"]  # type: ignore[no-any-return]


def _serving_pid(server_port: int, client_port: int) -> int:
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.raddr and c.laddr.port == server_port and c.raddr.port == client_port and c.pid:
            return c.pid
    raise AssertionError(f"no server process holds the connection from port {client_port}")


async def scrape(server: ServerProcess, key: str) -> tuple[str, Samples]:
    async with ClientSession() as s:
        async with s.get(server.base + "/metrics", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await r.text()
    return text, parse(text)


def worker_pids(server: ServerProcess) -> set[int]:
    return {c.pid for c in psutil.Process(server.pid).children() if "worker_main" in " ".join(c.cmdline())}


@pytest.fixture
async def two_workers(db_path, tmp_path):
    admin = create_key(db_path, ORG, "live")
    reader = create_key(db_path, ORG, "live", scope="read")
    server = ServerProcess(db_path, tmp_path, workers=2)
    await server.start_ready()
    for _ in range(600):  # /healthz answered by one worker: wait until both serve
        if server.log().count("serving ") == 2:
            break
        await asyncio.sleep(0.05)
    assert len(worker_pids(server)) == 2
    try:
        yield server, admin, reader
    finally:
        workers = [psutil.Process(p) for p in worker_pids(server)] if server.running() else []
        server.stop()
        for w in workers:  # a worker left behind by a failed test
            if w.is_running():
                w.kill()


async def wait_for_requests(server: ServerProcess, key: str, before: Samples, sent: dict[tuple[str, str], int]) -> tuple[str, Samples]:
    """Scrape until every worker has flushed the requests sent: (method, outcome) -> how many."""
    deadline = time.monotonic() + 30
    while True:
        text, now = await scrape(server, key)
        if all(total(now, "zapbilling_requests_total", method=m, outcome=o) - total(before, "zapbilling_requests_total", method=m, outcome=o) >= n
               for (m, o), n in sent.items()):
            return text, now
        assert time.monotonic() < deadline, "the workers' counts did not arrive within 30 s"
        await asyncio.sleep(0.1)


async def test_metrics_count_exactly_what_two_workers_did(two_workers):
    server, admin, reader = two_workers
    api = Client(server, admin)
    _, before = await scrape(server, reader)  # a read key may scrape too

    # n deposits, spread over both workers, on two currencies
    amounts = [101 + 7 * i for i in range(16)]
    for i, amount in enumerate(amounts):
        currency = "usd" if i % 4 else "eur"
        status, body = await api.request("POST", "/api/v1/billing/deposit",
                                          {"user": USERS[i % 3], "amount": amount, "currency": currency})
        assert status == 201, body
    usd = sum(a for i, a in enumerate(amounts) if i % 4)
    eur = sum(a for i, a in enumerate(amounts) if not i % 4)
    # a keyed deposit and its replay: the money moves once
    keyed = {"user": USERS[0], "amount": 999, "currency": "usd"}
    idem = {"Idempotency-Key": f"metrics-{uuid.uuid4().hex}"}
    first = await api.request("POST", "/api/v1/billing/deposit", keyed, idem)
    replay = await api.request("POST", "/api/v1/billing/deposit", keyed, idem)
    assert first[0] == replay[0] == 201 and first[1] == replay[1]
    # usage: a charge, and the same requestId again (deduplicated: charged once)
    usage = {"user": USERS[1], "amount": 37, "currency": "usd", "model": "m", "totalTokens": 1, "requestId": uuid.uuid4().hex}
    charged = [await api.zap("billing.recordUsage", usage) for _ in range(2)]
    assert charged[0]["transactionId"] == charged[1]["transactionId"]
    # a refused deposit (amount must be positive) moves nothing
    status, body = await api.request("POST", "/api/v1/billing/deposit", {"user": USERS[2], "amount": -5, "currency": "usd"})
    assert status == 400, body

    # meter events: 5 sent with 2 repeats of an earlier key in the same batch, then 3 sent again
    meter = await api.zap("billing.createMeter", {"name": "tokens", "eventName": "tokens"})
    keys = [f"ev-{uuid.uuid4().hex}" for _ in range(3)]
    batch = [{"meterId": meter["id"], "userId": USERS[0], "value": 1, "idempotency": k} for k in (*keys, keys[0], keys[1])]
    result = await api.zap("billing.recordMeterEvents", {"events": batch})
    assert [e["status"] for e in result["events"]] == ["created"] * 3 + ["duplicate"] * 2
    result = await api.zap("billing.recordMeterEvents", {"events": batch[:3]})
    assert [e["status"] for e in result["events"]] == ["duplicate"] * 3

    # errors: a hold that does not exist (not_found), a call without a key (unauthorized)
    status, body = await api.request("GET", "/api/v1/billing/holds/hold_doesnotexist")
    assert status == 404, body
    status, _ = await Client(server, None).request("GET", f"/api/v1/billing/balance?user={USERS[0]}&currency=usd")
    assert status == 401

    # more deposits until both workers have answered some (the kernel spreads new connections)
    extra = 0
    for _ in range(200):
        if api.pids == worker_pids(server):
            break
        status, body = await api.request("POST", "/api/v1/billing/deposit", {"user": USERS[2], "amount": 1, "currency": "usd"})
        assert status == 201, body
        extra += 1
    assert api.pids == worker_pids(server), "every request went to one worker"

    sent = {("billing.deposit", "ok"): len(amounts) + 2 + extra, ("billing.deposit", "invalid_params"): 1,
            ("billing.recordUsage", "ok"): 2, ("billing.createMeter", "ok"): 1, ("billing.recordMeterEvents", "ok"): 2,
            ("billing.getHold", "not_found"): 1, ("", "unauthorized"): 1}
    text, after = await wait_for_requests(server, reader, before, sent)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("zapbilling_money_cents_total", currency="usd", kind="deposit") == usd + 999 + extra
    assert delta("zapbilling_money_cents_total", currency="eur", kind="deposit") == eur
    assert delta("zapbilling_money_cents_total", kind="usage") == 37
    assert delta("zapbilling_money_cents_total", kind="refund") == delta("zapbilling_money_cents_total", kind="capture") == 0
    assert delta("zapbilling_money_cents_total", kind="forfeit") == 0
    assert delta("zapbilling_meter_events_total", outcome="created") == 3
    assert delta("zapbilling_meter_events_total", outcome="duplicate") == 5
    for (method, outcome), n in sent.items():
        assert delta("zapbilling_requests_total", method=method, outcome=outcome) == n, (method, outcome)
        assert delta("zapbilling_request_duration_seconds_count", method=method) >= n
    assert delta("zapbilling_requests_total", method="billing.deposit", transport="rest") == len(amounts) + 3 + extra
    assert delta("zapbilling_requests_total", method="billing.recordUsage", transport="zap") == 2
    # the duration histogram counts each request once, under the same method and transport
    assert delta("zapbilling_request_duration_seconds_count", method="billing.deposit", transport="rest") == len(amounts) + 3 + extra
    assert value(after, "zapbilling_request_duration_seconds_bucket", method="billing.deposit", transport="rest", le="+Inf") \
        == total(after, "zapbilling_request_duration_seconds_count", method="billing.deposit", transport="rest")
    # every write committed: the commits' batches hold them all (two per deposit at most: none is lost)
    writes = len(amounts) + 1 + extra + 1 + 1 + 2  # deposits, the keyed one, usage, meter, two event batches
    assert delta("zapbilling_db_commit_batch_size_sum") >= writes
    assert delta("zapbilling_db_commit_seconds_count") >= 1
    assert value(after, "zapbilling_webhook_deliveries_total", outcome="ok") == 0
    for name in ("zapbilling_inflight_requests", "zapbilling_db_writer_queue_depth", "zapbilling_db_pool_size",
                 "zapbilling_db_pool_connections_open", "zapbilling_db_pool_connections_in_use", "zapbilling_db_pool_waits_total"):
        assert (name, frozenset()) in after, name
    assert value(after, "zapbilling_inflight_requests") >= 1  # the scrape itself
    pool = POOL_SIZE if pg.backend() == "postgres" else 0
    assert value(after, "zapbilling_db_pool_size") == 2 * pool
    if pg.backend() == "postgres":
        assert 1 <= value(after, "zapbilling_db_pool_connections_open") <= 2 * pool

    # no label holds an org, a user or a key
    for secret in (ORG, *USERS, admin, reader, admin[:12], reader[:12]):
        assert secret not in text
    labels = {k for (_, ls) in after for k, _ in ls}
    assert labels <= {"method", "transport", "outcome", "le", "currency", "kind"}


async def test_metrics_needs_a_key(two_workers):
    server, _, _ = two_workers
    async with ClientSession() as s:
        async with s.get(server.base + "/metrics") as r:
            assert r.status == 401
            assert "zapbilling_" not in await r.text()
        async with s.get(server.base + "/metrics", headers={"Authorization": "Bearer zb_live_notakey"}) as r:
            assert r.status == 401


async def scrape_app(api) -> Samples:
    """/metrics of the test's own server (aiohttp's test server, in this process)."""
    async with api.session.get(api.base + "/metrics", headers=api.headers) as r:
        assert r.status == 200
        return parse(await r.text())


CUR = "nzd"
"""A currency no other test uses (see below)."""


async def test_every_kind_of_money_is_counted_once_when_it_commits(server, api, clock):
    """Refunds, captures and both ways credit is forfeited, on the server of this process (its
    clock can be moved on; its values are this process's, which the scrape flushes first). In a
    currency of its own: the counters are this whole test process's, and other tests deposit
    amounts near the int64 bound, past which a float64 counter no longer moves by a few cents."""
    user, other = "metricskinds/a", "metricskinds/b"
    before = await scrape_app(api)

    def delta(after: Samples, kind: str) -> float:
        return value(after, "zapbilling_money_cents_total", currency=CUR, kind=kind) - \
            value(before, "zapbilling_money_cents_total", currency=CUR, kind=kind)

    await ok(api, "deposit", {"user": user, "amount": 1000, "currency": CUR})
    charge = await ok(api, "recordUsage", {"user": user, "amount": 300, "model": "m", "totalTokens": 1, "currency": CUR})
    await ok(api, "refund", {"user": user, "amount": 120, "originalTransactionId": charge["transactionId"], "currency": CUR})
    refused = await api.call("refund", {"user": user, "amount": 500, "originalTransactionId": charge["transactionId"], "currency": CUR})
    assert not refused.ok  # more than is left to refund: moves nothing
    hold = await ok(api, "createHold", {"user": user, "amount": 200, "currency": CUR})
    await ok(api, "captureHold", {"id": hold["holdId"], "amount": 150, "model": "m"})
    replayed = await api.call("captureHold", {"id": hold["holdId"], "amount": 150, "model": "m"})
    assert not replayed.ok  # captured already
    # expiring credit: one forfeited by the account's next write, one by the sweep
    await ok(api, "deposit", {"user": user, "amount": 70, "expiresIn": 1, "currency": CUR})
    await ok(api, "deposit", {"user": other, "amount": 45, "expiresIn": 1, "currency": CUR})
    clock.advance(days=2)
    await ok(api, "recordUsage", {"user": user, "amount": 5, "model": "m", "totalTokens": 1, "currency": CUR})
    await sweep_once(server.app[STORE], clock())

    after = await scrape_app(api)
    assert delta(after, "deposit") == 1000 + 70 + 45
    assert delta(after, "usage") == 300 + 5
    assert delta(after, "refund") == 120
    assert delta(after, "capture") == 150
    assert delta(after, "forfeit") == 70 + 45
    assert (await scrape_app(api)) == after  # nothing moved since: a second scrape adds nothing


@pytest.mark.sqlite_only("no database involved: the directory alone")
def test_the_metrics_directory_is_private_emptied_and_left_by_no_server(tmp_path, monkeypatch):
    """`serve`'s directory (metrics/directory.py): its own, empty, removed at exit; one left by a
    server killed outright is removed by the next start; an operator's is emptied and kept."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(directory.ENV, raising=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f"{directory.PREFIX}{gone}-abcd1234"
    living = tmp_path / f"{directory.PREFIX}{os.getpid()}-efgh5678"
    for d in (orphan, living):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"x")
    done = directory.prepare()
    made = Path(os.environ[directory.ENV])
    assert made.parent == tmp_path and made.name.startswith(f"{directory.PREFIX}{os.getpid()}-") and not any(made.iterdir())
    assert not orphan.exists() and living.exists()
    done()
    assert not made.exists() and directory.ENV not in os.environ

    given = tmp_path / "given"
    given.mkdir()
    (given / "gauge_livesum_7.db").write_bytes(b"x")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv(directory.ENV, str(given))
    directory.prepare()()
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]
