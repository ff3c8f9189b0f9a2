"""aiohttp plumbing shared by the ZAP endpoint and the REST routes."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import PayloadTooLarge
from .codec import MAX_BODY, Codec

_TOO_LARGE = f"body is larger than the {MAX_BODY // 1024} KiB limit"


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused (413) before decoding when over the limit. The application's
    client_max_size is the same limit, so a body without a Content-Length is capped too."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(_TOO_LARGE)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(_TOO_LARGE) from None


def respond(codec: Codec, value: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.encode(value), status=status, headers={"Content-Type": codec.content_type})
