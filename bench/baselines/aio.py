"""What the aiohttp baselines (bare, bare_pg, jsonrpc) share around their handlers: the command
line they start with, /healthz, the routes of the scenarios they answer, and how they serve
(one process on loopback, no access log, uvloop unless told otherwise), so that they differ
only in what a request does."""
from __future__ import annotations

import argparse
import asyncio
from typing import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The parser of a baseline's command line with the options every one takes (--db, --port,
    --key); the caller adds its own."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    return ap


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def zap_routes(app: web.Application, balance: Handler, record_usage: Handler) -> None:
    """Scenario 1's balance read, scenario 2's recordUsage envelope, and /healthz."""
    app.router.add_get("/api/v1/billing/balance", balance)
    app.router.add_post("/api/v1/zap", record_usage)
    app.router.add_get("/healthz", health)


def serve(app: web.Application, port: int, loop: str = "uvloop") -> None:
    """Serve `app` on 127.0.0.1:`port` until stopped, on a new event loop of the kind named."""
    event_loop: asyncio.AbstractEventLoop
    if loop == "uvloop":
        import uvloop

        event_loop = uvloop.new_event_loop()
    else:
        event_loop = asyncio.new_event_loop()
    asyncio.set_event_loop(event_loop)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=event_loop)
