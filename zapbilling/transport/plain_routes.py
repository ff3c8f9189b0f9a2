"""The server's request handler, with aiohttp's routing skipped for a route already matched
once whose path has no variable part: POST /api/v1/zap above all.

aiohttp works out each request's route afresh: it walks the router's index, builds a match for
the request, stacks the application on it and freezes it, looks for an `Expect` header and
then calls the route's handler (`Application._handle`). For a path without variables (a
`PlainResource`) the answer depends on the method and the path alone, so the first request of
each (method, path) goes through aiohttp as usual and its frozen match is kept; later ones take
it from a dict and go straight to the handler. Measured by callgrind (`bench.instructions`,
getBalance over ZAP/msgpack): 316.5k -> 304.4k instructions per request (-3.8%); cProfile
counted 15 Python calls a request in the routing (resolve, the match's construction, add_app,
freeze, the handler's look-up, ...).

What aiohttp decides is unchanged: only its own matches are kept, never one worked out here, and
only where nothing but the method and the path can change them: a plain resource's route,
reached without middlewares (none are used; a middleware added later turns this off rather than
being skipped) and without sub-applications, whose matches can depend on the Host header (an
application with any resource other than plain and dynamic ones is served by aiohttp alone).
A request with an `Expect` header goes through aiohttp, which answers it. Only a route of one
method is kept (a route of any method, as /api/v1's refusal, would be kept once per method name
sent, and aiohttp's pure-Python parser takes any token as one): the kept matches are as many as
the routes, at most.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import DynamicResource, PlainResource, UrlMappingMatchInfo

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(runner: web.AppRunner) -> bool:
    """Put the short cut in front of the runner's handler, once `runner.setup()` has run (the
    server's connections take the handler when they open). False, and nothing changed, where
    the application's routes could depend on more than the method and the path."""
    app, server = runner.app, runner.server
    assert server is not None, "install after runner.setup()"
    if app.middlewares or not all(type(r) in (PlainResource, DynamicResource) for r in app.router.resources()):
        return False
    server.request_handler = _short_cut(server.request_handler)
    return True


def _short_cut(resolve: Handler) -> Handler:
    kept: dict[tuple[str, str], tuple[UrlMappingMatchInfo, RouteHandler]] = {}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        found = kept.get((request.method, request.rel_url.path_safe))
        if found is None or hdrs.EXPECT in request.headers:
            response = await resolve(request)
            match = request.match_info if isinstance(request, web.Request) else None
            if (match is not None and type(match) is UrlMappingMatchInfo and type(match.route.resource) is PlainResource
                    and match.route.method != hdrs.METH_ANY):  # a route of any method would keep one match per method sent
                kept[(request.method, request.rel_url.path_safe)] = match, match.handler
            return response
        match, handler = found
        request._match_info = match  # type: ignore[attr-defined]  # what aiohttp's _handle sets
        return await handler(request)  # type: ignore[arg-type]  # the application's request factory makes Requests

    return handle
