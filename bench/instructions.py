"""Instructions per request: the server under callgrind, answering a fixed number of requests.

    python -m bench.instructions [--op getBalance|recordUsage|recordMeterEvents] [--server zapbilling|bare]
                                 [--requests 2048] [--connections 64] [--webhook] [--pg-servers N ...]
                                 [--keep DIR]

Timings on a shared machine move by tens of percent from one run to the next; the instructions
a server executes per request repeat to within 1% whatever else the machine is doing. That
makes this the tool for telling whether a change to the request path helps: run it on both
commits. It counts user-space instructions of every thread of the server (the writer's SQLite
work included), not system calls: a baseline that commits once per request pays for its
writes mostly in the kernel, so compare recordUsage with the bare baseline by the benchmark's
timings, and use this to compare zapbilling with itself.

The server runs under `valgrind --tool=callgrind` with instrumentation off until a warm-up of
256 requests is answered; then `callgrind_control` turns it on for the measured requests only.
getBalance goes over ZAP/msgpack (the bare baseline: its REST GET), recordUsage over ZAP/msgpack
with a new requestId each time, recordMeterEvents as scenario 3 sends it (batches of BATCH events of
one meter, made through the API before the warm-up, users cycling over 100, no idempotency keys);
its figure is also given per event. Needs valgrind (Debian's package). About a minute per run.

--webhook (recordUsage only): the cost of the outbox (issue 21's target: >= 0.9x). Four runs:
plain; `paused`, where the org has one webhook endpoint subscribed to usage.recorded (made through
the API, the server run with --webhook-allow-private) and the server's sender process is stopped
(SIGSTOP) while the requests are counted, as in the benchmark's s2.full_webhook: the write path
alone, nothing dispatched beside it; `held`, the same endpoint but the sender may have no
attempt under way (--webhook-concurrency 0: each request writes its event, the sender dispatches
the events into deliveries and claims none, nothing is sent); and `sent`, the same endpoint
pointing at a receiver in this process (aiohttp on loopback, answering 200 at once) and every
event delivered. The instructions are the serving process's only: `serve` delivers from a process
of its own (zapbilling/sender_process.py), which valgrind does not follow (no --trace-children),
so every endpoint run counts the write path, the event written in the change's transaction;
`held` and `sent` with the sender's transactions on the same file beside it (its commits make
the server's page cache reread what they changed). For the endpoint runs, before instrumentation
goes on and before it goes off the driver waits until the receiver has had every event so far
(`sent`) and SETTLE seconds (every run). Prints the four figures and the ratios against plain.

--pg-servers 1 3 (issue 18's scale-out, judged by cost): zapbilling on PostgreSQL (a cluster the
bench starts, bench/postgres.py), 1 server and then 3 on one database, every server under
callgrind, the 64 connections split evenly over them; the instructions of all the servers summed
per request answered. On 2 CPUs the benchmark's scenario 8 measures CPU time, which also counts
what three servers, PostgreSQL and wrk sharing two CPUs cost each other (preemption, cold
caches); instructions count only the work the code does, which grows with the number of servers
if they contend (retried transactions, lock waits).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import psutil
from aiohttp import web

from .load import ROOT, child_env, copy_db, free_port, zapbilling_cmd
from .scenarios import Bench, Settings

WARMUP = 256
BATCH = 100
"""recordMeterEvents' events per request, as in scenario 3 (bench/lua/meter_events.lua)."""
SETTLE = 1.5
"""Seconds waited after the last delivery before instrumentation flips: the attempt's record
follows the receiver's answer (the sender's idle turns in this wait are counted in both runs)."""


def _request(op: str, server: str, i: int, run: str, meter: str = "") -> tuple[str, str, bytes | None, str | None]:
    """(method, path, body, content type) of request number i."""
    user = f"bench/u{i % 100}"
    if op == "getBalance" and server == "bare":
        return "GET", f"/api/v1/billing/balance?user={user}&currency=usd", None, None
    if op == "getBalance":
        params: dict[str, Any] = {"user": user, "currency": "usd"}
    elif op == "recordMeterEvents":
        params = {"events": [{"meterId": meter, "userId": f"bench/u{(i * BATCH + k) % 100}", "value": k % 10 + 1}
                             for k in range(BATCH)]}
    else:
        params = {"user": user, "amount": 1, "model": "gpt-bench", "totalTokens": 42, "requestId": f"{run}-{i}"}
    body = msgpack.packb({"method": f"billing.{op}", "id": i, "params": params})
    return "POST", "/api/v1/zap", body, "application/msgpack"


