"""Mounts the console's routes under /console (see the package's docstring).

The console itself (views, templates, sessions, static files) is built at its first request, not
at start-up: its libraries (cryptography for the session cookie, jinja2, iso4217) are ~10 MB of
resident memory in every serving process (measured: a worker 71 -> 62 MB idle), and most servers
answer only the API. The first console request in a process waits for them once (~50 ms on this
machine, in a worker thread, so the loop goes on answering meanwhile), as the first render of each
template already paid its compilation.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiohttp import web

from ...store import Store
from ..admission import Admission
from ..calls import Caller
from . import COOKIE_PATH

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES = (
    ("GET", "", "home"),
    ("GET", "/", "home"),
    ("GET", "/signin", "signin_form"),
    ("POST", "/signin", "signin"),
    ("POST", "/signout", "signout"),
    ("GET", "/accounts", "accounts"),
    ("GET", "/account", "account"),
    ("GET", "/meters", "meters"),
    ("GET", "/webhooks", "webhooks"),
    ("GET", "/events/{id}", "event"),
    ("GET", "/static/{path:.+}", "static"),
)
"""(method, path under /console, handler): the pages behind a sign-in are the ones `build`
wraps in `Console.page`."""

_SIGNED_IN = ("accounts", "account", "meters", "webhooks", "event")


def add_console(app: web.Application, caller: Caller, store: Store, admission: Admission) -> None:
    """Mount the console under /console; its pages meet the API's per-key and shared bounds
    through `admission`."""
    loaded: list[asyncio.Future[dict[str, Handler]]] = []  # the one build, shared by every request

    def build() -> dict[str, Handler]:
        from .render import Pages, Static
        from .session import Sessions
        from .views import Console

        console = Console(caller, store, admission, Sessions(), Pages())
        return {name: console.page(getattr(console, name)) for name in _SIGNED_IN} | {
            "home": console.home, "signin_form": console.signin_form, "signin": console.signin,
            "signout": console.signout, "static": Static().handle}

    def route(name: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not loaded:
                loaded.append(asyncio.ensure_future(asyncio.to_thread(build)))
            handlers = await asyncio.shield(loaded[0])
            return await handlers[name](request)
        return handle

    for method, path, name in ROUTES:
        app.router.add_route(method, COOKIE_PATH + path, route(name))
