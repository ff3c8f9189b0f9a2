"""Mounts the console's routes under /console (see the package's docstring)."""
from __future__ import annotations

from aiohttp import web

from ...store import Store
from ..admission import Admission
from ..calls import Caller
from .render import Pages, Static
from .session import COOKIE_PATH, Sessions
from .views import Console


def add_console(app: web.Application, caller: Caller, store: Store, admission: Admission) -> None:
    """Mount the console under /console (templates compiled and static files read now, once);
    its pages meet the API's per-key and shared bounds through `admission`."""
    console = Console(caller, store, admission, Sessions(), Pages())
    static = Static()
    page = console.page
    router = app.router
    router.add_get(COOKIE_PATH, console.home)
    router.add_get(COOKIE_PATH + "/", console.home)
    router.add_get(COOKIE_PATH + "/signin", console.signin_form)
    router.add_post(COOKIE_PATH + "/signin", console.signin)
    router.add_post(COOKIE_PATH + "/signout", console.signout)
    router.add_get(COOKIE_PATH + "/accounts", page(console.accounts))
    router.add_get(COOKIE_PATH + "/account", page(console.account))
    router.add_get(COOKIE_PATH + "/meters", page(console.meters))
    router.add_get(COOKIE_PATH + "/webhooks", page(console.webhooks))
    router.add_get(COOKIE_PATH + "/events/{id}", page(console.event))
    router.add_get(COOKIE_PATH + "/static/{path:.+}", static.handle)
