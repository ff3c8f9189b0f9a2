"""aiohttp plumbing shared by the ZAP endpoint and the REST routes."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..errors import InvalidRequest, PayloadTooLarge
from .codec import MAX_BODY, Codec

_TOO_LARGE = f"body is larger than the {MAX_BODY // 1024} KiB limit"
BODY_TIMEOUT = web.AppKey("body_timeout", float)


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused (413) before decoding when over the limit. The application's
    client_max_size is the same limit, so a body without a Content-Length is capped too."""
    if request.content.is_eof():  # already all here (the usual small body): take it as it is
        body = request.content.read_nowait()
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(_TOO_LARGE)
        return body
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(_TOO_LARGE)
    timeout = request.app[BODY_TIMEOUT]
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(_TOO_LARGE) from None
    except TimeoutError:
        raise InvalidRequest(f"the request body did not arrive within {timeout:g} s") from None


_HEADERS: dict[str, CIMultiDict[str]] = {}
"""The answer headers of each codec, built once: aiohttp copies a CIMultiDict at half the cost
of building one from a dict, and this runs for every answer."""


def respond(codec: Codec, value: Any, status: int = 200) -> web.Response:
    headers = _HEADERS.get(codec.content_type)
    if headers is None:
        headers = _HEADERS[codec.content_type] = CIMultiDict({"Content-Type": codec.content_type})
    return web.Response(body=codec.encode(value), status=status, headers=headers)