class Receiver:
    """A webhook receiver on loopback answering 200 at once; counts the deliveries it had."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        async def receive(request: web.Request) -> web.Response:
            await request.read()
            self.hits += 1
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hooks", receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/hooks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 600
        while self.hits < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"the receiver had {self.hits} of {n} deliveries in 600 s")
            await asyncio.sleep(0.1)


async def _settle(receiver: Receiver | None, n: int) -> None:
    """Wait until every event so far was delivered (with an endpoint), then SETTLE seconds."""
    if receiver is not None:
        await receiver.wait_for(n)
    await asyncio.sleep(SETTLE)


HOOKS = ("plain", "paused", "held", "sent")
"""--webhook's runs: no endpoint; one whose sender is stopped; one whose attempts are held back;
one delivered to (see above)."""


def _senders(pids: list[int]) -> list[psutil.Process]:
    """The webhook sender processes of the servers `pids` (zapbilling/sender_process.py)."""
    found = []
    for pid in pids:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "sender_process" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
    return found


async def _drive(urls: list[str], key: str, op: str, server: str, pids: list[int], requests: int, connections: int,
                 hook: str | None = None) -> int:
    """hook: one of HOOKS (--webhook's runs), or None: no endpoint, no settling. With several
    servers (`urls`, `pids`), connection i talks to server i mod N, and every server's
    instrumentation goes on and off together."""
    url = urls[0]
    run = secrets.token_hex(4)
    counter = 0
    receiver: Receiver | None = None
    meter = ""

    async def worker(session: aiohttp.ClientSession, n: int, base: str) -> None:
        nonlocal counter
        for _ in range(n):
            counter += 1
            method, path, body, ctype = _request(op, server, counter, run, meter)
            headers = {"Authorization": f"Bearer {key}"} | ({"Content-Type": ctype} if ctype else {})
            async with session.request(method, base + path, data=body, headers=headers) as r:
                answer = await r.read()
                if r.status >= 300:
                    raise SystemExit(f"{op}: HTTP {r.status}: {answer[:200]!r}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        deadline = time.monotonic() + 600  # python under valgrind starts slowly
        for base in urls:
            while True:
                try:
                    async with session.get(base + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start under valgrind")
                await asyncio.sleep(0.5)
        try:
            if op == "recordMeterEvents":
                call = msgpack.packb({"method": "billing.createMeter", "id": 0, "params": {"name": "Requests", "eventName": "requests"}})
                async with session.post(url + "/api/v1/zap", data=call, headers={
                        "Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}) as r:
                    if r.status != 200:
                        raise SystemExit(f"createMeter: HTTP {r.status}: {(await r.read())[:200]!r}")
                    meter = msgpack.unpackb(await r.read())["result"]["id"]
            if hook in ("paused", "held", "sent"):
                receiver = Receiver()
                target = await receiver.start()
                call = msgpack.packb({"method": "billing.createWebhookEndpoint", "id": 0,
                                      "params": {"url": target, "events": ["usage.recorded"]}})
                async with session.post(url + "/api/v1/zap", data=call, headers={
                        "Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}) as r:
                    if r.status != 200:
                        raise SystemExit(f"createWebhookEndpoint: HTTP {r.status}: {(await r.read())[:200]!r}")
            per = max(WARMUP // connections, 1)
            await asyncio.gather(*(worker(session, per, urls[i % len(urls)]) for i in range(connections)))
            if hook is not None:
                await _settle(receiver if hook == "sent" else None, counter)
            stopped = _senders(pids) if hook == "paused" else []
            for sender in stopped:
                sender.suspend()
            for pid in pids:
                subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True, capture_output=True)
            per = max(requests // connections, 1)
            await asyncio.gather(*(worker(session, per, urls[i % len(urls)]) for i in range(connections)))
            if hook is not None:
                await _settle(receiver if hook == "sent" else None, counter)
            for pid in pids:
                subprocess.run(["callgrind_control", "--instr=off", str(pid)], check=True, capture_output=True)
            for sender in stopped:
                sender.resume()
            return per * connections
        finally:
            if receiver is not None:
                await receiver.stop()


def measure(op: str, server: str, requests: int, connections: int, hook: str | None = None, pg_servers: int = 0,
            keep: Path | None = None) -> float:
    """pg_servers: 0 for SQLite (one server); N >= 1 for N zapbilling servers on one PostgreSQL
    database, every one under callgrind, their instructions summed over the requests all of them
    answered."""
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind: sudo apt-get install -y valgrind")
    work = Path(tempfile.mkdtemp(prefix="zapbilling-instructions-"))
    bench = Bench(Settings(seconds=1, warmup=1, rounds=1, big_rows=1000, pin=False, workdir=work, log=lambda m: None))
    try:
        name = "balance" if op == "getBalance" else "empty"
        tpl = bench.template(name)
        if pg_servers:
            pg = bench.postgres()
            db: str | Path = pg.fresh(pg.template(name, tpl.path), "instructions")
        else:
            db = copy_db(tpl.path, work / "measured.db")
        ports = [free_port() for _ in range(max(pg_servers, 1))]
        argvs = []
        for port in ports:
            if server == "bare":
                argv = [sys.executable, "-m", "bench.baselines.bare", "--port", str(port), "--db", str(db), "--key", tpl.key]
            else:
                argv = [*zapbilling_cmd(), "serve", "--db", str(db), "--port", str(port)]
                if hook in ("paused", "held", "sent"):
                    argv.append("--webhook-allow-private")
                if hook == "held":
                    argv += ["--webhook-concurrency", "0"]
            argvs.append(argv)
        out = work / "callgrind.out"
        with open(work / "valgrind.log", "wb") as log:
            procs = [subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.{i}", "--instr-atstart=no", *argv],
                cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            ) for i, argv in enumerate(argvs)]
            try:
                answered = asyncio.run(_drive([f"http://127.0.0.1:{port}" for port in ports], tpl.key, op, server,
                                              [p.pid for p in procs], requests, connections, hook))
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=600)
        total = sum(int(line.split()[1]) for f in glob.glob(f"{out}*") for line in open(f, errors="replace")
                    if line.startswith("totals:"))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in glob.glob(f"{out}*"):
                shutil.copy(f, keep / f"{server}-{op}-{Path(f).name}")
        return total / answered
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("getBalance", "recordUsage", "recordMeterEvents"), default="getBalance")
    ap.add_argument("--server", choices=("zapbilling", "bare"), default="zapbilling")
    ap.add_argument("--requests", type=int, default=2048)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--webhook", action="store_true",
                    help="recordUsage: also with one endpoint subscribed to usage.recorded (a local receiver); the ratio")
    ap.add_argument("--pg-servers", type=int, nargs="*", metavar="N",
                    help="zapbilling on PostgreSQL: N servers on one database, each N given (e.g. 1 3); the ratios to the first")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="copy the callgrind output there, for callgrind_annotate (--inclusive=yes shows each layer)")
    args = ap.parse_args()
    if args.pg_servers:
        if args.server != "zapbilling" or args.webhook:
            ap.error("--pg-servers measures zapbilling alone")
        figs = [(n, measure(args.op, args.server, args.requests, args.connections, pg_servers=n)) for n in args.pg_servers]
        first = figs[0][1]
        for n, fig in figs:
            print(f"zapbilling {args.op} on PostgreSQL, {n} server{'s' if n > 1 else ''}: {fig:,.0f} instructions per request"
                  f" (summed over the servers; {fig / first:.2f}x of {figs[0][0]})")
        return
    if args.webhook:
        if args.op != "recordUsage" or args.server != "zapbilling":
            ap.error("--webhook measures zapbilling's recordUsage")
        fig = {hook: measure(args.op, args.server, args.requests, args.connections, hook) for hook in HOOKS}
        print(f"zapbilling recordUsage, instructions per request: {fig['plain']:,.0f} without an endpoint; with one "
              f"subscribed to usage.recorded {fig['paused']:,.0f} with its sender stopped (the write path alone, as the "
              f"benchmark's s2.full_webhook: {fig['plain'] / fig['paused']:.2f}x, target >= 0.9x), {fig['held']:,.0f} "
              f"with the sender dispatching but sending nothing ({fig['plain'] / fig['held']:.2f}x), {fig['sent']:,.0f} "
              f"with every event delivered ({fig['plain'] / fig['sent']:.2f}x)")
        return
    if args.op == "recordMeterEvents" and args.server == "bare":
        ap.error("the bare baseline has no recordMeterEvents")
    per = measure(args.op, args.server, args.requests, args.connections, keep=args.keep)
    each = f" ({per / BATCH:,.0f} per event)" if args.op == "recordMeterEvents" else ""
    print(f"{args.server} {args.op}: {per:,.0f} instructions per request{each}")


if __name__ == "__main__":
    main()
