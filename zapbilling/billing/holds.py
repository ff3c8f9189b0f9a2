"""Holds: reserve money before a request whose cost is known only afterwards (a long or
streaming call), then capture the real cost as one usage withdrawal or release it.

As in the ledger, a mutating handler makes exactly one store write and builds its answer only
from what that write returned, so an idempotent replay answers byte for byte the same.
"""
from __future__ import annotations

from typing import Any, Literal

from ..context import Context
from ..errors import Conflict, InsufficientFunds, InvalidParams, NotFound, SpendCapReached
from ..store.refusals import CapReached
from ..store import HoldRow, Missing, NewEntry, NewHold, NotPending, OutOfRange, OverCapture, ShortOfFunds, UsageEvent
from ..times import SECOND, format_ts
from .ledger import LOTS, USAGE_TAG, available

_OPTIONAL: tuple[Literal["capturedAmount", "transactionId", "requestId", "metadata"], ...] = (
    "capturedAmount", "transactionId", "requestId", "metadata",
)


def hold_result(h: HoldRow) -> dict[str, Any]:
    out = {
        "holdId": h["holdId"], "user": h["user"], "currency": h["currency"], "amount": h["amount"], "status": h["status"],
        "expiresAt": format_ts(h["expiresAt"]), "createdAt": format_ts(h["createdAt"]),
    }
    for key in _OPTIONAL:
        if h[key] is not None:
            out[key] = h[key]
    if h["settledAt"] is not None:
        out["settledAt"] = format_ts(h["settledAt"])
    return out


async def create_hold(ctx: Context, p: Any) -> dict[str, Any]:
    def covered(balance: int, holds: int) -> bool:
        """The funds check: a hold takes at most what is available, unless the caller allows
        an overdraft. Run by the store inside the hold's own transaction."""
        return bool(p.allowOverdraft) or p.amount <= available(balance, holds)

    try:
        row = await ctx.store.create_hold(ctx.tenant, NewHold(
            user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, expires_at=ctx.now + p.expiresIn * SECOND,
            covered=covered, request_id=p.requestId, metadata=p.metadata,
        ), ctx.idempotency)
    except ShortOfFunds as exc:
        raise InsufficientFunds(
            f"insufficient funds: {available(exc.balance, exc.holds)} cents {p.currency} available, {p.amount} requested",
            param="amount",
        ) from None
    except CapReached as exc:
        raise SpendCapReached(f"spend cap reached: {exc.used} of {exc.cap} cents {exc.currency} this {exc.period}", param="amount") from None
    except OutOfRange:
        raise InvalidParams("amount would take the user's holds outside the signed 64-bit range", param="amount") from None
    return hold_result(row)


def _settle_refused(exc: Missing | NotPending) -> NotFound | Conflict:
    if isinstance(exc, Missing):
        return NotFound("hold not found", param="id")
    return Conflict(f"hold is not pending: it is {exc.status}", param="id")


def _usage_metadata(hold: HoldRow, model: str, given: Any) -> dict[str, Any]:
    """The caller's metadata object (anything else goes under `metadata`), with the hold's
    identity on top so that a withdrawal always leads back to its hold."""
    meta = dict(given) if isinstance(given, dict) else ({} if given is None else {"metadata": given})
    meta.update(holdId=hold["holdId"], model=model)
    if hold["requestId"] is not None:
        meta["requestId"] = hold["requestId"]
    return meta


async def capture_hold(ctx: Context, p: Any) -> dict[str, Any]:
    def charge(hold: HoldRow, amount: int) -> NewEntry:
        """Charged like recordUsage (a withdraw tagged api-usage, its meter event in the same
        transaction), keyed by the hold so that it can exist only once."""
        return NewEntry(
            type="withdraw", user=hold["user"], currency=hold["currency"], amount=amount, now=ctx.now, key_id=ctx.key_id, lots=LOTS,
            tags=USAGE_TAG, hold_id=hold["holdId"],
            notes=p.notes or f"API usage: {p.model} (hold {hold['holdId']})",
            metadata=_usage_metadata(hold, p.model, p.metadata), dedupe_key=f"hold:{hold['holdId']}",
            usage_event=UsageEvent(USAGE_TAG, {"model": p.model}),
        )

    try:
        row = await ctx.store.capture_hold(ctx.tenant, p.id, p.amount, ctx.now, charge, ctx.idempotency)
    except (Missing, NotPending) as exc:
        raise _settle_refused(exc) from None
    except OverCapture as exc:
        raise InvalidParams(f"capture exceeds hold: {exc.asked} cents asked, {exc.held} held", param="amount") from None
    except OutOfRange:
        raise InvalidParams("amount would take the balance outside the signed 64-bit range", param="amount") from None
    return hold_result(row)


async def release_hold(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        return hold_result(await ctx.store.release_hold(ctx.tenant, p.id, ctx.now, ctx.idempotency))
    except (Missing, NotPending) as exc:
        raise _settle_refused(exc) from None


async def get_hold(ctx: Context, p: Any) -> dict[str, Any]:
    row = await ctx.store.get_hold(ctx.tenant, p.id, ctx.now)
    if row is None:
        raise NotFound("hold not found", param="id")
    return hold_result(row)


async def list_holds(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        rows, has_more = await ctx.store.list_holds(ctx.tenant, p.user, p.status, p.limit, p.startingAfter, ctx.now)
    except Missing:
        raise NotFound("hold not found", param="startingAfter") from None
    holds = [hold_result(r) for r in rows]
    return {"holds": holds, "count": len(holds), "hasMore": has_more}
