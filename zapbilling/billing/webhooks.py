"""Webhook endpoints and events (operations 30-36). Being built: every handler answers an
internal error until its part lands."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import InternalError


async def _pending(ctx: Context, p: Any) -> dict[str, Any]:
    raise InternalError("not built yet")


create_webhook_endpoint = list_webhook_endpoints = delete_webhook_endpoint = rotate_webhook_secret = _pending
list_events = get_event = redeliver_event = _pending
