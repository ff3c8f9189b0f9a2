"""Webhook endpoints and the events API (operations 30-36): endpoints subscribe a URL to event
types and hold the secret their deliveries are signed with; events are read from the outbox
newest first, with each one's delivery log, and can be delivered again. The delivery itself is
zapbilling/events/' work, outside every request.

Secrets: `whsec_` + base64 of 24 random bytes (the secrets module), answered by
createWebhookEndpoint and rotateWebhookSecret only, never listed or logged (the access log
never holds bodies). An idempotent replay of either answers what the first call answered,
secret included, as long as its key is kept (a day): a caller whose answer was lost on the
way would otherwise hold an endpoint it can never verify."""
from __future__ import annotations

import base64
import secrets
from typing import Any

from ..context import Context
from ..errors import Conflict, InvalidParams, NotFound
from ..events.addresses import BadUrl, check_url
from ..store import Missing
from ..store.refusals import QuotaReached
from ..store.base import ALL_EVENTS, DeliveryEntry, EventRow, NewEndpoint, Row
from ..times import format_ts

EVENT_TYPES = (
    "deposit.created", "refund.created", "credit.expired", "hold.captured", "hold.released", "hold.expired",
    "grant.depleted", "grant.voided", "grant.expired", "alert.triggered", "spend_cap.reached", "usage.recorded",
    "webhook_endpoint.disabled",
)
"""The schema's EventType, which an endpoint's `events` are checked against (they are a list of
text, so that `*` fits); start-up checks this table against the enum (billing ENUM_TABLES)."""

SECRET_BYTES = 24
OLD_SECRET_KEPT = 24 * 3600 * 1_000_000
"""After a rotation the old secret signs deliveries too for 24 hours (microseconds), so that
receivers can switch to the new one without refusing a delivery."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _event_types(given: list[str]) -> list[str]:
    """The endpoint's `events`: event types in the order given, each once, or exactly ["*"]."""
    if not given:
        raise InvalidParams('events must name at least one event type, or be ["*"]', param="events")
    if ALL_EVENTS in given:
        if any(t != ALL_EVENTS for t in given):
            raise InvalidParams('events must be ["*"] alone or a list of event types', param="events")
        return [ALL_EVENTS]
    for i, t in enumerate(given):
        if t not in EVENT_TYPES:
            raise InvalidParams(f"unknown event type: {t}", param=f"events[{i}]")
    return list(dict.fromkeys(given))


def endpoint_result(row: Row) -> dict[str, Any]:
    return row | {"createdAt": format_ts(row["createdAt"])}


def event_result(e: EventRow) -> dict[str, Any]:
    return {"id": e["id"], "type": e["type"], "createdAt": format_ts(e["createdAt"]), "data": e["data"]}


def delivery_result(d: DeliveryEntry) -> dict[str, Any]:
    """An entry of the log; responseStatus and error only when there are some (absent, as a
    hold's optional fields are, rather than null)."""
    entry: dict[str, Any] = {"endpointId": d["endpointId"], "attempt": d["attempt"], "status": d["status"]}
    if d["responseStatus"] is not None:
        entry["responseStatus"] = d["responseStatus"]
    if d["error"] is not None:
        entry["error"] = d["error"]
    entry["at"] = format_ts(d["at"])
    return entry


async def create_webhook_endpoint(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        await check_url(p.url, ctx.limits.webhook_allow_private)
    except BadUrl as exc:
        raise InvalidParams(str(exc), param="url") from None
    events = _event_types(p.events)
    try:
        row = await ctx.store.create_endpoint(ctx.tenant, NewEndpoint(
            url=p.url, events=events, description=p.description, secret=new_secret(), now=ctx.now,
        ), ctx.idempotency, quota=ctx.limits.webhook_endpoints_per_tenant)
    except QuotaReached as exc:
        raise Conflict(f"webhook endpoint quota reached: an org holds at most {exc.quota} webhook endpoints in each mode",
                       param="url") from None
    return endpoint_result(row)


async def list_webhook_endpoints(ctx: Context, p: Any) -> dict[str, Any]:
    endpoints = [endpoint_result(dict(r)) for r in await ctx.store.list_endpoints(ctx.tenant)]
    return {"endpoints": endpoints, "count": len(endpoints)}


async def delete_webhook_endpoint(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        await ctx.store.delete_endpoint(ctx.tenant, p.id, ctx.now, ctx.idempotency)
    except Missing:
        raise NotFound("webhook endpoint not found", param="id") from None
    return {"id": p.id, "deleted": True}


async def rotate_webhook_secret(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        return await ctx.store.rotate_endpoint_secret(
            ctx.tenant, p.id, new_secret(), ctx.now + OLD_SECRET_KEPT, ctx.now, ctx.idempotency
        )
    except Missing:
        raise NotFound("webhook endpoint not found", param="id") from None


async def list_events(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        rows, more = await ctx.store.events_page(ctx.tenant, p.type, p.limit, p.startingAfter, p.userId)
    except Missing:
        raise NotFound("event not found", param="startingAfter") from None
    return {"count": len(rows), "hasMore": more, "events": [event_result(e) for e in rows]}


async def get_event(ctx: Context, p: Any) -> dict[str, Any]:
    found = await ctx.store.get_event(ctx.tenant, p.id)
    if found is None:
        raise NotFound("event not found", param="id")
    event, log = found
    return event_result(event) | {"deliveries": [delivery_result(d) for d in log]}


async def redeliver_event(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        queued = await ctx.store.redeliver(ctx.tenant, p.id, p.endpointId, ctx.now, ctx.idempotency)
    except Missing as exc:
        if exc.entity == "event":
            raise NotFound("event not found", param="id") from None
        raise NotFound("webhook endpoint not found", param="endpointId") from None
    return {"id": p.id, "queued": queued}
