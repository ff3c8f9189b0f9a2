"""transport/plain_routes.py: a plain route's match is aiohttp's own, kept after its first
request; every other request (a variable path, a 404 or 405, an Expect header) goes through
aiohttp each time, and the answers are the same either way."""
from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from conftest import make_app
from zapbilling.app import STORE
from zapbilling.config import Config, server_options
from zapbilling.times import system_clock
from zapbilling.transport import plain_routes


class Counting:
    """The runner's own handler (aiohttp's routing), counting the requests it sees."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.paths = inner, []

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.paths.append((request.method, request.path))
        return await self.inner(request)


@pytest.fixture
async def served(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600)
    app = make_app(config)
    server = await aiohttp_server(app, **server_options(config))
    counting = server.runner.server.request_handler = Counting(server.runner.server.request_handler)
    assert plain_routes.install(server.runner)
    _, key = await app[STORE].create_key("acme", "live", "admin", system_clock())
    return server, counting, key


async def test_a_plain_route_resolved_once_then_answered_alike(served, session):
    server, counting, key = served
    url = str(server.make_url("/api/v1/zap"))
    headers = {"Authorization": f"Bearer {key}"}
    answers = []
    for n in range(3):
        async with session.post(url, json={"method": "billing.getBalance", "id": n, "params": {"user": "u", "currency": "usd"}},
                                headers=headers) as r:
            answers.append((r.status, await r.json()))
    assert counting.paths == [("POST", "/api/v1/zap")]  # the second and third took the kept match
    assert [a for a in answers] == [(200, {"id": n, "result": {"user": "u", "currency": "usd", "balance": 0, "holds": 0, "available": 0}})
                                    for n in range(3)]


async def test_the_kept_match_is_the_route_aiohttp_matched(served, session):
    """What aiohttp's _handle leaves on a request (its match: the route, the application, which
    the transport reads for a refusal's route pattern) the short cut leaves too."""
    server, counting, key = served
    seen = []
    handle = server.runner.server.request_handler

    async def recording(request: web.BaseRequest) -> web.StreamResponse:
        response = await handle(request)
        seen.append((request.match_info.route.method, request.match_info.route.resource.canonical, request.app))
        return response

    server.runner.server.request_handler = recording  # connections opened from now on
    url = str(server.make_url("/api/v1/zap"))
    for _ in range(2):
        async with session.post(url, data=b"{", headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as r:
            assert r.status == 400
    assert len(counting.paths) == 1  # the second took the kept match
    assert seen == [("POST", "/api/v1/zap", server.app)] * 2


async def test_variable_paths_refusals_and_expect_go_through_aiohttp_each_time(served, session):
    server, counting, key = served
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        async with session.get(server.make_url("/api/v1/zap"), headers=headers) as r:  # no GET route: /api/v1/{tail}'s answer
            assert r.status == 404
        async with session.get(server.make_url("/nowhere")) as r:
            assert r.status == 404
        async with session.get(server.make_url("/api/v1/billing/holds/h1"), headers=headers) as r:  # a variable path
            assert r.status == 404
    envelope = {"method": "billing.getBalance", "id": 1, "params": {"user": "u", "currency": "usd"}}
    for expect in (None, "100-continue", "100-continue"):  # the first keeps the match; an Expect header passes it by
        async with session.post(server.make_url("/api/v1/zap"), json=envelope, headers=dict(headers, **({"Expect": expect} if expect else {}))) as r:
            assert r.status == 200 and (await r.json())["result"]["balance"] == 0
    assert [p for _, p in counting.paths] == ["/api/v1/zap", "/nowhere", "/api/v1/billing/holds/h1"] * 2 + ["/api/v1/zap"] * 3


async def test_a_route_of_any_method_is_never_kept(served, session):
    """/api/v1 answers every method (its refusal): kept, it would keep a match per method name a
    client sends, without bound where aiohttp's pure-Python parser takes any token as one."""
    server, counting, key = served
    for method in ("GET", "PUT", "GET", "PUT"):
        async with session.request(method, server.make_url("/api/v1"), headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 404
    assert [m for m, _ in counting.paths] == ["GET", "PUT", "GET", "PUT"]


async def test_not_installed_where_a_middleware_or_a_sub_application_could_change_the_match(aiohttp_server):
    @web.middleware
    async def passing(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    async def empty(request: web.Request) -> web.Response:
        return web.Response()

    with_middleware = web.Application(middlewares=[passing])
    with_middleware.router.add_get("/a", empty)
    with_sub_app = web.Application()
    with_sub_app.add_subapp("/sub", web.Application())
    for app in (with_middleware, with_sub_app):
        server = await aiohttp_server(app)
        handler = server.runner.server.request_handler
        assert not plain_routes.install(server.runner)
        assert server.runner.server.request_handler is handler
