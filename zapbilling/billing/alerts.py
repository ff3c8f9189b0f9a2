"""Alerts and spend caps (operations 37-42). Being built: every handler answers an internal
error until its part lands."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import InternalError


async def _pending(ctx: Context, p: Any) -> dict[str, Any]:
    raise InternalError("not built yet")


create_alert = list_alerts = delete_alert = set_spend_cap = get_spend_caps = delete_spend_cap = _pending
