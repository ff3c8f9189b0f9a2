"""The ceiling on PostgreSQL: bare aiohttp on uvloop over asyncpg, no registry, no validation, no
access log, connections taken from a list (the pool zapbilling uses, store/postgres/pool.py, of
the same size).

    python -m bench.baselines.bare_pg --db URL --port N --key KEY [--keys database|memory]
                                      [--synchronous on|off]

GET  /api/v1/billing/balance?user=U[&currency=usd]   scenario 1: the indexed balance read
POST /api/v1/zap (a ZAP recordUsage envelope)        scenario 2: one INSERT of the usage row,
                                                     autocommitted (one round trip)
GET  /healthz

`--keys database` reads the key by its digest on every request, as zapbilling's PostgreSQL store
must (a key revoked on one server is refused by every server from the next request on), so a
request costs two round trips; `--keys memory` looks it up in a dict filled at start-up, one
round trip. The pair shows what the round trips cost on their own, and how far from that
zapbilling is: scenario 1 and 2 on PostgreSQL against these, not only against SQLite.
"""
from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
from aiohttp import web

from .aio import arguments, serve, zap_routes
from .common import balance_answer, bearer, usage_answer, usage_row

POOL_SIZE = 10
"""zapbilling's (store/postgres/connection.py)."""
KEY_SQL = ("SELECT t.id, k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant"
           " WHERE k.hash = $1 AND k.revoked_at IS NULL")
BALANCE_SQL = "SELECT balance FROM balances WHERE tenant = $1 AND user_id = $2 AND currency = $3"
INSERT_SQL = (
    "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, dedupe_key,"
    " key_id) VALUES ($1, $2, $3, $4, 'withdraw', $5, 'api-usage', $6, $7, $8, $9, $10)"
)


class Connections:
    """An idle list and a queue of waiters: the least a pool can be."""

    def __init__(self, conns: list[asyncpg.Connection]):
        self.idle = conns
        self.waiters: list[asyncio.Future[asyncpg.Connection]] = []

    async def take(self) -> asyncpg.Connection:
        if self.idle:
            return self.idle.pop()
        waiter: asyncio.Future[asyncpg.Connection] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def give(self, conn: asyncpg.Connection) -> None:
        if self.waiters:
            self.waiters.pop(0).set_result(conn)
        else:
            self.idle.append(conn)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        conn = await self.take()
        try:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            self.give(conn)


POOL = web.AppKey("pool", Connections)


def make_app(url: str, key: str, keys_in: str, synchronous: str) -> web.Application:
    app = web.Application()
    digest = hashlib.sha256(key.encode()).hexdigest()
    remembered: dict[str, tuple[int, str]] = {}

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        conns = [await asyncpg.connect(url, server_settings={"jit": "off", "synchronous_commit": synchronous})
                 for _ in range(POOL_SIZE)]
        found = await conns[0].fetch(KEY_SQL, digest)
        if not found:
            raise SystemExit(f"key not found in {url}")
        remembered[key] = (found[0][0], found[0][1])
        app[POOL] = Connections(conns)
        yield
        for conn in conns:
            await conn.close()

    async def principal(request: web.Request) -> tuple[int, str] | None:
        secret = bearer(request.headers.get("Authorization"))
        if secret is None:
            return None
        if keys_in == "memory":
            return remembered.get(secret)
        rows = await request.app[POOL].fetch(KEY_SQL, hashlib.sha256(secret.encode()).hexdigest())
        return (rows[0][0], rows[0][1]) if rows else None

    async def balance(request: web.Request) -> web.Response:
        who = await principal(request)
        if who is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        user = request.query.get("user", "")
        currency = request.query.get("currency", "usd")
        rows = await request.app[POOL].fetch(BALANCE_SQL, who[0], user, currency)
        return web.json_response(balance_answer(user, currency, rows))

    async def record_usage(request: web.Request) -> web.Response:
        body = await request.read()  # first, as zapbilling does: wrk's connections close at the end of a run
        who = await principal(request)
        if who is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        envelope_id, params, (tx_id, user, currency, amount, notes, metadata, created, dedupe) = \
            usage_row(body, request.content_type)
        await request.app[POOL].fetch(INSERT_SQL, tx_id, who[0], user, currency, amount, notes, metadata, created,
                                      dedupe, who[1])
        return web.json_response(usage_answer(envelope_id, params, tx_id))

    app.cleanup_ctx.append(lifecycle)
    zap_routes(app, balance, record_usage)
    return app


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--keys", default="database", choices=("database", "memory"))
    ap.add_argument("--synchronous", default="on", choices=("on", "off"))
    args = ap.parse_args()
    serve(make_app(args.db, args.key, args.keys, args.synchronous), args.port)


if __name__ == "__main__":
    main()
