"""The ceiling: a bare aiohttp handler on uvloop, no registry, no validation, the key looked up
in a dict, one aiosqlite trip (execute_fetchall) per request, no access log.

    python -m bench.baselines.bare --db PATH --port N --key KEY [--loop uvloop|asyncio]

GET  /api/v1/billing/balance?user=U[&currency=usd]   scenario 1: the indexed balance read,
                                                     answered with getBalance's JSON
POST /api/v1/zap (a ZAP recordUsage envelope, msgpack or JSON)
                                                     scenario 2: one INSERT of the usage row
                                                     and its COMMIT per request (autocommit:
                                                     one aiosqlite trip), synchronous=NORMAL
GET  /healthz
"""
from __future__ import annotations

import aiosqlite
from aiohttp import web

from .aio import arguments, serve, zap_routes
from .common import BALANCE_SQL, balance_answer, bearer, key_id, key_table, usage_answer, usage_row

INSERT_SQL = (
    "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, dedupe_key,"
    " key_id) VALUES (?, ?, ?, ?, 'withdraw', ?, 'api-usage', ?, ?, ?, ?, ?)"
)
DB = web.AppKey("db", aiosqlite.Connection)


def make_app(db_path: str, keys: dict[str, int], synchronous: str, key: str = "") -> web.Application:
    """`key`: the key's id, written on each usage row as zapbilling does."""
    app = web.Application()

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        db = await aiosqlite.connect(db_path, isolation_level=None)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("PRAGMA busy_timeout = 10000")
        app[DB] = db
        yield
        await db.close()

    async def balance(request: web.Request) -> web.Response:
        tenant = keys.get(bearer(request.headers.get("Authorization")))  # type: ignore[arg-type]
        if tenant is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        user = request.query.get("user", "")
        currency = request.query.get("currency", "usd")
        rows = await request.app[DB].execute_fetchall(BALANCE_SQL, (tenant, user, currency))
        return web.json_response(balance_answer(user, currency, rows))

    async def record_usage(request: web.Request) -> web.Response:
        tenant = keys.get(bearer(request.headers.get("Authorization")))  # type: ignore[arg-type]
        if tenant is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.read()
        envelope_id, params, (tx_id, user, currency, amount, notes, metadata, created, dedupe) = \
            usage_row(body, request.content_type)
        await request.app[DB].execute(INSERT_SQL, (
            tx_id, tenant, user, currency, amount, notes, metadata, created, dedupe, key))
        return web.json_response(usage_answer(envelope_id, params, tx_id))

    app.cleanup_ctx.append(lifecycle)
    zap_routes(app, balance, record_usage)
    return app


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--synchronous", default="NORMAL", choices=("NORMAL", "FULL"))
    ap.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    args = ap.parse_args()
    serve(make_app(args.db, key_table(args.db, args.key), args.synchronous, key_id(args.db, args.key)), args.port, args.loop)


if __name__ == "__main__":
    main()
