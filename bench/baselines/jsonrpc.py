"""Peer baseline: the getBalance read as a JSON-RPC 2.0 method of jsonrpcserver, mounted in
an aiohttp handler on uvloop (jsonrpcserver's documented aiohttp setup), one process, no access
log: the key checked in the handler (one dict lookup) and passed as the dispatch context, one
aiosqlite execute_fetchall.

    python -m bench.baselines.jsonrpc --db PATH --port N --key KEY

POST /api/v1/jsonrpc {"jsonrpc": "2.0", "method": "getBalance", "params": {"user": U}, "id": 1}
"""
from __future__ import annotations

import aiosqlite
from aiohttp import web
from jsonrpcserver import Result, Success, async_dispatch, method

from .aio import arguments, health, serve
from .common import BALANCE_SQL, balance_answer, bearer, key_table

_db: aiosqlite.Connection | None = None


@method(name="getBalance")
async def get_balance(tenant: int, user: str, currency: str = "usd") -> Result:
    assert _db is not None
    rows = await _db.execute_fetchall(BALANCE_SQL, (tenant, user, currency))
    return Success(balance_answer(user, currency, rows))


def make_app(db_path: str, keys: dict[str, int]) -> web.Application:
    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        global _db
        _db = await aiosqlite.connect(db_path, isolation_level=None)
        await _db.execute("PRAGMA busy_timeout = 10000")
        yield
        await _db.close()

    async def handle(request: web.Request) -> web.Response:
        tenant = keys.get(bearer(request.headers.get("Authorization")))  # type: ignore[arg-type]
        if tenant is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        response = await async_dispatch(await request.text(), context=tenant)
        return web.Response(text=response, content_type="application/json") if response else web.Response(status=204)

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/v1/jsonrpc", handle)
    app.router.add_get("/healthz", health)
    return app


def main() -> None:
    args = arguments(__doc__).parse_args()
    serve(make_app(args.db, key_table(args.db, args.key)), args.port)


if __name__ == "__main__":
    main()
