"""aiohttp plumbing shared by the ZAP endpoint and the REST routes."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web, web_response
from multidict import CIMultiDict

from ..errors import ApiError, InvalidRequest, PayloadTooLarge, RateLimited
from ..limits import Limits
from .codec import Codec

log = logging.getLogger("zapbilling")
BODY_LIMITS = web.AppKey("body_limits", Limits)
"""The deployment's limits, of which read_body needs body_bytes and body_timeout."""
SERVER = "zapbilling"
"""The `Server` header of every answer: no Python or aiohttp version for a scanner to match."""


def hide_server_version() -> None:
    """aiohttp writes `Server: Python/3.x aiohttp/3.x` unless a response sets its own: it
    reads the module constant web_response.SERVER_SOFTWARE for every answer, its own error
    answers (a malformed request line, say) included, which no route or middleware sees.
    Replacing that constant once covers them all at no cost per request (setting the header
    on each response instead would miss aiohttp's own answers). Fails loudly if an aiohttp
    release moves it, rather than quietly sending the version again."""
    if not isinstance(getattr(web_response, "SERVER_SOFTWARE", None), str):
        raise RuntimeError("aiohttp.web_response.SERVER_SOFTWARE is gone: find another way to set the Server header")
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]


async def read_body(request: web.Request, key_id: str = "") -> bytes:
    """The raw body, refused (413) before decoding when over the limit. The application's
    client_max_size is the same limit, so a body without a Content-Length is capped too.
    A body abandoned on the way (its deadline passed, or the client hung up) is logged in one
    line, without a traceback: it is the client's doing, and a stalling client must not be
    able to fill the log with 25 lines per socket."""
    body = body_at_hand(request, key_id)
    if body is not None:
        return body
    limits = request.app[BODY_LIMITS]
    if request.content_length is not None and request.content_length > limits.body_bytes:
        raise _too_large(limits)
    timeout = limits.body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limits) from None
    except TimeoutError:
        _abandoned(request, key_id, f"its {timeout:g} s deadline passed")
        raise InvalidRequest(f"the request body did not arrive within {timeout:g} s") from None
    except ConnectionError:  # aiohttp's "Connection lost" (ConnectionResetError) mid-body
        _abandoned(request, key_id, "the client closed the connection")
        # answered to nobody: aiohttp sees the closed connection and writes nothing
        raise InvalidRequest("the client closed the connection before its body arrived") from None


def body_at_hand(request: web.Request, key_id: str = "") -> bytes | None:
    """`read_body`'s answer when the body is already all here (the usual small body), taken
    as it is without a coroutine; None when it has yet to arrive (then await `read_body`)."""
    if not request.content.is_eof():
        return None
    try:
        body = request.content.read_nowait()
    except ConnectionError:  # the client reset the connection while the request waited its turn
        _abandoned(request, key_id, "the client closed the connection")
        raise InvalidRequest("the client closed the connection before its body arrived") from None
    limits = request.app[BODY_LIMITS]
    if len(body) > limits.body_bytes:
        raise _too_large(limits)
    return body


def _too_large(limits: Limits) -> PayloadTooLarge:
    n = limits.body_bytes
    return PayloadTooLarge(f"body is larger than the {f'{n // 1024} KiB' if n % 1024 == 0 else f'{n}-byte'} limit")


def _abandoned(request: web.Request, key_id: str, what: str) -> None:
    """One line: the route's pattern (never the path as sent, which may hold anything), how
    much arrived and whose request it was (the key's id, not the key)."""
    route = request.match_info.route.resource
    where = route.canonical if route is not None else "?"
    expected = request.content_length
    log.info("request body abandoned (%s): %s %s, %d of %s bytes arrived, key %s", what, request.method, where,
             request.content.total_bytes, expected if expected is not None else "?", key_id or "-")


_HEADERS: dict[str, CIMultiDict[str]] = {}
"""The answer headers of each codec, built once: aiohttp copies a CIMultiDict at half the cost
of building one from a dict, and this runs for every answer."""


def respond(codec: Codec, value: Any, status: int = 200) -> web.Response:
    headers = _HEADERS.get(codec.content_type)
    if headers is None:
        headers = _HEADERS[codec.content_type] = CIMultiDict({"Content-Type": codec.content_type})
    return web.Response(body=codec.encode(value), status=status, headers=headers)


def respond_error(codec: Codec, value: Any, status: int, exc: ApiError) -> web.Response:
    """An error answer: `respond`, plus `Retry-After` (seconds) when the error says when."""
    response = respond(codec, value, status)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
