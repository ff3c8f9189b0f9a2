"""Deliveries per second: how fast one `zapbilling serve` drains its outbox to local receivers.

    python -m bench.webhooks [--events 5000] [--endpoints 1] [--workers 1] [--pg URL]

The outbox is filled first (EVENTS events of one org, written with SQL while no server runs,
each to go to every one of ENDPOINTS endpoints subscribed to `*`), then the server starts with
`--webhook-allow-private` and its background sender dispatches, signs, POSTs to a receiver in
this process (aiohttp on loopback, answering 200 at once) and records every attempt. The figure
is deliveries recorded as succeeded per second, from the server's readiness to the last record:
the sender's whole path (dispatch, lease, sign, POST, the attempt's own transaction), not the
receiver's. On SQLite (a file in a temporary folder) unless --pg names a PostgreSQL server
(superuser URL), where a scratch database of its own is made and dropped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from procs import ServerProcess, create_key, free_port  # noqa: E402

from zapbilling.store.ids import new_id  # noqa: E402

SECRET = "whsec_" + "A" * 32


class ThreadReceiver:
    """A webhook receiver on loopback in a thread of its own (its own event loop), answering 200
    at once and counting what it had: for benchmark runs driven from synchronous code (the
    scenarios' recordUsage with an endpoint). `stop` ends it."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="bench-webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> "ThreadReceiver":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the webhook receiver did not start")
        return self

    def _serve(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            await request.read()
            self.hits += 1
            return web.Response(status=200)

        async def up() -> None:
            app = web.Application()
            app.router.add_post("/hooks", receive)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(up())
        self._ready.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


async def sql_many(db: str, query: str, rows: list[tuple[Any, ...]]) -> None:
    if db.startswith("postgresql://"):
        conn = await asyncpg.connect(db)
        try:
            n = query.count("?")
            for i in range(n):
                query = query.replace("?", f"${i + 1}", 1)
            await conn.executemany(query, rows)
        finally:
            await conn.close()
        return
    with sqlite3.connect(db) as conn:
        conn.executemany(query, rows)


async def sql(db: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    if db.startswith("postgresql://"):
        conn = await asyncpg.connect(db)
        try:
            for i in range(query.count("?")):
                query = query.replace("?", f"${i + 1}", 1)
            return [tuple(r) for r in await conn.fetch(query, *params)]
        finally:
            await conn.close()
    with sqlite3.connect(db) as conn:
        return conn.execute(query, params).fetchall()


async def run(db: str, folder: Path, events: int, endpoints: int, workers: int) -> dict[str, Any]:
    hits = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal hits
        await request.read()
        hits += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/{n}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        create_key(db, "bench", "live")  # creates and migrates the database
        tenant = (await sql(db, "SELECT id FROM tenants WHERE org = ? AND mode = ?", "bench", "live"))[0][0]
        now = int(time.time() * 1e6)
        await sql_many(db, "INSERT INTO webhook_endpoints (id, tenant, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       [(new_id("we"), tenant, f"http://127.0.0.1:{port}/hooks/{i}", '["*"]', SECRET, now) for i in range(endpoints)])
        data = json.dumps({"id": "txn_bench", "type": "deposit", "amount": 1000, "currency": "usd"})
        await sql_many(db, "INSERT INTO events (id, tenant, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
                       [(new_id("evt"), tenant, "deposit.created", data, now) for _ in range(events)])
        total = events * endpoints
        server = ServerProcess(db, folder, workers=workers, args=("--webhook-allow-private",))
        await server.start_ready()
        try:
            started = time.perf_counter()
            while True:
                done = (await sql(db, "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'"))[0][0]
                if done >= total:
                    break
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"only {done} of {total} deliveries succeeded in 600 s:\n{server.log()[-2000:]}")
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - started
        finally:
            server.stop()
        failed = (await sql(db, "SELECT COUNT(*) FROM delivery_attempts WHERE status <> 'succeeded'"))[0][0]
        return {"deliveries": total, "seconds": round(seconds, 3), "per_second": round(total / seconds),
                "receiver_hits": hits, "failed_attempts": failed}
    finally:
        await runner.cleanup()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--endpoints", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pg", default="", help="a PostgreSQL superuser URL: bench there (a scratch database) instead of SQLite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zb-bench-webhooks-") as folder:
        if args.pg:
            name = f"zb_bench_webhooks_{new_id('x').split('_')[-1].lower()}"
            admin = await asyncpg.connect(args.pg)
            await admin.execute(f'CREATE DATABASE "{name}"')
            db = args.pg.rsplit("/", 1)[0] + "/" + name
            try:
                result = await run(db, Path(folder), args.events, args.endpoints, args.workers)
            finally:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await admin.close()
        else:
            result = await run(str(Path(folder) / "bench.db"), Path(folder), args.events, args.endpoints, args.workers)
    backend = "postgres" if args.pg else "sqlite"
    print(f"webhooks {backend}: {result['deliveries']} deliveries to {args.endpoints} endpoint(s) in {result['seconds']} s: "
          f"{result['per_second']} deliveries/s (receiver hits {result['receiver_hits']}, failed attempts {result['failed_attempts']})")


if __name__ == "__main__":
    asyncio.run(main())
