"""Credit grants, and the burn-down: which grants pay for an amount and how much each pays.

plan_burn is a pure function over grant rows, so the store runs it inside the burn's
transaction and the invoice preview runs it on copies without touching a grant.
"""
from __future__ import annotations

from itertools import groupby
from operator import itemgetter
from typing import Any, Iterable

from ..context import Context
from ..store import Row
from ..times import format_ts
from .durations import parse_duration
from .pricing import checked_sum


def eligible(grant: dict[str, Any], meter_id: str | None) -> bool:
    """A grant without eligibility pays for anything; one restricted to meters pays only for
    usage of those meters (so never for usage that names no meter)."""
    return not grant["eligibility"] or (meter_id is not None and meter_id in grant["eligibility"])


def _order(grant: dict[str, Any]) -> tuple[int, bool, int]:
    expires = grant["expiresAt"]
    return grant["priority"], expires is None, expires or 0


def plan_burn(grants: Iterable[dict[str, Any]], amount: int, meter_id: str | None) -> list[tuple[dict[str, Any], int]]:
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

def is_active(g: Row, now: int) -> bool:
    return g["voidedAt"] is None and g["remainingCents"] > 0 and g["effectiveAt"] <= now and (g["expiresAt"] is None or g["expiresAt"] > now)


def grant_result(g: Row, now: int) -> dict[str, Any]:
    out = {k: v for k, v in g.items() if k not in ("voidedAt", "expiresAt")}
    out["effectiveAt"] = format_ts(g["effectiveAt"])
    out["createdAt"] = format_ts(g["createdAt"])
    if g["expiresAt"] is not None:
        out["expiresAt"] = format_ts(g["expiresAt"])
    out["voided"] = g["voidedAt"] is not None
    out["active"] = is_active(g, now)
    return out


async def create_credit_grant(ctx: Context, p: Any) -> dict[str, Any]:
    expires_at = ctx.now + parse_duration(p.expiresIn) if p.expiresIn else None
    grant = await ctx.store.create_grant(
        ctx.tenant, p.userId, p.name, p.amountCents, p.currency, p.priority, ctx.now, expires_at,
        p.eligibility, p.tags, ctx.now, ctx.idempotency,
    )
    return grant_result(grant, grant["createdAt"])


async def list_credit_grants(ctx: Context, p: Any) -> dict[str, Any]:
    grants = [grant_result(g, ctx.now) for g in await ctx.store.list_grants(ctx.tenant, p.userId)]
    return {"grants": grants, "count": len(grants)}


async def get_credit_balance(ctx: Context, p: Any) -> dict[str, Any]:
    grants = sorted(await ctx.store.active_grants(ctx.tenant, p.userId, ctx.now), key=itemgetter("currency"))
    balances = [
        {"currency": currency, "available": checked_sum(g["remainingCents"] for g in group)}
        for currency, group in groupby(grants, key=itemgetter("currency"))
    ]
    return {"userId": p.userId, "balances": balances}


async def void_credit_grant(ctx: Context, p: Any) -> dict[str, Any]:
    grant = await ctx.store.void_grant(ctx.tenant, p.id, ctx.now, ctx.idempotency)
    return {"id": grant["id"], "voided": True}


async def burn_credits(ctx: Context, p: Any) -> dict[str, Any]:
    burned = await ctx.store.burn_grants(ctx.tenant, p.userId, p.currency, p.amount, p.meterId, ctx.now, plan_burn, ctx.idempotency)
    total = sum(b["burned"] for b in burned)
    return {"userId": p.userId, "currency": p.currency, "requested": p.amount, "burned": total, "overage": p.amount - total, "grants": burned}
