"""Credit grants, and the burn-down: which grants pay for an amount and how much each pays.

plan_burn is a pure function over grant rows, so the store runs it inside the burn's
transaction and the invoice preview runs it on copies without touching a grant.
"""
from __future__ import annotations

from itertools import groupby
from operator import itemgetter
from typing import Any, Iterable

from ..context import Context
from ..errors import InvalidParams, NotFound
from ..store import AlreadyVoided, GrantChange, GrantRow, Missing, NewGrant
from ..times import format_ts
from .durations import parse_duration
from .pricing import INT64_MAX


def eligible(grant: GrantRow, meter_id: str | None) -> bool:
    """A grant without eligibility pays for anything; one restricted to meters pays only for
    usage of those meters (so never for usage that names no meter)."""
    return not grant["eligibility"] or (meter_id is not None and meter_id in grant["eligibility"])


def _order(grant: GrantRow) -> tuple[int, bool, int]:
    expires = grant["expiresAt"]
    return grant["priority"], expires is None, expires or 0


def plan_burn(grants: Iterable[GrantRow], amount: int, meter_id: str | None) -> list[tuple[GrantRow, int]]:
    """(grant, cents taken) in burn order: priority ascending, then earliest expiry, grants
    that never expire last, then creation order. `grants` must be active, of one currency and
    in creation order; grants with nothing left are skipped."""
    plan = []
    left = amount
    for grant in sorted((g for g in grants if eligible(g, meter_id)), key=_order):
        if left <= 0:
            break
        take = min(grant["remainingCents"], left)
        if take > 0:
            plan.append((grant, take))
            left -= take
    return plan


# -- handlers ------------------------------------------------------------------------------

def is_active(g: GrantRow, now: int) -> bool:
    """Not voided, something left, effective and not expired. A grant is effective from its
    creation: a clock set back behind that instant (a corrected clock) must not hide it, or a
    burn would charge overage for credit the user has."""
    effective = g["effectiveAt"] <= max(now, g["createdAt"])
    return g["voidedAt"] is None and g["remainingCents"] > 0 and effective and (g["expiresAt"] is None or g["expiresAt"] > now)


def grant_result(g: GrantRow, now: int) -> dict[str, Any]:
    out = {k: v for k, v in g.items() if k not in ("voidedAt", "expiresAt")}
    out["effectiveAt"] = format_ts(g["effectiveAt"])
    out["createdAt"] = format_ts(g["createdAt"])
    if g["expiresAt"] is not None:
        out["expiresAt"] = format_ts(g["expiresAt"])
    out["voided"] = g["voidedAt"] is not None
    out["active"] = is_active(g, now)
    return out


def _meter_missing(exc: Missing, param: str) -> NotFound:
    return NotFound("meter not found", param=f"{param}[{exc.index}]" if param == "eligibility" else param)


async def create_credit_grant(ctx: Context, p: Any) -> dict[str, Any]:
    expires_at = ctx.now + parse_duration(p.expiresIn) if p.expiresIn else None
    try:
        grant = await ctx.store.create_grant(ctx.tenant, NewGrant(
            user=p.userId, name=p.name, amount=p.amountCents, currency=p.currency, priority=p.priority,
            effective_at=ctx.now, expires_at=expires_at, eligibility=p.eligibility, tags=p.tags, now=ctx.now,
            key_id=ctx.key_id,
        ), ctx.idempotency)
    except Missing as exc:
        raise _meter_missing(exc, "eligibility") from None
    return grant_result(grant, grant["createdAt"])


async def list_credit_grants(ctx: Context, p: Any) -> dict[str, Any]:
    grants = [grant_result(g, ctx.now) for g in await ctx.store.list_grants(ctx.tenant, p.userId)]
    return {"grants": grants, "count": len(grants)}


async def get_credit_balance(ctx: Context, p: Any) -> dict[str, Any]:
    grants = sorted(await ctx.store.active_grants(ctx.tenant, p.userId, ctx.now), key=itemgetter("currency"))
    balances = []
    for currency, group in groupby(grants, key=itemgetter("currency")):
        available = sum(g["remainingCents"] for g in group)
        if available > INT64_MAX:  # each grant fits int64, their sum need not: the contract's 400
            raise InvalidParams(f"the credit available in {currency} is beyond the signed 64-bit range", param="userId")
        balances.append({"currency": currency, "available": available})
    return {"userId": p.userId, "balances": balances}


async def void_credit_grant(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        grant = await ctx.store.void_grant(ctx.tenant, p.id, ctx.now, ctx.key_id, ctx.idempotency)
    except Missing:
        raise NotFound("credit grant not found", param="id") from None
    except AlreadyVoided:
        raise InvalidParams("grant is already voided", param="id") from None
    return {"id": grant["id"], "voided": True}


async def burn_credits(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        burn = await ctx.store.burn_grants(
            ctx.tenant, p.userId, p.currency, p.amount, p.meterId, ctx.now, ctx.key_id, plan_burn, ctx.idempotency
        )
    except Missing as exc:
        raise _meter_missing(exc, "meterId") from None
    total = sum(b["burned"] for b in burn["grants"])
    result = {"userId": p.userId, "currency": p.currency, "requested": p.amount, "burned": total,
              "overage": p.amount - total, "grants": burn["grants"]}
    if burn["burnId"] is not None:
        result["burnId"] = burn["burnId"]
    return result


def credit_transaction_result(c: GrantChange) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in c.items() if k not in ("burnId", "meterId", "createdAt", "keyId")}
    if c["burnId"] is not None:
        out["burnId"] = c["burnId"]
    if c["meterId"] is not None:
        out["meterId"] = c["meterId"]
    out["createdAt"] = format_ts(c["createdAt"])
    out["keyId"] = c["keyId"]
    return out


async def list_credit_transactions(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        rows, has_more = await ctx.store.grant_changes_page(ctx.tenant, p.userId, p.grantId, p.limit, p.startingAfter)
    except Missing as exc:
        if exc.entity == "grant":
            raise NotFound("credit grant not found", param="grantId") from None
        raise NotFound("credit transaction not found", param="startingAfter") from None
    transactions = [credit_transaction_result(r) for r in rows]
    return {"userId": p.userId, "count": len(transactions), "hasMore": has_more, "transactions": transactions}
